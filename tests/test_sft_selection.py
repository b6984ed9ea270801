"""Validation during SFT and model selection on it (sft.eval_every_steps, sft.keep_best; rlft.stages.sft_selection)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlft import cli
from rlft.errors import ConfigError
from rlft.runtime.tracking import read_metrics
from tests.conftest import tiny_config
from tests.test_user_experts import env_section, write_config


def selecting_config(tmp_path, **sft):
    # 8 demos at batch 4: 2 optimizer steps per epoch, 3 epochs = 6 steps; validation at steps 2, 4 and 6.
    return tiny_config(
        output_dir=str(tmp_path),
        seed=0,
        sft={
            "demos": {"episodes": 8, "epsilon": 0.0},
            "trainer": {"num_train_epochs": 3, "per_device_train_batch_size": 4, "save_total_limit": 3},
            "eval_every_steps": 2,
            **sft,
        },
        eval={"during_episodes": 4, "batch_size": 4},
        rollout={"num_envs": 4, "max_action_tokens": 3},
    )


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_sft_validation_plays_the_validation_tasks_and_scores_the_experts_demos(tmp_path):
    from rlft import stages
    from rlft.stages.generalisation import validation_seeds

    config = selecting_config(tmp_path)
    path = stages.run_sft(config)
    logged = [r for r in read_metrics(config.run_dir) if "eval_success" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    for record in logged:
        assert 0.0 <= record["eval_success"] <= 1.0
        assert record["eval_val_success_greedy"] == record["eval_success"]  # eval.greedy: the headline
    losses = [r["eval_loss"] for r in read_metrics(config.run_dir) if "eval_loss" in r]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)  # the expert's validation demos, scored
    assert losses[-1] < losses[0]  # imitation of the expert on unseen tasks improves over SFT
    assert not set(validation_seeds(config)) & set(
        range(config.eval.seed_start, config.eval.seed_start + 200)
    )
    assert not (path / "selection.json").exists()  # no keep_best: the last step is saved, nothing selected


def test_keep_best_saves_the_step_with_the_best_validation_success_not_the_last(tmp_path, monkeypatch):
    from rlft import stages
    from rlft.stages import sft_selection

    scripted = {2: 0.25, 4: 0.75, 6: 0.5}  # step 4 is the best; the last (6) is worse

    class Scripted:
        def __init__(self, config, tokenizer, validation, training, evaluate_policy, current_step):
            self.current_step = current_step

        def __call__(self, policy):
            return {"success": scripted[self.current_step()], "return": 0.0}

    monkeypatch.setattr(sft_selection, "GeneralisationEvaluation", Scripted)
    config = selecting_config(tmp_path, keep_best=True)
    path = stages.run_sft(config)
    selection = json.loads((path / "selection.json").read_text())
    losses = {r["step"]: r["eval_loss"] for r in read_metrics(config.run_dir) if "eval_loss" in r}
    assert selection == {
        "stage": "sft",
        "step": 4,
        "validation_success": 0.75,
        "validation_loss": losses[4],
        "last_step": 6,
        "last_validation_success": 0.5,
    }
    assert (
        "**Selected**: step 4 of 6, validation success 0.75" in (path / "README.md").read_text()
    )  # the card
    saved, trainer_dir = weights(path), config.run_dir / "trainer" / "sft"
    best, last = weights(trainer_dir / "checkpoint-4"), weights(trainer_dir / "checkpoint-6")
    assert all(torch.equal(saved[k], best[k]) for k in best)
    assert any(not torch.equal(saved[k], last[k]) for k in last)  # the last step's weights were not kept


def test_keep_best_breaks_a_tie_of_validation_success_by_the_lower_loss_on_the_experts_demos(
    tmp_path, monkeypatch
):
    from rlft import stages
    from rlft.stages import sft_selection

    class Tied:  # the same validation success at every step: the selection falls to eval_loss
        def __init__(self, *args):
            pass

        def __call__(self, policy):
            return {"success": 0.5, "return": 0.0}

    monkeypatch.setattr(sft_selection, "GeneralisationEvaluation", Tied)
    config = selecting_config(tmp_path, keep_best=True)
    path = stages.run_sft(config)
    losses = {r["step"]: r["eval_loss"] for r in read_metrics(config.run_dir) if "eval_loss" in r}
    selection = json.loads((path / "selection.json").read_text())
    assert selection["step"] == min(
        losses, key=losses.get
    )  # not the earliest, transformers' default on a tie
    assert selection["validation_loss"] == min(losses.values())


def test_keep_best_without_validation_is_a_config_error():
    with pytest.raises(ConfigError, match="sft.keep_best needs sft.eval_every_steps"):
        tiny_config(sft={"keep_best": True})


def test_sft_validation_on_an_env_without_an_expert_fails_validate(tmp_path, capsys):
    env = env_section(env_id="tests.user_grid_env:NoExpertGridEnv")
    path = write_config(tmp_path, env, sft={"demos": {"source": "jsonl", "path": str(tmp_path / "d.jsonl")}})
    raw = json.loads(path.read_text())
    raw["sft"]["eval_every_steps"] = 10
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"instructions": "Reach G.", "turns": [{"observation": "cell 0", "action": "up"}]}) + "\n"
    )
    path.write_text(json.dumps(raw))
    assert cli.main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "key 'sft.eval_every_steps' = 10" in err and "has no expert" in err.lower()
