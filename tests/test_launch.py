"""`rlft launch`: a grid of configs x overrides x seeds from one command.

Grid expansion (the exact job list, names, run dirs and overrides), every error found before anything runs (exit
2, the grid key named, nothing written), the plan for jobs that finished or crashed before, the per-process
environment, --dry-run, the example grids, and a tiny real grid run two at a time with one job failing: the
others finish, the failure is reported, and the next launch skips what finished and reruns what failed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rlft import cli
from rlft.algorithms.checkpoint_folders import COMPLETE
from rlft.config.schema import load_config
from rlft.errors import ConfigError
from rlft.runtime.tracking import experiment_group, read_metrics
from rlft.tools.grid import expand, read_grid, read_marker
from rlft.tools.launch_plan import prepare
from rlft.tools.launch_runner import job_environment
from tests.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]

# A tiny RL run from the base policy: 1 GRPO step of 4 episodes on CliffWalking.
TINY = {
    "name": "tiny",
    "model": TINY_MODEL,
    "env": {
        "id": "rlft/CliffWalking-v0",
        "kwargs": {"invalid_penalty": -0.5},
        "max_turns": 4,
        "train_seeds": {"start": 0, "count": 4},
    },
    "rollout": {"num_envs": 4, "max_action_tokens": 3},
    "rl": {
        "init_from": "base",
        "trainer": {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 4},
    },
    "tracking": {"wandb": {"enabled": False}},
}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with two tiny configs (a.yaml, b.yaml); the launch runs from there."""
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path / "a.yaml", TINY)
    write_yaml(
        tmp_path / "b.yaml",
        {
            **TINY,
            "rl": {
                **TINY["rl"],
                "algorithm": "ppo",
                "trainer": {"max_steps": 1, "per_device_train_batch_size": 2},
            },
        },
    )
    return tmp_path


def launch(*argv: str) -> int:
    return cli.main(["launch", *argv])


# ---------------------------------------------------------------- expansion


def test_grid_expands_configs_x_variants_x_seeds(workdir):
    grid_path = write_yaml(
        workdir / "grid.yaml",
        {
            "experiment": "exp",
            "configs": ["a.yaml", "b.yaml"],
            "seeds": [0, 1],
            "command": "train",
            "overrides": {"base": [], "low_lr": ["rl.trainer.learning_rate=1e-4"]},
        },
    )
    grid = read_grid(grid_path)
    jobs = expand(grid)
    assert [job.name for job in jobs] == [
        "a-base-s0",
        "a-base-s1",
        "a-low_lr-s0",
        "a-low_lr-s1",
        "b-base-s0",
        "b-base-s1",
        "b-low_lr-s0",
        "b-low_lr-s1",
    ]
    assert [job.run_dir for job in jobs] == [Path("runs/exp") / job.name for job in jobs]
    assert {job.log_path for job in jobs} == {Path("runs/exp/logs") / f"{job.name}.log" for job in jobs}
    low = jobs[3]
    assert (low.config, low.seed, low.variant_key) == ("a.yaml", 1, "overrides.low_lr")
    assert low.overrides == [
        "rl.trainer.learning_rate=1e-4",
        "name=a-low_lr-s1",
        "output_dir=runs/exp",
        "seed=1",
        "tracking.experiment=exp",
    ]
    assert low.argv("train") == ["train", "--config", "a.yaml", *low.overrides]
    config = load_config(low.config, low.overrides)
    assert (config.name, config.seed, config.run_dir, config.tracking.experiment) == (
        "a-low_lr-s1",
        1,
        Path("runs/exp/a-low_lr-s1"),
        "exp",
    )
    assert config.rl.trainer["learning_rate"] == 1e-4 and experiment_group(config) == "exp"


def test_list_variants_are_named_from_their_overrides_and_values_keep_their_type(workdir):
    grid_path = write_yaml(
        workdir / "grid.yaml",
        {
            "experiment": "2024",
            "configs": ["a.yaml"],
            "output_dir": "out",
            "overrides": [[], ["rl.trainer.learning_rate=1e-4"], ["rl.trainer.beta=0.04", "env.max_turns=6"]],
        },
    )
    jobs = expand(read_grid(grid_path))
    assert [job.name for job in jobs] == ["a-s0", "a-learning_rate-1e-4-s0", "a-beta-0.04+max_turns-6-s0"]
    assert [job.variant_key for job in jobs] == [None, "overrides[1]", "overrides[2]"]
    config = load_config(jobs[2].config, jobs[2].overrides)
    # '2024' would read as a number: the launcher quotes it, so the experiment stays the string it is
    assert (config.tracking.experiment, config.env.max_turns, config.output_dir) == ("2024", 6, "out/2024")


