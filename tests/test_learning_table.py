"""The learning table's logic (benchmarks/learning_table.py, learning_table_results.py), without running a model.

Cell order (must-fill first, seed-major, SFT before the RL cells it seeds), the resume (finished cells skipped, a
stopped cell redone in a fresh run folder), equal episode budgets across methods, the normalisation, rliable's IQM
on hand-made numbers against a hand computation, and the README block rewrite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlft.config.yaml_io import apply_overrides, parse_overrides, read_yaml
from tests.test_code_size import oversized

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmark scripts import each other as siblings

import learning_table as lt  # noqa: E402
import learning_table_curves as ltc  # noqa: E402
import learning_table_decisions as ltd  # noqa: E402
import learning_table_results as ltr  # noqa: E402
from learning_table_results import Cell  # noqa: E402

SPEC = {
    "seeds": [0, 1],
    "envs": {
        "lake": {"must_fill": True, "budget_episodes": 128, "score": {"metric": "success", "optimum": 1.0}},
        "cliff": {"must_fill": False, "budget_episodes": 128, "score": {"metric": "success", "optimum": 1.0}},
    },
    "methods": {
        "grpo": {"must_fill": True, "overrides": {"rl.trainer": {"per_device_train_batch_size": 64}}},
        "sft": {"must_fill": True},
        "ppo": {"must_fill": False, "overrides": {"rl.trainer": {"per_device_train_batch_size": 32}}},
    },
}


def test_cells_run_must_fill_first_seed_major_with_sft_before_its_rl_cells():
    order = [(c.env, c.method, c.seed) for c in ltr.cell_order(SPEC)]
    assert order == [
        ("lake", "sft", 0),
        ("lake", "grpo", 0),
        ("lake", "sft", 1),
        ("lake", "grpo", 1),
        ("lake", "ppo", 0),
        ("cliff", "sft", 0),
        ("cliff", "grpo", 0),
        ("cliff", "ppo", 0),
        ("lake", "ppo", 1),
        ("cliff", "sft", 1),
        ("cliff", "grpo", 1),
        ("cliff", "ppo", 1),
    ]


def _summary(greedy: float, sampled: float) -> dict:
    return {
        "greedy": {"success": greedy, "return": greedy},
        "sampled": {"success": sampled, "return": sampled},
    }


def _record(env: str, method: str, seed: int, greedy: float, sampled: float, **extra) -> dict:
    summary = _summary(greedy, sampled)
    return {
        "cell": {"env": env, "method": method, "seed": seed},
        "test": summary,
        "env": {"id": "x", "kwargs": {}, "max_turns": 30},
        "env_steps": 1000,
        "run_dir": f"runs/t/{env}/{method}_s{seed}",
        "references": {"expert": {"success": 0.5, "return": 0.5}},
        **extra,
    }


def _runner(tmp_path, monkeypatch, spec=SPEC) -> lt.Runner:
    monkeypatch.setattr(lt, "ROOT", tmp_path)
    return lt.Runner({**spec, "results_dir": "results", "runs_dir": "runs", "curve_points": 2})


def test_a_restart_skips_finished_cells_and_names_a_failed_one(tmp_path, monkeypatch):
    runner = _runner(tmp_path, monkeypatch, {**SPEC, "seeds": [0]})
    done = _record("lake", "sft", 0, 0.5, 0.4, sft_checkpoint="runs/lake/sft_s0/checkpoints/sft")
    (runner.results / "lake__sft__s0.json").write_text(json.dumps(done))
    ran = []

    def run_cell(cell, finished):
        ran.append(cell.key)
        if cell.key == "cliff__sft__s0":
            raise RuntimeError("exit 1 from rlft sft")
        return _record(cell.env, cell.method, cell.seed, 0.6, 0.6)

    monkeypatch.setattr(runner, "run_cell", run_cell)
    runner.run_all()
    # lake's SFT was finished: not rerun; cliff's failed, so cliff's RL cells have no checkpoint to start from.
    assert ran == ["lake__grpo__s0", "lake__ppo__s0", "cliff__sft__s0"]
    assert sorted(ltr.finished(runner.results)) == ["lake__grpo__s0", "lake__ppo__s0", "lake__sft__s0"]
    assert ltr.skipped(runner.results) == {"cliff__sft__s0": "failed: exit 1 from rlft sft"}
    ran.clear()
    runner.run_all()  # a second restart: only the cells still unfinished
    assert ran == ["cliff__sft__s0"]


def test_a_second_worker_skips_claimed_cells_and_waits_for_the_sft_cell_another_worker_runs(
    tmp_path, monkeypatch
):
    import os
    import subprocess

    runner = _runner(tmp_path, monkeypatch, {**SPEC, "seeds": [0]})
    other = subprocess.Popen(["sleep", "60"])  # a live worker that is not this process
    try:
        for key in ("lake__sft__s0", "cliff__grpo__s0"):
            path = runner.claim_path(Cell(*key.split("__")[:2], 0))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(other.pid))
        ran, waits = [], []

        def run_cell(cell, finished):
            ran.append(cell.key)
            assert runner.claim_path(cell).read_text() == str(os.getpid())  # held while it runs
            return _record(cell.env, cell.method, cell.seed, 0.6, 0.6, sft_checkpoint="ckpt")

        def other_worker_finishes_lake_sft(seconds):
            waits.append(seconds)
            (runner.results / "lake__sft__s0.json").write_text(
                json.dumps(_record("lake", "sft", 0, 0.5, 0.4))
            )
            runner.claim_path(Cell("lake", "sft", 0)).unlink()

        monkeypatch.setattr(runner, "run_cell", run_cell)
        monkeypatch.setattr(lt.time, "sleep", other_worker_finishes_lake_sft)
        runner.run_all(poll_seconds=7)
    finally:
        other.kill()
    # lake's RL cells wait for lake's SFT (the other worker's); cliff's GRPO is the other worker's, never run here.
    assert ran == ["cliff__sft__s0", "cliff__ppo__s0", "lake__grpo__s0", "lake__ppo__s0"]
    assert waits == [7]
    assert [p.name for p in (runner.runs / "claims").glob("*.claim")] == ["cliff__grpo__s0.claim"]


def test_a_stopped_cell_is_redone_in_a_fresh_run_folder(tmp_path):
    assert lt.fresh_run_dir(tmp_path, "lake_grpo_s0") == tmp_path / "lake_grpo_s0"
    (tmp_path / "lake_grpo_s0").mkdir()  # a try that was killed half way
    assert lt.fresh_run_dir(tmp_path, "lake_grpo_s0") == tmp_path / "retry2" / "lake_grpo_s0"
    (tmp_path / "retry2").mkdir()
    (tmp_path / "retry2" / "lake_grpo_s0.log").write_text(
        "$ rlft validate ..."
    )  # killed before its folder existed
    assert lt.fresh_run_dir(tmp_path, "lake_grpo_s0") == tmp_path / "retry3" / "lake_grpo_s0"


def test_every_rl_method_trains_on_the_same_episode_budget_on_every_env():
    """Through rlft's own override mechanism: the method's rl.trainer replaces the env config's, then max_steps
    from the budget lands in it; steps x episodes per step is the env's budget for every method."""
    spec = ltr.load_spec()
    per_step = {
        m: ltr.episodes_per_step(ltr.trainer_of(spec["methods"][m])) for m in spec["methods"] if m != "sft"
    }
    assert per_step["grpo"] == 64 and per_step["gigpo"] == 64  # 64 episodes, one step each
    assert per_step["ppo_turn"] == per_step["ppo_token"] == 16  # 64 episodes, 2 epochs x 2 minibatches
    for env_name, env in spec["envs"].items():
        raw = read_yaml(ROOT / env["config"])
        runner = lt.Runner.__new__(lt.Runner)
        runner.spec = spec
        for method in per_step:
            overrides = runner.rl_overrides(Cell(env_name, method, 0), "runs/x/checkpoints/sft")
            trainer = apply_overrides(raw, overrides)["rl"]["trainer"]
            assert trainer["max_steps"] * ltr.episodes_per_step(trainer) == env["budget_episodes"], (
                env_name,
                method,
            )
            assert trainer == {**ltr.trainer_of(spec["methods"][method]), "max_steps": trainer["max_steps"]}


