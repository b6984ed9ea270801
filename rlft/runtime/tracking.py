"""Run directories and tracking: `runs/<name>/metrics.jsonl` always, wandb (offline by default) when it works.

Tracking must never stop training: every wandb call is guarded, and the first failure turns wandb off for
the rest of the stage with one warning. metrics.jsonl is the record of truth.

wandb runs are laid out the way wandb users expect: one run per stage (`job_type` sft / rm / rl / eval), grouped
by experiment (`tracking.experiment`, which `rlft launch` sets; the run name otherwise), tagged with the
algorithm, env id, reward design and seed, the full resolved config attached, and during RL a sample of episode
transcripts as a table every log interval (also appended to `runs/<name>/transcripts.jsonl`). TRL's own
`report_to` integrations (tensorboard, trackio) write beside it: tensorboard under `runs/<name>/tensorboard/`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlft.config.resolved import resolved_record, write_resolved
from rlft.config.schema import Config, config_to_dict
from rlft.runtime.distributed import generation_policy
from rlft.runtime.resume_logs import truncate_log

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

    def __init__(
        self, config: Config, stage: str, run_dir: Path, resume: bool = False, resume_step: int | None = None
    ):
        """`resume`: continue this stage's wandb run (its id is kept in `wandb_ids.json` in the run dir).

        `resume_step`: the step of the checkpoint this stage resumes from. What this stage logged after it (rows
        of metrics.jsonl and transcripts.jsonl with a later step, and the end-of-training summary of the stopped
        call) is dropped before anything new is written (`truncate_log`), so every step appears once.
        """
        from rlft.runtime.distributed import is_main_process

        self.stage = stage
        self.config = config
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.enabled = is_main_process()
        self._wandb = None
        self._tables = True  # off after a failed table log; scalar metrics carry on
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            for name in ("metrics.jsonl", "transcripts.jsonl"):
                truncate_log(self.run_dir / name, stage, resume_step)
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
                project=settings.project,
                entity=settings.entity,
                mode=settings.mode,
                group=experiment_group(config),
                job_type=stage,
                name=f"{config.name}-{stage}",
                tags=run_tags(config),
                config=config_to_dict(config),
                dir=str(self.run_dir),
                reinit="create_new",
                **({"id": previous, "resume": "allow"} if previous else {}),
            )
            self.ids_path.write_text(
                json.dumps({**self._run_ids(), stage: self._wandb.id}, indent=1), encoding="utf-8"
            )
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            logger.warning("wandb could not start (%s); continuing with metrics.jsonl only", exc)
            self._wandb = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        record = {
            "stage": self.stage,
            "step": step,
            "time": time.time(),
            **{k: _clean(v) for k, v in metrics.items()},
        }
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            try:
                numeric = {f"{self.stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
                self._wandb.log(numeric, step=step)
            except Exception as exc:  # noqa: BLE001
                logger.warning("wandb log failed (%s); wandb is off for the rest of this stage", exc)
                self._wandb = None

    def record_resolved(self, trainer_args: Any, name: str | None = None) -> None:
        """Write `resolved/<name>.yaml` (the config with its defaults, every TRL argument the trainer uses, the
        package versions; name: this stage's) and put the TRL arguments and versions into the wandb run config."""
        if not self.enabled:
            return
        record = resolved_record(self.config, trainer_args)
        write_resolved(self.run_dir, name or self.stage, record)
        if self._wandb is None:
            return
        try:
            key = "trainer" if name in (None, self.stage) else f"trainer/{name}"
            self._wandb.config.update(
                {key: record["trainer"], "versions": record["versions"]}, allow_val_change=True
            )
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            logger.warning("wandb config update failed (%s); wandb is off for the rest of this stage", exc)
            self._wandb = None

    def log_transcripts(self, rows: list[dict[str, Any]], step: int) -> None:
        """Append a transcript sample (one row per turn, `transcript_rows`) to transcripts.jsonl, and log it to
        wandb as a table `<stage>/transcripts`. A failure of either is reported once and never stops training."""
        if not self.enabled or not rows:
            return
        try:
            with (self.run_dir / "transcripts.jsonl").open("a", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps({"stage": self.stage, "step": step, **row}) + "\n")
        except OSError as exc:
            logger.warning("could not write transcripts.jsonl (%s)", exc)
        if self._wandb is None or not self._tables:
            return
        try:
            import wandb

            columns = ["step", *rows[0]]
            table = wandb.Table(columns=columns, data=[[step, *row.values()] for row in rows])
            self._wandb.log({f"{self.stage}/transcripts": table}, step=step)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            logger.warning("wandb could not log a transcript table (%s); tables are off for this stage", exc)
            self._tables = False

    def finish(self) -> str | None:
        """Close the wandb run; return the `wandb sync` command for an offline run."""
        if self._wandb is None:
            return None
        try:
            offline = self._wandb.settings.mode == "offline"
            run_dir = getattr(self._wandb.settings, "sync_dir", None) or self._wandb.dir
            self._wandb.finish()
            return (
                f"wandb sync {Path(run_dir).parent if str(run_dir).endswith('files') else run_dir}"
                if offline
                else None
            )
        except Exception as exc:  # noqa: BLE001
            logger.warning("wandb finish failed (%s)", exc)
            return None
        finally:
            self._wandb = None


class TrackerCallback(TrainerCallback):
    """Forwards a TRL trainer's logs to a `Tracker`, and records the arguments it trains with when it starts.

    `record_as`: the name of the resolved record (`resolved/<record_as>.yaml`); unset: the tracker's stage. A
    stage that trains several models (an RM ensemble) names each member's, so no record overwrites another.
    """

    def __init__(self, tracker: Tracker, record_as: str | None = None):
        self.tracker = tracker
        self.record_as = record_as

    def on_train_begin(self, args, state, control, **kwargs):
        # `args` is the trainer's own TrainingArguments: TRL's values with rlft's defaults and the user's keys.
        if state.is_world_process_zero:
            self.tracker.record_resolved(args, self.record_as)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.tracker.log(dict(logs), step=state.global_step)


def experiment_group(config: Config) -> str:
    """The wandb group: `tracking.wandb.group` if set, else the experiment (`tracking.experiment`), else the run."""
    return config.tracking.wandb.group or config.tracking.experiment or config.name


def reward_design_name(config: Config) -> str:
    """The reward design's name: its `name` where the section has one, else its components joined ('env')."""
    reward = getattr(config, "reward", None)
    if reward is None:
        return "env"
    return getattr(reward, "name", None) or "+".join(reward.components)


def run_tags(config: Config) -> list[str]:
    """wandb tags: the user's, then algorithm, env id, `reward:<design>` and `seed:<n>` (wandb caps a tag at 64)."""
    tags = [
        *config.tracking.wandb.tags,
        config.rl.algorithm,
        config.env.id,
        f"reward:{reward_design_name(config)}",
        f"seed:{config.seed}",
    ]
    return list(dict.fromkeys(tag[:64] for tag in tags))


def transcript_rows(episodes: list, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """A sample of `count` episodes as rows, one per turn: the observation the action answered, the action, the
    turn's reward per component (`reward/<name>`) and in total, and the episode's return, success and failure.

    An episode that failed before its first action is one row with `turn` None. Every row has the same keys.
    """
    if not episodes or count <= 0:
        return []
    chosen = sorted(rng.sample(range(len(episodes)), min(count, len(episodes))))
    components = sorted({name for i in chosen for name in episodes[i].rewards})
    rows = []
    for index in chosen:
        episode = episodes[index]
        seen = [episode.first_observation, *episode.observations]
        for turn in range(episode.num_turns) or [None]:
            rows.append(
                {
                    "episode": index,
                    "seed": episode.seed,
                    "turn": turn,
                    "observation": seen[turn]
                    if turn is not None and turn < len(seen)
                    else episode.first_observation,
                    "action": episode.actions[turn] if turn is not None else "",
                    **{f"reward/{name}": _turn_value(episode.rewards.get(name), turn) for name in components},
                    "reward": episode.turn_rewards[turn] if turn is not None else 0.0,
                    "return": episode.episode_return,
                    "success": bool(episode.success),
                    "failure": episode.failure,
                }
            )
    return rows


def _turn_value(values: list[float] | None, turn: int | None) -> float | None:
    return None if values is None or turn is None or turn >= len(values) else _clean(values[turn])


class TranscriptCallback(TrainerCallback):
    """Every `every` steps (unset: the trainer's logging_steps), logs a sample of the latest rollout batch's
    episodes with `Tracker.log_transcripts`, on the main process (its own episodes).

    The batch arrives directly: `on_rollout_batch` is a listener of the rollout (`EpisodeRollout.add_listener`),
    called with each `RolloutBatch` it builds. The sample is drawn with its own RNG, seeded by (run seed, step),
    so it never moves the training RNGs (exact resume). A batch already logged is not logged again (several
    optimizer steps can share a rollout batch).
    """

    def __init__(self, tracker: Tracker, samples: int, every: int | None = None, seed: int = 0):
        self.tracker, self.samples, self.every, self.seed = tracker, samples, every, seed
        self._batch = None  # the latest RolloutBatch (anything with `.episodes`)
        self._logged = None  # the batch last logged

    def on_rollout_batch(self, batch) -> None:
        self._batch = batch

    def on_step_end(self, args, state, control, **kwargs):
        every = max(1, int(self.every or state.logging_steps or 1))
        if not state.is_world_process_zero or self.samples <= 0 or state.global_step % every:
            return
        batch = self._batch
        if batch is None or not batch.episodes or batch is self._logged:
            return
        self._logged = batch
        try:
            rows = transcript_rows(
                batch.episodes, self.samples, random.Random(self.seed * 1_000_003 + state.global_step)
            )
            self.tracker.log_transcripts(rows, step=state.global_step)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            logger.warning(
                "transcripts could not be logged (%s); they are off for the rest of the stage", exc
            )
            self.samples = 0


def attach_tracking(trainer, tracker: Tracker, config: Config, rollout=None) -> None:
    """After a stage builds its trainer: tensorboard (if in `report_to`) writes under `runs/<name>/tensorboard/
    <stage>` (unless TENSORBOARD_LOGGING_DIR says otherwise), and with a rollout (an `EpisodeRollout`), transcripts
    are sampled from the batches it builds."""
    for callback in trainer.callback_handler.callbacks:
        if (
            type(callback).__name__ == "TensorBoardCallback"
            and getattr(callback, "logging_dir", None) is None
        ):
            callback.logging_dir = str(tracker.run_dir / "tensorboard" / tracker.stage)
    if rollout is not None and config.tracking.transcript_samples > 0:
        transcripts = TranscriptCallback(
            tracker, config.tracking.transcript_samples, config.tracking.transcripts_every, seed=config.seed
        )
        rollout.add_listener(transcripts.on_rollout_batch)
        trainer.add_callback(transcripts)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class HeldOutEvalCallback(TrainerCallback):
    """Every `every` optimizer steps, plays the validation seeds with the current policy and logs `eval/*`.

    The same seeds every time (validation ones, apart from the test seeds only `rlft eval` plays), the policy as
    configured (greedy or sampled at the rollout temperature), and the env steps consumed so far, so learning
    curves can be drawn against env steps. `evaluate(policy)` plays them and returns the summary (the stage binds
    rlft.rollout.evaluation.evaluate_policy to its own engine and seeds: this layer does not import the
    rollout's); `rollout.env_steps` is the env steps played so far. `select(step, logs)`, when given, is called
    after each evaluation on every process (logs is None off the main one, which alone evaluates): the stage's
    model selection, which may save a checkpoint (a collective).
    """

    def __init__(self, tracker: Tracker, evaluate, every: int, rollout, select=None):
        self.tracker, self.evaluate_policy, self.every, self.rollout = tracker, evaluate, every, rollout
        self.select = select
        self.trainer = None  # set by the stage once the trainer exists

    def evaluate(self, step: int) -> dict[str, float]:
        summary = self.evaluate_policy(generation_policy(self.trainer))  # FSDP2: the whole-weight copy
        logs = {k if "/" in k else f"eval/{k}": v for k, v in summary.items()}  # generalisation/gap stays
        logs["episode/env_steps_total"] = float(self.rollout.env_steps)
        self.tracker.log(logs, step=step)
        return logs

    def _evaluate_and_select(self, state) -> None:
        logs = self.evaluate(state.global_step) if state.is_world_process_zero else None
        if self.select is not None:
            self.select(state.global_step, logs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is not None and state.global_step % self.every == 0:
            self._evaluate_and_select(state)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is not None and state.global_step == 0:
            self._evaluate_and_select(state)
