"""Where the rollout engine's envs run, and how it waits for them (`rollout.env_workers`).

The engine makes its env calls in rounds: the resets of a batch, then at each token position the steps of every
row whose action ended there. A pool takes one round, `{slot: ("reset", seed) | ("step", action)}`, starts every
call before it waits for any, and waits for all of them against one deadline (`rollout.env_step_timeout_s` from
the start of the round), so a round in which every env hangs ends after about one timeout, not one per env. Each
call gets an `EnvReply`: what the env returned, or the error that ends its episode (what the env raised,
`EnvCallTimeout`, or `EnvWorkerDied`). An env whose call failed is dropped and its slot gets a fresh one from the
factory on the next `ensure`: a timed-out call may still be running, and one that raised may have left the env
half-updated.

Two pools:

- `thread` (`ThreadEnvPool`, the default): envs live in this process. With a timeout each env's calls run on
  its own long-lived daemon thread (`rlft.runtime.faults.EnvWorker`); without one the env is called directly,
  one after another. A hang that holds the GIL, or a crash of the whole process (segfault, `os._exit`), takes the
  run with it.
- `subprocess` (`SubprocessEnvPool`): each env slot is a worker process running gymnasium's `AsyncVectorEnv`
  worker loop for one env (`rlft.rollout.env_process`), spoken to over its own pipe. A worker that hangs past
  the timeout is killed, one that dies (its pipe closes) is reaped; either fails only its episode, and the slot
  gets a fresh worker. `AsyncVectorEnv` itself does not fit: it steps all its envs together (`step_async` /
  `step_wait` over the whole vector, one timeout that raises for the vector and leaves it closed), whereas the
  engine steps each row the moment its action ends, a different subset at every token position, and must
  replace one env without touching the others. So the pool reuses its worker and pipes and waits on the pipes
  itself (`multiprocessing.connection.wait`, one deadline). Envs are made in the worker by the pickled factory
  (cloudpickle, as `AsyncVectorEnv` does); workers start with `forkserver` (a clean process: forking a parent
  that runs torch and tokenizer threads can deadlock the child) where the platform has it, else `spawn`.
  A message costs a pipe round trip per call (see `benchmarks/env_guard_overhead.py`).
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

import gymnasium as gym
from gymnasium.vector import async_vector_env
from gymnasium.vector.utils import CloudpickleWrapper

from rlft.errors import ConfigError, did_you_mean
from rlft.rollout.env_process import INSTRUCTIONS, make_instructed_env, serve
from rlft.runtime.faults import EnvCallTimeout, EnvWorker
from rlft.runtime.user_code import where_raised

ENV_WORKERS = ("thread", "subprocess")  # `rollout.env_workers` (rlft.config.sections lists the same)
EnvCall = tuple[str, Any]  # ("reset", seed) or ("step", action)
ERROR_WAIT_S = 5.0  # how long to wait for a worker's error report after it said that it failed
STOP_WAIT_S = 5.0  # how long to wait for a killed worker to be reaped


class EnvWorkerDied(Exception):
    """The worker process running the env ended during the call (a crash, `os._exit`, a signal)."""

    def __init__(self, exitcode: int | None):
        super().__init__(exitcode)
        self.exitcode = exitcode

    def __str__(self) -> str:
        if self.exitcode is not None and self.exitcode < 0:
            return f"killed by {signal.Signals(-self.exitcode).name}"
        return f"exit code {self.exitcode}"


@dataclass
class EnvReply:
    """One call's outcome: `value` as the env returned it, or `error` (what the env raised, EnvCallTimeout,
    EnvWorkerDied) when the call failed."""

    value: Any = None
    error: BaseException | None = None


class EnvPool(Protocol):
    """Env slots 0..n-1 and their calls (see the module docstring)."""

    def ensure(self, n: int) -> None:
        """Make sure slots 0..n-1 hold an env (a fresh one where a failed call dropped it)."""
        ...

    def call(self, calls: Mapping[int, EnvCall], timeout: float | None) -> dict[int, EnvReply]:
        """Make one round of calls at once and wait for all of them; `timeout` None waits forever."""
        ...

    def instructions(self, slot: int) -> str:
        """`env.unwrapped.instructions` of the env in `slot` ("" if it has none), read after its reset."""
        ...


def make_env_pool(kind: str, env_factory: Callable[[], gym.Env]) -> EnvPool:
    """The pool `rollout.env_workers` names: "thread" or "subprocess"."""
    if kind == "thread":
        return ThreadEnvPool(env_factory)
    if kind == "subprocess":
        return SubprocessEnvPool(env_factory)
    raise ConfigError(f"rollout.env_workers: unknown kind {kind!r}{did_you_mean(kind, ENV_WORKERS)}")


def failure_reason(name: str, error: BaseException, turn: int | None, timeout: float | None) -> str:
    """The `Episode.failure` text for a call to `env.<name>` (on `turn`; None for a reset) that failed with `error`.

    >>> failure_reason("step", ValueError("boom"), 2, 30.0)
    "env.step raised ValueError('boom') on turn 2"
    """
    on_turn = f" on turn {turn}" if turn is not None else ""
    if isinstance(error, EnvCallTimeout):
        return f"env.{name} did not return within {timeout:g} s{on_turn} (rollout.env_step_timeout_s)"
    if isinstance(error, EnvWorkerDied):
        return f"env.{name} ended its worker process ({error}){on_turn} (rollout.env_workers)"
    return f"env.{name} raised {error!r}{on_turn}{where_raised(error)}"  # + " in your code module:fn (file:line)"


def invoke(env: gym.Env, name: str, argument: Any) -> Any:
    """Make the call `(name, argument)` on `env`."""
    return env.reset(seed=argument) if name == "reset" else env.step(argument)


# ======================================================================================= threads (default)


class ThreadEnvPool:
    """Envs in this process; with a timeout, each env's calls run on its own `EnvWorker` thread.

    Attributes:
        envs: the env of each slot; None once a failed call dropped it (remade by `ensure`).
        workers: the worker thread of each slot, made on its first call with a timeout.
    """

    def __init__(self, env_factory: Callable[[], gym.Env]):
        self.env_factory = env_factory
        self.envs: list[gym.Env | None] = []
        self.workers: list[EnvWorker | None] = []

    def ensure(self, n: int) -> None:
        while len(self.envs) < n:
            self.envs.append(None)
            self.workers.append(None)
        for slot in range(n):
            if self.envs[slot] is None:
                self.envs[slot] = self.env_factory()
                self.workers[slot] = None

    def call(self, calls: Mapping[int, EnvCall], timeout: float | None) -> dict[int, EnvReply]:
        replies: dict[int, EnvReply] = {}
        try:
            if timeout is None:  # no thread hand-off at all: the env is called right here
                for slot, (name, argument) in calls.items():
                    replies[slot] = self._reply(
                        slot, lambda s=slot, n=name, a=argument: invoke(self.envs[s], n, a)
                    )
                return replies
            for slot, (name, argument) in calls.items():
                if self.workers[slot] is None:
                    self.workers[slot] = EnvWorker(self.envs[slot])
                self.workers[slot].submit(invoke, self.envs[slot], name, argument)
            deadline = time.monotonic() + timeout
            for slot in calls:
                replies[slot] = self._reply(
                    slot, lambda s=slot: self.workers[s].result(deadline - time.monotonic())
                )
            return replies
        except BaseException:  # e.g. KeyboardInterrupt while waiting: unanswered workers may answer later
            for slot in calls:
                if slot not in replies:
                    self._drop(slot)
            raise

    def _reply(self, slot: int, wait_for: Callable[[], Any]) -> EnvReply:
        try:
            return EnvReply(value=wait_for())
        except Exception as exc:  # noqa: BLE001  (any env error, EnvCallTimeout included, ends only its episode)
            self._drop(slot)
            return EnvReply(error=exc)

    def _drop(self, slot: int) -> None:
        self.envs[slot] = self.workers[slot] = None

    def instructions(self, slot: int) -> str:
        return getattr(self.envs[slot].unwrapped, "instructions", "")


# ================================================================================== worker processes


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    pipe: Connection
    errors: Any  # a multiprocessing Queue of (index, type, exception, traceback), filled by the worker loop
    instructions: str = ""


def _stop(worker: _Worker) -> int | None:
    """Kill the worker (if it still runs), reap it and close its pipe; returns its exit code."""
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(STOP_WAIT_S)
    worker.pipe.close()
    worker.errors.close()
    return worker.process.exitcode


def _stop_all(workers: list[_Worker | None]) -> None:
    for worker in workers:
        if worker is not None:
            _stop(worker)


class SubprocessEnvPool:
    """One worker process per env slot, running gymnasium's `AsyncVectorEnv` worker loop for one env.

    Args:
        env_factory: makes one env; pickled with cloudpickle and called in the worker.
        start_method: multiprocessing's start method; `forkserver` where available, else `spawn`.
    """

    def __init__(self, env_factory: Callable[[], gym.Env], start_method: str | None = None):
        if not hasattr(async_vector_env, "AutoresetMode"):
            raise ConfigError(
                "rollout.env_workers = subprocess needs gymnasium >= 1.1 (its vector worker's autoreset_mode); "
                "upgrade gymnasium or use rollout.env_workers = thread"
            )
        methods = multiprocessing.get_all_start_methods()
        self._context = multiprocessing.get_context(
            start_method or ("forkserver" if "forkserver" in methods else "spawn")
        )
        if self._context.get_start_method() == "forkserver":
            # Workers fork from the server with gymnasium and the worker loop imported (no effect once the
            # server runs). Each worker still imports the env's modules and, on Python < 3.13, the main module.
            self._context.set_forkserver_preload(["__main__", "rlft.rollout.env_process"])
        self.env_factory = env_factory
        self.workers: list[_Worker | None] = []
        weakref.finalize(self, _stop_all, self.workers)  # the list, not the pool: no reference cycle

    def ensure(self, n: int) -> None:
        """Start a worker in every empty slot below `n` and wait until each has made its env: making an env is
        not an env call, so it is not timed (as in the thread pool, where the factory runs here)."""
        while len(self.workers) < n:
            self.workers.append(None)
        started = [slot for slot in range(n) if self.workers[slot] is None]
        for slot in started:
            self.workers[slot] = self._start(slot)
        ready = self._exchange({slot: ("_call", (INSTRUCTIONS, (), {})) for slot in started}, deadline=None)
        for reply in ready.values():
            if reply.error is not None:
                raise RuntimeError(
                    f"an env worker process (rollout.env_workers = subprocess) could not make its env: "
                    f"{reply.error!r}{'; its traceback is above' if isinstance(reply.error, EnvWorkerDied) else ''}"
                ) from reply.error

    def _start(self, slot: int) -> _Worker:
        parent_pipe, child_pipe = self._context.Pipe()
        errors = self._context.Queue()
        env_fn = CloudpickleWrapper(partial(make_instructed_env, self.env_factory))
        process = self._context.Process(
            target=serve,
            args=(slot, env_fn, child_pipe, parent_pipe, errors),
            name=f"rlft-env-{slot}",
            daemon=True,
        )
        process.start()
        child_pipe.close()  # the worker's end lives in the worker: its exit closes the pipe (EOF here)
        return _Worker(process, parent_pipe, errors)

    def call(self, calls: Mapping[int, EnvCall], timeout: float | None) -> dict[int, EnvReply]:
        deadline = None if timeout is None else time.monotonic() + timeout
        requests = {
            slot: ("reset", {"seed": argument}) if name == "reset" else ("step", argument)
            for slot, (name, argument) in calls.items()
        }
        replies = self._exchange(requests, deadline)
        # The instructions of each env that reset, read in a second round under the same deadline.
        reset = {
            slot: ("_call", (INSTRUCTIONS, (), {})) for slot, (name, _) in calls.items() if name == "reset"
        }
        for slot, reply in self._exchange(
            {slot: command for slot, command in reset.items() if replies[slot].error is None}, deadline
        ).items():
            if reply.error is None:
                self.workers[slot].instructions = reply.value
            else:
                replies[slot] = reply
        return replies

    def _exchange(
        self, requests: Mapping[int, tuple[str, Any]], deadline: float | None
    ) -> dict[int, EnvReply]:
        """Send every command, then read the replies as they come until `deadline`; workers still silent then
        are killed (EnvCallTimeout)."""
        replies: dict[int, EnvReply] = {}
        waiting: dict[Connection, int] = {}
        try:
            for slot, command in requests.items():
                try:
                    self.workers[slot].pipe.send(command)
                except OSError:  # the worker is gone (its pipe is closed)
                    replies[slot] = EnvReply(error=EnvWorkerDied(self._retire(slot)))
                    continue
                waiting[self.workers[slot].pipe] = slot
            while waiting:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                ready = wait(list(waiting), remaining)
                if not ready:
                    break
                for pipe in ready:
                    slot = waiting.pop(pipe)
                    replies[slot] = self._receive(slot)
        except BaseException:  # e.g. KeyboardInterrupt: unanswered workers would answer the next call
            for slot in waiting.values():
                self._retire(slot)
            raise
        for slot in waiting.values():
            self._retire(slot)
            replies[slot] = EnvReply(error=EnvCallTimeout())
        return replies

    def _receive(self, slot: int) -> EnvReply:
        worker = self.workers[slot]
        try:
            value, ok = worker.pipe.recv()
        except (EOFError, OSError):  # the worker died before it answered
            return EnvReply(error=EnvWorkerDied(self._retire(slot)))
        if ok:
            return EnvReply(value=value)
        try:  # the worker loop reports the exception on its queue, then exits
            _, _, error, _ = worker.errors.get(timeout=ERROR_WAIT_S)
        except queue.Empty:
            error = RuntimeError("the env raised an exception that could not be sent back from its worker")
        self._retire(slot)
        return EnvReply(error=error)

    def _retire(self, slot: int) -> int | None:
        """Stop the worker of `slot` and free the slot (a fresh worker starts on the next `ensure`)."""
        worker, self.workers[slot] = self.workers[slot], None
        return _stop(worker)

    def instructions(self, slot: int) -> str:
        return self.workers[slot].instructions

    def close(self) -> None:
        """Stop every worker now (they are also stopped when the pool is garbage-collected, or at exit)."""
        _stop_all(self.workers)
        self.workers[:] = [None] * len(self.workers)
