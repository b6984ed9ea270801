"""A text env that misbehaves on chosen seeds, for the env-fault tests (`env.id: tests.faulty_env:FaultyEnv`).

## Description
A corridor of `length` cells: "right" moves towards the goal, anything else stays put. On the seeds in
`fault_seeds` (every seed when None) the env misbehaves on step `fault_turn` (counted from 1; 0 = in `reset`) in the way `fault`
names; on every other seed it is a well-behaved, deterministic env.

## Action Space
`Text`: "right" or anything else.

## Observation Space
`Text`: "cell 0 of 3".

## Rewards
1 for reaching the goal; otherwise -0.1 times the length of the action in words (so that returns differ
between episodes of a random policy and GRPO's group statistics are not degenerate).

## Episode End
Terminates at the goal. Time limits are the rollout's `env.max_turns`.

## Faults
- "none": no fault.
- "raise": raises ValueError("boom").
- "hang": sleeps `hang_s` seconds, then behaves.
- "hold_gil": sleeps `hang_s` seconds in C without releasing the GIL (libc `sleep` through `ctypes.PyDLL`),
  then behaves: no other thread of the process runs meanwhile (only `rollout.env_workers: subprocess` bounds it).
- "exit": ends the whole process at once (`os._exit(1)`), as a segfaulting C extension would.
- "bad_observation": returns the observation as an int.
- "terminate": not a fault; terminates the episode there (the control run for "a failure ends the episode
  exactly as a termination does").
"""

from __future__ import annotations

import ctypes
import os
import string
import time

import gymnasium as gym

FAULTS = ("none", "raise", "hang", "hold_gil", "exit", "bad_observation", "terminate")


def misbehave(fault: str, hang_s: float) -> None:
    """The faults that happen before the call returns (the others change what it returns)."""
    if fault == "raise":
        raise ValueError("boom")
    if fault == "hang":
        time.sleep(hang_s)
    if fault == "hold_gil":  # PyDLL calls keep the GIL (CDLL would release it); sleep takes whole seconds
        ctypes.PyDLL(None).sleep(max(1, round(hang_s)))
    if fault == "exit":
        os._exit(1)


class FaultyEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        fault: str = "none",
        fault_seeds: list[int] | tuple[int, ...] | None = (),
        fault_turn: int = 1,
        hang_s: float = 10.0,
        length: int = 3,
    ):
        if fault not in FAULTS:
            raise ValueError(f"fault = {fault!r}: expected one of {FAULTS}")
        self.fault, self.fault_turn = fault, fault_turn
        self.fault_seeds = None if fault_seeds is None else set(fault_seeds)
        self.hang_s, self.length = hang_s, length
        self.action_space = gym.spaces.Text(max_length=32)
        # "cell 0 of 3": letters, digits and spaces (gymnasium's default Text charset has no space, and
        # `rlft validate` runs gymnasium's check_env on the env)
        self.observation_space = gym.spaces.Text(
            max_length=64, charset=string.ascii_letters + string.digits + " "
        )
        self.action_names = ["right", "left"]
        self.instructions = "Walk right to the goal."
        self._seed: int | None = None
        self._turn = 0
        self._cell = 0
        self.calls: list[str] = []  # what this instance was asked to do, for the tests

    def _faulty_now(self) -> bool:
        chosen = self.fault_seeds is None or self._seed in self.fault_seeds
        return self.fault != "none" and chosen and self._turn == self.fault_turn

    def _observation(self) -> str:
        return f"cell {self._cell} of {self.length}"

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._seed, self._turn, self._cell = seed, 0, 0
        self.calls.append(f"reset {seed}")
        if self._faulty_now():
            misbehave(self.fault, self.hang_s)
            if self.fault == "bad_observation":
                return 7, {"task_id": "corridor"}
        return self._observation(), {"task_id": "corridor"}

    def step(self, action: str):
        self._turn += 1
        self.calls.append(f"step {action!r}")
        terminated = False
        if self._faulty_now():
            misbehave(self.fault, self.hang_s)
            terminated = self.fault == "terminate"
        if action.strip() == "right":
            self._cell += 1
        success = self._cell >= self.length
        reward = 1.0 if success else -0.1 * len(action.split())
        observation = self._observation()
        if self._faulty_now() and self.fault == "bad_observation":
            observation = 7
        return observation, reward, terminated or success, False, {"success": success}