def test_a_budget_that_is_not_whole_steps_is_refused():
    assert ltr.max_steps_for(1280, {"per_device_train_batch_size": 32, "num_iterations": 2}) == 80
    with pytest.raises(ValueError, match="not a whole number of steps of 64"):
        ltr.max_steps_for(100, {"per_device_train_batch_size": 64})


def test_overrides_round_trip_through_rlfts_parser():
    mapping = {
        "rl.trainer": {"learning_rate": 0.0002, "beta": 0.0},
        "rl.curriculum.strategy": "plr",
        "x.on": True,
    }
    parsed = parse_overrides(ltr.as_overrides(mapping))
    assert {".".join(path): value for path, value in parsed} == mapping


def test_normalisation_success_over_optimum_and_taxi_between_random_and_optimal():
    lake = {"score": {"metric": "success", "optimum": 1.0}}
    assert ltr.normalised(lake, _record("l", "grpo", 0, 0.74, 0.41), "greedy") == pytest.approx(0.74)
    # slippery: the optimum's success probability within the turn limit (exact, stored with the cell) is 1.0
    slippery = {"score": {"metric": "success", "optimum": "value_iteration"}}
    record = _record("s", "grpo", 0, 0.30, 0.20)
    record["references"]["exact"] = {"optimal": 0.4, "random": 0.01, "horizon": 30, "tasks": 1}
    assert ltr.normalised(slippery, record, "sampled") == pytest.approx(0.20 / 0.4)
    assert ltr.optimum_success(slippery, record) == (0.4, "finite-horizon value iteration, 30 turns")
    taxi = {"score": {"metric": "return", "normalise": "random_to_optimal"}}
    record = _record("t", "grpo", 0, 0.0, 0.0)
    record["test"]["greedy"]["return"] = 5.0
    record["references"]["exact"] = {"optimal": 8.0, "random": -200.0, "horizon": 25, "tasks": 1}
    assert ltr.normalised(taxi, record, "greedy") == pytest.approx((5.0 + 200.0) / (8.0 + 200.0))