# ---------------------------------------------------------------- errors, before anything runs

BAD_GRIDS = [
    ("unknown-key", {"seed": [0]}, ["unknown key 'seed'", "did you mean 'seeds'"]),
    ("missing-experiment", {"experiment": None}, ["missing required key 'experiment'"]),
    ("experiment-not-a-folder-name", {"experiment": "a/b"}, ["key 'experiment' = 'a/b'"]),
    (
        "missing-config-file",
        {"configs": ["a.yaml", "nope.yaml"]},
        ["key 'configs[1]' = 'nope.yaml'", "file does not exist"],
    ),
    (
        "same-config-name",
        {"configs": ["a.yaml", "sub/a.yaml"]},
        ["configs[0] and configs[1] are both named 'a'"],
    ),
    (
        "override-without-value",
        {"overrides": {"x": ["rl.trainer.learning_rate"]}},
        ["key 'overrides.x'", "is not of the form key.sub=value"],
    ),
    (
        "override-not-a-list",
        {"overrides": [["rl.algorithm=ppo"], "env.max_turns=3"]},
        ["key 'overrides[1]' = 'env.max_turns=3'", "expected a list"],
    ),
    (
        "override-owned-by-launch",
        {"overrides": {"x": ["seed=3"]}},
        ["key 'overrides.x'", "'seed' is set by rlft launch"],
    ),
    ("two-empty-variants", {"overrides": {"x": [], "y": []}}, ["more than one variant without overrides"]),
    ("bad-seeds", {"seeds": [0, "one"]}, ["key 'seeds'", "integers >= 0"]),
    ("repeated-seed", {"seeds": [1, 1]}, ["a seed is listed twice"]),
    ("bad-command", {"command": "trian"}, ["key 'command' = 'trian'", "did you mean 'train'"]),
    (
        "bad-config-in-a-variant",
        {"overrides": {"ok": [], "typo": ["rl.trainer.learning_rte=1e-3"]}},
        [
            "2 of 4 jobs cannot start; nothing was run",
            "job a-typo-s0 (key 'configs[0]' = 'a.yaml' with key 'overrides.typo')",
            "unknown key 'rl.trainer.learning_rte'",
            "did you mean 'learning_rate'",
            "job a-typo-s1",
        ],
    ),
    (
        "train-without-sft",
        {"overrides": [["rl.init_from=sft"]]},
        ["job a-init_from-sft-s0", "has no checkpoint; run `rlft sft` first"],
    ),
    ("eval-without-checkpoints", {"command": "eval"}, ["job a-s0", "no checkpoint to evaluate"]),
]


@pytest.mark.parametrize(
    "edit, expected", [case[1:] for case in BAD_GRIDS], ids=[case[0] for case in BAD_GRIDS]
)
def test_a_bad_grid_fails_before_anything_runs(edit, expected, workdir, capsys):
    write_yaml(workdir / "sub" / "a.yaml", TINY)
    grid = {"experiment": "exp", "configs": ["a.yaml"], "seeds": [0, 1], "command": "train", **edit}
    write_yaml(workdir / "grid.yaml", {k: v for k, v in grid.items() if v is not None})
    assert launch("--grid", "grid.yaml") == 2
    err = capsys.readouterr().err
    assert err.startswith("rlft: error: grid.yaml: ")
    for text in expected:
        assert text in err
    assert not (workdir / "runs").exists()  # nothing written


def test_a_missing_or_empty_grid_file(workdir, capsys):
    assert launch("--grid", "nope.yaml") == 2
    assert "config file 'nope.yaml' does not exist" in capsys.readouterr().err
    (workdir / "empty.yaml").write_text("\n")
    assert launch("--grid", "empty.yaml") == 2
    assert "the grid file is empty" in capsys.readouterr().err


# ---------------------------------------------------------------- plans: finished, crashed, blocked


