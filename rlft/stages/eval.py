"""The eval stage: each policy and the expert on the same held-out seeds; eval.json and a table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rlft.config.schema import Config
from rlft.errors import CheckpointError
from rlft.rollout.evaluation import evaluate_expert, evaluate_policy, held_out_seeds
from rlft.runtime.distributed import ddp_timeout_s, process_state
from rlft.runtime.faults import out_of_memory_guard
from rlft.runtime.tracking import Tracker
from rlft.stages.common import (
    check_loadable,
    checkpoint_dir,
    env_factory,
    load_checkpoint,
    prepare_run,
    record_sync_command,
    rollout_engine,
    sampling_settings,
)

logger = logging.getLogger(__name__)


MAIN_PROCESS_EVAL = (
    "evaluation runs on the main process (rank 0), which prints the table and writes eval.json"
)


def run_eval(config: Config, policies: dict[str, Path] | None = None, expert: bool = True) -> dict[str, Any]:
    """Evaluate each policy (label -> checkpoint) and the expert on the same held-out seeds; write eval.json."""
    if not process_state(ddp_timeout_s(config)).is_main_process:
        # Under `accelerate launch` the main process evaluates alone (no collectives, so nothing to wait for).
        return {"seeds": {"first": None, "count": 0}, "policies": {}, "note": MAIN_PROCESS_EVAL}
    policies = policies if policies is not None else default_policies(config)
    for path in policies.values():  # a damaged checkpoint is named before anything is written
        check_loadable(path)
    prepare_run(config)
    seeds = held_out_seeds(env_factory(config), config.env, config.eval)
    tracker = Tracker(config, "eval", config.run_dir)
    results: dict[str, Any] = {"seeds": {"first": seeds[0], "count": len(seeds)}, "policies": {}}
    for label, path in policies.items():
        model, tokenizer = load_checkpoint(path, config)
        if torch.cuda.is_available():
            model = model.cuda()
        engine = rollout_engine(config, tokenizer, model, greedy=True)
        with out_of_memory_guard(config, "eval"):
            greedy, _ = evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)
            engine.settings = sampling_settings(config, greedy=False)
            sampled, _ = evaluate_policy(engine, seeds, config.eval.batch_size, seed=config.seed)
        # The headline numbers are the policy as configured (eval.greedy); both are kept.
        headline = greedy if config.eval.greedy else sampled
        results["policies"][label] = {
            **headline,
            "greedy": greedy,
            "sampled": sampled,
            "checkpoint": str(path),
        }
        tracker.log(
            {
                f"{label}/{mode}/{k}": v
                for mode, summary in (("greedy", greedy), ("sampled", sampled))
                for k, v in summary.items()
            }
        )
    if expert:
        try:
            results["policies"]["expert"] = evaluate_expert(env_factory(config), seeds, config.env.max_turns)
        except (ValueError, KeyError, AttributeError) as exc:
            logger.warning("no expert for %s (%s)", config.env.id, exc)
    out = config.run_dir / "eval.json"
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    record_sync_command(tracker.finish())
    return results


def default_policies(config: Config) -> dict[str, Path]:
    """Every checkpoint this run has, in pipeline order (untrained = the base checkpoint)."""
    found = {}
    for label, stage in (("untrained", "base"), ("sft", "sft"), ("rl", "rl")):
        path = checkpoint_dir(config, stage)
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            found[label] = path
    if not found:
        raise CheckpointError(
            f"{config.run_dir}/checkpoints has no checkpoint to evaluate; run sft or train first"
        )
    return found


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: success and return with 95% CIs, greedy and sampled (at the rollout temperature)."""

    def cell(r: dict[str, float], key: str) -> str:
        return f"{r[key]:.3f} [{r[key + '_ci_low']:.3f}, {r[key + '_ci_high']:.3f}]"

    if not results["policies"] and results.get("note"):
        return results["note"]
    count = results["seeds"]["count"]
    rows = [
        f"held-out episodes: {count}",
        "| policy | success, greedy (95% CI) | success, sampled (95% CI) | return, greedy | turns |",
        "|---|---|---|---|---|",
    ]
    for label, r in results["policies"].items():
        greedy, sampled = r.get("greedy", r), r.get("sampled", r)
        rows.append(
            f"| {label} | {cell(greedy, 'success')} | {cell(sampled, 'success')} | "
            f"{cell(greedy, 'return')} | {greedy['turns']:.1f} |"
        )
    return "\n".join(rows)
