"""Faults that surface: env calls that raise, hang or return malformed output, and running out of memory.

An env fault ends one episode, not the run: the rollout engine flags the episode (`Episode.failure`), the
algorithms leave it out of the batch, and a run aborts with `EnvFailureError` only when more than
`rollout.max_env_failure_rate` of a batch failed. Out of memory anywhere in a stage becomes a
`ResourceError` whose message names the knobs that lower memory, with their current values.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from rlft.errors import EnvFailureError, ResourceError

logger = logging.getLogger(__name__)

REASONS_SHOWN = 3


# ================================================================================= env calls with a timeout


class EnvCallTimeout(Exception):
    """An env call did not return in time; the call is abandoned, still running in its worker thread."""


class EnvWorker:
    """Makes one env's calls on a long-lived daemon thread, so that the caller can stop waiting for one.

    Starting a thread per call cost ~80 us against ~8 us for a hand-off to a waiting thread, and in a
    quickstart rollout (`benchmarks/env_guard_overhead.py`, shared 2-core CPU machine) a thread per call
    added 125-460 us per env step (2.3-7.7% of the rollout's CPU time) against 31-120 us (0.6-2.0%) for a
    worker per env, the range being the machine's load; so each env gets one thread for its lifetime.

    A call that times out is abandoned: Python cannot kill a thread, so the worker (and its env, which may
    be half-way through a step) is never used again and the engine makes a fresh env. A hang that holds the
    GIL (a C extension spinning without releasing it) cannot be timed out this way, nor can a crash of the
    whole process: `rollout.env_workers: subprocess` (`rlft.rollout.env_workers`) survives both.
    """

    def __init__(self, env: Any):
        self.env = env
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(
            target=_serve,
            args=(self._calls, self._results),
            daemon=True,
            name=f"rlft-env-{type(env).__name__}",
        )
        thread.start()
        # Stop the thread when the worker is dropped (the thread holds the queues, not the worker).
        weakref.finalize(self, self._calls.put, None)

    def submit(self, function: Callable, *args: Any) -> None:
        """Start `function(*args)` on the worker thread; `result` waits for it. The rollout engine submits the
        calls of a whole batch before it waits for any, so that their timeouts run concurrently."""
        self._calls.put((function, args))

    def result(self, timeout: float) -> Any:
        """What the submitted call returned; raises what it raised, or EnvCallTimeout after `timeout` s."""
        try:
            ok, value = self._results.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise EnvCallTimeout from None
        if not ok:
            raise value
        return value

    def call(self, function: Callable, *args: Any, timeout: float) -> Any:
        """`function(*args)` on the worker thread; raises what it raised, or EnvCallTimeout after `timeout` s."""
        self.submit(function, *args)
        return self.result(timeout)


def _serve(calls: queue.SimpleQueue, results: queue.SimpleQueue) -> None:
    while (item := calls.get()) is not None:
        function, args = item
        try:
            results.put((True, function(*args)))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller, which decides)
            results.put((False, exc))
        del item, function, args  # do not keep the env's last arguments alive while idle


# ========================================================================================== failure rate


def failure_summary(failures: Sequence[tuple[int, str]], shown: int = REASONS_SHOWN) -> str:
    """The first `shown` (seed, reason) pairs, and how many more.

    >>> failure_summary([(3, "env.step raised ValueError('x') on turn 2")])
    "seed 3: env.step raised ValueError('x') on turn 2"
    """
    text = "; ".join(f"seed {seed}: {reason}" for seed, reason in failures[:shown])
    if len(failures) > shown:
        text += f"; and {len(failures) - shown} more"
    return text


def check_failure_rate(
    failed: int,
    total: int,
    failures: Sequence[tuple[int, str]],
    max_rate: float,
    where: str = "rollout batch",
) -> None:
    """Raise EnvFailureError when `failed / total` exceeds `max_rate`; warn when some failed.

    Args:
        failed, total: failed and all episodes of the batch (summed over processes in distributed training,
            so that every process takes the same decision).
        failures: (seed, reason) of this process's failed episodes, for the message.
        max_rate: `rollout.max_env_failure_rate`.
        where: what the batch is, for the message.
    """
    if failed == 0 or total == 0:
        return
    rate = failed / total
    summary = failure_summary(failures)
    if rate > max_rate:
        raise EnvFailureError(
            f"{failed} of {total} episodes ({rate:.0%}) in a {where} failed, more than "
            f"rollout.max_env_failure_rate = {max_rate:g}: {summary}. Fix the env, raise "
            "rollout.env_step_timeout_s if it is only slow, or raise rollout.max_env_failure_rate to carry on "
            "(failed episodes are left out of the batch)"
        )
    logger.warning("%d of %d episodes in a %s failed and were left out: %s", failed, total, where, summary)


# ========================================================================================== out of memory


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's `torch.OutOfMemoryError`, or the RuntimeError the CPU and MPS allocators raise."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def mark_phase(exc: BaseException, phase: str) -> None:
    """Tag an out-of-memory error with where it happened (read by `out_of_memory_guard`)."""
    if not hasattr(exc, "rlft_phase"):
        exc.rlft_phase = phase


def arg_value(trainer_args, name: str, default: Any) -> Any:
    """A built trainer config's value (defaults filled in), else the configured one."""
    return getattr(trainer_args, name, default) if trainer_args is not None else default


def memory_knobs(config, stage: str, phase: str, trainer_args=None) -> list[str]:
    """The settings that lower memory for this stage and phase, most relevant first, with current values."""
    r = config.rollout
    generation = [
        f"rollout.num_envs = {r.num_envs} (episodes generated at once)",
        f"rollout.max_episode_tokens = {r.max_episode_tokens}",
        f"rollout.max_action_tokens = {r.max_action_tokens}",
    ]
    if stage == "eval":
        return [f"eval.batch_size = {config.eval.batch_size} (episodes generated at once)", *generation[1:]]
    section = "sft" if stage == "sft" else "rl"
    trainer = config.sft.trainer if stage == "sft" else config.rl.trainer
    batch = arg_value(
        trainer_args, "per_device_train_batch_size", trainer.get("per_device_train_batch_size", "default")
    )
    accumulation = arg_value(
        trainer_args, "gradient_accumulation_steps", trainer.get("gradient_accumulation_steps", 1)
    )
    update = [
        f"{section}.trainer.per_device_train_batch_size = {batch}",
        f"{section}.trainer.gradient_accumulation_steps = {accumulation} (raise it as you lower the "
        "batch size, to keep the effective batch)",
    ]
    if stage == "sft":
        return update
    return generation + update if phase == "rollout generation" else update + generation


def out_of_memory_message(config, stage: str, exc: BaseException, trainer_args=None) -> str:
    phase = getattr(exc, "rlft_phase", None) or {"sft": "update", "eval": "evaluation"}.get(stage, "update")
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    section = "sft" if stage == "sft" else "rl"
    checkpointing = arg_value(
        trainer_args,
        "gradient_checkpointing",
        (config.sft.trainer if stage == "sft" else config.rl.trainer).get("gradient_checkpointing", False),
    )
    others = [
        f"{section}.trainer.gradient_checkpointing = {checkpointing} (true trades compute for memory)",
        f"model.lora = {'on' if config.model.lora is not None else 'off'} (LoRA trains far fewer parameters)",
        "or a smaller model (model.name_or_path)",
    ]
    knobs = memory_knobs(config, stage, phase, trainer_args)
    if stage == "eval":
        others = others[-1:]
    return (
        f"out of memory during {stage} ({phase}): {first_line}. Lower one of: "
        + "; ".join(knobs)
        + "; or change "
        + "; ".join(others)
    )


@contextlib.contextmanager
def out_of_memory_guard(config, stage: str, trainer_args=None) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into a ResourceError naming the knobs to turn.

    Args:
        config: the run's Config (current values are read from it).
        stage: "sft", "rl" or "eval".
        trainer_args: the built TRL config, whose values (defaults filled in) are the current ones.
    """
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ResourceError(out_of_memory_message(config, stage, exc, trainer_args)) from exc
