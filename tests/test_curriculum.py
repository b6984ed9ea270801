"""The task curriculum (rlft/rollout/curriculum.py): PLR's replay probabilities by hand, the replay / new decision
with a seeded generator, scores from hand-built rollout batches, uniform = TRL's seeds, exact resume, two
processes keeping the same scores, and GRPO / PPO runs with `rl.curriculum.strategy: plr`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlft import stages
from rlft.algorithms.grpo import EpisodeRollout
from rlft.config.sections import CurriculumConfig, RlConfig
from rlft.core.batch import RolloutBatch
from rlft.core.episode import Episode
from rlft.errors import ConfigError
from rlft.rollout.curriculum import (
    TaskCurriculum,
    TaskRecord,
    curriculum_for,
    rank_probabilities,
    replay_probabilities,
    staleness_probabilities,
)
from rlft.runtime.tracking import read_metrics
from tests.conftest import tiny_config
from tests.test_accelerate import LAUNCH_TIMEOUT_S, REPO, free_port
from tests.test_resume import KillAt, Killed, scramble_rngs


# ------------------------------------------------------------------------------------------- probabilities
def test_rank_prioritisation_with_a_temperature_by_hand():
    # scores 0.2, 0.8, 0.5 -> ranks 3, 1, 2 -> h = 1/3, 1, 1/2; T = 0.5: h^2 = 4/36, 36/36, 9/36, sum 49/36
    assert rank_probabilities([0.2, 0.8, 0.5], 0.5) == pytest.approx([4 / 49, 36 / 49, 9 / 49])
    # T = 1: h = 1/3, 1, 1/2, sum 11/6
    assert rank_probabilities([0.2, 0.8, 0.5], 1.0) == pytest.approx([2 / 11, 6 / 11, 3 / 11])
    # tied scores share the best rank of their block: ranks 1, 1, 3 -> h = 1, 1, 1/3, sum 7/3
    assert rank_probabilities([0.5, 0.5, 0.1], 1.0) == pytest.approx([3 / 7, 3 / 7, 1 / 7])
    # a lower temperature puts more on the top rank
    assert rank_probabilities([0.2, 0.8, 0.5], 0.1)[1] > 0.99


def test_staleness_and_the_mix_by_hand():
    # c = 6, last played at draws 0, 3, 5: staleness 6, 3, 1 out of 10
    assert staleness_probabilities([0, 3, 5], 6) == pytest.approx([0.6, 0.3, 0.1])
    assert staleness_probabilities([6, 6], 6) == pytest.approx([0.5, 0.5])  # all just played: uniform
    mixed = replay_probabilities([0.2, 0.8, 0.5], [0, 3, 5], 6, temperature=0.5, staleness_coef=0.25)
    expected = [0.75 * 4 / 49 + 0.25 * 0.6, 0.75 * 36 / 49 + 0.25 * 0.3, 0.75 * 9 / 49 + 0.25 * 0.1]
    assert mixed == pytest.approx(expected)
    curriculum = TaskCurriculum(range(100), group_size=2, temperature=0.5, staleness_coef=0.25)
    curriculum.tasks = {
        30: TaskRecord(0.2, 0),
        10: TaskRecord(0.8, 3),
        20: TaskRecord(0.5, 5),
    }
    curriculum.draws = 6
    seeds, probabilities = curriculum.replay_distribution()
    assert seeds == [10, 20, 30]  # ascending seeds: the same order on every process
    assert probabilities == pytest.approx([expected[1], expected[2], expected[0]])


# ------------------------------------------------------------------------------------------- drawing
def seen_curriculum(**kwargs) -> TaskCurriculum:
    curriculum = TaskCurriculum(range(1000, 101_000), group_size=2, seed=3, **kwargs)
    curriculum.tasks = {1000: TaskRecord(0.9, 0), 1001: TaskRecord(0.5, 0), 1002: TaskRecord(0.1, 0)}
    return curriculum


def test_replay_or_new_follows_replay_prob_and_replays_follow_p_score():
    curriculum = seen_curriculum(replay_prob=0.3, temperature=1.0, staleness_coef=0.0)
    n = 3000
    tasks = curriculum.plan(n)
    replays = [t for t in tasks if t in (1000, 1001, 1002)]
    assert abs(len(replays) / n - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5
    assert curriculum.plan_metrics()["curriculum/replay_share"] == len(replays) / n
    # with no staleness term, replays follow P_S: ranks 1, 2, 3 -> 6/11, 3/11, 2/11
    counts = np.array([replays.count(s) for s in (1000, 1001, 1002)]) / len(replays)
    assert counts == pytest.approx([6 / 11, 3 / 11, 2 / 11], abs=0.05)
    new = [t for t in tasks if t not in (1000, 1001, 1002)]
    assert len(set(new)) == len(new)  # new tasks are unseen and not drawn twice in one plan
    assert curriculum.draws == n and curriculum.drawn == {t: i for i, t in enumerate(tasks) if t in set(new)}


def test_the_staleness_term_chooses_its_share_of_replays():
    curriculum = seen_curriculum(replay_prob=1.0, staleness_coef=0.3)
    curriculum.plan(2000)
    share = curriculum.plan_metrics()["curriculum/staleness_share"]
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / 2000) ** 0.5


def test_no_replay_before_a_score_and_only_replays_once_every_seed_has_one():
    fresh = TaskCurriculum(range(50), group_size=4, replay_prob=1.0, seed=0)
    tasks = fresh.plan(10)
    assert len(set(tasks)) == 10 and fresh.plan_metrics()["curriculum/replay_share"] == 0.0
    full = TaskCurriculum(range(3), group_size=1, replay_prob=0.0, seed=0)
    full.tasks = {s: TaskRecord(0.1 * s, 0) for s in range(3)}
    assert set(full.plan(20)) <= {0, 1, 2} and full.plan_metrics()["curriculum/replay_share"] == 1.0


def test_every_process_plans_the_whole_batch_and_plays_its_rows():
    # 3 rows per process, groups of 2: the middle group is split between the processes, as TRL splits it
    ranks = [seen_curriculum(replay_prob=0.5) for _ in range(2)]
    rows = [c.assign(3, process_index=i, num_processes=2) for i, c in enumerate(ranks)]
    whole = rows[0] + rows[1]
    assert whole[0::2] == whole[1::2]  # each group plays one task
    assert ranks[0].state_dict() == ranks[1].state_dict()
    with pytest.raises(ValueError, match="groups of 2"):
        seen_curriculum().assign(3, process_index=0, num_processes=1)


# ------------------------------------------------------------------------------------------- scores
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


def stub_trainer(accelerator=None):
    return SimpleNamespace(
        accelerator=accelerator or StubAccelerator(), _metrics={"train": defaultdict(list)}, model=None
    )


def episode(seed: int, success: bool, tokens: int = 3, failure: str | None = None) -> Episode:
    return Episode(
        seed=seed,
        prompt_ids=[1],
        completion_ids=[2] * tokens,
        mask=[1] * tokens,
        logprobs=[-0.1] * tokens,
        action_ends=[tokens - 1],
        rewards={"env": [float(success)]},
        terminated=True,
        success=success,
        failure=failure,
    )


def hand_built_batch() -> tuple[RolloutBatch, dict[str, torch.Tensor]]:
    """Seeds 7, 7, 9, 9 (the last failed); PPO-style per-token advantages with an observation token masked."""
    episodes = [episode(7, True), episode(7, False), episode(9, True), episode(9, True, failure="boom")]
    batch = RolloutBatch.from_episodes(episodes)
    env_mask = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]])
    scored = {
        "completion_mask": torch.ones(4, 3, dtype=torch.long),
        "env_mask": env_mask,
        "advantages": torch.tensor([[2.0, 9.0, -4.0], [1.0, -1.0, 1.0], [0.5, -0.5, 9.0], [9.0, 9.0, 9.0]]),
    }
    return batch, scored


def test_advantage_scores_from_a_hand_built_batch():
    rollout = EpisodeRollout(None, seed=0, batch_size=4)
    rollout.curriculum = TaskCurriculum(range(100), group_size=2)
    trainer = stub_trainer()
    batch, scored = hand_built_batch()
    rollout.observe_scored(trainer, scored, batch)
    # seed 7: episodes' mean |A| over sampled tokens (|2| + |-4|) / 2 = 3 and 1 -> 2; seed 9: 0.5 (failed left out)
    assert {s: r.score for s, r in rollout.curriculum.tasks.items()} == {7: 2.0, 9: 0.5}
    logged = trainer._metrics["train"]
    assert logged["curriculum/seen_tasks"] == [2.0] and logged["curriculum/score_max"] == [2.0]
    assert logged["curriculum/score_mean"] == [1.25]
    # GRPO: one advantage per episode, the same on each of its tokens; the latest value replaces the score
    scored["advantages"] = torch.tensor([-1.5, 0.5, 3.0, 0.0])
    rollout.observe_scored(trainer, scored, batch)
    assert {s: r.score for s, r in rollout.curriculum.tasks.items()} == {7: 1.0, 9: 3.0}


def test_success_variance_scores_over_the_last_episodes():
    rollout = EpisodeRollout(None, seed=0, batch_size=4)
    rollout.curriculum = TaskCurriculum(range(100), group_size=2, score="success_variance", success_window=2)
    batch, scored = hand_built_batch()
    rollout.observe_scored(stub_trainer(), scored, batch)
    # seed 7: 1 of 2 succeeded -> 0.5 * 0.5; seed 9: its one healthy episode succeeded -> 0
    assert {s: r.score for s, r in rollout.curriculum.tasks.items()} == {7: 0.25, 9: 0.0}
    again = RolloutBatch.from_episodes([episode(9, False), episode(7, True)])
    masks = {"completion_mask": torch.ones(2, 3), "env_mask": torch.ones(2, 3)}
    rollout.observe_scored(stub_trainer(), {"advantages": torch.zeros(2), **masks}, again)
    # the window keeps the last 2 outcomes: seed 9 [1, 0] -> 0.25, seed 7 [0, 1] -> 0.25
    assert {s: r.score for s, r in rollout.curriculum.tasks.items()} == {7: 0.25, 9: 0.25}


def test_the_buffer_forgets_the_lowest_scores():
    curriculum = TaskCurriculum([1, 2, 3], group_size=1, replay_prob=0.0, buffer_size=2)
    curriculum.update([1, 2, 3], [0.5, 0.1, 0.9], [1, 1, 1], [True, True, True])
    assert sorted(curriculum.tasks) == [1, 3]
    assert curriculum.plan(1) == [2]  # forgotten: unseen again, the only new task there is
    assert curriculum.score_metrics()["curriculum/seen_tasks"] == 2.0


# ------------------------------------------------------------------------------------------- uniform
class ScriptedEngine:
    """Plays each seed in one turn; success on even seeds."""

    def __init__(self):
        self.played: list[list[int]] = []
        self.settings = SimpleNamespace(max_env_failure_rate=1.0)
        self.tokenizer = SimpleNamespace(pad_token_id=0)
        self.model = None

    def play(self, seeds, generator=None, batch_size=None):
        self.played.append(list(seeds))
        return [episode(s, s % 2 == 0) for s in seeds]


def prompts(seeds: list[int]) -> list[str]:
    return [json.dumps({"seed": s}) for s in seeds]


def test_uniform_is_trls_sampler_exactly():
    assert RlConfig().curriculum.strategy == "uniform"
    args = SimpleNamespace(num_generations=2, seed=1)
    assert curriculum_for(CurriculumConfig(strategy="uniform", replay_prob=1.0), range(10), args) is None
    engine, trainer = ScriptedEngine(), stub_trainer()
    rollout = EpisodeRollout(engine, seed=0, batch_size=4)
    rollout.curriculum = curriculum_for(CurriculumConfig(), range(10), args)
    for seeds in ([3, 3, 8, 8], [5, 5, 1, 1]):
        batch = rollout.play(prompts(seeds), trainer)
        rollout.observe_scored(trainer, {"advantages": torch.ones(4), **batch_masks(batch)}, batch)
    assert engine.played == [[3, 3, 8, 8], [5, 5, 1, 1]]
    assert not any(k.startswith("curriculum/") for k in trainer._metrics["train"])
    assert "curriculum" not in rollout.state_dict()


def batch_masks(batch: RolloutBatch) -> dict[str, torch.Tensor]:
    return {"completion_mask": batch.completion_mask, "env_mask": batch.env_mask}


def test_plr_replaces_the_prompts_seeds_and_logs_its_plan():
    args = SimpleNamespace(num_generations=2, seed=1)
    settings = CurriculumConfig(strategy="plr", replay_prob=1.0, buffer_size=5)
    engine, trainer = ScriptedEngine(), stub_trainer()
    rollout = EpisodeRollout(engine, seed=0, batch_size=4)
    rollout.curriculum = curriculum_for(settings, range(100, 200), args)
    assert (rollout.curriculum.group_size, rollout.curriculum.buffer_size) == (2, 5)
    first = rollout.play(prompts([0, 0, 0, 0]), trainer)
    assert all(100 <= s < 200 for s in first.seeds) and first.seeds[0::2] == first.seeds[1::2]
    rollout.observe_scored(trainer, {"advantages": torch.ones(4), **batch_masks(first)}, first)
    second = rollout.play(prompts([0, 0, 0, 0]), trainer)
    assert set(second.seeds) <= set(first.seeds)  # replay_prob 1: only seen tasks once there are some
    assert trainer._metrics["train"]["curriculum/replay_share"] == [0.0, 1.0]


# ------------------------------------------------------------------------------------------- resume
def run_plans(curriculum: TaskCurriculum, plans: int, start: int = 0) -> list[list[int]]:
    """`plans` rounds of plan + update; the score of an episode a function of its task and round."""
    out = []
    for k in range(start, start + plans):
        tasks = curriculum.plan(4)
        rows = [t for t in tasks for _ in range(2)]
        scores = [((t * 7919 + k) % 13) / 13 for t in rows]
        curriculum.update(rows, scores, [float(s > 0.5) for s in scores], [True] * len(rows))
        out.append(tasks)
    return out


@pytest.mark.parametrize("score", ["advantage", "success_variance"])
def test_a_resumed_curriculum_draws_exactly_the_uninterrupted_tasks(score):
    def make():
        return TaskCurriculum(range(40), group_size=2, score=score, replay_prob=0.6, buffer_size=12, seed=5)

    uninterrupted = run_plans(make(), 10)
    interrupted = make()
    head = run_plans(interrupted, 4)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))  # through rlft_state.json
    assert head + run_plans(resumed, 6, start=4) == uninterrupted
    assert any(t in sum(uninterrupted[:5], []) for t in sum(uninterrupted[5:], []))  # it does replay


def test_the_rollout_state_carries_the_curriculum():
    args = SimpleNamespace(num_generations=2, seed=1)
    settings = CurriculumConfig(strategy="plr")
    rollout = EpisodeRollout(ScriptedEngine(), seed=0, batch_size=4)
    rollout.curriculum = curriculum_for(settings, range(100), args)
    run_plans(rollout.curriculum, 3)
    state = json.loads(json.dumps(rollout.state_dict()))
    fresh = EpisodeRollout(ScriptedEngine(), seed=0, batch_size=4)
    fresh.curriculum = curriculum_for(settings, range(100), args)
    fresh.load_state_dict(state)
    assert fresh.curriculum.state_dict() == rollout.curriculum.state_dict()
    assert fresh.curriculum.plan(4) == rollout.curriculum.plan(4)


# ------------------------------------------------------------------------------------------- two processes
class ThreadGather(StubAccelerator):
    """One of `num_processes` simulated ranks, each in its own thread: `gather` concatenates every rank's tensor
    in rank order, as accelerate's does."""

    num_processes = 2

    def __init__(self, rank: int, exchange: dict, barrier: threading.Barrier):
        self.process_index, self.exchange, self.barrier = rank, exchange, barrier

    def gather(self, x):
        self.exchange[self.process_index] = x
        self.barrier.wait()
        gathered = torch.cat([self.exchange[r] for r in range(self.num_processes)])
        self.barrier.wait()
        return gathered


