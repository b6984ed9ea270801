"""rlft/core/losses.py against numbers derived by hand (torchtune's tests/torchtune/rlhf/loss are the model).

Every expected number is written out from the literal inputs in the comments; nothing is recomputed by a second
implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlft.core.losses import clipped_policy_loss, entropy_from_logits, kl_k3, masked_mean, ppo_objective

LN2 = math.log(2.0)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_clipped_policy_loss_per_token():
    # ratios 1.5, 0.5, 0.7, 1.0 with advantages +1, -1, +0.5, -2; clip 0.2 (range [0.8, 1.2]):
    #   r 1.5, A +1:   max(-1.5, -1.2)  = -1.2   (clipped high)
    #   r 0.5, A -1:   max(0.5, 0.8)    =  0.8   (clipped low)
    #   r 0.7, A +0.5: max(-0.35, -0.4) = -0.35  (below the range but A > 0: not clipped)
    #   r 1.0, A -2:   max(2.0, 2.0)    =  2.0
    logprobs = torch.log(t([[1.5, 0.5, 0.7, 1.0]]))
    loss, ratio = clipped_policy_loss(logprobs, torch.zeros(1, 4), t([[1.0, -1.0, 0.5, -2.0]]), clip_coef=0.2)
    torch.testing.assert_close(loss, t([[-1.2, 0.8, -0.35, 2.0]]), atol=1e-6, rtol=0.0)
    torch.testing.assert_close(ratio, t([[1.5, 0.5, 0.7, 1.0]]), atol=1e-6, rtol=0.0)
    # An asymmetric range (0.2, 0.6): r 1.5 with A +1 is now inside it: max(-1.5, -1.5) = -1.5
    loss, _ = clipped_policy_loss(
        logprobs, torch.zeros(1, 4), t([[1.0, -1.0, 0.5, -2.0]]), clip_coef=(0.2, 0.6)
    )
    assert loss[0, 0].item() == pytest.approx(-1.5, abs=1e-6)


def test_kl_k3_hand_values():
    # d = log pi_ref - log pi: k3(ln 2) = 2 - ln 2 - 1 = 1 - ln 2; k3(-ln 2) = 1/2 + ln 2 - 1; k3(0) = 0
    kl = kl_k3(torch.zeros(3), t([LN2, -LN2, 0.0]))
    torch.testing.assert_close(kl, t([1 - LN2, LN2 - 0.5, 0.0]), atol=1e-6, rtol=0.0)


def test_entropy_from_logits():
    # uniform over 4: ln 4; a certain token: 0; [ln 1, ln 3] -> p = (1/4, 3/4): -(1/4 ln 1/4 + 3/4 ln 3/4)
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, -1e9, -1e9, -1e9]]])
    torch.testing.assert_close(entropy_from_logits(logits), t([[math.log(4.0), 0.0]]), atol=1e-6, rtol=0.0)
    two = entropy_from_logits(torch.tensor([[0.0, math.log(3.0)]]))
    assert two.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


def test_masked_mean_ignores_masked_entries_and_an_empty_mask():
    assert masked_mean(t([1.0, 3.0, 100.0]), t([1, 1, 0])).item() == 2.0
    assert masked_mean(t([1.0]), t([0])).item() == 0.0


# One episode of three tokens, the third outside the loss mask (an observation token with garbage everywhere).
LOGPROBS = torch.log(t([[1.5, 0.9, 2.0]]))  # ratios 1.5, 0.9 (old log-probs 0)
ADVANTAGES = t([[1.0, -2.0, 5.0]])
MASK = t([[1, 1, 0]])
VALUES, OLD_VALUES, RETURNS = t([[0.5, 0.0, 9.0]]), t([[0.5, 0.5, 0.0]]), t([[1.5, 0.0, 0.0]])
ENTROPY = t([[0.7, 0.3, 5.0]])
REF = LOGPROBS + t([[LN2, 0.0, 9.0]])  # log pi_ref - log pi = ln 2, 0
# Hand numbers, clip 0.2, token_count 2:
#   policy: token 0 max(-1.5, -1.2) = -1.2; token 1 (r 0.9 inside the range) max(1.8, 1.8) = 1.8;
#           sum 0.6 / 2 = 0.3
#   value (clip 0.2): token 0 (0.5 - 1.5)^2 = 1, V_clip = 0.5 -> 1;  token 1: 0, V_clip = 0.5 - 0.2 = 0.3 -> 0.09;
#           0.5 * (1 + 0.09) / 2 = 0.2725, clip fraction 1 / 2
#   entropy: (0.7 + 0.3) / 2 = 0.5
#   kl: plain k3 (1 - ln 2 + 0) / 2; ratio-weighted (1.5 (1 - ln 2) + 0.9 * 0) / 2
PG, V, ENT = 0.3, 0.2725, 0.5
KL_PLAIN, KL_WEIGHTED = (1 - LN2) / 2, 1.5 * (1 - LN2) / 2


def objective(**kwargs):
    return ppo_objective(
        LOGPROBS,
        torch.zeros(1, 3),
        ADVANTAGES,
        MASK,
        VALUES,
        OLD_VALUES,
        RETURNS,
        MASK,
        token_count=2.0,
        clip_coef=0.2,
        clip_coef_value=0.2,
        entropy=ENTROPY,
        **kwargs,
    )


def test_ppo_objective_hand_numbers_and_logged_terms():
    loss, metrics = objective(
        vf_coef=0.5, ent_coef=0.1, kl_coef=0.2, ref_logprobs=REF, kl_ratio_weighted=False
    )
    # 0.3 + 0.5 * 0.2725 - 0.1 * 0.5 + 0.2 * (1 - ln 2) / 2 = 0.38625 + 0.1 * (1 - ln 2)
    expected = PG + 0.5 * V - 0.1 * ENT + 0.2 * KL_PLAIN
    assert expected == pytest.approx(0.38625 + 0.1 * (1 - LN2), abs=1e-9)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the logged terms are the ones in the loss
    assert metrics["ppo/policy_loss"].item() == pytest.approx(PG, abs=1e-6)
    assert metrics["ppo/value_loss"].item() == pytest.approx(V, abs=1e-6)
    assert metrics["ppo/value_clipfrac"].item() == pytest.approx(0.5, abs=1e-6)
    assert metrics["ppo/entropy"].item() == pytest.approx(ENT, abs=1e-6)
    assert metrics["kl"].item() == pytest.approx(KL_PLAIN, abs=1e-6)
    # CleanRL's approx_kl: ((r - 1) - ln r) averaged: (0.5 - ln 1.5 + (-0.1 - ln 0.9)) / 2
    approx = (0.5 - math.log(1.5) + (-0.1 - math.log(0.9))) / 2
    assert metrics["ppo/approx_kl"].item() == pytest.approx(approx, abs=1e-6)
    assert metrics["ppo/ratio_mean"].item() == pytest.approx(1.2, abs=1e-6)
    assert metrics["ppo/ratio_max_deviation"].item() == pytest.approx(0.5, abs=1e-6)
    assert metrics["clip_ratio/high_mean"].item() == 0.5 and metrics["clip_ratio/low_mean"].item() == 0.0


def test_ppo_objective_ratio_weighted_kl_and_no_kl():
    loss, metrics = objective(vf_coef=0.5, ent_coef=0.1, kl_coef=0.2, ref_logprobs=REF)
    assert loss.item() == pytest.approx(PG + 0.5 * V - 0.1 * ENT + 0.2 * KL_WEIGHTED, abs=1e-6)
    loss, metrics = objective(vf_coef=1.0)
    assert loss.item() == pytest.approx(PG + V, abs=1e-6)
    assert "kl" not in metrics


def test_ppo_objective_gradient_reaches_unclipped_tokens_only():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss, _ = ppo_objective(
        logprobs, torch.zeros(1, 3), ADVANTAGES, MASK, VALUES, OLD_VALUES, RETURNS, MASK, token_count=2.0
    )
    (grad,) = torch.autograd.grad(loss, logprobs)
    # token 0 is clipped: 0; token 1: d/dlogp (-A r / 2) = -(-2) * 0.9 / 2 = 0.9; token 2 off the mask: 0
    torch.testing.assert_close(grad, t([[0.0, 0.9, 0.0]]), atol=1e-6, rtol=0.0)


def test_ratio_one_gives_the_plain_policy_gradient_loss():
    # pi == pi_old: ratio 1 everywhere, nothing clipped: pg = -(1 - 2) / 2 = 0.5
    loss, metrics = ppo_objective(
        torch.zeros(1, 3), torch.zeros(1, 3), ADVANTAGES, MASK, VALUES, VALUES, VALUES, MASK, token_count=2.0
    )
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    assert metrics["ppo/ratio_max_deviation"].item() == 0.0 and metrics["ppo/approx_kl"].item() == 0.0
