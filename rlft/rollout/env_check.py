"""Playing the user's env before any model loads: the env part of `rlft validate` and of every stage command.

`rlft.stages.checks.check_config` calls `check_env_plays` after the env has been built once. It

1. resets and steps the user's own env (the adapter's inner env, or the text env itself) and checks the shape of
   what it returns: `reset -> (observation, info)`, `step -> (observation, reward, terminated, truncated, info)`;
2. for an adapter with the user's parser, checks that each action name parses to its own id (experts and
   demonstrations write actions by name);
3. plays `PLAY_SEEDS` through the text env with valid actions (action names chosen at random, seeded), so the
   user's renderer and parser run on real observations (`rlft.rollout.user_callables` checks what they return);
4. runs gymnasium's `check_env` on the user's env and on the text env (spaces, seeding, determinism).

Every failure is a `ConfigError` (exit 2, nothing written) naming the user's function with its `file:line`,
what it returned or raised, and what was expected, e.g. "your renderer my_env:render (my_env.py:42) returned a
tuple (0, 3) for the observation an int 3, expected str".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from envs.text_adapter import DiscreteTextEnv
from rlft.config.schema import EnvConfig
from rlft.errors import ConfigError, UserCodeError
from rlft.rollout.env_factory import import_entry_point, make_env
from rlft.runtime.user_code import describe_callable, describe_exception, one_line, shown, user_roles

# Seeds played by the check: fixed and few (the check runs before every stage command and costs milliseconds).
PLAY_SEEDS: tuple[int, ...] = (0, 1, 2)
# Steps per played seed at most (also capped by env.max_turns).
MAX_PLAY_STEPS = 50
STEP_RESULT = "a tuple of 5: (observation, reward, terminated, truncated, info)"


class _Play:
    """What the check is doing now, for the message of an error that names no user function."""

    def __init__(self) -> None:
        self.doing = "building the env"


def check_env_plays(cfg: EnvConfig, seeds: Sequence[int] = PLAY_SEEDS) -> None:
    """Play the env of `cfg` a little and check everything the user's code returns (see the module docstring).

    Raises:
        ConfigError: naming the user's function, its `file:line`, what it returned or raised and what was
            expected, and the seed and call that showed it.
    """
    play = _Play()
    env = make_env(cfg)
    try:
        text_env = env.unwrapped
        adapted = isinstance(text_env, DiscreteTextEnv)
        user_env = text_env.inner.unwrapped if adapted else text_env
        _check_api(user_env, seeds[0], text=not adapted, play=play)
        if adapted and cfg.adapter is not None and cfg.adapter.parser is not None:
            play.doing = "parsing the action names"
            _check_parser_names(text_env, import_entry_point(cfg.adapter.parser, "env.adapter.parser"))
        for seed in seeds:
            _play(env, seed, min(cfg.max_turns, MAX_PLAY_STEPS), play)
        checked = [("your env", user_env)] + (
            [("the text env the adapter makes", text_env)] if adapted else []
        )
        for what, checked_env in checked:
            play.doing = f"gymnasium's check_env on {what} {describe_callable(type(checked_env))}"
            check_env(checked_env, skip_render_check=True, skip_close_check=True)
    except ConfigError:
        raise
    except UserCodeError as exc:
        raise ConfigError(f"env '{cfg.id}' ({play.doing}): {exc}") from None
    except Exception as exc:  # noqa: BLE001  (whatever the user's env raised: one line, exit 2)
        described = describe_exception(exc, user_roles({"env": cfg.model_dump()}))
        reason = described or f"failed: {one_line(f'{type(exc).__name__}: {exc}')}"
        raise ConfigError(f"env '{cfg.id}' ({play.doing}): {reason}") from None
    finally:
        env.close()


def _check_api(env: gym.Env, seed: int, text: bool, play: _Play) -> None:
    """One reset and one step of the user's env, called directly; the shapes of what they return."""
    play.doing = f"reset(seed={seed}) of your env"
    _checked_reset(env, env.reset(seed=seed), text)
    action = int(env.action_space.start) if isinstance(env.action_space, gym.spaces.Discrete) else None
    if action is None:
        names = getattr(env, "action_names", None)
        action = names[0] if names else env.action_space.sample()
    play.doing = f"step({action!r}) of your env after reset(seed={seed})"
    _checked_step(env, env.step(action), text)


def _checked_reset(env: gym.Env, result: Any, text: bool) -> tuple[Any, dict]:
    where = f"your env {describe_callable(type(env).reset)}"
    if not (isinstance(result, tuple) and len(result) == 2):
        raise UserCodeError(f"{where} returned {shown(result)}, expected a tuple (observation, info)")
    observation, info = result
    _check_observation_and_info(where, observation, info, text)
    return observation, info


def _checked_step(env: gym.Env, result: Any, text: bool) -> tuple[Any, float, bool, bool, dict]:
    where = f"your env {describe_callable(type(env).step)}"
    if not (isinstance(result, tuple) and len(result) == 5):
        hint = ""
        if isinstance(result, tuple) and len(result) == 4:
            hint = " (gymnasium >= 0.26 splits the old `done` into terminated and truncated)"
        raise UserCodeError(f"{where} returned {shown(result)}, expected {STEP_RESULT}{hint}")
    observation, reward, terminated, truncated, info = result
    _check_observation_and_info(where, observation, info, text)
    if isinstance(reward, bool) or not isinstance(reward, (int, float, np.integer, np.floating)):
        raise UserCodeError(f"{where} returned the reward {shown(reward)}, expected a number")
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, (bool, np.bool_)):
            raise UserCodeError(f"{where} returned {name} = {shown(flag)}, expected a bool")
    return observation, float(reward), bool(terminated), bool(truncated), info


def _check_observation_and_info(where: str, observation: Any, info: Any, text: bool) -> None:
    if not isinstance(info, dict):
        raise UserCodeError(f"{where} returned the info {shown(info)}, expected a dict")
    if text and not isinstance(observation, str):
        raise UserCodeError(
            f"{where} returned the observation {shown(observation)}, expected str (a text env)"
        )


def _check_parser_names(env: DiscreteTextEnv, parser: Any) -> None:
    """The user's parser maps each action name to its own id: experts and demonstrations write names."""
    for action_id, name in enumerate(env.action_names):
        parsed = env.parse_action(name)  # the checked parser: an id out of range fails here
        if parsed != action_id:
            raise UserCodeError(
                f"your parser {describe_callable(parser)} returned {shown(parsed)} for the action name "
                f"{name!r}, expected {action_id} (its index in env.adapter.action_names: experts and "
                "demonstrations write actions by name)"
            )


def _play(env: gym.Env, seed: int, max_steps: int, play: _Play) -> None:
    """One episode through the text env with valid actions (names at random, seeded by `seed`)."""
    play.doing = f"reset(seed={seed}) of the text env"
    _checked_reset(env.unwrapped, env.reset(seed=seed), text=True)
    names = getattr(env.unwrapped, "action_names", None)
    rng = random.Random(seed)
    for turn in range(1, max_steps + 1):
        action = rng.choice(names) if names else env.action_space.sample()
        play.doing = f"step({action!r}) of the text env, turn {turn} after reset(seed={seed})"
        _, _, terminated, truncated, _ = _checked_step(env.unwrapped, env.step(action), text=True)
        if terminated or truncated:
            return