def test_two_processes_keep_the_same_scores_and_draw_the_same_plan():
    args = SimpleNamespace(num_generations=2, seed=4)
    settings = CurriculumConfig(strategy="plr", replay_prob=0.5, staleness_coef=0.2)
    exchange, barrier = {}, threading.Barrier(2)
    rollouts, played, errors = [], [[], []], []

    def rank(index: int) -> None:
        try:
            trainer = stub_trainer(ThreadGather(index, exchange, barrier))
            rollout = EpisodeRollout(ScriptedEngine(), seed=0, batch_size=3)
            rollout.curriculum = curriculum_for(settings, range(30), args)
            rollouts.append((index, rollout))
            for step in range(6):
                batch = rollout.play(prompts([0, 0, 0]), trainer)  # 3 rows per rank: a group spans both
                played[index].append(batch.seeds)
                advantages = torch.tensor([float((s * 31 + step + index) % 5) for s in batch.seeds])
                rollout.observe_scored(trainer, {"advantages": advantages, **batch_masks(batch)}, batch)
        except Exception as exc:  # surfaced below, not lost in the thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    states = [rollout.curriculum.state_dict() for _, rollout in sorted(rollouts, key=lambda r: r[0])]
    assert states[0] == states[1] and len(states[0]["tasks"]) > 3
    for rows0, rows1 in zip(*played):
        whole = rows0 + rows1
        assert whole[0::2] == whole[1::2]  # whole groups of one task across the two ranks


