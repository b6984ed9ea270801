"""Exact resume: a run killed at step k and resumed equals a run that went straight to N steps.

Per-step loss, reward, KL and learning rate are equal, the final parameters (and PPO's critic) are equal,
and the env seeds played are the same, in the same order: nothing repeated or skipped. Kill points: in the
middle of an epoch, at an epoch boundary, at N - 1 (after its checkpoint was written), and while a
checkpoint is being written (the half-written one must be ignored). The resumed half runs in a fresh trainer
after every global RNG has been scrambled, so nothing carries over in memory.

The records are those of the straight run too: every step once in metrics.jsonl and transcripts.jsonl (the rows a
stopped run logged after its checkpoint are dropped on resume). A run whose checkpoint is at max_steps (a kill
during the final save) trains no step on resume, and saves the same final weights.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from rlft import stages
from rlft.algorithms.checkpoint_folders import (
    COMPLETE,
    STAGING,
    is_complete,
    latest_complete,
    list_checkpoints,
)
from rlft.algorithms.grpo import EpisodeRollout, seeds_of
from rlft.runtime.resume_logs import truncate_log
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


# What differs between two runs of the same steps: wall-clock times and rates, and the end-of-training summary
# of the call (its mean loss is over the steps that call trained).
UNTIMED = (
    "time",
    "step_time",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
)


def log_rows(run_dir: Path, name: str) -> list[dict]:
    """The rl stage's rows of a JSONL log in file order, without their timings."""
    path = run_dir / name
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [{k: v for k, v in row.items() if k not in UNTIMED} for row in rows if row.get("stage") == "rl"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / "rl" / "model.safetensors"))
    critic = run_dir / "checkpoints" / "rl" / "critic"
    if critic.is_dir():
        tensors.update({f"critic.{k}": v for k, v in load_file(str(critic / "model.safetensors")).items()})
        tensors.update({f"head.{k}": v for k, v in load_file(str(critic / "value_head.safetensors")).items()})
    return tensors


_straight: dict[str, tuple] = {}
_straight_logs: dict[str, dict[str, list[dict]]] = {}
LOGS = ("metrics.jsonl", "transcripts.jsonl")


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
        _straight_logs[algorithm] = {name: log_rows(config.run_dir, name) for name in LOGS}
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
    algorithm = straight[0].rl.algorithm
    for name in LOGS:  # every step once, as in the straight run (the replayed steps' old rows were dropped)
        assert log_rows(resumed_dir, name) == _straight_logs[algorithm][name], name


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


def test_resume_at_max_steps_trains_no_step_and_saves_the_same_final_weights(tmp_path, monkeypatch):
    """max_steps 5 is not a whole number of epochs (2 steps each): resuming at checkpoint-5, transformers would
    enter epoch 3 and train a step 6. A kill during the final save leaves checkpoint-5 and no checkpoints/rl."""
    from rlft.stages import rl as stage_rl

    config = make_config(tmp_path, "grpo")
    config.rl.trainer["max_steps"] = 5
    original = stage_rl.save_trained

    def dying_final_save(trainer, path):
        (Path(path) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise Killed("final save")

    monkeypatch.setattr(stage_rl, "save_trained", dying_final_save)
    with pytest.raises(Killed):
        stages.run_rl(config)
    monkeypatch.setattr(stage_rl, "save_trained", original)
    output_dir = config.run_dir / "trainer" / "rl"
    assert latest_complete(output_dir).name == "checkpoint-5"
    assert not (config.run_dir / "checkpoints" / "rl").exists()  # the half-written save stayed in staging
    stopped = log_rows(config.run_dir, "metrics.jsonl")
    scramble_rngs()
    stages.run_rl(config, resume=True)
    assert [p.name for p in list_checkpoints(output_dir)][-1] == "checkpoint-5"  # no step 6
    last = load_file(str(output_dir / "checkpoint-5" / "model.safetensors"))
    final = weights(config.run_dir)
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in last)
    resumed = log_rows(config.run_dir, "metrics.jsonl")
    assert [r["step"] for r in resumed if "loss" in r] == [1, 2, 3, 4, 5]
    assert resumed == stopped  # the stopped call's summary row replaced by the resumed call's, nothing else
    assert not (config.run_dir / "checkpoints" / ".staging").exists()


