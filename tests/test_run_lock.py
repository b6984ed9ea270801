"""One live process per run folder: a second `train` / `pipeline` (or rl stage of a sweep trial) on a folder
another process holds exits 2 at once naming the holder, before any model loads and without writing anything;
the lock dies with its holder (kill -9 included), and the ranks of one accelerate job are one holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlft import cli, stages
from rlft.config.schema import save_config
from rlft.errors import RlftError
from rlft.runtime.run_lock import LOCK_FILE, RunLockedError, holder_of, run_lock
from tests.test_resume import make_config

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    from rlft.runtime.run_lock import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder():
    """Starts a process that holds a run folder's lock; yields a function (run folder) -> that process."""
    processes = []

    def start(run_dir: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run_dir)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


@pytest.fixture
def no_model(monkeypatch):
    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded")

    from rlft.stages import common, rl

    monkeypatch.setattr(rl, "load_trainable", trap)
    monkeypatch.setattr(rl, "ensure_base_checkpoint", trap)
    monkeypatch.setattr(common, "ensure_base_checkpoint", trap)


@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_a_second_process_on_a_locked_run_folder_exits_2_naming_the_holder(
    command, tmp_path, holder, no_model, capsys
):
    config = make_config(tmp_path / "runs", "grpo")
    config_path = tmp_path / "config.yaml"
    save_config(config, config_path)
    process = holder(config.run_dir)
    assert cli.main([command, "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert f"is in use by pid {process.pid} on host" in err and "another `name`" in err
    assert sorted(p.name for p in config.run_dir.iterdir()) == [LOCK_FILE]  # nothing written
    assert holder_of(config.run_dir)["pid"] == process.pid  # the holder's record left as it was


def test_the_rl_stage_takes_the_lock_itself(tmp_path, holder, no_model):
    """A library caller or a sweep trial (which calls the stages, not the CLI) is refused the same way."""
    config = make_config(tmp_path, "grpo")
    holder(config.run_dir)
    with pytest.raises(RunLockedError, match="is in use by pid"):
        stages.run_rl(config)


def test_the_lock_of_a_killed_process_never_blocks(tmp_path, holder):
    process = holder(tmp_path / "run")
    with pytest.raises(RunLockedError), run_lock(tmp_path / "run"):
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # a stale file: the kernel released the lock
    with run_lock(tmp_path / "run"):
        assert holder_of(tmp_path / "run")["pid"] == os.getpid()


def test_the_lock_is_reentrant_in_a_process_and_released_on_exit(tmp_path, holder):
    with run_lock(tmp_path / "run"), run_lock(tmp_path / "run"):  # pipeline -> rl stage
        record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"] > 0
    process = holder(tmp_path / "run")  # released: another process takes it
    assert holder_of(tmp_path / "run")["pid"] == process.pid


def test_other_ranks_of_a_job_take_no_lock(tmp_path, holder):
    holder(tmp_path / "run")  # the main rank
    with run_lock(tmp_path / "run", main_process=False):  # rank 1 of the same job runs on
        pass


def test_a_run_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "runs").write_text("a file where the run folder should be")
    with (
        pytest.raises(RlftError, match=r"cannot lock the run folder .*runs/x") as info,
        run_lock(tmp_path / "runs" / "x"),
    ):
        pass
    assert info.value.exit_code == 2