# ------------------------------------------------------------------------------------------- configuration
def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"rl\.curriculum\.strategy.*'uniform' or 'plr'"):
        tiny_config(rl={"curriculum": {"strategy": "prl"}})
    with pytest.raises(ConfigError, match=r"rl\.curriculum\.temperature"):
        tiny_config(rl={"curriculum": {"strategy": "plr", "temperature": 0}})
    with pytest.raises(ConfigError, match=r"rl\.curriculum\.replay_prob"):
        tiny_config(rl={"curriculum": {"replay_prob": 1.5}})
    with pytest.raises(ValueError, match="score"):
        TaskCurriculum(range(3), group_size=1, score="regret")


# ------------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_run_rl_with_plr(tmp_path, algorithm):
    """`rl.curriculum.strategy: plr` reaches a real run (rlft/stages/rl.py), is logged, and saved for resume."""
    trainer = {"per_device_train_batch_size": 4, "max_steps": 2, "save_steps": 2}
    if algorithm == "grpo":
        trainer["num_generations"] = 2
    else:
        trainer.update(steps_per_generation=1, num_iterations=1)
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(tmp_path),
        name=f"plr-{algorithm}",
        env={"max_turns": 3, "train_seeds": {"start": 0, "count": 50}},
        rl={
            "algorithm": algorithm,
            "init_from": "base",
            "trainer": trainer,
            "curriculum": {"strategy": "plr", "replay_prob": 1.0, "score": "success_variance"},
        },
        rollout={"num_envs": 4},
    )
    stages.run_rl(config)
    rows = [r for r in read_metrics(config.run_dir) if r["stage"] == "rl" and "curriculum/seen_tasks" in r]
    assert [r["curriculum/replay_share"] for r in rows] == [0.0, 1.0]  # nothing to replay before a score
    assert rows[0]["curriculum/seen_tasks"] == (2.0 if algorithm == "grpo" else 4.0)
    state = json.loads((config.run_dir / "trainer" / "rl" / "checkpoint-2" / "rlft_state.json").read_text())
    assert state["rollout"]["curriculum"]["plans"] == 2


