"""Experts for the text envs: value iteration on Gymnasium's toy-text transition tables.

An expert makes SFT demonstrations and is the "expert alongside" in evaluation. For the tabular envs
the optimum is computed, not learned: value iteration on ``P[s][a] = [(prob, next_s, reward,
terminated), ...]``, the table every Gymnasium toy-text env exposes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import gymnasium
import numpy as np

from envs.text_adapter import DiscreteTextEnv

TransitionTable = Mapping[int, Mapping[int, Sequence[tuple[float, int, float, bool]]]]
TIE_TOLERANCE = 1e-9  # Q values this close to the best count as tied; the lowest action id wins
_MAX_CACHED_TASKS = 4096


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
    state_action, probs, next_states, rewards, terminated = _flatten(P, n_states, n_actions)
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


def _flatten(
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
        text_env = _tabular_text_env(env)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")
        self.action_names: list[str] = list(text_env.action_names)
        self.gamma = gamma
        self.tol = tol
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)
        self._q_by_task: dict[tuple[str, int, int], np.ndarray] = {}

    def q_values(self, env: gymnasium.Env) -> np.ndarray:
        """Q values of every state of the env's current task, shape (S, A)."""
        text_env = _tabular_text_env(env)
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
        state = getattr(_tabular_text_env(env).inner.unwrapped, "s", None)
        if state is None:
            raise RuntimeError("The expert acts on the current state: reset the env first.")
        q = self.q_values(env)[int(state)]
        best = int(np.flatnonzero(q >= q.max() - TIE_TOLERANCE)[0])
        return self.action_names[best]


def _tabular_text_env(env: gymnasium.Env) -> DiscreteTextEnv:
    text_env = env.unwrapped
    if not isinstance(text_env, DiscreteTextEnv):
        raise TypeError(f"No expert for {env}: experts act in a DiscreteTextEnv (an env of envs/).")
    tabular = text_env.inner.unwrapped
    if not hasattr(tabular, "P"):
        raise TypeError(
            f"No expert for {env}: its inner env {type(tabular).__name__} exposes no tabular transition "
            "table P (Gymnasium's toy-text envs do)."
        )
    return text_env


class Expert(Protocol):
    """What SFT demonstrations and evaluation need of an expert: the action text for the env's current state."""

    def act(self, env: gymnasium.Env) -> str: ...


def expert_for(env: gymnasium.Env, epsilon: float = 0.0, seed: int = 0) -> Expert:
    """The expert for a text env of this package (or any ``DiscreteTextEnv`` over a toy-text env).

    An env that knows its own expert (a writing task has no transition table to plan on) exposes
    ``make_expert(epsilon, seed)``; every other env gets value iteration's :class:`TabularExpert`.

    Args:
        env: the text env, as made by ``gymnasium.make("rlft/...")`` or constructed directly.
        epsilon: probability of a noisy action (uniformly random for the tabular expert).
        seed: seed of the expert's generator.

    Raises:
        TypeError: if the env has no expert.
    """
    make_expert = getattr(env.unwrapped, "make_expert", None)
    if callable(make_expert):
        return make_expert(epsilon=epsilon, seed=seed)
    return TabularExpert(env, epsilon=epsilon, seed=seed)


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
