"""Before any job of `rlft launch` runs: every job's config is checked, and what each will run is decided.

A job that finished before is skipped, one whose RL stopped part-way continues with `train --resume`, one whose
RL folder holds only incomplete checkpoints is blocked; any other runs its command, after the same checks of
earlier stages that `rlft <command>` makes (rlft/tools/commands.py).
"""

from __future__ import annotations

from rlft.algorithms.checkpoint_folders import latest_complete, list_checkpoints
from rlft.config.schema import Config
from rlft.errors import ConfigError, RlftError
from rlft.stages.checks import load_checked_config
from rlft.tools.commands import check_earlier_stages
from rlft.tools.grid import Grid, Job, read_marker


def prepare(grid: Grid, jobs: list[Job]) -> None:
    """Validate every job's config and decide what each will run (skip, fresh, resume, blocked).

    Raises a ConfigError listing every job whose config is bad, before any job starts.
    """
    problems: list[str] = []
    for job in jobs:
        where = f"key '{job.config_key}' = '{job.config}'" + (
            f" with key '{job.variant_key}'" if job.variant_key else ""
        )
        try:
            config = load_checked_config(job.config, job.overrides)
        except ConfigError as exc:
            problems.append(f"job {job.name} ({where}): {exc}")
            continue
        try:
            _plan(job, config, grid.command)
        except RlftError as exc:
            problems.append(f"job {job.name} ({where}): {exc}")
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise ConfigError(
            f"{grid.path}: {len(problems)} of {len(jobs)} jobs cannot start; nothing was run:\n  - "
            + "\n  - ".join(shown)
        )


def _plan(job: Job, config: Config, command: str) -> None:
    """What a job runs now: nothing if it finished before, `train --resume` after a crash, else its command."""
    if read_marker(job.run_dir).get(command, {}).get("status") == "done":
        job.status, job.note = "skipped", "completed earlier"
        return
    rl_dir = job.run_dir / "trainer" / "rl"
    resume = command in ("train", "pipeline") and bool(list_checkpoints(rl_dir))
    if resume and latest_complete(rl_dir) is None:
        job.status = "blocked"
        job.note = f"{rl_dir} holds only incomplete checkpoints; move it away to start over"
        return
    if resume:
        job.note = f"resuming RL from {latest_complete(rl_dir).name}"
        job.steps = [[*job.argv("train"), "--resume"]] + ([job.argv("eval")] if command == "pipeline" else [])
        return
    check_earlier_stages(
        command, config
    )  # e.g. no SFT checkpoint: a CheckpointError naming the command to run
    job.steps = [job.argv(command)]
