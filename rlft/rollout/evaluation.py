"""Held-out evaluation: success rate and mean return with 95% confidence intervals, the expert alongside.

Held-out seeds start at `eval.seed_start`, far from the training seed range. For envs whose task changes
with the seed (random maps), seeds whose task also occurs in the training range are skipped, so the maps
evaluated are disjoint from the maps trained on.

An episode whose env failed (raised, hung past `rollout.env_step_timeout_s`, malformed output; see
`Episode.failure`) is not a loss of the policy's: it is counted in `failed` / `failure_rate` and left out of
success and return, which are over the healthy `episodes`. More than `rollout.max_env_failure_rate` of the
held-out episodes failing aborts the evaluation with EnvFailureError, since the numbers would not describe
the policy on the held-out tasks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

from envs.experts import NoExpertError, expert_for, play_expert_episode
from rlft.config.schema import EnvConfig, EvalConfig
from rlft.core.episode import Episode
from rlft.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_TRAIN_TASKS_SCANNED = 20_000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (better than the normal one near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean()) if arr.size else 0.0
    if arr.size < 2:
        return mean, mean, mean
    half = z * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return mean, mean - half, mean + half


def summarize(episodes: Sequence[Episode]) -> dict[str, float]:
    """Success and return with 95% CIs over the healthy episodes; failed ones counted apart."""
    failed = sum(e.failure is not None for e in episodes)
    total = len(episodes)
    episodes = [e for e in episodes if e.failure is None]
    n = len(episodes)
    wins = sum(e.success for e in episodes)
    lo, hi = wilson_interval(wins, n)
    mean, r_lo, r_hi = mean_interval([e.episode_return for e in episodes])
    return {
        "episodes": n,
        "success": wins / n if n else 0.0,
        "success_ci_low": lo,
        "success_ci_high": hi,
        "return": mean,
        "return_ci_low": r_lo,
        "return_ci_high": r_hi,
        "failed": failed,
        "failure_rate": failed / total if total else 0.0,
        "turns": float(np.mean([e.num_turns for e in episodes])) if n else 0.0,
        "invalid_actions": float(np.mean([e.invalid_actions for e in episodes])) if n else 0.0,
    }


def _task_id(env: gym.Env, seed: int) -> str:
    _, info = env.reset(seed=seed)
    return str(info.get("task_id", ""))


def held_out_seeds(env_factory: Callable[[], gym.Env], env_cfg: EnvConfig, eval_cfg: EvalConfig) -> list[int]:
    """`eval.episodes` seeds from `eval.seed_start` on, skipping seeds whose task is in the training range."""
    env = env_factory()
    train = env_cfg.train_seeds
    seeds = [eval_cfg.seed_start + i for i in range(eval_cfg.episodes)]
    probe = {_task_id(env, train.start + i) for i in range(min(train.count, 50))}
    if not eval_cfg.disjoint_tasks or len(probe) <= 1:
        env.close()
        return seeds  # one fixed task: held-out means held-out seeds (env randomness), tasks cannot differ
    scanned = min(train.count, MAX_TRAIN_TASKS_SCANNED)
    if scanned < train.count:
        logger.warning("checking eval tasks against the first %d of %d training seeds", scanned, train.count)
    train_tasks = {_task_id(env, train.start + i) for i in range(scanned)}
    seeds, seed = [], eval_cfg.seed_start
    limit = eval_cfg.seed_start + 200 * eval_cfg.episodes
    while len(seeds) < eval_cfg.episodes and seed < limit:
        if _task_id(env, seed) not in train_tasks:
            seeds.append(seed)
        seed += 1
    env.close()
    if len(seeds) < eval_cfg.episodes:
        raise ConfigError(
            f"key 'eval.disjoint_tasks' = true: only {len(seeds)} of eval.episodes = {eval_cfg.episodes} held-out "
            f"seeds (from eval.seed_start = {eval_cfg.seed_start}) have a task unseen among the {len(train_tasks)} "
            "tasks of env.train_seeds; set eval.disjoint_tasks: false (held-out seeds, tasks may repeat), "
            "lower eval.episodes, or shrink env.train_seeds.count"
        )
    return seeds


def evaluate_policy(
    engine, seeds: Sequence[int], batch_size: int, seed: int = 0
) -> tuple[dict, list[Episode]]:
    """Play the policy on `seeds` (greedy or sampled per the engine's settings) and summarise."""
    import torch

    from rlft.rollout.engine import check_env_failures

    generator = torch.Generator().manual_seed(seed)
    episodes = engine.play(list(seeds), generator=generator, batch_size=batch_size)
    check_env_failures(episodes, engine.settings.max_env_failure_rate, where="held-out evaluation")
    return summarize(episodes), episodes


def missing_expert(env_factory: Callable[[], gym.Env]) -> str | None:
    """Why the env has no expert (NoExpertError's message, which names the ways to give it one), or None.

    Only the absence of an expert is an answer here; an expert that exists and fails is an error of its own.
    """
    env = env_factory()
    try:
        expert_for(env, epsilon=0.0, seed=0)
    except NoExpertError as exc:
        return str(exc)
    finally:
        env.close()
    return None


def evaluate_expert(
    env_factory: Callable[[], gym.Env], seeds: Sequence[int], max_turns: int
) -> dict[str, float]:
    """The env's expert (noise-free) on the same seeds, measured the same way.

    Raises:
        NoExpertError: the env has none (`missing_expert` says so beforehand).
    """
    env = env_factory()
    try:
        expert = expert_for(env, epsilon=0.0, seed=0)
        episodes = []
        for seed in seeds:
            played = play_expert_episode(env, expert, seed=int(seed), max_turns=max_turns)
            episode = Episode(seed=int(seed), prompt_ids=[])
            for action, reward in zip(played["actions"], played["rewards"], strict=True):
                episode.add_sampled(0, 0.0)
                episode.end_action(action, {"env": reward})
            episode.success = bool(played["success"])
            episodes.append(episode)
    finally:
        env.close()
    return summarize(episodes)
