"""Exact-math tests of PPO's pieces against numbers worked out by hand (in the manner of SB3's tests/test_gae.py).

Every expected number below is written out from the literal inputs, step by step in the comments; nothing is
recomputed by a second implementation. Recursion used (rlft/core/advantages.py), over model tokens only:

    delta_t = r_t + gamma * V_next - V_t,   A_t = delta_t + gamma * lam * A_next,   R_t = A_t + V_t
"""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algorithms.kl_control import AdaptiveKLController, FixedKLController, kl_controller
from rlft.core.advantages import action_starts, explained_variance, masked_whiten, token_gae, turn_gae
from rlft.core.losses import clipped_value_loss

ATOL = 1e-6


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, t(expected), atol=ATOL, rtol=0.0)


# ---------------------------------------------------------------------------------------------- token GAE


def test_constant_critic_gamma_lam_one_gives_reward_to_go():
    # gamma = lam = 1, V = 0.5 everywhere, rewards 1, 0, 2, terminated (bootstrap 0):
    # A_t = (sum of rewards from t on) - 0.5, R_t = reward-to-go.
    #   R = [1 + 0 + 2, 0 + 2, 2] = [3, 2, 2]; A = R - 0.5 = [2.5, 1.5, 1.5]
    adv, ret = token_gae(
        t([[1.0, 0.0, 2.0]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]]), t([0.0]), gamma=1.0, lam=1.0
    )
    close(adv, [[2.5, 1.5, 1.5]])
    close(ret, [[3.0, 2.0, 2.0]])


def test_constant_critic_terminated_gamma_lam_below_one():
    # V = c = 0.5 everywhere, rewards [0, 0, 1], gamma 0.9, lam 0.8 (gamma * lam = 0.72), terminated.
    #   t=2: delta = 1 + 0.9 * 0 - 0.5 = 0.5                A2 = 0.5
    #   t=1: delta = 0 + 0.9 * 0.5 - 0.5 = -0.05            A1 = -0.05 + 0.72 * 0.5  = 0.31
    #   t=0: delta = 0 + 0.9 * 0.5 - 0.5 = -0.05            A0 = -0.05 + 0.72 * 0.31 = 0.1732
    #   R = A + 0.5 = [0.6732, 0.81, 1.0]
    adv, ret = token_gae(
        t([[0.0, 0.0, 1.0]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]]), t([0.0]), gamma=0.9, lam=0.8
    )
    close(adv, [[0.1732, 0.31, 0.5]])
    close(ret, [[0.6732, 0.81, 1.0]])


def test_truncation_bootstraps_from_the_final_value():
    # The same episode truncated with bootstrap b = 2.0: only the last delta changes, by gamma * b = 1.8.
    #   t=2: delta = 1 + 0.9 * 2.0 - 0.5 = 2.3              A2 = 2.3
    #   t=1: delta = -0.05                                   A1 = -0.05 + 0.72 * 2.3    = 1.606
    #   t=0: delta = -0.05                                   A0 = -0.05 + 0.72 * 1.606  = 1.10632
    rewards, values, mask = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]])
    adv_b, ret_b = token_gae(rewards, values, mask, t([2.0]), gamma=0.9, lam=0.8)
    adv_0, ret_0 = token_gae(rewards, values, mask, t([0.0]), gamma=0.9, lam=0.8)
    close(adv_b, [[1.10632, 1.606, 2.3]])
    close(ret_b, [[1.60632, 2.106, 2.8]])
    # Truncated minus terminated: gamma * b * (gamma * lam)^k, k tokens back from the last one:
    #   [1.8 * 0.72^2, 1.8 * 0.72, 1.8] = [0.93312, 1.296, 1.8]
    close(adv_b - adv_0, [[0.93312, 1.296, 1.8]])
    close(ret_b - ret_0, [[0.93312, 1.296, 1.8]])


