"""Faults that surface: an env that raises, hangs or returns a malformed observation fails only its episode,
which is left out of the batch (not scored 0); too many failures abort with the key to turn; out of memory
becomes a message naming the knobs. The misbehaving env is `tests/faulty_env.py`.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import time

import pytest
import torch

from rlft import stages
from rlft.algorithms import trl_bridge
from rlft.algorithms.grpo import build_grpo_trainer, episode_return
from rlft.algorithms.ppo import build_ppo_trainer
from rlft.core.batch import RolloutBatch
from rlft.errors import EnvFailureError, ResourceError
from rlft.rollout.engine import RolloutEngine, SamplingSettings
from rlft.rollout.env_workers import ThreadEnvPool
from rlft.rollout.turn_format import PlainFormat
from rlft.runtime.faults import is_out_of_memory, out_of_memory_guard
from rlft.stages import common as stage_common
from rlft.stages import rl as stage_rl
from tests.conftest import tiny_config
from tests.faulty_env import FaultyEnv

ENV = "tests.faulty_env:FaultyEnv"
FAULT_SEEDS = [1, 4]
# Where FaultyEnv raised, appended to the reason (a subprocess worker's exception comes back without its frames).
USER_CODE = r" in your code tests\.faulty_env:[\w.]+ \(tests/faulty_env\.py:\d+\)"
REASONS = {
    ("raise", 2): r"env\.step raised ValueError\('boom'\) on turn 2",
    ("raise", 0): r"env\.reset raised ValueError\('boom'\)",
    ("hang", 2): r"env\.step did not return within 0\.3 s on turn 2 \(rollout\.env_step_timeout_s\)",
    (
        "bad_observation",
        2,
    ): r"env\.step returned a malformed result on turn 2: observation is int, expected str",
    ("bad_observation", 0): r"env\.reset returned a malformed result: observation is int, expected str",
}


@pytest.fixture(scope="module")
def corridor_policy():
    """(config, model, tokenizer) for the well-behaved corridor; a sharpened copy for greedy comparisons."""
    from rlft.models.policy import load_policy

    config = tiny_config(ENV)
    model, tokenizer = load_policy(
        config.model, seed=0, env_factory=stage_common.env_factory(config), max_turns=8
    )
    sharp = copy.deepcopy(model)
    with torch.no_grad():  # well-separated logits: greedy choices do not flip with batch composition
        sharp.get_input_embeddings().weight.mul_(30.0)
    return config, model, sharp, tokenizer


def engine_for(model, tokenizer, factory, **settings) -> RolloutEngine:
    """An engine on `factory`'s envs; settings override SamplingSettings (e.g. env_workers="subprocess")."""
    base = dict(max_turns=8, max_action_tokens=3, env_step_timeout_s=None)
    return RolloutEngine(
        model, tokenizer, PlainFormat(tokenizer), factory, SamplingSettings(**{**base, **settings})
    )


def faulty(**kwargs):
    return lambda: FaultyEnv(**kwargs)


def time_env_rounds(engine: RolloutEngine) -> list[float]:
    """Wall seconds of each round of env calls the engine makes from now on (generation is not in them: on a
    loaded machine it alone can take seconds)."""
    seconds, call = [], engine.env_pool.call

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    engine.env_pool.call = timed
    return seconds


# ================================================================================== the rollout engine


