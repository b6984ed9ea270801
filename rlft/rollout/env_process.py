"""What runs inside an env worker process (`rollout.env_workers: subprocess`): gymnasium's own worker loop.

This module is what a worker process imports besides the env itself, so it imports nothing heavy (no torch):
the parent side, `rlft.rollout.env_workers`, does.

The loop is gymnasium's `AsyncVectorEnv` worker (`gymnasium.vector.async_vector_env._async_worker`), run for one
env: it answers `("reset", {"seed": s})`, `("step", action)`, `("_call", (name, args, kwargs))` and
`("close", None)` on its pipe with `(result, True)`, and an exception with `(None, False)` after putting
`(index, type, exception, traceback)` on its error queue; after an error it closes its env and exits. rlft runs
it with autoreset disabled (the engine resets each env with the episode's seed) and without shared memory (text
observations go through the pipe).
"""

from __future__ import annotations

import inspect
import signal
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium.vector import async_vector_env

# The `_call` attribute that returns the env's instructions (read by the engine after each reset).
INSTRUCTIONS = "rlft_instructions"


class InstructedEnv(gym.Wrapper):
    """The env as the factory made it, plus `rlft_instructions`: `env.unwrapped.instructions` ("" if none), which
    the parent reads with a `_call` command (gymnasium's `get_wrapper_attr` has no default for a missing one)."""

    @property
    def rlft_instructions(self) -> str:
        return getattr(self.env.unwrapped, "instructions", "")


def make_instructed_env(env_factory: Callable[[], gym.Env]) -> InstructedEnv:
    return InstructedEnv(env_factory())


def serve(index: int, env_fn: Callable[[], gym.Env], pipe: Any, parent_pipe: Any, error_queue: Any) -> None:
    """A worker process's main: gymnasium's worker loop for one env (see the module docstring).

    SIGINT is ignored: a Ctrl-C reaches the whole process group, and the parent decides what it stops (its
    workers are daemon processes, ended when it exits). SIGTERM keeps its default, which is how
    multiprocessing ends daemon processes at exit.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = async_vector_env._async_worker
    # The worker's arguments changed across gymnasium 1.x (a semaphore was added); pass those it takes.
    optional = {"semaphore": None} if "semaphore" in inspect.signature(worker).parameters else {}
    worker(
        index,
        env_fn,
        pipe,
        parent_pipe,
        None,  # shared memory: none, observations are text
        error_queue,
        async_vector_env.AutoresetMode.DISABLED,
        **optional,
    )
