"""FrozenLake as a text env, on Gymnasium's ``FrozenLakeEnv``."""

from __future__ import annotations

from typing import Any, Literal

import gymnasium
from gymnasium.envs.toy_text.frozen_lake import MAPS, FrozenLakeEnv, generate_random_map

from envs.text_adapter import DiscreteTextEnv

ACTION_NAMES: tuple[str, ...] = ("left", "down", "right", "up")  # Gymnasium's action ids 0..3
AGENT = "@"


def render_frozen_lake(env: gymnasium.Env, obs: Any) -> str:
    """The grid, one row per line and cells separated by spaces, ``@`` on the agent, its position, then
    the tile one move away in each direction (``wall`` past the edge).

    The neighbour line spells out what a reader of the grid would see around ``@``: a small policy can
    act on it without first learning to locate ``@`` in the grid, while the grid still carries what is
    needed to plan around dead ends.

    Example:
        >>> print(render_frozen_lake(FrozenLakeEnv(map_name="4x4"), 1))
        S @ F F
        F H F H
        F F F H
        H F F G
        row 0 col 1
        left S down H right F up wall
    """
    lake = env.unwrapped
    row, col = divmod(int(obs), lake.ncol)
    tiles = [[tile.decode() for tile in line] for line in lake.desc.tolist()]
    cells = [list(line) for line in tiles]
    cells[row][col] = AGENT
    grid = "\n".join(" ".join(line) for line in cells)
    around = []
    for name, (dr, dc) in (("left", (0, -1)), ("down", (1, 0)), ("right", (0, 1)), ("up", (-1, 0))):
        r, c = row + dr, col + dc
        inside = 0 <= r < lake.nrow and 0 <= c < lake.ncol
        around.append(f"{name} {tiles[r][c] if inside else 'wall'}")
    return f"{grid}\nrow {row} col {col}\n" + " ".join(around)


def reached_goal(env: gymnasium.Env, obs: Any, reward: Any, terminated: bool, info: dict[str, Any]) -> bool:
    """Success: the agent stands on ``G`` (checked on the tile, so any ``reward_schedule`` works)."""
    return bool(env.unwrapped.desc.flat[int(obs)] == b"G")