def test_a_cell_stores_the_exact_references_of_its_test_seeds():
    """The slippery map's optimum within its 30 turns is a success probability well below 1 (envs/optimum.py:
    about 0.35), and Taxi's random policy scores far below its optimum."""
    slippery = lt.reference_returns_on_test_seeds(
        lt.load_config(ROOT / "configs/frozen_lake_4x4_slippery_grpo.yaml")
    )
    assert slippery["horizon"] == 30 and 0.2 < slippery["optimal"] < 0.5 and slippery["random"] < 0.05
    taxi = lt.reference_returns_on_test_seeds(lt.load_config(ROOT / "configs/taxi_grpo.yaml"))
    assert taxi["horizon"] == 25 and taxi["optimal"] > 0 > taxi["random"]


def test_iqm_over_envs_and_seeds_matches_a_hand_computation():
    # 2 envs x 3 seeds = 6 scores, sorted .1 .2 .4 .5 .9 1.0; the IQM trims 25% (one score) off each end:
    # (0.2 + 0.4 + 0.5 + 0.9) / 4 = 0.5.
    matrix, envs = ltr.method_matrix({"a": {0: 0.1, 1: 0.2, 2: 0.9}, "b": {0: 0.4, 1: 0.5, 2: 1.0}})
    assert envs == ["a", "b"] and matrix.shape == (3, 2)
    estimates = ltr.iqm_with_ci({"m": matrix, "same": np.full((3, 2), 0.7)}, reps=500)
    iqm, low, high = estimates["m"]
    assert iqm == pytest.approx(0.5)
    assert low < iqm < high and low >= 0.1 and high <= 1.0
    assert estimates["same"] == pytest.approx((0.7, 0.7, 0.7))  # no spread: the interval is the point


def test_a_method_with_missing_seeds_aggregates_the_same_number_of_seeds_per_env():
    matrix, envs = ltr.method_matrix({"a": {0: 0.1, 1: 0.2, 2: 0.9}, "b": {1: 0.4}, "c": {}})
    assert envs == ["a", "b"]
    assert matrix.tolist() == [[0.1, 0.4]]


