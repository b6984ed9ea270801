"""Storage faults as clear errors, simulated without root tricks (CI runs as root, so chmod proves nothing).

Before a run (exit 2, `rlft validate` included, nothing written): a file where the run folder should be, a
folder that cannot be created (under /proc, under /dev/null), a folder that cannot be written (the probe's
write raises EROFS). During a run (exit 7, one line naming the path and the last good checkpoint): too little
free space for the next checkpoint (`shutil.disk_usage` reports less than the last checkpoint's size), and a
write that fails mid-save with ENOSPC, whose staging folder is removed.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlft import cli, stages
from rlft.algorithms import checkpointing
from rlft.algorithms.checkpoint_folders import STAGING, list_checkpoints
from rlft.algorithms.checkpoint_manifest import verify
from rlft.config.schema import save_config
from rlft.errors import ConfigError
from rlft.runtime import storage
from rlft.runtime.storage import StorageError, folder_bytes, human_size, is_storage_fault, storage_error
from rlft.stages import common
from tests.conftest import tiny_config

Usage = namedtuple("Usage", "total used free")
GB = 1024**3


def make_config(folder: Path, max_steps: int = 2):
    return tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(folder / "runs"),
        name="storage",
        env={"max_turns": 4, "train_seeds": {"start": 0, "count": 4}},
        rl={
            "algorithm": "grpo",
            "init_from": "base",
            "trainer": {
                "max_steps": max_steps,
                "num_generations": 2,
                "per_device_train_batch_size": 4,
                "logging_steps": 1,
                "save_steps": 1,
            },
        },
        rollout={"num_envs": 4, "max_action_tokens": 3},
    )


def config_file(folder: Path, output_dir: str) -> Path:
    """The config as a file, with `output_dir` set after the checks (they would refuse a bad one already)."""
    path = folder / "config.yaml"
    save_config(make_config(folder).model_copy(update={"output_dir": output_dir}), path)
    return path


def error_line(stderr: str) -> str:
    """The one `rlft: error:` line (progress bars aside), and no traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "rlft: error:" in line]
    assert len(lines) == 1, stderr
    return lines[0][lines[0].index("rlft: error:") :]


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def no_model_loads(monkeypatch):
    def trap(*args, **kwargs):
        raise AssertionError("a model was loaded")

    from rlft.stages import rl as stage_rl

    monkeypatch.setattr(stage_rl, "load_trainable", trap)
    monkeypatch.setattr(stage_rl, "ensure_base_checkpoint", trap)


# ------------------------------------------------------------------------------------------ before a run
UNUSABLE = [  # (id, output_dir under tmp_path or absolute, what the message says)
    ("a file where the folder should be", "{tmp}/taken", "{tmp}/taken is a file, not a folder"),
    ("a folder under a file", "{tmp}/taken/runs", "{tmp}/taken is a file, not a folder"),
    ("under /dev/null", "/dev/null/runs", "/dev/null is not a folder"),
    ("under /proc", "/proc/rlft-test-runs", "cannot create a folder in /proc (No such file or directory)"),
]


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize(("output_dir", "expected"), [c[1:] for c in UNUSABLE], ids=[c[0] for c in UNUSABLE])
def test_an_output_folder_that_cannot_be_made_exits_2_before_anything_is_written(
    command, output_dir, expected, tmp_path, monkeypatch, capsys, no_model_loads
):
    (tmp_path / "taken").write_text("not a folder\n")
    path = config_file(tmp_path, output_dir.format(tmp=tmp_path))
    before = tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"key 'output_dir' = '{output_dir.format(tmp=tmp_path)}'" in err
    assert expected.format(tmp=tmp_path) in err and "expected a folder rlft can create and write into" in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("exists", [True, False])