class TextFrozenLake(DiscreteTextEnv):
    """FrozenLake played in words: walk from S to G across the ice without falling into a hole.

    ## Description
    Gymnasium's FrozenLake (``gymnasium.envs.toy_text.frozen_lake.FrozenLakeEnv``) with a text
    observation and text actions. The dynamics, rewards and maps are Gymnasium's; this class only holds
    the inner env, renders it and parses actions. With ``random_map_size`` every reset draws a new map
    with Gymnasium's ``generate_random_map``, so a policy must read the map rather than memorise one.

    ## Action Space
    ``Text``: one of the words ``left``, ``down``, ``right``, ``up`` (Gymnasium's actions 0..3), matched
    after stripping and lower-casing; ``"right."`` and ``"right please"`` count as ``right``. Any other
    text is an invalid action (see ``invalid_action``).

    ## Observation Space
    ``Text``: the grid, one row per line, cells separated by single spaces (``S`` start, ``F`` frozen,
    ``H`` hole, ``G`` goal), the agent's cell shown as ``@``, then a line ``row r col c`` (0-based, row 0
    at the top). At reset on the 4x4 map::

        @ F F F
        F H F H
        F F F H
        H F F G
        row 0 col 0

    ## Rewards
    Gymnasium's: +1 on reaching G, 0 otherwise. An invalid action gives ``invalid_penalty``.

    ## Episode End
    Termination: the agent reaches G or falls into a hole; or an invalid action in ``"terminate"`` mode.
    Truncation: the ``max_episode_steps`` of the registration (30 for the 4x4 ids).

    ## Information
    The adapter's keys (``success`` = reached G, ``invalid_action``, ``invalid_actions``, ``action_id``,
    ``task_id`` = map rows joined by ``/``, plus ``:slippery`` on slippery ice) and Gymnasium's ``prob``.

    ## Arguments
    ```python
    import gymnasium, envs
    gymnasium.make("rlft/FrozenLake-v0", map_name="4x4", is_slippery=False)
    gymnasium.make("rlft/FrozenLakeRandom-v0", random_map_size=4, p=0.8)
    ```
    * ``map_name="4x4"``: one of Gymnasium's fixed maps (``"4x4"``, ``"8x8"``).
    * ``desc=None``: a custom map (list of rows of S/F/H/G); takes precedence over ``map_name``.
    * ``random_map_size=None``: if set, a new ``size x size`` map at every reset; takes precedence over
      ``map_name``. The map is a deterministic function of ``reset(seed=s)``; ``reset()`` without a seed
      draws the next map from the env's ``np_random``.
    * ``p=0.8``: probability that a random-map tile is frozen.
    * ``is_slippery=False``: Gymnasium's slippery ice (intended move with probability 1/3).
    * ``invalid_action="penalty"``, ``invalid_penalty=0.0``: see ``DiscreteTextEnv``.

    ## Version History
    * v0: Initial version (on Gymnasium FrozenLake-v1 dynamics).
    """

    def __init__(
        self,
        map_name: str | None = "4x4",
        desc: list[str] | None = None,
        random_map_size: int | None = None,
        p: float = 0.8,
        is_slippery: bool = False,
        invalid_action: Literal["penalty", "terminate"] = "penalty",
        invalid_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        """Builds the inner ``FrozenLakeEnv``; see the class docstring for the arguments."""
        if random_map_size is not None:
            if desc is not None:
                raise ValueError("Give either desc or random_map_size, not both.")
            if random_map_size < 2:
                raise ValueError(f"random_map_size must be >= 2, got {random_map_size}.")
            if not 0 < p <= 1:
                raise ValueError(f"p (probability of a frozen tile) must be in (0, 1], got {p}.")
            # A placeholder map until the first reset draws one; seed 0 keeps construction deterministic.
            desc = generate_random_map(random_map_size, p=p, seed=0)
        elif desc is None:
            if map_name not in MAPS:
                raise ValueError(f"map_name must be one of {sorted(MAPS)} (or give desc / random_map_size).")
            desc = MAPS[map_name]
        self.random_map_size = random_map_size
        self.p = p
        self.is_slippery = is_slippery

        instructions = (
            "Move @ from S to the goal G on the frozen lake without stepping into a hole H. "
            "Rows and columns count from 0 at the top left. Reply with one word: left, down, right or up."
        )
        if is_slippery:
            instructions += " The ice is slippery: a move may go sideways."
        super().__init__(
            FrozenLakeEnv(desc=desc, is_slippery=is_slippery),
            ACTION_NAMES,
            renderer=render_frozen_lake,
            instructions=instructions,
            invalid_action=invalid_action,
            invalid_penalty=invalid_penalty,
            success_fn=reached_goal,
            render_mode=render_mode,
        )

    @property
    def task_id(self) -> str:
        """The map rows joined by ``/``, with ``:slippery`` on slippery ice."""
        rows = "/".join(b"".join(line).decode() for line in self.inner.unwrapped.desc.tolist())
        return rows + (":slippery" if self.is_slippery else "")

    def _reset_inner(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        if self.random_map_size is None:
            return super()._reset_inner(seed, options)
        # Both draws come from np_random, which reset() has just seeded with `seed` (if given): the map
        # and the slips are a deterministic function of the reset seed, and an unseeded reset continues
        # the stream.
        map_seed, inner_seed = (int(x) for x in self.np_random.integers(2**31 - 1, size=2))
        desc = generate_random_map(self.random_map_size, p=self.p, seed=map_seed)
        self.inner = FrozenLakeEnv(desc=desc, is_slippery=self.is_slippery)
        return self.inner.reset(seed=inner_seed, options=options)


def _grid_and_marks(observation: str) -> tuple[list[list[str]], dict[str, tuple[int, int]]]:
    """The grid rows of a rendered observation (cells as strings) and where @ and G stand in it."""
    grid = [
        line.split() for line in observation.splitlines() if line and not line.startswith(("row", "left"))
    ]
    cells = {cell: (r, c) for r, row in enumerate(grid) for c, cell in enumerate(row) if cell in ("@", "G")}
    return grid, cells


def goal_distance_potential(observation: str) -> float:
    """A shaping potential for FrozenLake text observations: minus the Manhattan distance from @ to G, in [-1, 0].

    Used as `potential: envs.frozen_lake:goal_distance_potential` by the `potential_shaping` rule (Ng et al. 1999:
    shaping by gamma * Phi(s') - Phi(s) leaves the optimal policy unchanged). An observation without both @ and
    G (the agent stands on the goal) has potential 0.

    >>> goal_distance_potential("@ F\\nF G\\nrow 0 col 0")
    -1.0
    >>> goal_distance_potential("S F\\n@ G\\nrow 1 col 0")
    -0.5
    """
    grid, cells = _grid_and_marks(observation)
    if "@" not in cells or "G" not in cells:
        return 0.0
    (ar, ac), (gr, gc) = cells["@"], cells["G"]
    span = max(1, (len(grid) - 1) + (max(len(row) for row in grid) - 1))
    return -(abs(ar - gr) + abs(ac - gc)) / span


def path_value_potential(observation: str, gamma: float = 1.0) -> float:
    """A shaping potential for FrozenLake text observations on non-slippery ice: the optimal value V*(s).

    V*(s) = gamma ** (d - 1), with d the length of the shortest walk from @ to G that steps on no hole (a
    breadth-first search over the grid in the observation; the env pays 1 on reaching G and nothing else).
    A state with no such walk has potential 0, and so has an observation without @ and G. With Phi = V* and
    the algorithm's discount, the shaped reward r + gamma * Phi(s') - Phi(s) of a turn is the optimal
    advantage A*(s, a): 0 for a move along a shortest safe walk, below 0 for any other (a step away, a bump
    into the wall, a hole). Every turn then carries its own credit, which the env's reward (paid at the goal
    only) does not. It is exact on non-slippery maps only, and it does not count the turn limit.

    `potential_shaping` passes its own `gamma` to a potential that takes one, so Phi and the shaping share
    the discount.

    >>> path_value_potential("@ F\\nF G\\nrow 0 col 0", gamma=0.5)
    0.5
    >>> path_value_potential("S H\\n@ G\\nrow 1 col 0")
    1.0
    >>> path_value_potential("@ H\\nH G\\nrow 0 col 0")
    0.0
    """
    grid, cells = _grid_and_marks(observation)
    if "@" not in cells or "G" not in cells:
        return 0.0
    frontier, seen, steps = [cells["@"]], {cells["@"]}, 0
    while frontier:
        steps += 1
        reached = []
        for r, c in frontier:
            for nr, nc in ((r, c - 1), (r + 1, c), (r, c + 1), (r - 1, c)):
                if not (0 <= nr < len(grid) and 0 <= nc < len(grid[nr])) or (nr, nc) in seen:
                    continue
                if grid[nr][nc] == "G":
                    return float(gamma) ** (steps - 1)
                if grid[nr][nc] != "H":
                    seen.add((nr, nc))
                    reached.append((nr, nc))
        frontier = reached
    return 0.0