def test_a_run_folder_holds_no_stray_files_and_weights_are_readable_like_the_rest(tmp_path_factory):
    config, *_ = straight_run(tmp_path_factory, "grpo")
    output_dir = config.run_dir / "trainer" / "rl"
    assert not (output_dir / STAGING).exists()  # TRL's model card moved out, the staging folder removed
    assert (output_dir / "README.md").is_file()
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {
        str(p.relative_to(config.run_dir)): stat.S_IMODE(p.stat().st_mode)
        for p in config.run_dir.rglob("*")
        if p.is_file() and ("checkpoint-" in str(p) or "checkpoints/rl" in str(p))
    }
    weight_files = [name for name in modes if name.endswith(".safetensors")]
    assert weight_files and {modes[name] for name in weight_files} == {0o666 & ~umask}
    assert {modes[name] for name in weight_files} == {modes[name] for name in modes if name.endswith(".json")}


def test_truncate_log_drops_what_the_stage_logged_after_the_checkpoint(tmp_path):
    rows = [
        {"stage": "sft", "step": 9, "loss": 1.0},  # another stage: kept whatever its step
        {"stage": "rl", "step": 1, "loss": 0.5},
        {"stage": "rl", "step": 2, "loss": 0.4},
        {"stage": "rl", "step": 3, "loss": 0.3},  # replayed after a resume from checkpoint-2: dropped
        {"stage": "rl", "step": 2, "train_runtime": 8.0, "train_loss": 0.4},  # the stopped call's summary
        {"stage": "rl", "step": None, "note": "no step"},  # kept
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n")
    assert truncate_log(path, "rl", 2) == 2
    kept = path.read_text().splitlines()
    assert [json.loads(line) for line in kept[:-1]] == [rows[0], rows[1], rows[2], rows[5]]
    assert kept[-1] == "not json"  # a line it cannot read is not its to drop
    assert truncate_log(path, "rl", 2) == 0 and not list(tmp_path.glob(".*"))  # no temporary file left


def resumable_copy(tmp_path, tmp_path_factory):
    """The straight GRPO run (checkpoint-6 at max_steps) copied under tmp_path, and a config file for it."""
    import shutil

    from rlft.config.schema import save_config

    straight_config, *_ = straight_run(tmp_path_factory, "grpo")
    config = make_config(tmp_path, "grpo")
    shutil.copytree(straight_config.run_dir, config.run_dir)
    save_config(config, config.run_dir / "config.yaml")  # the copy's own output_dir
    save_config(config, tmp_path / "config.yaml")
    return config


def test_an_override_that_cannot_change_mid_run_is_refused_naming_the_key(
    tmp_path, tmp_path_factory, monkeypatch, capsys
):
    from rlft import cli
    from rlft.stages import rl as stage_rl

    config = resumable_copy(tmp_path, tmp_path_factory)
    saved = (config.run_dir / "config.yaml").read_bytes()

    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(stage_rl, "load_trainable", trap)
    # The override after --resume is an override, not --resume's checkpoint folder.
    argv = ["train", "--config", str(tmp_path / "config.yaml"), "--resume", "rl.trainer.learning_rate=0.02"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume: rl.trainer.learning_rate cannot change when a run is resumed: it was 0.01" in err
    assert "Resume with rl.trainer.learning_rate=0.01" in err
    assert (config.run_dir / "config.yaml").read_bytes() == saved  # nothing written
    assert not (config.run_dir / "resumes.jsonl").exists()


def test_an_override_that_may_change_on_resume_is_applied_and_recorded_with_the_step(
    tmp_path, tmp_path_factory, capsys
):
    from rlft import cli
    from rlft.config.schema import load_config

    config = resumable_copy(tmp_path, tmp_path_factory)
    argv = ["train", "--config", str(tmp_path / "config.yaml"), "--resume", "tracking.transcript_samples=2"]
    assert cli.main(argv) == 0
    (record,) = [json.loads(line) for line in (config.run_dir / "resumes.jsonl").read_text().splitlines()]
    assert record["step"] == 6 and record["checkpoint"].endswith("checkpoint-6")
    assert record["changes"] == {"tracking.transcript_samples": {"from": 4, "to": 2}}
    assert (
        load_config(config.run_dir / "config.yaml").tracking.transcript_samples == 2
    )  # config.yaml tells it
    assert [p.name for p in list_checkpoints(config.run_dir / "trainer" / "rl")][-1] == "checkpoint-6"
