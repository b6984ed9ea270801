"""A task curriculum: which training tasks the rollouts play, by prioritized level replay (PLR).

`rl.curriculum.strategy: uniform` (the default) is TRL's sampler as it is: each epoch a shuffled pass over
`env.train_seeds`, each seed played by a whole group. `plr` is prioritized level replay (Jiang, Grefenstette &
Rocktäschel 2021, "Prioritized Level Replay", Algorithm 1 and eq. 1-3), with a task = a reset seed (a seed is what
can be replayed: `reset(seed)` gives the same task and the same env randomness). For each group of
`num_generations` episodes (GRPO's baseline needs them to play one task; PPO's groups are single episodes):

* replay or new: with probability `replay_prob` a seen task (one with a score) is replayed, else an unseen seed
  of `env.train_seeds` is drawn uniformly. Nothing is replayed before some task has a score, and once every
  seed has one, every draw is a replay (the reference implementation's "fixed" schedule with nu = 1 - replay_prob
  and rho at its minimum: the seed pool is large here, so waiting for a share of it to be seen would not replay);
* which seen task: P = (1 - rho) P_S + rho P_C (eq. 3), rho = `staleness_coef`, over the seen tasks, with
  - P_S the rank prioritisation of the scores (eq. 2): h_i = 1 / rank_i (rank 1 = highest score; tied scores
    share the best rank of their block, so equal scores get equal probability), P_S(i) ∝ h_i^(1/T),
    T = `temperature`;
  - P_C the staleness (eq. 3): P_C(i) ∝ c - C_i, c the number of group draws so far, C_i the draw at which
    task i was last played (uniform when all are 0).
  A replay is drawn in two stages with the same law: the staleness term with probability rho, else the score
  term; so the logged `curriculum/staleness_share` is the share of replays the staleness term chose.

Scores, after each rollout batch's advantages are computed (the advantages the loss trains on):

* `advantage`: PLR's L1 value loss / positive value loss, the mean |advantage| over an episode's sampled
  tokens, averaged over the task's episodes in the batch. The task keeps the latest value (the paper's and the
  reference implementation's default, alpha = 1), not an average over its history. With GRPO's group-std
  scaling every group with any reward spread scores about the same, so it mostly separates tasks with signal
  from tasks without; `success_variance` ranks them finer.
* `success_variance`: p (1 - p), p the task's success rate over its last `success_window` episodes (highest for
  tasks solved half of the time: the ones with most to learn).

With `buffer_size`, at most that many tasks keep a score: the lowest-scored (then the stalest) are forgotten and
can be drawn again as new.

Every draw is a function of (run seed, number of plans so far) and of the state, so two processes with the same
state draw the same tasks: each process plans the whole generation batch and plays its own rows of it, and every
process updates the scores with all processes' episodes (gathered). The state (scores, success histories, last
draws, counters) is a JSON-able dict saved in the exact-resume checkpoint. Pure Python and numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STRATEGIES = ("uniform", "plr")
SCORES = ("advantage", "success_variance")
# Separates the curriculum's draws from the rollout's and dynamic sampling's streams.
_STREAM = 0x504C52


# ------------------------------------------------------------------------------------------- replay distribution
def rank_probabilities(scores: Sequence[float], temperature: float) -> np.ndarray:
    """P_S: rank prioritisation (PLR eq. 2), h_i = 1 / rank_i, P_S(i) ∝ h_i^(1/temperature).

    Rank 1 is the highest score; tied scores share the best rank of their block (competition ranking).

    >>> rank_probabilities([0.5, 0.1, 0.3], temperature=1.0).round(4).tolist()   # h = 1, 1/3, 1/2
    [0.5455, 0.1818, 0.2727]
    """
    values = np.asarray(scores, dtype=float)
    ascending = np.sort(values)
    ranks = 1 + len(values) - np.searchsorted(ascending, values, side="right")
    weights = (1.0 / ranks) ** (1.0 / temperature)
    return weights / weights.sum()


def staleness_probabilities(last_played: Sequence[int], counter: int) -> np.ndarray:
    """P_C: staleness (PLR eq. 3), P_C(i) ∝ counter - last_played_i; uniform when every task was just played.

    >>> staleness_probabilities([2, 5, 6], counter=6).tolist()
    [0.8, 0.2, 0.0]
    """
    staleness = counter - np.asarray(last_played, dtype=float)
    total = staleness.sum()
    return staleness / total if total > 0 else np.full(len(staleness), 1.0 / len(staleness))


def replay_probabilities(
    scores: Sequence[float],
    last_played: Sequence[int],
    counter: int,
    temperature: float,
    staleness_coef: float,
) -> np.ndarray:
    """P_replay = (1 - staleness_coef) P_S + staleness_coef P_C over the seen tasks (PLR eq. 3)."""
    return (1.0 - staleness_coef) * rank_probabilities(
        scores, temperature
    ) + staleness_coef * staleness_probabilities(last_played, counter)


def success_variance(successes: Sequence[float]) -> float:
    """p (1 - p) of a task's recent outcomes (1 success, 0 not)."""
    p = float(np.mean(successes))
    return p * (1.0 - p)


