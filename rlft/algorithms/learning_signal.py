"""Learning signal: how much of each rollout batch the loss can learn from, and no optimizer step without any.

GRPO learns nothing from a group whose episodes all got the same reward: every advantage of the group is 0, and
a step whose groups are all like that has a zero policy gradient. Stepping Adam on it still moves the weights
(its momentum keeps the last direction for ~1 / (1 - beta1) steps) and feeds zeros into its second moment, which
inflates the next real step. In the issue-16 investigation (lr 2e-3) a run of such steps followed by one noisy
mixed group took greedy success from 0.64 to 0.0; skipping the steps without signal kept it at 0.64. So with
`rl.skip_steps_without_signal` (default on) such a step leaves the weights and Adam's moments untouched. A KL or
entropy term has a gradient of its own, so a step whose loss has one is never skipped.

Logged per rollout batch (over all processes; "loss tokens" are the sampled action tokens the loss reads):

    signal/zero_advantage_episodes  share of episodes (with loss tokens) whose every loss token has advantage 0
    signal/zero_advantage_tokens    share of loss tokens with advantage 0
    signal/advantage_std            std of the advantages over the loss tokens (their spread)
    signal/advantage_abs_mean       mean |advantage| over the loss tokens
    signal/zero_std_groups          share of groups (`num_generations` episodes of one task; only when > 1) whose
                                    returns are all equal: TRL's `frac_reward_zero_std`, for PPO as well
    episode/truncated_ratio         share of healthy episodes cut by the turn or token limit
    episode/mean_terminated_turns   mean turns of the episodes that ended in a terminal state (absent if none)

Per optimizer step: `signal/no_signal_step` (1: no micro-batch on any process had a non-zero advantage, nor for
PPO a value target the critic does not already predict) and `signal/skipped_steps_total`. Entropy (`entropy`,
PPO's `ppo/entropy`) and training success (`episode/success`, the rollout's own episodes) are logged by the
algorithms; held-out success by the held-out eval callback (`eval.every_steps`).

TRL's `completions/clipped_ratio` and `completions/*_terminated_length` read an episode as truncated unless its
last token is EOS; a multi-turn episode ends with an observation, so they read 1 and 0 on every step. They are
dropped (`drop_false_metrics`) and `episode/truncated_ratio` / `episode/mean_terminated_turns` replace them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from rlft.algorithms import trl_bridge

logger = logging.getLogger(__name__)

# What TRL logs about completions that is false for a multi-turn episode (it ends with an env observation).
FALSE_MULTI_TURN_METRICS = (
    "completions/clipped_ratio",
    "completions/mean_terminated_length",
    "completions/min_terminated_length",
    "completions/max_terminated_length",
)
NO_SIGNAL_KNOBS = (
    "raise rollout.temperature or rl.trainer.num_generations so that the episodes of a task differ, train on "
    "tasks of the right difficulty (a curriculum over env.train_seeds), or shape the reward (a reward design "
    "with rule components) so that partial progress scores"
)


# ------------------------------------------------------------------------------------------- pure statistics
def loss_mask(inputs: dict[str, Any]) -> torch.Tensor:
    """The tokens the loss reads (B, T): completion tokens the model sampled (TRL's `tool_mask`, PPO's `env_mask`)."""
    mask = inputs["completion_mask"]
    env = inputs.get("tool_mask", inputs.get("env_mask"))
    return (mask if env is None else mask * env).float()


def token_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages per token (B, T): GRPO's one per episode (B,) spread over its tokens, PPO's (B, T) as they are."""
    return advantages.unsqueeze(1).expand_as(mask) if advantages.dim() == 1 else advantages


def has_signal(inputs: dict[str, Any]) -> torch.Tensor:
    """Whether a minibatch gives the loss a gradient, as a 0-dim bool tensor (no device sync).

    Signal: a non-zero advantage on a loss token, or (PPO) a value target (`returns`) the rollout's critic value
    (`old_values`) does not already equal: the value loss has a gradient even where whitening zeroed the advantages.
    """
    mask = loss_mask(inputs).bool()
    signal = ((token_advantages(inputs["advantages"], mask) != 0) & mask).any()
    if "returns" in inputs and "old_values" in inputs:
        moved = (inputs["returns"] != inputs["old_values"]) & inputs["value_mask"].bool()
        signal = signal | moved.any()
    return signal


