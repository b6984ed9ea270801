"""The numbers behind `rlft compare`: curves out of metrics.jsonl, final scores, and rliable's statistics.

Aggregates follow Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice"): with a handful
of seeds, point estimates alone mislead, so every aggregate comes with a 95% stratified-bootstrap confidence
interval, and the headline aggregate is the interquartile mean (IQM: the mean of the middle 50% of runs),
which is robust to an outlier seed yet less noisy than the median. All of it is rliable's code
(`rliable.library.get_interval_estimates`, `rliable.metrics.aggregate_iqm`,
`rliable.library.create_performance_profile`); nothing here re-implements a statistic.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from rlft.tools.report.runs import Run, Variant, as_number

X_KEY = "episode/env_steps_total"
STAGE = "rl"
GRID_POINTS = 100
AGGREGATES = ("IQM", "Median", "Mean")


@dataclass
class Series:
    """One run's metric against env steps, sorted by env steps."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class Band:
    """A variant's curve on a common grid: the mean over seeds and its 95% stratified-bootstrap CI."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


@dataclass
class FinalScores:
    """Per row (a variant, or a reference policy): one final score per seed and where each came from.

    `episode_cis[label][i]` is the per-episode 95% CI eval.json gives the i-th score (Wilson for success, the
    normal approximation for return), or None; with one seed it is the only interval there is.
    """

    scores: dict[str, list[float]]
    seeds: dict[str, list[int | None]]
    sources: dict[str, list[str]]
    episode_cis: dict[str, list[tuple[float, float] | None]] = field(default_factory=dict)


@contextmanager
def _seeded(seed: int):
    """Reproducible bootstrap intervals: rliable's StratifiedBootstrap draws its resampling indices from
    numpy's global generator (`np.random.choice` in `update_indices`, whatever `random_state` says), so seed
    that generator for the call and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------------------------------------ curves
