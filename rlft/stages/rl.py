"""The rl stage (`rlft train`): the configured algorithm from the initial checkpoint, with exact resume."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list

from rlft.algorithms.checkpoint_folders import (
    checkpoint_step,
    latest_complete,
    refuse_to_overwrite,
    resolve_resume,
)
from rlft.algorithms.dynamic_sampling import dynamic_sampling_for
from rlft.algorithms.registry import get_algorithm
from rlft.config.defaults import rl_defaults
from rlft.config.schema import Config, config_to_dict, load_config
from rlft.config.trainer_args import build_trainer_config
from rlft.errors import CheckpointError, ConfigError
from rlft.rewards import build_reward_design
from rlft.rollout.curriculum import curriculum_for
from rlft.rollout.evaluation import evaluate_policy
from rlft.runtime.distributed import ddp_timeout_s, process_state, refuse_zero3_rl, save_trained
from rlft.runtime.faults import out_of_memory_guard
from rlft.runtime.run_files import empty_staging, match_umask, write_text_atomic
from rlft.runtime.run_lock import run_lock
from rlft.runtime.signals import GracefulStop, Interrupted
from rlft.runtime.storage import is_storage_fault, storage_error
from rlft.runtime.tracking import (
    HeldOutEvalCallback,
    Tracker,
    TrackerCallback,
    attach_tracking,
)
from rlft.stages.common import (
    SELECTION_FILE,
    check_loadable,
    checkpoint_dir,
    ensure_base_checkpoint,
    load_trainable,
    prepare_run,
    record_sync_command,
    rollout_engine,
    trainer_config_class,
)
from rlft.stages.generalisation import GeneralisationEvaluation, train_task_seeds, validation_seeds
from rlft.stages.model_card import card_files, resume_card_files
from rlft.stages.transfer import check_critic_matches, critic_trainer_overrides

logger = logging.getLogger(__name__)
GREEDY_SUCCESS = "eval/val_success_greedy"  # logged at each validation (rlft.stages.generalisation)
STILL_VALIDATIONS = 4  # validations with one and the same greedy success before ModelSelection warns
BEST = "rl_best"  # checkpoints/rl_best: the best validation success (eval.keep_best), `rlft eval`'s rl_best


def resolve_init(config: Config) -> Path:
    if config.rl.init_from == "sft":
        path = checkpoint_dir(config, "sft")
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise CheckpointError(
                f"rl.init_from = 'sft' but {path} has no checkpoint; run `rlft sft` first "
                "or set rl.init_from=base"
            )
        return path
    if config.rl.init_from == "base":
        return ensure_base_checkpoint(config)
    return Path(config.rl.init_from)


def rl_trainer_args(config: Config):
    """The stage's `trl.GRPOConfig` (grpo) or `PPOConfig` (ppo), with rlft's defaults (rlft/config/defaults.py).

    Also built at validation (rlft.stages.checks), so TRL's own checks run before a model loads.
    """
    if "temperature" in config.rl.trainer or "top_p" in config.rl.trainer:
        raise ConfigError(
            "set the sampling temperature / top_p under 'rollout', not 'rl.trainer' "
            "(the rollout samples, and TRL must score with the same temperature)"
        )
    return build_trainer_config(
        trainer_config_class(config.rl.algorithm),
        critic_trainer_overrides(config),  # rl.trainer, critic_init from rl.critic_init_from
        str(config.run_dir / "trainer" / "rl"),
        config.seed,
        defaults=rl_defaults(config),
    )


# What may differ from the run's config.yaml when it is resumed: what is logged and evaluated, and how often
# checkpoints are written. Everything else (the model, env, rollout, reward, the trainer's optimisation
# arguments, max_steps with its learning-rate schedule) would make the resumed run another run than the one
# its checkpoint belongs to.
RESUMABLE_KEYS = (
    "tracking",
    "eval",
    "rl.trainer.logging_steps",
    "rl.trainer.save_steps",
    "rl.trainer.save_total_limit",
    "rl.trainer.report_to",
)
RESUMES_FILE = "resumes.jsonl"


def run_rl(config: Config, resume: str | bool | None = None, callbacks: list | None = None) -> Path:
    """RL from the initial checkpoint with the configured algorithm; saves checkpoints/rl.

    `resume`: True for the newest complete checkpoint under `trainer/rl`, or a checkpoint folder; the run
    continues exactly where that checkpoint left it (see rlft.checkpointing), with the config it was started
    with: a change to a key outside `RESUMABLE_KEYS` is refused, the others are applied and recorded in
    `resumes.jsonl`. A checkpoint at max_steps trains no step: the final policy is saved. On SIGTERM / SIGINT
    the step in flight finishes, a checkpoint is written and `Interrupted` (exit code 128 + signal) is raised.

    Holds the run folder's lock (rlft.runtime.run_lock) throughout: a second process on this run is refused.
    """
    refuse_zero3_rl(config.rl.trainer.get("deepspeed"))  # exit 2 naming FSDP2, before anything is written
    main_process = process_state(ddp_timeout_s(config)).is_main_process
    with run_lock(config.run_dir, main_process):
        return _run_rl(config, resume, callbacks)


def _run_rl(config: Config, resume: str | bool | None, callbacks: list | None) -> Path:
    args = rl_trainer_args(config)
    resume_step, changes = None, {}
    if resume:
        resume = resolve_resume(args.output_dir, resume)  # before any model is loaded
        resume_step = checkpoint_step(resume)
        changes = resume_changes(config)  # refused ones raise here, before anything is written
    else:
        refuse_to_overwrite(Path(args.output_dir))
    if config.rl.init_from != "base":  # a damaged start checkpoint is named before the run folder is written
        check_loadable(resolve_init(config), "rl.init_from")
    validation = validation_seeds(config) if config.eval.every_steps else []
    prepare_run(config)
    if process_state().is_main_process:
        record_start(config, resume, changes)
    design = build_reward_design(config)  # None for the default (the env reward alone); loads reward models
    init = resolve_init(config)
    check_critic_matches(config, init)  # rl.critic_init_from, if set, against the policy it will score
    model, tokenizer = load_trainable(init, config)
    engine = rollout_engine(config, tokenizer)
    train = config.env.train_seeds
    # A fresh start got past refuse_to_overwrite, so rl rows already logged are those of a start killed before its
    # first checkpoint (`--resume` then says to start again): dropped (-1: step 0 too), as a resume drops replays.
    logged_until = resume_step if resume else -1
    tracker = Tracker(config, "rl", config.run_dir, resume=bool(resume), resume_step=logged_until)
    seeds = list(range(train.start, train.start + train.count))
    # The over-optimisation alarm adds its event to the logs, so it reads them before the tracker writes them.
    alarm = [design.alarm] if design is not None and design.alarm is not None else []
    callbacks = [*alarm, TrackerCallback(tracker), *(callbacks or [])]
    build_kwargs = {
        "batch_size": config.rollout.num_envs,
        "callbacks": callbacks,
        "max_nonfinite_steps": config.rl.max_nonfinite_steps,
    }
    trainer, rollout = get_algorithm(config.rl.algorithm).build(
        model, tokenizer, args, engine, seeds, **build_kwargs
    )
    configure(config, trainer, rollout, design, seeds, args)
    add_validation(config, tracker, trainer, rollout, tokenizer, validation, bool(resume))
    attach_tracking(trainer, tracker, config, rollout)  # tensorboard (report_to) and episode transcripts
    stop = GracefulStop(trainer.accelerator)
    trainer.add_callback(stop)
    try:
        with out_of_memory_guard(config, "rl", trainer.args):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        stop.uninstall()
    if stop.signum is not None:
        record_sync_command(tracker.finish())
        name = signal_name(stop.signum)
        raise Interrupted(
            f"stopped by {name} after step {stop.stopped_at}; checkpoint written under {args.output_dir}",
            stop.signum,
            resume_command="rlft train --config <config> <the same overrides> --resume",
        )
    path = save_final(trainer, checkpoint_dir(config, "rl"), card_files(config, checkpoint_dir(config, "rl")))
    record_sync_command(tracker.finish())
    return path


def configure(config: Config, trainer, rollout, design, seeds: list[int], args) -> None:
    """What the stage sets on a freshly built trainer and its rollout: the reward design, the task sampling
    (dynamic sampling, curriculum), the learning-signal options, and the model card of each resume checkpoint."""
    rollout.reward_design = design
    rollout.dynamic_sampling = dynamic_sampling_for(config.rl.dynamic_sampling, seeds, args)
    rollout.curriculum = curriculum_for(config.rl.curriculum, seeds, args)  # None: uniform, TRL's sampler
    trainer.learning_signal.configure(config.rl.skip_steps_without_signal, config.rl.no_signal_warn_fraction)
    trainer.checkpoint_card = partial(resume_card_files, config)  # README.md in every trainer/rl/checkpoint-N


def save_final(trainer, path: Path, extra_files: dict[str, str] | None = None) -> Path:
    """The trained policy (PPO: with its critic in critic/, which rlft.models.critic.load_critic reloads) into
    `path`, written beside it and renamed into place: a kill during the save leaves the previous `path` or none,
    never half of one (the run's last checkpoint is complete: `--resume` saves it again without training).
    `extra_files` (name -> text) are written into it before the rename, so they come with the weights or not
    at all."""
    staging_root = path.parent / ".staging"
    staging = staging_root / path.name
    if trainer.accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    try:
        save_trained(trainer, staging)  # every rank (a collective under FSDP / ZeRO-3); ends with a barrier
    except Exception as exc:  # a full disk or a folder gone read-only: one line, the staging folder removed
        if not is_storage_fault(exc):
            raise
        if trainer.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(exc, staging, latest_complete(trainer.args.output_dir)) from exc
    if trainer.accelerator.is_main_process:
        for name, text in (extra_files or {}).items():
            write_text_atomic(staging / name, text)
        match_umask(staging)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
        empty_staging(staging_root, path.parent)
    trainer.accelerator.wait_for_everyone()
    return path


def resume_changes(config: Config) -> dict[str, dict[str, Any]]:
    """The keys that differ between `config` and the run's config.yaml, as {key: {"from": old, "to": new}}.

    Raises:
        ConfigError: a changed key outside `RESUMABLE_KEYS`, naming it, both values and what to do instead.
    """
    saved_path = config.run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}  # a run folder from before config.yaml was written: nothing to compare with
    saved = _flat(config_to_dict(load_config(saved_path)))
    now = _flat(config_to_dict(config))
    changes = {
        key: {"from": saved.get(key), "to": now.get(key)}
        for key in sorted(saved.keys() | now.keys())
        if saved.get(key) != now.get(key)
    }
    refused = [key for key in changes if not any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_KEYS)]
    if refused:
        key = refused[0]
        others = f" (and {', '.join(refused[1:])})" if refused[1:] else ""
        raise ConfigError(
            f"--resume: {key}{others} cannot change when a run is resumed: it was "
            f"{changes[key]['from']!r} in {saved_path} and is {changes[key]['to']!r} now. Resume with "
            f"{key}={changes[key]['from']} (or without the change), or start a new run under another `name`. "
            f"What may change on resume: {', '.join(f'{k}.*' if '.' not in k else k for k in RESUMABLE_KEYS)}"
        )
    return changes


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def record_resume(config: Config, checkpoint: Path, changes: dict[str, dict[str, Any]]) -> None:
    """One row per resume in runs/<name>/resumes.jsonl: when, from which checkpoint (step), what changed."""
    row = {"time": time.time(), "step": checkpoint_step(checkpoint), "checkpoint": str(checkpoint)}
    with (config.run_dir / RESUMES_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({**row, "changes": changes}) + "\n")


def record_start(config: Config, resume: Path | None, changes: dict[str, dict[str, Any]]) -> None:
    """A resume is recorded (`record_resume`); a fresh start removes a best checkpoint (checkpoints/rl_best)
    left by a discarded run of this name: `rlft eval` would report it as this run's."""
    if resume:
        record_resume(config, resume, changes)
    else:
        shutil.rmtree(checkpoint_dir(config, BEST), ignore_errors=True)


def add_validation(
    config: Config, tracker, trainer, rollout, tokenizer, seeds: list[int], resumed: bool
) -> None:
    """With `eval.every_steps`: evaluation on the validation `seeds` and model selection (ModelSelection, which a
    resumed run continues from its selection.json)."""
    if config.eval.every_steps:
        selection = ModelSelection(config, trainer, previous=read_selection(config) if resumed else None)
        trainer.add_callback(
            held_out_eval_callback(config, tracker, trainer, rollout, tokenizer, seeds, selection)
        )


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def held_out_eval_callback(
    config: Config, tracker: Tracker, trainer, rollout, tokenizer, seeds: list[int], select=None
):
    """Periodic evaluation during RL (`eval.every_steps`) on the validation seeds and, with `eval.train_tasks`, as
    many training tasks (rlft.stages.generalisation); `select` (a ModelSelection) sees each result."""
    shuffle = getattr(trainer, "shuffle_dataset", True)
    training = train_task_seeds(config, len(seeds), shuffle) if config.eval.train_tasks else []
    evaluate = GeneralisationEvaluation(
        config, tokenizer, seeds, training, evaluate_policy, lambda: trainer.state.global_step
    )
    callback = HeldOutEvalCallback(tracker, evaluate, config.eval.every_steps, rollout, select)
    callback.trainer = trainer
    return callback


class ModelSelection:
    """Model selection on validation success, never on the test tasks: with `eval.keep_best`, the checkpoint
    with the best validation success so far is saved as checkpoints/rl_best with selection.json (its step and
    success); a validation success more than `eval.regression_margin` below the run's first warns, once.

    Called on every process after each validation (the main process alone evaluates and broadcasts its
    success, since saving is a collective under FSDP / ZeRO-3). `previous`: a resumed run's selection.json.
    """

    def __init__(self, config: Config, trainer, previous: dict[str, Any] | None = None):
        self.config, self.trainer, self.keep_best = config, trainer, config.eval.keep_best
        self.margin, self.path = config.eval.regression_margin, checkpoint_dir(config, BEST)
        previous = previous or {}
        self.best_step, self.best = previous.get("step"), previous.get("validation_success")
        self.first = previous.get("first_validation_success")
        self.warned = False
        self.greedy: list[float] = []  # validation greedy success so far (this run): a still policy warns

    def __call__(self, step: int, logs: dict[str, float] | None) -> None:
        shared = [None if logs is None else float(logs["eval/success"])]
        if self.trainer.accelerator.num_processes > 1:
            broadcast_object_list(shared, from_process=0)
        success = shared[0]
        self.first = success if self.first is None else self.first
        if (
            success < self.first - self.margin
            and not self.warned
            and self.trainer.accelerator.is_main_process
        ):
            self.warned = True
            kept = (
                f"eval.keep_best keeps the best so far (step {self.best_step}, validation success "
                f"{self.best:.3f}) as checkpoints/rl_best, which `rlft eval` reports as rl_best"
                if self.keep_best and self.best is not None
                else "eval.keep_best: true to keep the best validation checkpoint"
            )
            logger.warning(
                "validation success %.3f at step %d is more than eval.regression_margin = %.2f below the run's "
                "first, %.3f: RL is making the policy worse. Try a lower rl.trainer.learning_rate, a larger "
                "rl.trainer.beta (KL to the start policy), another rollout.temperature; %s",
                success,
                step,
                self.margin,
                self.first,
                kept,
            )
        if logs is not None and GREEDY_SUCCESS in logs:
            self.warn_if_greedy_still(step, float(logs[GREEDY_SUCCESS]))
        if self.keep_best and (self.best is None or success > self.best):
            self.best, self.best_step = success, step
            record = {"step": step, "validation_success": success, "first_validation_success": self.first}
            files = {SELECTION_FILE: json.dumps(record, indent=2) + "\n"}
            files.update(card_files(self.config, self.path, selection=record))  # README.md
            save_final(self.trainer, self.path, files)

    def warn_if_greedy_still(self, step: int, greedy: float) -> None:
        """Once, when validation greedy success has been exactly the same at STILL_VALIDATIONS validations: on the
        same validation tasks that means no greedy decision that matters has changed; RL only sharpens sampling."""
        self.greedy.append(greedy)
        if len(self.greedy) == STILL_VALIDATIONS and len(set(self.greedy)) == 1:
            logger.warning(
                "validation greedy success has been %.3f at each of %d validations (up to step %d): RL has not "
                "changed a greedy decision that matters on the validation tasks, only the sampling around them. "
                "Try more steps or a larger rl.trainer.learning_rate (watch entropy and episode/invalid_actions: "
                "too large collapses the policy), and see benchmarks/investigations/greedy_success_2026-12-07.md",
                greedy,
                len(self.greedy),
                step,
            )


def read_selection(config: Config) -> dict[str, Any] | None:
    """checkpoints/rl_best/selection.json ({step, validation_success, ...}), or None without one."""
    path = checkpoint_dir(config, BEST) / SELECTION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
