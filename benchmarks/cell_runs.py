"""What benchmarks/adaptation.py and benchmarks/generalisation.py share: rlft commands run in subprocesses, one
JSON per finished cell (skipped when present), the held-out numbers and curves a cell reads from its run folder.

A cell's JSON is written only when the cell has finished, renamed into place, so a stopped benchmark redoes the
cell it was in (from a fresh run folder) and nothing else.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RLFT = str(Path(sys.executable).with_name("rlft"))  # the console script of the interpreter running this


def commit_id(root: Path = ROOT) -> str:
    """HEAD, plus ``-dirty`` when tracked code or configs differ from it (what the benchmarks write under
    benchmarks/results does not count: a progress log changes while every worker runs)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    return (head.stdout.strip() or "unknown") + ("-dirty" if changed.stdout.strip() else "")


def code_stamp(root: Path = ROOT) -> str:
    """A digest of the Python a benchmark worker runs (rlft/, envs/, benchmarks/). A worker that outlives a code
    change restarts itself between cells: a config written by newer rlft may not load in the worker's older one."""
    digest = hashlib.sha256()
    for folder in ("rlft", "envs", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def die_with_parent() -> None:
    """Each rlft command gets SIGTERM when the benchmark dies (prctl PR_SET_PDEATHSIG): no orphan training."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def claim(path: Path) -> bool:
    """Take the work `path` names for this process (the file holds its pid): False when another live process
    holds it. A claim whose process is gone (a stopped worker) is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            with open(path, "x") as out:
                out.write(str(os.getpid()))
            return True
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
                os.kill(pid, 0)  # raises when no such process
                return pid == os.getpid()
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)
            except PermissionError:  # alive, another user's
                return False
    return False


def claimed_by_other(path: Path) -> bool:
    """Whether a live process other than this one holds the claim at `path`."""
    try:
        pid = int(path.read_text() or 0)
        os.kill(pid, 0)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


class CellStore:
    """benchmarks/results/<name>/: `<cell>.json` per finished cell; runs/ (run folders and command logs)."""

    def __init__(self, name: str):
        self.results = ROOT / "benchmarks" / "results" / name
        self.runs = self.results / "runs"

    def path(self, cell: str) -> Path:
        return self.results / f"{cell}.json"

    def done(self, cell: str) -> bool:
        return self.path(cell).is_file()

    def load(self, cell: str) -> dict[str, Any] | None:
        return json.loads(self.path(cell).read_text()) if self.done(cell) else None

    def save(self, cell: str, record: dict[str, Any]) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        tmp = self.path(cell).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(self.path(cell))

    def claim(self, cell: str) -> bool:
        """Take `cell` for this process (`runs/<cell>.claim`, see `claim`)."""
        return claim(self.runs / f"{cell}.claim")

    def release(self, cell: str) -> None:
        (self.runs / f"{cell}.claim").unlink(missing_ok=True)

    def config(self, name: str, raw: dict[str, Any]) -> Path:
        """Write a run's config (name, output_dir under runs/) and return its path."""
        self.runs.mkdir(parents=True, exist_ok=True)
        path = self.runs / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**raw, "name": name, "output_dir": str(self.runs)}, sort_keys=False))
        return path


def rlft(command: str, config: Path, *overrides: str) -> float:
    """`rlft <command> --config <config> <overrides>`, output to <config>.<command>.log; the wall seconds.

    Raises:
        SystemExit: the command failed, naming its log.
    """
    log = config.with_suffix(f".{command}.log")
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(
            [RLFT, command, "--config", str(config), *overrides],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=die_with_parent,
        )
    if code != 0:
        raise SystemExit(f"rlft {command} --config {config} failed (exit {code}); see {log}")
    return time.perf_counter() - start


def fresh(run_dir: Path) -> None:
    """A run folder left by a stopped try is removed: the cell starts again from scratch."""
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)


def held_out(run_dir: Path, policy: str = "rl") -> dict[str, float]:
    """`rlft eval`'s test-seed success of `policy`, greedy and sampled, from eval.json."""
    result = json.loads((run_dir / "eval.json").read_text())["policies"][policy]
    return {"greedy": result["greedy"]["success"], "sampled": result["sampled"]["success"]}


def curve(run_dir: Path) -> list[dict[str, float]]:
    """The evaluations during RL: env steps, validation success and (when logged) training-task success."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = {"eval/success": "val_success", "eval/train_success": "train_success", "generalisation/gap": "gap"}
    return [
        {
            "env_steps": row.get("episode/env_steps_total", 0.0),
            **{v: row[k] for k, v in keys.items() if k in row},
        }
        for row in rows
        if row.get("stage") == "rl" and "eval/success" in row
    ]


def mean_sd(values: list[float], digits: int = 3) -> str:
    """`mean ± sd` over seeds (the value alone for one seed, – for none)."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def plot_curves(
    path: Path,
    panels: dict[str, dict[str, list[list[dict[str, float]]]]],
    title: str,
    dashed: str = "",
    legend_each: bool = False,
) -> Path:
    """One panel per key of `panels`, one line per label: validation success against env steps, the mean over
    the seeds' curves (each a `curve()` list; seeds are averaged point by point up to the shortest); labels that
    contain `dashed` (when given) are drawn dashed. The legend is on the first panel with lines, or on each panel
    (`legend_each`: panels whose labels differ). Saved as PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (panel, lines) in zip(axes[0], panels.items()):
        for label, curves in lines.items():
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = np.mean([[p["env_steps"] for p in c[:n]] for c in curves], axis=0)
            success = np.mean([[p.get("val_success", np.nan) for p in c[:n]] for c in curves], axis=0)
            seeds = f"{len(curves)} seed{'s' * (len(curves) > 1)}"
            style = "--" if dashed and dashed in label else "-"
            ax.plot(steps, success, style, marker="o", markersize=3, label=f"{label} ({seeds})")
        ax.set_title(panel)
        ax.set_xlabel("env steps during RL")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation success")
    for ax in axes[0]:  # the legend on the first panel that has lines (on each, with legend_each)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
            if not legend_each:
                break
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