def test_the_table_shows_means_targets_pairing_and_names_the_missing_cells():
    spec = {**SPEC, "seeds": [0, 1], "bootstrap_reps": 200}
    spec["envs"] = {"lake": {**SPEC["envs"]["lake"], "target": 0.95}}
    records = {
        Cell("lake", "sft", 0).key: _record("lake", "sft", 0, 0.74, 0.41),
        Cell("lake", "sft", 1).key: _record("lake", "sft", 1, 0.70, 0.40),
        Cell("lake", "grpo", 0).key: _record("lake", "grpo", 0, 0.96, 0.98),
        Cell("lake", "grpo", 1).key: _record("lake", "grpo", 1, 0.60, 0.97),
    }
    text = ltr.markdown(spec, records, {Cell("lake", "ppo", 0).key: "rlft validate: unknown key 'rl.x'"})
    assert "Cells finished: 4 of 6" in text
    # grpo: greedy mean (0.96 + 0.60) / 2 = 0.78 < 0.95; seed 1 ends below its SFT's greedy 0.70
    assert (
        "| lake | grpo | 2 | 0.780 | 0.975 | 0.780 / 0.78 | 0.975 / 0.97 | no (>= 0.95) | 1/2 | 1000 |"
        in text
    )
    assert "- lake x ppo, seeds 0, 1 (as time allows): missing: rlft validate: unknown key 'rl.x'" in text
    assert "| grpo | 2 x 1 (lake) |" in text
    assert (
        "| lake | sft | 2 | 0.720 | 0.405 |" in text and "| no (>= 0.95) | - | - |" in text
    )  # SFT: no pairing
    one_seed = {k: r for k, r in records.items() if r["cell"]["seed"] == 0}
    assert "| grpo | 1 x 1 (lake) | 0.960 (1 seed: no CI) | 0.980 (1 seed: no CI) |" in ltr.markdown(
        spec, one_seed, {}
    )


def test_the_checkpoint_selected_on_validation_is_reported_beside_the_final_policy():
    spec = {**SPEC, "seeds": [0, 1], "bootstrap_reps": 200}
    spec["envs"] = {"lake": {**SPEC["envs"]["lake"], "target": 0.95}}
    chosen = lambda step, val, g, s: {"step": step, "validation_success": val, **_summary(g, s)}  # noqa: E731
    records = {
        Cell("lake", "sft", 0).key: _record("lake", "sft", 0, 0.74, 0.41),
        Cell("lake", "grpo", 0).key: _record(
            "lake", "grpo", 0, 0.50, 0.90, selected=chosen(40, 0.8, 0.80, 0.70)
        ),
        Cell("lake", "grpo", 1).key: _record(
            "lake", "grpo", 1, 0.60, 0.97, selected=chosen(0, 0.7, 0.70, 0.40)
        ),
        Cell("lake", "ppo", 0).key: _record(
            "lake", "ppo", 0, 0.30, 0.30
        ),  # kept no checkpoint: not in that table
    }
    text = ltr.markdown(spec, records, {})
    # selected greedy (0.80 + 0.70) / 2 = 0.75, sampled (0.70 + 0.40) / 2 = 0.55; the final policy's stay as they were
    assert "| 0/1 | 1000 | 0.750 / 0.550 at 40, 0 |" in text  # seed 0 ends below its SFT (0.50 < 0.74)
    assert "| lake | grpo | 2 | 0.550 | 0.935 |" in text
    selected = text[text.index("(checkpoint selected on validation)") :]
    assert "| sft | 1 x 1 (lake) | 0.740 (1 seed: no CI) |" in selected  # SFT is its own selection
    assert "| ppo | 0 x 0 (-) | - | - |" in selected
    assert (
        ltr.normalised(spec["envs"]["lake"], records[Cell("lake", "grpo", 0).key], "greedy", "selected")
        == 0.80
    )


def test_the_readme_block_is_rewritten_between_its_markers_only():
    text = f"# rlft\n\nbefore\n{ltr.BEGIN}\nold table\n{ltr.END}\nafter\n"
    assert (
        ltr.rewrite_block(text, "new table\n")
        == f"# rlft\n\nbefore\n{ltr.BEGIN}\nnew table\n{ltr.END}\nafter\n"
    )
    with pytest.raises(ValueError, match="no <!-- results:begin -->"):
        ltr.rewrite_block("# rlft\n", "table")


def test_the_readme_has_the_results_block():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert (
        text.count(ltr.BEGIN) == 1
        and text.count(ltr.END) == 1
        and text.index(ltr.BEGIN) < text.index(ltr.END)
    )