def test_env_tokens_and_padding_are_skipped():
    # Layout: a a o o a p p (a: model token, o: observation token, p: right padding).
    # The critic's values and any rewards at o / p are garbage (9.0, 5.0): they must never be read.
    mask = t([[1, 1, 0, 0, 1, 0, 0]])
    values = t([[0.2, 0.4, 9.0, 9.0, 0.1, 9.0, 9.0]])
    rewards = t([[0.0, 1.0, 5.0, 5.0, 2.0, 5.0, 5.0]])
    # Model tokens alone: r = [0, 1, 2], V = [0.2, 0.4, 0.1], gamma 0.9, lam 0.8, terminated.
    #   last:   delta = 2 - 0.1 = 1.9                       A = 1.9
    #   second: delta = 1 + 0.9 * 0.1 - 0.4 = 0.69          A = 0.69 + 0.72 * 1.9   = 2.058
    #   first:  delta = 0 + 0.9 * 0.4 - 0.2 = 0.16          A = 0.16 + 0.72 * 2.058 = 1.64176
    #   R = A + V = [1.84176, 2.458, 2.0]
    adv, ret = token_gae(rewards, values, mask, t([0.0]), gamma=0.9, lam=0.8)
    close(adv, [[1.64176, 2.058, 0.0, 0.0, 1.9, 0.0, 0.0]])
    close(ret, [[1.84176, 2.458, 0.0, 0.0, 2.0, 0.0, 0.0]])
    # ... which is the episode with the env tokens removed.
    adv_c, ret_c = token_gae(
        t([[0.0, 1.0, 2.0]]), t([[0.2, 0.4, 0.1]]), t([[1, 1, 1]]), t([0.0]), gamma=0.9, lam=0.8
    )
    close(adv[:, [0, 1, 4]], adv_c.tolist())
    close(ret[:, [0, 1, 4]], ret_c.tolist())


def test_bootstrap_jumps_over_trailing_padding():
    # The bootstrap follows the last model token even when padding comes after it: a a p p, b = 1.0,
    # V = [0.5, 0.5], r = 0, gamma = lam = 1: A_last = 0 + 1.0 - 0.5 = 0.5, A_first = 0 + 0.5 - 0.5 + 0.5 = 0.5.
    adv, ret = token_gae(
        t([[0.0, 0.0, 0.0, 0.0]]), t([[0.5, 0.5, 7.0, 7.0]]), t([[1, 1, 0, 0]]), t([1.0]), gamma=1.0, lam=1.0
    )
    close(adv, [[0.5, 0.5, 0.0, 0.0]])
    close(ret, [[1.0, 1.0, 0.0, 0.0]])


# Three actions of two tokens, one observation token between them; rewards 1, 0, 2 on each action's last token.
#   position: 0  1  2  3  4  5  6  7
#   token:    a1 a1 o  a2 a2 o  a3 a3
MULTI_MASK = [[1, 1, 0, 1, 1, 0, 1, 1]]
MULTI_REWARDS = [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]
MULTI_VALUES = [[0.5, 0.4, 8.0, 0.3, 0.2, 8.0, 0.1, 0.6]]
# gamma 0.9, lam 0.8 (gamma * lam = 0.72), terminated; model tokens in order r = [0, 1, 0, 0, 0, 2],
# V = [0.5, 0.4, 0.3, 0.2, 0.1, 0.6]:
#   pos 7: delta = 2 - 0.6 = 1.4                      A = 1.4
#   pos 6: delta = 0 + 0.9 * 0.6 - 0.1 = 0.44         A = 0.44 + 0.72 * 1.4       = 1.448
#   pos 4: delta = 0 + 0.9 * 0.1 - 0.2 = -0.11        A = -0.11 + 0.72 * 1.448    = 0.93256
#   pos 3: delta = 0 + 0.9 * 0.2 - 0.3 = -0.12        A = -0.12 + 0.72 * 0.93256  = 0.5514432
#   pos 1: delta = 1 + 0.9 * 0.3 - 0.4 = 0.87         A = 0.87 + 0.72 * 0.5514432 = 1.267039104
#   pos 0: delta = 0 + 0.9 * 0.4 - 0.5 = -0.14        A = -0.14 + 0.72 * 1.267039104 = 0.77226815488
MULTI_ADV = [[0.77226815488, 1.267039104, 0.0, 0.5514432, 0.93256, 0.0, 1.448, 1.4]]
# R = A + V
MULTI_RET = [[1.27226815488, 1.667039104, 0.0, 0.8514432, 1.13256, 0.0, 1.548, 2.0]]