def plr_resume_config(out, name: str):
    # 2 minibatches per rollout batch: a kill after step 3's checkpoint resumes in the middle of a rollout batch
    trainer = {
        "max_steps": 6,
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "steps_per_generation": 2,
        "learning_rate": 1e-2,
        "beta": 0.04,
        "save_steps": 1,
        "save_total_limit": 3,
    }
    return tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(out),
        name=name,
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 4, "train_seeds": {"start": 0, "count": 20}},
        rl={
            "algorithm": "grpo",
            "init_from": "base",
            "trainer": trainer,
            "curriculum": {"strategy": "plr", "replay_prob": 0.5, "staleness_coef": 0.3},
        },
        rollout={"num_envs": 4},
    )


def test_a_killed_and_resumed_plr_run_plays_the_tasks_of_the_straight_run(tmp_path, monkeypatch):
    played: list[list[int]] = []
    original = EpisodeRollout.task_seeds

    def recording(self, prompts, trainer):
        seeds = original(self, prompts, trainer)
        played.append(seeds)
        return seeds

    monkeypatch.setattr(EpisodeRollout, "task_seeds", recording)
    straight = plr_resume_config(tmp_path / "straight", "plr")
    stages.run_rl(straight)
    straight_played, played[:] = list(played), []
    config = plr_resume_config(tmp_path / "killed", "plr")
    with pytest.raises(Killed):
        stages.run_rl(config, callbacks=[KillAt(3, after_save=True)])
    scramble_rngs()
    stages.run_rl(config, resume=True)
    assert (
        len(straight_played) == 3 and played == straight_played
    )  # rollouts at steps 1, 3 (before the kill), 5

    def curriculum_rows(run_dir):
        rows = [r for r in read_metrics(run_dir) if r["stage"] == "rl" and "curriculum/seen_tasks" in r]
        return {r["step"]: {k: v for k, v in r.items() if k.startswith("curriculum/")} for r in rows}

    assert curriculum_rows(config.run_dir) == curriculum_rows(straight.run_dir)
    assert max(r["curriculum/replay_share"] for r in curriculum_rows(straight.run_dir).values()) > 0


def test_two_launched_processes_plan_whole_groups_and_keep_the_same_scores(tmp_path):
    """`accelerate launch` of two CPU ranks (tests/curriculum_worker.py): the scores are gathered, so both ranks
    hold the same curriculum after every rollout and their rows form whole groups of one task."""
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port",
        str(free_port()),
        "-m",
        "tests.curriculum_worker",
        str(tmp_path),
    ]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    assert done.returncode == 0, f"accelerate launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["states"] == ranks[1]["states"] and len(ranks[0]["states"]) == 3
    assert len(ranks[0]["states"][-1]["tasks"]) >= 3
    for rows0, rows1 in zip(ranks[0]["played"], ranks[1]["played"], strict=True):
        whole = rows0 + rows1
        assert len(rows0) == 3 and whole[0::2] == whole[1::2]  # the middle group spans both ranks