@pytest.mark.parametrize(
    ("fault", "turn", "timeout", "workers"),
    [
        ("raise", 2, None, "thread"),
        ("raise", 0, 5.0, "thread"),
        ("hang", 2, 0.3, "thread"),
        ("bad_observation", 2, 5.0, "thread"),
        ("bad_observation", 0, None, "thread"),
        ("raise", 2, 5.0, "subprocess"),
        ("hang", 2, 0.3, "subprocess"),
        ("bad_observation", 0, None, "subprocess"),
    ],
)
def test_a_fault_fails_its_episode_and_leaves_the_others_as_they_were(
    corridor_policy, fault, turn, timeout, workers
):
    _, _, sharp, tokenizer = corridor_policy
    seeds = list(range(6))
    settings = dict(greedy=True, env_step_timeout_s=timeout, env_workers=workers)
    clean = engine_for(sharp, tokenizer, faulty(), **settings).play(seeds)
    broken = engine_for(
        sharp,
        tokenizer,
        faulty(fault=fault, fault_seeds=FAULT_SEEDS, fault_turn=turn, hang_s=2.0),
        **settings,
    ).play(seeds)
    assert all(e.failure is None for e in clean)
    assert [e.num_turns for e in clean if e.seed in FAULT_SEEDS] and all(e.num_turns >= 2 for e in clean)
    for before, after in zip(clean, broken, strict=True):
        if after.seed in FAULT_SEEDS:
            reason = REASONS[fault, turn]
            if fault == "raise":  # the user's env raised: the reason names its function and file:line
                reason += USER_CODE if workers == "thread" else f"(?:{USER_CODE})?"
            assert re.fullmatch(reason, after.failure), after.failure
            # it ended at the fault: the actions before it as played, no reward for the failed step
            assert after.num_turns == max(turn - 1, 0)
            assert before.completion_ids[: len(after.completion_ids)] == after.completion_ids
            assert after.rewards["env"] == before.rewards["env"][: after.num_turns]
        else:
            assert after.failure is None
            assert after.completion_ids == before.completion_ids
            assert after.logprobs == pytest.approx(before.logprobs, abs=1e-4)
            assert after.rewards == before.rewards and after.success == before.success
    rollout = RolloutBatch.from_episodes(broken, pad_id=tokenizer.pad_token_id).to_trl_rollout()
    for i, episode in enumerate(broken):
        failed = episode.failure is not None
        assert (sum(rollout["env_mask"][i]) == 0) == failed
        assert (
            len(rollout["env_mask"][i])
            == len(rollout["completion_ids"][i])
            == len(rollout["logprobs"][i])
            >= 1
        )
        assert rollout["prompt_ids"][i]
    rewards = episode_return(
        rollout["completion_ids"], **{k: rollout[k] for k in ("episode_return", "success")}
    )
    assert [r is None for r in rewards] == [e.seed in FAULT_SEEDS for e in broken]


def test_a_failure_changes_the_batch_exactly_as_a_termination_would(corridor_policy):
    """Sampled play: the failed row leaves the batch at the same forward as a terminated one, so every
    token sampled, in every episode, is the same as in the run where the env terminated there instead."""
    _, model, _, tokenizer = corridor_policy
    seeds = list(range(8))
    runs = {}
    for fault in ("terminate", "raise"):
        engine = engine_for(
            model, tokenizer, faulty(fault=fault, fault_seeds=[2, 5], fault_turn=2), env_step_timeout_s=5.0
        )
        runs[fault] = engine.play(seeds, generator=torch.Generator().manual_seed(7))
    assert [e.completion_ids for e in runs["raise"]] == [e.completion_ids for e in runs["terminate"]]
    assert [e.seed for e in runs["raise"] if e.failure] == [2, 5]
    assert [e.seed for e in runs["terminate"] if e.failure] == []


@pytest.mark.parametrize(
    ("turn", "workers"), [(0, "thread"), (1, "thread"), (0, "subprocess"), (1, "subprocess")]
)
def test_a_batch_whose_envs_all_hang_ends_within_about_one_timeout(corridor_policy, turn, workers):
    """The resets of a batch, and the steps of the rows whose actions end at the same token (greedy play from
    one prompt), are waited on together: 16 hung envs cost one 0.5 s timeout, not 16 (8 s)."""
    _, _, sharp, tokenizer = corridor_policy
    engine = engine_for(
        sharp,
        tokenizer,
        faulty(fault="hang", fault_seeds=None, fault_turn=turn, hang_s=10.0),
        greedy=True,
        env_step_timeout_s=0.5,
        env_workers=workers,
    )
    engine.env_pool.ensure(16)  # worker processes start before the clock: the bound is on the hangs
    rounds = time_env_rounds(engine)
    episodes = engine.play(list(range(16)))
    assert sum(rounds) < 1.5, rounds  # one 0.5 s timeout; one after another they took 8 s
    where = "env.reset" if turn == 0 else "env.step"
    assert all(e.failure.startswith(f"{where} did not return within 0.5 s") for e in episodes)
    assert [e.num_turns for e in episodes] == [0] * 16
    assert engine.stats["rollout/env_failures"] == 16


