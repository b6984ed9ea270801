"""GiGPO: step-level credit without a critic (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM
Agent Training"), inside TRL's GRPOTrainer.

GRPO gives every token of an episode the same advantage, the episode's return against its group's. GiGPO adds a
second, finer group: within a group of episodes of one task, the turns that start from the same observation
(the same anchor state, reached by different episodes or twice by one) are a step group, and a turn's discounted
return against its step group's mean says whether *that action* was better than the others taken from the same
state. Each action's tokens get

    A = A_episode + step_advantage_weight * A_step

where A_episode is TRL's GRPO advantage as it is (its `scale_rewards` included) and A_step comes from the
`RolloutBatch` (`gigpo_advantages`, through rlft/core/advantages.py). TRL's loss takes per-token advantages of
shape (B, T) (tests/test_trl_contract.py checks it), so the rest is TRL's GRPO: the same rollout function, reward
function, loss, checkpoints and exact resume. No critic.

A step group is only formed within one process's share of the batch, so each process must hold whole groups:
`per_device_train_batch_size * steps_per_generation` a multiple of `num_generations` (it is with one process).
"""

from __future__ import annotations

from typing import Any

import torch

from rlft.algorithms import trl_bridge
from rlft.algorithms.gigpo_config import GiGPOConfig
from rlft.algorithms.grpo import RlftGRPOTrainer, build_grpo_trainer
from rlft.core.batch import RolloutBatch
from rlft.errors import ConfigError

__all__ = ["GiGPOConfig", "GiGPOTrainer", "build_gigpo_trainer", "whole_groups"]


def whole_groups(batch: RolloutBatch, group_size: int, needed_by: str) -> list[slice]:
    """The batch's groups (`RolloutBatch.group_slices`); a ConfigError saying how to fix split groups."""
    try:
        return batch.group_slices(group_size)
    except ValueError as exc:
        raise ConfigError(
            f"{needed_by} needs whole groups on each process: {exc}. Make per_device_train_batch_size * "
            f"steps_per_generation a multiple of num_generations ({group_size})"
        ) from exc


class GiGPOTrainer(RlftGRPOTrainer):
    """TRL's GRPOTrainer (with rlft's checkpoints and resume) whose advantages are GiGPO's, per token."""

    args: GiGPOConfig

    def score_generation_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's GRPO scoring (it plays the batch through the rollout function), then A_episode + w * A_step."""
        scored = super().score_generation_batch(inputs)
        batch = self.rollout_batch  # the batch TRL's call to the rollout function just built
        whole_groups(batch, self.num_generations, "rl.algorithm: gigpo")
        scored["advantages"], step = batch.gigpo_advantages(
            scored["advantages"],
            self.num_generations,
            self.args.gamma,
            step_weight=self.args.step_advantage_weight,
            scale_by_std=self.args.step_scale_by_std,
        )
        self._log_step_credit(batch, step)
        return scored

    def _log_step_credit(self, batch: RolloutBatch, step: torch.Tensor) -> None:
        # Over all processes: how many action tokens got step-level credit, and how much.
        mask = batch.env_mask.to(step.dtype)
        local = torch.stack([(step.abs() * mask).sum(), ((step != 0) * mask).sum(), mask.sum()])
        totals = self.accelerator.reduce(local, reduction="sum")
        tokens = totals[2].clamp(min=1.0)
        metrics = trl_bridge.metrics(self)
        metrics["gigpo/step_advantage_abs_mean"].append((totals[0] / tokens).item())
        metrics["gigpo/step_credit_token_share"].append((totals[1] / tokens).item())


def build_gigpo_trainer(
    model, tokenizer, args: GiGPOConfig, engine, train_seeds: list[int], batch_size: int, **kwargs
):
    """GiGPOTrainer on a loaded policy: GRPO's rollout and reward function, GiGPO's advantages."""
    return build_grpo_trainer(
        model, tokenizer, args, engine, train_seeds, batch_size, trainer_class=GiGPOTrainer, **kwargs
    )
