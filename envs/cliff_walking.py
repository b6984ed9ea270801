"""CliffWalking as a text env, on Gymnasium's ``CliffWalkingEnv``."""

from __future__ import annotations

from typing import Any, Literal

import gymnasium
import numpy as np
from gymnasium.envs.toy_text.cliffwalking import CliffWalkingEnv

from envs.text_adapter import DiscreteTextEnv

ACTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left")  # Gymnasium's action ids 0..3
AGENT = "@"


def goal_state(env: gymnasium.Env) -> int:
    """Gymnasium's goal: the bottom-right cell, the last state."""
    return int(env.unwrapped.nS) - 1


def render_cliff_walking(env: gymnasium.Env, obs: Any) -> str:
    """The grid (``.`` safe, ``C`` cliff, ``S`` start, ``G`` goal, ``@`` agent), then the position.

    Example:
        >>> print(render_cliff_walking(CliffWalkingEnv(), 24))
        . . . . . . . . . . . .
        . . . . . . . . . . . .
        @ . . . . . . . . . . .
        S C C C C C C C C C C G
        row 2 col 0
    """
    cliff = env.unwrapped
    # Gymnasium keeps the cliff layout in the private `_cliff` mask (present since gym 0.x); reading it
    # keeps the text in step with the dynamics instead of restating the layout here.
    cells = np.where(cliff._cliff, "C", ".")
    cells.flat[cliff.start_state_index] = "S"
    cells.flat[goal_state(cliff)] = "G"
    row, col = np.unravel_index(int(obs), cliff.shape)
    cells[row, col] = AGENT
    grid = "\n".join(" ".join(line) for line in cells.tolist())
    return f"{grid}\nrow {row} col {col}"


def reached_goal(env: gymnasium.Env, obs: Any, reward: Any, terminated: bool, info: dict[str, Any]) -> bool:
    """Success: the agent stands on the goal (CliffWalking's reward there is -1, so the default fails)."""
    return int(obs) == goal_state(env)


class TextCliffWalking(DiscreteTextEnv):
    """CliffWalking played in words: walk along the cliff edge from S to G without falling off.

    ## Description
    Gymnasium's CliffWalking (``gymnasium.envs.toy_text.cliffwalking.CliffWalkingEnv``, Sutton and Barto
    Example 6.6) with a text observation and text actions: a 4x12 grid, start at the bottom left, goal
    at the bottom right, the cliff between them. Dynamics and rewards are Gymnasium's.

    ## Action Space
    ``Text``: one of ``up``, ``right``, ``down``, ``left`` (Gymnasium's actions 0..3), matched after
    stripping and lower-casing. Any other text is an invalid action.

    ## Observation Space
    ``Text``: the grid, one row per line, cells separated by spaces (``.`` safe, ``C`` cliff, ``S``
    start, ``G`` goal), ``@`` on the agent, then ``row r col c`` (0-based, row 0 at the top)::

        . . . . . . . . . . . .
        . . . . . . . . . . . .
        . . . . . . . . . . . .
        @ C C C C C C C C C C G
        row 3 col 0

    ## Rewards
    Gymnasium's: -1 per step, -100 for stepping onto the cliff (which sends the agent back to S).
    An invalid action gives ``invalid_penalty``. The optimal return is -13.

    ## Episode End
    Termination: the agent reaches G; or an invalid action in ``"terminate"`` mode.
    Truncation: ``max_episode_steps`` of the registration (50).

    ## Information
    The adapter's keys (``success`` = reached G, ``task_id`` = ``"CliffWalking"`` plus ``:slippery``)
    and Gymnasium's ``prob``.

    ## Arguments
    ```python
    import gymnasium, envs
    gymnasium.make("rlft/CliffWalking-v0", is_slippery=False)
    ```
    * ``is_slippery=False``: Gymnasium's slippery variant (sideways moves with probability 2/3).
    * ``invalid_action="penalty"``, ``invalid_penalty=0.0``: see ``DiscreteTextEnv``.

    ## Version History
    * v0: Initial version (on Gymnasium CliffWalking-v1 dynamics).
    """

    def __init__(
        self,
        is_slippery: bool = False,
        invalid_action: Literal["penalty", "terminate"] = "penalty",
        invalid_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        """Builds the inner ``CliffWalkingEnv``; see the class docstring for the arguments."""
        self.is_slippery = is_slippery
        instructions = (
            "Move @ from S to the goal G. Each step costs 1; stepping on a cliff C costs 100 and sends you "
            "back to S. Rows and columns count from 0 at the top left. "
            "Reply with one word: up, right, down or left."
        )
        if is_slippery:
            instructions += " The ground is slippery: a move may go sideways."
        super().__init__(
            CliffWalkingEnv(is_slippery=is_slippery),
            ACTION_NAMES,
            renderer=render_cliff_walking,
            instructions=instructions,
            invalid_action=invalid_action,
            invalid_penalty=invalid_penalty,
            success_fn=reached_goal,
            render_mode=render_mode,
        )

    @property
    def task_id(self) -> str:
        """``"CliffWalking"``, with ``:slippery`` on the slippery variant."""
        return "CliffWalking" + (":slippery" if self.is_slippery else "")
