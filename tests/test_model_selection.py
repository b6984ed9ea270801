"""Model selection that does not peek at the test set (issue 16, item 5): RL evaluates on validation seeds,
keeps the checkpoint with the best validation success (eval.keep_best), warns when validation success falls
below its start, and `rlft eval` reports that checkpoint as rl_best with its step."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import yaml

from rlft import cli, stages
from rlft.rollout.evaluation import held_out_seeds
from rlft.stages import eval as stage_eval
from rlft.stages import rl as stage_rl
from rlft.stages.common import env_factory
from tests.conftest import tiny_config


def summary(success: float) -> dict[str, float]:
    """An evaluate_policy summary with every key the stages read."""
    keys = ("success", "success_ci_low", "success_ci_high", "return", "return_ci_low", "return_ci_high")
    return {**dict.fromkeys(keys, success), "turns": 1.0, "episodes": 4.0}


def rl_config(tmp_path, **eval_section):
    return tiny_config(
        output_dir=str(tmp_path),
        rl={
            "init_from": "base",
            "trainer": {"max_steps": 4, "num_generations": 2, "per_device_train_batch_size": 4},
        },
        rollout={"num_envs": 4, "max_action_tokens": 3},
        eval={"episodes": 8, "batch_size": 4, "during_episodes": 4, "every_steps": 1, **eval_section},
    )


def test_validation_seeds_never_intersect_the_test_seeds(tmp_path):
    config = rl_config(tmp_path, episodes=50, during_episodes=50)
    validation = stage_rl.validation_seeds(config)
    test = held_out_seeds(env_factory(config), config.env, config.eval)
    assert len(validation) == 50 and len(test) == 50
    assert not set(validation) & set(test)
    assert min(validation) >= config.eval.validation_seed_start > max(test)


def test_the_best_checkpoint_is_the_one_with_the_highest_validation_success(tmp_path, monkeypatch):
    """Scripted validation successes for steps 0..4; step 2's is the best, so rl_best is step 2's policy. No
    test seed is played during RL, and `rlft eval` names the step."""
    config = rl_config(tmp_path, keep_best=True)
    scripted = iter([0.25, 0.5, 0.75, 0.5, 0.25])
    played, validation = [], stage_rl.validation_seeds(config)

    def evaluate(engine, seeds, batch_size, seed=0):
        played.extend(seeds)
        # the headline decoding on the validation seeds is what selection reads; the training tasks and the
        # other decoding (rlft.stages.generalisation) are played too
        headline = list(seeds) == validation and engine.settings.greedy == config.eval.greedy
        return summary(next(scripted) if headline else 0.0), []

    monkeypatch.setattr(stage_rl, "evaluate_policy", evaluate)
    stages.run_rl(config)
    test = held_out_seeds(env_factory(config), config.env, config.eval)
    assert played and not set(played) & set(test)
    best = config.run_dir / "checkpoints" / "rl_best"
    selection = json.loads((best / "selection.json").read_text())
    assert selection["step"] == 2 and selection["validation_success"] == 0.75
    assert (best / "config.json").is_file() and not (config.run_dir / "checkpoints" / ".staging").exists()

    monkeypatch.setattr(stage_eval, "evaluate_policy", lambda *a, **k: (summary(0.5), []))
    results = stages.run_eval(config, expert=False)
    assert list(results["policies"]) == ["untrained", "rl", "rl_best"]  # init_from base: no sft checkpoint
    assert results["policies"]["rl_best"]["selection"]["step"] == 2
    assert (
        json.loads((config.run_dir / "eval.json").read_text())["policies"]["rl_best"]["selection"]["step"]
        == 2
    )
    assert "| rl_best (step 2) |" in stage_eval.format_table(results)


def fake_trainer():
    return SimpleNamespace(accelerator=SimpleNamespace(num_processes=1, is_main_process=True))


@pytest.mark.parametrize(
    ("successes", "warns"),
    [([0.8, 0.74], True), ([0.8, 0.76, 0.9], False), ([0.8, 0.75], False), ([0.5, 0.9, 0.3], True)],
)
def test_a_validation_regression_past_the_margin_warns(tmp_path, caplog, successes, warns):
    config = rl_config(tmp_path)  # eval.regression_margin = 0.05 by default
    selection = stage_rl.ModelSelection(config, fake_trainer())
    with caplog.at_level(logging.WARNING, logger=stage_rl.__name__):
        for step, success in enumerate(successes):
            selection(step, {"eval/success": success})
    warnings = [r.getMessage() for r in caplog.records if "regression_margin" in r.getMessage()]
    assert len(warnings) == (1 if warns else 0)
    if warns:
        assert "rl.trainer.learning_rate" in warnings[0] and "eval.keep_best" in warnings[0]


def test_the_regression_warning_names_the_checkpoint_keep_best_already_kept(tmp_path, caplog, monkeypatch):
    config = rl_config(tmp_path, keep_best=True)
    monkeypatch.setattr(stage_rl, "save_final", lambda *args, **kwargs: None)  # no trainer to save from
    selection = stage_rl.ModelSelection(config, fake_trainer())
    with caplog.at_level(logging.WARNING, logger=stage_rl.__name__):
        for step, success in [(0, 0.65), (3, 0.68), (6, 0.53)]:
            selection(step, {"eval/success": success})
    (warning,) = [r.getMessage() for r in caplog.records if "regression_margin" in r.getMessage()]
    assert "validation success 0.530 at step 6" in warning and "first, 0.650" in warning
    assert (
        "eval.keep_best keeps the best so far (step 3, validation success 0.680) as checkpoints/rl_best"
        in warning
    )


@pytest.mark.parametrize(
    ("greedy", "warns"),
    [
        ([0.64, 0.64, 0.64, 0.64], True),
        ([0.64, 0.64, 0.64], False),
        ([0.64, 0.64, 0.65, 0.64], False),
        ([0.64] * 6, True),
    ],
)
def test_a_greedy_success_that_never_moves_warns_once(tmp_path, caplog, greedy, warns):
    config = rl_config(tmp_path)
    selection = stage_rl.ModelSelection(config, fake_trainer())
    with caplog.at_level(logging.WARNING, logger=stage_rl.__name__):
        for step, value in enumerate(greedy):
            selection(10 * step, {"eval/success": 0.4 + 0.01 * step, "eval/val_success_greedy": value})
    warnings = [r.getMessage() for r in caplog.records if "greedy decision" in r.getMessage()]
    assert len(warnings) == (1 if warns else 0)
    if warns:
        assert "0.640 at each of 4 validations (up to step 30)" in warnings[0]
        assert "rl.trainer.learning_rate" in warnings[0]


def test_overlapping_validation_and_test_seed_ranges_exit_2(tmp_path, capsys):
    raw = {
        "name": "overlap",
        "output_dir": str(tmp_path),
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
        "env": {"id": "rlft/FrozenLakeRandom-v0"},
        "eval": {"seed_start": 10_000_000, "validation_seed_start": 10_000_100},
    }
    path = tmp_path / "overlap.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "eval.validation_seed_start" in err and "eval.seed_start" in err
    raw["eval"]["validation_seed_start"] = 30_000_000
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["validate", "--config", str(path)]) == 0


def test_keep_best_without_every_steps_is_a_config_error(tmp_path):
    with pytest.raises(Exception, match="eval.keep_best needs eval.every_steps"):
        tiny_config(output_dir=str(tmp_path), eval={"keep_best": True})
