"""The eval stage: each policy and the expert on the same held-out seeds; eval.json and a table.

Nothing is lost to a late failure: each policy's result is written (an atomic rewrite) as soon as it exists,
and an error during evaluation leaves every result so far on disk, marked `incomplete`, before it propagates.
The expert is optional (`eval.expert`: auto skips it with a note when the env has none).

A config that is not the one the run trained with (`rlft eval ... key=value` overrides, or an edited YAML)
writes its own record beside eval.json, `eval_<timestamp>.json` with `eval_<timestamp>.config.yaml`; the
run's config.yaml and eval.json keep saying what training used and how it scored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlft.config.schema import Config, config_to_dict, load_config, save_config
from rlft.errors import CheckpointError, RlftError
from rlft.rollout.evaluation import evaluate_expert, evaluate_policy, held_out_seeds, missing_expert
from rlft.rollout.expert_agreement import expert_agreement
from rlft.rollout.experts import check_expert
from rlft.runtime.distributed import ddp_timeout_s, process_state
from rlft.runtime.faults import out_of_memory_guard
from rlft.runtime.run_files import write_text_atomic
from rlft.runtime.tracking import Tracker
from rlft.stages.common import (
    SELECTION_FILE,
    check_loadable,
    check_output_folder,
    checkpoint_dir,
    env_factory,
    load_checkpoint,
    prepare_run,
    record_sync_command,
    rollout_engine,
    sampling_settings,
)
from rlft.stages.model_card import RESULTS_FILE, update_cards

logger = logging.getLogger(__name__)


MAIN_PROCESS_EVAL = (
    "evaluation runs on the main process (rank 0), which prints the table and writes eval.json"
)
# Keys that say where a run lives and how it is tracked, not what is evaluated: a copied run folder evaluated
# with `output_dir=...`, or with wandb off, is still the run's own evaluation.
NOT_THE_EVALUATION = ("name", "output_dir", "tracking")


@dataclass
class EvalRecord:
    """Where one evaluation writes: the run's eval.json, or its own timestamped pair for another config."""

    results: Path
    config: Path | None = None  # eval_<timestamp>.config.yaml; None: the run's config.yaml is this config
    differs_in: list[str] = field(default_factory=list)  # dotted keys that differ from the run's config.yaml


def run_eval(
    config: Config, policies: dict[str, Path] | None = None, expert: bool | str | None = None
) -> dict[str, Any]:
    """Evaluate each policy (label -> checkpoint) and the expert on the same held-out seeds.

    Args:
        config: the loaded, checked config.
        policies: label -> checkpoint folder; None: every checkpoint of this run (`default_policies`).
        expert: True, False or "auto" (see `eval.expert`); None: `config.eval.expert`.

    Returns:
        The results as written: seeds, policies (label -> summary), notes, and `record` when they went to a
        record of their own (a config other than the run's).

    Raises:
        ConfigError: `eval.expert: true` and the env has no expert (before anything is written).
        Whatever evaluation raises, after every result so far is written.
    """
    if not process_state(ddp_timeout_s(config)).is_main_process:
        # Under `accelerate launch` the main process evaluates alone (no collectives, so nothing to wait for).
        return {"seeds": {"first": None, "count": 0}, "policies": {}, "note": MAIN_PROCESS_EVAL}
    policies = policies if policies is not None else default_policies(config)
    for path in policies.values():  # a damaged checkpoint is named before anything is written
        check_loadable(path)
    expert = config.eval.expert if expert is None else expert
    notes = []
    absent = missing_expert(env_factory(config))  # None: the env has an expert (its row, the decision audit)
    if expert == "auto":
        if absent is not None:
            expert = False
            notes.append(f"expert skipped: {config.env.id} has none (eval.expert: auto); {absent}")
    elif expert:
        check_eval_expert(config, expert)
    seeds = held_out_seeds(env_factory(config), config.env, config.eval)
    record = eval_record(config)
    if record.config is None:
        prepare_run(config)
    else:  # never rewrite the run's config.yaml: it says what training used
        check_output_folder(config)
        notes.append(
            f"this config differs from the run's config.yaml in {', '.join(record.differs_in)}: results in "
            f"{record.results.name}, the config in {record.config.name} (eval.json is the training run's)"
        )
    results: dict[str, Any] = {"seeds": {"first": seeds[0], "count": len(seeds)}, "policies": {}}
    results["notes"] = notes
    if record.config is not None:
        results["record"] = {"config": record.config.name, "differs_in": record.differs_in}
    audit = config.eval.expert_agreement and absent is None
    _evaluate_all(config, policies, bool(expert), seeds, results, record, audit)
    return results


def _evaluate_all(
    config: Config,
    policies: dict[str, Path],
    expert: bool,
    seeds: list[int],
    results: dict[str, Any],
    record: EvalRecord,
    audit: bool = False,
) -> None:
    """Each policy, then the expert, each result written as soon as it exists; an error keeps them all."""
    tracker = Tracker(config, "eval", config.run_dir)
    label = None
    try:
        for label, path in policies.items():
            results["policies"][label] = evaluate_checkpoint(config, label, path, seeds, tracker, audit)
            write_results(record, results, config)
        if expert:
            label = "expert"
            results["policies"]["expert"] = evaluate_expert(env_factory(config), seeds, config.env.max_turns)
        write_results(record, results, config)
        if record.config is None:  # the run's own evaluation: each checkpoint's model card gets its numbers
            update_cards(config, results)
    except BaseException as exc:  # an interrupt too: what was measured stays measured
        results["incomplete"] = f"stopped while evaluating {label}: {type(exc).__name__}: {exc}"
        if results["policies"]:
            write_results(record, results, config)
            logger.error("evaluation stopped; the results so far are in %s", record.results)
        raise
    finally:
        record_sync_command(tracker.finish())


def evaluate_checkpoint(
    config: Config, label: str, path: Path, seeds: list[int], tracker: Tracker, audit: bool = False
) -> dict[str, Any]:
    """One saved policy, greedy and sampled (at the rollout temperature), on the held-out seeds; logged.

    `audit`: its greedy episodes are replayed with the env's expert asked at every state (`decisions`, and
    `greedy.expert_agreement`: the share of turns where the policy did what the expert would).
    """
    model, tokenizer = load_checkpoint(path, config)
    if torch.cuda.is_available():
        model = model.cuda()
    engine = rollout_engine(config, tokenizer, model, greedy=True)
    with out_of_memory_guard(config, "eval"):
        greedy, greedy_episodes = evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)
        engine.settings = sampling_settings(config, greedy=False)
        sampled, _ = evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)
    decisions = expert_agreement(env_factory(config), greedy_episodes) if audit else None
    if decisions is not None and decisions["agreement"] is not None:
        greedy["expert_agreement"] = decisions["agreement"]
    tracker.log(
        {
            f"{label}/{mode}/{k}": v
            for mode, summary in (("greedy", greedy), ("sampled", sampled))
            for k, v in summary.items()
        }
    )
    # The headline numbers are the policy as configured (eval.greedy); both are kept.
    headline = greedy if config.eval.greedy else sampled
    result = {**headline, "greedy": greedy, "sampled": sampled, "checkpoint": str(path)}
    if decisions is not None:
        result["decisions"] = decisions
    selection = (
        path / SELECTION_FILE
    )  # a checkpoint chosen on validation success (eval.keep_best) names its step
    if selection.is_file():
        result["selection"] = json.loads(selection.read_text(encoding="utf-8"))
    return result


def check_eval_expert(config: Config, expert: bool | str | None = None) -> None:
    """`eval.expert: true` needs an expert that answers: fail before any model loads (exit 2) if there is none."""
    if (config.eval.expert if expert is None else expert) is True:
        check_expert(
            config.env,
            "key 'eval.expert' = true",
            "eval.expert: auto (evaluates the expert when the env has one, skips it with a note otherwise)",
        )


# ------------------------------------------------------------------------------------------------ records
def eval_record(config: Config) -> EvalRecord:
    """eval.json when `config` is the run's own (or the run has no config.yaml yet); else a timestamped pair.

    "The run's own": equal to its config.yaml in every key but NOT_THE_EVALUATION.

    A config.yaml that no longer loads (written by another rlft version) counts as different: it is kept.
    """
    saved = config.run_dir / "config.yaml"
    if not saved.is_file():
        return EvalRecord(config.run_dir / RESULTS_FILE)
    mine = config_to_dict(config)
    try:
        training = config_to_dict(load_config(saved))
    except RlftError:
        training = {}
    differs_in = [k for k in changed_keys(training, mine) if k.split(".")[0] not in NOT_THE_EVALUATION]
    if not differs_in:
        return EvalRecord(config.run_dir / RESULTS_FILE)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"eval_{stamp}", 1
    while (config.run_dir / f"{name}.json").exists() or (config.run_dir / f"{name}.config.yaml").exists():
        n += 1
        name = f"eval_{stamp}-{n}"
    return EvalRecord(config.run_dir / f"{name}.json", config.run_dir / f"{name}.config.yaml", differs_in)


def changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose value differs between two nested mappings (a key missing on one side counts).

    >>> changed_keys({"eval": {"episodes": 200, "greedy": True}}, {"eval": {"episodes": 50, "greedy": True}})
    ['eval.episodes']
    """
    keys = list(dict.fromkeys([*before, *after]))
    changed = []
    for key in keys:
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and a and b:
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif key not in before or key not in after or a != b:
            changed.append(f"{prefix}{key}")
    return changed


def write_results(record: EvalRecord, results: dict[str, Any], config: Config) -> None:
    """Atomically rewrite the results (and, the first time, write this evaluation's own config beside them)."""
    if record.config is not None and not record.config.exists():
        partial_config = record.config.with_name(f".{record.config.name}.partial")
        save_config(config, partial_config)
        os.replace(partial_config, record.config)
    write_text_atomic(record.results, json.dumps(results, indent=2) + "\n")


def default_policies(config: Config) -> dict[str, Path]:
    """Every checkpoint this run has, in pipeline order (untrained = the base checkpoint; rl_best = the RL
    checkpoint with the best validation success, `eval.keep_best`)."""
    found = {}
    for label, stage in (("untrained", "base"), ("sft", "sft"), ("rl", "rl"), ("rl_best", "rl_best")):
        path = checkpoint_dir(config, stage)
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            found[label] = path
    if not found:
        raise CheckpointError(
            f"{config.run_dir}/checkpoints has no checkpoint to evaluate; run sft or train first"
        )
    return found


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: success and return with 95% CIs, greedy and sampled (at the rollout temperature).

    Below it, the notes: a skipped expert, a record of its own for a config other than the run's.
    """

    def cell(r: dict[str, float], key: str) -> str:
        return f"{r[key]:.3f} [{r[key + '_ci_low']:.3f}, {r[key + '_ci_high']:.3f}]"

    if not results["policies"] and results.get("note"):
        return results["note"]
    count = results["seeds"]["count"]
    audited = any("expert_agreement" in r.get("greedy", {}) for r in results["policies"].values())
    rows = [
        f"held-out episodes: {count}",
        "| policy | success, greedy (95% CI) | success, sampled (95% CI) | return, greedy | turns |"
        + (" expert's move, greedy |" if audited else ""),
        "|---|---|---|---|---|" + ("---|" if audited else ""),
    ]
    for label, r in results["policies"].items():
        greedy, sampled = r.get("greedy", r), r.get("sampled", r)
        if "selection" in r:  # chosen on validation tasks, never on these test tasks
            label = f"{label} (step {r['selection']['step']})"
        agreement = greedy.get("expert_agreement")
        rows.append(
            f"| {label} | {cell(greedy, 'success')} | {cell(sampled, 'success')} | "
            f"{cell(greedy, 'return')} | {greedy['turns']:.1f} |"
            + ((" - |" if agreement is None else f" {agreement:.3f} |") if audited else "")
        )
    rows += [f"note: {note}" for note in results.get("notes", [])]
    rows += disagreement_lines(results)
    return "\n".join(rows)


def disagreement_lines(results: dict[str, Any], per_policy: int = 3) -> list[str]:
    """Each audited policy's most frequent greedy decisions that the expert would not take, one line each."""
    lines = []
    for label, r in results["policies"].items():
        for d in r.get("decisions", {}).get("disagreements", [])[:per_policy]:
            where = " / ".join(d["observation"].splitlines()[-2:])  # the last lines: where the agent is
            lines.append(
                f"{label}: {d['policy']} where the expert plays {d['expert']} ({d['count']}x): {where}"
            )
    return lines
