"""Smoke tests of the stages on a tiny run: sft -> rl (GRPO through TRL, with KL) -> eval, run directory, tracking."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlft import cli, stages
from rlft.config.schema import load_config
from rlft.runtime.tracking import Tracker, read_metrics
from rlft.stages import common as stage_common
from tests.conftest import tiny_config
from tests.user_grid_env import ACTION_NAMES


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    # CliffWalking with a penalty for unparsable actions: returns differ within a GRPO group from the
    # first step (-1 a step, -100 off the cliff, -0.5 for garbage), so advantages are never all zero.
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(out),
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 16},
        sft={
            "demos": {"source": "expert", "episodes": 8, "epsilon": 0.2},
            "trainer": {"num_train_epochs": 1, "per_device_train_batch_size": 4},
        },
        rl={
            "trainer": {
                "max_steps": 2,
                "num_generations": 4,
                "per_device_train_batch_size": 8,
                "beta": 0.04,
                "learning_rate": 1e-3,
            }
        },
        rollout={"num_envs": 8, "max_action_tokens": 3},
        eval={"episodes": 8, "batch_size": 8},
    )
    sft_path = stages.run_sft(config)
    rl_path = stages.run_rl(config)
    results = stages.run_eval(config)
    return config, sft_path, rl_path, results


def test_run_directory_layout(tiny_run):
    config, sft_path, rl_path, results = tiny_run
    run_dir = config.run_dir
    assert (run_dir / "config.yaml").is_file()
    for stage in ("base", "sft", "rl"):
        assert (run_dir / "checkpoints" / stage / "model.safetensors").is_file()
    saved = json.loads((run_dir / "eval.json").read_text())
    assert set(saved["policies"]) == {"untrained", "sft", "rl", "expert"}
    assert saved["policies"]["expert"]["success"] == 1.0
    stages_logged = {record["stage"] for record in read_metrics(run_dir)}
    assert stages_logged == {"sft", "rl", "eval"}


def test_eval_audits_each_policys_greedy_decisions_against_the_expert(tiny_run, capsys):
    """Every greedy test episode is replayed (the engine's recorded observations reproduce) and each turn is
    checked against the expert; the share is logged, written and shown."""
    from rlft.stages.eval import format_table

    config, _, _, results = tiny_run
    saved = json.loads((config.run_dir / "eval.json").read_text())
    for label in ("untrained", "sft", "rl"):
        greedy, decisions = saved["policies"][label]["greedy"], saved["policies"][label]["decisions"]
        assert decisions["episodes"] == greedy["episodes"] == 8 and decisions["replay_mismatches"] == 0
        assert decisions["turns"] == round(greedy["turns"] * greedy["episodes"])
        assert greedy["expert_agreement"] == decisions["agreement"] and 0.0 <= decisions["agreement"] <= 1.0
        wrong = sum(d["count"] for d in decisions["disagreements"])
        assert wrong <= decisions["turns"] * (1 - decisions["agreement"]) + 1e-9  # the top 5 of them
    assert "decisions" not in saved["policies"]["expert"]
    logged = [r for r in read_metrics(config.run_dir) if r["stage"] == "eval"]
    assert any("sft/greedy/expert_agreement" in r for r in logged)
    table = format_table(results)
    assert "expert's move, greedy |" in table
    assert f"| {saved['policies']['sft']['greedy']['expert_agreement']:.3f} |" in table


def test_grpo_step_changes_every_trainable_parameter(tiny_run):
    _, sft_path, rl_path, _ = tiny_run
    before, after = load_file(sft_path / "model.safetensors"), load_file(rl_path / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []


def test_grpo_logs_kl_episode_success_and_rewards(tiny_run):
    config, *_ = tiny_run
    rl_logs = [r for r in read_metrics(config.run_dir) if r["stage"] == "rl" and "loss" in r]
    assert len(rl_logs) == 2
    for record in rl_logs:
        assert "kl" in record and record["kl"] >= 0.0
        assert 0.0 <= record["episode/success"] <= 1.0
        assert "rewards/episode_return/mean" in record
        # every algorithm logs the reward components the same way (rlft compare's reward-component plot)
        assert record["episode/reward/env"] == pytest.approx(record["episode/return"], abs=1e-4)


def test_resolved_config_records_what_each_stage_trained_with(tiny_run):
    """runs/<name>/resolved/<stage>.yaml: the config with its defaults, TRL's arguments as used, the versions."""
    import trl

    from rlft.config.resolved import PACKAGES, read_resolved
    from rlft.stages.checks import check_config

    config, sft_path, rl_path, _ = tiny_run
    sft_config, sft_args, versions = read_resolved(config.run_dir / "resolved" / "sft.yaml")
    assert sft_config == config  # the full config loads back, validates and is the one the run used
    check_config(sft_config)
    assert sft_args["learning_rate"] == 1e-3  # rlft's SFT default, not TRL's 5e-5
    assert (sft_args["num_train_epochs"], sft_args["per_device_train_batch_size"]) == (
        1,
        4,
    )  # the user's keys
    assert (
        sft_args["output_dir"] == str(config.run_dir / "trainer" / "sft") and sft_args["seed"] == config.seed
    )
    assert set(versions) == set(PACKAGES) and versions["trl"] == trl.__version__
    assert versions["torch"] == torch.__version__ and versions["rlft"]
    rl_config, rl_args, _ = read_resolved(config.run_dir / "resolved" / "rl.yaml")
    assert rl_config == config
    assert (rl_args["learning_rate"], rl_args["beta"], rl_args["max_steps"]) == (1e-3, 0.04, 2)
    assert (
        rl_args["loss_type"] == "dapo"
        and rl_args["max_completion_length"] == config.rollout.max_episode_tokens
    )
    assert sorted(p.name for p in (config.run_dir / "resolved").iterdir()) == ["rl.yaml", "sft.yaml"]
    for path in (sft_path, rl_path):
        assert not (path / "training_args.bin").exists()  # a pickle; the resolved YAML replaces it


def test_resolved_trainer_arguments_reach_the_wandb_config(tmp_path):
    from rlft.stages.sft import sft_trainer_args

    config = tiny_config(
        output_dir=str(tmp_path),
        tracking={"wandb": {"enabled": True, "mode": "offline"}},
        sft={"trainer": {"learning_rate": 2e-3}},
    )
    tracker = Tracker(config, "sft", config.run_dir)
    tracker.record_resolved(sft_trainer_args(config))
    assert tracker._wandb.config["trainer"]["learning_rate"] == 2e-3
    assert tracker._wandb.config["versions"]["trl"]
    assert tracker._wandb.config["env"]["id"] == config.env.id  # the rlft config, as before
    tracker.finish()
    assert (config.run_dir / "resolved" / "sft.yaml").is_file()


def test_sft_loss_only_on_action_tokens():
    """The SFT rows carry the Episode mask: labels exist only where the policy acts."""
    from rlft.models.policy import build_word_tokenizer
    from rlft.rollout.demos import episode_from_turns, sft_rows
    from rlft.rollout.turn_format import PlainFormat

    tokenizer = build_word_tokenizer(["obs one", "obs two", "left right"])
    fmt = PlainFormat(tokenizer)
    episode = episode_from_turns(fmt, "go", ["obs one", "obs two"], ["left", "right"])
    (row,) = sft_rows([episode])
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    trained = [t for t, m in zip(tokens, row["assistant_masks"]) if m]
    assert trained == ["left", "</s>", "right", "</s>"]


def test_wandb_failure_never_stops_tracking(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    config = tiny_config(tracking={"wandb": {"enabled": True, "mode": "online"}})
    tracker = Tracker(config, "rl", tmp_path)
    tracker.log({"loss": 1.5}, step=1)
    assert tracker.finish() is None
    assert read_metrics(tmp_path)[0]["loss"] == 1.5


def test_wandb_offline_run_and_sync_command(tmp_path):
    config = tiny_config(tracking={"wandb": {"enabled": True, "mode": "offline"}})
    tracker = Tracker(config, "eval", tmp_path)
    tracker.log({"success": 0.5}, step=0)
    command = tracker.finish()
    assert command is not None and command.startswith("wandb sync ")
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_lora_policy_through_sft_and_grpo(tmp_path):
    """model.lora: SFT and GRPO train only the adapter; the saved adapter reloads on its own."""
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(tmp_path),
        model={"lora": {"r": 4, "alpha": 8}},
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 6},
        sft={
            "demos": {"source": "expert", "episodes": 4, "epsilon": 0.0},
            "trainer": {"num_train_epochs": 1, "per_device_train_batch_size": 4},
        },
        rl={
            "trainer": {
                "max_steps": 1,
                "num_generations": 4,
                "per_device_train_batch_size": 8,
                "learning_rate": 1e-2,
            }
        },
        rollout={"num_envs": 8},
    )
    sft_path = stages.run_sft(config)
    rl_path = stages.run_rl(config)
    for path in (sft_path, rl_path):
        assert (path / "adapter_model.safetensors").is_file()
        assert not (path / "model.safetensors").exists()
    before = load_file(sft_path / "adapter_model.safetensors")
    after = load_file(rl_path / "adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model, _ = stage_common.load_checkpoint(rl_path, config)
    assert any("lora_" in name for name, _ in model.named_parameters())


def test_resumed_stage_continues_the_same_wandb_run(tmp_path):
    config = tiny_config(tracking={"wandb": {"enabled": True, "mode": "offline"}})
    first = Tracker(config, "rl", tmp_path)
    run_id = first._wandb.id
    first.log({"loss": 1.0}, step=1)
    first.finish()
    resumed = Tracker(config, "rl", tmp_path, resume=True)
    assert resumed._wandb.id == run_id
    resumed.finish()
    fresh = Tracker(config, "rl", tmp_path)  # a new run, not a resume: a new id
    fresh_id = fresh._wandb.id
    fresh.finish()
    assert fresh_id != run_id
    assert json.loads((tmp_path / "wandb_ids.json").read_text())["rl"] == fresh_id


# ------------------------------------------------------------------------------------------------ eval
# A user's env (tests/user_grid_env.py) and the untrained policy: evaluation without any training.
GRID_ADAPTER = {
    "action_names": ACTION_NAMES,
    "renderer": "tests.user_grid_env:render",
    "instructions": "Reach G.",
}


def grid_config_file(tmp_path, env_class: str = "GridEnv", **eval_section):
    """A config file for the user's grid env with its untrained checkpoint saved (no config.yaml yet)."""
    adapter = {**GRID_ADAPTER, **({"expert_method": "expert_action"} if env_class == "GridEnv" else {})}
    raw = {
        "name": "grid",
        "output_dir": str(tmp_path / "runs"),
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
        "env": {"id": f"tests.user_grid_env:{env_class}", "adapter": adapter, "max_turns": 6},
        "rl": {"init_from": "base"},
        "eval": {"episodes": 4, "batch_size": 4, "disjoint_tasks": False, **eval_section},
        "tracking": {"wandb": {"enabled": False}},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML
    config = load_config(path)
    stage_common.ensure_base_checkpoint(config)
    return path, config


def test_eval_without_an_expert_skips_it_with_a_note(tmp_path, capsys):
    """eval.expert: auto (the default) and an env with no expert: every policy evaluated, a note, eval.json."""
    path, config = grid_config_file(tmp_path, "NoExpertGridEnv")
    assert cli.main(["eval", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "| untrained |" in out and "note: expert skipped: tests.user_grid_env:NoExpertGridEnv has none" in out
    )
    saved = json.loads((config.run_dir / "eval.json").read_text())
    assert list(saved["policies"]) == ["untrained"] and saved["notes"][0].startswith("expert skipped")


def test_eval_expert_true_without_an_expert_exits_2_before_anything_is_written(tmp_path, capsys):
    path, config = grid_config_file(tmp_path, "NoExpertGridEnv", expert=True)
    before = sorted(p.relative_to(config.run_dir) for p in config.run_dir.rglob("*"))
    for command in ("validate", "eval"):
        assert cli.main([command, "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert "key 'eval.expert' = true needs the env's expert" in err
        assert "env.adapter.expert_method" in err and "eval.expert: auto" in err  # the options, the fix
    assert sorted(p.relative_to(config.run_dir) for p in config.run_dir.rglob("*")) == before


def test_eval_writes_each_result_at_once_and_keeps_them_on_an_error(tmp_path, monkeypatch):
    """The second policy's evaluation fails: the first one's result is already in eval.json, stays there
    (marked incomplete), and the error propagates."""
    from rlft.stages import eval as stage_eval

    _, config = grid_config_file(tmp_path)
    base = stage_common.checkpoint_dir(config, "base")
    calls, real = [], stage_eval.evaluate_policy
    seen_on_disk = []

    def evaluate_policy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second policy's greedy evaluation
            seen_on_disk.append(json.loads((config.run_dir / "eval.json").read_text()))
            raise RuntimeError("the env server went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(stage_eval, "evaluate_policy", evaluate_policy)
    with pytest.raises(RuntimeError, match="went away"):
        stages.run_eval(config, policies={"first": base, "second": base})
    assert list(seen_on_disk[0]["policies"]) == ["first"]  # written before the second started
    saved = json.loads((config.run_dir / "eval.json").read_text())
    assert list(saved["policies"]) == ["first"] and saved["policies"]["first"]["episodes"] == 4
    assert saved["incomplete"] == "stopped while evaluating second: RuntimeError: the env server went away"
    assert not list(config.run_dir.glob(".*partial"))


def test_eval_with_overrides_writes_its_own_record_and_keeps_the_training_config(tmp_path, capsys):
    path, config = grid_config_file(tmp_path)
    assert cli.main(["eval", "--config", str(path)]) == 0  # the run's own config: eval.json, with the expert
    capsys.readouterr()
    training_yaml = (config.run_dir / "config.yaml").read_bytes()
    eval_json = (config.run_dir / "eval.json").read_bytes()
    assert set(json.loads(eval_json)["policies"]) == {"untrained", "expert"}
    overrides = [
        "eval.episodes=3",
        "eval.expert=false",
        "tracking.wandb.mode=disabled",
    ]  # tracking: not listed
    assert cli.main(["eval", "--config", str(path), *overrides]) == 0
    out = capsys.readouterr().out
    assert (config.run_dir / "config.yaml").read_bytes() == training_yaml  # what training used, unchanged
    assert (config.run_dir / "eval.json").read_bytes() == eval_json
    (record,) = config.run_dir.glob("eval_*.json")
    (record_config,) = config.run_dir.glob("eval_*.config.yaml")
    assert record_config.name == record.name.replace(".json", ".config.yaml")
    results = json.loads(record.read_text())
    assert results["seeds"]["count"] == 3 and list(results["policies"]) == ["untrained"]
    assert results["record"] == {"config": record_config.name, "differs_in": ["eval.episodes", "eval.expert"]}
    assert load_config(record_config).eval.episodes == 3  # the config this record was made with
    assert f"results in {record.name}" in out and "eval.episodes, eval.expert" in out


def test_an_eval_whose_disjoint_tasks_cannot_exist_exits_2_before_anything_runs(tmp_path, capsys):
    """Few tasks, all of them in training: `eval.disjoint_tasks` cannot be met; the pipeline says so (exit 2, naming
    the key and the ways out) before SFT, and writes no run folder."""
    from rlft.cli import main
    from rlft.config.schema import save_config

    config = tiny_config(
        output_dir=str(tmp_path / "runs"),
        name="few-tasks",
        env={
            "kwargs": {"random_map_size": 2, "is_slippery": False},
            "train_seeds": {"start": 0, "count": 200},
        },
        eval={"episodes": 50},
    )
    path = tmp_path / "few.yaml"
    save_config(config, path)
    code = main(["pipeline", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "key 'eval.disjoint_tasks' = true" in err and "eval.disjoint_tasks: false" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "few-tasks").exists()
