"""The Episode record is token-exact: masks, behaviour log-probs and per-turn rewards (DESIGN.md invariants 1-2);
generation backends plug into the engine without changing a token."""

from __future__ import annotations

import copy

import pytest
import torch

from rlft.errors import ConfigError
from rlft.rollout.backend import ActionChunk
from rlft.rollout.engine import RolloutEngine, SamplingSettings, make_backend, play_one_at_a_time
from rlft.rollout.hf_backend import HFBackend, sample_next_tokens
from rlft.rollout.turn_format import PlainFormat
from rlft.stages.common import env_factory
from tests.conftest import tiny_config


def _engine(config, model, tokenizer, fmt=None, **settings) -> RolloutEngine:
    base = dict(max_turns=config.env.max_turns, max_action_tokens=3, temperature=1.0)
    return RolloutEngine(
        model,
        tokenizer,
        fmt or PlainFormat(tokenizer),
        env_factory(config),
        SamplingSettings(**{**base, **settings}),
    )


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
                assert episode.completion_ids[position : position + len(segment)] == segment
                assert episode.mask[position : position + len(segment)] == [0] * len(segment)
                position += len(segment)
            action = episode.completion_ids[position : end + 1]
            assert episode.mask[position : end + 1] == [1] * len(action)
            assert 1 <= len(action) <= 3
            # an action ends at a stop token or at the token limit, and nowhere earlier
            assert action[-1] in fmt.stop_ids or len(action) == 3
            assert not any(t in fmt.stop_ids for t in action[:-1])
            sampled += len(action)
            position = end + 1
        assert position == len(episode.completion_ids)  # nothing after the last action
        assert episode.prompt_ids == fmt.prompt_ids(
            engine._envs[0].unwrapped.instructions, episode.first_observation
        )
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
        completion_logp = logp[len(episode.prompt_ids) - 1 :]
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
    logp = (
        torch.log_softmax(logits[:-1], dim=-1)
        .gather(-1, ids[0, 1:, None])
        .squeeze(-1)[len(episode.prompt_ids) - 1 :]
    )
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
    config, model, tokenizer = frozen_lake_policy
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(30.0)
    settings = dict(greedy=True, max_turns=6)
    engine = _engine(config, model, tokenizer, **settings)
    batched = engine.play(list(range(10)))
    env = env_factory(config)()
    for episode in batched:
        single = play_one_at_a_time(
            model,
            tokenizer,
            engine.format,
            env,
            episode.seed,
            SamplingSettings(max_action_tokens=3, **settings),
        )
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


# ---------------------------------------------------------------------------------------------- generation backends
def _biased_policy(model, tokenizer, stop_bias: float = 5.5, word_bias: float = 5.0):
    """A copy whose output layer favours the stop token and the four move words. With the default biases, sampled
    actions of 1, 2 and 3 tokens and episodes that end early (in a hole) all occur: the rows of a batch finish at
    different steps."""
    model = copy.deepcopy(model)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[sorted(PlainFormat(tokenizer).stop_ids)] = stop_bias
        head.bias[tokenizer.encode(" left right up down", add_special_tokens=False)] = word_bias
    model.lm_head = head
    return model


