"""Exact resume: a run killed at step k and resumed equals a run that went straight to N steps.

Per-step loss, reward, KL and learning rate are equal, the final parameters (and PPO's critic) are equal,
and the env seeds played are the same, in the same order: nothing repeated or skipped. Kill points: in the
middle of an epoch, at an epoch boundary, at N - 1 (after its checkpoint was written), and while a
checkpoint is being written (the half-written one must be ignored). The resumed half runs in a fresh trainer
after every global RNG has been scrambled, so nothing carries over in memory.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from rlft import stages
from rlft.algorithms.checkpointing import COMPLETE, STAGING, is_complete, latest_complete, list_checkpoints
from rlft.algorithms.grpo import EpisodeRollout, seeds_of
from tests.conftest import tiny_config

COMPARED = ("loss", "reward", "kl", "learning_rate", "episode/env_steps_total")

GRPO = {
    "max_steps": 6,
    "num_generations": 2,
    "per_device_train_batch_size": 4,
    "beta": 0.04,
    "learning_rate": 1e-2,
}  # 4 train seeds, 2 per step: an epoch is 2 steps
PPO = {
    "max_steps": 8,
    "per_device_train_batch_size": 2,
    "kl_coef": 0.05,
    "target_kl": 0.01,
    "learning_rate": 1e-2,
}  # one rollout batch of 4 seeds serves 2 epochs x 2 minibatches: an epoch is 4 steps


class Killed(Exception):
    pass


class KillAt(TrainerCallback):
    """Stops the process at step k: before its checkpoint is written, or just after."""

    def __init__(self, step: int, after_save: bool):
        self.step, self.after_save = step, after_save

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and not self.after_save:
            raise Killed(self.step)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step and self.after_save:
            raise Killed(self.step)


def make_config(out: Path, algorithm: str):
    trainer = {
        **(GRPO if algorithm == "grpo" else PPO),
        "logging_steps": 1,
        "save_steps": 1,
        "save_total_limit": 3,
    }
    return tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(out),
        name="resume",
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 6, "train_seeds": {"start": 0, "count": 4}},
        rl={"algorithm": algorithm, "init_from": "base", "trainer": trainer},
        rollout={"num_envs": 4, "max_action_tokens": 3},
    )


@pytest.fixture
def seed_log(monkeypatch):
    """Every rollout: (global step when it was played, its env seeds)."""
    log: list[tuple[int, list[int]]] = []
    original = EpisodeRollout.play

    def recording(self, prompts, trainer):
        log.append((trainer.state.global_step, seeds_of(prompts)))
        return original(self, prompts, trainer)

    monkeypatch.setattr(EpisodeRollout, "play", recording)
    return log


def scramble_rngs() -> None:
    torch.manual_seed(987654)
    np.random.seed(987654)
    random.seed(987654)


def per_step_metrics(run_dir: Path) -> dict[int, dict]:
    steps: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["stage"] == "rl" and "loss" in record:
            steps[record["step"]] = {
                k: record.get(k) for k in COMPARED
            }  # a replayed step: the last one counts
    return steps


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / "rl" / "model.safetensors"))
    critic = run_dir / "checkpoints" / "rl" / "critic"
    if critic.is_dir():
        tensors.update({f"critic.{k}": v for k, v in load_file(str(critic / "model.safetensors")).items()})
        tensors.update({f"head.{k}": v for k, v in load_file(str(critic / "value_head.safetensors")).items()})
    return tensors


_straight: dict[str, tuple] = {}


def straight_run(tmp_path_factory, algorithm: str):
    """Run A: straight to N steps (computed once per algorithm)."""
    if algorithm not in _straight:
        log: list = []
        original = EpisodeRollout.play

        def recording(self, prompts, trainer):
            log.append((trainer.state.global_step, seeds_of(prompts)))
            return original(self, prompts, trainer)

        EpisodeRollout.play = recording
        try:
            config = make_config(tmp_path_factory.mktemp(f"straight_{algorithm}"), algorithm)
            stages.run_rl(config)
        finally:
            EpisodeRollout.play = original
        _straight[algorithm] = (config, per_step_metrics(config.run_dir), weights(config.run_dir), log)
    return _straight[algorithm]


def assert_same_run(straight, resumed_dir: Path, resumed_seeds: list, n_steps: int) -> None:
    _, metrics_a, weights_a, seeds_a = straight
    metrics_b = per_step_metrics(resumed_dir)
    assert sorted(metrics_a) == list(range(1, n_steps + 1))
    assert sorted(metrics_b) == sorted(metrics_a)
    for step in metrics_a:
        assert metrics_b[step] == metrics_a[step], f"step {step}"
    weights_b = weights(resumed_dir)
    assert weights_b.keys() == weights_a.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    assert resumed_seeds == seeds_a


CASES = [  # (algorithm, kill step, after its checkpoint was written)
    ("grpo", 3, False),  # mid-epoch: resumes from checkpoint 2
    ("grpo", 2, True),  # at the epoch boundary
    ("grpo", 5, True),  # at N - 1
    ("ppo", 3, True),  # mid-epoch and mid rollout batch: the unconsumed minibatches come from the checkpoint
    ("ppo", 4, True),  # epoch boundary
    ("ppo", 7, True),  # at N - 1
]


@pytest.mark.parametrize(("algorithm", "kill", "after_save"), CASES)
def test_killed_and_resumed_run_equals_straight_run(
    algorithm, kill, after_save, tmp_path, tmp_path_factory, seed_log
):
    straight = straight_run(tmp_path_factory, algorithm)
    seed_log.clear()
    config = make_config(tmp_path, algorithm)
    with pytest.raises(Killed):
        stages.run_rl(config, callbacks=[KillAt(kill, after_save)])
    checkpoint = latest_complete(config.run_dir / "trainer" / "rl")
    resumed_at = kill if after_save else kill - 1
    assert checkpoint.name == f"checkpoint-{resumed_at}"
    played_before = [entry for entry in seed_log if entry[0] < resumed_at]
    seed_log.clear()
    scramble_rngs()
    stages.run_rl(config, resume=True)
    n_steps = config.rl.trainer["max_steps"]
    assert_same_run(straight, config.run_dir, played_before + seed_log, n_steps)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_kill_during_a_save_resumes_from_the_previous_complete_checkpoint(
    algorithm, tmp_path, tmp_path_factory, seed_log, monkeypatch
):
    from transformers import Trainer

    straight = straight_run(tmp_path_factory, algorithm)
    seed_log.clear()
    config = make_config(tmp_path, algorithm)
    kill = 4 if algorithm == "grpo" else 6
    original = Trainer._save_rng_state

    def dying_save(self, output_dir):
        if self.state.global_step == kill:
            raise Killed(kill)  # weights and optimizer are on disk, the rest is not
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dying_save)
    with pytest.raises(Killed):
        stages.run_rl(config)
    monkeypatch.setattr(Trainer, "_save_rng_state", original)
    output_dir = config.run_dir / "trainer" / "rl"
    half_written = output_dir / STAGING / f"checkpoint-{kill}"
    assert (half_written / "model.safetensors").is_file() and not (half_written / COMPLETE).exists()
    assert not (output_dir / f"checkpoint-{kill}").exists()
    assert latest_complete(output_dir).name == f"checkpoint-{kill - 1}"
    played_before = [entry for entry in seed_log if entry[0] < kill - 1]
    seed_log.clear()
    scramble_rngs()
    stages.run_rl(config, resume=True)
    assert_same_run(straight, config.run_dir, played_before + seed_log, config.rl.trainer["max_steps"])


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path_factory):
    config, *_ = straight_run(tmp_path_factory, "grpo")
    found = list_checkpoints(config.run_dir / "trainer" / "rl")
    assert [p.name for p in found] == ["checkpoint-4", "checkpoint-5", "checkpoint-6"]  # save_total_limit 3
    assert all(is_complete(p) for p in found)


@pytest.mark.parametrize(
    ("resume", "expected"),
    [
        ("--resume", "no complete checkpoint under"),
        (None, "already holds checkpoints of an earlier RL run (checkpoint-3)"),  # a fresh start over them
        ("--resume=missing/checkpoint-3", "no such folder"),
        ("--resume=INCOMPLETE", "the checkpoint is incomplete"),
    ],
)
def test_bad_resume_fails_before_any_model_loads(resume, expected, tmp_path, monkeypatch, capsys):
    from rlft import cli
    from rlft.config.schema import save_config

    config = make_config(tmp_path, "grpo")
    save_config(config, tmp_path / "config.yaml")
    incomplete = config.run_dir / "trainer" / "rl" / "checkpoint-3"
    incomplete.mkdir(parents=True)
    (incomplete / "model.safetensors").write_bytes(b"half")

    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded")

    from rlft.stages import rl as stage_rl

    monkeypatch.setattr(stage_rl, "load_trainable", trap)
    monkeypatch.setattr(stage_rl, "ensure_base_checkpoint", trap)
    monkeypatch.chdir(tmp_path)
    flag = resume and resume.replace("INCOMPLETE", str(incomplete))
    flags = [flag] if flag else []
    code = cli.main(["train", "--config", str(tmp_path / "config.yaml"), *flags])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert sorted(p.name for p in incomplete.iterdir()) == ["model.safetensors"]  # left as it was
