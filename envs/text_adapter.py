"""Adapter that turns any Gymnasium env with a ``Discrete`` action space into a text env.

A language-model policy reads an observation text and writes an action text. ``DiscreteTextEnv`` holds
the inner env and three small pieces that make it speak text: a renderer (inner observation -> text),
action names with a parser (text -> action id) and the instructions shown once before the first
observation. Everything else (dynamics, rewards, seeding) stays the inner env's.
"""

from __future__ import annotations

import copy
import difflib
import string
from collections.abc import Callable, Sequence
from typing import Any, Literal, SupportsFloat

import gymnasium
from gymnasium import logger, spaces

# Printable ASCII (space included) plus newline: what the renderers of this package emit and what a
# tokenizer round-trips without surprises. Tab, carriage return and form feed are left out on purpose.
TEXT_CHARSET: str = "".join(chr(code) for code in range(32, 127)) + "\n"
MAX_ACTION_CHARS: int = 64
INVALID_ACTION_MODES: tuple[str, ...] = ("penalty", "terminate")
_TRAILING_PUNCTUATION: str = string.punctuation

Renderer = Callable[[gymnasium.Env, Any], str]
Parser = Callable[[str], int | None]
SuccessFn = Callable[[gymnasium.Env, Any, SupportsFloat, bool, dict[str, Any]], bool]
# The user's hand-written expert: (inner env, inner observation) -> an inner action id or an action name.
ExpertFn = Callable[[gymnasium.Env, Any], int | str]
# How the user's tasks are identified: (inner env, reset observation, reset info) -> the task id.
TaskIdFn = Callable[[gymnasium.Env, Any, dict[str, Any]], Any]


def make_parser(action_names: Sequence[str]) -> Parser:
    """Builds the default parser: an exact, case-insensitive match of an action name.

    The text is stripped and lower-cased; it matches a name if it equals the name, equals it followed
    by punctuation (``"right."``), or starts with the name as its first word (``"right please"``).
    Anything else (``"move right"``, ``"rightward"``, ``""``) is ``None``, an invalid action.

    Args:
        action_names: the action names, index ``i`` naming action id ``i``.

    Returns:
        A function ``text -> action id or None``.

    Example:
        >>> parse = make_parser(["left", "right"])
        >>> parse(" Right. "), parse("right please"), parse("move right")
        (1, 1, None)
    """
    ids = {name.lower(): action_id for action_id, name in enumerate(action_names)}

    def parse(text: str) -> int | None:
        text = text.strip().lower()
        if not text:
            return None
        first_word = text.split(maxsplit=1)[0]
        for candidate in (text, text.rstrip(_TRAILING_PUNCTUATION), first_word.rstrip(_TRAILING_PUNCTUATION)):
            if candidate in ids:
                return ids[candidate]
        return None

    return parse


def default_success(
    env: gymnasium.Env, obs: Any, reward: SupportsFloat, terminated: bool, info: dict[str, Any]
) -> bool:
    """The inner env's own success flag if its info has one, else "terminated with a positive reward".

    ``is_success`` is the key Gymnasium-Robotics and Stable-Baselines3 use. The fallback fits sparse-goal
    tasks (FrozenLake) and not tasks whose goal step costs reward (CliffWalking): pass ``success_fn`` there.
    """
    for key in ("success", "is_success"):
        if key in info:
            return bool(info[key])
    return bool(terminated) and float(reward) > 0