def test_plan_skips_finished_jobs_resumes_crashed_ones_and_blocks_unresumable_ones(workdir):
    grid = read_grid(
        write_yaml(
            workdir / "grid.yaml",
            {"experiment": "exp", "configs": ["a.yaml"], "seeds": [0, 1, 2, 3], "command": "train"},
        )
    )
    jobs = expand(grid)
    (jobs[0].run_dir).mkdir(parents=True)
    (jobs[0].run_dir / "launch.json").write_text(json.dumps({"train": {"status": "done"}}))
    (jobs[1].run_dir / "trainer/rl/checkpoint-2").mkdir(parents=True)  # crashed after its first checkpoint
    (jobs[1].run_dir / "trainer/rl/checkpoint-2" / COMPLETE).write_text("")
    (jobs[1].run_dir / "trainer/rl/checkpoint-3").mkdir()  # half-written when it died
    (jobs[2].run_dir / "trainer/rl/checkpoint-1").mkdir(parents=True)  # nothing complete to resume from
    prepare(grid, jobs)
    assert [(job.status, job.note) for job in jobs[:3]] == [
        ("skipped", "completed earlier"),
        ("pending", "resuming RL from checkpoint-2"),
        (
            "blocked",
            f"{jobs[2].run_dir / 'trainer/rl'} holds only incomplete checkpoints; move it away to start over",
        ),
    ]
    assert jobs[0].steps == [] and jobs[2].steps == []
    assert jobs[1].steps == [[*jobs[1].argv("train"), "--resume"]]
    assert jobs[3].steps == [jobs[3].argv("train")]
    # a pipeline that crashed in RL: train --resume, then eval
    pipeline = read_grid(
        write_yaml(workdir / "p.yaml", {"experiment": "exp", "configs": ["a.yaml"], "seeds": [1]})
    )
    (job,) = expand(pipeline)
    prepare(pipeline, [job])
    assert job.steps == [[*job.argv("train"), "--resume"], job.argv("eval")]


