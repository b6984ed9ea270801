"""A user's env written outside rlft, the way issue 12's new user wrote it: Discrete observations, Discrete(4)
actions, an ANSI `render()`, a hand-written `expert_action()` method and no transition table.

The agent walks a 3x3 grid from the top-left cell to a goal. The layout (which cell is the goal) is chosen by
the reset seed among `LAYOUTS` layouts and given as `info["task_id"]`, so held-out evaluation can keep the
layouts it trains on apart from the ones it tests on. Reaching the goal gives reward 1 and ends the episode.

Variants for the tests: `LayoutAttributeGridEnv` names its layout in a `task_id` property instead of the
info; `MakeExpertGridEnv` has `make_expert(epsilon, seed)` instead of `expert_action`; `NoExpertGridEnv` has no
expert at all.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

SIZE = 3
LAYOUTS = 40
ACTION_NAMES = ["up", "down", "left", "right"]
_MOVES = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}


class GridEnv(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, render_mode: str | None = "ansi"):
        self.observation_space = gym.spaces.Discrete(SIZE * SIZE)
        self.action_space = gym.spaces.Discrete(4)
        self.render_mode = render_mode
        self.layout = 0
        self.goal = SIZE * SIZE - 1
        self.position = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.layout = (seed or 0) % LAYOUTS
        self.goal = 1 + self.layout % (SIZE * SIZE - 1)  # any cell but the start
        self.position = 0
        return self.position, self._reset_info()

    def _reset_info(self) -> dict:
        return {"task_id": f"layout{self.layout}"}

    def step(self, action):
        row, col = divmod(self.position, SIZE)
        d_row, d_col = _MOVES[int(action)]
        row, col = min(max(row + d_row, 0), SIZE - 1), min(max(col + d_col, 0), SIZE - 1)
        self.position = row * SIZE + col
        done = self.position == self.goal
        return self.position, float(done), done, False, {}

    def render(self) -> str:
        cells = ["A" if i == self.position else "G" if i == self.goal else "." for i in range(SIZE * SIZE)]
        return "\n".join("".join(cells[r * SIZE : (r + 1) * SIZE]) for r in range(SIZE))

    def expert_action(self) -> int:
        """Down (or up) to the goal's row, then right or left: a shortest path."""
        row, col = divmod(self.position, SIZE)
        goal_row, goal_col = divmod(self.goal, SIZE)
        if row != goal_row:
            return 1 if row < goal_row else 0
        return 3 if col < goal_col else 2


class LayoutAttributeGridEnv(GridEnv):
    """Declares its task through a `task_id` property, with no task id in the info."""

    @property
    def task_id(self) -> str:
        return f"layout{self.layout}"

    def _reset_info(self) -> dict:
        return {}


class MakeExpertGridEnv(GridEnv):
    """Its expert comes from `make_expert(epsilon, seed)`, whose `act(env)` gets this env (not the adapter)."""

    expert_action = None  # type: ignore[assignment]  (only make_expert here)

    def make_expert(self, epsilon: float = 0.0, seed: int = 0) -> GridExpert:
        return GridExpert(epsilon, seed)


class NoExpertGridEnv(GridEnv):
    expert_action = None  # type: ignore[assignment]


class GridExpert:
    """The user's expert object: action names, with the user's own epsilon noise."""

    def __init__(self, epsilon: float, seed: int):
        self.epsilon, self.rng = epsilon, np.random.default_rng(seed)

    def act(self, env: GridEnv) -> str:
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return ACTION_NAMES[int(self.rng.integers(4))]
        return ACTION_NAMES[GridEnv.expert_action(env)]


def render(env: GridEnv, observation: int) -> str:
    """The adapter's renderer: the env's own ANSI picture."""
    return env.render()


def expert(env: GridEnv, observation: int) -> int:
    """An expert function `(env, observation) -> action id`, as `env.expert` names it."""
    return GridEnv.expert_action(env)


def expert_by_name(env: GridEnv, observation: int) -> str:
    """The same expert answering with action names (any text the adapter's parser reads)."""
    return ACTION_NAMES[GridEnv.expert_action(env)].upper() + "."


def bad_expert(env: GridEnv, observation: int) -> int:
    """An expert that answers with an action id the env does not have."""
    return 7


def layout_of(env: GridEnv, observation: int, info: dict) -> str:
    """`env.adapter.task_id`: the task from the env's state, e.g. for an env whose info says nothing."""
    return f"goal{env.goal}"
