"""Errors a user can act on: each names the key or `file:line`, what was expected and the closest choice."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RlftError(Exception):
    """Base class of errors rlft reports to the user with a clear message and a non-zero exit."""

    exit_code = 2


class ConfigError(RlftError):
    """A configuration key, type, value or reference is wrong."""


class DataError(RlftError):
    """A data file (JSONL demonstrations, preferences) is malformed; the message names `file:line`."""


class CheckpointError(RlftError):
    """A checkpoint or model path is missing or unreadable."""


class EnvFailureError(RlftError):
    """Too many episodes of a rollout batch failed (env raised, hung, malformed output); exit code 3.

    The message says how many of how many failed, the first reasons with their seeds, and the key that sets
    the threshold (`rollout.max_env_failure_rate`).
    """

    exit_code = 3


class NonFiniteError(RlftError):
    """Too many optimizer steps in a row were skipped for a non-finite loss, reward, value or gradient; exit code 4."""

    exit_code = 4


class ResourceError(RlftError):
    """Out of memory in generation, update or evaluation; exit code 5. The message names the knobs to turn."""

    exit_code = 5


class UserCodeError(RlftError):
    """The user's own code (env, renderer, parser, reward rule, ...) raised or returned something unusable while a
    stage ran; exit code 6. The message is one line naming the function, its `file:line` and what went wrong
    (`rlft.runtime.user_code`); `--debug` prints the traceback as well.
    """

    exit_code = 6


def closest(name: str, choices: Iterable[str]) -> str | None:
    """Return the choice closest to `name`, or None when nothing is close.

    >>> closest("lerning_rate", ["learning_rate", "seed"])
    'learning_rate'
    """
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if matches:
        return matches[0]
    lowered = {c.lower(): c for c in choices}
    for c_low, c in lowered.items():
        if name.lower() in c_low or c_low in name.lower():
            return c
    return None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, or the list of valid choices when none is close."""
    choices = sorted(set(choices))
    best = closest(name, choices)
    if best is not None:
        return f" (did you mean '{best}'?)"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f" (valid: {shown})"
