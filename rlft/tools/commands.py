"""One stage command (`rlft sft | train | eval | pipeline | rm`) run from a loaded config.

`rlft.cli` parses the command line and loads the config, then calls `run_command`; `rlft launch` checks each job
with `check_earlier_stages` before any job starts. This module imports the stages (torch, TRL), so the CLI imports
it only when a stage runs.
"""

from __future__ import annotations

import shlex
import time

from rlft import stages
from rlft.algorithms.checkpoint_folders import refuse_to_overwrite
from rlft.config.schema import Config, RmRewardComponent
from rlft.errors import CheckpointError
from rlft.rewards.references import run_reward_model
from rlft.rollout.evaluation import held_out_seeds
from rlft.rollout.experts import check_expert_demos
from rlft.runtime.distributed import ddp_timeout_s, process_state, refuse_zero3_rl
from rlft.runtime.run_lock import run_lock
from rlft.runtime.signals import Interrupted
from rlft.stages import eval as stage_eval
from rlft.stages import rl as stage_rl
from rlft.stages.common import collect_sync_commands, env_factory

LOCKED_COMMANDS = ("train", "pipeline")  # the commands that train into the run folder (sweep trials lock too)


def run_command(
    command: str,
    config: Config,
    resume: str | bool | None = None,
    command_line: tuple[str, list[str]] | None = None,
) -> int:
    """Run one stage command and print what it made, then the `wandb sync` commands of its own offline runs.

    Args:
        command: sft, train, eval, pipeline or rm.
        config: the loaded, checked config.
        resume: `train --resume`: True for the newest complete checkpoint, or a checkpoint folder.
        command_line: (the --config path, the overrides) as typed, for the exact command that continues a run
            stopped by a signal.

    Returns:
        0; a stage's failure raises (an `RlftError` the CLI prints with its exit code).
    """
    check_earlier_stages(command, config)
    if command == "pipeline" or (command == "train" and not resume):
        refuse_to_overwrite(config.run_dir / "trainer" / "rl")  # before SFT, so a pipeline fails fast
    start = time.perf_counter()
    # One live process per run folder (the ranks of an accelerate job are one holder: the main one locks).
    locks = command in LOCKED_COMMANDS and process_state(ddp_timeout_s(config)).is_main_process
    # Collected per command, not per process: `rlft launch` runs many commands in one process.
    with run_lock(config.run_dir, main_process=locks), collect_sync_commands() as sync_commands:
        try:
            print(_run_stages(command, config, resume))
        except Interrupted as exc:
            if command_line is not None and exc.resume_command is not None:
                exc.resume_command = resume_command(command, *command_line)
            raise
    print(f"run directory: {config.run_dir}  ({time.perf_counter() - start:.0f} s)")
    for command_line in sync_commands:
        print(f"to upload the offline wandb run: {command_line}")
    return 0


def resume_command(command: str, config_path: str, overrides: list[str]) -> str:
    """The exact command line that continues a `train` / `pipeline` run stopped by a signal (shell-quoted).

    >>> resume_command("pipeline", "configs/my run.yaml", ["name=a", "seed=2"])
    "rlft train --config 'configs/my run.yaml' name=a seed=2 --resume, then rlft eval --config 'configs/my run.yaml' name=a seed=2"
    """
    train = shlex.join(["rlft", "train", "--config", config_path, *overrides, "--resume"])
    if command != "pipeline":
        return train
    return f"{train}, then {shlex.join(['rlft', 'eval', '--config', config_path, *overrides])}"


def _run_stages(command: str, config: Config, resume: str | bool | None) -> str:
    """The stages of `command`; returns the line that says what they made."""
    if command == "sft":
        return f"sft checkpoint: {stages.run_sft(config)}"
    if command == "train":
        return f"rl checkpoint: {stages.run_rl(config, resume=resume)}"
    if command == "eval":
        return stages.format_table(stages.run_eval(config))
    if command == "pipeline":
        return stages.format_table(stages.run_pipeline(config))
    if command == "rm":
        return f"reward model: {stages.run_rm(config)}"
    raise ValueError(f"not a stage command: {command!r}")


def check_earlier_stages(command: str, config: Config) -> None:
    """What a stage needs from this run's earlier stages, checked before the stage writes into the run directory.

    Raises:
        CheckpointError: naming the command to run first (no SFT checkpoint for `train` from sft, no reward model
            for a design that uses this run's, no checkpoint at all for `eval`).
    """
    if command in ("train", "pipeline"):  # a pipeline is refused before its SFT stage
        refuse_zero3_rl(config.rl.trainer.get("deepspeed"))
    if command == "train" and config.rl.init_from == "sft":
        stage_rl.resolve_init(
            config
        )  # no SFT checkpoint yet: CheckpointError naming the command to run first
    if command == "train":
        rm_path = run_reward_model(config)
        if _uses_run_reward_model(config) and not rm_path.is_dir():
            raise CheckpointError(
                f"the reward design uses this run's reward model but {rm_path} does not exist; "
                "run `rlft rm` first (or `rlft pipeline`, which trains it)"
            )
    elif command == "eval":
        stage_eval.default_policies(config)  # no checkpoint at all: CheckpointError
    if command in ("sft", "pipeline"):
        check_expert_demos(config, runs_sft=True)  # sft.demos unset (source expert) and the env has none
    if command == "pipeline" or (command == "train" and config.eval.every_steps):
        # The held-out seeds must exist (eval.disjoint_tasks): found now, not after training (a ConfigError).
        held_out_seeds(env_factory(config), config.env, config.eval)


def _uses_run_reward_model(config: Config) -> bool:
    """An rm component without a path scores with the reward model `rlft rm` trains in this run directory."""
    return any(isinstance(c, RmRewardComponent) and c.path is None for c in config.reward.components.values())
