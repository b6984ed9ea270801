"""The learning table's outputs: the tables (scores, then decisions) and README.md's results block."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from cell_runs import commit_id
from learning_table_decisions import decision_rows
from learning_table_results import Cell, cell_order, markdown


def tables(spec: dict[str, Any], records: dict[str, dict], reasons: dict[str, str]) -> str:
    """The score tables (learning_table_results.markdown), then the decision audit's table."""
    return markdown(spec, records, reasons) + "\n\n" + "\n".join(decision_rows(spec, records))


def compare_command(spec: dict[str, Any], records: dict[str, dict]) -> str:
    """`rlft compare` over the finished cells' run folders: curves of validation success against env steps per
    method (and env), IQM with CIs, and the SFT rows as references. Each seed starts from its own SFT checkpoint,
    so rl.init_from is left out of what tells variants apart."""
    runs = [r["run_dir"] for r in records.values() if Cell(**r["cell"]) in set(cell_order(spec))]
    out = Path(spec["runs_dir"]) / "report.html"
    return " ".join(["rlft compare", *sorted(runs), "--ignore rl.init_from", f"--out {out}"])


def readme_block(spec: dict[str, Any], records: dict[str, dict], reasons: dict[str, str], smoke: bool) -> str:
    """README.md's results block: what measured it and when, the tables, the command for the curves."""
    date = datetime.date.today().isoformat()
    command = "python benchmarks/learning_table.py" + (" --smoke" if smoke else "")
    return (
        f"Measured by `{command}` (spec `benchmarks/learning_table.yaml`, one JSON per cell in "
        f"`{spec['results_dir']}/`); table written {date} at commit {commit_id()}.\n\n"
        + tables(spec, records, reasons)
        + f"\n\nCurves (validation success against env steps): `{compare_command(spec, records)}`"
    )
