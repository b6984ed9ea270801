"""GiGPO (rlft/algorithms/gigpo.py): step-group advantages against numbers worked out by hand, the registry
entry, and a tiny end-to-end run through TRL's GRPOTrainer with per-token advantages."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlft import stages
from rlft.algorithms import registry
from rlft.algorithms.gigpo import GiGPOConfig, GiGPOTrainer, whole_groups
from rlft.config.sections import ALGORITHMS
from rlft.core.advantages import discounted_turn_returns, step_group_advantages
from rlft.core.batch import RolloutBatch
from rlft.core.episode import Episode
from rlft.errors import ConfigError
from rlft.runtime.tracking import read_metrics
from rlft.stages.rl import rl_trainer_args
from tests.conftest import tiny_config


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- pure functions
def test_discounted_turn_returns_by_hand():
    # G_2 = 1; G_1 = 0 + 0.5 * 1 = 0.5; G_0 = 0 + 0.5 * 0.5 = 0.25; gamma 1 sums the rest of the episode
    assert discounted_turn_returns([0.0, 0.0, 1.0], gamma=0.5) == [0.25, 0.5, 1.0]
    assert discounted_turn_returns([-1.0, 2.0, 0.5], gamma=1.0) == [1.5, 2.5, 0.5]
    assert discounted_turn_returns([], gamma=0.9) == []


def test_step_groups_compare_turns_from_the_same_state_and_singletons_get_zero():
    # "s0" is reached three times (twice by episode 0): returns 0.25, 1.0 and 0.0, mean 5/12.
    # "s1" and "s2" are reached once each: nothing to compare with, advantage 0. Episode 2 is left out ([]).
    anchors = [["s0", "s1", "s0"], ["s0", "s2"], []]
    returns = [[0.25, 0.5, 1.0], [0.0, 0.0], []]
    got = step_group_advantages(anchors, returns)
    mean = 1.25 / 3
    expected = [[0.25 - mean, 0.0, 1.0 - mean], [0.0 - mean, 0.0], []]
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-12)


def test_step_advantages_divided_by_the_step_groups_unbiased_std():
    # [0.25, 1.0, 0.0]: deviations -1/6, 7/12, -5/12; squares sum 0.541666..; / 2 -> std sqrt(0.2708333..)
    std = math.sqrt((1 / 36 + 49 / 144 + 25 / 144) / 2)
    got = step_group_advantages([["s0", "s1", "s0"], ["s0", "s2"]], [[0.25, 0.5, 1.0], [0.0, 0.0]], True, 0.0)
    assert got[0] == pytest.approx([-1 / 6 / std, 0.0, 7 / 12 / std], abs=1e-9)
    assert got[1] == pytest.approx([-5 / 12 / std, 0.0], abs=1e-9)
    # Equal returns in a step group: 0, not a division by zero.
    assert step_group_advantages([["s"], ["s"]], [[1.0], [1.0]], True) == [[0.0], [0.0]]


# ---------------------------------------------------------------------------------------------- the batch
def group_of_three(seed: int = 7) -> list[Episode]:
    """One task played three times.

    row 0: a a | o | a | o o | a   turns from s0, s1, s0 (back where it started), env rewards 0, 0, 1
    row 1: a | o | a a             turns from s0, s2, rewards 0, 0
    row 2: failed at turn 1 (its reward 5 must not count anywhere)
    """
    return [
        Episode(
            seed=seed,
            prompt_ids=[1],
            completion_ids=[10, 11, 20, 12, 21, 22, 13],
            mask=[1, 1, 0, 1, 0, 0, 1],
            logprobs=[-0.1, -0.1, 0.0, -0.1, 0.0, 0.0, -0.1],
            action_ends=[1, 3, 6],
            rewards={"env": [0.0, 0.0, 1.0]},
            first_observation="s0",
            observations=["s1", "s0"],
            terminated=True,
            success=True,
        ),
        Episode(
            seed=seed,
            prompt_ids=[1],
            completion_ids=[10, 20, 12, 13],
            mask=[1, 0, 1, 1],
            logprobs=[-0.1, 0.0, -0.1, -0.1],
            action_ends=[0, 3],
            rewards={"env": [0.0, 0.0]},
            first_observation="s0",
            observations=["s2"],
            terminated=True,
        ),
        Episode(
            seed=seed,
            prompt_ids=[1],
            completion_ids=[10],
            mask=[1],
            logprobs=[-0.1],
            action_ends=[0],
            rewards={"env": [5.0]},
            first_observation="s0",
            failure="env.step raised ValueError('boom') on turn 1",
        ),
    ]


def test_gigpo_advantages_by_hand_on_each_actions_tokens():
    """A = A_episode + omega * A_step on every token of the action, 0 on observations, padding, failed rows."""
    batch = RolloutBatch.from_episodes(group_of_three())
    # gamma 0.5: row 0's returns are 0.25, 0.5, 1.0; row 1's 0, 0. Step group s0: mean 5/12 (see above).
    episode = torch.tensor([1.0, -1.0, float("nan")])  # TRL's advantage of a failed row may be anything
    advantages, step = batch.gigpo_advantages(episode, group_size=3, gamma=0.5, step_weight=0.5)
    a0, a2, b0 = 0.25 - 5 / 12, 1.0 - 5 / 12, 0.0 - 5 / 12
    expected_step = t([[a0, a0, 0, 0, 0, 0, a2], [b0, 0, 0, 0, 0, 0, 0], [0] * 7])
    torch.testing.assert_close(step, expected_step)
    expected = t(
        [
            [
                1 + 0.5 * a0,
                1 + 0.5 * a0,
                0,
                1.0,
                0,
                0,
                1 + 0.5 * a2,
            ],  # turn 1 (from s1, alone): A_episode only
            [-1 + 0.5 * b0, 0, -1.0, -1.0, 0, 0, 0],  # turn 1 from s2 is alone too; columns 4-6 are padding
            [0] * 7,
        ]
    )
    torch.testing.assert_close(advantages, expected)
    assert batch.advantages is advantages


def test_gigpo_with_grpo_group_advantages_and_step_weight_zero_is_grpo():
    batch = RolloutBatch.from_episodes(group_of_three())
    episode = batch.group_advantages(3)  # rows 0 and 1: returns 1 and 0 -> +-0.7071 (failed row left out)
    advantages, _ = batch.gigpo_advantages(episode, group_size=3, gamma=0.5, step_weight=0.0)
    torch.testing.assert_close(advantages, episode.unsqueeze(1) * batch.env_mask)
    assert advantages[0, 0].item() == pytest.approx(1 / math.sqrt(2) / (1 + 1e-4 * math.sqrt(2)), rel=1e-5)


def test_step_groups_do_not_cross_tasks():
    # The same observation text in two groups (two seeds) is two step groups: each a singleton here, so 0.
    episodes = group_of_three(seed=1)[:1] + group_of_three(seed=2)[:1]
    batch = RolloutBatch.from_episodes(episodes)
    step = batch.step_advantages(group_size=1, gamma=0.5)
    # Within row 0 s0 still repeats (turns 0 and 2): returns 0.25 and 1.0 around their mean 0.625.
    torch.testing.assert_close(step[0], t([-0.375, -0.375, 0, 0, 0, 0, 0.375]))
    torch.testing.assert_close(step[1], step[0])


def test_split_groups_are_refused_with_the_fix_named():
    batch = RolloutBatch.from_episodes(group_of_three() + group_of_three(seed=8)[:1])
    with pytest.raises(ValueError, match="do not split into whole groups of 2"):
        batch.group_slices(2)
    with pytest.raises(ConfigError, match="gigpo needs whole groups.*multiple of num_generations \\(3\\)"):
        whole_groups(batch, 3, "rl.algorithm: gigpo")
    assert whole_groups(RolloutBatch.from_episodes(group_of_three()), 3, "x") == [slice(0, 3)]


# ---------------------------------------------------------------------------------------------- registry, config
def test_gigpo_is_registered_and_its_keys_reach_its_config(tmp_path):
    assert "gigpo" in ALGORITHMS and registry.get_algorithm("gigpo").config_class is GiGPOConfig
    config = tiny_config(
        output_dir=str(tmp_path),
        rl={"algorithm": "gigpo", "trainer": {"gamma": 0.8, "step_advantage_weight": 0.5}},
    )
    args = rl_trainer_args(config)
    assert type(args) is GiGPOConfig and (args.gamma, args.step_advantage_weight) == (0.8, 0.5)
    assert args.step_scale_by_std is False and args.num_generations == 8
    with pytest.raises(ValueError, match="gamma = 1.5"):
        GiGPOConfig(output_dir=str(tmp_path), gamma=1.5)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def gigpo_run(tmp_path_factory):
    """run_rl with GiGPO for 2 optimizer steps on CliffWalking (an unparsable action costs 0.5, so returns
    differ from the first step), capturing the trainer, its parameters before training and each scoring."""
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(tmp_path_factory.mktemp("gigpo")),
        name="gigpo",
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 6},
        rl={
            "algorithm": "gigpo",
            "init_from": "base",
            "trainer": {
                "per_device_train_batch_size": 8,
                "num_generations": 4,
                "learning_rate": 1e-2,
                "max_steps": 2,
                "gamma": 0.9,
            },
        },
        rollout={"num_envs": 8},
    )
    captured: dict = {"scored": []}
    entry = registry.ALGORITHMS["gigpo"]

    def capturing_build(*args, **kwargs):
        trainer, rollout = entry.build(*args, **kwargs)
        captured["trainer"] = trainer
        captured["before"] = {
            n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad
        }
        return trainer, rollout

    original = GiGPOTrainer.score_generation_batch

    def capturing_score(self, inputs):
        scored = original(self, inputs)
        captured["scored"].append((self.rollout_batch, {k: v for k, v in scored.items()}))
        return scored

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry.ALGORITHMS, "gigpo", dataclasses.replace(entry, build=capturing_build))
        mp.setattr(GiGPOTrainer, "score_generation_batch", capturing_score)
        stages.run_rl(config)
    return {"config": config, **captured}


def test_trl_trains_on_per_token_gigpo_advantages(gigpo_run):
    assert len(gigpo_run["scored"]) == 2  # one rollout per optimizer step
    # Every episode of a group starts from the same map: step credit on the first turns at least.
    assert any(batch.step_advantages(4, gamma=0.9).abs().sum() > 0 for batch, _ in gigpo_run["scored"])
    for batch, scored in gigpo_run["scored"]:
        advantages = scored["advantages"]
        assert advantages.shape == batch.completion_ids.shape  # (B, T), as TRL's loss accepts
        # The episode-level part is GRPO's group advantage (TRL's, scale_rewards "group"): A - w * A_step.
        step = batch.step_advantages(4, gamma=0.9)
        episode = batch.group_advantages(4).unsqueeze(1) * batch.env_mask
        torch.testing.assert_close(advantages, episode + step, atol=1e-5, rtol=0.0)
    rows = [r for r in read_metrics(gigpo_run["config"].run_dir) if r["stage"] == "rl"]
    assert any("gigpo/step_credit_token_share" in r for r in rows)


def test_every_trainable_parameter_changes(gigpo_run):
    model = gigpo_run["trainer"].model
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert after.keys() == gigpo_run["before"].keys() and after
    unchanged = [n for n in after if torch.equal(after[n], gigpo_run["before"][n])]
    assert unchanged == []
