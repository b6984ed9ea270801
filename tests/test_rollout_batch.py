"""RolloutBatch (rlft/core/batch.py): the padded layout of a generation batch, and the advantage computations it
owns (SB3's RolloutBuffer), against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.core.batch import RolloutBatch
from rlft.core.episode import Episode


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def two_episodes() -> list[Episode]:
    # row 0: a a o a, terminated, actions end at 1 and 3 with rewards 0 and 1 (env) + 0.5 (bonus on turn 1)
    # row 1: a o o a a, truncated, actions end at 0 and 4 with rewards -1 and 0.5; final observation 20 21
    return [
        Episode(
            seed=3,
            prompt_ids=[5, 6],
            completion_ids=[8, 9, 10, 11],
            mask=[1, 1, 0, 1],
            logprobs=[-0.5, -0.6, 0.0, -0.7],
            action_ends=[1, 3],
            rewards={"env": [0.0, 1.0], "bonus": [0.5, 0.0]},
            terminated=True,
            success=True,
            task_id="m0",
        ),
        Episode(
            seed=4,
            prompt_ids=[7],
            completion_ids=[12, 13, 14, 15, 16],
            mask=[1, 0, 0, 1, 1],
            logprobs=[-0.1, 0.0, 0.0, -0.2, -0.3],
            action_ends=[0, 4],
            rewards={"env": [-1.0, 0.5]},
            truncated=True,
            final_observation_ids=[20, 21],
            task_id="m1",
        ),
    ]


def test_layout_padding_masks_log_probs_and_rewards():
    batch = RolloutBatch.from_episodes(two_episodes(), pad_id=0)
    assert batch.prompt_ids.tolist() == [[5, 6], [0, 7]] and batch.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert batch.completion_ids.tolist() == [[8, 9, 10, 11, 0], [12, 13, 14, 15, 16]]
    assert batch.completion_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert batch.env_mask.tolist() == [[1, 1, 0, 1, 0], [1, 0, 0, 1, 1]]
    torch.testing.assert_close(batch.logprobs, t([[-0.5, -0.6, 0, -0.7, 0], [-0.1, 0, 0, -0.2, -0.3]]))
    # each turn's total on its action's last token: row 0 turn 1 = 0 + 0.5 at 1, turn 2 = 1 at 3
    torch.testing.assert_close(batch.rewards, t([[0, 0.5, 0, 1.0, 0], [-1.0, 0, 0, 0, 0.5]]))
    assert batch.component_returns == {"env": [1.0, -0.5], "bonus": [0.5]}
    assert batch.seeds == [3, 4] and batch.task_ids == ["m0", "m1"] and batch.truncated == [False, True]
    assert batch.values is None and batch.advantages is None  # until an algorithm computes them


def test_a_failed_episode_keeps_its_row_without_signal():
    episodes = two_episodes()
    episodes[0].failure = "env.step raised ValueError('boom') on turn 2"
    episodes.append(Episode(seed=5, prompt_ids=[], failure="env.reset raised ValueError('boom')"))
    batch = RolloutBatch.from_episodes(episodes, pad_id=0)
    assert (
        batch.env_mask[0].sum() == 0
        and batch.rewards[0].abs().sum() == 0
        and batch.logprobs[0].abs().sum() == 0
    )
    assert batch.prompt_ids[2].tolist() == [0, 0] and batch.completion_ids[2].tolist() == [0, 0, 0, 0, 0]
    assert batch.healthy == [False, True, False] and batch.truncated == [False, True, False]
    rollout = batch.to_trl_rollout()
    assert rollout["env_mask"][0] == [0, 0, 0, 0] and rollout["episode_return"] == [None, -0.5, None]


def test_nonfinite_reward_names_the_seed_and_ignores_failed_episodes():
    episodes = two_episodes()
    episodes[1].rewards["env"][1] = float("nan")
    assert (
        RolloutBatch.from_episodes(episodes).nonfinite_reward()
        == "non-finite reward in the episode of env seed 4"
    )
    episodes[1].failure = "hung"
    assert RolloutBatch.from_episodes(episodes).nonfinite_reward() is None


def test_critic_inputs_append_the_final_observation_and_split_back():
    batch = RolloutBatch.from_episodes(two_episodes(), pad_id=0)
    ids, att, index = batch.critic_inputs()
    assert ids.tolist() == [[5, 6, 8, 9, 10, 11, 0, 0, 0], [0, 7, 12, 13, 14, 15, 16, 20, 21]]
    assert att.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1, 1]]
    assert index.tolist() == [-1, 8]
    full = torch.arange(18, dtype=torch.float).view(2, 9)
    values, bootstrap = batch.split_critic_values(full, index)
    # V before completion token t sits at P - 1 + t = 1 + t; the bootstrap at the last observation token
    assert values.tolist() == [[1, 2, 3, 4, 5], [10, 11, 12, 13, 14]] and bootstrap.tolist() == [0.0, 17.0]


VALUES = t([[0.2, 0.4, 50.0, 0.1, 50.0], [0.5, 50.0, 50.0, 0.3, 0.6]])


def test_token_gae_through_the_batch():
    episodes = two_episodes()
    del episodes[0].rewards["bonus"]
    batch = RolloutBatch.from_episodes(episodes, pad_id=0)
    batch.compute_gae(VALUES, t([0.0, 2.0]), gamma=0.9, lam=0.8)
    # gamma * lam = 0.72, model tokens only:
    # row 0: pos 3: A = 1 - 0.1 = 0.9; pos 1: -0.31 + 0.72 * 0.9 = 0.338; pos 0: 0.16 + 0.72 * 0.338 = 0.40336
    # row 1: pos 4: 0.5 + 1.8 - 0.6 = 1.7; pos 3: 0.24 + 0.72 * 1.7 = 1.464; pos 0: -1.23 + 0.72 * 1.464 = -0.17592
    close = dict(atol=1e-6, rtol=0.0)
    torch.testing.assert_close(
        batch.advantages, t([[0.40336, 0.338, 0, 0.9, 0], [-0.17592, 0, 0, 1.464, 1.7]]), **close
    )
    torch.testing.assert_close(
        batch.returns, t([[0.60336, 0.738, 0, 1.0, 0], [0.32408, 0, 0, 1.764, 2.3]]), **close
    )
    assert batch.value_mask.tolist() == batch.env_mask.tolist() and batch.values is VALUES
    # whitening with given statistics: (A - 1) / 2 on model tokens, 0 elsewhere
    batch.whiten_advantages(torch.tensor(1.0), torch.tensor(2.0))
    assert batch.advantages[0].tolist() == pytest.approx(
        [(0.40336 - 1) / 2, (0.338 - 1) / 2, 0, -0.05, 0], abs=1e-6
    )


def test_turn_gae_and_kl_penalty_through_the_batch():
    episodes = two_episodes()
    del episodes[0].rewards["bonus"]
    batch = RolloutBatch.from_episodes(episodes, pad_id=0)
    # log pi_behaviour - log pi_ref = 1 on every model token; coefficient 0.1: every model token's reward -0.1
    per_token = batch.add_kl_penalty(batch.logprobs - 1.0, 0.1)
    torch.testing.assert_close(per_token, batch.env_mask.float(), atol=1e-6, rtol=0.0)
    batch.compute_gae(VALUES, t([0.0, 2.0]), gamma=0.9, lam=0.8, level="turn")
    # row 0: turns {0,1} (reward -0.2, V 0.2), {3} (reward 0.9, V 0.1), terminated:
    #   turn 2: A = 0.9 - 0.1 = 0.8; turn 1: delta = -0.2 + 0.09 - 0.2 = -0.31, A = -0.31 + 0.72 * 0.8 = 0.266
    # row 1: turns {0} (reward -1.1, V 0.5), {3,4} (reward 0.3, V 0.3), bootstrap 2:
    #   turn 2: A = 0.3 + 1.8 - 0.3 = 1.8; turn 1: delta = -1.1 + 0.27 - 0.5 = -1.33, A = -1.33 + 1.296 = -0.034
    torch.testing.assert_close(
        batch.advantages, t([[0.266, 0.266, 0, 0.8, 0], [-0.034, 0, 0, 1.8, 1.8]]), atol=1e-6, rtol=0.0
    )
    assert batch.value_mask.tolist() == [[1, 0, 0, 1, 0], [1, 0, 0, 1, 0]]
    with pytest.raises(ValueError, match="'episode'"):
        batch.compute_gae(VALUES, t([0.0, 2.0]), 0.9, 0.8, level="episode")


def test_group_advantages_hand_numbers_and_failed_episodes():
    def episode(seed, ret, failure=None):
        return Episode(
            seed=seed,
            prompt_ids=[1],
            completion_ids=[2],
            mask=[1],
            action_ends=[0],
            rewards={"env": [ret]},
            failure=failure,
        )

    # group A (seed 0): returns 1, 3 and a failed one: mean 2, unbiased std sqrt(2) -> -1/sqrt 2, +1/sqrt 2, 0
    # group B (seed 1): returns 0, 0, 6: mean 2, unbiased std sqrt((4 + 4 + 16) / 2) = 2 sqrt 3
    #   -> -2 / (2 sqrt 3), -2 / (2 sqrt 3), 4 / (2 sqrt 3)
    episodes = [
        episode(0, 1.0),
        episode(0, 3.0),
        episode(0, 9.0, failure="boom"),
        episode(1, 0.0),
        episode(1, 0.0),
        episode(1, 6.0),
    ]
    advantages = RolloutBatch.from_episodes(episodes).group_advantages(3, eps=0.0)
    r2, r3 = math.sqrt(2.0), math.sqrt(3.0)
    expected = [-1 / r2, 1 / r2, 0.0, -1 / r3, -1 / r3, 2 / r3]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-6)
    # with TRL's eps 1e-4 in the denominator the numbers move only slightly; a tied group gives 0, not NaN
    tied = RolloutBatch.from_episodes([episode(2, 1.0), episode(2, 1.0)]).group_advantages(2)
    assert tied.tolist() == [0.0, 0.0]
