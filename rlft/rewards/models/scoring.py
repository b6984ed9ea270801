"""A trained reward model as a reward: `score(texts) -> list[float]`, for one model or an ensemble.

`RewardModelScorer` tokenizes each text as TRL's `RewardTrainer` did in training (the tokenizer's own special
tokens, and the EOS token appended to standard text that does not end with it), scores texts in batches, and
gives each text the same score alone as inside a padded batch, whichever side is padded:

* the position ids count attended tokens only (`cumsum(attention_mask) - 1`), so left padding does not shift
  the positions a text sees (a decoder called without position ids numbers the pad tokens too);
* the one-label classifier pools the rightmost token that is not padding (transformers'
  `GenericForSequenceClassification`), which is the text's last token for either padding side.

`RewardEnsemble` aggregates several scorers (several seeds or data splits) by `mean`, `min` or
`mean_minus_std` (mean - k * std over members, the population std), the conservative aggregates of
Coste et al. (2023), "Reward Model Ensembles Help Mitigate Overoptimization". With `normalize`, each member's
score is first standardised by the mean and std of its scores on its own training texts (saved in `rm.json`),
so members whose Bradley-Terry offsets and scales differ are compared on one scale.

`load_reward_model(path)` loads a saved reward model folder (`rm.json`, `config.json`, safetensors, tokenizer)
or an ensemble: a folder with `ensemble.json` naming its members, or a list of folders.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from rlft.errors import CheckpointError
from rlft.models import policy  # module attribute calls: tests trap policy.load_tokenizer

RM_FILE = (
    "rm.json"  # how the model was trained and how to score with it (written by rlft.rewards.models.train)
)
ENSEMBLE_FILE = "ensemble.json"  # {"members": [relative folders], "aggregate", "k", "normalize"}
AGGREGATES = ("mean", "min", "mean_minus_std")
Aggregate = Literal["mean", "min", "mean_minus_std"]
Conversation = list[dict[str, str]]


class Scorer(Protocol):
    def score(self, texts: Sequence[str]) -> list[float]: ...


def read_rm_info(path: str | Path) -> dict[str, Any]:
    """The `rm.json` of a saved reward model folder ({} when there is none: a classifier saved elsewhere)."""
    file = Path(path) / RM_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def encode_texts(tokenizer, texts: Sequence[str], append_eos: bool = True) -> list[list[int]]:
    """Token ids of standard texts as TRL's RewardTrainer makes them: `tokenizer(text + eos)`."""
    eos = tokenizer.eos_token
    if append_eos and eos is None:
        raise CheckpointError("the reward model's tokenizer has no EOS token to end texts with")
    ids = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(
                f"score() takes strings, got {type(text).__name__}; use score_conversations for messages"
            )
        if append_eos and not text.endswith(eos):
            text = text + eos
        ids.append(list(tokenizer(text)["input_ids"]))
    return ids


def encode_conversations(tokenizer, conversations: Sequence[Conversation]) -> list[list[int]]:
    """Token ids of conversations through the chat template, as TRL's RewardTrainer makes them (no EOS added)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise CheckpointError(
            "conversational preferences need a tokenizer with a chat template "
            "(the embedded tiny model: model.chat_template: on)"
        )
    return [
        list(tokenizer.apply_chat_template(list(c), tokenize=True, return_dict=True)["input_ids"])
        for c in conversations
    ]


class RewardModelScorer:
    """Scores texts with a one-label sequence classifier (a Bradley-Terry reward model).

    Args:
        model: a saved reward-model folder, or a loaded `*ForSequenceClassification` with one label.
        tokenizer: the model's tokenizer (loaded from the folder when `model` is a path).
        batch_size: texts per forward pass.
        max_length: texts longer than this many tokens keep their last `max_length` tokens (the pooled end);
            `truncated` counts them. Default: the training `max_length` from rm.json, else no limit.
        padding_side: "right" (as TRL trains) or "left"; the scores are the same either way for decoder models.
        normalize: standardise scores by the training-text mean and std saved in rm.json.
        device: where to run; default: where the model is.
        trust_remote_code: passed to transformers when loading a folder (False unless a config sets it).
    """

    def __init__(
        self,
        model: str | Path | torch.nn.Module,
        tokenizer=None,
        batch_size: int = 32,
        max_length: int | None = None,
        padding_side: Literal["left", "right"] = "right",
        normalize: bool = False,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
    ):
        self.info: dict[str, Any] = {}
        self.path: Path | None = None
        if isinstance(model, (str, Path)):
            self.path = Path(model)
            self.info = read_rm_info(self.path)
            model, loaded_tokenizer = _load_classifier(self.path, trust_remote_code=trust_remote_code)
            tokenizer = tokenizer or loaded_tokenizer
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        if getattr(model.config, "num_labels", None) != 1:
            raise CheckpointError(f"a reward model has one label, this one has {model.config.num_labels}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length if max_length is not None else self.info.get("max_length")
        self.padding_side = padding_side
        self.append_eos = bool(self.info.get("append_eos", True))
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if self.pad_token_id is None:
            raise CheckpointError(
                "the reward model's tokenizer has neither a pad nor an EOS token to pad with"
            )
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:
            text_config.pad_token_id = (
                self.pad_token_id
            )  # the classifier pools the last token that is not this
        self._positions = "position_ids" in inspect.signature(model.forward).parameters
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if device is not None:
            self.model.to(self.device)
        self.offset, self.scale = 0.0, 1.0
        if normalize:
            stats = self.info.get("normalization")
            if not stats:
                raise CheckpointError(
                    f"{self.path or 'this reward model'}: no normalization statistics in {RM_FILE}"
                )
            self.offset, self.scale = float(stats["mean"]), max(float(stats["std"]), 1e-8)
        self.truncated = 0

    def score(self, texts: Sequence[str]) -> list[float]:
        """One scalar reward per text (prompt and completion together, as in training)."""
        return self.score_ids(encode_texts(self.tokenizer, texts, self.append_eos))

    def score_conversations(self, conversations: Sequence[Conversation]) -> list[float]:
        """One scalar reward per conversation (a list of {role, content} messages), through the chat template."""
        return self.score_ids(encode_conversations(self.tokenizer, conversations))

    @torch.inference_mode()
    def score_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Scores of token id sequences, in batches of similar length; the result is in the input order."""
        sequences = [list(s) for s in sequences]
        if any(not s for s in sequences):
            raise ValueError("cannot score an empty sequence")
        if self.max_length is not None:
            self.truncated += sum(len(s) > self.max_length for s in sequences)
            sequences = [s[-self.max_length :] for s in sequences]
        scores = [0.0] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            values = self._forward([sequences[i] for i in rows])
            for i, value in zip(rows, values):
                scores[i] = (value - self.offset) / self.scale
        return scores

    def _forward(self, batch: list[list[int]]) -> list[float]:
        width = max(len(s) for s in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            cols = slice(0, len(seq)) if self.padding_side == "right" else slice(width - len(seq), width)
            input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, cols] = 1
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
        if self._positions:
            inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        logits = self.model(**inputs, use_cache=False).logits  # (B, 1): pooled at the last non-pad token
        return logits.float().reshape(-1).tolist()


