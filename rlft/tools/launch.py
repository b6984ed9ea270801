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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.errors import ConfigError, RlftError, did_you_mean

GRID_KEYS = ("experiment", "configs", "overrides", "seeds", "command", "output_dir")
COMMANDS = ("sft", "train", "eval", "pipeline")
LAUNCH_KEYS = ("name", "output_dir", "seed", "tracking.experiment")  # each job's, set by the launcher
MARKER = "launch.json"  # in a job's run dir: per command, how its last launch ended
DEFAULT_ACCELERATE_CONFIG = "configs/accelerate/multi_gpu.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Grid:
    path: str
    experiment: str
    configs: list[str]
    variants: list[tuple[str | None, str, list[str]]]  # (name or None, the grid key that wrote it, overrides)
    seeds: list[int]
    command: str
    output_dir: str

    @property
    def experiment_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment


@dataclass
class Job:
    """One run of the grid: a config, a variant's overrides and a seed, in its own run directory."""

    name: str
    config: str
    config_key: str  # where the grid names it, for error messages: "configs[1]"
    variant_key: str | None  # "overrides.low_lr", "overrides[2]", None for the config as written
    seed: int
    overrides: list[str]  # the variant's, then the launcher's (name, output_dir, seed, tracking.experiment)
    run_dir: Path
    log_path: Path
    steps: list[list[str]] = field(default_factory=list)  # `rlft` argv of each process this launch runs
    status: str = "pending"
    note: str = ""
    exit_code: int | None = None
    seconds: float = 0.0

    def argv(self, command: str) -> list[str]:
        return [command, "--config", self.config, *self.overrides]


# ---------------------------------------------------------------------------------------------------------------
# The grid file
# ---------------------------------------------------------------------------------------------------------------


def read_grid(path: str | os.PathLike) -> Grid:
    """Read and check a grid file; every problem is a ConfigError naming the file and the key."""
    from rlft.config.schema import read_yaml

    source = str(path)
    if Path(path).is_file() and not Path(path).read_text(encoding="utf-8", errors="replace").strip():
        raise ConfigError(f"{source}: the grid file is empty; expected at least 'experiment' and 'configs'")
    raw = read_yaml(path)
    for key in raw:
        if key not in GRID_KEYS:
            raise ConfigError(f"{source}: unknown key '{key}'{did_you_mean(str(key), GRID_KEYS)}; a grid has "
                              f"{', '.join(GRID_KEYS)}")
    for key in ("experiment", "configs"):
        if key not in raw:
            raise ConfigError(f"{source}: missing required key '{key}'")
    experiment = raw["experiment"]
    if not isinstance(experiment, str) or not _NAME.match(experiment):
        raise ConfigError(f"{source}: key 'experiment' = {experiment!r}: expected a folder name (letters, digits, "
                          "'.', '_', '-', '+')")
    command = raw.get("command", "pipeline")
    if command not in COMMANDS:
        raise ConfigError(f"{source}: key 'command' = {command!r}: expected one of {', '.join(COMMANDS)}"
                          f"{did_you_mean(str(command), COMMANDS)}")
    output_dir = raw.get("output_dir", "runs")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"{source}: key 'output_dir' = {output_dir!r}: expected a folder")
    return Grid(source, experiment, _read_configs(source, raw["configs"]),
                _read_variants(source, raw.get("overrides", [[]])), _read_seeds(source, raw.get("seeds", [0])),
                command, output_dir)


def _read_configs(source: str, configs: Any) -> list[str]:
    if not isinstance(configs, list) or not configs:
        raise ConfigError(f"{source}: key 'configs' = {configs!r}: expected a non-empty list of config files")
    for index, config in enumerate(configs):
        if not isinstance(config, str):
            raise ConfigError(f"{source}: key 'configs[{index}]' = {config!r}: expected a path")
        if not Path(config).is_file():
            raise ConfigError(f"{source}: key 'configs[{index}]' = '{config}': file does not exist (paths are "
                              f"relative to where rlft runs: {Path.cwd()})")
    return list(configs)