def test_the_spec_names_existing_configs_and_every_cell_of_the_issue():
    spec = yaml.safe_load(ltr.SPEC.read_text(encoding="utf-8"))
    assert all((ROOT / env["config"]).is_file() for env in spec["envs"].values())
    must = {(c.env, c.method) for c in ltr.cell_order(spec) if ltr.is_must_fill(spec, c)}
    envs, methods = (
        ("random_4x4", "slippery_4x4", "taxi"),
        ("sft", "grpo", "grpo_curriculum", "gigpo", "ppo_turn"),
    )
    assert must == {(e, m) for e in envs for m in methods} and spec["seeds"] == [0, 1, 2]


def test_the_scripts_fit_the_projects_size_limits():
    assert [
        found
        for name in (
            "learning_table.py",
            "learning_table_results.py",
            "learning_table_curves.py",
            "learning_table_decisions.py",
            "learning_table_report.py",
        )
        for found in oversized(ROOT / "benchmarks" / name)
    ] == []


def test_validation_curves_keep_greedy_and_sampled_and_are_plotted_per_env(tmp_path, monkeypatch):
    rows = [
        {"stage": "rl", "step": 1, "loss": 0.1},  # a training row: not a validation
        {
            "stage": "rl",
            "episode/env_steps_total": 0.0,
            "eval/val_success_greedy": 0.6,
            "eval/val_success_sampled": 0.4,
        },
        {
            "stage": "rl",
            "episode/env_steps_total": 900.0,
            "eval/val_success_greedy": 0.7,
            "eval/val_success_sampled": 0.5,
        },
    ]
    curve = ltc.validation_curve(rows)
    assert curve == [
        {"env_steps": 0.0, "greedy": 0.6, "sampled": 0.4},
        {"env_steps": 900.0, "greedy": 0.7, "sampled": 0.5},
    ]
    monkeypatch.setattr(ltc, "ROOT", tmp_path)
    spec = {**SPEC, "results_dir": "results"}
    records = {
        Cell("lake", "grpo", 0).key: _record("lake", "grpo", 0, 0.6, 0.6, validation_curve=curve),
        Cell("lake", "sft", 0).key: _record("lake", "sft", 0, 0.6, 0.4),  # no RL: no line
        Cell("cliff", "ppo", 0).key: _record(
            "cliff", "ppo", 0, 0.6, 0.6
        ),  # older record, run folder gone: empty
    }
    drawn = {}
    monkeypatch.setattr(
        ltc, "plot_curves", lambda path, panels, title, **kw: drawn.setdefault(path.name, panels) and path
    )
    ltc.plot_validation_curves(spec, records)
    assert sorted(drawn) == ["curves_greedy.png", "curves_sampled.png"]
    assert drawn["curves_greedy.png"]["lake"] == {
        "grpo": [[{"env_steps": 0.0, "val_success": 0.6}, {"env_steps": 900.0, "val_success": 0.7}]]
    }
    assert drawn["curves_sampled.png"]["lake"]["grpo"][0][1]["val_success"] == 0.5
    assert drawn["curves_greedy.png"]["cliff"] == {"ppo": [[]]}


def test_a_normalised_return_without_one_finished_task_does_not_meet_the_target():
    taxi = {"target": 0.9, "score": {"metric": "return", "normalise": "random_to_optimal"}}
    hack = _record("taxi", "grpo", 0, 0.0, 0.0)  # success 0 in both modes
    solved = _record("taxi", "grpo", 1, 0.8, 0.7)
    assert ltr.target_met(taxi, {"greedy": 0.925, "sampled": 0.925}, [hack]) == "no (success 0)"
    assert ltr.target_met(taxi, {"greedy": 0.95, "sampled": 0.93}, [hack, solved]) == "yes"
    assert ltr.target_met(taxi, {"greedy": 0.95, "sampled": 0.85}, [solved]) == "no"
    lake = {"target": 0.9, "score": {"metric": "success", "optimum": 1.0}}
    assert ltr.target_met(lake, {"greedy": 0.95, "sampled": 0.95}, [solved]) == "yes"


