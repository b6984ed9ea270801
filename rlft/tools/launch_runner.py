"""Running the jobs of `rlft launch`: one after another in this process, or `parallel` at a time as processes.

In this process, a job's steps run through the CLI's own entry point (passed in as `run_argv`: rlft.cli imports
this package, so it cannot be imported back) with the job's output in its log. As processes, each step is a
`python -m rlft.cli` with its own log, session, share of the CPU threads and GPU. A signal reaches each running
job once (it checkpoints and exits) and no new job starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from rlft.tools.grid import Job, write_marker

RunArgv = Callable[[list[str]], int]  # `rlft <argv>` in this process -> its exit code (rlft.cli.main)


class _Stop(Exception):
    """A signal to the launcher: running jobs get it once (they checkpoint and exit), no new job starts."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Runner:
    """Runs the jobs that have steps, one at a time in this process or `parallel` at a time as processes."""

    def __init__(self, jobs: list[Job], command: str, run_argv: RunArgv, parallel: int = 1):
        """`run_argv` runs the steps of a job in this process (`parallel` 1); processes run `python -m rlft.cli`."""
        self.jobs, self.command, self.run_argv, self.parallel = jobs, command, run_argv, parallel
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
        self._say(
            f"[{number}/{len(self.todo)}] {job.name}: {job.status} (exit code {exit_code}, {seconds:.0f} s)"
        )

    # -- one at a time, in this process ------------------------------------------------------------------------

    def _run_in_process(self) -> None:
        for job in self.todo:
            if self.stop_signal is not None:
                break
            self._started(job)
            start, exit_code = time.perf_counter(), 0
            try:
                for step in job.steps:
                    exit_code = run_in_process(step, job.log_path, self.run_argv)
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
            self._say(
                f"rlft launch: {signal.Signals(self.stop_signal).name}: the running jobs checkpoint and stop; "
                "no new job starts"
            )
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
        start = time.perf_counter()
        try:
            exit_code = self._run_steps_as_processes(job, slot)
        finally:
            with self._lock:
                self._slots.append(slot)
        self._finished(job, exit_code, time.perf_counter() - start)

    def _run_steps_as_processes(self, job: Job, slot: int) -> int:
        """Each step of `job` as a `python -m rlft.cli` process on `slot`'s share of the machine, until one fails."""
        exit_code = 0
        with job.log_path.open("a", encoding="utf-8") as log:
            for step in job.steps:
                log.write(f"$ {shlex.join(['rlft', *step])}\n")
                log.flush()
                with self._lock:
                    if self.stop_signal is not None:  # between the steps of a resumed pipeline
                        return 128 + self.stop_signal
                    # Its own session: a Ctrl-C at the terminal reaches the launcher only, which passes it on
                    # once (a second signal would make the job exit without its checkpoint).
                    process = subprocess.Popen(
                        [sys.executable, "-m", "rlft.cli", *step],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=job_environment(slot, self.parallel),
                        start_new_session=True,
                    )
                    self._running[job.name] = process
                exit_code = process.wait()
                with self._lock:
                    self._running.pop(job.name, None)
                if exit_code != 0:
                    break
        return exit_code


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_stop(signum, frame) -> None:
    raise _Stop(signum)


def job_environment(
    slot: int,
    parallel: int,
    environ: dict[str, str] | None = None,
    cpu_count: int | None = None,
    gpu_count: int | None = None,
) -> dict[str, str]:
    """The environment of the job in `slot` of `parallel`: 1/parallel of the CPU threads (unless the user set
    OMP_NUM_THREADS), and with GPUs, GPU `slot % count` (unless CUDA_VISIBLE_DEVICES is set)."""
    env = dict(os.environ if environ is None else environ)
    threads = str(max(1, (cpu_count or os.cpu_count() or 1) // parallel))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    if gpu_count is None:
        gpu_count = torch.cuda.device_count()
    if gpu_count and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpu_count)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_in_process(argv: list[str], log_path: Path, run_argv: RunArgv) -> int:
    """`rlft <argv>` in this process with its output (print, warnings, logging, progress bars) in `log_path`.

    Args:
        argv: the command line after `rlft`.
        log_path: the job's log, appended to.
        run_argv: the CLI's entry point, `rlft.cli.main`.

    Returns:
        Its exit code: rlft's own for its errors, 1 with the traceback in the log for anything else.
    """
    root = logging.getLogger()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        handlers, root.handlers = root.handlers, [logging.StreamHandler(log)]
        root.handlers[0].setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        print(f"$ {shlex.join(['rlft', *argv])}", flush=True)
        try:
            return run_argv(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - one job's bug must not stop the grid; the traceback is in its log
            traceback.print_exc(file=log)
            return 1
        finally:
            root.handlers = handlers
