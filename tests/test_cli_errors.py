"""The CLI fails fast on a bad config: exit code 2, a clear message on stderr, and nothing loaded or written.

Each case runs `rlft` in a subprocess, so the cases are few; the full table of bad configs is checked
in-process in tests/test_config.py. An existing run directory must come out untouched: a stage that started
would rewrite its config.yaml and create checkpoints/base (the model) before anything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def rlft(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    script = Path(sys.executable).with_name("rlft")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rlft.cli"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return result, time.perf_counter() - start


@pytest.fixture
def existing_run(tmp_path: Path) -> dict[Path, tuple[bytes, int]]:
    """runs/quickstart/ from an earlier run: its files' bytes and modification times."""
    run_dir = tmp_path / "runs" / "quickstart"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: quickstart\n# from an earlier run\n", encoding="utf-8")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "step": 1}) + "\n", encoding="utf-8")
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}


def assert_untouched(tmp_path: Path, before: dict[Path, tuple[bytes, int]]) -> None:
    run_dir = tmp_path / "runs" / "quickstart"
    assert sorted(run_dir.iterdir()) == sorted(before), "a file was added to the run directory"
    assert not (run_dir / "checkpoints").exists(), "a model was built or loaded"
    for path, (data, mtime) in before.items():
        assert (path.read_bytes(), path.stat().st_mtime_ns) == (data, mtime), f"{path.name} was rewritten"


def test_unknown_key_in_file(tmp_path: Path, existing_run) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text(encoding="utf-8").replace("rollout:", "rolout:"), encoding="utf-8")
    result, seconds = rlft("sft", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"rlft: error: {bad}: invalid configuration:")
    assert "unknown key 'rolout' (did you mean 'rollout'?)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert seconds < 60
    assert_untouched(tmp_path, existing_run)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel:\n  tiny: {hidden_size: 64\nenv: {id: rlft/FrozenLake-v0}\n", encoding="utf-8"
    )
    result, _ = rlft("train", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"rlft: error: {bad}:4: YAML syntax error" in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_sizes_that_do_not_divide_fail_before_any_model(tmp_path: Path, existing_run) -> None:
    # The one case here that imports TRL (about 7 s): its check builds trl.GRPOConfig.
    result, seconds = rlft(
        "sft",
        "--config",
        str(QUICKSTART),
        "rl.trainer.per_device_train_batch_size=12",
        "rl.trainer.num_generations=8",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "key 'rl.trainer'" in result.stderr
    assert "generation_batch_size (12) must be divisible by num_generations (8)" in result.stderr
    assert "Traceback" not in result.stderr
    assert seconds < 60
    assert_untouched(tmp_path, existing_run)


def test_malformed_jsonl_fails_before_any_model(tmp_path: Path, existing_run) -> None:
    demos = tmp_path / "demos.jsonl"
    row = '{"turns": [{"observation": "cell 0", "action": "right"}]}\n'
    demos.write_text(row + row + '{"turns": [{"observ\n', encoding="utf-8")
    result, seconds = rlft(
        "sft", "--config", str(QUICKSTART), f"sft.demos={{source: jsonl, path: {demos}}}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert f"rlft: error: {demos}:3: invalid JSON" in result.stderr
    assert seconds < 60
    assert_untouched(tmp_path, existing_run)
