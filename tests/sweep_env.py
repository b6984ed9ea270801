"""A one-turn text env whose success the test sets, for the sweep tests (`env.id: tests.sweep_env:CoinEnv`).

## Description
One coin per seed: the episode succeeds on a fixed `success_rate` fraction of seeds whatever the policy
says, so a sweep over `env.kwargs.success_rate` has trials that are clearly worse than others from the
first held-out evaluation on, and the pruner's decisions do not depend on what a tiny random policy learns.

## Action Space
`Text`: anything ("heads" or "tails" are the names).

## Observation Space
`Text`: "flip".

## Rewards
1 if the seed's coin wins, else 0.

## Episode End
After one turn. With `fail=True`, `step` raises ValueError("boom") on the seeds in `FAIL_SEEDS` (a param value
that makes a trial fail after its config validated: `rlft validate` plays seeds 0-2 and gymnasium's check_env
seed 123, and the tiny model's corpus then plays seeds 0-9).
"""

from __future__ import annotations

import gymnasium as gym

FAIL_SEEDS = range(5, 10)


class CoinEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, success_rate: float = 1.0, fail: bool = False):
        if not 0.0 <= success_rate <= 1.0:
            raise ValueError(f"success_rate = {success_rate}: expected a value in [0, 1]")
        self.success_rate, self.fail = success_rate, fail
        self.action_space = gym.spaces.Text(max_length=16)
        self.observation_space = gym.spaces.Text(max_length=16)
        self.action_names = ["heads", "tails"]
        self.instructions = "Call the coin."
        self._win = False
        self._seed: int | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # A rate of 0 never wins and 1 always does; in between, about that fraction of seeds win.
        self._win = ((seed or 0) * 37 % 100) < round(self.success_rate * 100)
        self._seed = seed
        return "flip", {}

    def step(self, action: str):
        if self.fail and self._seed in FAIL_SEEDS:
            raise ValueError("boom")
        return "done", float(self._win), True, False, {"success": self._win}
