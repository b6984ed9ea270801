"""Checkpoint integrity: a manifest of sizes and sha256 per checkpoint, verified before a resume or a load.

* Every checkpoint a run writes holds MANIFEST.json (written before COMPLETE) that verifies.
* A truncated file or one altered float (same size) fails verification, naming the file and how.
* `--resume` skips a damaged newest checkpoint, says which and why, and resumes from the newest that verifies
  (end to end: the resumed run ends with the weights of the undamaged run); a damaged named one is refused.
* `rl.init_from` / eval inputs that fail to load exit 2 naming the file, before any run folder is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlft import cli, stages
from rlft.algorithms.checkpoint_folders import COMPLETE, list_checkpoints, resolve_resume
from rlft.algorithms.checkpoint_manifest import MANIFEST, safetensors_problem, verify, write_manifest
from rlft.config.schema import save_config
from rlft.errors import CheckpointError
from rlft.stages.common import check_loadable, load_checkpoint
from tests.conftest import tiny_config

GRPO = {
    "max_steps": 3,
    "num_generations": 2,
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-2,
    "logging_steps": 1,
    "save_steps": 1,
    "save_total_limit": 3,
}


def run_config(out: Path, **rl):
    return tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(out),
        name="integrity",
        env={"max_turns": 4, "train_seeds": {"start": 0, "count": 4}},
        rl={"algorithm": "grpo", "init_from": "base", "trainer": GRPO, **rl},
        rollout={"num_envs": 4, "max_action_tokens": 3},
    )


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def alter_one_float(path: Path) -> None:
    """Change the lowest mantissa byte of the first float of a safetensors file: same size, another value."""
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    first = min(t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")
    raw[8 + header_len + first] ^= 0x01
    path.write_bytes(bytes(raw))


def fake_checkpoint(folder: Path, value: float) -> Path:
    """A checkpoint folder as the save path leaves it: files, MANIFEST.json, then COMPLETE."""
    folder.mkdir(parents=True)
    save_file(
        {"w": torch.full((4, 4), value), "b": torch.arange(1.0, 4.0)}, str(folder / "model.safetensors")
    )
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": value}))
    write_manifest(folder)
    (folder / COMPLETE).write_text("{}")
    return folder


# --------------------------------------------------------------------------------------------- the manifest
def test_manifest_records_every_file_size_and_sha256(tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint-1", 1.0)
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert sorted(files) == ["model.safetensors", "trainer_state.json"]  # COMPLETE comes after it
    for name, record in files.items():
        data = (folder / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert verify(folder) is None


def test_a_truncated_file_fails_verification_naming_it(tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint-1", 1.0)
    size = (folder / "model.safetensors").stat().st_size
    truncate(folder / "model.safetensors")
    assert verify(folder) == f"model.safetensors is 100 bytes, {MANIFEST} records {size} (truncated)"


def test_one_altered_float_fails_the_checksum(tmp_path):
    folder = fake_checkpoint(tmp_path / "checkpoint-1", 1.0)
    # (cloned: load_file's tensors may be backed by a map of the file that is about to change)
    before = {k: v.clone() for k, v in load_file(str(folder / "model.safetensors")).items()}
    alter_one_float(folder / "model.safetensors")
    after = load_file(str(folder / "model.safetensors"))
    changed = sum(int((before[k] != after[k]).sum()) for k in before)
    assert changed == 1  # it loads fine: only a checksum can tell
    assert verify(folder).startswith(f"model.safetensors: sha256 differs from {MANIFEST}")


def test_without_a_manifest_safetensors_files_are_checked_against_their_header(tmp_path):
    folder = tmp_path / "policy"
    (folder / "critic").mkdir(parents=True)
    save_file({"w": torch.ones(8)}, str(folder / "model.safetensors"))
    save_file({"v": torch.ones(8)}, str(folder / "critic" / "model.safetensors"))
    assert verify(folder) is None
    size = (folder / "critic" / "model.safetensors").stat().st_size
    truncate(folder / "critic" / "model.safetensors", keep=size - 4)
    assert (
        verify(folder) == f"critic/model.safetensors: {size - 4} bytes, its header needs {size} (truncated)"
    )
    truncate(folder / "model.safetensors", keep=20)  # the header itself is cut
    assert "not a readable safetensors file" in safetensors_problem(folder / "model.safetensors")


# ------------------------------------------------------------------------------------------ --resume picks
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, caplog):
    out = tmp_path / "trainer"
    for step in (1, 2, 3):
        fake_checkpoint(out / f"checkpoint-{step}", float(step))
    truncate(out / "checkpoint-3" / "model.safetensors")
    alter_one_float(out / "checkpoint-2" / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(out, True) == out / "checkpoint-1"
    text = caplog.text
    assert "skipping checkpoint-3: model.safetensors is 100 bytes" in text and "(truncated)" in text
    assert "skipping checkpoint-2: model.safetensors: sha256 differs" in text
    assert "resuming from checkpoint-1" in text


def test_resume_refuses_a_named_damaged_checkpoint_and_all_damaged(tmp_path):
    out = tmp_path / "trainer"
    fake_checkpoint(out / "checkpoint-1", 1.0)
    alter_one_float(out / "checkpoint-1" / "model.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint is damaged \\(model.safetensors: sha256 differs"):
        resolve_resume(out, str(out / "checkpoint-1"))
    with pytest.raises(CheckpointError, match="no complete checkpoint under .*damaged: checkpoint-1: model"):
        resolve_resume(out, True)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 3-step GRPO run with a checkpoint at every step (computed once): (config, final weights)."""
    config = run_config(tmp_path_factory.mktemp("finished"))
    stages.run_rl(config)
    final = load_file(str(config.run_dir / "checkpoints" / "rl" / "model.safetensors"))
    return config, {k: v.clone() for k, v in final.items()}