class RewardEnsemble:
    """Several scorers as one: `score` aggregates their scores per text.

    Args:
        scorers: objects with `score(texts) -> list[float]` (and `score_conversations` for messages).
        aggregate: "mean", "min", or "mean_minus_std" (mean - k * std over members, population std).
        k: the std weight of "mean_minus_std".

    >>> class Constant:
    ...     def __init__(self, value): self.value = value
    ...     def score(self, texts): return [self.value] * len(texts)
    >>> RewardEnsemble([Constant(1.0), Constant(3.0)], "mean_minus_std", k=0.5).score(["a"])
    [1.5]
    """

    def __init__(self, scorers: Sequence[Scorer], aggregate: Aggregate = "mean", k: float = 1.0):
        if not scorers:
            raise ValueError("an ensemble needs at least one scorer")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.scorers = list(scorers)
        self.aggregate = aggregate
        self.k = float(k)

    def member_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Scores of every member, shape (members, texts)."""
        return np.asarray([s.score(texts) for s in self.scorers], dtype=np.float64).reshape(
            len(self.scorers), -1
        )

    def score(self, texts: Sequence[str]) -> list[float]:
        return self.combine(self.member_scores(texts))

    def score_conversations(self, conversations: Sequence[Conversation]) -> list[float]:
        members = [s.score_conversations(conversations) for s in self.scorers]  # type: ignore[attr-defined]
        return self.combine(np.asarray(members, dtype=np.float64).reshape(len(self.scorers), -1))

    def combine(self, members: np.ndarray) -> list[float]:
        """Aggregate member scores of shape (members, texts) into one score per text."""
        if self.aggregate == "mean":
            combined = members.mean(axis=0)
        elif self.aggregate == "min":
            combined = members.min(axis=0)
        else:
            combined = members.mean(axis=0) - self.k * members.std(axis=0)
        return [float(v) for v in combined]


def _load_classifier(path: Path, trust_remote_code: bool = False):
    from transformers import AutoModelForSequenceClassification

    if not (path / "config.json").is_file():
        raise CheckpointError(f"'{path}' is not a saved reward model (no config.json)")
    try:
        tokenizer = policy.load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        # bandit B615 is a false positive: a local folder (its config.json is checked above), not a hub id, so
        # there is no revision to pin.
        model = AutoModelForSequenceClassification.from_pretrained(  # nosec B615
            str(path), use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise CheckpointError(f"cannot load reward model '{path}': {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_reward_model(
    path: str | Path | Sequence[str | Path],
    aggregate: Aggregate | None = None,
    k: float | None = None,
    normalize: bool | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    padding_side: Literal["left", "right"] = "right",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> RewardModelScorer | RewardEnsemble:
    """A reward model folder, an ensemble folder (with ensemble.json) or a list of folders, ready to `score`.

    For an ensemble folder, `aggregate`, `k` and `normalize` default to what its ensemble.json says; for a list
    of folders, to "mean", 1.0 and False. A single model is not normalised unless `normalize` is True.
    """
    settings: dict[str, Any] = {}
    if isinstance(path, (str, Path)):
        folder = Path(path)
        manifest = folder / ENSEMBLE_FILE
        if not manifest.is_file():
            return RewardModelScorer(
                folder,
                batch_size=batch_size,
                max_length=max_length,
                padding_side=padding_side,
                normalize=bool(normalize),
                device=device,
                trust_remote_code=trust_remote_code,
            )
        settings = json.loads(manifest.read_text(encoding="utf-8"))
        members = [folder / member for member in settings.get("members", [])]
    else:
        members = [Path(p) for p in path]
    if not members:
        raise CheckpointError(f"'{path}': an ensemble with no members")
    normalize = settings.get("normalize", False) if normalize is None else normalize
    scorers = [
        RewardModelScorer(
            m,
            batch_size=batch_size,
            max_length=max_length,
            padding_side=padding_side,
            normalize=bool(normalize),
            device=device,
            trust_remote_code=trust_remote_code,
        )
        for m in members
    ]
    return RewardEnsemble(
        scorers, aggregate or settings.get("aggregate", "mean"), settings.get("k", 1.0) if k is None else k
    )
