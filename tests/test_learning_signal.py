"""Learning signal (issue 16, item 1): diagnostics by hand, no optimizer step without signal, no false metric.

The statistics are checked against hand-computed numbers; the skip through a real GRPO run whose minibatches get
hand-made advantages: all zero leaves the weights and Adam's state unchanged, one non-zero row steps, and with
`rl.skip_steps_without_signal: false` the all-zero step moves the weights (Adam's momentum) as it did before.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from rlft import stages
from rlft.algorithms.checkpointing import STATE_FILE, ResumableTrainerMixin
from rlft.algorithms.learning_signal import (
    FALSE_MULTI_TURN_METRICS,
    LearningSignal,
    advantage_sums,
    drop_false_metrics,
    episode_end_sums,
    has_signal,
    regularised,
    signal_metrics,
    zero_std_group_share,
)
from rlft.core.episode import Episode
from tests.test_nonfinite import Snapshots, changed, logged
from tests.test_resume import make_config


# ------------------------------------------------------------------------------------------- statistics by hand
def test_signal_metrics_by_hand():
    # GRPO: one advantage per episode, spread over its loss tokens (2, 1 and 3 of them).
    advantages = torch.tensor([0.0, 1.0, -2.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float)
    metrics = signal_metrics(advantage_sums(advantages, mask))
    # tokens: 0 0 | 1 | -2 -2 -2 -> 6 tokens, 2 zero; mean -5/6, mean square 13/6
    assert metrics["signal/zero_advantage_episodes"] == pytest.approx(1 / 3)
    assert metrics["signal/zero_advantage_tokens"] == pytest.approx(2 / 6)
    assert metrics["signal/advantage_std"] == pytest.approx(math.sqrt(13 / 6 - 25 / 36))
    assert metrics["signal/advantage_abs_mean"] == pytest.approx(7 / 6)


def test_signal_metrics_of_per_token_advantages_skip_env_tokens_and_empty_rows():
    # PPO: (B, T) advantages; the env token (mask 0) of row 0 has a value that must not count; row 2 has no loss
    # tokens (a failed episode) and counts as no episode at all.
    advantages = torch.tensor([[0.0, 5.0, 0.0], [0.5, 0.0, -0.5], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.float)
    metrics = signal_metrics(advantage_sums(advantages, mask))
    assert metrics["signal/zero_advantage_episodes"] == pytest.approx(1 / 2)
    assert metrics["signal/zero_advantage_tokens"] == pytest.approx(3 / 5)
    assert metrics["signal/advantage_abs_mean"] == pytest.approx(1.0 / 5)
    assert metrics["signal/advantage_std"] == pytest.approx(math.sqrt(0.5 / 5))


def test_zero_std_group_share_by_hand():
    # groups of 2: [1, 1] flat, [0, 1] mixed, [failed, 2] one healthy episode (no variance), [3, 3] flat
    returns = torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), 2.0, 3.0, 3.0])
    assert zero_std_group_share(returns, 2) == pytest.approx(3 / 4)
    assert zero_std_group_share(torch.tensor([0.0, 1.0, 1.0, 1.0]), 4) == 0.0


def test_episode_end_sums_count_healthy_truncated_and_terminated_turns():
    def episode(terminated: bool, truncated: bool, turns: int, failure: str | None = None) -> Episode:
        return Episode(
            seed=0,
            prompt_ids=[1],
            action_ends=list(range(turns)),
            terminated=terminated,
            truncated=truncated,
            failure=failure,
        )

    episodes = [
        episode(True, False, 3),
        episode(False, True, 6),
        episode(True, False, 5),
        episode(True, False, 2, "x"),
    ]
    assert [e.num_turns for e in episodes] == [3, 6, 5, 2]
    assert episode_end_sums(episodes).tolist() == [3.0, 1.0, 2.0, 8.0]


def test_has_signal_reads_only_loss_tokens_and_the_value_target():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    grpo = {"completion_mask": mask, "tool_mask": torch.ones_like(mask), "advantages": torch.zeros(2)}
    assert not bool(has_signal(grpo))
    assert bool(has_signal({**grpo, "advantages": torch.tensor([0.0, -0.3])}))  # one non-zero row
    ppo = {
        "completion_mask": mask,
        "env_mask": torch.tensor([[1, 0, 0], [1, 1, 1]]),
        "advantages": torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),  # non-zero on an env token only
        "returns": torch.ones(2, 3),
        "old_values": torch.ones(2, 3),
        "value_mask": torch.ones(2, 3),
    }
    assert not bool(has_signal(ppo))
    moved = {**ppo, "returns": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.5, 1.0]])}
    assert bool(has_signal(moved))  # the critic still has a value loss
    assert not bool(has_signal({**moved, "value_mask": torch.tensor([[1, 1, 1], [1, 0, 1]])}))


def test_regularised_losses_are_never_skipped():
    class Args:
        entropy_coef = 0.0

    class Trainer:
        beta = 0.0
        args = Args()

    trainer = Trainer()
    assert not regularised(trainer)
    trainer.beta = 0.04  # GRPO's KL term (PPO sets beta to kl_coef)
    assert regularised(trainer)
    trainer.beta, trainer.args.entropy_coef = 0.0, 0.01
    assert regularised(trainer)


def test_false_multi_turn_metrics_are_dropped_and_nothing_else():
    metrics = {
        "train": {key: [1.0] for key in (*FALSE_MULTI_TURN_METRICS, "completions/mean_length")},
        "eval": {},
    }
    metrics["eval"]["completions/clipped_ratio"] = [1.0]
    drop_false_metrics(metrics)
    assert metrics == {"train": {"completions/mean_length": [1.0]}, "eval": {}}


def test_summary_state_and_warning():
    signal = LearningSignal(steps=10, no_signal_steps=7, skipped_steps=6, rollouts=4, advantage_std_sum=2.0)
    signal.first_success, signal.last_success = 0.5, 0.75
    assert signal.summary() == (
        "learning signal: 10 optimizer steps, 7 (70%) without signal, 6 skipped (rl.skip_steps_without_signal); "
        "mean advantage std 0.5; training success 0.500 (first rollout) -> 0.750 (last)"
    )
    warning = signal.warning()
    for knob in (
        "rl.no_signal_warn_fraction = 0.5",
        "rollout.temperature",
        "rl.trainer.num_generations",
        "curriculum",
        "reward",
    ):
        assert knob in warning
    signal.configure(True, 0.7)
    assert signal.warning() is None  # 70% is not more than 70%
    restored = LearningSignal()
    restored.load_state_dict(json.loads(json.dumps(signal.state_dict())))
    assert restored.state_dict() == signal.state_dict()


# ------------------------------------------------------------------------------------------- through a GRPO run
# Hand-made advantages per optimizer step (4 rows a minibatch): one non-zero row, all zero, one non-zero row.
HAND_MADE = {0: [0.0, 1.0, 0.0, 0.0], 1: [0.0, 0.0, 0.0, 0.0], 2: [0.0, 0.0, -1.0, 0.0]}


def run_with_hand_made_advantages(tmp_path, monkeypatch, skip: bool):
    config = make_config(tmp_path, "grpo")
    config.rl.trainer.update(
        {"max_steps": 3, "save_steps": 1, "beta": 0.0}
    )  # no KL term: nothing else learns
    config.rl.skip_steps_without_signal = skip
    config.rl.no_signal_warn_fraction = 0.2
    original = ResumableTrainerMixin.on_training_minibatch

    def hand_made(self, inputs):
        advantages = inputs["advantages"]
        inputs["advantages"] = torch.tensor(HAND_MADE[self.state.global_step], dtype=advantages.dtype)
        return original(self, inputs)

    monkeypatch.setattr(ResumableTrainerMixin, "on_training_minibatch", hand_made)
    snapshots = Snapshots()
    stages.run_rl(config, callbacks=[snapshots])
    return config, snapshots


def test_a_step_without_signal_leaves_weights_and_adam_state_unchanged(tmp_path, monkeypatch, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="rlft.algorithms.learning_signal"):
        config, snapshots = run_with_hand_made_advantages(tmp_path, monkeypatch, skip=True)
    params, adam = snapshots.params, snapshots.adam_steps
    assert changed(params[0], params[1]) and adam[1] == 1.0  # one non-zero row: a step
    assert not changed(params[1], params[2]) and adam[2] == 1.0  # all zero: weights and Adam untouched
    assert changed(params[2], params[3]) and adam[3] == 2.0
    assert logged(config, "signal/no_signal_step") == [0.0, 1.0, 0.0]
    assert logged(config, "signal/skipped_steps_total") == [0.0, 1.0, 1.0]
    # The counters are in the exact-resume state of each checkpoint.
    state = json.loads((config.run_dir / "trainer" / "rl" / "checkpoint-3" / STATE_FILE).read_text())
    assert state["learning_signal"]["skipped_steps"] == 1 and state["learning_signal"]["steps"] == 3
    # End of run: the summary, and the warning (1 of 3 steps > rl.no_signal_warn_fraction = 0.2) naming the knobs.
    assert "3 optimizer steps, 1 (33%) without signal, 1 skipped" in capsys.readouterr().out
    assert any("rl.trainer.num_generations" in r.getMessage() for r in caplog.records)


def test_without_the_skip_adam_momentum_moves_the_weights_on_a_zero_gradient_step(tmp_path, monkeypatch):
    config, snapshots = run_with_hand_made_advantages(tmp_path, monkeypatch, skip=False)
    assert changed(snapshots.params[1], snapshots.params[2]) and snapshots.adam_steps[2] == 2.0
    assert logged(config, "signal/no_signal_step") == [0.0, 1.0, 0.0]
    assert logged(config, "signal/skipped_steps_total") == [0.0, 0.0, 0.0]


def test_rollout_diagnostics_are_logged_and_false_completion_metrics_are_not(tmp_path, monkeypatch):
    config, _ = run_with_hand_made_advantages(tmp_path, monkeypatch, skip=True)
    rows = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["stage"] == "rl" and "loss" in r]
    assert len(rows) == 3
    for row in rows:
        for key in FALSE_MULTI_TURN_METRICS:
            assert key not in row
        for key in (
            "signal/zero_advantage_episodes",
            "signal/zero_advantage_tokens",
            "signal/advantage_std",
            "signal/advantage_abs_mean",
            "signal/zero_std_groups",
            "episode/truncated_ratio",
            "episode/success",
        ):
            assert 0.0 <= row[key] < math.inf, key
        assert row["frac_reward_zero_std"] == pytest.approx(row["signal/zero_std_groups"])
