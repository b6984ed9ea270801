"""Generalised advantage estimation over an episode's model tokens, token-level or turn-level.

One row is one episode laid out as completion tokens (DESIGN.md, the Episode). Only tokens the model sampled
are decision points; environment tokens (observations) and right padding are skipped, so the "next state" of
an action's last token is the first token of the next action. Turn k's reward sits on action k's last token.

    delta_t = r_t + gamma * V_next(t) - V_t          over model tokens t, in order
    A_t     = delta_t + gamma * lam * A_next(t)
    R_t     = A_t + V_t                             (the critic's regression target)

After the last model token `V_next` is the bootstrap value: the critic's value of the state after the final
observation when the episode was truncated (time limit, turn cap, token cap), and 0 when it terminated.
This is SB3's `compute_returns_and_advantage` (and CleanRL's `next_value * nextnonterminal`) with the
time axis restricted to model tokens.

Turn-level mode runs the same recursion with one step per action: the action's value is the critic's value
at its first token (the state the action was chosen in), its reward the sum of its tokens' rewards (the env
reward plus any per-token KL penalty), and every token of the action gets the action's advantage.

Without a critic, GiGPO's step-level advantages (`step_group_advantages`) compare the discounted returns of turns
that start from the same state within a group of episodes of one task.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch


def token_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the tokens where `mask` is 1.

    Args:
        rewards, values: (B, T) per completion token (values = V of the state before the token).
        mask: (B, T), 1 on model tokens.
        bootstrap: (B,), the value after the last model token (0 for terminated episodes).

    Returns:
        advantages, returns: (B, T), 0 where `mask` is 0.

    >>> r = torch.tensor([[0.0, 0.0, 1.0]]); v = torch.tensor([[0.5, 0.0, 0.5]]); m = torch.tensor([[1, 0, 1]])
    >>> adv, ret = token_gae(r, v, m, torch.zeros(1), gamma=1.0, lam=1.0)
    >>> adv.tolist(), ret.tolist()
    ([[0.5, 0.0, 0.5]], [[1.0, 0.0, 1.0]])
    """
    mask = mask.bool()
    rewards, values = rewards.float(), values.float()
    next_value = bootstrap.float().clone()
    next_advantage = torch.zeros_like(next_value)
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        on = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(on, advantage, torch.zeros_like(advantage))
        next_value = torch.where(on, values[:, t], next_value)
        next_advantage = torch.where(on, advantage, next_advantage)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


def action_starts(mask: torch.Tensor) -> torch.Tensor:
    """1 on the first token of each action (a model token whose predecessor is not one), (B, T)."""
    mask = mask.bool()
    previous = torch.zeros_like(mask)
    previous[:, 1:] = mask[:, :-1]
    return mask & ~previous


def turn_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GAE with one step per action; the advantage is spread over the action's tokens.

    Returns advantages (B, T) on every model token, returns (B, T) on each action's first token, and that
    first-token mask, on which the critic is trained in this mode.

    >>> r = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]); m = torch.tensor([[1, 1, 0, 1, 1]])
    >>> v = torch.tensor([[0.5, 9.0, 9.0, 0.5, 9.0]])  # only first-token values count
    >>> adv, ret, starts = turn_gae(r, v, m, torch.zeros(1), gamma=1.0, lam=1.0)
    >>> adv.tolist(), ret.tolist()
    ([[0.5, 0.5, 0.0, 0.5, 0.5]], [[1.0, 0.0, 0.0, 1.0, 0.0]])
    """
    mask = mask.bool()
    starts = action_starts(mask)
    # Move every token's reward onto its action's first token: turn reward = sum over the action's tokens.
    turn_index = (
        torch.cumsum(starts.long(), dim=1) - 1
    )  # which action each token belongs to (-1 before the first)
    turn_rewards = torch.zeros_like(rewards, dtype=torch.float)
    first_position = torch.where(starts, torch.arange(mask.shape[1]).expand_as(mask), 0)
    start_of_turn = torch.zeros_like(turn_index)
    for b in range(mask.shape[0]):
        positions = first_position[b][starts[b]]
        owned = mask[b] & (turn_index[b] >= 0)
        start_of_turn[b][owned] = positions[turn_index[b][owned]]
        turn_rewards[b].index_add_(0, start_of_turn[b][owned], rewards[b][owned].float())
    advantages, returns = token_gae(turn_rewards, values, starts, bootstrap, gamma, lam)
    spread = torch.gather(advantages, 1, start_of_turn)
    advantages = torch.where(mask, spread, torch.zeros_like(spread))
    return advantages, returns, starts


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """(x - mean) / std over masked entries; 0 elsewhere. Pass mean/std to use statistics gathered elsewhere."""
    mask = mask.bool()
    if mean is None or std is None:
        values = x[mask]
        mean, std = values.mean(), values.std(unbiased=False)
    return torch.where(mask, (x - mean) / (std + eps), torch.zeros_like(x))


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target] (SB3's `explained_variance`); nan when Var[target] = 0."""
    var = target.var(unbiased=False)
    if var.item() == 0:
        return float("nan")
    return float(1 - (target - predicted).var(unbiased=False) / var)


def discounted_turn_returns(turn_rewards: list[float], gamma: float) -> list[float]:
    """G_k = r_k + gamma * G_{k+1}: each turn's discounted return to the end of its episode (one step per turn).

    >>> discounted_turn_returns([0.0, 0.0, 1.0], gamma=0.5)
    [0.25, 0.5, 1.0]
    """
    returns, running = [0.0] * len(turn_rewards), 0.0
    for k in reversed(range(len(turn_rewards))):
        running = turn_rewards[k] + gamma * running
        returns[k] = running
    return returns


def step_group_advantages(
    anchors: list[list[Hashable]], returns: list[list[float]], scale_by_std: bool = False, eps: float = 1e-6
) -> list[list[float]]:
    """GiGPO's step-level relative advantages within one episode group (Feng et al. 2025, eq. 7-8).

    The turns of the group's episodes that start from the same anchor state (the same observation) form a step
    group; a turn's step advantage is its discounted return minus its step group's mean return, divided by the
    step group's (unbiased) std + eps when `scale_by_std`. A turn alone in its step group gets 0: there is
    nothing to compare its action with.

    Args:
        anchors: per episode, the anchor state of each turn; an episode left out (failed) has [] here.
        returns: per episode, each turn's discounted return (same lengths as `anchors`).

    Returns:
        Per episode, each turn's step advantage.

    >>> step_group_advantages([["s", "t"], ["s"]], [[1.0, 1.0], [0.0]])  # "s" is shared, "t" is a singleton
    [[0.5, 0.0], [-0.5]]
    """
    members: dict[Hashable, list[tuple[int, int]]] = {}
    for i, episode_anchors in enumerate(anchors):
        for k, anchor in enumerate(episode_anchors):
            members.setdefault(anchor, []).append((i, k))
    advantages = [[0.0] * len(episode_anchors) for episode_anchors in anchors]
    for turns in members.values():
        if len(turns) < 2:
            continue
        group = torch.tensor([returns[i][k] for i, k in turns], dtype=torch.float64)
        centred = group - group.mean()
        if scale_by_std:
            centred = centred / (group.std() + eps)
        for (i, k), value in zip(turns, centred.tolist()):
            advantages[i][k] = value
    return advantages