@pytest.mark.parametrize("workers", ["thread", "subprocess"])
def test_healthy_rows_of_a_batch_with_hung_envs_play_as_without_the_fault(corridor_policy, workers):
    _, _, sharp, tokenizer = corridor_policy
    seeds, hung = list(range(16)), list(range(0, 16, 2))
    settings = dict(greedy=True, env_step_timeout_s=0.5, env_workers=workers)
    clean = engine_for(sharp, tokenizer, faulty(), **settings).play(seeds)
    engine = engine_for(sharp, tokenizer, faulty(fault="hang", fault_seeds=hung, fault_turn=2), **settings)
    engine.env_pool.ensure(16)
    rounds = time_env_rounds(engine)
    broken = engine.play(seeds)
    assert sum(rounds) < 1.5, rounds  # the 8 hung steps end together (greedy rows end each action together)
    assert all(e.num_turns >= 2 for e in clean)  # every hung env was reached
    for before, after in zip(clean, broken, strict=True):
        if after.seed in hung:
            assert after.failure.startswith("env.step did not return within 0.5 s on turn 2")
            assert after.completion_ids == before.completion_ids[: len(after.completion_ids)]
        else:
            assert after.failure is None
            assert after.completion_ids == before.completion_ids and after.mask == before.mask
            assert after.logprobs == pytest.approx(before.logprobs, abs=1e-4)
            assert after.rewards == before.rewards


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("hold_gil", r"env\.step did not return within 0\.5 s on turn 2 \(rollout\.env_step_timeout_s\)"),
        ("exit", r"env\.step ended its worker process \(exit code 1\) on turn 2 \(rollout\.env_workers\)"),
    ],
)
def test_subprocess_workers_survive_an_env_that_holds_the_gil_or_ends_its_process(
    corridor_policy, fault, reason
):
    """A C call that keeps the GIL for 30 s (threads could not time it out: the waiting thread never runs) and
    `os._exit(1)` inside step (it would end the trainer) fail only their episodes; their workers are replaced."""
    _, _, sharp, tokenizer = corridor_policy
    seeds = list(range(6))
    settings = dict(greedy=True, env_step_timeout_s=0.5, env_workers="subprocess")
    clean = engine_for(sharp, tokenizer, faulty(), **settings).play(seeds)
    engine = engine_for(
        sharp, tokenizer, faulty(fault=fault, fault_seeds=FAULT_SEEDS, fault_turn=2, hang_s=30.0), **settings
    )
    engine.env_pool.ensure(6)
    first = [worker.process for worker in engine.env_pool.workers]
    rounds = time_env_rounds(engine)
    broken = engine.play(seeds)
    assert sum(rounds) < 1.5, rounds  # not the 30 s the env holds the GIL for
    for before, after in zip(clean, broken, strict=True):
        if after.seed in FAULT_SEEDS:
            assert re.fullmatch(reason, after.failure), after.failure
            assert not first[after.seed].is_alive()  # killed or exited, and reaped
        else:
            assert after.failure is None and after.completion_ids == before.completion_ids
            assert after.rewards == before.rewards
    again = engine.play([10, 11, 12, 13, 14, 15])  # the faults are on seeds 1 and 4 only
    assert all(e.failure is None for e in again)
    now = [worker.process for worker in engine.env_pool.workers]
    assert [a is b for a, b in zip(first, now)] == [slot not in FAULT_SEEDS for slot in range(6)]


