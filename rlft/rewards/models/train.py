"""Training a Bradley-Terry reward model with TRL's `RewardTrainer`, evaluating it on held-out pairs, saving it.

The model is a one-label sequence classifier: the embedded tiny model (the policy's Qwen2 / Llama config with a
score head, `Qwen2ForSequenceClassification`) with the word-level tokenizer made locally, or
`AutoModelForSequenceClassification.from_pretrained` of a folder or hub id, which puts a fresh score head on a
causal LM (the policy's loading path: same tokenizer loader, revision, dtype and trust_remote_code keys).

The loss is TRL's, -log sigmoid(r(chosen) - r(rejected)) (Bradley and Terry, 1952; Ouyang et al., 2022), with
rlft's default `center_rewards_coefficient` of 0.01 (Eisenstein et al., 2023, eq. 2) so that ensemble members
agree on where zero is.

Held-out evaluation (`evaluate_preferences`): accuracy (a tie counts one half), the Bradley-Terry probability
p = sigmoid(r(chosen) - r(rejected)) scored by its Brier score, log loss and expected calibration error over
bins of confidence max(p, 1 - p), with the reliability table; and, for pairs built from a gold signal, the
accuracy against the gold order (labels may have been flipped by the label noise).

Saved folder: safetensors weights and config (`save_pretrained`), the tokenizer, `rm.json` (data, counts,
metrics, scoring settings, training-text score statistics for ensembles) and a model card `README.md`
(rlft.rewards.models.card).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlft.config.defaults import rm_defaults
from rlft.config.schema import ModelConfig
from rlft.config.trainer_args import build_trainer_config
from rlft.errors import ConfigError, DataError
from rlft.models import policy  # module attribute calls: tests trap policy.load_tokenizer
from rlft.models.tokenizers import load_tiny_tokenizer
from rlft.rewards.models.card import model_card, rm_info
from rlft.rewards.models.preferences import PreferencePair, pair_texts, pairs_to_dataset
from rlft.rewards.models.scoring import RM_FILE, RewardModelScorer, encode_conversations, encode_texts
from rlft.runtime.distributed import save_trained

CALIBRATION_BINS = 5
NORMALIZATION_TEXTS = 1024  # training texts whose scores give the mean and std saved for ensembles


def reward_config(model_cfg: ModelConfig, overrides: dict[str, Any], output_dir: str | Path, seed: int):
    """`trl.RewardConfig`: rlft's defaults for this model (rlft.config.defaults.rm_defaults) < the user's keys."""
    from trl import RewardConfig

    return build_trainer_config(
        RewardConfig, dict(overrides), str(output_dir), seed, defaults=rm_defaults(model_cfg)
    )


# ---------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ---------------------------------------------------------------------------------------------------------------


def pair_corpus(pairs: Sequence[PreferencePair]) -> list[str]:
    """Every text of the pairs (message contents for conversations), for a word-level vocabulary."""
    texts: list[str] = []
    for pair in pairs:
        for part in (pair.prompt, pair.chosen, pair.rejected):
            texts.extend([m["content"] for m in part] if isinstance(part, list) else [part])
    return texts


def reward_model_tokenizer(model_cfg: ModelConfig, corpus: Sequence[str] = ()):
    """The tokenizer: a word-level one over `corpus` (tiny), or the model's own (rlft.models.policy.load_tokenizer).

    For the tiny model, pass the policy's corpus first (`rlft.models.policy.env_corpus` with the policy's arguments) and
    the preference texts after it: the policy's words keep their ids, so a reward model trained here can seed a
    PPO critic that reads the policy's token ids (`rl.trainer.critic_init`).
    """
    if model_cfg.tiny is not None and model_cfg.tiny.tokenizer != "word":  # the policy's own, with its ids
        return load_tiny_tokenizer(model_cfg.tiny.tokenizer)
    if model_cfg.tiny is not None:
        return policy.build_word_tokenizer(corpus, chat_template=model_cfg.chat_template == "on")
    local = Path(model_cfg.name_or_path).expanduser().exists()
    tokenizer = policy.load_tokenizer(
        model_cfg.name_or_path, model_cfg.trust_remote_code, None if local else model_cfg.revision
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_reward_model(model_cfg: ModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """A one-label sequence classifier: the tiny config with a score head, or `from_pretrained` (fresh head)."""
    from transformers import AutoModelForSequenceClassification

    if model_cfg.lora is not None:
        raise ConfigError("model.lora is not supported for reward models yet; train the full model")
    torch.manual_seed(seed)  # the score head (and the tiny backbone) start from this seed
    if model_cfg.tiny is not None:
        config = policy.tiny_model_config(model_cfg.tiny, tokenizer, num_labels=1)
        return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    local = Path(model_cfg.name_or_path).expanduser().exists()
    with (
        suppress_seqcls_warning()
    ):  # a causal LM checkpoint has no score head and an LM head the classifier drops
        model = AutoModelForSequenceClassification.from_pretrained(
            model_cfg.name_or_path,
            num_labels=1,
            dtype=policy.torch_dtype(model_cfg.dtype),
            use_safetensors=True,
            trust_remote_code=model_cfg.trust_remote_code,
            revision=None if local else model_cfg.revision,
        )
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model


# ---------------------------------------------------------------------------------------------------------------
# Data checks
# ---------------------------------------------------------------------------------------------------------------


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of `prompt + chosen` and `prompt + rejected`, exactly as RewardTrainer and the scorer make them."""
    chosen, rejected = zip(*(pair_texts(p) for p in pairs))
    if pairs[0].conversational:
        return encode_conversations(tokenizer, chosen), encode_conversations(tokenizer, rejected)
    return encode_texts(tokenizer, chosen), encode_texts(tokenizer, rejected)


