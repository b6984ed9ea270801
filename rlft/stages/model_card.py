"""The model card (README.md) of every checkpoint rlft saves, in Hugging Face's format, written from the run's facts.

    runs/<name>/checkpoints/<stage>/README.md    stage: base, sft, rl, rl_best, rm (and rm_<i> per ensemble member)

Front matter (`huggingface_hub.ModelCardData`): library_name transformers; tags rlft, reinforcement-learning, the
algorithm and the env id; base_model where the model is a hub name; a `model-index` of the held-out results once
`rlft eval` has measured them. Body: the base model and tokenizer; how the checkpoint was trained (stage, algorithm,
demonstrations, reward design, resolved configuration, key hyperparameters); the seeds; held-out results with 95%
CIs, greedy and sampled, beside the expert's on the same seeds; known limits, each stated from a fact of the run.

The card is written (atomically) with the checkpoint, and rewritten by `rlft eval` with eval.json's numbers. A card
written at save time shows no held-out numbers for its own checkpoint: an eval.json that exists then was measured on
the weights the save replaces. Whatever eval.json, metrics.jsonl or the resolved files hold (missing, damaged, from
another rlft), the card is written and says what is unknown: a checkpoint is never lost to its card.

Trainer checkpoints (runs/<name>/trainer/<stage>/checkpoint-<step>) get no card: they exist for `--resume`, and their
MANIFEST.json checksums every file in them. No card is ever written into a folder whose MANIFEST.json lists one
(rlft.algorithms.checkpoint_manifest.verify would then call the checkpoint damaged).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from rlft.algorithms.checkpoint_manifest import MANIFEST
from rlft.config.schema import Config, ModelConfig
from rlft.runtime.run_files import write_text_atomic
from rlft.stages.model_card_sections import card_body, model_config_of, own_result, read_json

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
RESULTS_FILE = "eval.json"  # runs/<name>/eval.json, written by rlft.stages.eval (which imports it from here)


def stage_of(folder: Path) -> str:
    """The stage a checkpoint folder belongs to: its name, with an ensemble member rm_<i> counted as rm."""
    return "rm" if re.fullmatch(r"rm_\d+", folder.name) else folder.name


# ------------------------------------------------------------------------------------------- what the run recorded
def read_results(config: Config) -> dict[str, Any] | None:
    """The run's eval.json, or None when it is missing or damaged (a card says "not evaluated" instead)."""
    try:
        results = json.loads((config.run_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(results, dict) and isinstance(results.get("policies"), dict)
    return results if ok else None


# ----------------------------------------------------------------------------------------------- the card itself
def hub_model_id(model_cfg: ModelConfig) -> str | None:
    """`name_or_path` when it names a model on the Hugging Face Hub (not a local folder, not the tiny model)."""
    name = model_cfg.name_or_path
    if model_cfg.tiny is not None or not name or os.path.isdir(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def eval_results(config: Config, own: dict[str, Any]) -> list[EvalResult]:
    """The model-index entries: held-out success and mean return, greedy and sampled."""
    found = []
    for mode in ("greedy", "sampled"):
        summary = own.get(mode, own)
        for key, metric in (("success", "success_rate"), ("return", "mean_reward")):
            if isinstance(summary.get(key), (int, float)):
                found.append(
                    EvalResult(
                        task_type="reinforcement-learning",
                        dataset_type=config.env.id,
                        dataset_name=f"{config.env.id} held-out seeds",
                        dataset_split="test",
                        metric_type=metric,
                        metric_config=mode,
                        metric_name=f"held-out {key} ({mode})",
                        metric_value=round(float(summary[key]), 4),
                    )
                )
    return found


def card_data(config: Config, stage: str, own: dict | None) -> ModelCardData:
    model_cfg = model_config_of(config, stage)
    kind = {"sft": "sft", "rl": config.rl.algorithm, "rl_best": config.rl.algorithm, "rm": "reward-model"}
    tags = ["rlft", "reinforcement-learning", kind.get(stage, "untrained"), config.env.id]
    results = eval_results(config, own) if own else None
    return ModelCardData(
        library_name="transformers",
        base_model=hub_model_id(model_cfg),
        tags=tags,
        model_name=f"{config.name}/{stage}" if results else None,
        eval_results=results or None,
    )


def render_card(
    config: Config,
    folder: str | os.PathLike,
    results: dict[str, Any] | None = None,
    evaluated: bool = True,
    selection: dict[str, Any] | None = None,
) -> ModelCard:
    """The model card of the checkpoint in `folder` (runs/<name>/checkpoints/<stage>).

    Args:
        config: the run's config.
        folder: the checkpoint folder; its name says the stage.
        results: eval.json's content (None: not evaluated).
        evaluated: whether `results` were measured on these weights; False at save time, when they cannot be.
        selection: rl_best's selection record at save time (later, eval.json's entry carries it).
    """
    folder = Path(folder)
    stage = stage_of(folder)
    own = own_result(results, folder) if evaluated else None
    expert = (results or {}).get("policies", {}).get("expert")
    expert = expert if isinstance(expert, dict) else None
    if own is not None and isinstance(own.get("selection"), dict):
        selection = own["selection"]
    body = card_body(config, stage, folder, results, own, expert, selection)
    data = card_data(config, stage, own)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# ------------------------------------------------------------------------------------------------------- writing
def card_is_checksummed(folder: Path) -> bool:
    """Whether the folder's MANIFEST.json lists a card: rewriting it would make the checkpoint fail to verify."""
    return CARD_FILE in read_json(folder / MANIFEST).get("files", {})


def card_files(config: Config, folder: str | os.PathLike, selection: dict | None = None) -> dict[str, str]:
    """{README.md: the card} for a checkpoint about to be saved into `folder` (rlft.stages.rl.save_final writes
    it with the weights, or not at all). A card that cannot be rendered is left out with a warning: the weights
    of a long run are worth more than their description."""
    try:
        card = render_card(config, folder, read_results(config), evaluated=False, selection=selection)
    except Exception as exc:  # noqa: BLE001 - any failure, since losing the checkpoint is worse
        logger.warning("no model card for %s: %s: %s", folder, type(exc).__name__, exc)
        return {}
    return {CARD_FILE: str(card)}


def resume_card_files(config: Config, step: int, max_steps: int) -> dict[str, str]:
    """{README.md: the card} of an exact-resume checkpoint (trainer/rl/checkpoint-<step>): the card of the run's
    RL policy, saying which step's weights these are and that they are not the run's final policy."""
    files = card_files(config, config.run_dir / "checkpoints" / "rl")
    text = files.get(CARD_FILE)
    if text is None:
        return {}
    front, _, body = text.partition("\n---\n")  # the YAML front matter ends at the second '---'
    note = (
        f"> **An exact-resume checkpoint, step {step} of {max_steps}.** The weights, optimizer and RNG state of "
        f"the RL run at that step (`rlft train --config <config> --resume {config.run_dir / 'trainer' / 'rl'}/"
        f"checkpoint-{step}`), not its final policy, which is `checkpoints/rl`. What follows describes the run."
    )
    return {CARD_FILE: f"{front}\n---\n\n{note}\n{body}"}


def write_card(
    config: Config, folder: str | os.PathLike, results: dict[str, Any] | None = None
) -> Path | None:
    """Write (atomically) the card of the checkpoint in `folder`; its path, or None when none was written.

    Args:
        results: eval.json's content, measured on this checkpoint (`rlft eval`); None when the checkpoint was
            just saved: eval.json as it is then, without numbers for these weights.
    """
    folder = Path(folder)
    if card_is_checksummed(folder):
        return None
    if results is None:
        text = card_files(config, folder).get(CARD_FILE)
        if text is None:
            return None
    else:
        text = str(render_card(config, folder, results, evaluated=True))
    return write_text_atomic(folder / CARD_FILE, text)


def update_cards(config: Config, results: dict[str, Any]) -> list[Path]:
    """After `rlft eval`: rewrite the card of each evaluated checkpoint of this run with its held-out numbers.

    Only folders under runs/<name>/checkpoints; a card that cannot be written is a warning (eval.json is
    written by then).
    """
    checkpoints = (config.run_dir / "checkpoints").resolve()
    written = []
    for entry in results.get("policies", {}).values():
        folder = Path(entry["checkpoint"]) if isinstance(entry, dict) and entry.get("checkpoint") else None
        if folder is None or folder.resolve().parent != checkpoints or not folder.is_dir():
            continue
        try:
            path = write_card(config, folder, results)
        except Exception as exc:  # noqa: BLE001 - eval.json is written; a card must not turn that into a failure
            logger.warning("model card of %s not updated: %s: %s", folder, type(exc).__name__, exc)
            continue
        if path is not None:
            written.append(path)
    return written