def _check_arguments(
    env: gymnasium.Env,
    action_names: Sequence[str],
    invalid_action: str,
    invalid_penalty: float,
    max_observation_chars: int,
    render_mode: str | None,
    render_modes: Sequence[str],
    expert_method: str | None = None,
) -> None:
    """ValueError, naming the argument, for a `DiscreteTextEnv` argument that cannot work."""
    if not isinstance(env.action_space, spaces.Discrete):
        raise ValueError(f"DiscreteTextEnv needs a Discrete action space, got {env.action_space}.")
    _check_action_names(action_names, int(env.action_space.n))
    if invalid_action not in INVALID_ACTION_MODES:
        raise ValueError(f"invalid_action must be one of {INVALID_ACTION_MODES}, got {invalid_action!r}.")
    if invalid_penalty > 0:
        raise ValueError(
            f"invalid_penalty is the reward of an invalid action and must be <= 0, got {invalid_penalty}."
        )
    if max_observation_chars < 1:
        raise ValueError(f"max_observation_chars must be >= 1, got {max_observation_chars}.")
    if render_mode is not None and render_mode not in render_modes:
        raise ValueError(f"render_mode must be None or one of {list(render_modes)}.")
    if expert_method is not None:
        _check_expert_method(env, expert_method)


def _check_expert_method(env: gymnasium.Env, name: str) -> None:
    """The inner env (``env.unwrapped``: the user's class, under any wrappers) must have a method ``name``."""
    user_env = env.unwrapped
    if callable(getattr(user_env, name, None)):
        return
    methods = [m for m in dir(user_env) if not m.startswith("_") and callable(getattr(user_env, m, None))]
    close = difflib.get_close_matches(name, methods, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(
        f"expert_method {name!r}: {type(user_env).__name__} has no method {name!r}{hint}; expected the name "
        "of a method of the env that returns the expert's action id or action name"
    )


class DiscreteTextEnv(gymnasium.Env[str, str]):
    """A text env around an env with a ``Discrete`` action space.

    ``reset(seed, options) -> (text, info)`` and ``step(text) -> (text, reward, terminated, truncated,
    info)``. An action text the parser rejects is an invalid action: the inner env is not stepped, the
    reward is ``invalid_penalty``, and the episode either goes on with the same observation
    (``"penalty"``) or terminates (``"terminate"``).

    ``info`` on reset and on every step holds the inner env's info plus:

    - ``"success"`` (bool): the task was solved this episode (so far; at the end, whether it was);
    - ``"invalid_action"`` (bool): this step's action text did not parse;
    - ``"invalid_actions"`` (int): invalid actions so far this episode;
    - ``"action_id"`` (int | None): the parsed action id of this step (None on reset and when invalid);
    - ``"task_id"`` (str): the task instance, e.g. a map layout (see :attr:`task_id`).

    The inner env's expert, when it has one, is named here too (``envs.experts.expert_for`` finds it): an
    ``expert`` function, or the name of one of the inner env's methods (``expert_method``).

    Subclasses (the text versions of Gymnasium's toy-text envs) fix the inner env, renderer, names and
    instructions; one that changes the task on reset overrides ``_reset_inner`` and ``task_id``. This is
    the one inheritance step in envs/, taken over a factory function because a random-map env must swap
    its inner env at reset and each registered env deserves its own Gymnasium-style class docstring.

    Attributes:
        inner: the wrapped env (a subclass may replace it on reset).
        action_names: the action words, index ``i`` naming the inner action ``start + i``.
        instructions: the task description shown once before the first observation.
        invalid_action: ``"penalty"`` or ``"terminate"``.
        invalid_penalty: the reward of an invalid action (<= 0).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        env: gymnasium.Env,
        action_names: Sequence[str],
        renderer: Renderer | None = None,
        parser: Parser | None = None,
        instructions: str = "",
        invalid_action: Literal["penalty", "terminate"] = "penalty",
        invalid_penalty: float = 0.0,
        max_observation_chars: int = 4096,
        success_fn: SuccessFn | None = None,
        render_mode: str | None = None,
        expert: ExpertFn | None = None,
        expert_method: str | None = None,
        task_id_fn: TaskIdFn | None = None,
    ) -> None:
        """Wraps ``env``.

        Args:
            env: the inner env; its action space must be ``Discrete``.
            action_names: one name per inner action, in action-id order; unique ignoring case, printable
                ASCII, no surrounding whitespace.
            renderer: ``(inner env, inner observation) -> text``; default ``str(observation)``.
            parser: ``text -> action id or None``; default :func:`make_parser` of ``action_names``.
            instructions: the task description shown once before the first observation.
            invalid_action: ``"penalty"`` (continue with the same observation) or ``"terminate"``.
            invalid_penalty: the reward of an invalid action; negative to penalise, never positive.
            max_observation_chars: observation texts are cut to this length (with a warning).
            success_fn: ``(inner env, inner obs, reward, terminated, inner info) -> bool``, evaluated after
                every inner step; default :func:`default_success`.
            render_mode: ``None`` or ``"ansi"`` (``render()`` returns the current observation text).
            expert: the inner env's hand-written expert, ``(inner env, inner observation) -> action id or
                action name``; see ``envs.experts.expert_for``.
            expert_method: the name of a method of the inner env that is its expert, called with the
                current inner observation (or with no argument if it takes none).
            task_id_fn: ``(inner env, reset observation, reset info) -> task id``, how the inner env's tasks
                are identified; default: the inner env's own ``info["task_id"]`` or ``task_id`` attribute.

        Raises:
            ValueError: on an argument that cannot work (see the messages).
        """
        _check_arguments(
            env,
            action_names,
            invalid_action,
            invalid_penalty,
            max_observation_chars,
            render_mode,
            self.metadata["render_modes"],
            expert_method,
        )
        self.inner = env
        self.action_names: list[str] = list(action_names)
        self.instructions = instructions
        self.invalid_action = invalid_action
        self.invalid_penalty = float(invalid_penalty)
        self.max_observation_chars = max_observation_chars
        self.render_mode = render_mode
        self._renderer: Renderer = renderer if renderer is not None else _render_str
        self._parser: Parser = parser if parser is not None else make_parser(self.action_names)
        self._success_fn: SuccessFn = success_fn if success_fn is not None else default_success
        self.expert: ExpertFn | None = expert
        self.expert_method = expert_method
        self._task_id_fn = task_id_fn

        self.observation_space = spaces.Text(max_observation_chars, min_length=0, charset=TEXT_CHARSET)
        self.action_space = spaces.Text(MAX_ACTION_CHARS, min_length=0, charset=TEXT_CHARSET)

        # Episode state, set by reset().
        self._observation: str = ""
        self._inner_observation: Any = None
        self._inner_task_id: str | None = None
        self._inner_info: dict[str, Any] = {}
        self._success = False
        self._invalid_actions = 0
        self._warned_long_observation = False

    @property
    def task_id(self) -> str:
        """The current task, as the inner env identifies it; subclasses (random maps) refine it.

        In order: ``task_id_fn`` of the last reset; the inner env's own ``info["task_id"]`` from its last
        reset; its ``task_id`` (a property or method naming, say, the layout); else its spec id (or class
        name), one task for every seed. Kept from the inner env rather than replaced, so ``eval.disjoint_tasks``
        can hold out the inner env's layouts.
        """
        if self._inner_task_id is not None:
            return self._inner_task_id
        declared = getattr(self.inner.unwrapped, "task_id", None)
        if callable(declared):
            declared = declared()
        if declared is not None:
            return str(declared)
        spec = self.inner.spec
        return spec.id if spec is not None else type(self.inner.unwrapped).__name__

    @property
    def inner_observation(self) -> Any:
        """The inner env's latest observation (before rendering); what an expert function reads."""
        return self._inner_observation

    def parse_action(self, text: str) -> int | None:
        """The action id that ``text`` names, or ``None`` if it names none."""
        action_id = self._parser(text)
        if action_id is not None and not 0 <= action_id < len(self.action_names):
            raise ValueError(f"parser returned {action_id!r}, not an id in [0, {len(self.action_names)}).")
        return action_id

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        """Resets the inner env (seeded with ``seed``) and returns the first observation text."""
        super().reset(seed=seed)
        inner_obs, inner_info = self._reset_inner(seed, options)
        self._inner_task_id = self._identify_task(inner_obs, inner_info)
        self._success = False
        self._invalid_actions = 0
        self._inner_info = inner_info
        self._inner_observation = inner_obs
        self._observation = self._render(inner_obs)
        return self._observation, self._info(action_id=None, invalid=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Parses ``action`` and steps the inner env, or applies the invalid-action rule."""
        if not isinstance(action, str):
            raise TypeError(f"action must be a str (the policy's text), got {type(action).__name__}.")
        action_id = self.parse_action(action)
        if action_id is None:
            self._invalid_actions += 1
            terminated = self.invalid_action == "terminate"
            return self._observation, self.invalid_penalty, terminated, False, self._info(None, invalid=True)

        start = int(self.inner.action_space.start)
        inner_obs, reward, terminated, truncated, inner_info = self.inner.step(start + action_id)
        self._success = self._success or bool(
            self._success_fn(self.inner, inner_obs, reward, terminated, inner_info)
        )
        self._inner_info = inner_info
        self._inner_observation = inner_obs
        self._observation = self._render(inner_obs)
        info = self._info(action_id, invalid=False)
        return self._observation, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        """The current observation text in ``"ansi"`` mode; ``None`` without a render mode."""
        return self._observation if self.render_mode == "ansi" else None

    def close(self) -> None:
        """Closes the inner env."""
        self.inner.close()

    def _reset_inner(self, seed: int | None, options: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """Resets the inner env; the hook a subclass overrides to change the task per episode."""
        return self.inner.reset(seed=seed, options=options)

    def _identify_task(self, inner_obs: Any, inner_info: dict[str, Any]) -> str | None:
        """The task id the inner env gives on reset (``task_id_fn``, else its info), or None if it gives none."""
        if self._task_id_fn is not None:
            return str(self._task_id_fn(self.inner, inner_obs, inner_info))
        if isinstance(inner_info, dict) and inner_info.get("task_id") is not None:
            return str(inner_info["task_id"])
        return None

    def _render(self, inner_obs: Any) -> str:
        text = self._renderer(self.inner, inner_obs)
        unknown = set(text) - self.observation_space.character_set
        if unknown:
            raise ValueError(f"renderer emitted characters outside TEXT_CHARSET: {sorted(unknown)!r}.")
        if len(text) > self.max_observation_chars:
            if not self._warned_long_observation:
                logger.warn(f"Observation text cut from {len(text)} to {self.max_observation_chars} chars.")
                self._warned_long_observation = True
            text = text[: self.max_observation_chars]
        return text

    def _info(self, action_id: int | None, invalid: bool) -> dict[str, Any]:
        # Deep copy: on an invalid action the inner info is reused, and check_env (rightly) rejects infos
        # that share mutable objects such as Taxi's action_mask array across calls.
        info = copy.deepcopy(self._inner_info)
        info.update(
            success=self._success,
            invalid_action=invalid,
            invalid_actions=self._invalid_actions,
            action_id=action_id,
            task_id=self.task_id,
        )
        return info


def _render_str(env: gymnasium.Env, obs: Any) -> str:
    return str(obs)


def _check_action_names(action_names: Sequence[str], n_actions: int) -> None:
    if isinstance(action_names, str):
        raise ValueError("action_names must be a sequence of names, not one string.")
    if len(action_names) != n_actions:
        raise ValueError(f"Got {len(action_names)} action names for {n_actions} actions.")
    for name in action_names:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"Action names must be non-empty strings without surrounding spaces: {name!r}.")
        if not set(name) <= set(TEXT_CHARSET) or "\n" in name:
            raise ValueError(f"Action name {name!r} has characters outside printable ASCII.")
    lowered = [name.lower() for name in action_names]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"Action names must be unique ignoring case: {list(action_names)}.")
