"""The rl stage (`rlft train`): the configured algorithm from the initial checkpoint, with exact resume."""

from __future__ import annotations

import signal
from pathlib import Path

from rlft.algorithms.checkpointing import refuse_to_overwrite, resolve_resume
from rlft.algorithms.registry import get_algorithm
from rlft.config.defaults import rl_defaults
from rlft.config.schema import Config
from rlft.config.trainer_args import build_trainer_config
from rlft.errors import CheckpointError, ConfigError
from rlft.rewards import build_reward_design
from rlft.rollout.evaluation import evaluate_policy, held_out_seeds
from rlft.runtime.distributed import save_trained
from rlft.runtime.faults import out_of_memory_guard
from rlft.runtime.signals import GracefulStop, Interrupted
from rlft.runtime.tracking import (
    HeldOutEvalCallback,
    Tracker,
    TrackerCallback,
    attach_tracking,
)
from rlft.stages.common import (
    check_loadable,
    checkpoint_dir,
    ensure_base_checkpoint,
    env_factory,
    load_trainable,
    prepare_run,
    record_sync_command,
    rollout_engine,
    trainer_config_class,
)


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
        config.rl.trainer,
        str(config.run_dir / "trainer" / "rl"),
        config.seed,
        defaults=rl_defaults(config),
    )


def run_rl(config: Config, resume: str | bool | None = None, callbacks: list | None = None) -> Path:
    """RL from the initial checkpoint with the configured algorithm; saves checkpoints/rl.

    `resume`: True for the newest complete checkpoint under `trainer/rl`, or a checkpoint folder; the run
    continues exactly where that checkpoint left it (see rlft.checkpointing). On SIGTERM / SIGINT the step in
    flight finishes, a checkpoint is written and `Interrupted` (exit code 128 + signal) is raised.
    """
    args = rl_trainer_args(config)
    if resume:
        resume = resolve_resume(args.output_dir, resume)  # before any model is loaded
    else:
        refuse_to_overwrite(Path(args.output_dir))
    if config.rl.init_from != "base":  # a damaged start checkpoint is named before the run folder is written
        check_loadable(resolve_init(config), "rl.init_from")
    prepare_run(config)
    design = build_reward_design(config)  # None for the default (the env reward alone); loads reward models
    model, tokenizer = load_trainable(resolve_init(config), config)
    engine = rollout_engine(config, tokenizer)
    train = config.env.train_seeds
    tracker = Tracker(config, "rl", config.run_dir, resume=bool(resume))
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
    rollout.reward_design = design
    if config.eval.every_steps:
        trainer.add_callback(held_out_eval_callback(config, tracker, trainer, rollout, tokenizer))
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
            f"stopped by {name} after step {stop.stopped_at}; checkpoint written under "
            f"{args.output_dir}. Continue with: rlft train --config <config> --resume",
            stop.signum,
        )
    # PPO: the policy alone, and the critic beside it in critic/ (reloads with rlft.models.critic.load_critic).
    path = save_trained(trainer, checkpoint_dir(config, "rl"))
    record_sync_command(tracker.finish())
    return path


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def held_out_eval_callback(config: Config, tracker: Tracker, trainer, rollout, tokenizer):
    """Periodic held-out evaluation during RL (`eval.every_steps`), on the first `eval.during_episodes` seeds."""
    seeds = held_out_seeds(env_factory(config), config.env, config.eval)[: config.eval.during_episodes]
    engine = rollout_engine(config, tokenizer, greedy=config.eval.greedy)

    def evaluate(policy) -> dict[str, float]:
        engine.model = policy
        return evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)[0]

    callback = HeldOutEvalCallback(tracker, evaluate, config.eval.every_steps, rollout)
    callback.trainer = trainer
    return callback
