"""The Episode record is token-exact: masks, behaviour log-probs and per-turn rewards (DESIGN.md invariants 1-2)."""

from __future__ import annotations

import pytest
import torch

from rlft.rollout.engine import RolloutEngine, SamplingSettings, play_one_at_a_time
from rlft.rollout.turn_format import PlainFormat
from rlft.stages.common import env_factory
from tests.conftest import tiny_config


def _engine(config, model, tokenizer, fmt=None, **settings) -> RolloutEngine:
    base = dict(max_turns=config.env.max_turns, max_action_tokens=3, temperature=1.0)
    return RolloutEngine(model, tokenizer, fmt or PlainFormat(tokenizer), env_factory(config),
                         SamplingSettings(**{**base, **settings}))


@pytest.fixture(scope="module")
def played(frozen_lake_policy):
    config, model, tokenizer = frozen_lake_policy
    engine = _engine(config, model, tokenizer)
    episodes = engine.play(list(range(24)), generator=torch.Generator().manual_seed(0), batch_size=16)
    return engine, episodes


def test_mask_is_one_exactly_on_sampled_tokens(played, frozen_lake_policy):
    """Rebuild every episode from its text: env tokens are exactly the format's observation segments."""
    engine, episodes = played
    fmt = engine.format
    sampled = 0
    for episode in episodes:
        assert len(episode.completion_ids) == len(episode.mask) == len(episode.logprobs)
        position = 0
        for turn, end in enumerate(episode.action_ends):
            if turn > 0:
                segment = fmt.observation_ids(episode.observations[turn - 1])
                assert episode.completion_ids[position:position + len(segment)] == segment
                assert episode.mask[position:position + len(segment)] == [0] * len(segment)
                position += len(segment)
            action = episode.completion_ids[position:end + 1]
            assert episode.mask[position:end + 1] == [1] * len(action)
            assert 1 <= len(action) <= 3
            # an action ends at a stop token or at the token limit, and nowhere earlier
            assert action[-1] in fmt.stop_ids or len(action) == 3
            assert not any(t in fmt.stop_ids for t in action[:-1])
            sampled += len(action)
            position = end + 1
        assert position == len(episode.completion_ids)  # nothing after the last action
        assert episode.prompt_ids == fmt.prompt_ids(
            engine._envs[0].unwrapped.instructions, episode.first_observation)
    assert sampled == sum(sum(e.mask) for e in episodes)


def test_behaviour_logprobs_equal_a_fresh_forward_pass(played, frozen_lake_policy):
    """Log-probs recorded while sampling (batched, padded, cached) == one unpadded forward of the same weights."""
    _, model, _ = frozen_lake_policy
    _, episodes = played
    worst = 0.0
    for episode in episodes:
        ids = torch.tensor([episode.prompt_ids + episode.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        completion_logp = logp[len(episode.prompt_ids) - 1:]
        mask = torch.tensor(episode.mask, dtype=torch.bool)
        recorded = torch.tensor(episode.logprobs)
        worst = max(worst, (completion_logp[mask] - recorded[mask]).abs().max().item())
        assert torch.all(recorded[~mask] == 0)
    assert worst < 1e-4


def test_temperature_scales_recorded_logprobs(frozen_lake_policy):
    config, model, tokenizer = frozen_lake_policy
    engine = _engine(config, model, tokenizer, temperature=0.7)
    (episode,) = engine.play([5], generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([episode.prompt_ids + episode.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float() / 0.7
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)[len(episode.prompt_ids) - 1:]
    mask = torch.tensor(episode.mask, dtype=torch.bool)
    assert torch.allclose(logp[mask], torch.tensor(episode.logprobs)[mask], atol=1e-4)


def test_per_turn_rewards_sit_on_each_actions_last_token():
    """CliffWalking pays -1 a step (-100 off the cliff, -0.5 here for an unparsable action): each action's
    last token carries exactly its turn's reward."""
    from rlft.models.policy import load_policy

    config = tiny_config("rlft/CliffWalking-v0", env={"kwargs": {"invalid_penalty": -0.5}})
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=8)
    engine = _engine(config, model, tokenizer, max_turns=5)
    episodes = engine.play(list(range(6)), generator=torch.Generator().manual_seed(0))
    for episode in episodes:
        token_rewards = episode.token_rewards()
        assert len(token_rewards) == len(episode.completion_ids)
        nonzero = [i for i, r in enumerate(token_rewards) if r != 0.0]
        assert nonzero == episode.action_ends  # every turn rewarded (-1 or -100), only there
        assert [token_rewards[i] for i in episode.action_ends] == episode.rewards["env"]
        assert all(r in (-0.5, -1.0, -100.0) for r in episode.rewards["env"])
        assert sum(token_rewards) == pytest.approx(episode.episode_return)
        assert episode.num_turns == 5 or episode.terminated


def test_same_generator_seed_reproduces_rollouts(frozen_lake_policy):
    config, model, tokenizer = frozen_lake_policy
    engine = _engine(config, model, tokenizer)
    first = engine.play(list(range(8)), generator=torch.Generator().manual_seed(3))
    second = engine.play(list(range(8)), generator=torch.Generator().manual_seed(3))
    other = engine.play(list(range(8)), generator=torch.Generator().manual_seed(4))
    assert [e.completion_ids for e in first] == [e.completion_ids for e in second]
    assert [e.completion_ids for e in first] != [e.completion_ids for e in other]


def test_batched_greedy_rollout_equals_one_episode_at_a_time(frozen_lake_policy):
    """Padding, positions and cache pruning change nothing: batched greedy play == per-episode generate.

    Random weights give near-uniform logits where float noise can flip an argmax; scaling the (tied)
    embeddings sharpens the logits so that greedy choices are well separated.
    """
    import copy

    config, model, tokenizer = frozen_lake_policy
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(30.0)
    settings = dict(greedy=True, max_turns=6)
    engine = _engine(config, model, tokenizer, **settings)
    batched = engine.play(list(range(10)))
    env = env_factory(config)()
    for episode in batched:
        single = play_one_at_a_time(model, tokenizer, engine.format, env, episode.seed,
                                    SamplingSettings(max_action_tokens=3, **settings))
        assert single.completion_ids == episode.completion_ids
        assert single.action_ends == episode.action_ends
        assert single.rewards == episode.rewards


def test_episode_token_cap_truncates(frozen_lake_policy):
    config, model, tokenizer = frozen_lake_policy
    engine = _engine(config, model, tokenizer, max_episode_tokens=150, greedy=True)
    episodes = engine.play(list(range(4)))
    for episode in episodes:
        assert len(episode.prompt_ids) + len(episode.completion_ids) <= 150
        assert episode.terminated or episode.truncated
