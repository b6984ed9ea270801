"""`rlft launch --grid configs/grids/x.yaml [--parallel N] [--dry-run]`: many runs from one command.

A grid file crosses configs with override variants and seeds; each combination is one job, an ordinary run
directory `<output_dir>/<experiment>/<config-stem>[-<variant>]-s<seed>` whose `name`, `output_dir`, `seed` and
`tracking.experiment` the launcher sets (so wandb groups every job under the experiment)::

    experiment: algos                        # required: the jobs' parent folder and wandb group
    configs: [configs/quickstart.yaml, configs/quickstart_ppo.yaml]   # paths from where rlft is run
    overrides: {base: [], low_lr: [rl.trainer.learning_rate=1e-4]}    # or a list of lists; [] = as written
    seeds: [0, 1, 2]                          # default [0]
    command: pipeline                         # sft | train | eval | pipeline (default)
    output_dir: runs                          # default runs

Every job's config is validated before anything runs (exit 2, naming the grid key). Jobs run one after another
in this process, or `--parallel N` at a time, each a `python -m rlft.cli` process with its own log under
`<output_dir>/<experiment>/logs/` and 1/N of the CPU threads (and, with GPUs, its own GPU). A failed job does
not stop the others; a summary table ends the launch. A job that finished is recorded in its run dir
(`launch.json`) and skipped when the grid runs again; one whose RL stopped part-way continues with `--resume`.

The grid file and its jobs: rlft/tools/grid.py; what each job runs: launch_plan.py; running them: launch_runner.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable
from pathlib import Path

from rlft.tools.grid import Grid, Job, expand, read_grid

DEFAULT_ACCELERATE_CONFIG = "configs/accelerate/multi_gpu.yaml"


def summary_table(jobs: list[Job]) -> str:
    rows = ["| job | status | exit code | seconds | run dir |", "|---|---|---|---|---|"]
    for job in jobs:
        code = "" if job.exit_code is None else str(job.exit_code)
        seconds = f"{job.seconds:.0f}" if job.exit_code is not None else ""
        status = f"{job.status} ({job.note})" if job.note and job.status != "done" else job.status
        rows.append(f"| {job.name} | {status} | {code} | {seconds} | {job.run_dir} |")
    return "\n".join(rows)


def accelerate_commands(jobs: list[Job], command: str, accelerate_config: str) -> list[str]:
    """The same jobs under `accelerate launch` on a GPU machine: one after another, each over every GPU."""
    return [
        shlex.join(
            ["accelerate", "launch", "--config_file", accelerate_config, "-m", "rlft.cli", *job.argv(command)]
        )
        for job in jobs
    ]


def write_summary(grid: Grid, jobs: list[Job]) -> Path:
    path = grid.experiment_dir / "launch_summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "grid": grid.path,
                "experiment": grid.experiment,
                "command": grid.command,
                "jobs": [
                    {
                        "job": j.name,
                        "status": j.status,
                        "note": j.note,
                        "exit_code": j.exit_code,
                        "seconds": round(j.seconds, 1),
                        "run_dir": str(j.run_dir),
                        "config": j.config,
                        "seed": j.seed,
                        "overrides": j.overrides,
                    }
                    for j in jobs
                ],
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    return path


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `rlft launch` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "launch",
        help="run a grid of configs x overrides x seeds (configs/grids/)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--grid", required=True, help="grid YAML file (configs/grids/)")
    parser.add_argument(
        "--parallel",
        type=_positive,
        default=1,
        metavar="N",
        help="run N jobs at a time, each its own process (default 1: one after another, in this process)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    parser.add_argument(
        "--accelerate-config",
        default=DEFAULT_ACCELERATE_CONFIG,
        metavar="FILE",
        help=f"accelerate config in the printed GPU commands (default {DEFAULT_ACCELERATE_CONFIG})",
    )
    return parser


def run(args: argparse.Namespace, run_argv: Callable[[list[str]], int]) -> int:
    """`rlft launch`.

    Args:
        args: the parsed `rlft launch` arguments.
        run_argv: runs `rlft <argv>` in this process and returns its exit code: `rlft.cli.main`, passed in
            because the CLI imports this module (jobs run one at a time go through the same entry point).

    Returns:
        0 when every job is done (or was done before), 1 when one failed or is blocked, 128 + signal when the
        launch was stopped; 2 (a ConfigError, raised) when the grid or a config is bad.
    """
    # The planner and the runner import the stages (torch, TRL): imported when a launch runs, not when the CLI
    # builds its parser, so that `rlft --help` and a bad config answer at once.
    from rlft.tools.launch_plan import prepare
    from rlft.tools.launch_runner import Runner

    grid = read_grid(args.grid)
    jobs = expand(grid)
    prepare(grid, jobs)
    todo = [job for job in jobs if job.steps]
    print(
        f"rlft launch: experiment '{grid.experiment}' ({grid.path}): {len(jobs)} jobs, {len(todo)} to run, "
        f"{sum(j.status == 'skipped' for j in jobs)} completed earlier, {sum(j.status == 'blocked' for j in jobs)} "
        f"blocked; command {grid.command}" + ("" if args.dry_run else f", {args.parallel} at a time"),
        flush=True,
    )
    gpu_lines = accelerate_commands(jobs, grid.command, args.accelerate_config)
    if args.dry_run:
        _print_dry_run(jobs, gpu_lines)
        return 0
    runner = Runner(jobs, grid.command, run_argv, args.parallel)
    runner.run()
    print("\n" + summary_table(jobs))
    print(f"summary: {write_summary(grid, jobs)}")
    offline = sorted(grid.experiment_dir.glob("*/wandb/offline-run-*"))
    if offline:
        print(f"to upload the offline wandb runs: wandb sync {grid.experiment_dir}/*/wandb/offline-run-*")
    print("\nthe same grid on a GPU machine, one job at a time over every GPU:\n" + "\n".join(gpu_lines))
    if runner.stop_signal is not None:
        return 128 + runner.stop_signal
    return 0 if all(job.status in ("done", "skipped") for job in jobs) else 1


def _print_dry_run(jobs: list[Job], gpu_lines: list[str]) -> None:
    """`--dry-run`: each job's `rlft` command lines (or why it has none), then the same grid for a GPU machine."""
    for job in jobs:
        for step in job.steps:
            print(shlex.join(["rlft", *step]))
        if not job.steps:
            print(f"# {job.name}: {job.status} ({job.note})")
    print("\n# the same grid on a GPU machine, one job at a time over every GPU:")
    print("\n".join(gpu_lines))