def test_env_workers_is_a_config_key_with_thread_as_the_default(corridor_policy):
    from rlft.config.sections import RolloutConfig
    from rlft.errors import ConfigError
    from rlft.rollout.env_workers import ENV_WORKERS, SubprocessEnvPool

    assert RolloutConfig().env_workers == "thread"
    assert RolloutConfig.model_fields["env_workers"].annotation.__args__ == ENV_WORKERS
    config = tiny_config(ENV, rollout={"env_workers": "subprocess"})
    tokenizer = corridor_policy[-1]
    assert isinstance(stage_common.rollout_engine(config, tokenizer).env_pool, SubprocessEnvPool)
    assert isinstance(stage_common.rollout_engine(tiny_config(ENV), tokenizer).env_pool, ThreadEnvPool)
    with pytest.raises(ConfigError) as info:
        tiny_config(ENV, rollout={"env_workers": "subproces"})
    assert "rollout.env_workers" in str(info.value) and "'subprocess'" in str(info.value)


def test_a_hung_env_is_abandoned_and_never_reused(corridor_policy):
    _, model, _, tokenizer = corridor_policy
    engine = engine_for(
        model,
        tokenizer,
        faulty(fault="hang", fault_seeds=[2], fault_turn=1, hang_s=10.0),
        env_step_timeout_s=0.3,
    )
    engine.env_pool.ensure(4)
    pool = list(engine._envs)
    start = time.perf_counter()
    episodes = engine.play([0, 1, 2, 3], generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    assert seconds < 4.0  # one 0.3 s timeout, not the 10 s hang
    assert [e.failure is not None for e in episodes] == [False, False, True, False]
    assert "did not return within 0.3 s" in episodes[2].failure
    assert engine.stats["rollout/env_failures"] == 1
    # the next batch gets a fresh env in that slot; the hung one is never called again
    again = engine.play([10, 11, 12, 13], generator=torch.Generator().manual_seed(0))
    assert all(e.failure is None for e in again)
    assert engine._envs[2] is not pool[2] and engine._envs[0] is pool[0]
    assert [c.split()[0] for c in pool[2].calls] == ["reset", "step"]


def test_an_env_that_raises_is_replaced_and_the_engine_carries_on(corridor_policy):
    _, model, _, tokenizer = corridor_policy
    made = itertools.count()

    def factory():
        return FaultyEnv(fault="raise", fault_seeds=None if next(made) == 1 else [], fault_turn=1)

    engine = engine_for(model, tokenizer, factory, env_step_timeout_s=None)
    first = engine.play([0, 1, 2], generator=torch.Generator().manual_seed(0))
    assert [e.failure is not None for e in first] == [False, True, False]
    second = engine.play([0, 1, 2], generator=torch.Generator().manual_seed(0))
    assert all(e.failure is None for e in second)
    assert next(made) == 4  # three envs, and one made to replace the one that raised


def test_failed_episodes_carry_no_signal_and_stay_out_of_the_episode_metrics():
    from rlft.core.episode import Episode

    healthy = Episode(seed=0, prompt_ids=[5, 6])
    healthy.add_sampled(7, -0.5)
    healthy.end_action("right", {"env": 1.0})
    healthy.success = True
    mid = Episode(seed=1, prompt_ids=[5, 6])
    mid.add_sampled(8, -0.1)
    mid.end_action("left", {"env": -0.1})
    mid.add_env_tokens([9, 9])
    mid.add_sampled(7, -0.2)
    mid.failure = "env.step raised ValueError('boom') on turn 2"
    at_reset = Episode(seed=2, prompt_ids=[], failure="env.reset raised ValueError('boom')")
    batch = RolloutBatch.from_episodes([healthy, mid, at_reset], pad_id=0)
    rollout = batch.to_trl_rollout()
    assert rollout["env_mask"] == [[1], [0, 0, 0, 0], [0]]
    assert rollout["completion_ids"] == [[7], [8, 9, 9, 7], [0]] and rollout["prompt_ids"][2] == [0]
    assert rollout["logprobs"][2] == [0.0]
    logged = {}
    rewards = episode_return(
        rollout["completion_ids"],
        episode_return=rollout["episode_return"],
        success=rollout["success"],
        turns=rollout["turns"],
        invalid_actions=rollout["invalid_actions"],
        log_metric=logged.__setitem__,
    )
    assert rewards == [1.0, None, None]
    assert logged == {
        "episode/success": 1.0,
        "episode/turns": 1.0,
        "episode/invalid_actions": 0.0,
        "episode/return": 1.0,
    }


# ============================================================================= through TRL's trainers


def build(tmp_path, algorithm: str, factory, rl: dict, rollout: dict):
    config = tiny_config(
        ENV,
        output_dir=str(tmp_path),
        name=algorithm,
        rl={"algorithm": algorithm, "init_from": "base", "trainer": {"max_steps": 1, **rl}},
        rollout=rollout,
    )
    model, tokenizer = stage_common.load_trainable(stage_common.ensure_base_checkpoint(config), config)
    engine = RolloutEngine(
        None,
        tokenizer,
        stage_common.turn_format_for(config, tokenizer),
        factory,
        stage_common.sampling_settings(config),
    )
    build_trainer = build_ppo_trainer if algorithm == "ppo" else build_grpo_trainer
    trainer, episode_rollout = build_trainer(
        model,
        tokenizer,
        stage_rl.rl_trainer_args(config),
        engine,
        list(range(100)),
        batch_size=config.rollout.num_envs,
    )
    trainer.model.train()
    return trainer, episode_rollout


def failing_slots(slots: dict[int, int]):
    """A factory whose n-th env fails on turn `slots[n]` (0 = reset) of every seed; envs made later are fine."""
    made = itertools.count()

    def factory():
        n = next(made)
        return FaultyEnv(
            fault="raise" if n in slots else "none", fault_seeds=None, fault_turn=slots.get(n, 1)
        )

    return factory


def prompts(seeds: list[int]) -> list[dict]:
    return [{"prompt": json.dumps({"seed": s})} for s in seeds]


@pytest.fixture(scope="module")
def grpo(tmp_path_factory):
    # 2 groups of 4 episodes (seeds 5 and 9); the 2nd episode of the first group and the 3rd of the second fail
    trainer, rollout = build(
        tmp_path_factory.mktemp("grpo"),
        "grpo",
        failing_slots({1: 2, 6: 1}),
        rl={"num_generations": 4, "per_device_train_batch_size": 8},
        rollout={"num_envs": 8, "max_env_failure_rate": 0.25},
    )
    out = trainer.score_generation_batch(prompts([5] * 4 + [9] * 4))
    return trainer, rollout, out


def test_grpo_group_baseline_leaves_failed_episodes_out(grpo):
    """TRL's own scoring: a failed episode's advantage is 0 and its group's mean and std are over the others."""
    trainer, rollout, out = grpo
    episodes = trainer.rollout_batch.episodes
    assert [e.failure is not None for e in episodes] == [False, True, False, False, False, False, True, False]
    returns = torch.tensor([e.episode_return for e in episodes])
    expected = torch.zeros(8)
    for group in (range(0, 4), range(4, 8)):
        healthy = [i for i in group if episodes[i].failure is None]
        mean, std = returns[healthy].mean(), returns[healthy].std()  # TRL's nanstd is the unbiased one
        expected[healthy] = (returns[healthy] - mean) / (std + 1e-4)
    assert returns[[0, 2, 3]].std() > 0  # the check below is not trivially 0 == 0
    torch.testing.assert_close(out["advantages"].cpu(), expected, atol=1e-5, rtol=1e-5)
    mask = out["completion_mask"] * out["tool_mask"]
    assert mask[1].sum() == 0 and mask[6].sum() == 0 and mask[0].sum() > 0
    healthy_tokens = sum(sum(e.mask) for e in episodes if e.failure is None)
    assert out["num_items_in_batch"].item() == healthy_tokens  # the loss is normalised over healthy tokens


def test_grpo_logs_the_failure_rate_and_healthy_episode_metrics(grpo):
    trainer, rollout, _ = grpo
    metrics = trl_bridge.metrics(trainer)
    assert metrics["episode/failure_rate"] == [0.25]
    assert metrics["episode/failures_total"] == [2.0]
    healthy = [e for e in trainer.rollout_batch.episodes if e.failure is None]
    assert metrics["episode/return"][-1] == pytest.approx(
        sum(e.episode_return for e in healthy) / len(healthy)
    )
    assert metrics["episode/turns"][-1] == pytest.approx(sum(e.num_turns for e in healthy) / len(healthy))


def test_above_the_threshold_the_rollout_aborts_naming_the_key(grpo):
    trainer, rollout, _ = grpo
    rollout.engine.settings.max_env_failure_rate = 0.2
    rollout.engine.env_pool = ThreadEnvPool(failing_slots({0: 0, 1: 2, 2: 1}))
    try:
        with pytest.raises(EnvFailureError) as info:
            trainer.score_generation_batch(prompts([5] * 4 + [9] * 4))
    finally:
        rollout.engine.settings.max_env_failure_rate = 0.25
    message = str(info.value)
    assert "3 of 8 episodes (38%)" in message and "rollout.max_env_failure_rate = 0.2" in message
    assert re.search(
        r"seed 5: env\.reset raised ValueError\('boom'\)" + USER_CODE + "; "
        r"seed 5: env\.step raised ValueError\('boom'\) on turn 2" + USER_CODE,
        message,
    ), message
    assert info.value.exit_code == 3
    assert trl_bridge.metrics(trainer)["episode/failures_total"][-1] == 5.0  # logged before the abort


def test_ppo_failed_episodes_give_finite_zero_advantages_and_no_loss_tokens(tmp_path, monkeypatch):
    # 4 episodes, one per seed; the 2nd fails on its 2nd step, the 4th at reset
    trainer, rollout = build(
        tmp_path,
        "ppo",
        failing_slots({1: 2, 3: 0}),
        rl={"per_device_train_batch_size": 2},
        rollout={"num_envs": 4, "max_env_failure_rate": 0.5},
    )
    out = trainer.score_generation_batch(prompts([3, 4, 5, 6]))
    assert [e.failure is not None for e in trainer.rollout_batch.episodes] == [False, True, False, True]
    mask = out["completion_mask"] * out["env_mask"]
    for key in ("advantages", "returns", "old_values", "old_logprobs"):
        assert torch.isfinite(out[key]).all(), key
    for row in (1, 3):
        assert mask[row].sum() == 0 and out["value_mask"][row].sum() == 0
        assert torch.all(out["advantages"][row] == 0) and torch.all(out["returns"][row] == 0)
    assert out["advantages"][[0, 2]].abs().sum() > 0
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 1, raising=False)
    assert torch.isfinite(trainer.compute_loss(trainer.model, out))


