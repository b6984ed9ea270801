"""Run directories and tracking: `runs/<name>/metrics.jsonl` always, wandb (offline by default) when it works.

Tracking must never stop training: every wandb call is guarded, and the first failure turns wandb off for
the rest of the stage with one warning. metrics.jsonl is the record of truth.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlft.config import Config, config_to_dict

logger = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


class Tracker:
    """Writes one stage's metrics to `metrics.jsonl` and, guarded, to a wandb run (job_type = stage).

    Under `accelerate launch` only the main process writes (one metrics.jsonl, one wandb run); on the other
    ranks the tracker does nothing. Metrics are gathered across ranks before they are logged (TRL does it for
    its own; rlft's rollout and PPO reduce theirs), so rank 0's record stands for the whole job.
    """

    def __init__(self, config: Config, stage: str, run_dir: Path, resume: bool = False):
        """`resume`: continue this stage's wandb run (its id is kept in `wandb_ids.json` in the run dir)."""
        from rlft.distributed import is_main_process

        self.stage = stage
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.enabled = is_main_process()
        self._wandb = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = config.tracking.wandb
        if settings.enabled and settings.mode != "disabled":
            self._start_wandb(config, stage, resume)

    @property
    def ids_path(self) -> Path:
        return self.run_dir / "wandb_ids.json"

    def _run_ids(self) -> dict[str, str]:
        try:
            return json.loads(self.ids_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _start_wandb(self, config: Config, stage: str, resume: bool = False) -> None:
        settings = config.tracking.wandb
        previous = self._run_ids().get(stage) if resume else None
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=settings.project, entity=settings.entity, mode=settings.mode,
                group=settings.group or config.name, job_type=stage, name=f"{config.name}-{stage}",
                tags=[*settings.tags, config.rl.algorithm, config.env.id], config=config_to_dict(config),
                dir=str(self.run_dir), reinit="create_new",
                **({"id": previous, "resume": "allow"} if previous else {}),
            )
            self.ids_path.write_text(json.dumps({**self._run_ids(), stage: self._wandb.id}, indent=1),
                                     encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            logger.warning("wandb could not start (%s); continuing with metrics.jsonl only", exc)
            self._wandb = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        record = {"stage": self.stage, "step": step, "time": time.time(), **{k: _clean(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            try:
                numeric = {f"{self.stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
                self._wandb.log(numeric, step=step)
            except Exception as exc:  # noqa: BLE001
                logger.warning("wandb log failed (%s); wandb is off for the rest of this stage", exc)
                self._wandb = None

    def finish(self) -> str | None:
        """Close the wandb run; return the `wandb sync` command for an offline run."""
        if self._wandb is None:
            return None
        try:
            offline = self._wandb.settings.mode == "offline"
            run_dir = getattr(self._wandb.settings, "sync_dir", None) or self._wandb.dir
            self._wandb.finish()
            return f"wandb sync {Path(run_dir).parent if str(run_dir).endswith('files') else run_dir}" if offline else None
        except Exception as exc:  # noqa: BLE001
            logger.warning("wandb finish failed (%s)", exc)
            return None
        finally:
            self._wandb = None


class TrackerCallback(TrainerCallback):
    """Forwards a TRL trainer's logs to a `Tracker`."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.tracker.log(dict(logs), step=state.global_step)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class HeldOutEvalCallback(TrainerCallback):
    """Every `every` optimizer steps, plays held-out seeds with the current policy and logs `eval/*`.

    The same seeds every time, the policy as configured (greedy or sampled at the rollout temperature), and
    the env steps consumed so far, so learning curves can be drawn against env steps.
    """

    def __init__(self, tracker: Tracker, engine, seeds: list[int], every: int, batch_size: int, rollout,
                 seed: int = 0):
        # `engine` is this callback's own, with the evaluation's sampling settings (greedy or not).
        self.tracker, self.engine, self.seeds, self.every = tracker, engine, seeds, every
        self.batch_size, self.rollout, self.seed = batch_size, rollout, seed
        self.trainer = None  # set by the stage once the trainer exists

    def evaluate(self, step: int) -> dict[str, float]:
        from rlft.evaluation import evaluate_policy

        self.engine.model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        summary, _ = evaluate_policy(self.engine, self.seeds, self.batch_size, seed=self.seed)
        logs = {f"eval/{k}": v for k, v in summary.items()}
        logs["episode/env_steps_total"] = float(self.rollout.env_steps)
        self.tracker.log(logs, step=step)
        return logs

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is not None and state.global_step % self.every == 0 and state.is_world_process_zero:
            self.evaluate(state.global_step)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is not None and state.is_world_process_zero and state.global_step == 0:
            self.evaluate(0)