def _read_variants(source: str, overrides: Any) -> list[tuple[str | None, str, list[str]]]:
    """`overrides` as a list of lists (names made from the overrides) or a mapping name -> list."""
    if isinstance(overrides, dict):
        named = [(str(name), f"overrides.{name}", items) for name, items in overrides.items()]
        for name, key, _ in named:
            if not _NAME.match(name):
                raise ConfigError(f"{source}: key '{key}': expected a name of letters, digits, '.', '_', '-', '+'")
    elif isinstance(overrides, list) and overrides:
        named = [(None, f"overrides[{index}]", items) for index, items in enumerate(overrides)]
    else:
        raise ConfigError(f"{source}: key 'overrides' = {overrides!r}: expected a list of override lists "
                          "([[], [rl.trainer.learning_rate=1e-4]]) or a mapping name -> override list")
    variants = []
    for name, key, items in named:
        _check_overrides(source, key, items)
        if name is None and items:
            name = _variant_name(items)
        variants.append((name, key, list(items)))
    names = [name for name, _, _ in variants]
    if len(set(names)) < len(names):  # two list variants that slug alike: number them instead
        variants = [(f"v{i}" if items else None, key, items) for i, (_, key, items) in enumerate(variants)]
    if sum(1 for _, _, items in variants if not items) > 1:
        raise ConfigError(f"{source}: key 'overrides': more than one variant without overrides (the same runs twice)")
    return variants


def _check_overrides(source: str, key: str, items: Any) -> None:
    from rlft.config.schema import parse_overrides

    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{source}: key '{key}' = {items!r}: expected a list of key.sub=value strings")
    try:
        parsed = parse_overrides(items)
    except ConfigError as exc:
        raise ConfigError(f"{source}: key '{key}': {exc}") from None
    for path, _ in parsed:
        if ".".join(path) in LAUNCH_KEYS:
            raise ConfigError(f"{source}: key '{key}': '{'.'.join(path)}' is set by rlft launch for each job "
                              "(name, output_dir, seed and tracking.experiment come from the grid)")


def _variant_name(items: list[str]) -> str:
    """A folder-safe name from overrides: `rl.trainer.learning_rate=1e-4` -> `learning_rate-1e-4`."""
    parts = []
    for item in items:
        key, value = item.split("=", 1)
        parts.append(f"{key.rsplit('.', 1)[-1]}-{value}")
    name = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._+-]", "-", "+".join(parts))).strip("-.")
    return name[:60].rstrip("-.") or "variant"


def _read_seeds(source: str, seeds: Any) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{source}: key 'seeds' = {seeds!r}: expected a non-empty list of integers >= 0")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"{source}: key 'seeds' = {seeds!r}: a seed is listed twice")
    return list(seeds)


def _yaml_value(text: str) -> str:
    """`text` as an override value that reads back as this very string (quoted only where YAML needs it)."""
    from rlft.config.schema import parse_overrides

    return text if parse_overrides([f"k={text}"])[0][1] == text else json.dumps(text)


def expand(grid: Grid) -> list[Job]:
    """configs x variants x seeds, in that order, each a Job with its run directory and overrides."""
    jobs: list[Job] = []
    stems: dict[str, int] = {}
    for index, config in enumerate(grid.configs):
        stem = Path(config).stem
        if stem in stems:
            raise ConfigError(f"{grid.path}: key 'configs': configs[{stems[stem]}] and configs[{index}] are both "
                              f"named '{stem}', so their runs would share folders; rename one")
        stems[stem] = index
        for variant, variant_key, items in grid.variants:
            for seed in grid.seeds:
                name = f"{stem}-{variant}-s{seed}" if variant else f"{stem}-s{seed}"
                launch = [f"name={_yaml_value(name)}", f"output_dir={_yaml_value(str(grid.experiment_dir))}",
                          f"seed={seed}", f"tracking.experiment={_yaml_value(grid.experiment)}"]
                jobs.append(Job(name=name, config=config, config_key=f"configs[{index}]",
                                variant_key=variant_key if items else None, seed=seed, overrides=[*items, *launch],
                                run_dir=grid.experiment_dir / name,
                                log_path=grid.experiment_dir / "logs" / f"{name}.log"))
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# Before anything runs: every config, what each job will do
# ---------------------------------------------------------------------------------------------------------------


def prepare(grid: Grid, jobs: list[Job]) -> None:
    """Validate every job's config and decide what each will run (skip, fresh, resume, blocked).

    Raises a ConfigError listing every job whose config is bad, before any job starts.
    """
    from rlft.config.schema import load_config

    problems: list[str] = []
    configs = {}
    for job in jobs:
        where = f"key '{job.config_key}' = '{job.config}'" + (f" with key '{job.variant_key}'" if job.variant_key else "")
        try:
            configs[job.name] = load_config(job.config, job.overrides)
        except ConfigError as exc:
            problems.append(f"job {job.name} ({where}): {exc}")
            continue
        try:
            _plan(job, configs[job.name], grid.command)
        except RlftError as exc:
            problems.append(f"job {job.name} ({where}): {exc}")
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise ConfigError(f"{grid.path}: {len(problems)} of {len(jobs)} jobs cannot start; nothing was run:\n  - "
                          + "\n  - ".join(shown))


