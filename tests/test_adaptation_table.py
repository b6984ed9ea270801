"""benchmarks/adaptation.py's table and curves from finished cells (no training: the cells are written here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmark scripts import each other as siblings

import adaptation  # noqa: E402
from cell_runs import CellStore  # noqa: E402


def _store(tmp_path: Path) -> CellStore:
    store = CellStore("adaptation_test")
    store.results = tmp_path / "adaptation"
    store.runs = store.results / "runs"
    return store


def _cell(
    store: CellStore, target: str, k: int, start: str, seed: int, greedy: float, sampled: float
) -> None:
    curve = [{"env_steps": 0.0, "val_success": 0.0}, {"env_steps": 100.0 * (seed + 1), "val_success": greedy}]
    record = {"held_out": {"greedy": greedy, "sampled": sampled}, "curve": curve}
    store.save(adaptation.cell_name(target, k, start, seed), record)


def test_table_pairs_the_starts_per_seed_and_names_missing_cells(tmp_path):
    store = _store(tmp_path)
    _cell(store, "random5x5", 8, "source", 0, 0.50, 0.40)
    _cell(store, "random5x5", 8, "source", 1, 0.70, 0.60)
    _cell(store, "random5x5", 8, "untrained", 0, 0.10, 0.20)
    _cell(store, "random5x5", 8, "untrained", 1, 0.20, 0.30)

    text = adaptation.table(store, seeds=2, smoke=False)

    row = next(line for line in text.splitlines() if line.startswith("| random5x5 | 8 |"))
    # greedy 0.5, 0.7: mean 0.6, sd 0.1414; sampled 0.4, 0.6; untrained 0.1, 0.2 / 0.2, 0.3;
    # paired greedy differences 0.4 and 0.5: mean 0.45, sd 0.0707.
    assert row == (
        "| random5x5 | 8 | 0.600 ± 0.141 | 0.500 ± 0.141 | 0.150 ± 0.071 | 0.250 ± 0.071 | 0.450 ± 0.071 |"
    )
    assert "| random6x6 | 0 | – | – | – | – | – |" in text
    assert "missing cells (44)" in text  # 3 targets x 4 k x 2 starts x 2 seeds, less the 4 written
    assert "random5x5_k8_source_s0" not in text.split("missing cells")[1]


def test_curves_figure_is_written_from_the_finished_cells(tmp_path):
    store = _store(tmp_path)
    _cell(store, "slippery4x4", 32, "untrained", 0, 0.25, 0.2)

    path = adaptation.curves_figure(store, seeds=1)

    assert path == store.results / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_claimed_by_a_live_worker_is_skipped_and_a_dead_workers_claim_taken_over(tmp_path):
    store = _store(tmp_path)
    assert store.claim("a")
    assert (store.runs / "a.claim").read_text() == str(os.getpid())

    (store.runs / "b.claim").write_text("1")  # pid 1 is alive: another worker holds b
    assert not store.claim("b")

    dead = subprocess.Popen(["true"])
    dead.wait()
    (store.runs / "c.claim").write_text(str(dead.pid))  # its worker is gone
    assert store.claim("c")

    store.release("a")
    assert not (store.runs / "a.claim").exists()
