"""What a sweep leaves on disk (the trials run in sweep_run.py): each trial's record and the study's summary.

    runs/<study>/trial-<n>/trial.json  a trial's state, params, value, error (written as it runs and ends)
    runs/<study>/summary.json, .csv    every trial: number, state, value, params, error
    runs/<study>/best_config.yaml      the best trial's full resolved config, runnable as it is

Several workers rewrite these files after each of their trials; each write is atomic, and any worker writes
the same summary from the shared study.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from rlft.config.schema import config_to_dict
from rlft.runtime.run_files import write_text_atomic
from rlft.tools.sweep_file import Sweep, redact, trial_config


def write_trial_record(
    run_dir: Path,
    trial,
    state: str,
    params: dict[str, Any],
    value: float | None = None,
    error: str | None = None,
    pruned_at: int | None = None,
) -> None:
    """trial.json in the trial's run directory, when the run got that far (a config error leaves none)."""
    if state == "RUNNING":
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        return
    record = {
        "study": trial.study.study_name,
        "trial": trial.number,
        "state": state,
        "params": params,
        "value": value,
        "error": error,
        "pruned_at_step": pruned_at,
    }
    write_text_atomic(run_dir / "trial.json", json.dumps(record, indent=2) + "\n")


def retried_trials(trials) -> dict[int, int]:
    """Trials failed for a stale heartbeat (their worker was killed) -> the trial that retries them."""
    return {old: t.number for t in trials for old in t.system_attrs.get("retry_history", [])}


def trial_row(trial) -> dict[str, Any]:
    """One row of summary.json: an Optuna trial's state, value (None unless finite), params and attributes."""
    value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    return {
        "trial": trial.number,
        "state": trial.state.name,
        "value": value,
        "params": trial.params,
        "error": trial.user_attrs.get("error"),
        "pruned_at_step": trial.user_attrs.get("pruned_at_step"),
        "host": trial.user_attrs.get("host"),
        "pid": trial.user_attrs.get("pid"),
        "run_dir": trial.user_attrs.get("run_dir"),
        "retry_of": (trial.system_attrs.get("retry_history") or [None])[-1],
        "duration_s": trial.duration.total_seconds() if trial.duration is not None else None,
    }


def summarize_study(sweep: Sweep, study) -> dict[str, Any]:
    """The study's summary: its settings, every trial's row and the best completed trial (None before one)."""
    frozen = study.get_trials(deepcopy=False)
    retried = retried_trials(frozen)
    trials = [trial_row(t) for t in frozen]
    for row in trials:
        if row["state"] == "FAIL" and not row["error"] and row["trial"] in retried:
            row["error"] = (
                f"its worker stopped without recording it (no heartbeat); retried as trial {retried[row['trial']]}"
            )
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    best = None
    if complete:
        pick = max if sweep.file.direction == "maximize" else min
        best = pick(complete, key=lambda t: t["value"])
    return {
        "study": sweep.study,
        "storage": redact(sweep.storage_url),
        "direction": sweep.file.direction,
        "metric": sweep.metric,
        "params": list(sweep.file.params),
        "best": best,
        "trials": trials,
    }


def write_results(sweep: Sweep, study) -> dict[str, Any]:
    """summary.json, summary.csv and (once a trial completed) best_config.yaml, in runs/<study>/."""
    summary = summarize_study(sweep, study)
    out = sweep.study_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", "value", *summary["params"], "error"])
    for t in summary["trials"]:
        writer.writerow(
            [
                t["trial"],
                t["state"],
                "" if t["value"] is None else t["value"],
                *(t["params"].get(k, "") for k in summary["params"]),
                t["error"] or "",
            ]
        )
    write_text_atomic(out / "summary.csv", buffer.getvalue())
    if summary["best"] is not None:
        write_text_atomic(out / "best_config.yaml", best_config_text(sweep, summary["best"]))
    for t in summary["trials"]:  # a killed worker's trial, failed since by its stale heartbeat
        record = Path(t["run_dir"] or "/nonexistent") / "trial.json"
        if t["state"] == "FAIL" and record.is_file() and json.loads(record.read_text())["state"] == "RUNNING":
            write_text_atomic(
                record,
                json.dumps({**json.loads(record.read_text()), "state": "FAIL", "error": t["error"]}, indent=2)
                + "\n",
            )
    return summary


def best_config_text(sweep: Sweep, best: dict[str, Any]) -> str:
    """The best trial's config, rebuilt from the base and its params (so any worker, on any machine, writes
    the same file), named `<study>-best` in the base's output_dir, with a header saying where it came from."""
    config = trial_config(sweep, best["params"], f"{sweep.study}-best", sweep.base_config.output_dir)
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    path = sweep.study_dir / "best_config.yaml"
    commands = (
        ["pipeline"]
        if sweep.stages == ["sft", "rl", "eval"]
        else [{"sft": "sft", "rl": "train", "eval": "eval"}[stage] for stage in sweep.stages]
    )
    header = (
        f"# The best trial of study '{sweep.study}' (rlft sweep --config {sweep.path}): trial {best['trial']}, "
        f"{sweep.metric} = {best['value']:.4g}.\n# Params: {params}\n"
        f"# Command:  {' && '.join(f'rlft {c} --config {path}' for c in commands)}\n\n"
    )
    return header + yaml.safe_dump(config_to_dict(config), sort_keys=False)


def format_summary(summary: dict[str, Any]) -> str:
    """A markdown table of the study's trials, then the best one."""
    keys = summary["params"]
    rows = [
        f"study {summary['study']} ({summary['storage']}): {summary['direction']} {summary['metric']}",
        "| trial | state | value | " + " | ".join(keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for t in summary["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4g}"
        note = (
            f" at step {t['pruned_at_step']}"
            if t["state"] == "PRUNED" and t["pruned_at_step"] is not None
            else ""
        )
        cells = [_short(t["params"].get(k, "")) for k in keys]
        rows.append(f"| {t['trial']} | {t['state']}{note} | {value} | " + " | ".join(cells) + " |")
    best = summary["best"]
    rows.append(
        f"best: trial {best['trial']}, {summary['metric']} = {best['value']:.4g}"
        if best
        else "best: none yet (no trial completed)"
    )
    return "\n".join(rows)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
