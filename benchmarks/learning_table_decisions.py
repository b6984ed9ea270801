"""The learning table's decision audit: how often each cell's greedy policy plays the expert's move on the test
tasks (rlft.rollout.expert_agreement), and where the SFT start and RL disagree with the expert most often.

Success alone cannot say whether RL changed a decision; this can. New cells read it from `rlft eval`'s eval.json
(`decisions`); cells evaluated before the audit existed get it from `--audit`, which replays their final greedy
policy on the same test seeds (a check: the replayed greedy success must equal the recorded one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from learning_table_results import SFT

from rlft.config.schema import load_config
from rlft.rollout.evaluation import evaluate_policy, held_out_seeds
from rlft.rollout.expert_agreement import expert_agreement
from rlft.runtime.run_files import write_text_atomic
from rlft.stages.common import env_factory, load_checkpoint, rollout_engine

ROOT = Path(__file__).resolve().parents[1]


def audit_cell(record: dict[str, Any]) -> dict[str, Any]:
    """The decision audit of a finished cell's final policy, greedy, on its test seeds (rlft eval's way)."""
    run_dir = ROOT / record["run_dir"]
    config = load_config(run_dir / "config.yaml")
    stage = SFT if record["cell"]["method"] == SFT else "rl"
    model, tokenizer = load_checkpoint(run_dir / "checkpoints" / stage, config)
    engine = rollout_engine(config, tokenizer, model, greedy=True)
    seeds = held_out_seeds(env_factory(config), config.env, config.eval)
    summary, episodes = evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)
    if abs(summary["success"] - record["test"]["greedy"]["success"]) > 1e-9:
        raise RuntimeError(
            f"{record['run_dir']}: the replayed greedy success {summary['success']:.3f} is not the recorded "
            f"{record['test']['greedy']['success']:.3f}; not auditing a different policy"
        )
    return expert_agreement(env_factory(config), episodes)


def backfill(results_dir: Path, records: dict[str, dict[str, Any]]) -> list[str]:
    """Audits every finished cell that has no `test.decisions` yet and rewrites its JSON; the keys done."""
    done = []
    for key, record in records.items():
        if "decisions" in record["test"]:
            continue
        record["test"]["decisions"] = audit_cell(record)
        write_text_atomic(results_dir / f"{key}.json", json.dumps(record, indent=2) + "\n")
        done.append(key)
    return done


def decision_rows(spec: dict[str, Any], records: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: per env and method, the mean share of greedy test turns that play the expert's move, and the
    policy's most frequent disagreement (its observation's last lines, the policy's and the expert's moves)."""
    rows = [
        "Decisions (`rlft eval`'s audit: each greedy test episode replayed, the expert asked at every state):",
        "",
        "| env | method | seeds audited | expert's move, greedy | most frequent disagreement (all seeds) |",
        "|---|---|---|---|---|",
    ]
    for env in spec["envs"]:
        for method in spec["methods"]:
            audits = [
                r["test"]["decisions"]
                for r in records.values()
                if r["cell"]["env"] == env and r["cell"]["method"] == method and "decisions" in r["test"]
            ]
            audits = [a for a in audits if a["agreement"] is not None]
            if not audits:
                continue
            share = float(np.mean([a["agreement"] for a in audits]))
            rows.append(f"| {env} | {method} | {len(audits)} | {share:.3f} | {top_disagreement(audits)} |")
    return rows


def top_disagreement(audits: list[dict[str, Any]]) -> str:
    """The disagreement (observation's last line, policy move, expert move) counted most often over the audits."""
    counts: dict[tuple[str, str, str], int] = {}
    for audit in audits:
        for d in audit["disagreements"]:
            where = " / ".join(d["observation"].splitlines()[-2:])  # where the agent is, on every env here
            key = (where, d["policy"], d["expert"])
            counts[key] = counts.get(key, 0) + d["count"]
    if not counts:
        return "none"
    (where, policy, expert), count = max(counts.items(), key=lambda item: item[1])
    turns = sum(a["turns"] for a in audits)
    return f"{policy} where the expert plays {expert} ({count} of {turns} turns; at '{where}')"
