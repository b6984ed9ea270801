"""Where a policy's decisions differ from the env's expert: its played episodes replayed with the expert asked
at every state (a DAgger-style audit, Ross et al. 2011, of the decisions, not only of the outcome).

Success says how often a policy wins; it does not say which decisions it gets wrong, or whether RL changed any.
`expert_agreement` replays each episode (same reset seed, the policy's own actions, so a stochastic env rolls
the same dice) and counts the turns whose action is one the expert would take there; ties of a value-iteration
expert all count. The disagreements are grouped by observation, most frequent first: on slippery FrozenLake
they name the one cell where the policy's greedy move risks a hole, for the SFT policy and, unchanged, for RL.

An episode whose replay does not reproduce its recorded observations (an env that does not reseed everything
from `reset(seed=...)`) is not counted; `replay_mismatches` says how many.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from envs.experts import TIE_TOLERANCE, Expert, TabularExpert, expert_for, tabular_text_env
from envs.text_adapter import DiscreteTextEnv
from rlft.core.episode import Episode

INVALID = "(no action)"  # what the table shows for a policy action the env could not parse


def action_label(env: gym.Env, text: str) -> str:
    """The action a text names: the env's action name for a text env, else the stripped, lower-cased text."""
    text_env = env.unwrapped
    if isinstance(text_env, DiscreteTextEnv):
        action_id = text_env.parse_action(text)
        return INVALID if action_id is None else text_env.action_names[action_id]
    return text.strip().lower() or INVALID


def expert_choices(env: gym.Env, expert: Expert) -> set[str]:
    """Every action the expert rates best in the env's current state (all tied ones for value iteration)."""
    if isinstance(expert, TabularExpert):
        text_env = tabular_text_env(env)
        q = expert.q_values(env)[int(text_env.inner.unwrapped.s)]
        return {expert.action_names[i] for i in np.flatnonzero(q >= q.max() - TIE_TOLERANCE)}
    return {action_label(env, expert.act(env))}


def expert_agreement(
    env_factory: Callable[[], gym.Env], episodes: Sequence[Episode], max_disagreements: int = 5
) -> dict[str, Any]:
    """The share of the episodes' turns where the policy did what the (noise-free) expert would do.

    Args:
        env_factory: makes the env the episodes were played in.
        episodes: the policy's episodes (seed, actions, first_observation and observations are read).
        max_disagreements: how many of the most frequent disagreeing observations to keep.

    Returns:
        ``agreement`` (share of replayed turns, None when none was replayed), ``turns``, ``episodes`` replayed,
        ``replay_mismatches``, and ``disagreements``: ``{observation, policy, expert, count}``, most frequent
        first (``expert`` lists tied best actions joined by ``/``).

    Raises:
        NoExpertError: the env has no expert.
    """
    env = env_factory()
    try:
        expert = expert_for(env, epsilon=0.0, seed=0)
        agreed = turns = replayed = mismatches = 0
        wrong: Counter[tuple[str, str, str]] = Counter()
        for episode in episodes:
            observation, _ = env.reset(seed=int(episode.seed))
            recorded = [episode.first_observation, *episode.observations]
            checks: list[tuple[str, str, set[str]]] = []
            for turn, text in enumerate(episode.actions):
                if observation != recorded[turn]:
                    break
                checks.append((observation, action_label(env, text), expert_choices(env, expert)))
                observation, _, terminated, truncated, _ = env.step(text)
                if (terminated or truncated) and turn + 1 < len(episode.actions):
                    break
            else:
                replayed += 1
                for seen, chosen, best in checks:
                    turns += 1
                    if chosen in best:
                        agreed += 1
                    else:
                        wrong[(seen, chosen, "/".join(sorted(best)))] += 1
                continue
            mismatches += 1
    finally:
        env.close()
    return {
        "agreement": agreed / turns if turns else None,
        "turns": turns,
        "episodes": replayed,
        "replay_mismatches": mismatches,
        "disagreements": [
            {"observation": seen, "policy": chosen, "expert": best, "count": count}
            for (seen, chosen, best), count in wrong.most_common(max_disagreements)
        ],
    }
