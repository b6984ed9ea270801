"""`rlft sweep` (rlft/tools/sweep.py, sweep_file.py, sweep_study.py, sweep_run.py): sweep-file validation, and a small sweep run by two worker
processes sharing one SQLite study that prunes, records a failing trial, writes the best config and resumes.

The sweep's env is tests/sweep_env.py's CoinEnv, whose held-out success is set by `env.kwargs.success_rate`:
the trials that are clearly worse are known in advance, so whether the pruner fires does not depend on what a
tiny random policy happens to learn.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlft.config.schema import load_config, parse_overrides
from rlft.errors import ConfigError
from rlft.tools.sweep_file import load_sweep, override
from rlft.tools.sweep_study import open_study

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "configs" / "sweeps"

BASE: dict[str, Any] = {
    "name": "coin",
    "output_dir": "runs",
    "seed": 0,
    "model": {
        "tiny": {
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 64,
            "corpus_episodes": 10,
        }
    },
    "env": {
        "id": "tests.sweep_env:CoinEnv",
        "kwargs": {"success_rate": 1.0},
        "max_turns": 1,
        "train_seeds": {"start": 0, "count": 8},
    },
    "rollout": {"num_envs": 4, "max_action_tokens": 2},
    "rl": {
        "init_from": "base",
        "trainer": {
            "max_steps": 2,
            "num_generations": 2,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 100,
            "learning_rate": 1e-3,
        },
    },
    "eval": {"episodes": 4, "during_episodes": 4, "every_steps": 1, "batch_size": 4},
    "tracking": {"wandb": {"enabled": False}},
}
SWEEP: dict[str, Any] = {
    "base": "base.yaml",
    "study": "coin",
    "n_trials": 5,
    "stages": ["rl", "eval"],
    "sampler": {"tpe": {"seed": 0, "n_startup_trials": 2}},
    "pruner": {"median": {"n_startup_trials": 1, "n_warmup_steps": 0}},
    # The first four trials: two good ones (one per worker), then a clearly worse one, which can only start
    # once a worker has finished (and completed) a good one, so the median pruner has a trial to compare it
    # with; then one whose env raises on its first step.
    "enqueue": [
        {"env.kwargs.success_rate": 1.0, "env.kwargs.fail": False, "rl.trainer.learning_rate": 1e-3},
        {"env.kwargs.success_rate": 1.0, "env.kwargs.fail": False, "rl.trainer.learning_rate": 3e-3},
        {"env.kwargs.success_rate": 0.0, "env.kwargs.fail": False, "rl.trainer.learning_rate": 1e-3},
        {"env.kwargs.success_rate": 1.0, "env.kwargs.fail": True, "rl.trainer.learning_rate": 1e-3},
    ],
    "params": {
        "env.kwargs.success_rate": {"type": "categorical", "choices": [0.0, 0.5, 1.0]},
        "env.kwargs.fail": {"type": "categorical", "choices": [False, True]},
        "rl.trainer.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    },
}


def write_sweep(
    folder: Path, sweep: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE, sort_keys=False), encoding="utf-8")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep or SWEEP, sort_keys=False), encoding="utf-8")
    return path


def changed(**keys: Any) -> dict[str, Any]:
    sweep = copy.deepcopy(SWEEP)
    for key, value in keys.items():
        if value is None:
            sweep.pop(key, None)
        else:
            sweep[key] = value
    return sweep


def with_param(key: str, spec: Any) -> dict[str, Any]:
    return changed(params={**SWEEP["params"], key: spec}, enqueue=[])


# ---------------------------------------------------------------- the sweep file: every mistake named, exit 2

BAD_SWEEPS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown-key", changed(studdy="x"), ["unknown key 'studdy' (did you mean 'study'?)"]),
    ("missing-params", changed(params=None), ["missing required key 'params'"]),
    ("no-params", changed(params={}, enqueue=[]), ["key 'params' = {...}", "at least 1 item"]),
    (
        "not-a-config-field",
        with_param("rl.trainer.learnig_rate", {"type": "float", "low": 1e-4, "high": 1e-3}),
        [
            "key 'params[rl.trainer.learnig_rate]'",
            "unknown key 'rl.trainer.learnig_rate' for trl.GRPOConfig",
            "did you mean 'learning_rate'",
        ],
    ),
    (
        "not-a-section",
        with_param("rollout.sampling.top_k", {"type": "int", "low": 1, "high": 5}),
        ["key 'params[rollout.sampling.top_k]'", "unknown key 'rollout.sampling'"],
    ),
    (
        "value-out-of-field-range",
        with_param("model.lora.r", {"type": "int", "low": 0, "high": 8}),
        ["key 'params[model.lora.r]'", "model.lora.r=0 does not make a valid config", "greater than 0"],
    ),
    (
        "choice-the-config-rejects",
        with_param("rl.algorithm", {"type": "categorical", "choices": ["grpo", "dqn"]}),
        ["key 'params[rl.algorithm]'", 'rl.algorithm="dqn"', "'grpo', 'ppo' or 'gigpo'"],
    ),
    (
        "low-above-high",
        with_param("rl.trainer.beta", {"type": "float", "low": 0.5, "high": 0.1}),
        ["key 'params[rl.trainer.beta]'", "expected low < high, got low = 0.5, high = 0.1"],
    ),
    (
        "log-from-zero",
        with_param("rl.trainer.beta", {"type": "float", "low": 0.0, "high": 0.1, "log": True}),
        ["log: true needs low > 0"],
    ),
    (
        "int-range-of-floats",
        with_param("model.lora.r", {"type": "int", "low": 1.5, "high": 8}),
        ["key 'params[model.lora.r].low' = 1.5", "integer"],
    ),
    (
        "unknown-param-type",
        with_param("rl.trainer.beta", {"type": "floaty", "low": 0.0, "high": 0.1}),
        ["key 'params[rl.trainer.beta]'", "'floaty'", "'float', 'int', 'categorical'"],
    ),
    (
        "param-without-type",
        with_param("rl.trainer.beta", {"low": 0.0, "high": 0.1}),
        ["key 'params[rl.trainer.beta]': missing 'type'"],
    ),
    (
        "unknown-param-key",
        with_param("rl.trainer.beta", {"type": "float", "lo": 0.0, "high": 0.1}),
        [
            "unknown key 'params[rl.trainer.beta].lo' (did you mean 'low'?)",
            "missing required key 'params[rl.trainer.beta].low'",
        ],
    ),
    (
        "list-choice",
        with_param("reward.components.env.clip", {"type": "categorical", "choices": [[-1, 1]]}),
        ["key 'params[reward.components.env.clip].choices'", "is a list; expected null, a boolean, a number"],
    ),
    (
        "empty-choices",
        with_param("rl.trainer.beta", {"type": "categorical", "choices": []}),
        ["key 'params[rl.trainer.beta].choices'", "at least 1 item"],
    ),
    (
        "unknown-pruner",
        changed(pruner={"medain": {}}),
        ["key 'pruner': unknown pruner 'medain' (did you mean 'median'?)"],
    ),
    (
        "pruner-argument",
        changed(pruner={"median": {"n_warmup_step": 3}}),
        [
            "key 'pruner.median'",
            "'n_warmup_step'",
            "optuna.pruners.MedianPruner (did you mean 'n_warmup_steps'?)",
        ],
    ),
    (
        "pruner-value",
        changed(pruner={"median": {"n_startup_trials": -1}}),
        ["key 'pruner.median'", "cannot be negative"],
    ),
    ("two-samplers", changed(sampler={"tpe": {}, "random": {}}), ["key 'sampler': expected one entry"]),
    ("unknown-sampler", changed(sampler={"tpee": {}}), ["unknown sampler 'tpee' (did you mean 'tpe'?)"]),
    (
        "stage-order",
        changed(stages=["eval", "rl"]),
        ["key 'stages' = ['eval', 'rl']", "in the order sft, rl, eval"],
    ),
    ("no-rl-stage", changed(stages=["eval"]), ["key 'stages'", "with rl among them"]),
    (
        "unknown-stage",
        changed(stages=["rl", "evaluate"]),
        ["key 'stages[1]' = 'evaluate'", "'sft', 'rl' or 'eval'"],
    ),
    (
        "sft-init-without-sft",
        changed(overrides={"rl.init_from": "sft"}),
        ["key 'stages'", "has no sft but the base config's rl.init_from is 'sft'"],
    ),
    (
        "metric-typo",
        changed(metric="eval/sucess"),
        ["key 'metric' = 'eval/sucess'", "did you mean 'success'"],
    ),
    (
        "metric-never-measured",
        changed(stages=["rl"], overrides={"eval.every_steps": None}),
        ["key 'metric' = 'eval/success' is never measured"],
    ),
    (
        "pruner-without-intermediate",
        changed(overrides={"eval.every_steps": None}),
        ["key 'pruner': the pruner needs eval/success during RL", "eval.every_steps"],
    ),
    (
        "missing-base",
        changed(base="nope.yaml"),
        ["key 'base' = 'nope.yaml': no such file", "relative to the sweep file"],
    ),
    (
        "bad-base-override",
        changed(overrides={"rollout.num_env": 4}),
        ["the base config with the sweep's overrides is invalid", "unknown key 'rollout.num_env'"],
    ),
    (
        "override-and-param",
        changed(overrides={"rl.trainer.learning_rate": 1e-3}),
        ["key 'overrides': rl.trainer.learning_rate is also in 'params'"],
    ),
    ("storage-not-a-url", changed(storage="not a url"), ["key 'storage' = 'not a url': not a database URL"]),
    ("zero-trials", changed(n_trials=0), ["key 'n_trials' = 0", "greater than 0"]),
    ("study-not-a-folder-name", changed(study="a/b"), ["key 'study' = 'a/b'", "pattern"]),
    (
        "heartbeat-key",
        changed(heartbeat={"interval": 3}),
        ["unknown key 'heartbeat.interval' (did you mean 'interval_s'?)"],
    ),
    (
        "enqueue-outside-space",
        changed(enqueue=[{"env.kwargs.success_rate": 0.3}]),
        ["key 'enqueue[0].env.kwargs.success_rate': 0.3 is not one of [0.0, 0.5, 1.0]"],
    ),
    (
        "enqueue-unknown-param",
        changed(enqueue=[{"rl.trainer.lr": 0.3}]),
        ["key 'enqueue[0].rl.trainer.lr': not in 'params'", "did you mean 'rl.trainer.learning_rate'"],
    ),
    (
        "enqueue-out-of-range",
        changed(enqueue=[{"rl.trainer.learning_rate": 0.5}]),
        ["key 'enqueue[0].rl.trainer.learning_rate': 0.5 is outside [0.0001, 0.01]"],
    ),
]


@pytest.mark.parametrize(("sweep", "expected"), [c[1:] for c in BAD_SWEEPS], ids=[c[0] for c in BAD_SWEEPS])
def test_bad_sweep_file_fails_with_a_message_naming_the_key(
    sweep: dict[str, Any], expected: list[str], tmp_path: Path
) -> None:
    path = write_sweep(tmp_path, sweep)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the sweep file is empty"),
        ("base: a.yaml\nbase: b.yaml\n", "duplicate key 'base'"),
        ("- a\n", "expected a mapping at the top level"),
    ],
    ids=["empty", "duplicate-key", "a-list"],
)
def test_sweep_yaml_errors(text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected):
        load_sweep(path)


def test_bad_sweep_through_the_cli_exits_2_before_any_model_or_study(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from rlft import cli
    from rlft.models import policy

    def booby_trap(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(policy, "load_policy", booby_trap)
    monkeypatch.chdir(tmp_path)
    path = write_sweep(
        tmp_path, with_param("rl.trainer.learnig_rate", {"type": "float", "low": 1e-4, "high": 1e-3})
    )
    assert cli.main(["sweep", "--config", str(path)]) == 2
    assert "rlft: error: " in capsys.readouterr().err
    assert cli.main(["sweep", "--config", str(write_sweep(tmp_path)), "--n-trials", "0"]) == 2
    assert "--n-trials = 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert (
        cli.main(["sweep", "--config", str(write_sweep(tmp_path)), "--validate", "rl.trainer.max_steps=2"])
        == 0
    )
    assert "ok (study coin, 3 params, 5 trials" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_overrides_read_back_as_the_sampled_values() -> None:
    values = [1e-05, 0.1, 3, True, False, None, "separate", "1e-3", "yes", 1.0]
    parsed = [value for _, value in parse_overrides([override("a.b", v) for v in values])]
    assert parsed == values
    assert [type(v) for v in parsed] == [type(v) for v in values]


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_in_configs_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    assert sweep.file.params
    header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert header.startswith("#") and "Hardware:" in header
    assert f"rlft sweep --config configs/sweeps/{path.name}" in header


def test_configs_have_a_sweep() -> None:
    assert (SWEEPS / "quickstart_lr.yaml").is_file()


# ---------------------------------------------------------------- the pruning callback


class FakeTrial:
    def __init__(self, prune_below: float):
        self.reports: list[tuple[float, int]] = []
        self.prune_below = prune_below

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.reports[-1][0] < self.prune_below


def test_pruning_callback_reads_the_logged_metric_and_stops_training(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from rlft.tools.sweep_run import PruningCallback

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        json.dumps({"stage": "sft", "step": 0, "eval/success": 0.0}) + "\n"
    )  # an earlier stage
    trial = FakeTrial(prune_below=0.5)
    callback = PruningCallback(trial, metrics, "eval/success")
    state, control = SimpleNamespace(is_world_process_zero=True), SimpleNamespace(should_training_stop=False)
    with metrics.open("a") as handle:
        handle.write(json.dumps({"stage": "rl", "step": 0, "eval/success": 0.75}) + "\n")
        handle.write(json.dumps({"stage": "rl", "step": 1, "loss": 0.1}) + "\n")
        handle.write('{"stage": "rl", "step": 2, "eval/succ')  # still being written
    callback.on_step_end(None, state, control)
    assert trial.reports == [(0.75, 0)] and not control.should_training_stop
    with metrics.open("a") as handle:
        handle.write('ess": "nan"}\n')  # non-finite values are logged as strings
        handle.write(json.dumps({"stage": "rl", "step": 3, "eval/success": 0.25}) + "\n")
    callback.on_log(None, state, control)
    assert trial.reports[1][1] == 2 and trial.reports[1][0] != trial.reports[1][0]  # nan
    assert trial.reports[2] == (0.25, 3)
    assert control.should_training_stop and callback.pruned_at == 3
    assert callback.values[0] == 0.75


# ---------------------------------------------------------------- a sweep: two workers, one SQLite study


def _counted_states(trials) -> dict[str, int]:
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def test_two_workers_share_a_study_prune_record_a_failure_write_the_best_config_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from rlft import cli
    from rlft.tools.sweep_run import Objective

    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path)
    sweep = load_sweep(path)
    # Each worker enqueues the file's `enqueue` trials unless the study holds them; two workers starting at the
    # same instant could both enqueue them, so here the study is made and filled before they start.
    study = open_study(sweep)
    for params in sweep.file.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "rlft.cli", "sweep", "--config", str(path)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]

    trials = optuna.load_study(study_name="coin", storage=sweep.storage_url).get_trials()
    by_number = {t.number: t for t in trials}
    assert sorted(by_number) == list(range(5)), _counted_states(trials)
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials), _counted_states(trials)
    assert {t.user_attrs["pid"] for t in trials} == {w.pid for w in workers}  # both workers ran trials

    # The clearly worse trial was pruned on its first held-out evaluation and stopped training early.
    worse = next(
        t for t in trials if t.params["env.kwargs.success_rate"] == 0.0 and not t.params["env.kwargs.fail"]
    )
    assert worse.state.name == "PRUNED" and worse.user_attrs["pruned_at_step"] == 0
    run = tmp_path / "runs" / "coin" / f"trial-{worse.number}"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (
        max(r["step"] for r in records if r["stage"] == "rl" and "loss" in r)
        < BASE["rl"]["trainer"]["max_steps"]
    )
    assert json.loads((run / "trial.json").read_text())["state"] == "PRUNED"

    # The trial whose env raises is FAIL with the message; the sweep went on past it.
    failed = next(t for t in trials if t.params == sweep.file.enqueue[3])
    assert failed.state.name == "FAIL" and failed.user_attrs["error"] == "ValueError: boom"
    assert failed.number < max(by_number)

    # Every trial that ran is an ordinary run directory.
    for t in trials:
        if t.state.name == "COMPLETE":
            run = tmp_path / "runs" / "coin" / f"trial-{t.number}"
            assert {"config.yaml", "metrics.jsonl", "eval.json", "trial.json"} <= {
                p.name for p in run.iterdir()
            }
            assert t.value == json.loads((run / "eval.json").read_text())["policies"]["rl"]["success"]

    # The best config: the best trial's params on the base config, loadable and runnable as it is.
    study_dir = tmp_path / "runs" / "coin"
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    config = load_config(study_dir / "best_config.yaml")
    assert config.name == "coin-best" and config.output_dir == "runs"
    assert config.env.kwargs["success_rate"] == best.params["env.kwargs.success_rate"] == 1.0
    assert config.rl.trainer["learning_rate"] == pytest.approx(best.params["rl.trainer.learning_rate"])
    assert config.eval.every_steps == 1 and config.tracking.wandb.group == "coin"  # the rest of the base
    summary = json.loads((study_dir / "summary.json").read_text())
    assert [row["trial"] for row in summary["trials"]] == list(range(5))
    assert summary["best"]["value"] == best.value
    assert len((study_dir / "summary.csv").read_text().splitlines()) == 6

    # A worker killed mid-trial leaves it RUNNING; the next `rlft sweep` fails it once its heartbeat is older
    # than the grace period, runs it again with the same params, and the trial count goes on from there.
    storage = optuna.storages.RDBStorage(sweep.storage_url, heartbeat_interval=1)
    crashing = optuna.load_study(study_name="coin", storage=storage)
    crashing.enqueue_trial({**sweep.file.enqueue[0], "rl.trainer.learning_rate": 2e-3})
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # "heartbeat ... supposed to be used with Study.optimize"
        crashed = crashing.ask()
    Objective(sweep).suggest(crashed)
    storage.record_heartbeat(crashed._trial_id)
    # grace 3 s = 3 heartbeats, so the live retry never looks stale when a loaded machine delays a beat; the
    # crashed trial's last beat is 5 s old (2 s of margin: heartbeat times are stored to the second).
    write_sweep(tmp_path, changed(heartbeat={"interval_s": 1, "grace_period_s": 3}))
    time.sleep(5)
    assert cli.main(["sweep", "--config", str(path), "--n-trials", "6"]) == 0

    trials = optuna.load_study(study_name="coin", storage=sweep.storage_url).get_trials()
    assert [t.number for t in trials] == list(range(7))  # continued, not started over
    assert trials[5].state.name == "FAIL"
    assert trials[6].params == trials[5].params and trials[6].system_attrs["failed_trial"] == 5
    assert trials[6].state.name == "COMPLETE"
    assert (study_dir / "trial-6" / "config.yaml").is_file()
    summary = json.loads((study_dir / "summary.json").read_text())
    assert "retried as trial 6" in summary["trials"][5]["error"]
