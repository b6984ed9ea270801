"""Experts for the text envs: the user's own, or value iteration on a transition table.

An expert makes SFT demonstrations and is the "expert alongside" in evaluation. :func:`expert_for` finds
one, in this order:

1. ``make_expert(epsilon, seed)`` on the text env itself (an env of this package that knows its expert);
2. for an env the adapter (``DiscreteTextEnv``) wraps, the user's side:

   - an expert function given to the adapter, ``(env, observation) -> action id or action name``;
   - the name of an expert method of the user's env (``expert_method="expert_action"``);
   - ``make_expert(epsilon, seed)`` on the user's env, returning an object whose ``act(env)`` gets the
     user's env and returns an action id or name;
   - value iteration on ``P[s][a] = [(prob, next_s, reward, terminated), ...]``, the table every
     Gymnasium toy-text env exposes (the optimum is computed, not learned).

The user's experts answer in the user's terms (an action id as the env's ``step`` takes it, or an action
name); the adapter turns the answer into the action name a policy would write.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import gymnasium
import numpy as np

from envs.text_adapter import DiscreteTextEnv

TransitionTable = Mapping[int, Mapping[int, Sequence[tuple[float, int, float, bool]]]]
TIE_TOLERANCE = 1e-9  # Q values this close to the best count as tied; the lowest action id wins
_MAX_CACHED_TASKS = 4096


class NoExpertError(TypeError):
    """The env has no expert; the message names the ways to give it one (:data:`EXPERT_OPTIONS`)."""


EXPERT_OPTIONS = (
    "an expert function (env, observation) -> action id or action name (DiscreteTextEnv(expert=...)), "
    "the name of the env's expert method (DiscreteTextEnv(expert_method=...)), a make_expert(epsilon, "
    "seed) method on the env, or a tabular transition table P for value iteration"
)


def value_iteration(
    P: TransitionTable,
    n_states: int,
    n_actions: int,
    gamma: float = 0.99,
    tol: float = 1e-8,
    max_iterations: int = 100_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal state and action values of a tabular MDP (Sutton and Barto, 2018, section 4.4).

    ``Q[s, a] = sum_k p_k * (r_k + gamma * (1 - terminated_k) * V[s'_k])`` and ``V = max_a Q``, iterated
    until the largest change of ``V`` is below ``tol``. A terminating transition does not bootstrap, so
    gamma = 1 is fine for tasks where every policy worth following terminates (Taxi, CliffWalking).

    Args:
        P: the transition table, ``P[s][a] = [(prob, next_s, reward, terminated), ...]``.
        n_states: number of states S.
        n_actions: number of actions A.
        gamma: discount factor in [0, 1].
        tol: stopping threshold on ``max |V_new - V|``.
        max_iterations: give up (RuntimeError) after this many sweeps.

    Returns:
        ``(V, Q)`` with shapes (S,) and (S, A).

    Example:
        >>> P = {0: {0: [(1.0, 0, 1.0, True)], 1: [(1.0, 0, 0.0, False)]}}
        >>> V, Q = value_iteration(P, n_states=1, n_actions=2, gamma=0.9)
        >>> V.tolist(), Q.tolist()
        ([1.0], [[1.0, 0.9]])
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}.")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}.")
    state_action, probs, next_states, rewards, terminated = flatten_transitions(P, n_states, n_actions)
    n_pairs = n_states * n_actions
    expected_reward = np.bincount(state_action, weights=probs * rewards, minlength=n_pairs)
    continue_prob = probs * (1.0 - terminated)

    V = np.zeros(n_states)
    for _ in range(max_iterations):
        future = np.bincount(state_action, weights=continue_prob * V[next_states], minlength=n_pairs)
        Q = (expected_reward + gamma * future).reshape(n_states, n_actions)
        V_new = Q.max(axis=1)
        converged = np.max(np.abs(V_new - V)) < tol
        V = V_new
        if converged:
            return V, Q
    raise RuntimeError(f"value_iteration did not converge in {max_iterations} sweeps (gamma={gamma}).")


def flatten_transitions(
    P: TransitionTable, n_states: int, n_actions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The table as flat arrays over transitions: (s * A + a, prob, next_s, reward, terminated)."""
    rows = [
        (s * n_actions + a, prob, next_s, reward, terminated)
        for s in range(n_states)
        for a in range(n_actions)
        for prob, next_s, reward, terminated in P[s][a]
    ]
    state_action, probs, next_states, rewards, terminated = zip(*rows)
    return (
        np.asarray(state_action, dtype=np.int64),
        np.asarray(probs, dtype=np.float64),
        np.asarray(next_states, dtype=np.int64),
        np.asarray(rewards, dtype=np.float64),
        np.asarray(terminated, dtype=np.float64),
    )