# ====================================================================================== evaluation


def test_evaluation_counts_failed_episodes_apart_and_aborts_above_the_threshold(corridor_policy):
    from rlft.rollout.evaluation import evaluate_policy

    _, model, _, tokenizer = corridor_policy
    engine = engine_for(
        model, tokenizer, faulty(fault="raise", fault_seeds=[3], fault_turn=1), max_env_failure_rate=0.2
    )
    summary, episodes = evaluate_policy(engine, range(8), batch_size=8)
    healthy = [e for e in episodes if e.failure is None]
    assert summary["failed"] == 1 and summary["failure_rate"] == 1 / 8 and summary["episodes"] == 7
    assert summary["return"] == pytest.approx(sum(e.episode_return for e in healthy) / 7)
    engine.settings.max_env_failure_rate = 0.1
    with pytest.raises(EnvFailureError, match=r"1 of 8 episodes \(12%\) in a held-out evaluation failed"):
        evaluate_policy(engine, range(8), batch_size=8)


# ================================================================================ aborting a run, OOM


def run_cli(tmp_path, capsys, config) -> tuple[int, str]:
    from rlft.cli import main
    from rlft.config.schema import save_config

    path = tmp_path / "faulty.yaml"
    save_config(config, path)
    code = main(["train", "--config", str(path)])
    return code, capsys.readouterr().err