def test_several_turns_rewards_on_each_action_end():
    adv, ret = token_gae(t(MULTI_REWARDS), t(MULTI_VALUES), t(MULTI_MASK), t([0.0]), gamma=0.9, lam=0.8)
    close(adv, MULTI_ADV)
    close(ret, MULTI_RET)


def test_batch_rows_of_different_lengths_equal_each_row_alone():
    # Row 0: the multi-turn episode (8 tokens). Row 1: a a o a, then 4 tokens of right padding, truncated (b = 1.5).
    row1_mask = [1, 1, 0, 1, 0, 0, 0, 0]
    row1_rewards = [0.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    row1_values = [0.7, -0.2, 4.0, 1.0, 4.0, 4.0, 4.0, 4.0]
    rewards = t([MULTI_REWARDS[0], row1_rewards])
    values = t([MULTI_VALUES[0], row1_values])
    mask = t([MULTI_MASK[0], row1_mask])
    adv, ret = token_gae(rewards, values, mask, t([0.0, 1.5]), gamma=0.9, lam=0.8)
    close(adv[:1], MULTI_ADV)
    close(ret[:1], MULTI_RET)
    # Row 1 alone, by hand (r = [0, -1, 3], V = [0.7, -0.2, 1.0], b = 1.5):
    #   pos 3: delta = 3 + 0.9 * 1.5 - 1.0 = 3.35                A = 3.35
    #   pos 1: delta = -1 + 0.9 * 1.0 + 0.2 = 0.1                A = 0.1 + 0.72 * 3.35  = 2.512
    #   pos 0: delta = 0 + 0.9 * -0.2 - 0.7 = -0.88              A = -0.88 + 0.72 * 2.512 = 0.92864
    close(adv[1:], [[0.92864, 2.512, 0.0, 3.35, 0.0, 0.0, 0.0, 0.0]])
    close(ret[1:], [[1.62864, 2.312, 0.0, 4.35, 0.0, 0.0, 0.0, 0.0]])
    # and the same as computing the row on its own at its own width
    adv_1, ret_1 = token_gae(
        t([row1_rewards[:4]]), t([row1_values[:4]]), t([row1_mask[:4]]), t([1.5]), 0.9, 0.8
    )
    close(adv[1:, :4], adv_1.tolist())
    close(ret[1:, :4], ret_1.tolist())


# ----------------------------------------------------------------------------------------------- turn GAE


def test_action_starts_marks_first_token_of_each_action():
    mask = t([[1, 1, 0, 1, 1, 1, 0], [0, 1, 0, 0, 1, 0, 0]])
    assert action_starts(mask).int().tolist() == [[1, 0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0, 0]]


def test_turn_gae_sums_action_rewards_reads_first_token_values_and_spreads_the_advantage():
    # Layout: a1 a1 o a2 a2 a2 p. A KL penalty of -0.1 on every model token plus the env reward on each
    # action's last token (1 for action 1, 2 for action 2). Values only count at first tokens (0.5 and 0.2);
    # the 9.0s elsewhere must not be read. The observation token's 5.0 reward is not a model token's.
    mask = t([[1, 1, 0, 1, 1, 1, 0]])
    rewards = t([[-0.1, -0.1 + 1.0, 5.0, -0.1, -0.1, -0.1 + 2.0, 0.0]])
    values = t([[0.5, 9.0, 9.0, 0.2, 9.0, 9.0, 9.0]])
    # Turn rewards: action 1: -0.1 + 0.9 = 0.8; action 2: -0.1 - 0.1 + 1.9 = 1.7. gamma 0.9, lam 0.8:
    #   turn 2: delta = 1.7 - 0.2 = 1.5                       A = 1.5,                        R = 1.5 + 0.2 = 1.7
    #   turn 1: delta = 0.8 + 0.9 * 0.2 - 0.5 = 0.48          A = 0.48 + 0.72 * 1.5 = 1.56,  R = 1.56 + 0.5 = 2.06
    adv, ret, starts = turn_gae(rewards, values, mask, t([0.0]), gamma=0.9, lam=0.8)
    close(adv, [[1.56, 1.56, 0.0, 1.5, 1.5, 1.5, 0.0]])
    close(ret, [[2.06, 0.0, 0.0, 1.7, 0.0, 0.0, 0.0]])
    assert starts.tolist() == [[True, False, False, True, False, False, False]]

    # Truncated with bootstrap 1.0: turn 2's delta grows by gamma * 1.0 = 0.9, turn 1's advantage by 0.9 * 0.72.
    #   turn 2: A = 1.5 + 0.9 = 2.4;  turn 1: A = 0.48 + 0.72 * 2.4 = 2.208
    adv_b, ret_b, _ = turn_gae(rewards, values, mask, t([1.0]), gamma=0.9, lam=0.8)
    close(adv_b, [[2.208, 2.208, 0.0, 2.4, 2.4, 2.4, 0.0]])
    close(ret_b, [[2.708, 0.0, 0.0, 2.6, 0.0, 0.0, 0.0]])


def test_turn_gae_batch_rows_are_independent():
    # Row 0 is the case above; row 1 (a a o a p p p) has its own turns: r = [0, 1 | 2], V at starts = [1.0, 0.5].
    #   turn 2: A = 2 - 0.5 = 1.5;  turn 1: delta = 1 + 0.9 * 0.5 - 1.0 = 0.45, A = 0.45 + 0.72 * 1.5 = 1.53
    mask = t([[1, 1, 0, 1, 1, 1, 0], [1, 1, 0, 1, 0, 0, 0]])
    rewards = t([[-0.1, 0.9, 0.0, -0.1, -0.1, 1.9, 0.0], [0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0]])
    values = t([[0.5, 9.0, 9.0, 0.2, 9.0, 9.0, 9.0], [1.0, 3.0, 3.0, 0.5, 3.0, 3.0, 3.0]])
    adv, ret, starts = turn_gae(rewards, values, mask, t([0.0, 0.0]), gamma=0.9, lam=0.8)
    close(adv, [[1.56, 1.56, 0.0, 1.5, 1.5, 1.5, 0.0], [1.53, 1.53, 0.0, 1.5, 0.0, 0.0, 0.0]])
    close(ret, [[2.06, 0.0, 0.0, 1.7, 0.0, 0.0, 0.0], [2.53, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0]])
    assert starts.int().tolist() == [[1, 0, 0, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0]]


# ------------------------------------------------------------------------------------- clipped value loss

# Four tokens in the mask and a fifth (garbage) outside it; clip 0.2.
#   token  V     V_old  R      (V-R)^2   V_clip = V_old + clamp(V - V_old, +-0.2)   (V_clip-R)^2   max
#   a      1.0   0.5    2.0    1.0       0.5 + 0.2 = 0.7                             1.69           1.69 (clipped)
#   b      0.5   0.4    0.0    0.25      0.4 + 0.1 = 0.5                             0.25           0.25
#   c     -0.4   0.0   -1.0    0.36      0.0 - 0.2 = -0.2                            0.64           0.64 (clipped)
#   d      2.0   0.0    0.1    3.61      0.0 + 0.2 = 0.2                             0.01           3.61
VALUES = [[1.0, 0.5, -0.4, 2.0, 100.0]]
OLD_VALUES = [[0.5, 0.4, 0.0, 0.0, 0.0]]
RETURNS = [[2.0, 0.0, -1.0, 0.1, -100.0]]
VALUE_MASK = [[1, 1, 1, 1, 0]]


def test_clipped_value_loss_hand_numbers():
    values = t(VALUES).requires_grad_(True)
    loss, fraction = clipped_value_loss(values, t(OLD_VALUES), t(RETURNS), t(VALUE_MASK), clip=0.2)
    # 0.5 * (1.69 + 0.25 + 0.64 + 3.61) / 4 = 0.5 * 6.19 / 4 = 0.77375; clipped term larger on a and c: 2 / 4
    assert loss.item() == pytest.approx(0.77375, abs=ATOL)
    assert fraction.item() == pytest.approx(0.5, abs=ATOL)
    loss.backward()
    # Where the clipped term wins and V is outside the clip range, the gradient is 0 (a, c); elsewhere it is
    # d/dV 0.5 * (V - R)^2 / 4 = (V - R) / 4: b: 0.5 / 4 = 0.125, d: 1.9 / 4 = 0.475; the masked token: 0.
    close(values.grad, [[0.0, 0.125, 0.0, 0.475, 0.0]])


def test_value_loss_without_clipping():
    values = t(VALUES).requires_grad_(True)
    loss, fraction = clipped_value_loss(values, t(OLD_VALUES), t(RETURNS), t(VALUE_MASK), clip=None)
    # 0.5 * (1.0 + 0.25 + 0.36 + 3.61) / 4 = 0.5 * 5.22 / 4 = 0.6525
    assert loss.item() == pytest.approx(0.6525, abs=ATOL)
    assert fraction.item() == 0.0
    loss.backward()
    # (V - R) / 4 = [-1.0, 0.5, 0.6, 1.9] / 4
    close(values.grad, [[-0.25, 0.125, 0.15, 0.475, 0.0]])


# ------------------------------------------------------------------------------------ whitening, KL, EV


def test_masked_whiten_uses_masked_entries_only():
    x = t([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = t([[1, 1, 0], [1, 1, 0]])
    out = masked_whiten(x, mask)
    # Masked entries 1, 2, 3, 4: mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    s = math.sqrt(1.25)
    close(out, [[-1.5 / s, -0.5 / s, 0.0], [0.5 / s, 1.5 / s, 0.0]])
    on = out[mask.bool()]
    assert on.mean().item() == pytest.approx(0.0, abs=ATOL)
    assert on.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # Statistics gathered elsewhere (e.g. over the whole rollout batch across processes) are used as given.
    close(
        masked_whiten(x, mask, mean=torch.tensor(1.0), std=torch.tensor(2.0)),
        [[0.0, 0.5, 0.0], [1.0, 1.5, 0.0]],
    )


def test_adaptive_kl_controller_updates_and_clips():
    c = AdaptiveKLController(0.1, target=0.02, horizon=100)
    # coef <- coef * (1 + clip(KL / 0.02 - 1, -0.2, 0.2) * 10 / 100)
    c.update(0.04, n_steps=10)  # error 1.0 -> clipped 0.2:  0.1 * 1.02 = 0.102
    assert c.value == pytest.approx(0.102, abs=1e-12)
    c.update(0.025, n_steps=10)  # error 0.25 -> clipped 0.2: 0.102 * 1.02 = 0.10404
    assert c.value == pytest.approx(0.10404, abs=1e-12)
    c.update(0.021, n_steps=10)  # error 0.05: 0.10404 * 1.005 = 0.1045602
    assert c.value == pytest.approx(0.1045602, abs=1e-12)
    c.update(0.0, n_steps=10)  # error -1.0 -> clipped -0.2: 0.1045602 * 0.98 = 0.102468996
    assert c.value == pytest.approx(0.102468996, abs=1e-12)
    c.update(0.019, n_steps=10)  # error -0.05: 0.102468996 * 0.995 = 0.10195665102
    assert c.value == pytest.approx(0.10195665102, abs=1e-12)
    restored = AdaptiveKLController(0.5, target=0.02, horizon=100)
    restored.load_state_dict(c.state_dict())
    assert restored.value == c.value


def test_fixed_kl_controller_stays_constant_and_factory_picks_by_target():
    c = FixedKLController(0.05)
    for kl in (0.0, 0.04, 10.0):
        c.update(kl, n_steps=100)
    assert c.value == 0.05
    assert type(kl_controller(0.05, None, 100)) is FixedKLController
    adaptive = kl_controller(0.05, 0.01, 100)
    assert isinstance(adaptive, AdaptiveKLController) and (adaptive.target, adaptive.horizon) == (0.01, 100)


def test_explained_variance():
    # target [1, 2, 3, 5]: mean 2.75, Var = (3.0625 + 0.5625 + 0.0625 + 5.0625) / 4 = 2.1875
    # residual target - predicted = [0, 0, 0, 1]: mean 0.25, Var = (3 * 0.0625 + 0.5625) / 4 = 0.1875
    # EV = 1 - 0.1875 / 2.1875 = 1 - 3 / 35 = 32 / 35
    target = t([1.0, 2.0, 3.0, 5.0])
    assert explained_variance(t([1.0, 2.0, 3.0, 4.0]), target) == pytest.approx(32 / 35, abs=ATOL)
    assert explained_variance(target, target) == pytest.approx(1.0, abs=ATOL)
    assert explained_variance(torch.zeros(4), target) == pytest.approx(0.0, abs=ATOL)  # residual = target
    assert math.isnan(explained_variance(t([1.0, 2.0]), t([3.0, 3.0])))
