"""Text environments for language-model policies, registered with Gymnasium under ``rlft/``.

Importing this package registers the envs below (``gymnasium.make("rlft/FrozenLake-v0")``); without
the import, ``gymnasium.make("envs:rlft/FrozenLake-v0")`` imports it first. Any other Gymnasium env
with a ``Discrete`` action space becomes a text env through :class:`DiscreteTextEnv`.

``max_episode_steps`` leaves room over the optimum (4x4 FrozenLake: 6, Taxi: at most 20, CliffWalking:
13) for a learning policy; rlft's rollout engine caps turns as well.
"""

from typing import Any

import gymnasium

from envs.cliff_walking import TextCliffWalking
from envs.experts import TabularExpert, expert_for, play_expert_episode, value_iteration
from envs.frozen_lake import TextFrozenLake
from envs.preference_text import PreferenceText, gold_score
from envs.taxi import TextTaxi
from envs.text_adapter import DiscreteTextEnv, make_parser

__all__ = [
    "DiscreteTextEnv",
    "PreferenceText",
    "TabularExpert",
    "TextCliffWalking",
    "TextFrozenLake",
    "TextTaxi",
    "expert_for",
    "gold_score",
    "make_parser",
    "play_expert_episode",
    "value_iteration",
]


def register(id: str, **kwargs: Any) -> None:
    """``gymnasium.register`` once per id, so a re-import (``importlib.reload``) does not warn."""
    if id not in gymnasium.registry:
        gymnasium.register(id=id, **kwargs)


# Toy text
# ----------------------------------------

register(
    id="rlft/FrozenLake-v0",
    entry_point="envs.frozen_lake:TextFrozenLake",
    kwargs={"map_name": "4x4", "is_slippery": False},
    max_episode_steps=30,
)

register(
    id="rlft/FrozenLakeRandom-v0",
    entry_point="envs.frozen_lake:TextFrozenLake",
    kwargs={"random_map_size": 4, "p": 0.8, "is_slippery": False},
    max_episode_steps=30,
)

register(
    id="rlft/Taxi-v0",
    entry_point="envs.taxi:TextTaxi",
    max_episode_steps=50,
)

register(
    id="rlft/CliffWalking-v0",
    entry_point="envs.cliff_walking:TextCliffWalking",
    max_episode_steps=50,
)

# Text generation
# ----------------------------------------

register(
    id="rlft/PreferenceText-v0",
    entry_point="envs.preference_text:PreferenceText",
)
