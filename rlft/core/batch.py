"""The rollout batch: a generation batch's Episodes as padded tensors, and the advantage computations over them.

Built once per rollout, after the reward design has composed `episode.rewards`, and the only thing an algorithm
consumes (DESIGN.md, "One batch object from rollout to loss"). Like Stable-Baselines3's `RolloutBuffer` it owns
the advantage computations: `compute_gae` (PPO, token or turn level, through rlft/core/advantages.py),
`group_advantages` (a GRPO-style group baseline) and `gigpo_advantages` (GiGPO's episode + step-group credit). Values, returns and advantages are filled in once computed.

Layout, B episodes in rollout order (row i is `episodes[i]`)::

    prompt_ids      (B, P)  left-padded with `pad_id`        prompt_mask (B, P)
    completion_ids  (B, T)  right-padded with `pad_id`       completion_mask (B, T): 1 on the episode's tokens
    env_mask        (B, T)  1 on tokens the model sampled (the loss tokens); all 0 for a failed episode
    logprobs        (B, T)  behaviour log-probs on model tokens, 0 elsewhere
    rewards         (B, T)  each turn's total reward on its action's last token; 0 for a failed episode

A failed episode (`Episode.failure`) keeps its row, because TRL's groups need every row, but carries no learning
signal. One that failed before producing a token (at reset) gets `pad_id` as a one-token prompt / completion, so
that padding and TRL's end-of-sequence check have something to read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlft.core.advantages import (
    discounted_turn_returns,
    masked_whiten,
    step_group_advantages,
    token_gae,
    turn_gae,
)
from rlft.core.episode import Episode


def _pad(rows: list[list], value, left: bool = False, dtype=torch.long) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        if row:
            target = out[i, width - len(row) :] if left else out[i, : len(row)]
            target.copy_(torch.tensor(row, dtype=dtype))
    return out


@dataclass
class RolloutBatch:
    """One generation batch of episodes (see the module docstring for the tensors' layout)."""

    episodes: list[Episode]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    env_mask: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    pad_id: int = 0
    # filled in by the algorithm: critic values at rollout time, GAE returns and advantages, the critic's loss mask
    values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    value_mask: torch.Tensor | None = None
    component_returns: dict[str, list[float]] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_episodes(
        cls, episodes: list[Episode], pad_id: int = 0, device: torch.device | str = "cpu"
    ) -> RolloutBatch:
        """Pad the episodes' tokens into tensors on `device` (reward design already applied)."""
        prompts = [e.prompt_ids or [pad_id] for e in episodes]
        completions = [e.completion_ids or [pad_id] for e in episodes]
        env_mask = [
            [0] * len(c) if e.failure is not None else e.mask or [0] for e, c in zip(episodes, completions)
        ]
        logprobs = [e.logprobs or [0.0] for e in episodes]
        rewards = [
            [0.0] * len(c) if e.failure is not None else e.token_rewards() or [0.0]
            for e, c in zip(episodes, completions)
        ]
        components: dict[str, list[float]] = {}
        for episode in episodes:
            if episode.failure is None:
                for name, values in episode.rewards.items():
                    components.setdefault(name, []).append(float(sum(values)))
        env = _pad(env_mask, 0).to(device)
        return cls(
            episodes=list(episodes),
            pad_id=pad_id,
            prompt_ids=_pad(prompts, pad_id, left=True).to(device),
            prompt_mask=_pad([[1] * len(p) for p in prompts], 0, left=True).to(device),
            completion_ids=_pad(completions, pad_id).to(device),
            completion_mask=_pad([[1] * len(c) for c in completions], 0).to(device),
            env_mask=env,
            logprobs=_pad(logprobs, 0.0, dtype=torch.float).to(device) * env,
            rewards=_pad(rewards, 0.0, dtype=torch.float).to(device),
            component_returns=components,
        )

    def __len__(self) -> int:
        return len(self.episodes)

    # ------------------------------------------------------------------------------------------ metadata
    @property
    def healthy(self) -> list[bool]:
        return [e.failure is None for e in self.episodes]

    @property
    def seeds(self) -> list[int]:
        return [e.seed for e in self.episodes]

    @property
    def task_ids(self) -> list[str]:
        return [e.task_id for e in self.episodes]

    @property
    def truncated(self) -> list[bool]:
        """Episodes whose critic value is bootstrapped: truncated and healthy."""
        return [bool(e.truncated) and e.failure is None for e in self.episodes]

    def per_episode(self, value) -> list:
        """`value(episode)` for each healthy episode, None for a failed one (TRL's unscorable rows)."""
        return [None if e.failure is not None else value(e) for e in self.episodes]

    def nonfinite_reward(self) -> str | None:
        """Why this batch must not be trained on (a non-finite reward of a healthy episode), or None."""
        for episode in self.episodes:
            if episode.failure is None and not all(math.isfinite(r) for r in episode.turn_rewards):
                return f"non-finite reward in the episode of env seed {episode.seed}"
        return None

    # ------------------------------------------------------------------------------------------ for TRL's GRPO
    def to_trl_rollout(self) -> dict[str, list]:
        """TRL's `rollout_func` fields, and the per-episode values its reward functions receive as keywords.

        A failed episode's env_mask is all 0 (none of its tokens enters the loss or the token count) and its
        per-episode values are None, so TRL treats it as unscorable (NaN reward, advantage 0).
        """
        return {
            "prompt_ids": [e.prompt_ids or [self.pad_id] for e in self.episodes],
            "completion_ids": [e.completion_ids or [self.pad_id] for e in self.episodes],
            "logprobs": [e.logprobs or [0.0] for e in self.episodes],
            "env_mask": [
                [0] * max(len(e.mask), 1) if e.failure is not None else e.mask for e in self.episodes
            ],
            "episode_return": self.per_episode(lambda e: e.episode_return),
            "success": self.per_episode(lambda e: float(e.success)),
            "turns": self.per_episode(lambda e: float(e.num_turns)),
            "invalid_actions": self.per_episode(lambda e: float(e.invalid_actions)),
        }

    # ------------------------------------------------------------------------------------------ critic inputs
    def critic_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """prompt + completion + each truncated episode's final observation, for one critic forward.

        The final observation (not trained on) is appended right after the episode's completion, so the same
        forward gives V(s_T), the bootstrap value; appending never changes the earlier positions' values.

        Returns:
            input_ids, attention_mask: (B, P + T + E), E the longest final observation.
            bootstrap_index: (B,) the position whose value is the bootstrap; -1 where there is none.
        """
        tails = [
            e.final_observation_ids if truncated else []
            for e, truncated in zip(self.episodes, self.truncated)
        ]
        extra = max((len(t) for t in tails), default=0)
        ids = torch.cat(
            [self.completion_ids, self.completion_ids.new_full((len(self), extra), self.pad_id)], dim=1
        )
        att = torch.cat([self.completion_mask, self.completion_mask.new_zeros((len(self), extra))], dim=1)
        lengths = self.completion_mask.sum(dim=1).tolist()
        start = self.prompt_ids.shape[1]
        bootstrap_index = torch.full((len(self),), -1, dtype=torch.long)
        for i, tail in enumerate(tails):
            if tail:
                ids[i, lengths[i] : lengths[i] + len(tail)] = torch.tensor(tail, device=ids.device)
                att[i, lengths[i] : lengths[i] + len(tail)] = 1
                bootstrap_index[i] = start + lengths[i] + len(tail) - 1
        return (
            torch.cat([self.prompt_ids, ids], dim=1),
            torch.cat([self.prompt_mask, att], dim=1),
            bootstrap_index.to(ids.device),
        )

    def split_critic_values(
        self, full: torch.Tensor, bootstrap_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic's (B, P + T + E) output as values before each completion token (B, T) and bootstrap (B,).

        Position P - 1 + t holds V of the state before completion token t; 0 bootstrap where there is none.
        """
        start, width = self.prompt_ids.shape[1], self.completion_ids.shape[1]
        values = full[:, start - 1 : start - 1 + width]
        index = bootstrap_index.clamp(min=0).unsqueeze(1)
        bootstrap = torch.where(
            bootstrap_index >= 0, full.gather(1, index).squeeze(1), torch.zeros_like(full[:, 0])
        )
        return values, bootstrap

    # ------------------------------------------------------------------------------------------ advantages
    def add_kl_penalty(self, ref_logprobs: torch.Tensor, coef: float) -> torch.Tensor:
        """Subtract coef * (log pi_behaviour - log pi_ref) from each model token's reward (classic RLHF).

        Returns the per-token KL estimate (B, T), 0 off the model tokens.
        """
        per_token = (self.logprobs - ref_logprobs) * self.env_mask
        self.rewards = self.rewards - coef * per_token
        return per_token

    def compute_gae(
        self, values: torch.Tensor, bootstrap: torch.Tensor, gamma: float, lam: float, level: str = "token"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over model tokens (rlft/core/advantages.py); stores values, returns, advantages and value_mask.

        Args:
            values: (B, T) critic values before each completion token. bootstrap: (B,) V after the last
                observation of a truncated episode, 0 for a terminated one.
            level: "token" (one step per model token) or "turn" (one step per action; the critic is then
                trained on each action's first token only).
        """
        if level == "turn":
            advantages, returns, value_mask = turn_gae(
                self.rewards, values, self.env_mask, bootstrap, gamma, lam
            )
        elif level == "token":
            advantages, returns = token_gae(self.rewards, values, self.env_mask, bootstrap, gamma, lam)
            value_mask = self.env_mask.bool()
        else:
            raise ValueError(f"level = {level!r}: expected 'token' or 'turn'")
        self.values, self.returns, self.advantages = values, returns, advantages
        self.value_mask = value_mask.to(values.dtype)
        return advantages, returns

    def whiten_advantages(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        """(A - mean) / std over model tokens; pass statistics gathered across processes, or None for local."""
        self.advantages = masked_whiten(self.advantages, self.env_mask, mean, std)

    def group_slices(self, group_size: int) -> list[slice]:
        """The rows of each group: `group_size` consecutive episodes of one env seed.

        Raises:
            ValueError: the rows do not split into whole groups of one seed each (e.g. a process holds part of
                a group because its batch is not a multiple of `group_size`).
        """
        groups = [slice(start, start + group_size) for start in range(0, len(self), group_size)]
        if len(self) % group_size or any(len(set(self.seeds[g])) != 1 for g in groups):
            raise ValueError(
                f"the {len(self)} episodes {self.seeds} do not split into whole groups of {group_size} "
                "episodes of one seed each"
            )
        return groups

    def group_advantages(self, group_size: int, eps: float = 1e-4) -> torch.Tensor:
        """GRPO's group baseline per episode: (R - mean_group) / (std_group + eps), (B,).

        Rows come in groups of `group_size` consecutive episodes (same seed). Failed episodes are left out of
        their group's mean and (unbiased) std and get advantage 0.

        >>> from rlft.core.episode import Episode
        >>> eps = [Episode(seed=0, prompt_ids=[1], completion_ids=[2], mask=[1], action_ends=[0],
        ...                rewards={"env": [r]}) for r in (1.0, 3.0)]
        >>> RolloutBatch.from_episodes(eps).group_advantages(2, eps=0.0).tolist()   # std sqrt(2)
        [-0.7071067690849304, 0.7071067690849304]
        """
        returns = torch.tensor(
            [float("nan") if r is None else r for r in self.per_episode(lambda e: e.episode_return)]
        )
        grouped = returns.view(-1, group_size)
        healthy = ~torch.isnan(grouped)
        count = healthy.sum(dim=1, keepdim=True)
        mean = torch.where(healthy, grouped, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)
        squares = torch.where(healthy, (grouped - mean) ** 2, 0.0).sum(dim=1, keepdim=True)
        std = (squares / (count - 1).clamp(min=1)).sqrt()
        advantages = torch.where(healthy, (grouped - mean) / (std + eps), 0.0)
        return advantages.view(-1).to(self.rewards.device)

    def turn_anchors(self) -> list[list[str]]:
        """Per episode, the observation each turn was chosen from (GiGPO's anchor state); [] for a failed one."""
        return [
            [] if e.failure is not None else [e.first_observation, *e.observations][: e.num_turns]
            for e in self.episodes
        ]

    def spread_over_turns(self, per_turn: list[list[float]]) -> torch.Tensor:
        """Each turn's value on every model token of its action (B, T); 0 on observations and padding."""
        out = torch.zeros_like(self.rewards)
        for i, (episode, values) in enumerate(zip(self.episodes, per_turn)):
            start = 0
            for end, value in zip(episode.action_ends, values):  # turn k's action ends at action_ends[k]
                out[i, start : end + 1] = value
                start = end + 1
        return out * self.env_mask

    def step_advantages(
        self, group_size: int, gamma: float, scale_by_std: bool = False, eps: float = 1e-6
    ) -> torch.Tensor:
        """GiGPO's step-level advantages (rlft/core/advantages.py) on each action's tokens, (B, T).

        Step groups form within each group of `group_size` consecutive episodes (one task); a turn's return is
        discounted by `gamma` per turn to the end of its episode. Failed episodes join no step group and get 0.
        """
        anchors = self.turn_anchors()
        returns = [
            [] if e.failure is not None else discounted_turn_returns(e.turn_rewards, gamma)
            for e in self.episodes
        ]
        per_turn: list[list[float]] = []
        for group in self.group_slices(group_size):
            per_turn.extend(step_group_advantages(anchors[group], returns[group], scale_by_std, eps))
        return self.spread_over_turns(per_turn)

    def gigpo_advantages(
        self,
        episode_advantages: torch.Tensor,
        group_size: int,
        gamma: float,
        step_weight: float = 1.0,
        scale_by_std: bool = False,
        eps: float = 1e-6,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GiGPO's per-token advantages A = A_episode + step_weight * A_step (Feng et al. 2025, eq. 9).

        Args:
            episode_advantages: (B,) the episode-level group advantage (GRPO's, e.g. `group_advantages`).

        Returns:
            advantages (B, T), stored as `advantages`: 0 off the model tokens and on every token of a failed
            episode; and the step advantages A_step (B, T) they include.
        """
        step = self.step_advantages(group_size, gamma, scale_by_std, eps)
        episode = episode_advantages.to(step).unsqueeze(1)
        combined = episode + step_weight * step
        self.advantages = torch.where(self.env_mask.bool(), combined, torch.zeros_like(combined))
        return self.advantages, step