# ------------------------------------------------------------------------------------------- the sampler
@dataclass
class TaskRecord:
    """A seen task: its score, the draw at which it was last played, its recent outcomes (success_variance)."""

    score: float
    last_played: int
    successes: list[float] = field(default_factory=list)


@dataclass
class PlanRecord:
    """What one plan drew, for the logs: groups, how many were replays, how many of those staleness chose."""

    groups: int = 0
    replays: int = 0
    staleness_replays: int = 0


class TaskCurriculum:
    """Prioritized level replay over `train_seeds`, one task per group (module docstring).

    Args:
        train_seeds: the seeds new tasks are drawn from (`env.train_seeds`).
        group_size: episodes per group (`num_generations`); a group plays one task.
        score: "advantage" or "success_variance".
        temperature: T of the rank prioritisation (> 0; lower: the top-ranked tasks more often).
        staleness_coef: rho, the staleness term's weight in [0, 1].
        replay_prob: probability that a group replays a seen task rather than draw a new one.
        buffer_size: at most this many tasks keep a score (None: all).
        success_window: episodes per task that success_variance reads.
        seed: the run's seed.
    """

    def __init__(
        self,
        train_seeds: Sequence[int],
        group_size: int,
        score: str = "advantage",
        temperature: float = 0.1,
        staleness_coef: float = 0.1,
        replay_prob: float = 0.5,
        buffer_size: int | None = None,
        success_window: int = 8,
        seed: int = 0,
    ):
        if score not in SCORES:
            raise ValueError(f"score = {score!r}: expected one of {list(SCORES)}")
        self.train_seeds = np.asarray(list(train_seeds), dtype=np.int64)
        self.group_size = int(group_size)
        self.score_kind = score
        self.temperature = float(temperature)
        self.staleness_coef = float(staleness_coef)
        self.replay_prob = float(replay_prob)
        self.buffer_size = buffer_size
        self.success_window = int(success_window)
        self.seed = int(seed)
        self.tasks: dict[int, TaskRecord] = {}  # seen tasks (with a score), by seed
        self.drawn: dict[int, int] = {}  # tasks drawn new and not scored yet: the draw they were drawn at
        self.draws = 0  # groups drawn so far: the counter c of the staleness term
        self.plans = 0  # plans made so far: the position in the draw stream
        self.last_plan = PlanRecord()

    # ------------------------------------------------------------------------------------------ drawing
    def replay_distribution(self) -> tuple[list[int], np.ndarray]:
        """The seen tasks (ascending seeds) and their replay probabilities at the current counter."""
        seeds = sorted(self.tasks)
        records = [self.tasks[s] for s in seeds]
        probabilities = replay_probabilities(
            [r.score for r in records],
            [r.last_played for r in records],
            self.draws,
            self.temperature,
            self.staleness_coef,
        )
        return seeds, probabilities

    def _draw_replay(self, rng: np.random.Generator) -> tuple[int, bool]:
        seeds = sorted(self.tasks)
        records = [self.tasks[s] for s in seeds]
        by_staleness = rng.random() < self.staleness_coef
        if by_staleness:
            probabilities = staleness_probabilities([r.last_played for r in records], self.draws)
        else:
            probabilities = rank_probabilities([r.score for r in records], self.temperature)
        return seeds[int(rng.choice(len(seeds), p=probabilities))], by_staleness

    def plan(self, num_groups: int) -> list[int]:
        """One task per group for the next generation batch (group-major), advancing the counters."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _STREAM, self.plans]))
        self.plans += 1
        unseen = self.train_seeds[~np.isin(self.train_seeds, list(self.tasks) + list(self.drawn))]
        taken: set[int] = set()  # new tasks already drawn in this plan (drawn without replacement)
        record, tasks = PlanRecord(groups=num_groups), []
        for _ in range(num_groups):
            can_replay, can_draw_new = bool(self.tasks), len(taken) < len(unseen)
            replay = can_replay and (not can_draw_new or rng.random() < self.replay_prob)
            if replay:
                task, by_staleness = self._draw_replay(rng)
                self.tasks[task].last_played = self.draws
                record.replays += 1
                record.staleness_replays += int(by_staleness)
            elif can_draw_new:
                task = int(unseen[rng.integers(len(unseen))])
                while task in taken:
                    task = int(unseen[rng.integers(len(unseen))])
                taken.add(task)
                self.drawn[task] = self.draws
            else:  # every seed was drawn in this plan and none has a score yet: draw any again
                task = int(self.train_seeds[rng.integers(len(self.train_seeds))])
                self.drawn[task] = self.draws
            tasks.append(task)
            self.draws += 1
        self.last_plan = record
        return tasks

    def assign(self, local_rows: int, process_index: int, num_processes: int) -> list[int]:
        """This process's seeds: the plan of the whole generation batch (`local_rows` rows on each of
        `num_processes` processes, groups of `group_size` consecutive rows, in process order as TRL gathers
        them), its rows `process_index * local_rows ...`. Every process makes the same plan."""
        total = local_rows * num_processes
        if total % self.group_size:
            raise ValueError(
                f"the generation batch of {total} episodes does not split into groups of {self.group_size}"
            )
        rows = [task for task in self.plan(total // self.group_size) for _ in range(self.group_size)]
        return rows[process_index * local_rows : (process_index + 1) * local_rows]

    # ------------------------------------------------------------------------------------------ scoring
    def update(
        self,
        seeds: Sequence[int],
        episode_scores: Sequence[float],
        successes: Sequence[float],
        healthy: Sequence[bool],
    ) -> None:
        """Score the tasks of a rollout batch (every process's episodes, in the same order on every process).

        Args:
            seeds: each episode's seed. episode_scores: each episode's mean |advantage| over its sampled tokens.
            successes: each episode's success (1 / 0). healthy: False for a failed episode (not scored).
        """
        per_task: dict[int, list[tuple[float, float]]] = {}
        for seed, score, success, ok in zip(seeds, episode_scores, successes, healthy, strict=True):
            if ok:
                per_task.setdefault(int(seed), []).append((float(score), float(success)))
        for seed, played in per_task.items():
            record = self.tasks.get(seed)
            if record is None:
                record = TaskRecord(score=0.0, last_played=self.drawn.get(seed, self.draws))
                self.tasks[seed] = record
            if self.score_kind == "advantage":
                record.score = float(np.mean([score for score, _ in played]))  # the latest value (alpha = 1)
            else:
                record.successes = (record.successes + [s for _, s in played])[-self.success_window :]
                record.score = success_variance(record.successes)
        self.drawn.clear()  # drawn and not scored (every episode failed): unseen again
        self._evict()

    def _evict(self) -> None:
        if self.buffer_size is None or len(self.tasks) <= self.buffer_size:
            return
        # Lowest score first, then the stalest, then the lowest seed: the same choice on every process.
        order = sorted(self.tasks, key=lambda s: (self.tasks[s].score, self.tasks[s].last_played, s))
        for seed in order[: len(self.tasks) - self.buffer_size]:
            del self.tasks[seed]

    # ------------------------------------------------------------------------------------------ logs
    def plan_metrics(self) -> dict[str, float]:
        """The last plan's replay share and, of its replays, the share the staleness term chose."""
        plan = self.last_plan
        return {
            "curriculum/replay_share": plan.replays / max(plan.groups, 1),
            "curriculum/staleness_share": plan.staleness_replays / max(plan.replays, 1),
        }

    def score_metrics(self) -> dict[str, float]:
        """How many tasks have a score, and the scores' mean, 90th percentile and max."""
        scores = np.array([r.score for r in self.tasks.values()], dtype=float)
        metrics = {"curriculum/seen_tasks": float(len(scores))}
        if len(scores):
            metrics["curriculum/score_mean"] = float(scores.mean())
            metrics["curriculum/score_p90"] = float(np.percentile(scores, 90))
            metrics["curriculum/score_max"] = float(scores.max())
        return metrics

    # ------------------------------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "draws": self.draws,
            "plans": self.plans,
            "tasks": [
                [seed, r.score, r.last_played, list(r.successes)] for seed, r in sorted(self.tasks.items())
            ],
            "drawn": [[seed, draw] for seed, draw in sorted(self.drawn.items())],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws, self.plans = int(state["draws"]), int(state["plans"])
        self.tasks = {
            int(seed): TaskRecord(float(score), int(last), [float(s) for s in successes])
            for seed, score, last, successes in state["tasks"]
        }
        self.drawn = {int(seed): int(draw) for seed, draw in state["drawn"]}


def curriculum_for(settings, train_seeds: Sequence[int], args) -> TaskCurriculum | None:
    """The run's curriculum from `rl.curriculum` and the trainer args; None for `uniform` (TRL's sampler)."""
    if settings.strategy == "uniform":
        return None
    return TaskCurriculum(
        train_seeds,
        group_size=args.num_generations,
        score=settings.score,
        temperature=settings.temperature,
        staleness_coef=settings.staleness_coef,
        replay_prob=settings.replay_prob,
        buffer_size=settings.buffer_size,
        success_window=settings.success_window,
        seed=args.seed,
    )