def test_the_recorded_commit_is_dirty_for_changed_code_but_not_for_the_tables_own_results(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks/results").mkdir(parents=True)
    (tmp_path / "benchmarks/results/progress.log").write_text("start\n")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = lt.commit_id(tmp_path)
    assert len(head) >= 7 and not head.endswith("-dirty")
    (tmp_path / "benchmarks/results/progress.log").write_text("start\nanother worker\n")
    assert lt.commit_id(tmp_path) == head
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    assert lt.commit_id(tmp_path) == head + "-dirty"


def test_the_decision_table_averages_the_audits_and_names_the_most_frequent_disagreement_over_seeds():
    def audited(method, seed, agreement, turns, disagreements):
        record = _record("lake", method, seed, 0.5, 0.5)
        record["test"]["decisions"] = {"agreement": agreement, "turns": turns, "disagreements": disagreements}
        return record

    at_13 = "S F\nH @\nrow 3 col 1\nleft H down wall"
    at_9 = "S F\n@ F\nrow 2 col 1\nleft F down F"
    records = {
        "a": audited("sft", 0, 0.90, 100, [{"observation": at_13, "policy": "down", "expert": "right", "count": 6}]),
        "b": audited("sft", 1, 0.80, 50, [{"observation": at_9, "policy": "up", "expert": "down", "count": 5},
                                          {"observation": at_13, "policy": "down", "expert": "right", "count": 3}]),
        "c": _record("lake", "grpo", 0, 0.5, 0.5),  # evaluated before the audit: not in the table
    }  # fmt: skip
    rows = ltd.decision_rows(SPEC, records)
    # mean (0.90 + 0.80) / 2 = 0.85; down-at-row-3-col-1 counted 6 + 3 = 9 of 150 turns beats up-at-9 (5)
    assert (
        "| lake | sft | 2 | 0.850 | down where the expert plays right (9 of 150 turns; at 'row 3 col 1 / left H down "
        "wall') |" in rows
    )
    assert not any("| grpo |" in row for row in rows)


def test_a_worker_restarts_itself_between_cells_when_the_code_changed(tmp_path, monkeypatch):
    """A worker on older code could fail to read the config.yaml a newer rlft wrote (after hours of a cell): before
    it claims the next cell it re-executes itself (same interpreter, same arguments) when the code changed."""
    runner = _runner(tmp_path, monkeypatch, {**SPEC, "seeds": [0]})
    stamps = iter(["same", "changed"])
    monkeypatch.setattr(lt, "code_stamp", lambda: next(stamps))
    runner.code = "same"
    ran, execs = [], []

    def run_cell(cell, finished):
        ran.append(cell.key)
        return _record(cell.env, cell.method, cell.seed, 0.6, 0.6, sft_checkpoint="ckpt")

    class Restarted(Exception):
        pass

    def execv(path, argv):
        execs.append((path, argv))
        raise Restarted

    monkeypatch.setattr(runner, "run_cell", run_cell)
    monkeypatch.setattr(lt.os, "execv", execv)
    with pytest.raises(Restarted):
        runner.run_all()
    assert ran == ["lake__sft__s0"]  # one cell on the old code, then the restart before the next
    assert execs == [(sys.executable, [sys.executable, *sys.argv])]
    assert not list((runner.runs / "claims").glob("*.claim"))  # nothing held across the restart
    assert "the code changed since this worker started" in runner.progress.read_text()


def test_the_code_stamp_changes_with_the_code_only(tmp_path):
    from cell_runs import code_stamp

    (tmp_path / "rlft").mkdir()
    (tmp_path / "rlft" / "a.py").write_text("x = 1\n")
    (tmp_path / "runs").mkdir()
    before = code_stamp(tmp_path)
    (tmp_path / "runs" / "metrics.py").write_text("not code the worker runs\n")
    assert code_stamp(tmp_path) == before
    (tmp_path / "rlft" / "a.py").write_text("x = 2\n")
    assert code_stamp(tmp_path) != before


def test_a_failed_cells_reason_names_repo_relative_paths(tmp_path, monkeypatch):
    runner = _runner(tmp_path, monkeypatch, {**SPEC, "seeds": [0], "envs": {"lake": SPEC["envs"]["lake"]}})

    def run_cell(cell, finished):
        raise RuntimeError(f"{lt.ROOT}/runs/lake/lake_sft_s0/config.yaml: unknown key 'eval.x'")

    monkeypatch.setattr(runner, "run_cell", run_cell)
    runner.run_all()
    reason = "runs/lake/lake_sft_s0/config.yaml: unknown key 'eval.x'"
    assert ltr.skipped(runner.results)["lake__sft__s0"] == f"failed: {reason}"
    assert f"lake__sft__s0: failed: RuntimeError: {reason}" in runner.progress.read_text()
    assert str(tmp_path) not in runner.progress.read_text()
