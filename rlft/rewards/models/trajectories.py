"""Scored trajectories from an env, the raw material of env preference pairs (`rm.data.source: env`).

`play_scored_episodes` plays episodes with the env's expert (with epsilon random actions) or a uniformly random
actor, writes each as `(prompt, completion)` text (`preferences.transcript_text`) and scores it with a gold
signal; `rlft.rewards.models.preferences.build_preference_pairs` turns the items into labelled pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlft.errors import DataError
from rlft.rewards.models.preferences import transcript_text


class RandomActor:
    """Uniformly random action names, from its own seeded generator."""

    def __init__(self, action_names: Sequence[str], seed: int = 0):
        if not action_names:
            raise ValueError("a random actor needs the env's action_names")
        self.action_names = list(action_names)
        self.rng = np.random.default_rng(seed)

    def act(self, env) -> str:
        return self.action_names[int(self.rng.integers(len(self.action_names)))]


def gold_return(episode: dict[str, Any]) -> float:
    """The gold signal `return`: the episode's summed env reward."""
    return float(episode["return"])


def play_scored_episodes(
    env_factory: Callable,
    task_seeds: Sequence[int],
    per_task: int,
    policy: str,
    epsilon: float,
    seed: int,
    max_turns: int,
    gold: Callable[[dict[str, Any]], float] = gold_return,
) -> tuple[list[tuple[str, str, float]], dict[str, float]]:
    """Play `per_task` episodes from each reset seed; return `(prompt, completion, gold)` items and stats.

    Args:
        env_factory: builds the text env.
        task_seeds: reset seeds; the episodes of one seed share a prompt (its first observation).
        per_task: episodes per seed (variety comes from the policy's randomness).
        policy: "expert" (the env's expert with `epsilon` random actions) or "random".
        gold: maps the played-episode record of `envs.experts.play_expert_episode` to a number.
    """
    from envs.experts import expert_for, play_expert_episode

    env = env_factory()
    if policy == "expert":
        try:
            actor = expert_for(env, epsilon=epsilon, seed=seed)
        except TypeError as exc:
            env.close()
            raise DataError(f"rm.data.policy = 'expert': {exc}; use policy: random") from None
    else:
        names = list(getattr(env.unwrapped, "action_names", []) or [])
        if not names:
            env.close()
            raise DataError(
                "rm.data.policy = 'random': the env lists no action_names to choose from; use policy: expert"
            )
        actor = RandomActor(names, seed=seed)
    items, returns, successes = [], [], []
    try:
        for task_seed in task_seeds:
            for _ in range(per_task):
                episode = play_expert_episode(env, actor, seed=task_seed, max_turns=max_turns)
                prompt, completion = transcript_text(
                    episode["instructions"], episode["observations"], episode["actions"]
                )
                value = gold(episode)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise DataError(
                        f"gold signal returned {value!r} for the episode of seed {task_seed}; "
                        "expected a finite number"
                    )
                items.append((prompt, completion, float(value)))
                returns.append(episode["return"])
                successes.append(episode["success"])
    finally:
        env.close()
    golds = [g for _, _, g in items]
    return items, {
        "episodes": len(items),
        "return_mean": float(np.mean(returns)),
        "success_rate": float(np.mean(successes)),
        "gold_mean": float(np.mean(golds)),
        "gold_std": float(np.std(golds)),
    }
