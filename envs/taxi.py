"""Taxi as a text env, on Gymnasium's ``TaxiEnv``."""

from __future__ import annotations

import functools
from typing import Any, Literal

import gymnasium
from gymnasium.envs.toy_text.taxi import TaxiEnv

from envs.text_adapter import DiscreteTextEnv

ACTION_NAMES: tuple[str, ...] = ("south", "north", "east", "west", "pickup", "dropoff")  # ids 0..5
AGENT = "@"
IN_TAXI = 4  # Gymnasium's passenger location index for "in the taxi"


def pad_names(taxi: TaxiEnv) -> list[str]:
    """The pad letters (R, G, Y, B) in Gymnasium's location order, read off its map."""
    return [taxi.desc[1 + row, 2 * col + 1].decode() for row, col in taxi.locs]


def render_taxi(env: gymnasium.Env, obs: Any, show_map: bool = True) -> str:
    """Gymnasium's map with ``@`` on the taxi (if ``show_map``), then one status line.

    Example:
        >>> taxi = TaxiEnv()
        >>> print(render_taxi(taxi, taxi.encode(2, 1, 2, 1)))
        +---------+
        |R: | : :G|
        | : | : : |
        | :@: : : |
        | | : | : |
        |Y| : |B: |
        +---------+
        taxi row 2 col 1, passenger at Y, destination G
    """
    taxi = env.unwrapped
    row, col, passenger, destination = taxi.decode(int(obs))
    names = pad_names(taxi)
    where = "in taxi" if passenger == IN_TAXI else f"at {names[passenger]}"
    status = f"taxi row {row} col {col}, passenger {where}, destination {names[destination]}"
    if not show_map:
        return status
    lines = [[tile.decode() for tile in line] for line in taxi.desc.tolist()]
    lines[1 + row][2 * col + 1] = AGENT
    return "\n".join("".join(line) for line in lines) + "\n" + status


def delivered(env: gymnasium.Env, obs: Any, reward: Any, terminated: bool, info: dict[str, Any]) -> bool:
    """Success: the passenger was dropped off at the destination, the only way Taxi terminates."""
    return bool(terminated)


class TextTaxi(DiscreteTextEnv):
    """Taxi played in words: pick up the passenger and drop them off at their destination.

    ## Description
    Gymnasium's Taxi (``gymnasium.envs.toy_text.taxi.TaxiEnv``, the Taxi-v3/v4 dynamics of Dietterich,
    2000) with a text observation and text actions. The 5x5 grid has four pads R, G, Y, B; the taxi
    starts on a random cell, the passenger on a pad and the destination is another pad. Walls ``|``
    block east-west moves. Dynamics and rewards are Gymnasium's.

    ## Action Space
    ``Text``: one of ``south``, ``north``, ``east``, ``west``, ``pickup``, ``dropoff`` (Gymnasium's
    actions 0..5), matched after stripping and lower-casing. Any other text is an invalid action.

    ## Observation Space
    ``Text``: Gymnasium's ASCII map with ``@`` on the taxi (omitted when ``show_map=False``), then a line
    ``taxi row r col c, passenger at Y|in taxi, destination G`` (0-based, row 0 at the top)::

        +---------+
        |R: | : :G|
        | : | : : |
        | :@: : : |
        | | : | : |
        |Y| : |B: |
        +---------+
        taxi row 2 col 1, passenger at Y, destination G

    ## Rewards
    Gymnasium's: -1 per step, +20 for delivering the passenger, -10 for an illegal pickup or dropoff.
    An invalid action gives ``invalid_penalty``.

    ## Episode End
    Termination: the passenger is delivered; or an invalid action in ``"terminate"`` mode.
    Truncation: ``max_episode_steps`` of the registration (50; an optimal episode takes at most 20).

    ## Information
    The adapter's keys (``success`` = delivered, ``task_id`` = ``"Taxi"`` plus ``:rainy`` /
    ``:fickle``) and Gymnasium's ``prob`` and ``action_mask``.

    ## Arguments
    ```python
    import gymnasium, envs
    gymnasium.make("rlft/Taxi-v0", show_map=True, is_rainy=False, fickle_passenger=False)
    ```
    * ``show_map=True``: include the map; without it the walls must be learned.
    * ``is_rainy=False``, ``fickle_passenger=False``: Gymnasium's stochastic variants.
    * ``invalid_action="penalty"``, ``invalid_penalty=0.0``: see ``DiscreteTextEnv``.

    ## Version History
    * v0: Initial version (on Gymnasium Taxi-v4 dynamics).
    """

    def __init__(
        self,
        show_map: bool = True,
        is_rainy: bool = False,
        fickle_passenger: bool = False,
        invalid_action: Literal["penalty", "terminate"] = "penalty",
        invalid_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        """Builds the inner ``TaxiEnv``; see the class docstring for the arguments."""
        taxi = TaxiEnv(is_rainy=is_rainy, fickle_passenger=fickle_passenger)
        self.show_map = show_map
        self.is_rainy = is_rainy
        self.fickle_passenger = fickle_passenger
        pads = ", ".join(f"{name} ({row},{col})" for name, (row, col) in zip(pad_names(taxi), taxi.locs))
        instructions = (
            "Drive the taxi @ to the passenger, pickup, drive to the destination, dropoff. "
            f"Pads (row,col): {pads}. Walls | block east-west moves. "
            "Reply with one word: south, north, east, west, pickup or dropoff."
        )
        super().__init__(
            taxi,
            ACTION_NAMES,
            renderer=functools.partial(render_taxi, show_map=show_map),
            instructions=instructions,
            invalid_action=invalid_action,
            invalid_penalty=invalid_penalty,
            success_fn=delivered,
            render_mode=render_mode,
        )

    @property
    def task_id(self) -> str:
        """``"Taxi"`` plus the stochastic variants in use; the map is always Gymnasium's."""
        return "Taxi" + (":rainy" if self.is_rainy else "") + (":fickle" if self.fickle_passenger else "")
