"""Validation during SFT and model selection on it (`sft.eval_every_steps`, `sft.keep_best`).

Every `sft.eval_every_steps` optimizer steps (and at the last) the policy plays the validation tasks (the seeds
RL validates on, never the test seeds) in eval.greedy's decoding, and the trainer scores the expert's clean
demonstrations on them (`eval_loss`: how well the policy imitates the expert on tasks it never trained on). With
`sft.keep_best`, transformers keeps the checkpoint with the best validation success (`load_best_model_at_end`,
`metric_for_best_model`; ties go to the lower eval_loss) and the stage saves it as checkpoints/sft, with
selection.json naming its step.

Why: the last SFT step is not always the best policy, and a policy that never learned the decision that matters
should be seen before RL starts from it. On slippery FrozenLake that decision is learned late, at a step that
depends on the seed (benchmarks/investigations/slippery_sft_2026-12-07.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import SFTTrainer

from rlft.config.schema import Config
from rlft.errors import ConfigError
from rlft.rollout.demos import record_expert_demos, sft_rows
from rlft.rollout.evaluation import evaluate_policy, missing_expert
from rlft.runtime.distributed import generation_policy
from rlft.stages.common import SELECTION_FILE, env_factory
from rlft.stages.generalisation import GeneralisationEvaluation, validation_seeds

logger = logging.getLogger(__name__)
SUCCESS = "eval_success"  # validation success in eval.greedy's decoding
# What keep_best compares: validation success, ties (frequent: 100 episodes give success in steps of 0.01) broken
# by the lower eval_loss on the expert's validation demos. transformers keeps the earliest of equal scores.
METRIC = "eval_selection_score"
TIE_BREAK = 1e-6  # x eval_loss (capped at 1000): below any difference of validation success


def selection_defaults(config: Config) -> dict[str, Any]:
    """`trl.SFTConfig` keys for validation every sft.eval_every_steps (and keep_best); the user's sft.trainer
    keys still win. Empty without sft.eval_every_steps."""
    every = config.sft.eval_every_steps
    if every is None:
        return {}
    keys: dict[str, Any] = {"eval_strategy": "steps", "eval_steps": every}
    if config.sft.keep_best:
        keys.update(
            save_strategy="steps",
            save_steps=every,
            save_total_limit=1,  # transformers keeps the best one besides the latest
            load_best_model_at_end=True,
            metric_for_best_model=METRIC,
            greater_is_better=True,
        )
    return keys


def check_validation_expert(config: Config) -> None:
    """sft.eval_every_steps scores the expert's demos on the validation tasks: refuse an env without an expert
    before any model loads (exit 2)."""
    if config.sft.eval_every_steps is None:
        return
    why = missing_expert(env_factory(config))
    if why is not None:
        raise ConfigError(
            f"key 'sft.eval_every_steps' = {config.sft.eval_every_steps}: validation during SFT scores the env's "
            f"expert on the validation tasks, and this env has none ({why}). Unset sft.eval_every_steps and "
            "sft.keep_best, or give the env an expert"
        )


def validation_demos(config: Config, turn_format) -> tuple[list[int], Dataset]:
    """The validation seeds and the expert's clean (epsilon 0) demonstrations on them, as SFT rows."""
    seeds = validation_seeds(config)
    records = record_expert_demos(
        env_factory(config),
        episodes=0,
        epsilon=0.0,
        seed=0,
        seed_start=0,
        max_turns=config.env.max_turns,
        seeds=seeds,
    )
    return seeds, Dataset.from_list(sft_rows([record.episode(turn_format) for record in records]))


class ValidatedSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer whose evaluation also plays the validation tasks: `evaluate()` returns (and logs)
    eval_loss on the expert's validation demos and eval_success, eval_return, ... of the policy's episodes, so
    transformers' best-checkpoint tracking can select on success."""

    def __init__(self, *args, rlft_config: Config, validation: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.validation_play = GeneralisationEvaluation(
            rlft_config,
            self.processing_class,
            validation,
            [],
            evaluate_policy,
            lambda: self.state.global_step,
        )

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        model = generation_policy(self)
        was_training = model.training
        model.eval()
        try:
            played = self.validation_play(model)
        finally:
            model.train(was_training)
        logs = {f"{metric_key_prefix}_{key}": float(value) for key, value in played.items()}
        loss = min(float(metrics.get(f"{metric_key_prefix}_loss", 0.0)), 1000.0)
        logs[f"{metric_key_prefix}_selection_score"] = logs[f"{metric_key_prefix}_success"] - TIE_BREAK * loss
        self.log(logs)
        metrics.update(logs)
        return metrics


def write_selection(trainer: SFTTrainer, path: Path) -> dict[str, Any] | None:
    """checkpoints/sft/selection.json: the step keep_best kept and its validation success, beside the last
    step's (None without keep_best)."""
    state = trainer.state
    if not trainer.args.load_best_model_at_end or state.best_global_step is None:
        return None
    scored: dict[
        int, dict[str, Any]
    ] = {}  # step -> its eval_* logs (eval_loss and the episodes' are two entries)
    for entry in state.log_history:
        if any(key.startswith("eval_") for key in entry):
            scored.setdefault(entry["step"], {}).update(entry)
    best, last = scored.get(state.best_global_step, {}), scored[max(scored)] if scored else {}
    record = {
        "stage": "sft",
        "step": state.best_global_step,
        "validation_success": best.get(SUCCESS),
        "validation_loss": best.get("eval_loss"),
        "last_step": state.global_step,
        "last_validation_success": last.get(SUCCESS),
    }
    if trainer.accelerator.is_main_process:
        (path / SELECTION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        logger.info(
            "sft.keep_best: checkpoints/sft is step %d (validation success %.3f; the last step, %d, had %s)",
            record["step"],
            record["validation_success"],
            record["last_step"],
            record["last_validation_success"],
        )
    return record