def test_every_checkpoint_a_run_writes_verifies(finished_run):
    config, _ = finished_run
    found = list_checkpoints(config.run_dir / "trainer" / "rl")
    assert [p.name for p in found] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    for checkpoint in found:
        files = json.loads((checkpoint / MANIFEST).read_text())["files"]
        assert {"model.safetensors", "optimizer.pt", "rlft_state.json", "trainer_state.json"} <= set(files)
        assert verify(checkpoint) is None


def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one(finished_run, tmp_path, caplog):
    config, final_weights = finished_run
    copy = run_config(tmp_path)
    shutil.copytree(config.run_dir / "trainer", copy.run_dir / "trainer")
    shutil.copytree(config.run_dir / "checkpoints" / "base", copy.run_dir / "checkpoints" / "base")
    truncate(copy.run_dir / "trainer" / "rl" / "checkpoint-3" / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        stages.run_rl(copy, resume=True)  # replays step 3 from checkpoint-2
    assert "skipping checkpoint-3: model.safetensors is 100 bytes" in caplog.text
    assert "resuming from checkpoint-2" in caplog.text
    resumed = load_file(str(copy.run_dir / "checkpoints" / "rl" / "model.safetensors"))
    assert resumed.keys() == final_weights.keys()
    for name, tensor in final_weights.items():
        assert torch.equal(resumed[name], tensor), name
    assert verify(copy.run_dir / "trainer" / "rl" / "checkpoint-3") is None  # written again, whole


# --------------------------------------------------------------------------------------- loading inputs
@pytest.fixture
def damaged_policy(finished_run, tmp_path):
    """A copy of the run's final policy (save_pretrained: no manifest) with its weights cut short."""
    config, _ = finished_run
    policy = tmp_path / "policy"
    shutil.copytree(config.run_dir / "checkpoints" / "rl", policy)
    truncate(policy / "model.safetensors", keep=5000)
    return policy


def test_a_damaged_init_from_exits_2_naming_the_file_before_a_run_folder_exists(
    damaged_policy, tmp_path, monkeypatch, capsys
):
    config = run_config(tmp_path / "runs")
    path = tmp_path / "config.yaml"
    save_config(config, path)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--config", str(path), f"rl.init_from={damaged_policy}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"key 'rl.init_from' = '{damaged_policy}'" in err
    assert f"{damaged_policy}/model.safetensors: 5000 bytes, its header needs" in err and "(truncated)" in err
    assert not (tmp_path / "runs").exists()


def test_a_damaged_init_from_is_named_by_run_rl_before_the_run_folder_is_written(damaged_policy, tmp_path):
    config = run_config(tmp_path / "runs")  # (the config checks would name it already: set after them)
    config = config.model_copy(update={"rl": config.rl.model_copy(update={"init_from": str(damaged_policy)})})
    with pytest.raises(CheckpointError, match="model.safetensors: 5000 bytes"):
        stages.run_rl(config)
    assert not (config.run_dir / "config.yaml").exists()


def test_a_damaged_eval_input_is_named_before_anything_is_written(damaged_policy, tmp_path):
    config = run_config(tmp_path / "runs")
    with pytest.raises(CheckpointError, match=f"checkpoint '{damaged_policy}' cannot be loaded: .*truncated"):
        stages.run_eval(config, policies={"damaged": damaged_policy}, expert=False)
    assert not config.run_dir.exists()


def test_a_load_failure_past_the_file_checks_names_the_folder(finished_run, tmp_path):
    config, _ = finished_run
    policy = tmp_path / "policy"
    shutil.copytree(config.run_dir / "checkpoints" / "rl", policy)
    data = (policy / "model.safetensors").read_bytes()
    assert b'"F32"' in data
    # A dtype no reader knows, same length: the file is whole by its header's offsets, the loader refuses it.
    (policy / "model.safetensors").write_bytes(data.replace(b'"F32"', b'"Q32"'))
    check_loadable(policy)
    with pytest.raises(CheckpointError, match=f"checkpoint '{policy}' cannot be loaded: "):
        load_checkpoint(policy, config)


def test_a_header_that_is_not_a_mapping_is_named(tmp_path):
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"w": torch.ones(8)}, str(folder / "model.safetensors"))
    data = bytearray((folder / "model.safetensors").read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + header_len] = b"[" + b" " * (header_len - 2) + b"]"  # same length, a list
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=f"'{folder}' cannot be loaded: {folder}/model.safetensors: not a"
    ):
        check_loadable(folder)