def _env_steps_by_step(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    pairs = {}
    for record in records:
        x, step = as_number(record.get(X_KEY)), as_number(record.get("step"))
        if x is not None and step is not None:
            pairs[step] = x
    steps = np.array(sorted(pairs), dtype=float)
    return steps, np.array([pairs[s] for s in steps], dtype=float)


def rl_records(run: Run) -> list[dict]:
    return [r for r in run.records if r.get("stage", STAGE) == STAGE]


def series(run: Run, key: str) -> Series | None:
    """`key` against env steps over the run's RL records; None when it was never logged.

    A record without `episode/env_steps_total` (e.g. a PPO minibatch step that ran no rollout) takes the env
    steps of the latest record at or before its step. Where a step was logged twice (a resumed run re-logs
    the steps after its checkpoint) the later record wins.
    """
    records = rl_records(run)
    steps, xs = _env_steps_by_step(records)
    by_step: dict[float, tuple[float, float]] = {}
    for record in records:
        y = as_number(record.get(key))
        step = as_number(record.get("step"))
        if y is None or step is None:
            continue
        x = as_number(record.get(X_KEY))
        if x is None:
            i = np.searchsorted(steps, step, side="right") - 1
            if i < 0:
                continue
            x = float(xs[i])
        by_step[step] = (x, y)
    if not by_step:
        return None
    points = sorted(by_step.values(), key=lambda p: p[0])
    return Series(np.array([p[0] for p in points]), np.array([p[1] for p in points]))


def keys_matching(runs: list[Run], predicate) -> list[str]:
    """Metric keys of the runs' RL records that satisfy `predicate`, sorted."""
    return sorted({k for run in runs for r in rl_records(run) for k in r if predicate(k)})


def band(curves: list[Series], reps: int, seed: int = 0, points: int = GRID_POINTS) -> Band | None:
    """The mean over seeds of `curves` on a common x grid, with a 95% stratified-bootstrap CI (rliable).

    Grid: `points` evenly spaced env-step values over the range every seed covers (from the largest first
    x to the smallest last x); each seed's curve is linearly interpolated onto it (`np.interp`), never
    extrapolated. One seed: its interpolated curve, no band. None when the seeds' ranges do not overlap.
    """
    curves = [c for c in curves if len(c.x)]
    if not curves:
        return None
    start, stop = max(c.x[0] for c in curves), min(c.x[-1] for c in curves)
    if stop < start:
        return None
    grid = np.linspace(start, stop, points) if stop > start else np.array([start])
    matrix = np.stack([np.interp(grid, c.x, c.y) for c in curves])  # (seeds, points)
    if len(curves) == 1:
        return Band(grid, matrix[0], matrix[0], matrix[0], 1)
    from rliable import library as rly

    # rliable's layout: (runs, tasks, points); one task. The aggregate is the mean over runs at each point.
    scores = {"curve": matrix[:, None, :]}
    with _seeded(seed):
        point, interval = rly.get_interval_estimates(scores, lambda s: s.mean(axis=(0, 1)), reps=reps)
    return Band(grid, point["curve"], interval["curve"][0], interval["curve"][1], len(curves))


# ------------------------------------------------------------------------------------------------ finals
def policy_score(run: Run, policy: str, metric: str) -> tuple[float | None, tuple[float, float] | None]:
    """eval.json's headline `metric` of `policy` and its per-episode 95% CI (None where either is missing)."""
    result = ((run.eval_results or {}).get("policies") or {}).get(policy) or {}
    value = as_number(result.get(metric))
    low, high = as_number(result.get(f"{metric}_ci_low")), as_number(result.get(f"{metric}_ci_high"))
    return value, (low, high) if value is not None and low is not None and high is not None else None


def final_score(run: Run, metric: str) -> tuple[float | None, str, tuple[float, float] | None]:
    """The run's final held-out `metric` ('success' or 'return'), its source and its per-episode CI.

    eval.json's `rl` policy (its headline numbers: greedy or sampled as eval.greedy says) when the run was
    evaluated after RL; otherwise the last held-out evaluation during RL (`eval/<metric>`, no CI).
    """
    value, ci = policy_score(run, "rl", metric)
    if value is not None:
        return value, "eval.json (rl)", ci
    curve = series(run, f"eval/{metric}")
    if curve is not None:
        return float(curve.y[-1]), "last eval/" + metric, None
    return None, "none", None


def final_scores(variants: list[Variant], metric: str) -> FinalScores:
    finals = FinalScores({}, {}, {})
    for variant in variants:
        kept = [(run.seed, *final_score(run, metric)) for run in variant.runs]
        kept = [k for k in kept if k[1] is not None]
        if kept:
            finals.seeds[variant.label] = [k[0] for k in kept]
            finals.scores[variant.label] = [k[1] for k in kept]
            finals.sources[variant.label] = [k[2] for k in kept]
            finals.episode_cis[variant.label] = [k[3] for k in kept]
    return finals


def one_seed_intervals(finals: FinalScores, intervals: dict[str, np.ndarray]) -> set[str]:
    """Rows with one seed take its per-episode CI, where it has one, in place of the bootstrap's (a point).

    A bootstrap over one seed resamples the same score, so its interval collapses to [x, x]; the held-out
    episodes behind that score still say how sure it is. With one score IQM, median and mean are that score,
    so the one interval serves all three. Returns the rows whose interval is now per-episode.
    """
    replaced = set()
    for label, cis in finals.episode_cis.items():
        if len(cis) == 1 and cis[0] is not None and label in intervals:
            low, high = cis[0]
            intervals[label] = np.array([[low] * len(AGGREGATES), [high] * len(AGGREGATES)])
            replaced.add(label)
    return replaced


def score_matrices(finals: FinalScores) -> dict[str, np.ndarray]:
    """rliable's layout: per variant a (runs, tasks) matrix; one task (the variant's env)."""
    return {label: np.asarray(values, dtype=float)[:, None] for label, values in finals.scores.items()}


def aggregate_all(matrix: np.ndarray) -> np.ndarray:
    """IQM, median and mean over all runs and tasks (rliable.metrics), in AGGREGATES order."""
    from rliable import metrics

    return np.array(
        [metrics.aggregate_iqm(matrix), metrics.aggregate_median(matrix), metrics.aggregate_mean(matrix)]
    )


def interval_estimates(matrices: dict[str, np.ndarray], reps: int, seed: int = 0):
    """Point estimates and 95% stratified-bootstrap CIs of AGGREGATES per variant (rliable).

    Returns `(points, intervals)`: points[label] has shape (3,), intervals[label] (2, 3) = (low, high) rows.
    """
    from rliable import library as rly

    with _seeded(seed):
        return rly.get_interval_estimates(matrices, aggregate_all, reps=reps)


def performance_profiles(matrices: dict[str, np.ndarray], taus: np.ndarray, reps: int, seed: int = 0):
    """Score distributions (fraction of runs with score > tau) with 95% stratified-bootstrap CIs (rliable)."""
    from rliable import library as rly

    with _seeded(seed):
        return rly.create_performance_profile(
            matrices, taus, reps=reps, custom_profile_func=score_distribution
        )


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's default profile, `rliable.library.score_distributions` (at each tau, `run_score_deviation`:
    the fraction of all scores > tau), in one numpy comparison instead of `np.vectorize` over the taus, which
    made the profiles' bootstrap the slowest part of a report. tests/test_compare.py checks it equals
    rliable's own on the same scores."""
    return (np.asarray(scores).reshape(-1, 1) > np.asarray(taus).reshape(1, -1)).mean(axis=0)
