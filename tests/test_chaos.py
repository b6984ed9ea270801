"""Chaos: `rlft train` killed with SIGKILL at random points, and continued each time as a user would, ends as if
it had never been killed: the same final weights, bit for bit, and the same metrics.jsonl and transcripts.jsonl,
row for row (wall-clock fields aside), every step once.

The kills are real (`kill -9` of the `rlft train` process: nothing of rlft runs after it) and land where they
land: in a rollout, an update, a checkpoint save (one kill waits for a save to begin), the final save, or before
the first checkpoint. Each next start is what a user types: `rlft train ... --resume` when the run has a complete
checkpoint, else `rlft train ...` again (what `--resume` itself says to do when there is none). The delays are
drawn from a seeded RNG over the training window measured on the uninterrupted run, in the same test, on the same
machine, so they scale with its speed and load.
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
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import TrainerCallback

from rlft import stages
from rlft.algorithms.checkpointing import STAGING, latest_complete, list_checkpoints
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
# Three kills at random delays and one the moment a checkpoint save begins, in this order.
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


def wait_for_lock(process: subprocess.Popen, run_dir: Path, timeout: float = 300.0) -> float | None:
    """When `process` took the run lock (its imports done, the stage begun); None if it ended first."""
    start = time.monotonic()
    while process.poll() is None:
        holder = holder_of(run_dir)
        if holder and holder.get("pid") == process.pid:
            return time.time()
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"rlft train (pid {process.pid}) took no run lock in {timeout} s")
        time.sleep(0.01)
    return None


@dataclass
class Window:
    """The uninterrupted run's timings, in seconds after it took the run lock."""

    train_start: float  # its first step began
    end: float  # it exited (final save and wandb's end included)

    def delay(self, rng: random.Random, steps_left: int) -> float:
        """A random point of the training still to do, for a run resumed with `steps_left` steps to train."""
        return self.train_start + rng.uniform(0, 1) * (self.end - self.train_start) * steps_left / N_STEPS


def measured_run(config_path: Path, run_dir: Path, log: Path) -> Window:
    process = rlft_train(config_path, resume=False, log=log)
    locked = wait_for_lock(process, run_dir)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    ended = time.time()
    step_times = [row["time"] for row in map(json.loads, (run_dir / "metrics.jsonl").open()) if "loss" in row]
    assert locked is not None and len(step_times) == N_STEPS
    per_step = (step_times[-1] - step_times[0]) / (N_STEPS - 1)
    return Window(train_start=step_times[0] - per_step - locked, end=ended - locked)


def newest_step(run_dir: Path) -> int:
    checkpoint = latest_complete(run_dir / "trainer" / "rl")
    return int(checkpoint.name.split("-")[1]) if checkpoint is not None else 0


def kill(process: subprocess.Popen, run_dir: Path, how: str, delay: float, locked: float) -> str:
    """SIGKILL `process` `delay` s after it took the lock, or ("save") the moment a checkpoint save begins.

    Returns where the kill landed (for the failure message), or "" when the process ended first.
    """
    stale = saves_begun(run_dir)  # a save an earlier kill interrupted may have left its staging folder
    while process.poll() is None:
        saving = bool(saves_begun(run_dir) - stale)
        if (how == "save" and saving) or (how == "delay" and time.time() - locked >= delay):
            metrics = run_dir / "metrics.jsonl"
            logged = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            if process.returncode != -signal.SIGKILL:
                return ""  # it exited on its own just before the signal
            where = "during a save" if saving else f"{time.time() - locked:.2f} s after the lock"
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
    window = measured_run(straight_path, straight_dir, tmp_path / "straight.log")

    config_path = chaos_config_file(tmp_path / "chaos", algorithm)
    run_dir = tmp_path / "chaos" / "runs" / "chaos"
    rng = random.Random(f"{SEED}-{algorithm}")
    landed: list[str] = []
    finished = False
    for attempt, how in enumerate(KILLS):
        resume = newest_step(run_dir) > 0  # else start again, as `--resume` says when there is no checkpoint
        process = rlft_train(config_path, resume, tmp_path / f"attempt{attempt}.log")
        locked = wait_for_lock(process, run_dir)
        delay = window.delay(rng, N_STEPS - newest_step(run_dir))
        where = kill(process, run_dir, how, delay, locked) if locked is not None else ""
        if not where:  # the run ended before the kill: it must have finished
            assert process.wait() == 0, (landed, (tmp_path / f"attempt{attempt}.log").read_text()[-3000:])
            finished = True
            break
        landed.append(f"{'resume' if resume else 'fresh start'} killed {where}")
    if not finished:
        last_log = tmp_path / "final.log"
        process = rlft_train(config_path, newest_step(run_dir) > 0, last_log)
        assert process.wait(timeout=600) == 0, (landed, last_log.read_text()[-3000:])

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
