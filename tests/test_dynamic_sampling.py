"""DAPO's dynamic sampling (rlft/algorithms/dynamic_sampling.py) with a scripted engine: zero-variance groups are
replaced by fresh ones while fresh ones exist, the cap holds, the counts logged are right, and the fresh seeds
come from a stream that a resumed run continues exactly."""

from __future__ import annotations

import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlft import stages
from rlft.algorithms.dynamic_sampling import DynamicSampling, dynamic_sampling_for, zero_variance
from rlft.algorithms.grpo import EpisodeRollout
from rlft.config.sections import DynamicSamplingConfig, RlConfig
from rlft.core.episode import Episode
from rlft.errors import ConfigError
from rlft.runtime.tracking import read_metrics
from tests.conftest import tiny_config

GROUP = 2
DEAD_SEEDS = range(0, 100)  # every episode of these seeds succeeds: a group without reward variance
LIVE_SEEDS = range(100, 200)  # the first episode of each group fails, the others succeed


class ScriptedEngine:
    """Plays each seed in one turn: return 1, except the first of each run of a live seed (return 0)."""

    def __init__(self):
        self.calls: list[tuple[list[int], int | None]] = []
        self.settings = SimpleNamespace(max_env_failure_rate=1.0)
        self.tokenizer = SimpleNamespace(pad_token_id=0)
        self.model = None

    def play(self, seeds, generator=None, batch_size=None):
        self.calls.append((list(seeds), None if generator is None else generator.initial_seed()))
        episodes = []
        for i, seed in enumerate(seeds):
            first = i == 0 or seeds[i - 1] != seed
            reward = 0.0 if seed in LIVE_SEEDS and first else 1.0
            episodes.append(
                Episode(
                    seed=seed,
                    prompt_ids=[1],
                    completion_ids=[2],
                    mask=[1],
                    logprobs=[-0.1],
                    action_ends=[0],
                    rewards={"env": [reward]},
                    terminated=True,
                    success=reward > 0,
                )
            )
        return episodes


class StubAccelerator:
    process_index = 0
    num_processes = 1
    device = torch.device("cpu")

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def unwrap_model(self, model):
        return model


def stub_trainer():
    # What the rollout and the sampler read of TRL's trainer: its accelerator, its metric lists, its model.
    return SimpleNamespace(accelerator=StubAccelerator(), _metrics={"train": defaultdict(list)}, model=None)


def grouped(seeds: list[int]) -> list[int]:
    return [s for s in seeds for _ in range(GROUP)]


def logged(trainer) -> dict[str, list[float]]:
    return {k: v for k, v in trainer._metrics["train"].items() if k.startswith("dynamic_sampling/")}


def test_zero_variance_groups():
    engine = ScriptedEngine()
    assert zero_variance(engine.play([5, 5, 5]))  # all 1
    assert not zero_variance(engine.play([150, 150]))  # 0 and 1
    one_healthy = engine.play([150, 150])
    one_healthy[1].failure = "env.step raised"
    assert zero_variance(one_healthy)  # a failed episode is not compared with


def test_dead_groups_are_replaced_by_fresh_live_groups_and_the_count_is_logged():
    engine, trainer = ScriptedEngine(), stub_trainer()
    sampler = DynamicSampling(list(LIVE_SEEDS), GROUP, max_resample_rounds=3, seed=0)
    played = engine.play(grouped([3, 150, 4]))  # slots 0 and 2 dead, slot 1 live
    batch, discarded = sampler.refill(played, engine, 8, trainer)
    assert len(batch) == len(played) and [e.seed for e in batch[2:4]] == [150, 150]  # the live slot stays
    groups = [batch[i : i + GROUP] for i in range(0, len(batch), GROUP)]
    assert not any(zero_variance(g) for g in groups)
    assert all(batch[i].seed in LIVE_SEEDS for i in (0, 1, 4, 5))
    assert sorted(e.seed for e in discarded) == [3, 3, 4, 4]  # the dropped groups, counted as env steps
    assert len(engine.calls) == 2 and len(engine.calls[1][0]) == 2 * GROUP  # one round, two fresh groups
    assert logged(trainer) == {
        "dynamic_sampling/dropped_groups": [2.0],
        "dynamic_sampling/dead_groups_kept": [0.0],
        "dynamic_sampling/resample_rounds": [1.0],
    }


def test_the_cap_holds_and_dead_groups_fill_what_is_missing():
    """Only dead fresh tasks: max_resample_rounds rounds, then the batch is the original one."""
    engine, trainer = ScriptedEngine(), stub_trainer()
    sampler = DynamicSampling([7, 8, 9], GROUP, max_resample_rounds=2, seed=0)
    played = engine.play(grouped([3, 150, 4]))
    batch, discarded = sampler.refill(played, engine, 8, trainer)
    assert batch == played
    assert len(engine.calls) == 1 + 2 and len(discarded) == 2 * 2 * GROUP  # 2 rounds x 2 fresh dead groups
    assert logged(trainer) == {
        "dynamic_sampling/dropped_groups": [4.0],  # the 4 fresh dead groups; the 2 original ones were kept
        "dynamic_sampling/dead_groups_kept": [2.0],
        "dynamic_sampling/resample_rounds": [2.0],
    }


def test_rounds_stop_as_soon_as_every_slot_has_signal():
    engine, trainer = ScriptedEngine(), stub_trainer()
    sampler = DynamicSampling([7, 150], GROUP, max_resample_rounds=10, seed=0)
    batch, _ = sampler.refill(engine.play(grouped([3, 4, 5])), engine, 8, trainer)
    rounds = logged(trainer)["dynamic_sampling/resample_rounds"][0]
    assert 1 <= rounds < 10 and len(engine.calls) == 1 + rounds
    assert [e.seed for e in batch] == grouped([150, 150, 150])
    # Each round plays as many fresh groups as slots are still dead, never more.
    assert [len(seeds) for seeds, _ in engine.calls[1:]] == sorted(
        (len(seeds) for seeds, _ in engine.calls[1:]), reverse=True
    )


def test_no_rounds_with_a_cap_of_zero_or_without_dead_groups():
    engine, trainer = ScriptedEngine(), stub_trainer()
    played = engine.play(grouped([3, 150]))
    batch, discarded = DynamicSampling([150], GROUP, 0, seed=0).refill(played, engine, 8, trainer)
    assert batch == played and discarded == [] and len(engine.calls) == 1
    assert logged(trainer)["dynamic_sampling/dead_groups_kept"] == [1.0]
    live = engine.play(grouped([150, 151]))
    assert DynamicSampling([7], GROUP, 3, seed=0).refill(live, engine, 8, trainer)[0] == live


def test_the_fresh_seed_stream_continues_exactly_after_a_resume():
    uninterrupted = DynamicSampling(list(range(1000)), GROUP, 3, seed=5)
    first = uninterrupted.fresh_seeds(3, process_index=0)
    rest = uninterrupted.fresh_seeds(4, process_index=0)
    resumed = DynamicSampling(list(range(1000)), GROUP, 3, seed=5)
    resumed.load_state_dict(
        json.loads(json.dumps(DynamicSampling(list(range(1000)), GROUP, 3, 5).state_dict()))
    )
    assert resumed.fresh_seeds(3, process_index=0) == first  # a fresh run from position 0 draws the same
    state = json.loads(json.dumps(resumed.state_dict()))
    assert state == {"draws": 3}
    again = DynamicSampling(list(range(1000)), GROUP, 3, seed=5)
    again.load_state_dict(state)
    assert again.fresh_seeds(4, process_index=0) == rest
    assert len(set(first + rest)) > 2  # a stream, not one seed
    assert DynamicSampling(list(range(1000)), GROUP, 3, seed=6).fresh_seeds(7, 0) != first + rest
    assert DynamicSampling(list(range(1000)), GROUP, 3, seed=5).fresh_seeds(7, 1) != first + rest


def test_episode_rollout_refills_counts_every_played_turn_and_saves_the_stream():
    engine, trainer = ScriptedEngine(), stub_trainer()
    rollout = EpisodeRollout(engine, seed=0, batch_size=8)
    rollout.dynamic_sampling = DynamicSampling(list(LIVE_SEEDS), GROUP, 3, seed=0)
    prompts = [json.dumps({"seed": s}) for s in grouped([3, 150])]
    batch = rollout.play(prompts, trainer)
    assert len(batch) == 2 * GROUP and batch.seeds[2:] == [150, 150] and batch.seeds[0] in LIVE_SEEDS
    assert rollout.env_steps == 3 * GROUP  # the dropped group's turns count as env steps too
    state = json.loads(json.dumps(rollout.state_dict()))
    assert state["dynamic_sampling"] == {"draws": 1}
    fresh = EpisodeRollout(ScriptedEngine(), seed=0, batch_size=8)
    fresh.dynamic_sampling = DynamicSampling(list(LIVE_SEEDS), GROUP, 3, seed=0)
    fresh.load_state_dict(state)
    assert fresh.dynamic_sampling.draws == 1


def test_configuration_and_refusals():
    assert RlConfig().dynamic_sampling == DynamicSamplingConfig(enabled=False, max_resample_rounds=3)
    args = SimpleNamespace(num_generations=4, seed=9)
    assert dynamic_sampling_for(DynamicSamplingConfig(), [1, 2], args) is None
    sampler = dynamic_sampling_for(DynamicSamplingConfig(enabled=True, max_resample_rounds=1), [1, 2], args)
    assert (sampler.group_size, sampler.max_resample_rounds, sampler.seed) == (4, 1, 9)
    with pytest.raises(ConfigError, match="num_generations = 1, expected at least 2"):
        DynamicSampling([1], 1, 3, seed=0)
    engine = ScriptedEngine()
    split = engine.play([3, 3, 150])  # a process holding part of a group
    with pytest.raises(ConfigError, match="multiple of num_generations \\(2\\)"):
        DynamicSampling([150], GROUP, 3, seed=0).refill(split, engine, 8, stub_trainer())


def test_run_rl_with_dynamic_sampling_logs_its_counts(tmp_path):
    """`rl.dynamic_sampling.enabled` reaches the rollout of a real run (rlft/stages/rl.py) and is logged."""
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(tmp_path),
        name="dapo",
        env={"max_turns": 3},
        rl={
            "algorithm": "grpo",
            "init_from": "base",
            "trainer": {"per_device_train_batch_size": 4, "num_generations": 2, "max_steps": 1},
            "dynamic_sampling": {"enabled": True, "max_resample_rounds": 1},
        },
        rollout={"num_envs": 4},
    )
    stages.run_rl(config)
    rows = [
        r
        for r in read_metrics(config.run_dir)
        if r["stage"] == "rl" and "dynamic_sampling/dropped_groups" in r
    ]
    assert len(rows) == 1
    assert rows[0]["dynamic_sampling/resample_rounds"] in (0.0, 1.0)
    assert 0 <= rows[0]["dynamic_sampling/dead_groups_kept"] <= 2