def test_each_process_gets_its_share_of_threads_and_its_own_gpu():
    env = job_environment(1, 2, environ={}, cpu_count=16, gpu_count=4)
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["CUDA_VISIBLE_DEVICES"]) == ("8", "8", "1")
    assert job_environment(5, 6, environ={}, cpu_count=4, gpu_count=4)["CUDA_VISIBLE_DEVICES"] == "1"
    assert job_environment(0, 3, environ={}, cpu_count=2, gpu_count=0)["OMP_NUM_THREADS"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in job_environment(0, 3, environ={}, cpu_count=2, gpu_count=0)
    mine = job_environment(
        0, 2, environ={"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "7"}, cpu_count=16, gpu_count=8
    )
    assert (mine["OMP_NUM_THREADS"], mine["CUDA_VISIBLE_DEVICES"]) == ("3", "7")  # the user's settings stand


# ---------------------------------------------------------------- --dry-run and the example grids


def test_dry_run_prints_the_commands_and_the_accelerate_lines_and_runs_nothing(workdir, capsys):
    write_yaml(
        workdir / "grid.yaml",
        {
            "experiment": "exp",
            "configs": ["a.yaml"],
            "seeds": [0, 1],
            "overrides": {"hi": ["rl.trainer.learning_rate=0.01"]},
            "command": "train",
        },
    )
    assert launch("--grid", "grid.yaml", "--dry-run", "--parallel", "2") == 0
    out = capsys.readouterr().out
    assert (
        "rlft train --config a.yaml rl.trainer.learning_rate=0.01 name=a-hi-s1 output_dir=runs/exp seed=1 "
        "tracking.experiment=exp\n"
    ) in out
    assert (
        "accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m rlft.cli train --config a.yaml "
        "rl.trainer.learning_rate=0.01 name=a-hi-s0 output_dir=runs/exp seed=0 tracking.experiment=exp\n"
    ) in out
    assert out.count("accelerate launch") == 2
    assert not (workdir / "runs").exists()


GRIDS = sorted((REPO / "configs" / "grids").glob("*.yaml"))


def test_configs_grids_has_an_example():
    assert "quickstart_algos.yaml" in {p.name for p in GRIDS}


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_every_example_grid_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)
    header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert header.startswith("#") and "Hardware:" in header
    assert f"rlft launch --grid configs/grids/{path.name}" in header
    grid = read_grid(path.relative_to(REPO))
    jobs = expand(grid)
    prepare(grid, jobs)
    assert len(jobs) == len(grid.configs) * len(grid.variants) * len(grid.seeds)


# ---------------------------------------------------------------- a tiny real grid


def test_a_tiny_grid_runs_two_at_a_time_reports_a_failure_and_resumes_on_the_next_launch(workdir, capsys):
    write_yaml(
        workdir / "grid.yaml",
        {
            "experiment": "tiny_exp",
            "configs": ["a.yaml"],
            "seeds": [0, 1],
            "command": "train",
            "overrides": {"base": [], "fast": ["rl.trainer.learning_rate=0.01"]},
        },
    )
    names = ["a-base-s0", "a-base-s1", "a-fast-s0", "a-fast-s1"]
    experiment = workdir / "runs" / "tiny_exp"
    # One job fails at run time (its base checkpoint is corrupt), after the launch has checked every config.
    broken = experiment / "a-fast-s1" / "checkpoints" / "base"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{ not json")

    assert launch("--grid", "grid.yaml", "--parallel", "2") == 1
    out = capsys.readouterr().out
    for name in names[:3]:
        run_dir = experiment / name
        assert f"| {name} | done | 0 |" in out
        assert read_marker(run_dir)["train"]["status"] == "done"
        assert {record["stage"] for record in read_metrics(run_dir)} == {"rl"}
        assert (run_dir / "checkpoints" / "rl" / "model.safetensors").is_file()
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (saved["name"], saved["tracking"]["experiment"]) == (name, "tiny_exp")
        assert "rlft train --config a.yaml" in (experiment / "logs" / f"{name}.log").read_text()
    assert f"| a-fast-s1 | failed (see {Path('runs/tiny_exp/logs/a-fast-s1.log')}) | 2 |" in out
    assert "rlft: error: cannot load model" in (experiment / "logs" / "a-fast-s1.log").read_text()
    assert read_marker(experiment / "a-fast-s1")["train"]["status"] == "failed"
    assert "accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m rlft.cli train" in out
    summary = json.loads((experiment / "launch_summary.json").read_text())
    assert [(j["job"], j["status"]) for j in summary["jobs"]] == [
        ("a-base-s0", "done"),
        ("a-base-s1", "done"),
        ("a-fast-s0", "done"),
        ("a-fast-s1", "failed"),
    ]
    first_metrics = (experiment / "a-base-s0" / "metrics.jsonl").read_text()

    # Fixed, and launched again (one at a time, in this process): the finished jobs are skipped.
    (broken / "config.json").unlink()
    broken.rmdir()
    assert launch("--grid", "grid.yaml") == 0
    out = capsys.readouterr().out
    assert "4 jobs, 1 to run, 3 completed earlier" in out
    assert "| a-base-s0 | skipped (completed earlier) |" in out
    assert "| a-fast-s1 | done | 0 |" in out
    assert (experiment / "a-base-s0" / "metrics.jsonl").read_text() == first_metrics
    assert (experiment / "a-fast-s1" / "checkpoints" / "rl" / "model.safetensors").is_file()
    assert read_marker(experiment / "a-fast-s1")["train"]["status"] == "done"
    with pytest.raises(ConfigError, match="unknown key 'seed'"):
        read_grid(write_yaml(workdir / "bad.yaml", {"experiment": "x", "configs": ["a.yaml"], "seed": [1]}))


def test_jobs_run_in_one_process_each_print_only_their_own_wandb_sync_command(workdir, monkeypatch, capsys):
    """Two jobs, one after another in this process, each with an offline wandb run: each job's log names the
    `wandb sync` command of its own run and no other (the second used to repeat the first's)."""
    monkeypatch.setenv("WANDB_MODE", "offline")  # tests default to disabled (conftest)
    write_yaml(workdir / "w.yaml", {**TINY, "tracking": {"wandb": {"enabled": True, "mode": "offline"}}})
    write_yaml(
        workdir / "grid.yaml",
        {"experiment": "sync_exp", "configs": ["w.yaml"], "seeds": [0, 1], "command": "train"},
    )
    assert launch("--grid", "grid.yaml") == 0
    assert "| w-s0 | done | 0 |" in capsys.readouterr().out
    experiment = workdir / "runs" / "sync_exp"
    for name in ("w-s0", "w-s1"):
        log = (experiment / "logs" / f"{name}.log").read_text()
        synced = re.findall(r"^to upload the offline wandb run: wandb sync (\S+)$", log, flags=re.MULTILINE)
        assert len(synced) == 1, log  # one stage (rl), one offline run
        run = Path(synced[0])
        assert run.is_relative_to(Path("runs/sync_exp") / name / "wandb") and run.name.startswith(
            "offline-run-"
        )
        assert (workdir / run).is_dir()