def advantage_sums(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sums over a rollout batch that `signal_metrics` turns into shares and spreads (summed across processes).

    Args:
        advantages: (B,) per episode (GRPO) or (B, T) per token (PPO).
        mask: (B, T) loss tokens.

    Returns:
        [episodes with loss tokens, of them with every advantage 0, loss tokens, of them with advantage 0,
        sum A, sum A^2, sum |A|] over the loss tokens: (7,).
    """
    adv = token_advantages(advantages.float(), mask) * mask
    nonzero = ((adv != 0) & mask.bool()).float()
    episodes = mask.sum(dim=1) > 0
    return torch.stack(
        [
            episodes.float().sum(),
            (episodes & (nonzero.sum(dim=1) == 0)).float().sum(),
            mask.sum(),
            mask.sum() - nonzero.sum(),
            adv.sum(),
            (adv * adv).sum(),
            adv.abs().sum(),
        ]
    )


def signal_metrics(sums: torch.Tensor) -> dict[str, float]:
    """`signal/*` shares and spreads from `advantage_sums` (summed over processes)."""
    episodes, zero_episodes, tokens, zero_tokens, total, squares, absolute = sums.tolist()
    tokens_ = max(tokens, 1.0)
    mean = total / tokens_
    return {
        "signal/zero_advantage_episodes": zero_episodes / max(episodes, 1.0),
        "signal/zero_advantage_tokens": zero_tokens / tokens_,
        "signal/advantage_std": max(squares / tokens_ - mean * mean, 0.0) ** 0.5,
        "signal/advantage_abs_mean": absolute / tokens_,
    }


def zero_std_group_share(returns: torch.Tensor, group_size: int) -> float:
    """Share of groups whose healthy returns are all equal (NaN: a failed episode, left out), (B,) in groups of
    `group_size` consecutive rows. A group with fewer than two healthy episodes has no variance either."""
    grouped = returns.float().view(-1, group_size)
    healthy = ~torch.isnan(grouped)
    high = torch.where(healthy, grouped, -torch.inf).max(dim=1).values
    low = torch.where(healthy, grouped, torch.inf).min(dim=1).values
    flat = (healthy.sum(dim=1) < 2) | (high == low)
    return flat.float().mean().item()


def episode_end_sums(episodes: list) -> torch.Tensor:
    """[healthy episodes, truncated ones, terminated ones, turns of the terminated ones] (4,)."""
    healthy = [e for e in episodes if e.failure is None]
    terminated = [e for e in healthy if e.terminated]
    return torch.tensor(
        [
            len(healthy),
            sum(bool(e.truncated) for e in healthy),
            len(terminated),
            sum(e.num_turns for e in terminated),
        ],
        dtype=torch.float,
    )


def drop_false_metrics(metrics: dict[str, dict[str, list]]) -> None:
    """Remove TRL's completion metrics that are false for multi-turn episodes (`FALSE_MULTI_TURN_METRICS`)."""
    for values in metrics.values():
        for key in FALSE_MULTI_TURN_METRICS:
            values.pop(key, None)


def regularised(trainer) -> bool:
    """Whether the loss has a term with a gradient of its own: a KL to the reference (`beta`; PPO sets it to
    `kl_coef`) or an entropy bonus (fixed or TRL's adaptive one)."""
    args = trainer.args
    return (
        getattr(trainer, "beta", 0.0) != 0.0
        or getattr(args, "entropy_coef", 0.0) != 0.0
        or bool(getattr(args, "use_adaptive_entropy", False))
    )


# ------------------------------------------------------------------------------------------- the run's record
@dataclass
class LearningSignal:
    """A trainer's learning-signal bookkeeping: diagnostics per rollout, the skip decision per optimizer step,
    counters carried in the exact-resume state, and the end-of-run summary and warning.

    Every method that takes the trainer is called on every process at the same point (they reduce across them).
    """

    skip_steps_without_signal: bool = True
    warn_fraction: float = 0.5
    steps: int = 0
    no_signal_steps: int = 0
    skipped_steps: int = 0
    rollouts: int = 0
    advantage_std_sum: float = 0.0
    first_success: float | None = None
    last_success: float | None = None
    _window: torch.Tensor | None = field(default=None, repr=False)  # signal seen in this step's minibatches

    STATE = (
        "steps",
        "no_signal_steps",
        "skipped_steps",
        "rollouts",
        "advantage_std_sum",
        "first_success",
        "last_success",
    )

    def configure(self, skip_steps_without_signal: bool, warn_fraction: float) -> None:
        self.skip_steps_without_signal, self.warn_fraction = (
            bool(skip_steps_without_signal),
            float(warn_fraction),
        )

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            if name in state:
                setattr(self, name, state[name])

    # ---------------------------------------------------------------------------------------- per rollout
    def observe_rollout(self, trainer, scored: dict[str, Any], batch) -> None:
        """Log the `signal/*` and `episode/*` diagnostics of a new rollout batch (`batch`: its `RolloutBatch`)."""
        accelerator, metrics = trainer.accelerator, trl_bridge.metrics(trainer)
        drop_false_metrics(trl_bridge.all_metrics(trainer))  # TRL's, logged while it scored this batch (GRPO)
        mask = loss_mask(scored)
        ends = episode_end_sums(batch.episodes if batch is not None else []).to(mask.device)
        sums = torch.cat([advantage_sums(scored["advantages"], mask), ends])
        sums = accelerator.reduce(sums, reduction="sum") if accelerator.num_processes > 1 else sums
        logged = signal_metrics(sums[:7])
        healthy, truncated, terminated, terminated_turns = sums[7:].tolist()
        logged["episode/truncated_ratio"] = truncated / max(healthy, 1.0)
        if terminated > 0:
            logged["episode/mean_terminated_turns"] = terminated_turns / terminated
        group_size = int(getattr(trainer, "num_generations", 1) or 1)
        if group_size > 1 and batch is not None:
            returns = torch.tensor(
                [float("nan") if r is None else r for r in batch.per_episode(lambda e: e.episode_return)]
            )
            returns = (
                accelerator.gather(returns.to(mask.device)) if accelerator.num_processes > 1 else returns
            )
            logged["signal/zero_std_groups"] = zero_std_group_share(returns, group_size)
        for key, value in logged.items():
            metrics[key].append(value)
        self.rollouts += 1
        self.advantage_std_sum += logged["signal/advantage_std"]
        if batch is not None:
            success = [float(s) for s in batch.per_episode(lambda e: e.success) if s is not None]
            if success:
                self.last_success = sum(success) / len(success)
                self.first_success = self.last_success if self.first_success is None else self.first_success

    # ---------------------------------------------------------------------------------------- per step
    def observe_minibatch(self, inputs: dict[str, Any]) -> None:
        """Called with each minibatch a training step trains on: remembers whether it carried signal."""
        signal = has_signal(inputs)
        self._window = signal if self._window is None else self._window | signal

    def close_step(self, trainer) -> bool:
        """At the optimizer step: whether to skip it for lack of signal (no process had any, skipping is on and
        the loss has no KL / entropy term). Gradients are cleared when it is skipped; logs the step's record."""
        device = trainer.accelerator.device
        seen = (self._window if self._window is not None else torch.tensor(False)).float().to(device)
        if trainer.accelerator.num_processes > 1:  # skip only if no rank had signal
            seen = trainer.accelerator.reduce(seen, reduction="max")
        self._window = None
        without = seen.item() == 0.0
        skip = without and self.skip_steps_without_signal and not regularised(trainer)
        self.steps += 1
        self.no_signal_steps += int(without)
        self.skipped_steps += int(skip)
        if skip:
            trainer.accelerator.unwrap_model(trainer.model).zero_grad(set_to_none=True)
        metrics = trl_bridge.metrics(trainer)
        metrics["signal/no_signal_step"].append(float(without))
        metrics["signal/skipped_steps_total"].append(float(self.skipped_steps))
        return skip

    # ---------------------------------------------------------------------------------------- end of run
    def summary(self) -> str:
        share = self.no_signal_steps / max(self.steps, 1)
        spread = self.advantage_std_sum / max(self.rollouts, 1)
        line = (
            f"learning signal: {self.steps} optimizer steps, {self.no_signal_steps} ({share:.0%}) without signal, "
            f"{self.skipped_steps} skipped (rl.skip_steps_without_signal); mean advantage std {spread:.3g}"
        )
        if self.first_success is not None:
            line += f"; training success {self.first_success:.3f} (first rollout) -> {self.last_success:.3f} (last)"
        return line

    def warning(self) -> str | None:
        """A warning when more than `warn_fraction` of the steps had no signal, naming what to change."""
        share = self.no_signal_steps / max(self.steps, 1)
        if self.steps == 0 or share <= self.warn_fraction:
            return None
        return (
            f"{share:.0%} of the {self.steps} optimizer steps had no learning signal (more than "
            f"rl.no_signal_warn_fraction = {self.warn_fraction}): every episode of a task got the same reward, so "
            f"every advantage was 0. To learn from more of them: {NO_SIGNAL_KNOBS}"
        )

    def report(self, main_process: bool) -> None:
        """Print the summary and log the warning (main process only)."""
        if not main_process:
            return
        print(self.summary(), flush=True)
        warning = self.warning()
        if warning is not None:
            logger.warning(warning)