class TabularExpert:
    """Greedy action of value iteration for a text env whose inner env exposes ``P`` and state ``s``.

    Values are computed per task and cached by ``task_id``, so a random-map env pays for value iteration
    once per distinct map. With probability ``epsilon`` the expert plays a uniformly random action
    instead, from its own generator seeded with ``seed`` (reproducible, independent of the env).

    With gamma < 1 the expert prefers the shortest safe path on deterministic maps; on slippery maps it
    maximises the discounted success probability, which for gamma near 1 is close to the success
    probability itself.
    """

    def __init__(
        self,
        env: gymnasium.Env,
        gamma: float = 0.99,
        tol: float = 1e-8,
        epsilon: float = 0.0,
        seed: int = 0,
    ) -> None:
        """Builds an expert for ``env`` (a ``DiscreteTextEnv``, possibly wrapped).

        Args:
            env: the text env the expert will act in.
            gamma: discount factor of value iteration.
            tol: convergence threshold of value iteration.
            epsilon: probability of a uniformly random action.
            seed: seed of the expert's own generator for the epsilon noise.

        Raises:
            TypeError: if ``env`` is not a text env over a tabular env.
            ValueError: if ``epsilon`` is outside [0, 1].
        """
        text_env = tabular_text_env(env)
        _check_epsilon(epsilon)
        self.action_names: list[str] = list(text_env.action_names)
        self.gamma = gamma
        self.tol = tol
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)
        self._q_by_task: dict[tuple[str, int, int], np.ndarray] = {}

    def q_values(self, env: gymnasium.Env) -> np.ndarray:
        """Q values of every state of the env's current task, shape (S, A)."""
        text_env = tabular_text_env(env)
        tabular = text_env.inner.unwrapped
        n_states, n_actions = len(tabular.P), len(self.action_names)
        key = (text_env.task_id, n_states, n_actions)
        if key not in self._q_by_task:
            if len(self._q_by_task) >= _MAX_CACHED_TASKS:
                self._q_by_task.clear()
            _, self._q_by_task[key] = value_iteration(tabular.P, n_states, n_actions, self.gamma, self.tol)
        return self._q_by_task[key]

    def act(self, env: gymnasium.Env) -> str:
        """The expert's action name for the env's current state."""
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return self.action_names[int(self.rng.integers(len(self.action_names)))]
        state = getattr(tabular_text_env(env).inner.unwrapped, "s", None)
        if state is None:
            raise RuntimeError("The expert acts on the current state: reset the env first.")
        q = self.q_values(env)[int(state)]
        best = int(np.flatnonzero(q >= q.max() - TIE_TOLERANCE)[0])
        return self.action_names[best]


def tabular_text_env(env: gymnasium.Env) -> DiscreteTextEnv:
    """The text env over a tabular env (one exposing ``P``) that ``env`` wraps; NoExpertError otherwise."""
    text_env = env.unwrapped
    if not isinstance(text_env, DiscreteTextEnv):
        raise NoExpertError(f"No expert for {env}: experts act in a DiscreteTextEnv (an env of envs/).")
    tabular = text_env.inner.unwrapped
    if not hasattr(tabular, "P"):
        raise NoExpertError(
            f"No expert for {env}: its inner env {type(tabular).__name__} exposes no tabular transition "
            "table P (Gymnasium's toy-text envs do)."
        )
    return text_env


class ExpertActionError(ValueError):
    """The user's expert returned something that names no action; the message names the expert."""


def describe_callable(function: Callable[..., Any]) -> str:
    """``module.qualname (file:line)`` of a user's function, for errors that point at the user's code."""
    target = inspect.unwrap(getattr(function, "__func__", function))
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
    try:
        return f"{name} ({inspect.getsourcefile(target)}:{inspect.getsourcelines(target)[1]})"
    except (OSError, TypeError):  # a builtin or a function made at run time has no source to point at
        return name


def action_name(text_env: DiscreteTextEnv, action: Any, source: str) -> str:
    """The adapter's action name for what the user's expert returned: an inner action id or an action text.

    Raises:
        ExpertActionError: naming ``source``, what it returned and what was expected.
    """
    names = text_env.action_names
    start = int(text_env.inner.action_space.start)
    if isinstance(action, int | np.integer) and not isinstance(action, bool | np.bool_):
        if start <= int(action) < start + len(names):
            return names[int(action) - start]
    elif isinstance(action, str):
        action_id = text_env.parse_action(action)
        if action_id is not None:
            return names[action_id]
    raise ExpertActionError(
        f"expert {source} returned {action!r} ({type(action).__name__}); expected an action id in "
        f"[{start}, {start + len(names)}) or one of the action names {names}"
    )


class FunctionExpert:
    """The user's expert function ``(inner env, inner observation) -> action id or name``, with epsilon noise.

    With probability ``epsilon`` a uniformly random action is played instead, from the expert's own
    generator seeded with ``seed`` (as :class:`TabularExpert` does), so noisy demos are reproducible.
    """

    def __init__(
        self, function: Callable[[gymnasium.Env, Any], Any], source: str, epsilon: float = 0.0, seed: int = 0
    ) -> None:
        """Args: function: the expert; source: how errors name it; epsilon, seed: the noise."""
        _check_epsilon(epsilon)
        self.function = function
        self.source = source
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)

    def act(self, env: gymnasium.Env) -> str:
        """The expert's action name for the env's current state."""
        text_env = _adapter(env)
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return text_env.action_names[int(self.rng.integers(len(text_env.action_names)))]
        return action_name(text_env, self.function(text_env.inner, text_env.inner_observation), self.source)