# Played by the engine as it was before generation moved into a backend (git 0f7322a, `_play_batch` with its own
# KV-cached loop): seed -> (sampled tokens, action_ends, behaviour log-probs rounded to 6 decimals). Seeds 0-6,
# batch_size 4, max_turns 5, max_action_tokens 3, temperature 0.8, top_p 0.95, torch.Generator().manual_seed(7).
RECORDED_BEFORE_BACKENDS = {
    0: (
        [3, 140, 133, 3, 133, 3, 142, 3, 3],
        [0, 33, 65, 97, 128],
        [-1.19961, -1.546356, -1.9279, -1.210693, -1.670355, -1.204205, -2.072374, -1.393644, -1.180407],
    ),
    1: (
        [133, 142, 142, 3, 139, 133, 133, 140, 140, 142],
        [2, 33, 66, 99],
        [
            -1.659335,
            -2.059633,
            -1.168512,
            -1.198084,
            -2.069628,
            -1.961959,
            -1.370578,
            -1.557823,
            -1.10805,
            -2.106911,
        ],
    ),
    2: ([133, 3, 139, 133, 133], [1, 34], [-1.66178, -1.219361, -2.072126, -1.961904, -1.36699]),
    3: (
        [133, 133, 3, 3, 139, 3, 3, 139, 139, 140],
        [2, 33, 65, 96, 129],
        [
            -1.657027,
            -1.360311,
            -1.22257,
            -1.201546,
            -2.071903,
            -1.337384,
            -1.195046,
            -2.06077,
            -1.318008,
            -2.031244,
        ],
    ),
    4: (
        [142, 3, 140, 142, 3, 3, 133, 3, 133, 139, 139],
        [1, 34, 65, 97, 130],
        [
            -2.066731,
            -1.424295,
            -1.540445,
            -2.103938,
            -1.419119,
            -1.202992,
            -1.659372,
            -1.218806,
            -1.661497,
            -2.053619,
            -1.318618,
        ],
    ),
    5: (
        [3, 140, 3, 3, 142, 139, 139, 3],
        [0, 32, 63, 96, 127],
        [-1.207666, -1.541635, -1.444862, -1.200476, -2.058585, -1.91819, -1.314535, -1.19525],
    ),
    6: (
        [139, 139, 133, 140, 142, 133, 140, 133, 140, 133, 133, 142, 142, 140, 140],
        [2, 35, 68, 101, 134],
        [
            -2.083382,
            -1.302986,
            -1.952,
            -1.543037,
            -2.111425,
            -2.006866,
            -1.551631,
            -1.924105,
            -1.87289,
            -1.662915,
            -1.369071,
            -2.040503,
            -2.061782,
            -2.081661,
            -1.109984,
        ],
    ),
}


def test_hf_backend_plays_the_episodes_recorded_before_the_backend_split(frozen_lake_policy):
    """Same seed, same generator: token for token and log-prob for log-prob what the pre-backend loop played
    (checked bit-exact against it when the split was made; 1e-6 here covers the 6-decimal rounding)."""
    config, model, tokenizer = frozen_lake_policy
    model = _biased_policy(model, tokenizer)
    model.train()
    engine = _engine(config, model, tokenizer, max_turns=5, temperature=0.8, top_p=0.95)
    assert isinstance(engine.backend, HFBackend)
    episodes = engine.play(list(range(7)), generator=torch.Generator().manual_seed(7), batch_size=4)
    assert model.training  # eval mode only while the session was open
    assert {e.seed for e in episodes} == set(RECORDED_BEFORE_BACKENDS)
    for episode in episodes:
        tokens, action_ends, logprobs = RECORDED_BEFORE_BACKENDS[episode.seed]
        sampled = [i for i, m in enumerate(episode.mask) if m]
        assert [episode.completion_ids[i] for i in sampled] == tokens
        assert episode.action_ends == action_ends
        assert [episode.logprobs[i] for i in sampled] == pytest.approx(logprobs, abs=1e-6)
    assert (
        engine.stats["rollout/forwards"] == 10 + 15
    )  # one per sampled token of each batch's longest episode
    assert engine.stats["rollout/sampled_tokens"] == sum(
        len(t) for t, _, _ in RECORDED_BEFORE_BACKENDS.values()
    )


class _WholeActionSession:
    """A turn-synchronous session in miniature, the way a vLLM backend meets the protocol: each call generates
    whole actions (until a stop id or the budget) for every live row, here one uncached forward of the row's full
    sequence per token."""

    def __init__(self, model, prompts, sampling):
        self.model, self.sampling = model, sampling
        self.sequences = {row: list(prompt) for row, prompt in enumerate(prompts)}
        self.live, self.forwards = list(self.sequences), 0

    def continue_actions(self, budgets, stop_ids, generator):
        chunks = {}
        for row in self.live:
            chunk = ActionChunk([], [])
            while len(chunk.token_ids) < budgets[row] and not (
                chunk.token_ids and chunk.token_ids[-1] in stop_ids
            ):
                logits = self.model(torch.tensor([self.sequences[row]])).logits[:, -1].float()
                self.forwards += 1
                token, logprob = sample_next_tokens(logits, self.sampling, generator)
                chunk.token_ids.append(int(token))
                chunk.logprobs.append(float(logprob))
                self.sequences[row].append(int(token))
            chunks[row] = chunk
        return chunks

    def extend(self, row, token_ids):
        self.sequences[row].extend(token_ids)

    def drop(self, rows):
        self.live = [row for row in self.live if row not in set(rows)]

    def close(self):
        self.live = []


