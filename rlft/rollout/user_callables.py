"""The adapter's user functions (renderer, parser) with what they return checked where they return it.

`envs.text_adapter.DiscreteTextEnv` checks its renderer's text and its parser's id, but it cannot say whose
function was wrong: a renderer that returns a tuple shows up as "renderer emitted characters outside
TEXT_CHARSET: [0, 3]", and one that returns an int as a TypeError inside the adapter. `rlft.rollout.env_factory`
wraps the functions a config names in these checks, so the error names the user's function, its `file:line`,
what it returned and what was expected, the same way at validate time (`rlft.rollout.env_check`, exit 2) and
at run time (an env fault of the guarded rollout, or exit 6 outside it).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import gymnasium

from envs.text_adapter import TEXT_CHARSET
from rlft.errors import UserCodeError
from rlft.runtime.user_code import describe_callable, shown

_CHARSET = frozenset(TEXT_CHARSET)


class CheckedRenderer:
    """`renderer(inner env, inner observation) -> str`, raising `UserCodeError` on anything but printable text.

    Args:
        function: the user's renderer (`env.adapter.renderer`).
    """

    def __init__(self, function: Callable[[gymnasium.Env, Any], str]):
        self.function = function
        self.where = describe_callable(function)

    def __call__(self, env: gymnasium.Env, observation: Any) -> str:
        text = self.function(env, observation)
        if not isinstance(text, str):
            raise UserCodeError(
                f"your renderer {self.where} returned {shown(text)} for the observation {shown(observation)}, "
                "expected str (the observation as text)"
            )
        unknown = sorted(set(text) - _CHARSET)
        if unknown:
            raise UserCodeError(
                f"your renderer {self.where} returned text with characters {unknown!r} for the observation "
                f"{shown(observation)}, expected printable ASCII and newlines only (no tabs, no unicode)"
            )
        return text


class CheckedParser:
    """`parser(text) -> action id or None`, raising `UserCodeError` on an id outside `[0, n_actions)`.

    Args:
        function: the user's parser (`env.adapter.parser`).
        action_names: the adapter's action names (one per id).
    """

    def __init__(self, function: Callable[[str], int | None], action_names: list[str]):
        self.function = function
        self.action_names = list(action_names)
        self.where = describe_callable(function)

    def __call__(self, text: str) -> int | None:
        action_id = self.function(text)
        if action_id is None:
            return None
        n = len(self.action_names)
        if (
            isinstance(action_id, bool)
            or not isinstance(action_id, numbers.Integral)
            or not 0 <= action_id < n
        ):
            raise UserCodeError(
                f"your parser {self.where} returned {shown(action_id)} for the text {text!r}, expected an "
                f"action id in [0, {n}) ({', '.join(f'{i}={name}' for i, name in enumerate(self.action_names))})"
                " or None for text that names no action"
            )
        return int(action_id)
