"""Chaos: `rlft train` killed with SIGKILL at random points, and continued each time as a user would, ends as if
it had never been killed: the same final weights, bit for bit, and the same metrics.jsonl and transcripts.jsonl,
row for row (wall-clock fields aside), every step once.

The kills are real (`kill -9` of the `rlft train` process: nothing of rlft runs after it) and land where they
land: in a rollout, an update, a checkpoint save (one kill waits for a save to begin), the final save, or before
the first checkpoint. Each next start is what a user types: `rlft train ... --resume` when the run has a complete
checkpoint, else `rlft train ...` again (what `--resume` itself says to do when there is none). The kill points
are drawn from a seeded RNG, one in each quarter of the training (in steps), and each is timed from the logged row
of the step before it, with the step time of the uninterrupted run measured in the same test on the same machine:
a process slower or faster than that run (the machine's load changes) is still killed in the step aimed at.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from transformers import TrainerCallback

from rlft import stages
from rlft.algorithms.checkpoint_folders import STAGING, latest_complete, list_checkpoints
from rlft.config.schema import save_config
from rlft.runtime.run_lock import holder_of
from tests.conftest import tiny_config
from tests.test_resume import LOGS, log_rows, make_config, straight_run

ROOT = Path(__file__).resolve().parents[1]
N_STEPS, SAVE_STEPS = 8, 2
TRAINERS = {
    "grpo": {"num_generations": 2, "per_device_train_batch_size": 4, "beta": 0.04},  # an epoch: 2 steps
    "ppo": {"per_device_train_batch_size": 2, "kl_coef": 0.05, "target_kl": 0.01},  # a rollout batch: 4 steps
}
# The i-th kill lands at a random point of the i-th quarter of the training, except the second, which waits for
# a checkpoint save to begin (a save lasts a fraction of a step: a random delay would seldom hit one).
KILLS = ("delay", "save", "delay", "delay")
SEED = 15


def chaos_config_file(out: Path, algorithm: str) -> Path:
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(out / "runs"),
        name="chaos",
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 6, "train_seeds": {"start": 0, "count": 8}},
        rl={
            "algorithm": algorithm,
            "init_from": "base",
            "trainer": {
                **TRAINERS[algorithm],
                "max_steps": N_STEPS,
                "learning_rate": 1e-2,
                "logging_steps": 1,
                "save_steps": SAVE_STEPS,
                "save_total_limit": 2,
            },
        },
        rollout={"num_envs": 4, "max_action_tokens": 3},
        tracking={"wandb": {"enabled": True, "mode": "offline"}},  # the resumed wandb run included
    )
    path = out / "config.yaml"
    save_config(config, path)
    return path


def rlft_train(config_path: Path, resume: bool, log: Path) -> subprocess.Popen:
    env = {
        k: v for k, v in os.environ.items() if k != "WANDB_MODE"
    }  # conftest disables wandb: the config says
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # one thread in every process: the same float sums
    flags = ["--resume"] if resume else []
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "rlft.cli", "train", "--config", str(config_path), *flags],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def wait_for_start(process: subprocess.Popen, run_dir: Path, timeout: float = 300.0) -> float | None:
    """When `process`'s rl stage started its tracker (imports, run lock and model done; training next), or None
    if the process ended first. The tracker rewrites `wandb_ids.json` when it starts, fresh or resumed."""
    ids, begun = run_dir / "wandb_ids.json", time.monotonic()
    while process.poll() is None:
        holder = holder_of(run_dir)
        ours = holder and holder.get("pid") == process.pid and ids.exists()
        if ours and (started := ids.stat().st_mtime) >= holder["started"]:
            return started
        if time.monotonic() - begun > timeout:
            raise TimeoutError(f"rlft train (pid {process.pid}) did not start training in {timeout} s")
        time.sleep(0.005)
    return None


@dataclass
class Pace:
    """The uninterrupted run's pace, measured in the same test."""

    setup: float  # seconds from its tracker's start to its first step's start
    per_step: float  # seconds a step took, saves included


def measured_run(config_path: Path, run_dir: Path, log: Path) -> Pace:
    process = rlft_train(config_path, resume=False, log=log)
    started = wait_for_start(process, run_dir)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert started is not None, "the tracker never started (wandb_ids.json): the kills could not be timed"
    step_times = [row["time"] for row in map(json.loads, (run_dir / "metrics.jsonl").open()) if "loss" in row]
    assert len(step_times) == N_STEPS
    per_step = (step_times[-1] - step_times[0]) / (N_STEPS - 1)
    return Pace(setup=step_times[0] - per_step - started, per_step=per_step)


def newest_step(run_dir: Path) -> int:
    checkpoint = latest_complete(run_dir / "trainer" / "rl")
    return int(checkpoint.name.split("-")[1]) if checkpoint is not None else 0


