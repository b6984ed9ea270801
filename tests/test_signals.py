"""SIGTERM / SIGINT during a rollout or a save: a complete checkpoint at the last complete step, exit code
128 + signal, and a resume from it equals a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlft import stages
from rlft.algorithms.checkpoint_folders import latest_complete
from rlft.config.schema import save_config
from tests.test_resume import make_config, per_step_metrics, scramble_rngs, straight_run, weights

ROOT = Path(__file__).resolve().parents[1]

# Runs `rlft train` where, in step 2, the rollout, the update and the save each announce themselves with a
# file and take 1.5 s, so the signal can be delivered while the chosen one is under way.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import torch
    from transformers import Trainer
    from trl import GRPOTrainer
    from rlft.algorithms.grpo import EpisodeRollout
    from rlft.cli import main

    phases = Path(os.environ["RLFT_TEST_PHASES"])
    def slow(phase, step):
        if step == 2:
            (phases / phase).touch()
            time.sleep(1.5)

    rollout, update, save_rng = EpisodeRollout.__call__, GRPOTrainer._compute_loss, Trainer._save_rng_state
    def slow_rollout(self, prompts, trainer):
        slow("rollout", trainer.state.global_step + 1)
        return rollout(self, prompts, trainer)
    def slow_update(self, *args, **kwargs):
        slow("update", self.state.global_step + 1)
        return update(self, *args, **kwargs)
    def slow_save(self, output_dir):
        slow("save", self.state.global_step)
        return save_rng(self, output_dir)
    EpisodeRollout.__call__, GRPOTrainer._compute_loss = slow_rollout, slow_update
    Trainer._save_rng_state = slow_save
    torch.set_num_threads(int(os.environ["RLFT_TEST_THREADS"]))  # as in this process: same float sums
    sys.exit(main(sys.argv[1:]))
""")


def wait_for(predicate, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("signum", "during"), [(signal.SIGTERM, "rollout"), (signal.SIGTERM, "update"), (signal.SIGINT, "save")]
)
def test_signal_saves_a_checkpoint_exits_128_plus_signal_and_resumes_exactly(
    signum, during, tmp_path, tmp_path_factory
):
    straight = straight_run(tmp_path_factory, "grpo")
    config = make_config(tmp_path, "grpo")
    config_path = tmp_path / "config.yaml"
    save_config(config, config_path)
    output_dir = config.run_dir / "trainer" / "rl"
    phases = tmp_path / "phases"
    phases.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RLFT_TEST_THREADS": str(torch.get_num_threads()),
        "RLFT_TEST_PHASES": str(phases),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "train", "--config", str(config_path), "name=resume"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (phases / during).exists())
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    # The exact command, the override included (without it, a copied command would resume another run).
    assert f"Continue with: rlft train --config {config_path} name=resume --resume\n" in stderr
    stopped = latest_complete(output_dir)
    assert stopped.name == "checkpoint-2"  # the step in flight finished and was saved, nothing later
    assert not (config.run_dir / "checkpoints" / "rl").exists()  # no final policy from an interrupted run

    scramble_rngs()
    stages.run_rl(config, resume=True)
    _, metrics_a, weights_a, _ = straight
    assert per_step_metrics(config.run_dir) == metrics_a
    weights_b = weights(config.run_dir)
    assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)


# GracefulStop alone, in a process that inherited SIGINT ignored (`rlft train ... &` from a script): the first
# SIGINT asks for a graceful stop, the second must end the process at once, not restore the inherited ignore.
IGNORED_SIGINT = textwrap.dedent("""
    import signal, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job inherits it
    from rlft.runtime.signals import GracefulStop
    GracefulStop().install()
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_second_sigint_exits_at_once_even_when_sigint_was_inherited_ignored():
    process = subprocess.Popen(
        [sys.executable, "-c", IGNORED_SIGINT],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert process.poll() is None  # the first asks for a graceful stop
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGINT
