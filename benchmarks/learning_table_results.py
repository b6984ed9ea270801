"""What the learning table is made of (benchmarks/learning_table.py runs it): the spec's cells and budgets, and
the results: normalised scores, rliable's IQM per method, the markdown tables and README.md's results block.

Nothing here runs a model or a command; tests/test_learning_table.py checks it on hand-made numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from envs.optimum import ReferenceReturns
from rlft.tools.report.stats import AGGREGATES, interval_estimates

ROOT = Path(__file__).resolve().parents[1]
SPEC = Path(__file__).with_name("learning_table.yaml")
SFT = "sft"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
MODES = ("greedy", "sampled")


@dataclass(frozen=True)
class Cell:
    env: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.env}__{self.method}__s{self.seed}"


# ------------------------------------------------------------------------------------------------ spec
def load_spec(path: Path = SPEC, smoke: bool = False) -> dict[str, Any]:
    """The spec, with its `smoke` subset and tiny budgets applied when asked."""
    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if smoke:
        small = spec["smoke"]
        spec["envs"] = {
            e: {**spec["envs"][e], "budget_episodes": small["budget_episodes"]} for e in small["envs"]
        }
        spec["methods"] = {m: spec["methods"][m] for m in small["methods"]}
        spec["common_overrides"] = {**spec.get("common_overrides", {}), **small["overrides"]}
        for key in ("results_dir", "runs_dir", "seeds", "curve_points", "bootstrap_reps"):
            spec[key] = small[key]
    return spec


def as_overrides(mapping: dict[str, Any] | None) -> list[str]:
    """`{key: value}` -> rlft's `key=value` overrides, values in YAML flow style.

    >>> as_overrides({"rl.trainer": {"beta": 0.0}, "rl.algorithm": "ppo"})
    ['rl.trainer={beta: 0.0}', 'rl.algorithm=ppo']
    """
    return [
        f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
        for key, value in (mapping or {}).items()
    ]


def trainer_of(method: dict[str, Any]) -> dict[str, Any]:
    """The method's `rl.trainer` (it replaces the env config's whole rl.trainer)."""
    return (method.get("overrides") or {}).get("rl.trainer") or {}


def episodes_per_step(trainer: dict[str, Any]) -> float:
    """Episodes one optimizer step consumes, on one process.

    TRL plays a generation batch of per_device_train_batch_size x steps_per_generation episodes and uses it for
    steps_per_generation x num_iterations micro-batches (GRPOTrainer._prepare_inputs); an optimizer step is
    gradient_accumulation_steps micro-batches. Defaults are TRL's (batch 8, accumulation 1, iterations 1).
    """
    return (
        trainer.get("per_device_train_batch_size", 8)
        * trainer.get("gradient_accumulation_steps", 1)
        / trainer.get("num_iterations", 1)
    )


def max_steps_for(budget_episodes: int, trainer: dict[str, Any]) -> int:
    """Optimizer steps that consume exactly `budget_episodes`; ValueError when the budget does not divide."""
    per_step = episodes_per_step(trainer)
    steps = budget_episodes / per_step
    if steps != int(steps) or steps < 1:
        raise ValueError(
            f"budget_episodes = {budget_episodes} is not a whole number of steps of {per_step:g} episodes"
        )
    return int(steps)


def is_must_fill(spec: dict[str, Any], cell: Cell) -> bool:
    return bool(spec["envs"][cell.env].get("must_fill")) and bool(
        spec["methods"][cell.method].get("must_fill")
    )


def cell_order(spec: dict[str, Any]) -> list[Cell]:
    """Must-fill cells first, seed-major (every must-fill cell of seed 0, then of seed 1, ...), then the rest the
    same way; within a seed and env the SFT cell comes first, since that seed's RL cells start from it."""
    methods = sorted(spec["methods"], key=lambda m: m != SFT)  # stable: the spec's order otherwise
    every = [Cell(e, m, s) for s in spec["seeds"] for e in spec["envs"] for m in methods]
    return [c for c in every if is_must_fill(spec, c)] + [c for c in every if not is_must_fill(spec, c)]


def finished(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Finished cells by key: a cell's JSON is written last (atomically), so it exists only for a finished cell."""
    return {
        p.stem: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(Path(results_dir).glob("*__s*.json"))
    }


def skipped(results_dir: Path) -> dict[str, str]:
    """Cells whose method `rlft validate` refused on the last try, with the reason (retried on every restart)."""
    return {
        p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(Path(results_dir).glob("*.skipped"))
    }


# ------------------------------------------------------------------------------------------------ scores
def exact_references(record: dict[str, Any]) -> ReferenceReturns | None:
    """The optimum's and the random policy's expected return within the turn limit on the cell's test tasks
    (envs.optimum, computed when the cell finished), or None for an env without a transition table."""
    exact = record["references"].get("exact")
    return ReferenceReturns(**exact) if exact else None


def optimum_success(env_spec: dict[str, Any], record: dict[str, Any]) -> tuple[float, str]:
    """The success that counts as 1.0 for this env, and its source.

    `optimum: value_iteration`: the optimum's success probability within env.max_turns (FrozenLake's return is
    its success), by finite-horizon backward induction; a number: that number.
    """
    optimum = env_spec["score"].get("optimum", 1.0)
    if optimum != "value_iteration":
        return float(optimum), "given in the spec"
    exact = exact_references(record)
    if exact is None:
        raise ValueError(
            f"{record['env']['id']}: optimum value_iteration needs a transition table; give a number"
        )
    return exact.optimal, f"finite-horizon value iteration, {exact.horizon} turns"


def normalised(env_spec: dict[str, Any], record: dict[str, Any], mode: str, policy: str = "test") -> float:
    """The cell's test score in `mode` ('greedy' or 'sampled'), normalised so that optimal = 1.0; `policy`
    "selected": that of the checkpoint chosen on validation success (eval.keep_best; an SFT cell is its own).

    success / optimum, or (R - R_random) / (R_optimal - R_random) with the optimum's and a uniformly random
    policy's expected returns within the turn limit (env score `normalise: random_to_optimal`).
    """
    summary = (
        record.get(policy, record["test"])[mode] if record["cell"]["method"] == SFT else record[policy][mode]
    )
    if env_spec["score"].get("normalise") == "random_to_optimal":
        exact = exact_references(record)
        if exact is None:
            raise ValueError(f"{record['env']['id']}: random_to_optimal needs a transition table")
        return exact.normalised(summary["return"])
    return summary["success"] / optimum_success(env_spec, record)[0]


def selected_record(policies: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint RL kept for its best validation success (eval.keep_best, `rlft eval`'s rl_best): its test
    scores and the step and validation success it was chosen at; {} when the run kept none."""
    best = policies.get("rl_best")
    if best is None:
        return {}
    chosen = {k: v for k, v in best.get("selection", {}).items() if k in ("step", "validation_success")}
    return {"selected": {**chosen, "greedy": best["greedy"], "sampled": best["sampled"]}}


# ------------------------------------------------------------------------------------------------ aggregates
def method_matrix(scores: dict[str, dict[int, float]]) -> tuple[np.ndarray, list[str]]:
    """rliable's (runs, tasks) matrix from one method's scores per env and seed, and the envs (tasks) in it.

    rliable needs as many runs per task: with seeds missing, every env keeps its first k finished seeds, k the
    fewest any env has (the table says how many cells an aggregate uses). Envs without a score are left out.
    """
    envs = [e for e, by_seed in scores.items() if by_seed]
    if not envs:
        return np.zeros((0, 0)), []
    runs = min(len(scores[e]) for e in envs)
    columns = [[scores[e][s] for s in sorted(scores[e])[:runs]] for e in envs]
    return np.asarray(columns, dtype=float).T, envs


def iqm_with_ci(
    matrices: dict[str, np.ndarray], reps: int, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Per method: IQM over envs x seeds and its 95% stratified-bootstrap CI (rliable, as `rlft compare`)."""
    usable = {m: x for m, x in matrices.items() if x.size}
    if not usable:
        return {}
    points, intervals = interval_estimates(usable, reps, seed)
    i = AGGREGATES.index("IQM")
    return {m: (float(points[m][i]), float(intervals[m][0][i]), float(intervals[m][1][i])) for m in usable}


def has_policy(record: dict[str, Any], policy: str) -> bool:
    return policy in record or record["cell"]["method"] == SFT


def scores_by_method(
    spec: dict[str, Any], records: dict[str, dict], mode: str, policy: str = "test"
) -> dict[str, dict[str, dict]]:
    """method -> env -> seed -> normalised score of `policy` (see `normalised`), over the finished cells."""
    table: dict[str, dict[str, dict[int, float]]] = {
        m: {e: {} for e in spec["envs"]} for m in spec["methods"]
    }
    for record in records.values():
        cell = record["cell"]
        if cell["method"] in table and cell["env"] in spec["envs"] and has_policy(record, policy):
            table[cell["method"]][cell["env"]][cell["seed"]] = normalised(
                spec["envs"][cell["env"]], record, mode, policy
            )
    return table


# ------------------------------------------------------------------------------------------------ tables
def aggregate_table(spec: dict[str, Any], records: dict[str, dict], policy: str = "test") -> list[str]:
    """Markdown: per method, IQM of the normalised test score (greedy, sampled) with 95% CIs; `policy` "selected":
    of the checkpoints chosen on validation success."""
    what = "final policy" if policy == "test" else "checkpoint selected on validation"
    rows = [
        f"| method ({what}) | cells used (seeds x envs) | IQM greedy [95% CI] | IQM sampled [95% CI] |",
        "|---|---|---|---|",
    ]
    estimates, used, seeds = {}, {}, {}
    for mode in MODES:
        matrices = {}
        for method, by_env in scores_by_method(spec, records, mode, policy).items():
            matrices[method], envs = method_matrix(by_env)
            seeds[method] = matrices[method].shape[0]
            used[method] = f"{seeds[method]} x {len(envs)} ({', '.join(envs) or '-'})"
        estimates[mode] = iqm_with_ci(matrices, spec.get("bootstrap_reps", 2000))

    def cell(method: str, mode: str) -> str:
        if (v := estimates[mode].get(method)) is None:
            return "-"
        # A bootstrap that resamples one seed per env returns that seed: a point, not an interval.
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if seeds[method] > 1 else f"{v[0]:.3f} (1 seed: no CI)"

    for method in spec["methods"]:
        rows.append(f"| {method} | {used[method]} | {cell(method, 'greedy')} | {cell(method, 'sampled')} |")
    return rows


def cell_rows(spec: dict[str, Any], records: dict[str, dict]) -> list[str]:
    """Markdown: per env and method, the mean over finished seeds of the normalised and raw test scores, whether
    the target is met, how many seeds end at or above SFT's greedy score (paired), the env steps played, and the
    checkpoint chosen on validation success (eval.keep_best): its normalised test scores and its steps."""
    rows = [
        "| env | method | seeds | greedy (norm.) | sampled (norm.) | greedy success / return | sampled success / "
        "return | target met | greedy >= SFT | env steps | val-selected greedy / sampled (norm.) at step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for env, env_spec in spec["envs"].items():
        sft = {
            r["cell"]["seed"]: r
            for r in records.values()
            if r["cell"]["env"] == env and r["cell"]["method"] == SFT
        }
        for method in spec["methods"]:
            mine = sorted(
                (r for r in records.values() if r["cell"]["env"] == env and r["cell"]["method"] == method),
                key=lambda r: r["cell"]["seed"],
            )
            if not mine:
                continue
            norm = {m: float(np.mean([normalised(env_spec, r, m) for r in mine])) for m in MODES}
            raw = {
                m: f"{np.mean([r['test'][m]['success'] for r in mine]):.3f} / "
                f"{np.mean([r['test'][m]['return'] for r in mine]):.2f}"
                for m in MODES
            }
            met = target_met(env_spec, norm, mine)
            paired = [r for r in mine if r["cell"]["seed"] in sft]
            above = sum(
                normalised(env_spec, r, "greedy")
                >= normalised(env_spec, sft[r["cell"]["seed"]], "greedy") - 1e-9
                for r in paired
            )
            steps = f"{np.mean([r['env_steps'] for r in mine]):.0f}" if method != SFT else "-"
            pairing = f"{above}/{len(paired)}" if method != SFT else "-"
            rows.append(
                f"| {env} | {method} | {len(mine)} | {norm['greedy']:.3f} | {norm['sampled']:.3f} | {raw['greedy']} | "
                f"{raw['sampled']} | {met} (>= {env_spec['target']}) | {pairing} | {steps} | "
                f"{selected_cell(env_spec, mine)} |"
            )
    return rows


def target_met(env_spec: dict[str, Any], norm: dict[str, float], mine: list[dict[str, Any]]) -> str:
    """ "yes" when the mean normalised greedy and sampled scores reach the env's target. A normalised RETURN can be
    reached without ever finishing the task (Taxi: a policy that only emits free no-ops scored 0.925), so there the
    task must also be finished on some test tasks in both modes: "no (success 0)" otherwise."""
    if min(norm.values()) < env_spec["target"]:
        return "no"
    never = any(max(r["test"][m]["success"] for r in mine) == 0.0 for m in MODES)
    return "no (success 0)" if env_spec["score"].get("normalise") == "random_to_optimal" and never else "yes"


def selected_cell(env_spec: dict[str, Any], mine: list[dict[str, Any]]) -> str:
    """Mean normalised greedy / sampled test score of the validation-selected checkpoints, and their steps."""
    chosen = [r for r in mine if "selected" in r]
    if not chosen or mine[0]["cell"]["method"] == SFT:
        return "-"
    scores = [f"{np.mean([normalised(env_spec, r, m, 'selected') for r in chosen]):.3f}" for m in MODES]
    steps = ", ".join(str(r["selected"]["step"]) for r in chosen)
    return f"{' / '.join(scores)} at {steps}"


def missing_rows(spec: dict[str, Any], records: dict[str, dict], reasons: dict[str, str]) -> list[str]:
    """One line per env and method with unfinished cells: the seeds, must-fill or not, and why (when known)."""
    lines = []
    for env in spec["envs"]:
        for method in spec["methods"]:
            cells = [Cell(env, method, s) for s in spec["seeds"]]
            absent = [c for c in cells if c.key not in records]
            if not absent:
                continue
            why = sorted({reasons[c.key] for c in absent if c.key in reasons}) or ["not run yet"]
            must = "must-fill" if is_must_fill(spec, absent[0]) else "as time allows"
            seeds = ", ".join(str(c.seed) for c in absent)
            lines.append(f"- {env} x {method}, seeds {seeds} ({must}): missing: {'; '.join(why)}")
    return lines


def optimum_notes(spec: dict[str, Any], records: dict[str, dict]) -> list[str]:
    """How each env's 1.0 (and 0.0) is defined, with the values used."""
    notes = []
    for env, env_spec in spec["envs"].items():
        record = next((r for r in records.values() if r["cell"]["env"] == env), None)
        if record is None:
            continue
        exact = exact_references(record)
        if env_spec["score"].get("normalise") == "random_to_optimal" and exact is not None:
            notes.append(
                f"- {env}: return (R - R_random) / (R_optimal - R_random), R_optimal = {exact.optimal:.2f}, "
                f"R_random = {exact.random:.2f} (expected returns within {exact.horizon} turns, exact)"
            )
        else:
            value, source = optimum_success(env_spec, record)
            notes.append(f"- {env}: success / {value:.3f} ({source})")
    return notes


def markdown(spec: dict[str, Any], records: dict[str, dict], reasons: dict[str, str]) -> str:
    """The whole table: aggregates, per-cell means, the optimum used per env, and the missing cells."""
    total = len(spec["envs"]) * len(spec["methods"]) * len(spec["seeds"])
    done = [k for k in records if Cell(**records[k]["cell"]) in set(cell_order(spec))]
    parts = [
        f"Cells finished: {len(done)} of {total} (envs x methods x seeds {len(spec['seeds'])}). Scores are "
        "normalised test scores (1.0 = optimal); IQM over envs x seeds with 95% stratified-bootstrap CIs (rliable).",
        "",
        *aggregate_table(spec, records),
        "",
        *aggregate_table(spec, records, "selected"),
        "",
        *cell_rows(spec, records),
        "",
        "Normalisation:",
        *optimum_notes(spec, records),
    ]
    missing = missing_rows(spec, records, reasons)
    parts += ["", "Missing cells:", *missing] if missing else ["", "Missing cells: none."]
    return "\n".join(parts)


def rewrite_block(text: str, block: str) -> str:
    """`text` with everything between README's BEGIN and END markers replaced by `block` (markers kept)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN} ... {END} block to rewrite")
    return text[: start + len(BEGIN)] + "\n" + block.strip() + "\n" + text[end:]