def step_logged(run_dir: Path, step: int) -> float | None:
    """When `step`'s training row was logged (its own timestamp), or None if it is not logged yet."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a row still being written
            continue
        if row.get("step") == step and "loss" in row:
            return row["time"]
    return None


def kill_time(run_dir: Path, position: float, resumed_at: int, started: float, pace: Pace) -> float | None:
    """When a run resumed at `resumed_at` (0: a fresh start) is at `position` (in steps: 4.3 is a third of the
    way through step 5, from the row of step 4 on), or None until the step before it is logged. Timed from that
    row, not from the start, so that a run that goes faster or slower than the measured one is killed in the same
    step."""
    whole, fraction = int(position), position % 1
    if whole <= resumed_at:  # the position is in the first step this start trains (or behind it)
        return started + pace.setup + max(0.0, position - resumed_at) * pace.per_step
    logged = step_logged(run_dir, whole)
    return None if logged is None else logged + fraction * pace.per_step


def kill(process: subprocess.Popen, run_dir: Path, how: str, due: Callable[[], float | None]) -> str:
    """SIGKILL `process` at the time `due()` gives, or ("save") the moment a checkpoint save begins.

    Returns where the kill landed (for the failure message), or "" when the process ended first.
    """
    stale = saves_begun(run_dir)  # a save an earlier kill interrupted may have left its staging folder
    while process.poll() is None:
        saving = bool(saves_begun(run_dir) - stale)
        if (how == "save" and saving) or (how == "delay" and (at := due()) is not None and time.time() >= at):
            metrics = run_dir / "metrics.jsonl"
            logged = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            if process.returncode != -signal.SIGKILL:
                return ""  # it exited on its own just before the signal
            where = "during a save" if saving else "at a random point"
            return (
                f"{where}, {logged} metrics rows logged, newest checkpoint then: step {newest_step(run_dir)}"
            )
        time.sleep(0.005)
    return ""


def saves_begun(run_dir: Path) -> set[tuple[str, int]]:
    """The checkpoints being written (each save writes into a new folder under the staging folder)."""
    staging = run_dir / "trainer" / "rl" / STAGING
    try:
        return {(p.name, p.stat().st_ino) for p in staging.iterdir()}
    except OSError:  # no staging folder, or it went away while it was read
        return set()


def same_files(a: Path, b: Path, pattern: str) -> list[str]:
    names = sorted(str(p.relative_to(a)) for p in a.rglob(pattern))
    assert names and names == sorted(str(p.relative_to(b)) for p in b.rglob(pattern)), (names, b)
    return [name for name in names if not filecmp.cmp(a / name, b / name, shallow=False)]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_run_sigkilled_at_random_points_and_continued_equals_an_uninterrupted_run(algorithm, tmp_path):
    straight_path = chaos_config_file(tmp_path / "straight", algorithm)
    straight_dir = tmp_path / "straight" / "runs" / "chaos"
    pace = measured_run(straight_path, straight_dir, tmp_path / "straight.log")

    config_path = chaos_config_file(tmp_path / "chaos", algorithm)
    run_dir = tmp_path / "chaos" / "runs" / "chaos"
    rng = random.Random(f"{SEED}-{algorithm}")
    landed: list[str] = []
    finished = False
    for attempt, how in enumerate(KILLS):
        position = N_STEPS * (attempt + rng.random()) / len(KILLS)
        resumed_at = newest_step(run_dir)
        resume = resumed_at > 0  # else start again, as `--resume` says when there is no checkpoint
        how = "delay" if resumed_at == N_STEPS else how  # no checkpoint save left to wait for
        process = rlft_train(config_path, resume, tmp_path / f"attempt{attempt}.log")
        started = wait_for_start(process, run_dir)
        due = partial(kill_time, run_dir, position, resumed_at, started, pace)
        where = kill(process, run_dir, how, due) if started is not None else ""
        if not where:  # the run ended before the kill: it must have finished
            assert process.wait() == 0, (landed, (tmp_path / f"attempt{attempt}.log").read_text()[-3000:])
            finished = True
            break
        start = f"resume at step {resumed_at}" if resume else "fresh start"
        landed.append(f"{start} killed {where} (aimed at step {position:.2f}, {how})")
    if not finished:
        last_log = tmp_path / "final.log"
        process = rlft_train(config_path, newest_step(run_dir) > 0, last_log)
        assert process.wait(timeout=600) == 0, (landed, last_log.read_text()[-3000:])

    print("\n".join(landed))  # where the kills landed (pytest -rP shows it)
    assert len(landed) >= 2, f"fewer than two kills landed before the run finished: {landed}"
    assert not same_files(
        straight_dir / "checkpoints" / "rl", run_dir / "checkpoints" / "rl", "*.safetensors"
    ), landed
    rows = {name: log_rows(run_dir, name) for name in LOGS}
    assert [row["step"] for row in rows["metrics.jsonl"] if "loss" in row] == list(range(1, N_STEPS + 1)), (
        landed
    )
    for name in LOGS:
        assert rows[name] == log_rows(straight_dir, name), (name, landed)
    assert [p.name for p in list_checkpoints(run_dir / "trainer" / "rl")][-1] == f"checkpoint-{N_STEPS}"


class KilledAfterLogging(Exception):
    pass


class KillAfterLogging(TrainerCallback):
    """Stops the run once `step` is logged, before that step's checkpoint is saved (transformers logs, then saves)."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KilledAfterLogging(self.step)


def test_a_run_killed_before_its_first_checkpoint_and_started_again_logs_every_step_once(
    tmp_path, tmp_path_factory
):
    """`--resume` with no checkpoint says to start without it; the new start drops the killed start's rows."""
    straight_run(tmp_path_factory, "grpo")
    from tests.test_resume import _straight_logs

    config = make_config(tmp_path, "grpo")
    with pytest.raises(KilledAfterLogging):
        stages.run_rl(config, callbacks=[KillAfterLogging(1)])
    assert latest_complete(config.run_dir / "trainer" / "rl") is None
    assert [row["step"] for row in log_rows(config.run_dir, "metrics.jsonl")] == [1]  # logged, never saved
    assert log_rows(config.run_dir, "transcripts.jsonl")
    stages.run_rl(config)  # started again, not resumed
    for name in LOGS:
        assert log_rows(config.run_dir, name) == _straight_logs["grpo"][name], name