def test_a_run_whose_envs_all_fail_exits_with_a_clear_message(tmp_path, capsys):
    config = tiny_config(
        ENV,
        output_dir=str(tmp_path),
        name="all-fail",
        env={
            "kwargs": {"fault": "raise", "fault_seeds": [1000, 1001], "fault_turn": 0},
            "train_seeds": {"start": 1000, "count": 2},
        },
        rl={
            "init_from": "base",
            "trainer": {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 4},
        },
        rollout={"num_envs": 4},
    )
    code, err = run_cli(tmp_path, capsys, config)
    assert code == 3, err
    assert "rlft: error: 4 of 4 episodes (100%) in a rollout batch failed" in err
    assert "env.reset raised ValueError('boom')" in err and "rollout.max_env_failure_rate = 0.1" in err
    assert "Traceback" not in err


def oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")


def test_out_of_memory_in_generation_names_the_knobs(corridor_policy, monkeypatch):
    config, model, _, tokenizer = corridor_policy
    config = tiny_config(
        ENV,
        rollout={"num_envs": 48, "max_episode_tokens": 512},
        rl={"trainer": {"per_device_train_batch_size": 16}},
    )
    engine = engine_for(model, tokenizer, faulty())
    monkeypatch.setattr(model, "forward", oom)
    with pytest.raises(ResourceError) as info, out_of_memory_guard(config, "rl"):
        engine.play([0, 1])
    message = str(info.value)
    assert message.startswith(
        "out of memory during rl (rollout generation): CUDA out of memory. Tried to allocate"
    )
    for knob in (
        "rollout.num_envs = 48",
        "rl.trainer.per_device_train_batch_size = 16",
        "rl.trainer.gradient_accumulation_steps = 1",
        "rollout.max_episode_tokens = 512",
        "rollout.max_action_tokens = 3",
        "rl.trainer.gradient_checkpointing = False",
        "model.lora = off",
        "smaller model",
    ):
        assert knob in message
    assert message.index("rollout.num_envs") < message.index(
        "per_device_train_batch_size"
    )  # generation first
    assert info.value.exit_code == 5


