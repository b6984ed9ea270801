"""The learning table's curves: validation success (greedy and sampled) against env steps during RL, per env and
method, from the finished cells (benchmarks/learning_table.py --curves writes them as PNGs beside the cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cell_runs import plot_curves
from learning_table_results import ROOT, SFT

from rlft.runtime.tracking import read_metrics


def validation_curve(rl_rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Each validation during RL: env steps so far, validation success greedy and sampled (eval/val_success_*)."""
    return [
        {
            "env_steps": r["episode/env_steps_total"],
            "greedy": r["eval/val_success_greedy"],
            "sampled": r["eval/val_success_sampled"],
        }
        for r in rl_rows
        if "eval/val_success_greedy" in r and "episode/env_steps_total" in r
    ]


def plot_validation_curves(spec: dict[str, Any], records: dict[str, dict]) -> list[Path]:
    """curves_greedy.png and curves_sampled.png in results_dir: per env a panel, per RL method a line (the mean
    over its finished seeds) of validation success against env steps. A cell finished before its record kept
    `validation_curve` is read from its run folder when that is still here."""
    by_cell: dict[tuple[str, str], list[list[dict[str, float]]]] = {}
    for record in records.values():
        cell = record["cell"]
        if cell["method"] == SFT or cell["env"] not in spec["envs"] or cell["method"] not in spec["methods"]:
            continue
        points = record.get("validation_curve")
        if points is None and (ROOT / record["run_dir"] / "metrics.jsonl").is_file():
            points = validation_curve(
                [r for r in read_metrics(ROOT / record["run_dir"]) if r.get("stage") == "rl"]
            )
        by_cell.setdefault((cell["env"], cell["method"]), []).append(points or [])
    paths = []
    for mode in ("greedy", "sampled"):
        panels = {
            env: {
                method: [[{"env_steps": p["env_steps"], "val_success": p[mode]} for p in c] for c in curves]
                for (e, method), curves in sorted(by_cell.items())
                if e == env
            }
            for env in spec["envs"]
        }
        title = f"Learning table: validation success ({mode}) during RL, from each seed's SFT checkpoint"
        out = ROOT / spec["results_dir"] / f"curves_{mode}.png"
        paths.append(plot_curves(out, panels, title, legend_each=True))
    return paths
