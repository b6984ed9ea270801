"""PPO's loss terms as pure functions (torchtune `rlhf/loss` style): tensors in, tensors out, no I/O.

Shapes: B episodes (rows), T completion tokens. `mask` is 1 on the tokens the model sampled (the loss tokens);
environment tokens and padding are 0 and never contribute. Names follow CleanRL's `ppo.py` (`ratio`,
`pg_loss1`, `pg_loss2`, `clip_coef`, `v_loss_unclipped`, `v_clipped`).

`ppo_objective` is the whole objective on one screen:

    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy + kl_coef * kl

Normalisation (the choice, said once): the policy, entropy and KL terms are token sums over the minibatch's
loss tokens divided by `token_count`, the number of loss tokens one minibatch holds on average (the whole
generation batch's count across processes / processes / minibatches). This is TRL's "dapo" normalisation
(Yu et al. 2025): every token of the rollout batch weighs the same whatever episode it is in, and a minibatch
with few tokens does not get a larger per-token step. The value loss is a masked mean over the minibatch's
value tokens (CleanRL's `0.5 * mean(...)`).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over entries where `mask` is 1 (0 when the mask is empty). x, mask: same shape."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask.to(x.dtype)).sum()


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_coef: float | tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """CleanRL's clipped surrogate per token, max(pg_loss1, pg_loss2), and the probability ratio.

    Args:
        logprobs: (B, T) log pi_theta of the sampled tokens.
        old_logprobs: (B, T) log pi_old (the behaviour policy's, stored at rollout time).
        advantages: (B, T) per-token advantages.
        clip_coef: epsilon, or (epsilon_low, epsilon_high) for an asymmetric range.

    Returns:
        per-token loss (B, T) and ratio (B, T).

    >>> loss, ratio = clipped_policy_loss(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2),
    ...                                   torch.tensor([[1.0, -1.0]]), clip_coef=0.2)
    >>> [round(v, 4) for v in loss[0].tolist()]   # -min(1.5, 1.2), -min(-0.5, -0.8)
    [-1.2, 0.8]
    """
    low, high = clip_coef if isinstance(clip_coef, tuple) else (clip_coef, clip_coef)
    ratio = torch.exp(logprobs - old_logprobs)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    return torch.max(pg_loss1, pg_loss2), ratio


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CleanRL's clipped value loss, 0.5 * max((V - R)^2, (V_clip - R)^2), masked mean; and the clip fraction.

    Args:
        values, old_values, returns, mask: (B, T). `old_values` are the critic's values at rollout time.
        clip: the value clip range (None: the plain squared error).

    >>> v, old, ret, m = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2)
    >>> loss, frac = clipped_value_loss(v, old, ret, m, clip=0.2)
    >>> round(loss.item(), 4), frac.item()   # (0.5 * max(1, 0.04) + 0.5 * 1) / 2; no token clipped
    (0.5, 0.0)
    """
    v_loss_unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(v_loss_unclipped, mask), torch.zeros((), device=values.device)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    v_loss_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)
    fraction = masked_mean((v_loss_clipped > v_loss_unclipped).float(), mask)
    return loss, fraction


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) (Schulman 2020), e^d - d - 1 with d = log pi_ref - log pi; >= 0.

    >>> round(kl_k3(torch.tensor([0.0]), torch.log(torch.tensor([2.0])))[0].item(), 6)  # 2 - ln 2 - 1
    0.306853
    """
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def truncated_importance_weights(
    logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token truncated importance weights min(pi_train / pi_behaviour, cap) for tokens a different engine
    sampled (vLLM), and their statistics. The policy loss of each token is multiplied by its weight (TRL's
    `vllm_importance_sampling_mode="token_truncate"`; Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"). Tokens outside `mask` get weight 1.

    Args:
        logprobs: (B, T) log pi_train of the sampled tokens (the trainer's forward, same weights).
        behaviour_logprobs: (B, T) log pi_behaviour, the sampling engine's.
        mask: (B, T) 1 on loss tokens.
        cap: the truncation C (> 0).

    Returns:
        weights (B, T), and metrics: `rollout/is_ratio_mean` (mean untruncated ratio over loss tokens) and
        `rollout/is_clipped_frac` (share of loss tokens whose ratio exceeded the cap).

    >>> w, m = truncated_importance_weights(torch.log(torch.tensor([[0.5, 0.2, 0.9]])),
    ...                                     torch.log(torch.tensor([[0.25, 0.4, 0.9]])), torch.ones(1, 3), cap=1.5)
    >>> [round(v, 4) for v in w[0].tolist()]   # min(2, 1.5), min(0.5, 1.5), min(1, 1.5)
    [1.5, 0.5, 1.0]
    >>> round(m["rollout/is_ratio_mean"].item(), 4), round(m["rollout/is_clipped_frac"].item(), 4)
    (1.1667, 0.3333)
    """
    on = mask.bool()
    ratio = torch.exp(torch.where(on, logprobs - behaviour_logprobs, torch.zeros_like(logprobs)))
    weights = torch.clamp(ratio, max=cap)
    metrics = {
        "rollout/is_ratio_mean": masked_mean(ratio, mask),
        "rollout/is_clipped_frac": masked_mean((ratio > cap).float(), mask),
    }
    return weights.detach(), {k: v.detach() for k, v in metrics.items()}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: logits (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def ppo_objective(
    logprobs,
    old_logprobs,
    advantages,
    mask,
    values,
    old_values,
    returns,
    value_mask,
    *,
    token_count: float,
    clip_coef: float | tuple[float, float] = 0.2,
    clip_coef_value: float | None = 0.2,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    entropy=None,
    kl_coef: float = 0.0,
    ref_logprobs=None,
    kl_ratio_weighted: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss of one minibatch (CleanRL's ppo.py), and every number it logs.

    Args:
        logprobs, old_logprobs, advantages, mask: (B, T) as in `clipped_policy_loss`; `mask` marks loss tokens.
        values, old_values, returns, value_mask: (B, T) as in `clipped_value_loss`.
        token_count: the policy / entropy / KL normaliser (see the module docstring).
        entropy: (B, T) per-token entropy (needed when ent_coef != 0).
        ref_logprobs: (B, T) log pi_ref (needed when kl_coef != 0); `kl_ratio_weighted` weighs each token's k3
            by the ratio (TRL's `use_bias_correction_kl`: the tokens were sampled from pi_old, not pi).

    Returns:
        loss (scalar) and metrics (detached scalars: the terms as they enter the loss, and ratio statistics).
    """
    # ------------------------------------------------------------------ policy: clipped surrogate
    per_token_pg, ratio = clipped_policy_loss(logprobs, old_logprobs, advantages, clip_coef)
    pg_loss = masked_sum(per_token_pg, mask) / token_count
    # ------------------------------------------------------------------ value: clipped squared error
    v_loss, v_clipfrac = clipped_value_loss(values, old_values, returns, value_mask, clip_coef_value)
    # ------------------------------------------------------------------ entropy bonus and KL to the reference
    entropy_loss = masked_sum(entropy, mask) / token_count if entropy is not None else pg_loss.new_zeros(())
    kl = pg_loss.new_zeros(())
    if kl_coef != 0.0:
        per_token_kl = kl_k3(logprobs, ref_logprobs)
        kl = masked_sum(per_token_kl * ratio if kl_ratio_weighted else per_token_kl, mask) / token_count
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy_loss + kl_coef * kl
    # ------------------------------------------------------------------ diagnostics (CleanRL's approx_kl, clipfrac)
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        low, high = clip_coef if isinstance(clip_coef, tuple) else (clip_coef, clip_coef)
        on = mask.bool()
        metrics = {
            "ppo/policy_loss": pg_loss.detach(),
            "ppo/value_loss": v_loss.detach(),
            "ppo/value_clipfrac": v_clipfrac.detach(),
            "ppo/entropy": entropy_loss.detach(),
            "ppo/approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "ppo/ratio_mean": masked_mean(ratio, mask),
            "ppo/ratio_max_deviation": ((ratio - 1).abs() * on).max() if on.any() else ratio.new_zeros(()),
            "clip_ratio/low_mean": masked_mean(((ratio < 1 - low) & (advantages < 0)).float(), mask),
            "clip_ratio/high_mean": masked_mean(((ratio > 1 + high) & (advantages > 0)).float(), mask),
        }
        if kl_coef != 0.0:
            metrics["kl"] = kl.detach()
    return loss, metrics