def test_out_of_memory_in_the_update_exits_with_the_knobs(tmp_path, capsys, monkeypatch):
    """`rlft train` with the training forward (grad enabled) running out of memory; rollouts (no grad) are fine.

    The transformer body is patched: TRL's loss calls it directly and applies the LM head itself."""
    from transformers import Qwen2Model

    original = Qwen2Model.forward

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            oom()
        return original(self, *args, **kwargs)

    config = tiny_config(
        ENV,
        output_dir=str(tmp_path),
        name="oom",
        rl={
            "init_from": "base",
            "trainer": {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 4},
        },
        rollout={"num_envs": 4},
    )
    monkeypatch.setattr(Qwen2Model, "forward", forward)
    code, err = run_cli(tmp_path, capsys, config)
    assert code == 5, err
    assert "rlft: error: out of memory during rl (update): CUDA out of memory" in err
    assert "rl.trainer.per_device_train_batch_size = 4" in err and "rollout.num_envs = 4" in err
    assert err.index("per_device_train_batch_size") < err.index("rollout.num_envs")  # update knobs first
    assert "Traceback" not in err


def test_out_of_memory_in_sft_names_the_sft_knobs(tmp_path, monkeypatch):
    from transformers import Qwen2Model

    config = tiny_config(
        output_dir=str(tmp_path),
        name="sft-oom",
        sft={
            "demos": {"source": "expert", "episodes": 4},
            "trainer": {"num_train_epochs": 1, "per_device_train_batch_size": 2},
        },
    )
    monkeypatch.setattr(Qwen2Model, "forward", oom)
    with pytest.raises(ResourceError) as info:
        stages.run_sft(config)
    message = str(info.value)
    assert message.startswith("out of memory during sft (update): CUDA out of memory")
    assert (
        "sft.trainer.per_device_train_batch_size = 2" in message
        and "sft.trainer.gradient_checkpointing" in message
    )
    assert "rollout.num_envs" not in message


def test_only_out_of_memory_errors_are_translated():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"), out_of_memory_guard(tiny_config(ENV), "rl"):
        raise RuntimeError("shape mismatch")