def check_pair_lengths(pairs: Sequence[PreferencePair], tokenizer, max_length: int | None, what: str) -> None:
    """RewardTrainer drops pairs longer than `max_length` without a word; refuse them instead, naming them."""
    if max_length is None or not pairs:
        return
    chosen, rejected = encode_pairs(pairs, tokenizer)
    long = [
        (p.source, max(len(c), len(r)))
        for p, c, r in zip(pairs, chosen, rejected)
        if max(len(c), len(r)) > max_length
    ]
    if long:
        shown = "; ".join(f"{source} ({length} tokens)" for source, length in long[:5])
        raise DataError(
            f"{len(long)} {what} pair(s) longer than rm.trainer.max_length = {max_length} tokens, which "
            f"TRL would drop: {shown}{' ...' if len(long) > 5 else ''}; raise rm.trainer.max_length or "
            "shorten them"
        )


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


def score_pairs(scorer, pairs: Sequence[PreferencePair]) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of `prompt + chosen` and `prompt + rejected`, shape (pairs,) each."""
    chosen, rejected = zip(*(pair_texts(p) for p in pairs))
    score = scorer.score_conversations if pairs[0].conversational else scorer.score
    rewards = np.asarray(score(list(chosen) + list(rejected)), dtype=np.float64)
    return rewards[: len(pairs)], rewards[len(pairs) :]


def preference_metrics(
    margins: Sequence[float], gold_agrees: Sequence[bool | None] | None = None, bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Accuracy and calibration of Bradley-Terry probabilities p = sigmoid(margin), margin = r(chosen) - r(rejected).

    Args:
        margins: per held-out pair, (pairs,).
        gold_agrees: per pair, whether its label agrees with the gold order (None: no gold).
        bins: equal-width confidence bins over [0.5, 1].

    Returns:
        accuracy (ties count 1/2), brier (mean (1 - p)^2), log_loss (mean -log p), ece (sum over bins of
        |bin| / n * |accuracy - mean confidence|), reliability (per bin: range, count, confidence, accuracy),
        mean_margin, pairs, and gold_accuracy when gold is known.

    >>> m = preference_metrics([2.0, -1.0, 0.0])
    >>> m["accuracy"], round(m["brier"], 4)
    (0.5, 0.2662)
    """
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size == 0:
        raise ValueError("no held-out pairs to evaluate")
    p = 1.0 / (1.0 + np.exp(-margins))
    correct = np.where(margins > 0, 1.0, np.where(margins < 0, 0.0, 0.5))
    confidence = np.maximum(p, 1.0 - p)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    reliability, ece = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        row = {
            "bin": f"[{edges[b]:.1f}, {edges[b + 1]:.1f}{']' if b == bins - 1 else ')'}",
            "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        }
        if count:
            ece += count / margins.size * abs(row["accuracy"] - row["confidence"])
        reliability.append(row)
    metrics: dict[str, Any] = {
        "pairs": int(margins.size),
        "accuracy": float(correct.mean()),
        "brier": float(np.mean((1.0 - p) ** 2)),
        "log_loss": float(np.mean(np.logaddexp(0.0, -margins))),
        "ece": float(ece),
        "mean_margin": float(margins.mean()),
        "reliability": reliability,
    }
    if gold_agrees is not None:
        known = [(c, a) for c, a in zip(correct, gold_agrees) if a is not None]
        if known:
            metrics["gold_accuracy"] = float(np.mean([c if a else 1.0 - c for c, a in known]))
    return metrics


def evaluate_preferences(
    scorer, pairs: Sequence[PreferencePair], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """`preference_metrics` of a scorer (or ensemble) on held-out pairs."""
    chosen, rejected = score_pairs(scorer, pairs)
    return preference_metrics(chosen - rejected, [p.agrees_with_gold for p in pairs], bins)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RewardModelResult:
    """What `train_reward_model` returns: the saved folder, held-out metrics, the trained model and a scorer."""

    path: Path | None
    metrics: dict[str, Any]
    model: torch.nn.Module
    tokenizer: Any
    scorer: RewardModelScorer


def train_reward_model(
    train_pairs: Sequence[PreferencePair],
    eval_pairs: Sequence[PreferencePair] = (),
    *,
    model_cfg: ModelConfig,
    output_dir: str | Path,
    seed: int = 0,
    trainer: dict[str, Any] | None = None,
    corpus: Sequence[str] | None = None,
    tokenizer=None,
    data: dict[str, Any] | None = None,
    callbacks: list | None = None,
    save_to: str | Path | None = None,
    batch_size: int = 32,
) -> RewardModelResult:
    """Train a reward model on `train_pairs` with TRL's RewardTrainer; evaluate on `eval_pairs`; save it.

    Args:
        train_pairs, eval_pairs: preference pairs (all text or all conversational).
        model_cfg: the model section (`tiny` or `name_or_path`); `lora` is not supported.
        output_dir: the trainer's working folder (no checkpoints are kept in it by default).
        seed: seeds the model's initialisation and the trainer.
        trainer: keys of `trl.RewardConfig`, over rlft's defaults.
        corpus: texts for the tiny model's vocabulary (default: the pairs' texts); ignored for pretrained models.
        tokenizer: use this tokenizer instead of building or loading one.
        data: a description of the data for the model card (source, path or env, gold, budget, noise, counts).
        callbacks: transformers callbacks (e.g. rlft's TrackerCallback).
        save_to: the folder to save the model, tokenizer, rm.json and README.md into; None saves nothing.
        batch_size: scoring batch size for the held-out evaluation.
    """
    from trl import RewardTrainer

    train_pairs, eval_pairs = list(train_pairs), list(eval_pairs)
    if not train_pairs:
        raise DataError("no training pairs")
    kinds = {p.conversational for p in train_pairs + eval_pairs}
    if len(kinds) > 1:
        raise DataError("training and held-out pairs mix text and conversational formats; use one")
    args = reward_config(model_cfg, trainer or {}, output_dir, seed)
    if tokenizer is None:
        tokenizer = reward_model_tokenizer(
            model_cfg, list(corpus) if corpus is not None else pair_corpus(train_pairs + eval_pairs)
        )
    if train_pairs[0].conversational:
        encode_conversations(tokenizer, [[{"role": "user", "content": "x"}]])  # no chat template: fail now
    check_pair_lengths(train_pairs, tokenizer, args.max_length, "training")
    check_pair_lengths(eval_pairs, tokenizer, args.max_length, "held-out")
    model = build_reward_model(model_cfg, tokenizer, seed)
    reward_trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=pairs_to_dataset(train_pairs),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if len(reward_trainer.train_dataset) != len(
        train_pairs
    ):  # the length check above should make this impossible
        raise DataError(
            f"RewardTrainer kept {len(reward_trainer.train_dataset)} of {len(train_pairs)} training pairs"
        )
    reward_trainer.train()
    model = reward_trainer.accelerator.unwrap_model(reward_trainer.model)
    scorer = RewardModelScorer(model, tokenizer, batch_size=batch_size, max_length=args.max_length)
    metrics = evaluate_preferences(scorer, eval_pairs) if eval_pairs else {}
    normalization = training_score_stats(scorer, train_pairs, seed)
    path = None
    if save_to is not None:
        path = save_trained(reward_trainer, Path(save_to))
        if reward_trainer.accelerator.is_main_process:
            info = rm_info(
                model_cfg,
                args,
                seed,
                data or {},
                len(train_pairs),
                len(eval_pairs),
                metrics,
                normalization,
                train_pairs[0].conversational,
            )
            (path / RM_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
            (path / "README.md").write_text(model_card(info), encoding="utf-8")
        reward_trainer.accelerator.wait_for_everyone()
    return RewardModelResult(path, metrics, model, tokenizer, scorer)


def training_score_stats(
    scorer: RewardModelScorer, pairs: Sequence[PreferencePair], seed: int
) -> dict[str, float]:
    """Mean and std of the model's scores on (up to NORMALIZATION_TEXTS of) its training texts."""
    rng = np.random.default_rng(seed)
    chosen, rejected = score_pairs(
        scorer, [pairs[int(i)] for i in rng.permutation(len(pairs))[: NORMALIZATION_TEXTS // 2]]
    )
    scores = np.concatenate([chosen, rejected])
    return {"mean": float(scores.mean()), "std": float(scores.std()), "texts": int(scores.size)}