def _plan(job: Job, config, command: str) -> None:
    """What a job runs now: nothing if it finished before, `train --resume` after a crash, else its command."""
    from rlft.algorithms.checkpointing import latest_complete, list_checkpoints
    from rlft.stages import eval as stage_eval
    from rlft.stages import rl as stage_rl

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
    if command == "train" and config.rl.init_from == "sft":
        stage_rl.resolve_init(config)  # no SFT checkpoint: a CheckpointError naming the command to run first
    elif command == "eval":
        stage_eval.default_policies(config)
    job.steps = [job.argv(command)]


def read_marker(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_marker(job: Job, command: str) -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    record = {**read_marker(job.run_dir), command: {
        "status": job.status, "exit_code": job.exit_code,
        "seconds": round(job.seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "steps": [shlex.join(["rlft", *step]) for step in job.steps]}}
    (job.run_dir / MARKER).write_text(json.dumps(record, indent=1), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Running the jobs
# ---------------------------------------------------------------------------------------------------------------


class _Stop(Exception):
    """A signal to the launcher: running jobs get it once (they checkpoint and exit), no new job starts."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Runner:
    """Runs the jobs that have steps, one at a time in this process or `parallel` at a time as processes."""

    def __init__(self, jobs: list[Job], command: str, parallel: int = 1):
        self.jobs, self.command, self.parallel = jobs, command, parallel
        self.todo = [job for job in jobs if job.steps and job.status == "pending"]
        self.stop_signal: int | None = None
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen] = {}
        self._slots = list(range(parallel))

    def run(self) -> None:
        previous = signal.signal(signal.SIGTERM, _raise_stop) if _main_thread() else None
        try:
            if self.parallel == 1:
                self._run_in_process()
            else:
                self._run_processes()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        for job in self.todo:
            if job.status == "pending":
                job.status, job.note = "not started", "the launch was stopped"

    def _say(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)

    def _started(self, job: Job) -> None:
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        number = self.todo.index(job) + 1
        note = f", {job.note}" if job.note else ""
        self._say(f"[{number}/{len(self.todo)}] {job.name}: started (log {job.log_path}{note})")

    def _finished(self, job: Job, exit_code: int, seconds: float) -> None:
        job.exit_code, job.seconds = exit_code, seconds
        if exit_code == 0:
            job.status = "done"
        elif exit_code >= 128 and self.stop_signal is not None:
            job.status, job.note = "interrupted", "stopped by a signal; run the launch again to continue it"
        else:
            job.status = "failed"
            job.note = f"see {job.log_path}"
        write_marker(job, self.command)
        number = self.todo.index(job) + 1
        self._say(f"[{number}/{len(self.todo)}] {job.name}: {job.status} (exit code {exit_code}, {seconds:.0f} s)")

    # -- one at a time, in this process ------------------------------------------------------------------------

    def _run_in_process(self) -> None:
        for job in self.todo:
            if self.stop_signal is not None:
                break
            self._started(job)
            start, exit_code = time.perf_counter(), 0
            try:
                for step in job.steps:
                    exit_code = run_in_process(step, job.log_path)
                    if exit_code != 0:
                        break
            except (KeyboardInterrupt, _Stop) as stop:
                self.stop_signal = getattr(stop, "signum", signal.SIGINT)
                exit_code = 128 + self.stop_signal
            if exit_code in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # the job took the signal and saved
                self.stop_signal = exit_code - 128
            self._finished(job, exit_code, time.perf_counter() - start)

    # -- `parallel` at a time, each its own process ------------------------------------------------------------

    def _run_processes(self) -> None:
        pool = ThreadPoolExecutor(max_workers=self.parallel)
        futures = [pool.submit(self._run_job_process, job) for job in self.todo]
        try:
            while not all(f.done() for f in futures):
                time.sleep(0.2)
        except (KeyboardInterrupt, _Stop) as stop:
            self.stop_signal = getattr(stop, "signum", signal.SIGINT)
            self._say(f"rlft launch: {signal.Signals(self.stop_signal).name}: the running jobs checkpoint and stop; "
                      "no new job starts")
            with self._lock:
                for process in self._running.values():
                    process.send_signal(self.stop_signal)
        finally:
            pool.shutdown(wait=True)
        for future in futures:
            future.result()  # a bug in the runner itself surfaces here

    def _run_job_process(self, job: Job) -> None:
        with self._lock:
            if self.stop_signal is not None:
                return
            slot = self._slots.pop(0)
        self._started(job)
        start, exit_code = time.perf_counter(), 0
        try:
            with job.log_path.open("a", encoding="utf-8") as log:
                for step in job.steps:
                    log.write(f"$ {shlex.join(['rlft', *step])}\n")
                    log.flush()
                    with self._lock:
                        if self.stop_signal is not None:  # between the steps of a resumed pipeline
                            exit_code = 128 + self.stop_signal
                            break
                        # Its own session: a Ctrl-C at the terminal reaches the launcher only, which passes it on
                        # once (a second signal would make the job exit without its checkpoint).
                        process = subprocess.Popen([sys.executable, "-m", "rlft.cli", *step], stdout=log,
                                                   stderr=subprocess.STDOUT, env=job_environment(slot, self.parallel),
                                                   start_new_session=True)
                        self._running[job.name] = process
                    exit_code = process.wait()
                    with self._lock:
                        self._running.pop(job.name, None)
                    if exit_code != 0:
                        break
        finally:
            with self._lock:
                self._slots.append(slot)
        self._finished(job, exit_code, time.perf_counter() - start)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_stop(signum, frame) -> None:
    raise _Stop(signum)


def job_environment(slot: int, parallel: int, environ: dict[str, str] | None = None,
                    cpu_count: int | None = None, gpu_count: int | None = None) -> dict[str, str]:
    """The environment of the job in `slot` of `parallel`: 1/parallel of the CPU threads (unless the user set
    OMP_NUM_THREADS), and with GPUs, GPU `slot % count` (unless CUDA_VISIBLE_DEVICES is set)."""
    env = dict(os.environ if environ is None else environ)
    threads = str(max(1, (cpu_count or os.cpu_count() or 1) // parallel))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count()
    if gpu_count and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpu_count)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_in_process(argv: list[str], log_path: Path) -> int:
    """`rlft <argv>` in this process with its output (print, warnings, logging, progress bars) in `log_path`.

    Returns its exit code: rlft's own for its errors, 1 with the traceback in the log for anything else.
    """
    from rlft import cli

    root = logging.getLogger()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        handlers, root.handlers = root.handlers, [logging.StreamHandler(log)]
        root.handlers[0].setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        print(f"$ {shlex.join(['rlft', *argv])}", flush=True)
        try:
            return cli.main(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - one job's bug must not stop the grid; the traceback is in its log
            traceback.print_exc(file=log)
            return 1
        finally:
            root.handlers = handlers


# ---------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------


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
    return [shlex.join(["accelerate", "launch", "--config_file", accelerate_config, "-m", "rlft.cli",
                        *job.argv(command)]) for job in jobs]


def write_summary(grid: Grid, jobs: list[Job]) -> Path:
    path = grid.experiment_dir / "launch_summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"grid": grid.path, "experiment": grid.experiment, "command": grid.command,
                                "jobs": [{"job": j.name, "status": j.status, "note": j.note, "exit_code": j.exit_code,
                                          "seconds": round(j.seconds, 1), "run_dir": str(j.run_dir),
                                          "config": j.config, "seed": j.seed, "overrides": j.overrides}
                                         for j in jobs]}, indent=1), encoding="utf-8")
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
    parser = subparsers.add_parser("launch", help="run a grid of configs x overrides x seeds (configs/grids/)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="grid YAML file (configs/grids/)")
    parser.add_argument("--parallel", type=_positive, default=1, metavar="N",
                        help="run N jobs at a time, each its own process (default 1: one after another, in this "
                             "process)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    parser.add_argument("--accelerate-config", default=DEFAULT_ACCELERATE_CONFIG, metavar="FILE",
                        help=f"accelerate config in the printed GPU commands (default {DEFAULT_ACCELERATE_CONFIG})")
    return parser


def run(args: argparse.Namespace) -> int:
    """`rlft launch`: 0 when every job is done (or was done before), 1 when one failed or is blocked,
    128 + signal when the launch was stopped; 2 (a ConfigError, raised) when the grid or a config is bad."""
    grid = read_grid(args.grid)
    jobs = expand(grid)
    prepare(grid, jobs)
    todo = [job for job in jobs if job.steps]
    print(f"rlft launch: experiment '{grid.experiment}' ({grid.path}): {len(jobs)} jobs, {len(todo)} to run, "
          f"{sum(j.status == 'skipped' for j in jobs)} completed earlier, {sum(j.status == 'blocked' for j in jobs)} "
          f"blocked; command {grid.command}" + ("" if args.dry_run else f", {args.parallel} at a time"), flush=True)
    gpu_lines = accelerate_commands(jobs, grid.command, args.accelerate_config)
    if args.dry_run:
        for job in jobs:
            for step in job.steps:
                print(shlex.join(["rlft", *step]))
            if not job.steps:
                print(f"# {job.name}: {job.status} ({job.note})")
        print("\n# the same grid on a GPU machine, one job at a time over every GPU:")
        print("\n".join(gpu_lines))
        return 0
    runner = Runner(jobs, grid.command, args.parallel)
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