class InnerEnvExpert:
    """The expert the user's env makes (``make_expert(epsilon, seed)``), asked in the user's terms.

    Its ``act`` receives the user's env (the adapter's inner env, not the adapter) and may return an action
    id or an action name; the noise is the user's expert's own.
    """

    def __init__(self, expert: Any, source: str) -> None:
        if not callable(getattr(expert, "act", None)):
            raise NoExpertError(f"{source} returned {expert!r}, which has no act(env) method")
        self.expert = expert
        self.source = source

    def act(self, env: gymnasium.Env) -> str:
        """The user's expert's action for the user's env, as the adapter's action name."""
        text_env = _adapter(env)
        return action_name(text_env, self.expert.act(text_env.inner), self.source)


def _method_expert_function(user_env: Any, name: str) -> Callable[[gymnasium.Env, Any], Any]:
    """The expert method as an expert function: called with the observation, or bare if it takes none."""
    method = getattr(user_env, name)
    try:
        required = [
            p
            for p in inspect.signature(method).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # no signature to read (a builtin): pass the observation
        required = [None]
    if not required:
        return lambda env, observation: method()
    return lambda env, observation: method(observation)


def _adapter(env: gymnasium.Env) -> DiscreteTextEnv:
    text_env = env.unwrapped
    if not isinstance(text_env, DiscreteTextEnv):
        raise TypeError(f"this expert acts in a DiscreteTextEnv, got {type(text_env).__name__}")
    return text_env


def _check_epsilon(epsilon: float) -> None:
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")


class Expert(Protocol):
    """What SFT demonstrations and evaluation need of an expert: the action text for the env's current state."""

    def act(self, env: gymnasium.Env) -> str: ...


def expert_for(env: gymnasium.Env, epsilon: float = 0.0, seed: int = 0) -> Expert:
    """The expert of a text env: its own, the user's behind the adapter, or value iteration (module docstring).

    Args:
        env: the text env, as made by ``gymnasium.make("rlft/...")``, rlft's env factory or constructed directly.
        epsilon: probability of a noisy action (uniformly random, except for a ``make_expert`` expert, which
            receives ``epsilon`` and makes its own noise).
        seed: seed of the expert's generator.

    Raises:
        NoExpertError: (a TypeError) if the env has none; the message names the ways to give it one.
    """
    text_env = env.unwrapped
    make_expert = getattr(text_env, "make_expert", None)
    if callable(make_expert):
        return make_expert(epsilon=epsilon, seed=seed)
    if not isinstance(text_env, DiscreteTextEnv):
        raise NoExpertError(
            f"No expert for {env}: a text env gives its expert through make_expert(epsilon, seed), "
            f"and {type(text_env).__name__} has none"
        )
    user_env = text_env.inner.unwrapped
    if text_env.expert is not None:
        return FunctionExpert(text_env.expert, describe_callable(text_env.expert), epsilon, seed)
    if text_env.expert_method is not None:
        method = getattr(user_env, text_env.expert_method)
        function = _method_expert_function(user_env, text_env.expert_method)
        return FunctionExpert(function, describe_callable(method), epsilon, seed)
    user_make_expert = getattr(user_env, "make_expert", None)
    if callable(user_make_expert):
        source = describe_callable(user_make_expert)
        return InnerEnvExpert(user_make_expert(epsilon=epsilon, seed=seed), source)
    if hasattr(user_env, "P"):
        return TabularExpert(env, epsilon=epsilon, seed=seed)
    raise NoExpertError(
        f"No expert for {env}: its inner env {type(user_env).__name__} has no expert; expected "
        f"{EXPERT_OPTIONS}"
    )


def play_expert_episode(env: gymnasium.Env, expert: Expert, seed: int, max_turns: int) -> dict[str, Any]:
    """Plays one episode with ``expert`` from ``env.reset(seed=seed)``.

    Args:
        env: the text env.
        expert: the expert (e.g. from :func:`expert_for`).
        seed: the reset seed.
        max_turns: stop (truncated) after this many turns if the env has not ended the episode.

    Returns:
        ``{"seed", "task_id", "instructions", "observations" (turns + 1 texts, the first from reset),
        "actions", "rewards", "return", "turns", "terminated", "truncated", "success"}``.
    """
    observation, info = env.reset(seed=seed)
    observations, actions, rewards = [observation], [], []
    terminated = truncated = False
    while not (terminated or truncated) and len(actions) < max_turns:
        action = expert.act(env)
        observation, reward, terminated, truncated, info = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(float(reward))
    return {
        "seed": seed,
        "task_id": info["task_id"],
        "instructions": env.unwrapped.instructions,
        "observations": observations,
        "actions": actions,
        "rewards": rewards,
        "return": float(sum(rewards)),
        "turns": len(actions),
        "terminated": bool(terminated),
        "truncated": bool(truncated) or not terminated,
        "success": bool(info["success"]),
    }
