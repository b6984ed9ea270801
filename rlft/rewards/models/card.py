"""What a saved reward model says about itself: `rm.json` (how it was trained, how to score with it) and `README.md`.

`rm_info` gathers the record written as `rm.json` beside the weights (rlft.rewards.models.scoring reads its scoring
settings back); `model_card` renders the same record as a Hugging Face model card: the base model, the data, the
held-out accuracy and calibration with the reliability table, the training settings and how to load it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rlft.config.schema import ModelConfig


def describe_model(model_cfg: ModelConfig) -> str:
    if model_cfg.tiny is not None:
        t = model_cfg.tiny
        return (
            f"embedded tiny {t.architecture} (hidden {t.hidden_size}, {t.num_layers} layers, {t.num_heads} heads), "
            "random init, word-level tokenizer made locally"
        )
    revision = f" @ {model_cfg.revision}" if model_cfg.revision else ""
    return f"{model_cfg.name_or_path}{revision}"


def rm_info(
    model_cfg: ModelConfig,
    args,
    seed: int,
    data: dict[str, Any],
    train_count: int,
    eval_count: int,
    metrics: dict[str, Any],
    normalization: dict[str, float],
    conversational: bool,
) -> dict[str, Any]:
    return {
        "format": "rlft-reward-model/1",
        "base_model": describe_model(model_cfg),
        "seed": seed,
        "data": data,
        "pairs": {"train": train_count, "held_out": eval_count},
        "held_out": metrics,
        "conversational": conversational,
        "append_eos": not conversational,
        "max_length": args.max_length,
        "normalization": normalization,
        "trainer": {
            "learning_rate": args.learning_rate,
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "center_rewards_coefficient": args.center_rewards_coefficient,
        },
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def model_card(info: dict[str, Any]) -> str:
    """A README.md: what the reward model is, what it was trained on, how well it ranks held-out pairs."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [rlft, reward-model, trl]",
        "---",
        "",
        "# Reward model",
        "",
        "A Bradley-Terry reward model (one-label sequence classifier) trained by `rlft rm` with TRL's "
        "`RewardTrainer`.",
        "",
        f"- **Base model**: {info['base_model']}",
        f"- **Seed**: {info['seed']}",
        f"- **Pairs**: {info['pairs']['train']} training, {info['pairs']['held_out']} held out",
    ]
    lines += _data_section(info["data"])
    lines += _held_out_section(info["held_out"])
    lines += _training_section(info)
    lines += _use_section(info["conversational"])
    return "\n".join(lines)


def _data_section(data: dict[str, Any]) -> list[str]:
    """The card's "Data" lines: one per key of the data description."""
    lines = ["", "## Data", ""] + [
        f"- **{key}**: {_fmt(value) if not isinstance(value, (dict, list)) else json.dumps(value)}"
        for key, value in data.items()
    ]
    if not data:
        lines.append("Not described (trained through the API without a `data` description).")
    return lines


def _held_out_section(held: dict[str, Any]) -> list[str]:
    """The card's "Held-out preferences" lines: the metrics table and the reliability table."""
    lines = ["", "## Held-out preferences", ""]
    if not held:
        lines.append("No held-out pairs: not evaluated.")
        return lines
    lines += ["| metric | value |", "|---|---|"]
    lines += [
        f"| {name} | {_fmt(held[name])} |"
        for name in ("pairs", "accuracy", "gold_accuracy", "brier", "log_loss", "ece", "mean_margin")
        if name in held
    ]
    lines += [
        "",
        "Accuracy counts a tie as 1/2; p = sigmoid(r(chosen) - r(rejected)); Brier = mean (1 - p)^2; "
        "ECE over confidence max(p, 1 - p) bins."
        + (" gold_accuracy: against the gold order, before label noise." if "gold_accuracy" in held else ""),
        "",
        "| confidence bin | pairs | mean confidence | accuracy |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['bin']} | {r['count']} | {_fmt(r['confidence'])} | {_fmt(r['accuracy'])} |"
        for r in held["reliability"]
    ]
    return lines


def _training_section(info: dict[str, Any]) -> list[str]:
    """The card's "Training" lines: the loss (with the centering term when on) and the trainer settings."""
    trainer = info["trainer"]
    return [
        "",
        "## Training",
        "",
        "Loss -log sigmoid(r(chosen) - r(rejected))"
        + (
            f" + {trainer['center_rewards_coefficient']} * mean(r^2)"
            if trainer["center_rewards_coefficient"]
            else ""
        )
        + ".",
        f"learning rate {trainer['learning_rate']}, epochs {trainer['num_train_epochs']}, "
        f"max steps {trainer['max_steps']}, batch {trainer['per_device_train_batch_size']} pairs per device, "
        f"max length {info['max_length']}.",
    ]


def _use_section(conversational: bool) -> list[str]:
    """The card's "Use" lines: loading the folder and scoring texts or conversations."""
    return [
        "",
        "## Use",
        "",
        "```python",
        "from rlft.rewards.models.scoring import load_reward_model",
        "",
        "rm = load_reward_model('<this folder>')",
        "rm.score(['<prompt + completion text>'])"
        if not conversational
        else "rm.score_conversations([[{'role': 'user', 'content': '...'}, {'role': 'assistant', 'content': '...'}]])",
        "```",
        "",
    ]