def test_a_folder_that_cannot_be_written_exits_2(exists, tmp_path, monkeypatch, capsys):
    # What a read-only mount answers (root included): the probe's own write fails with EROFS.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    runs = tmp_path / "runs"
    if exists:
        (runs / "storage").mkdir(parents=True)
    path = config_file(tmp_path, str(runs))
    monkeypatch.setattr(storage.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(storage.tempfile, "mkdtemp", read_only)
    assert cli.main(["validate", "--config", str(path)]) == 2
    where = f"cannot write into {runs / 'storage'}" if exists else f"cannot create a folder in {tmp_path}"
    assert f"{where} (Read-only file system)" in capsys.readouterr().err


def test_the_probe_leaves_nothing_behind(tmp_path):
    (tmp_path / "existing").mkdir()
    times = [(p.stat().st_mtime_ns, p) for p in (tmp_path, tmp_path / "existing")]
    assert storage.output_folder_problem(tmp_path / "existing") is None
    assert storage.output_folder_problem(tmp_path / "new" / "run") is None
    assert tree(tmp_path) == ["existing"]
    assert [(p.stat().st_mtime_ns, p) for _, p in times] == times  # not even marked as modified


def test_prepare_run_turns_a_failed_write_into_exit_2_naming_the_path(tmp_path, monkeypatch):
    config = tiny_config(output_dir=str(tmp_path / "runs"))

    def failing_save(config, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(common, "save_config", failing_save)
    with pytest.raises(ConfigError) as caught:
        common.prepare_run(config)
    assert caught.value.exit_code == 2
    assert f"No space left on device ({config.run_dir / 'config.yaml'})" in str(caught.value)


# ------------------------------------------------------------------------------------------ during a run
def test_too_little_free_space_for_the_next_checkpoint_ends_the_run_with_one_line(
    tmp_path, monkeypatch, capsys
):
    path = config_file(tmp_path, str(tmp_path / "runs"))
    rl_dir = tmp_path / "runs" / "storage" / "trainer" / "rl"
    first = rl_dir / "checkpoint-1"

    def disk_usage(folder):  # room for checkpoint-1; then one byte less than checkpoint-1 took
        free = folder_bytes(first) - 1 if (first / "COMPLETE").is_file() else 100 * GB
        return Usage(200 * GB, 200 * GB - free, free)

    monkeypatch.setattr(storage.shutil, "disk_usage", disk_usage)
    assert cli.main(["train", "--config", str(path)]) == 7
    err = error_line(capsys.readouterr().err)
    size = folder_bytes(first)
    assert err.startswith(f"rlft: error: not enough free space in {rl_dir} for checkpoint-2: ")
    assert f"{human_size(size - 1)} free, about {human_size(size)} needed" in err
    assert err.endswith(f"; last good checkpoint: {first}")
    assert [p.name for p in list_checkpoints(rl_dir)] == ["checkpoint-1"]
    assert not (rl_dir / STAGING / "checkpoint-2").exists()


def test_the_first_save_needs_room_for_the_model_parameters(tmp_path, monkeypatch):
    config = make_config(tmp_path, max_steps=1)
    needed: list[int] = []
    original = storage.free_space_problem

    def recording(folder, need, what):
        needed.append(need)
        return original(folder, need, what)

    monkeypatch.setattr(storage.shutil, "disk_usage", lambda folder: Usage(GB, GB - 1000, 1000))
    monkeypatch.setattr(checkpointing, "free_space_problem", recording)
    with pytest.raises(StorageError, match="for checkpoint-1: 1.0 KB free.*; no checkpoint was written yet"):
        stages.run_rl(config)
    base = load_file(str(config.run_dir / "checkpoints" / "base" / "model.safetensors"))
    assert needed == [sum(t.numel() * t.element_size() for t in base.values())]


def test_a_write_that_fails_mid_save_removes_its_staging_folder(tmp_path, monkeypatch, capsys):
    path = config_file(tmp_path, str(tmp_path / "runs"))
    rl_dir = tmp_path / "runs" / "storage" / "trainer" / "rl"
    staging = rl_dir / STAGING / "checkpoint-2"
    original = torch.save
    failed: list[str] = []

    def full_disk(obj, f, *args, **kwargs):  # the optimizer state of checkpoint-2: the weights are on disk
        if isinstance(f, (str, os.PathLike)) and str(staging / "optimizer.pt") == str(f):
            assert (staging / "model.safetensors").is_file()
            failed.append(str(f))
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert cli.main(["train", "--config", str(path)]) == 7
    err = error_line(capsys.readouterr().err)
    assert failed == [str(staging / "optimizer.pt")]
    assert err.startswith(f"rlft: error: cannot write {staging}: no space left on device;")
    assert f"last good checkpoint: {rl_dir / 'checkpoint-1'}. Free space" in err and "--resume" in err
    assert not staging.exists()
    assert [p.name for p in list_checkpoints(rl_dir)] == ["checkpoint-1"]
    assert verify(rl_dir / "checkpoint-1") is None


def test_a_full_disk_during_the_final_save_ends_with_one_line_and_no_staging_left(
    tmp_path, monkeypatch, capsys
):
    """The final policy (checkpoints/rl) is written beside its place and renamed: a failed write names the path
    and the last good checkpoint (exit 7), removes the staging folder and leaves no checkpoints/rl."""
    from rlft.stages import rl as stage_rl

    path = config_file(tmp_path, str(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "storage"
    original = stage_rl.save_trained

    def full_disk(trainer, target):
        original(trainer, target)  # the files are there when the disk fills up (e.g. at the tokenizer's)
        raise OSError(errno.ENOSPC, "No space left on device", str(target / "tokenizer.json"))

    monkeypatch.setattr(stage_rl, "save_trained", full_disk)
    assert cli.main(["train", "--config", str(path)]) == 7
    err = error_line(capsys.readouterr().err)
    staging = run_dir / "checkpoints" / ".staging" / "rl"
    newest = list_checkpoints(run_dir / "trainer" / "rl")[-1]
    assert err.startswith(f"rlft: error: cannot write {staging}: no space left on device;")
    assert f"last good checkpoint: {newest}" in err
    assert not staging.exists() and not (run_dir / "checkpoints" / "rl").exists()


def test_torch_writer_failure_on_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    # torch's zip writer reports ENOSPC as this RuntimeError, without the words "No space left on device".
    exc = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")
    assert is_storage_fault(exc) and not is_storage_fault(RuntimeError("a bug"))
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda folder: Usage(GB, GB - 10, 10))
    message = str(storage_error(exc, tmp_path / "x", None))
    assert message.startswith(f"cannot write {tmp_path / 'x'}: no space left on device; 0.0 KB free there;")
    assert "no checkpoint was written yet" in message
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda folder: Usage(GB, 0, GB))
    message = str(
        storage_error(OSError(errno.EROFS, "Read-only file system"), tmp_path / "x", tmp_path / "c-1")
    )
    assert f": Read-only file system; 1.00 GB free there; last good checkpoint: {tmp_path / 'c-1'}" in message


def test_helpers_sizes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"12345")
    (tmp_path / "y").write_bytes(b"123")
    assert folder_bytes(tmp_path) == 8 and folder_bytes(tmp_path / "missing") == 0
    assert storage.existing_ancestor(tmp_path / "a" / "new" / "deeper") == tmp_path / "a"
    assert shutil.disk_usage(tmp_path).free == storage.free_bytes(tmp_path / "a" / "new")
