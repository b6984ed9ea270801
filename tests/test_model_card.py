"""Every checkpoint folder has a model card (issue 14, item 5): Hugging Face's format, the run's real numbers.

A tiny pipeline (sft -> rl with a kept best checkpoint -> eval) and a tiny reward-model ensemble write every folder
rlft saves; each card loads back with `ModelCard.load`, its metadata validates, and its numbers are eval.json's.
"""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from rlft import stages
from rlft.algorithms.checkpoint_manifest import verify, write_manifest
from rlft.runtime.tracking import read_metrics
from rlft.stages import model_card
from rlft.stages.model_card import CARD_FILE, card_files, render_card, update_cards, write_card
from tests.conftest import tiny_config

SECTIONS = ("## Model", "## Training", "## Seeds", "## Held-out results", "## Known limits")
POLICY_FOLDERS = {"untrained": "base", "sft": "sft", "rl": "rl", "rl_best": "rl_best"}


@pytest.fixture(scope="module")
def card_run(tmp_path_factory):
    """A tiny pipeline; eval.json is garbage while RL saves (a damaged file must not stop a save)."""
    config = tiny_config(
        output_dir=str(tmp_path_factory.mktemp("runs")),
        sft={
            "demos": {"source": "expert", "episodes": 8, "epsilon": 0.2},
            "trainer": {"num_train_epochs": 1, "per_device_train_batch_size": 8},
        },
        rl={"trainer": {"max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 4}},
        rollout={"num_envs": 4, "max_action_tokens": 3},
        eval={"episodes": 6, "batch_size": 6, "during_episodes": 4, "every_steps": 1, "keep_best": True},
    )
    stages.run_sft(config)
    (config.run_dir / "eval.json").write_text("{not json", encoding="utf-8")
    stages.run_rl(config)
    saved = {name: _card_text(config, name) for name in ("base", "sft", "rl", "rl_best")}
    results = stages.run_eval(config)
    return config, saved, results


def _card_text(config, folder: str) -> str:
    return (config.run_dir / "checkpoints" / folder / CARD_FILE).read_text(encoding="utf-8")


def _cell(summary: dict, key: str) -> str:
    return f"{summary[key]:.3f} [{summary[key + '_ci_low']:.3f}, {summary[key + '_ci_high']:.3f}]"


def test_every_checkpoint_folder_of_a_pipeline_has_a_card_that_loads(card_run):
    config, saved, _ = card_run
    for folder in ("base", "sft", "rl", "rl_best"):
        card = ModelCard.load(
            config.run_dir / "checkpoints" / folder / CARD_FILE, ignore_metadata_errors=False
        )
        data = card.data.to_dict()
        assert data["library_name"] == "transformers"
        kind = {"base": "untrained", "sft": "sft"}.get(folder, "grpo")
        assert data["tags"] == ["rlft", "reinforcement-learning", kind, "rlft/FrozenLakeRandom-v0"]
        assert "base_model" not in data and "datasets" not in data  # the tiny model is no hub model
        for section in SECTIONS:
            assert section in card.text, (folder, section)
    # Each exact-resume checkpoint has one too: the run's RL card, naming its step, checksummed with the weights.
    resumes = sorted((config.run_dir / "trainer" / "rl").glob("checkpoint-*"))
    assert resumes
    for folder in resumes:
        step = int(folder.name.rpartition("-")[2])
        card = ModelCard.load(folder / CARD_FILE, ignore_metadata_errors=False)
        assert card.data.to_dict()["tags"] == [
            "rlft",
            "reinforcement-learning",
            "grpo",
            "rlft/FrozenLakeRandom-v0",
        ]
        assert card.text.lstrip().startswith(f"> **An exact-resume checkpoint, step {step} of 2.**")
        assert f"--resume {config.run_dir / 'trainer' / 'rl'}/checkpoint-{step}" in card.text
        for section in SECTIONS:
            assert section in card.text, (folder, section)
        assert CARD_FILE in json.loads((folder / "MANIFEST.json").read_text())["files"]
        assert verify(folder) is None


def test_cards_written_at_save_time_carry_no_held_out_numbers(card_run):
    """eval.json was garbage when RL saved: the cards were written all the same, with no numbers of their own."""
    _, saved, _ = card_run
    for folder in ("rl", "rl_best"):
        assert "Not evaluated yet" in saved[folder]
        assert "model-index" not in saved[folder]
        assert "| the env's expert | - | not measured |" in saved[folder]
    assert "- **Selected**: step " in saved["rl_best"]


def test_eval_writes_its_numbers_into_each_card(card_run):
    config, _, results = card_run
    saved = json.loads((config.run_dir / "eval.json").read_text())
    assert saved["policies"].keys() == {*POLICY_FOLDERS, "expert"}
    expert = saved["policies"]["expert"]
    for label, folder in POLICY_FOLDERS.items():
        entry = saved["policies"][label]
        card = ModelCard.load(config.run_dir / "checkpoints" / folder / CARD_FILE)
        assert "Not evaluated yet" not in card.text
        row = next(line for line in card.text.splitlines() if line.startswith("| this checkpoint |"))
        greedy, sampled = entry["greedy"], entry["sampled"]
        assert row == (
            f"| this checkpoint | {entry['episodes']} | {_cell(greedy, 'success')} | {_cell(sampled, 'success')} "
            f"| {_cell(greedy, 'return')} | {_cell(sampled, 'return')} |"
        )
        assert (
            f"| the env's expert (no noise) | {expert['episodes']} | {_cell(expert, 'success')} |"
            in card.text
        )
        assert (
            f"- **Held-out test seeds** (`rlft eval` only): {saved['seeds']['count']} seeds from "
            f"{saved['seeds']['first']}; training tasks (maps) skipped" in card.text
        )
        metrics = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
        assert metrics == {
            ("success_rate", "greedy"): round(greedy["success"], 4),
            ("mean_reward", "greedy"): round(greedy["return"], 4),
            ("success_rate", "sampled"): round(sampled["success"], 4),
            ("mean_reward", "sampled"): round(sampled["return"], 4),
        }
        assert card.data.model_name == f"test/{folder}"
        assert all(r.dataset_type == "rlft/FrozenLakeRandom-v0" for r in card.data.eval_results)
    best = saved["policies"]["rl_best"]["selection"]
    assert f"- **Selected**: step {best['step']}" in _card_text(config, "rl_best")
    assert results["policies"]["rl"]["success"] == saved["policies"]["rl"]["success"]


def test_the_metadata_validates_as_hugging_face_card_data(card_run):
    config, _, _ = card_run
    card = ModelCard.load(config.run_dir / "checkpoints" / "rl" / CARD_FILE)
    again = ModelCardData(**card.data.to_dict())  # model-index parsed back into EvalResults, or a ValueError
    assert again.to_dict() == card.data.to_dict()
    assert all(isinstance(r, EvalResult) for r in again.eval_results) and len(again.eval_results) == 4
    front = yaml.safe_load(card.content.split("---")[1])
    assert front["model-index"][0]["results"][0]["task"]["type"] == "reinforcement-learning"


def test_the_training_section_has_the_runs_demos_resolved_config_and_hyperparameters(card_run):
    config, _, _ = card_run
    demos = next(r for r in read_metrics(config.run_dir) if r["stage"] == "sft" and "demos/episodes" in r)
    resolved = yaml.safe_load((config.run_dir / "resolved" / "rl.yaml").read_text())["trainer"]
    rl = _card_text(config, "rl")
    assert (
        f"- **Demonstrations**: the env's expert, {demos['demos/episodes']} episodes (configured 8) from train "
        f"seed 0, epsilon 0.2 (random actions), success rate {demos['demos/success']:.4g}, noise seed 0" in rl
    )
    assert f"- **Resolved configuration**: `{config.run_dir / 'resolved' / 'rl.yaml'}`" in rl
    assert f"| learning_rate | {resolved['learning_rate']:.4g} |" in rl
    assert f"| max_steps | {resolved['max_steps']} |" in rl and "| num_generations | 2 |" in rl
    assert "- **Stage**: rl (`rlft train`), algorithm grpo, started from sft" in rl
    assert "- **Reward design**: env; gold signal: env" in rl
    assert "- **Run seed**: 0" in rl and "- **Training seeds**: 0 to 99999 (100000)" in rl
    assert "- **Validation seeds** (model selection during RL): 4 seeds from 20000000, every 1 RL steps" in rl
    sft = _card_text(config, "sft")
    assert f"`{config.run_dir / 'resolved' / 'sft.yaml'}`" in sft and "| num_train_epochs | 1 |" in sft
    assert "loss on action tokens only, started from base" in sft and "| rollout.num_envs |" not in sft
    limits = rl.split("## Known limits")[1]
    assert "tiny model (2 layers, hidden size 32) trained from random weights" in limits
    assert "Trained on one env, rlft/FrozenLakeRandom-v0, with episodes cut at 8 turns." in limits
    assert "Held-out success comes from 6 episodes" in limits  # a 6-episode Wilson interval is wide


def test_a_missing_or_damaged_eval_json_never_stops_a_card(tmp_path):
    config = tiny_config(output_dir=str(tmp_path))
    folder = config.run_dir / "checkpoints" / "sft"
    folder.mkdir(parents=True)
    eval_json = config.run_dir / "eval.json"
    for content in (None, "{not json", "[1, 2]", '{"policies": {"sft": {"checkpoint": 3}, "expert": "x"}}'):
        if content is not None:
            eval_json.write_text(content, encoding="utf-8")
        path = write_card(config, folder)
        card = ModelCard.load(path, ignore_metadata_errors=False)
        assert "Not evaluated yet" in card.text and card.data.eval_results is None
    # An entry for this folder with numbers missing: the card is written, with '-' where a number is absent.
    results = {"seeds": {}, "policies": {"sft": {"checkpoint": str(folder), "success": 0.5}}}
    card = ModelCard.load(write_card(config, folder, results))
    assert "| this checkpoint | - | - | - | - | - |" in card.text
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("success_rate", 0.5),
        ("success_rate", 0.5),
    ]


def test_numbers_in_eval_json_never_describe_weights_saved_after_it(tmp_path):
    """At save time the folder's eval.json entry is of the weights being replaced: left out; the expert stays."""
    config = tiny_config(output_dir=str(tmp_path))
    folder = config.run_dir / "checkpoints" / "rl"
    folder.mkdir(parents=True)
    summary = {"episodes": 4, "success": 0.25, "success_ci_low": 0.05, "success_ci_high": 0.7}
    summary |= {"return": 0.25, "return_ci_low": 0.0, "return_ci_high": 0.5}
    results = {
        "seeds": {"first": 10_000_002, "count": 4},
        "policies": {"rl": {**summary, "checkpoint": str(folder)}, "expert": {**summary, "success": 1.0}},
    }
    (config.run_dir / "eval.json").write_text(json.dumps(results), encoding="utf-8")
    card = ModelCard(card_files(config, folder)[CARD_FILE])
    assert "Not evaluated yet" in card.text and card.data.eval_results is None
    assert "| the env's expert (no noise) | 4 | 1.000 [0.050, 0.700] |" in card.text
    assert "4 seeds from 10000002" in card.text


def test_a_card_never_enters_a_checksummed_checkpoint(tmp_path):
    """A trainer checkpoint (MANIFEST.json) evaluated by path gets no card from `rlft eval`, and still verifies;
    a folder whose manifest lists a card keeps it as it was."""
    config = tiny_config(output_dir=str(tmp_path))
    trainer_checkpoint = config.run_dir / "trainer" / "rl" / "checkpoint-2"
    trainer_checkpoint.mkdir(parents=True)
    (trainer_checkpoint / "config.json").write_text("{}", encoding="utf-8")
    write_manifest(trainer_checkpoint)
    listed = config.run_dir / "checkpoints" / "rl"
    listed.mkdir(parents=True)
    (listed / CARD_FILE).write_text("as saved", encoding="utf-8")
    write_manifest(listed)
    entry = {"success": 1.0, "success_ci_low": 0.5, "success_ci_high": 1.0}
    results = {
        "seeds": {"first": 1, "count": 1},
        "policies": {
            "a": {**entry, "checkpoint": str(trainer_checkpoint)},
            "b": {**entry, "checkpoint": str(listed)},
        },
    }
    assert update_cards(config, results) == []
    assert not (trainer_checkpoint / CARD_FILE).exists() and verify(trainer_checkpoint) is None
    assert (listed / CARD_FILE).read_text() == "as saved" and verify(listed) is None


def test_base_model_is_named_only_when_it_is_a_hub_model(tmp_path):
    config = tiny_config(output_dir=str(tmp_path))
    hub = config.model.model_copy(update={"tiny": None, "name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert model_card.hub_model_id(hub) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert model_card.hub_model_id(hub.model_copy(update={"name_or_path": str(tmp_path)})) is None
    assert model_card.hub_model_id(config.model) is None
    folder = config.run_dir / "checkpoints" / "sft"
    card = render_card(config.model_copy(update={"model": hub}), folder, evaluated=False)
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert "the base model's own (Qwen/Qwen2.5-0.5B-Instruct)" in card.text


def test_each_reward_model_of_an_ensemble_has_a_card(tmp_path):
    config = tiny_config(
        output_dir=str(tmp_path),
        rm={
            "data": {
                "source": "env",
                "episodes": 16,
                "episodes_per_task": 4,
                "eval_episodes": 8,
                "epsilon": 0.5,
            },
            "trainer": {"num_train_epochs": 1},
            "ensemble": {"size": 2},
        },
    )
    stages.run_rm(config)
    checkpoints = config.run_dir / "checkpoints"
    for name in ("rm_0", "rm_1", "rm"):
        card = ModelCard.load(checkpoints / name / CARD_FILE, ignore_metadata_errors=False)
        assert card.data.tags == [
            "rlft",
            "reinforcement-learning",
            "reward-model",
            "rlft/FrozenLakeRandom-v0",
        ]
        for section in SECTIONS:
            assert section in card.text, (name, section)
    member = ModelCard.load(checkpoints / "rm_1" / CARD_FILE).text
    info = json.loads((checkpoints / "rm_1" / "rm.json").read_text())
    assert (
        "### Held-out preferences" in member and "| rollout." not in member
    )  # rm.json's own card, one level down
    assert f"| accuracy | {info['held_out']['accuracy']:.4f} |" in member
    assert "- **Reward model**: trainer seed 1 (run seed + 1), data seed 0" in member
    assert f"`{config.run_dir / 'resolved' / 'rm_1.yaml'}`" in member
    assert (
        "- **Ensemble** of ../rm_0, ../rm_1: aggregate mean"
        in ModelCard.load(checkpoints / "rm" / CARD_FILE).text
    )


def test_rl_without_a_clear_gain_over_its_starting_policy_says_so(tmp_path):
    """The limit is stated when the 95% CIs of held-out greedy success overlap, and only then."""
    config = tiny_config(output_dir=str(tmp_path), rl={"init_from": "sft"})
    checkpoints = config.run_dir / "checkpoints"

    def entry(folder: str, success: float, low: float, high: float) -> dict:
        summary = {"success": success, "success_ci_low": low, "success_ci_high": high}
        return {**summary, "greedy": summary, "sampled": summary, "checkpoint": str(checkpoints / folder)}

    for rl, said in ((entry("rl", 0.6, 0.45, 0.72), True), (entry("rl", 0.8, 0.66, 0.89), False)):
        results = {
            "seeds": {"first": 1, "count": 40},
            "policies": {"sft": entry("sft", 0.5, 0.35, 0.65), "rl": rl},
        }
        limits = render_card(config, checkpoints / "rl", results).text.split("## Known limits")[1]
        line = (
            "No clear gain over its starting policy (sft) on held-out greedy success: 0.600 [0.450, 0.720] "
            "against 0.500 [0.350, 0.650] (95% CIs overlap)."
        )
        assert (line in limits) is said
        assert ("No clear gain" in limits) is said
    sft_card = render_card(config, checkpoints / "sft", results).text  # a limit of RL cards only
    assert "No clear gain" not in sft_card
