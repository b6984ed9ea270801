"""Reference returns of a tabular text env under a turn limit: the optimum and a uniformly random policy.

A results table reports a policy against what can be reached in the turns it is given: on slippery FrozenLake
the optimal policy reaches G with probability about 0.82 without a limit, but only about 0.35 within 30 moves.
Both numbers here are exact expectations by finite-horizon dynamic programming on the transition table
``P[s][a] = [(prob, next_s, reward, terminated), ...]`` that Gymnasium's toy-text envs expose (Puterman, 1994,
section 4.5: backward induction), from the env's initial-state distribution, with no discount:

    V_0 = 0,    Q_h[s, a] = sum_k p_k * (r_k + (1 - terminated_k) * V_{h-1}[s'_k]),
    optimum: V_h = max_a Q_h,    random: V_h = mean_a Q_h.

The optimum may depend on the turns left (near the limit a risky shortcut beats a safe detour); a policy that
sees only the observation cannot do that, so the optimum is an upper bound for it, and a stationary expert
(``envs.experts.TabularExpert``) plays slightly below it.

With FrozenLake's reward (1 on reaching G, 0 otherwise) the expected return is the success probability. Only
the dynamics in ``P`` count: Taxi's ``fickle_passenger`` acts outside it and is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import gymnasium
import numpy as np

from envs.experts import TransitionTable, flatten_transitions, tabular_text_env


def horizon_values(
    P: TransitionTable, n_states: int, n_actions: int, horizon: int, policy: str = "optimal"
) -> np.ndarray:
    """Expected undiscounted return from each state within ``horizon`` actions (backward induction).

    Args:
        P: the transition table, ``P[s][a] = [(prob, next_s, reward, terminated), ...]``.
        n_states: number of states S.
        n_actions: number of actions A.
        horizon: the number of actions left, >= 0.
        policy: ``"optimal"`` (the best action with the turns left) or ``"random"`` (uniform over the actions).

    Returns:
        ``V_horizon``, shape (S,).

    Example:
        A corridor 0 - 1 - G: action 1 moves right (G pays 1 and ends), action 0 stays put.

        >>> P = {0: {0: [(1.0, 0, 0.0, False)], 1: [(1.0, 1, 0.0, False)]},
        ...      1: {0: [(1.0, 1, 0.0, False)], 1: [(1.0, 2, 1.0, True)]},
        ...      2: {0: [(1.0, 2, 0.0, True)], 1: [(1.0, 2, 0.0, True)]}}
        >>> horizon_values(P, 3, 2, horizon=1).tolist(), horizon_values(P, 3, 2, horizon=2).tolist()
        ([0.0, 1.0, 0.0], [1.0, 1.0, 0.0])
        >>> horizon_values(P, 3, 2, horizon=2, policy="random").tolist()
        [0.25, 0.75, 0.0]
    """
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}.")
    if policy not in ("optimal", "random"):
        raise ValueError(f"policy must be 'optimal' or 'random', got {policy!r}.")
    state_action, probs, next_states, rewards, terminated = flatten_transitions(P, n_states, n_actions)
    n_pairs = n_states * n_actions
    expected_reward = np.bincount(state_action, weights=probs * rewards, minlength=n_pairs)
    continue_prob = probs * (1.0 - terminated)
    V = np.zeros(n_states)
    for _ in range(horizon):
        future = np.bincount(state_action, weights=continue_prob * V[next_states], minlength=n_pairs)
        Q = (expected_reward + future).reshape(n_states, n_actions)
        V = Q.max(axis=1) if policy == "optimal" else Q.mean(axis=1)
    return V


@dataclass(frozen=True)
class ReferenceReturns:
    """The optimum's and a uniformly random policy's expected return within ``horizon`` actions.

    Attributes:
        optimal: the optimum's expected return (FrozenLake: its success probability).
        random: a uniformly random policy's expected return.
        horizon: the turn limit both are computed for.
        tasks: the number of distinct tasks (maps) averaged over.
    """

    optimal: float
    random: float
    horizon: int
    tasks: int

    def normalised(self, value: float) -> float:
        """``(value - random) / (optimal - random)``: 0 for the random policy, 1 for the optimum.

        >>> ReferenceReturns(optimal=8.0, random=-200.0, horizon=25, tasks=1).normalised(-96.0)
        0.5
        """
        if self.optimal == self.random:
            raise ValueError(
                "the optimum and the random policy have the same return: no scale to normalise by"
            )
        return (value - self.random) / (self.optimal - self.random)


def reference_returns(env: gymnasium.Env, horizon: int, seeds: Iterable[int] = (0,)) -> ReferenceReturns:
    """The optimum and random references of a tabular text env, averaged over the tasks of ``seeds``.

    Each seed's task (its map; one task for a fixed map or Taxi) is reset once to read its transition table;
    a task's values are computed once and weigh as often as seeds draw it. Within a task the expectation is
    over the env's initial-state distribution (Taxi: the 300 starting states), not over the reset's draw.

    Args:
        env: a ``DiscreteTextEnv`` over a Gymnasium toy-text env (``gymnasium.make("rlft/...")``).
        horizon: the turn limit (the config's ``env.max_turns``, capped by the env's own time limit).
        seeds: reset seeds whose tasks are averaged (e.g. the held-out seeds for random maps).

    Raises:
        envs.experts.NoExpertError: the env has no transition table.
        ValueError: the env's dynamics are not all in ``P`` (Taxi's fickle passenger), or no seeds.
    """
    text_env = tabular_text_env(env)
    if getattr(text_env, "fickle_passenger", False):
        raise ValueError("Taxi's fickle passenger changes destination outside P: no exact reference returns")
    by_task: dict[str, tuple[float, float]] = {}
    draws: list[str] = []
    for seed in seeds:
        _, info = env.reset(seed=int(seed))
        task = str(info.get("task_id", ""))
        draws.append(task)
        if task not in by_task:
            tabular = text_env.inner.unwrapped
            n_states, n_actions = len(tabular.P), len(text_env.action_names)
            start = np.asarray(tabular.initial_state_distrib, dtype=np.float64)
            by_task[task] = tuple(
                float(start @ horizon_values(tabular.P, n_states, n_actions, horizon, policy))
                for policy in ("optimal", "random")
            )
    if not draws:
        raise ValueError("reference_returns needs at least one seed")
    optimal, random = np.mean([by_task[task] for task in draws], axis=0)
    return ReferenceReturns(float(optimal), float(random), horizon, len(by_task))
