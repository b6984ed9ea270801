"""Non-finite loss, reward or gradient: the step is skipped with weights and optimizer state unchanged, a
counter is logged, the run aborts after `rl.max_nonfinite_steps` in a row, and no checkpoint is ever
written with non-finite weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from rlft import stages
from rlft.algorithms.checkpoint_folders import list_checkpoints
from rlft.algorithms.checkpointing import NonFiniteError, ResumableTrainerMixin
from rlft.core.episode import Episode
from tests.test_resume import make_config


class Snapshots(TrainerCallback):
    """Parameters and Adam step counts after every optimizer step (step 0 = before training)."""

    def __init__(self):
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.adam_steps: dict[int, float] = {}
        self.trainer = None

    def _take(self, step: int, model, optimizer=None) -> None:
        self.params[step] = {k: v.detach().clone() for k, v in model.named_parameters()}
        if optimizer is not None:
            states = [s for s in optimizer.state.values() if "step" in s]
            self.adam_steps[step] = float(states[0]["step"]) if states else 0.0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(0, model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._take(state.global_step, model, optimizer)


def run(tmp_path, monkeypatch, max_steps: int = 4, max_nonfinite: int = 3):
    config = make_config(tmp_path, "grpo")
    config.rl.trainer.update({"max_steps": max_steps, "save_steps": 100})
    config.rl.max_nonfinite_steps = max_nonfinite
    snapshots = Snapshots()
    return config, snapshots


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def logged(config, key: str) -> list:
    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if r["stage"] == "rl" and key in r]


def assert_only_step_skipped(snapshots: Snapshots, skipped: set[int], max_steps: int) -> None:
    for step in range(1, max_steps + 1):
        moved = changed(snapshots.params[step - 1], snapshots.params[step])
        assert moved == (step not in skipped), f"step {step}"
        advanced = snapshots.adam_steps[step] > snapshots.adam_steps.get(step - 1, 0.0)
        assert advanced == (step not in skipped), f"optimizer state at step {step}"


def test_nan_loss_step_is_skipped_and_counted(tmp_path, monkeypatch):
    config, snapshots = run(tmp_path, monkeypatch)
    original = ResumableTrainerMixin.training_step

    def poisoned(self, model, inputs, num_items_in_batch=None):
        loss = original(self, model, inputs, num_items_in_batch)
        if self.state.global_step == 1:  # the second optimizer step
            self._bad_loss = "non-finite loss"
            return loss * float("nan")
        return loss

    monkeypatch.setattr(ResumableTrainerMixin, "training_step", poisoned)
    stages.run_rl(config, callbacks=[snapshots])
    assert_only_step_skipped(snapshots, {2}, 4)
    assert logged(config, "nonfinite/skipped_total") == [0.0, 1.0, 1.0, 1.0]
    assert logged(config, "nonfinite/skipped_step") == [0.0, 1.0, 0.0, 0.0]


def test_nan_gradient_step_is_skipped(tmp_path, monkeypatch):
    config, snapshots = run(tmp_path, monkeypatch)

    class NanGradAtStep3(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                param = next(p for p in model.parameters() if p.requires_grad)
                self.handle = param.register_hook(lambda g: g * float("nan"))
            elif hasattr(self, "handle"):
                self.handle.remove()
                del self.handle

    stages.run_rl(config, callbacks=[snapshots, NanGradAtStep3()])
    assert_only_step_skipped(snapshots, {3}, 4)
    assert logged(config, "nonfinite/skipped_total")[-1] == 1.0


def test_nan_reward_skips_the_steps_of_its_rollout_batch(tmp_path, monkeypatch):
    config, snapshots = run(tmp_path, monkeypatch)
    original = Episode.end_action
    calls = {"n": 0}

    def nan_reward(self, text, rewards):
        calls["n"] += 1
        if calls["n"] == 30:  # an env turn inside the second rollout batch (4 episodes x 6 turns each)
            rewards = {k: float("nan") for k in rewards}
        return original(self, text, rewards)

    monkeypatch.setattr(Episode, "end_action", nan_reward)
    stages.run_rl(config, callbacks=[snapshots])
    assert_only_step_skipped(snapshots, {2}, 4)


def test_abort_after_max_nonfinite_steps_in_a_row_and_no_checkpoint(tmp_path, monkeypatch):
    config, snapshots = run(tmp_path, monkeypatch, max_nonfinite=2)
    config.rl.trainer["save_steps"] = 1
    original = ResumableTrainerMixin.training_step

    def always_nan(self, model, inputs, num_items_in_batch=None):
        loss = original(self, model, inputs, num_items_in_batch)
        self._bad_loss = "non-finite loss"
        return loss * float("nan")

    monkeypatch.setattr(ResumableTrainerMixin, "training_step", always_nan)
    with pytest.raises(NonFiniteError, match=r"2 optimizer steps in a row skipped.*rl.max_nonfinite_steps"):
        stages.run_rl(config, callbacks=[snapshots])
    assert not changed(snapshots.params[0], snapshots.params[1])  # the first skipped step left weights alone
    assert [p.name for p in list_checkpoints(config.run_dir / "trainer" / "rl")] == ["checkpoint-1"]
    assert not (config.run_dir / "checkpoints" / "rl").exists()  # no final policy from an aborted run


def test_checkpoint_with_nonfinite_weights_is_refused(tmp_path, monkeypatch):
    config, _ = run(tmp_path, monkeypatch, max_steps=2)
    config.rl.trainer["save_steps"] = 1

    class Corrupt(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = math.inf

    with pytest.raises(NonFiniteError, match="refusing to save a checkpoint at step 2"):
        stages.run_rl(config, callbacks=[Corrupt()])
    output_dir = config.run_dir / "trainer" / "rl"
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-1"]
    assert not (output_dir / ".staging" / "checkpoint-2").exists()


def test_ppo_nan_value_skips_every_step_its_rollout_batch_serves(tmp_path, monkeypatch):
    from rlft.algorithms.ppo import PPOTrainer

    config = make_config(tmp_path, "ppo")  # a rollout batch serves 4 steps (2 epochs x 2 minibatches)
    config.rl.trainer.update({"max_steps": 8, "save_steps": 100})
    config.rl.max_nonfinite_steps = 5
    snapshots = Snapshots()
    original = PPOTrainer.rollout_values
    calls = {"n": 0}

    def nan_values(self, batch):
        values, bootstrap = original(self, batch)
        calls["n"] += 1
        return (values * float("nan"), bootstrap) if calls["n"] == 1 else (values, bootstrap)

    monkeypatch.setattr(PPOTrainer, "rollout_values", nan_values)
    stages.run_rl(config, callbacks=[snapshots])
    assert_only_step_skipped(snapshots, {1, 2, 3, 4}, 8)
    assert logged(config, "nonfinite/skipped_total")[-1] == 4.0