class _WholeActionBackend:
    name = "whole-action"

    def start(self, model, prompts, sampling):
        return _WholeActionSession(model, prompts, sampling)


def _whole_action_engine(config, model, tokenizer, **settings) -> RolloutEngine:
    return RolloutEngine(
        model,
        tokenizer,
        PlainFormat(tokenizer),
        env_factory(config),
        SamplingSettings(**{"max_action_tokens": 3, **settings}),
        backend=_WholeActionBackend(),
    )


def test_a_turn_synchronous_backend_plays_the_same_greedy_episodes(frozen_lake_policy):
    """The engine takes chunks of any length: a backend returning whole actions per call gives the greedy
    episodes the step-wise hf backend gives, rows finishing at different turns included."""
    config, model, tokenizer = frozen_lake_policy
    model = _biased_policy(model, tokenizer, stop_bias=4.2, word_bias=4.0)  # greedy: "right right right"
    settings = dict(greedy=True, max_turns=5)
    seeds = list(range(8))
    stepwise = _engine(config, model, tokenizer, **settings).play(seeds, batch_size=5)
    engine = _whole_action_engine(config, model, tokenizer, **settings)
    whole = engine.play(seeds, batch_size=5)
    assert len({e.num_turns for e in whole}) > 1  # some fell in a hole early
    for a, b in zip(stepwise, whole):
        assert (a.completion_ids, a.mask, a.action_ends, a.rewards) == (
            b.completion_ids,
            b.mask,
            b.action_ends,
            b.rewards,
        )
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert engine.stats["rollout/sampled_tokens"] == sum(sum(e.mask) for e in whole)


def test_a_turn_synchronous_backend_keeps_the_token_invariants(frozen_lake_policy):
    """Sampled whole actions of 1-3 tokens: each ends at a stop token or at the limit and nowhere earlier, the
    mask is 1 exactly on them, and their log-probs equal a fresh forward pass (invariants 1-2)."""
    config, model, tokenizer = frozen_lake_policy
    model = _biased_policy(model, tokenizer)
    stop_ids = PlainFormat(tokenizer).stop_ids
    episodes = _whole_action_engine(config, model, tokenizer, max_turns=5).play(
        list(range(6)), generator=torch.Generator().manual_seed(0)
    )
    lengths = set()
    for episode in episodes:
        starts = [0] + [
            end + 1 + len(PlainFormat(tokenizer).observation_ids(obs))
            for end, obs in zip(episode.action_ends, episode.observations)
        ]
        for start, end in zip(starts, episode.action_ends):
            action = episode.completion_ids[start : end + 1]
            lengths.add(len(action))
            assert episode.mask[start : end + 1] == [1] * len(action)
            assert action[-1] in stop_ids or len(action) == 3
            assert not any(t in stop_ids for t in action[:-1])
        assert sum(episode.mask) == sum(end + 1 - start for start, end in zip(starts, episode.action_ends))
        ids = torch.tensor([episode.prompt_ids + episode.completion_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1).gather(-1, ids[0, 1:, None])
        mask = torch.tensor(episode.mask, dtype=torch.bool)
        fresh = logp.squeeze(-1)[len(episode.prompt_ids) - 1 :][mask]
        assert torch.allclose(fresh, torch.tensor(episode.logprobs)[mask], atol=1e-4)
    assert lengths == {1, 2, 3}


def test_backend_factory_by_name():
    assert isinstance(make_backend("hf"), HFBackend)
    with pytest.raises(ConfigError, match=r"rollout\.backend: unknown backend 'hff' \(did you mean 'hf'\?\)"):
        make_backend("hff")


def test_the_config_accepts_exactly_the_registered_backends():
    from rlft.config.sections import BACKENDS as CONFIG_BACKENDS
    from rlft.rollout.engine import BACKENDS

    assert set(CONFIG_BACKENDS) == set(BACKENDS)


def test_the_stage_engine_uses_the_configured_backend(tmp_path, monkeypatch):
    from rlft.stages import common

    monkeypatch.setattr(common, "turn_format_for", lambda config, tokenizer: "format")
    config = tiny_config(output_dir=str(tmp_path), **{"rollout": {"backend": "hf"}})
    engine = common.rollout_engine(config, tokenizer=None)
    assert isinstance(engine.backend, HFBackend) and engine.model is None
