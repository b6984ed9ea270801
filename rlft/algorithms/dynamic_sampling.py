"""GRPO without dead groups: DAPO's dynamic sampling (Yu et al. 2025, "DAPO", section 3.2).

A group whose episodes all got the same reward has zero advantage everywhere: it costs a rollout and teaches
nothing (the quickstart logs `frac_reward_zero_std = 1` on many steps: a map the policy fails, it fails 8 times
in 8). With `rl.dynamic_sampling.enabled`, each rollout call drops such groups and plays fresh groups in their
place, in rounds, until every slot holds a group with reward variance or `max_resample_rounds` rounds were
played; a slot still without one keeps the group it had (so the batch keeps the shape TRL expects, and a batch of
all-dead groups trains as GRPO would). The extra episodes count as env steps.

Fresh tasks come from a stream of training seeds that depends only on (run seed, process, position in the
stream); the position is saved in the rollout state, so a resumed run draws the same seeds as an uninterrupted
one. Logged per rollout: `dynamic_sampling/dropped_groups` (zero-variance groups played and not trained on),
`dynamic_sampling/dead_groups_kept` (those kept to fill the batch) and `dynamic_sampling/resample_rounds`.
Each process refills its own groups (TRL gives each process whole groups when its batch is a multiple of
`num_generations`, which this checks).

The zero-variance test reads the episodes' env returns as played, before the reward design is applied: the design
(its normalisers, its metrics) then sees exactly the episodes that are trained on. A design whose components do
not follow the env reward (a learned reward model alone) may find variance in a group this drops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rlft.algorithms import trl_bridge
from rlft.core.episode import Episode
from rlft.errors import ConfigError

# Returns closer than this count as equal (TRL's `frac_reward_zero_std` uses torch.isclose the same way).
_TOLERANCE = 1e-6
# Separates this stream from the rollout's own sampling streams (EpisodeRollout.generator).
_STREAM = 0x44415046


def zero_variance(group: Sequence[Episode]) -> bool:
    """Whether a group carries no learning signal: fewer than 2 healthy episodes, or all the same return."""
    returns = [e.episode_return for e in group if e.failure is None]
    return len(returns) < 2 or max(returns) - min(returns) <= _TOLERANCE


class DynamicSampling:
    """Refills a rollout's zero-variance groups with fresh groups (module docstring).

    Args:
        train_seeds: the seeds fresh tasks are drawn from (the run's training seeds).
        group_size: episodes per group (`num_generations`).
        max_resample_rounds: at most this many refill rounds per rollout call (0: drop nothing).
        seed: the run's seed.
    """

    def __init__(self, train_seeds: Sequence[int], group_size: int, max_resample_rounds: int, seed: int):
        if group_size < 2:
            raise ConfigError(
                f"rl.dynamic_sampling needs groups of episodes to compare: num_generations = {group_size}, "
                "expected at least 2 (PPO's critic baseline has no groups; disable rl.dynamic_sampling)"
            )
        if not train_seeds:
            raise ConfigError("rl.dynamic_sampling needs training seeds to draw fresh tasks from")
        self.train_seeds = list(train_seeds)
        self.group_size = group_size
        self.max_resample_rounds = max_resample_rounds
        self.seed = seed
        self.draws = 0  # fresh groups drawn so far on this process: the stream's position

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])

    def _stream(self, process_index: int, position: int, purpose: int) -> int:
        # purpose 0: the task seed drawn at `position`; 1: the sampling seed of the round that starts there.
        entropy = [self.seed, _STREAM, process_index, position, purpose]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def fresh_seeds(self, count: int, process_index: int) -> list[int]:
        """The next `count` task seeds of this process's stream, each repeated for a group (group-major)."""
        seeds = []
        for _ in range(count):
            index = self._stream(process_index, self.draws, 0) % len(self.train_seeds)
            seeds.extend([self.train_seeds[index]] * self.group_size)
            self.draws += 1
        return seeds

    def refill(
        self, episodes: list[Episode], engine, batch_size: int, trainer
    ) -> tuple[list[Episode], list[Episode]]:
        """Replace the zero-variance groups of `episodes` with fresh ones played by `engine`.

        Returns:
            The batch (same length; a dead group's slot holds the fresh live group that replaced it, or the dead
            group itself when none was found within the cap), and the episodes played but not kept (counted as
            env steps by the caller).
        """
        process_index = trainer.accelerator.process_index
        groups = self._groups(episodes)
        dead = [slot for slot, group in enumerate(groups) if zero_variance(group)]
        dropped, rounds, discarded = len(dead), 0, []
        while dead and rounds < self.max_resample_rounds:
            generator = torch.Generator().manual_seed(self._stream(process_index, self.draws, 1))
            fresh = engine.play(self.fresh_seeds(len(dead), process_index), generator, batch_size)
            rounds += 1
            for group in self._groups(fresh):
                if dead and not zero_variance(group):
                    discarded.extend(groups[dead[0]])  # the dead group this fresh one replaces
                    groups[dead.pop(0)] = group
                else:
                    dropped += zero_variance(group)
                    discarded.extend(group)
        self._log(trainer, dropped - len(dead), rounds, len(dead))
        return [e for group in groups for e in group], discarded

    def _groups(self, episodes: list[Episode]) -> list[list[Episode]]:
        size = self.group_size
        groups = [episodes[i : i + size] for i in range(0, len(episodes), size)]
        if len(episodes) % size or any(len({e.seed for e in g}) != 1 for g in groups):
            raise ConfigError(
                f"rl.dynamic_sampling needs whole groups on each process: the {len(episodes)} episodes of this "
                f"process do not split into groups of {size} of one seed each. Make "
                f"per_device_train_batch_size * steps_per_generation a multiple of num_generations ({size})"
            )
        return groups

    @staticmethod
    def _log(trainer, dropped: int, rounds: int, still_dead: int) -> None:
        # Over all processes: zero-variance groups dropped (not trained on) and kept (to fill the batch) are summed;
        # rounds are the most any process played.
        local = torch.tensor(
            [dropped, still_dead, rounds], dtype=torch.float, device=trainer.accelerator.device
        )
        gathered = trainer.accelerator.gather(local.unsqueeze(0)).view(-1, 3)
        metrics = trl_bridge.metrics(trainer)
        metrics["dynamic_sampling/dropped_groups"].append(gathered[:, 0].sum().item())
        metrics["dynamic_sampling/dead_groups_kept"].append(gathered[:, 1].sum().item())
        metrics["dynamic_sampling/resample_rounds"].append(gathered[:, 2].max().item())


def dynamic_sampling_for(settings, train_seeds: Sequence[int], args) -> DynamicSampling | None:
    """The run's DynamicSampling from `rl.dynamic_sampling` and the trainer args; None when it is off."""
    if not settings.enabled:
        return None
    return DynamicSampling(train_seeds, args.num_generations, settings.max_resample_rounds, args.seed)
