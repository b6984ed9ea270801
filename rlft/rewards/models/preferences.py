"""Preference pairs for reward models: read from a JSONL file, or built from scored trajectories.

Both sources give `PreferencePair`s, which become a `datasets.Dataset` in the format TRL's `RewardTrainer`
reads (explicit prompt): columns `prompt`, `chosen`, `rejected`, either all strings (standard) or all lists of
`{role, content}` messages (conversational). TRL scores `prompt + chosen` (string or list concatenation, no
separator added) and appends the EOS token to standard text; `rlft.rewards.models.scoring` does the same.

JSONL rows (one JSON object per line)::

    {"prompt": "Reach G.\\n", "chosen": "right right down", "rejected": "left"}
    {"prompt": [{"role": "user", "content": "Reach G."}], "chosen": [{"role": "assistant", "content": "right"}],
     "rejected": [{"role": "assistant", "content": "left"}]}

`prompt` may be left out (the texts are scored as they are). Every malformed row is a `DataError` naming
`file:line`; no row is dropped.

Pairs from trajectories (`build_preference_pairs`): items `(prompt, completion, gold)` are grouped by prompt,
pairs are drawn within a group (a seeded sample of at most `budget`), and each pair is labelled by
Bradley-Terry sampling from the gold difference, P(a preferred to b) = sigmoid((gold_a - gold_b) / noise)
(Bradley and Terry, 1952); noise 0 always prefers the higher gold. Pairs of equal gold are skipped (counted in
`ties`), as are pairs whose two completions are the same text (counted in `identical`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlft.errors import DataError
from rlft.jsonl import json_objects, row_error

Text = str | list[dict[str, str]]  # standard text, or a conversation of {role, content} messages
ROLES = ("system", "user", "assistant", "tool")
FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    """One preference: `chosen` is preferred to `rejected` after `prompt`.

    Attributes:
        prompt: the shared context ("" or [] when there is none).
        chosen, rejected: the two completions; the scored texts are `prompt + chosen` and `prompt + rejected`.
        source: where the pair came from (`file:line`, or the items it was built from).
        gold_chosen, gold_rejected: the gold scores of the two completions, when the pair was built from them.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    source: str = ""
    gold_chosen: float | None = None
    gold_rejected: float | None = None

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)

    @property
    def agrees_with_gold(self) -> bool | None:
        if self.gold_chosen is None or self.gold_rejected is None:
            return None
        return self.gold_chosen > self.gold_rejected


def pairs_to_dataset(pairs: Sequence[PreferencePair]):
    """A `datasets.Dataset` with TRL's explicit-prompt preference columns: prompt, chosen, rejected."""
    from datasets import Dataset

    if not pairs:
        raise DataError("no preference pairs")
    return Dataset.from_list(
        [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    )


def pair_texts(pair: PreferencePair) -> tuple[Text, Text]:
    """The two inputs a reward model scores: `prompt + chosen` and `prompt + rejected` (as TRL builds them)."""
    return pair.prompt + pair.chosen, pair.prompt + pair.rejected


# ---------------------------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------------------------


_fail = row_error


def _check_messages(value: Any, name: str, path: Path, line: int, allow_empty: bool) -> list[dict[str, str]]:
    if not isinstance(value, list) or (not value and not allow_empty):
        kind = "a list" if allow_empty else "a non-empty list"
        raise _fail(
            path,
            line,
            f"'{name}' must be {kind} of {{role, content}} messages like 'chosen', "
            f"got {type(value).__name__ if not isinstance(value, list) else 'an empty list'}",
        )
    for k, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            got = sorted(message) if isinstance(message, dict) else type(message).__name__
            raise _fail(
                path, line, f"{name}[{k}] must be an object with exactly 'role' and 'content', got {got}"
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _fail(path, line, f"{name}[{k}].role is {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise _fail(path, line, f"{name}[{k}].content must be a string, got {type(content).__name__}")
    if name != "prompt" and not any(m["content"].strip() for m in value):
        raise _fail(path, line, f"'{name}' has no non-empty message content")
    return value


def _pair_from_row(row: dict[str, Any], path: Path, line: int) -> PreferencePair:
    extra = sorted(set(row) - set(FIELDS))
    if extra:
        raise _fail(
            path, line, f"unknown field(s) {extra}; expected 'prompt' (optional), 'chosen' and 'rejected'"
        )
    for name in ("chosen", "rejected"):
        if name not in row:
            raise _fail(
                path, line, f"missing field '{name}'; expected 'prompt' (optional), 'chosen' and 'rejected'"
            )
    conversational = isinstance(row["chosen"], list)
    prompt = row.get("prompt", [] if conversational else "")
    if conversational:
        for name in ("chosen", "rejected"):
            _check_messages(row[name], name, path, line, allow_empty=False)
        _check_messages(prompt, "prompt", path, line, allow_empty=True)
    else:
        for name in FIELDS:
            value = row.get(name, "")
            if not isinstance(value, str):
                raise _fail(
                    path,
                    line,
                    f"'{name}' must be a string like 'chosen' (or all three lists of "
                    f"messages), got {type(value).__name__}",
                )
        for name in ("chosen", "rejected"):
            if not row[name].strip():
                raise _fail(path, line, f"'{name}' is empty")
    if row["chosen"] == row["rejected"]:
        raise _fail(
            path, line, "'chosen' and 'rejected' are the same; a preference needs two different completions"
        )
    return PreferencePair(prompt, row["chosen"], row["rejected"], source=f"{path}:{line}")


def read_preferences(path: str | Path) -> list[PreferencePair]:
    """Parse and check every row of a preference JSONL file; the first malformed row raises `DataError`.

    As for demonstrations (rlft/rollout/demos.py): a blank line is an error (it would shift every later row's number), so
    is a UTF-8 BOM; the newline that ends the last row is not a blank line. All rows are standard text or all are
    conversational.
    """
    path = Path(path)
    pairs: list[PreferencePair] = []
    for number, row in json_objects(path, expected="a JSON object with 'chosen' and 'rejected'"):
        pair = _pair_from_row(row, path, number)
        if pairs and pair.conversational != pairs[0].conversational:
            kinds = ("text", "conversational")
            raise _fail(
                path,
                number,
                f"row is {kinds[pair.conversational]} but line 1 is "
                f"{kinds[pairs[0].conversational]}; expected one format in a file",
            )
        pairs.append(pair)
    return pairs


def load_preferences(path: str | Path):
    """A preference JSONL file as a `datasets.Dataset` in TRL's RewardTrainer format (prompt, chosen, rejected)."""
    return pairs_to_dataset(read_preferences(path))


def write_preferences(pairs: Sequence[PreferencePair], path: str | Path) -> Path:
    """Write pairs as JSONL that `read_preferences` reads back (gold scores and sources are not written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for p in pairs:
            handle.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Pairs from scored trajectories
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PairStats:
    """What the pair builder did, for the model card and metrics.

    Attributes:
        items: completions given; prompts: distinct prompts (groups).
        candidates: within-prompt pairs of different gold and different text, from which pairs were drawn.
        ties: within-prompt pairs of equal gold, skipped. identical: pairs of the same text, skipped.
        pairs: pairs drawn (min(budget, candidates)).
        disagree: pairs whose label prefers the lower gold (the label noise realised).
        expected_disagree: the mean Bradley-Terry probability of such a label over the drawn pairs.
    """

    items: int = 0
    prompts: int = 0
    candidates: int = 0
    ties: int = 0
    identical: int = 0
    pairs: int = 0
    disagree: int = 0
    expected_disagree: float = 0.0
    budget: int = 0
    noise: float = 0.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label_noise_rate(self) -> float:
        """Fraction of labels that disagree with gold."""
        return self.disagree / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "prompts": self.prompts,
            "candidates": self.candidates,
            "ties": self.ties,
            "identical": self.identical,
            "pairs": self.pairs,
            "budget": self.budget,
            "noise": self.noise,
            "seed": self.seed,
            "label_noise_rate": self.label_noise_rate,
            "expected_label_noise_rate": self.expected_disagree,
            **self.extra,
        }


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def preference_probability(gold_a: float, gold_b: float, noise: float) -> float:
    """Bradley-Terry P(a preferred to b) = sigmoid((gold_a - gold_b) / noise); noise 0 is the step function.

    >>> preference_probability(1.0, 0.0, 0.0), round(preference_probability(1.0, 0.0, 1.0), 4)
    (1.0, 0.7311)
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    diff = gold_a - gold_b
    if noise == 0:
        return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
    return sigmoid(diff / noise)


def _prompt_key(prompt: Text) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def build_preference_pairs(
    items: Sequence[tuple[Text, Text, float]],
    budget: int,
    noise: float = 0.0,
    seed: int = 0,
    source: str = "item",
) -> tuple[list[PreferencePair], PairStats]:
    """Draw at most `budget` within-prompt pairs and label each by Bradley-Terry sampling from the gold.

    Args:
        items: `(prompt, completion, gold)` triples; completions of the same prompt are compared.
        budget: the most pairs to return (a uniform sample without replacement of the candidates).
        noise: the Bradley-Terry temperature in gold units; 0 always prefers the higher gold.
        seed: seeds the sample and the labels.
        source: a word for the items in each pair's `source` ("episode": `episode 3 > episode 7`).

    Returns:
        (pairs, stats): pairs in sampled order; `stats.label_noise_rate` is the fraction of labels against gold.
    """
    if budget <= 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    groups: dict[str, list[int]] = {}
    for index, (prompt, _, gold) in enumerate(items):
        if not isinstance(gold, (int, float)) or not math.isfinite(gold):
            raise DataError(f"{source} {index}: gold score {gold!r} is not a finite number")
        groups.setdefault(_prompt_key(prompt), []).append(index)
    stats = PairStats(items=len(items), prompts=len(groups), budget=budget, noise=noise, seed=seed)
    candidates: list[tuple[int, int]] = []
    for members in groups.values():
        for n, a in enumerate(members):
            for b in members[n + 1 :]:
                if items[a][2] == items[b][2]:
                    stats.ties += 1
                elif items[a][1] == items[b][1]:
                    stats.identical += 1
                else:
                    candidates.append((a, b))
    stats.candidates = len(candidates)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(candidates))[:budget]
    pairs: list[PreferencePair] = []
    expected = 0.0
    for k in order:
        a, b = candidates[int(k)]
        prompt, text_a, gold_a = items[a]
        _, text_b, gold_b = items[b]
        p_a = preference_probability(gold_a, gold_b, noise)
        a_preferred = bool(rng.random() < p_a)
        expected += min(p_a, 1.0 - p_a)  # the probability that the label goes against gold
        if a_preferred != (gold_a > gold_b):
            stats.disagree += 1
        (c, r) = (a, b) if a_preferred else (b, a)
        pairs.append(
            PreferencePair(
                prompt,
                items[c][1],
                items[r][1],
                source=f"{source} {c} > {source} {r}",
                gold_chosen=float(items[c][2]),
                gold_rejected=float(items[r][2]),
            )
        )
    stats.pairs = len(pairs)
    stats.expected_disagree = expected / len(pairs) if pairs else 0.0
    return pairs, stats


def split_by_prompt(
    pairs: Sequence[PreferencePair], eval_fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out about `eval_fraction` of the pairs, whole prompts at a time, so held-out prompts are unseen.

    With a single distinct prompt (or none), pairs are split one by one instead. Both parts are non-empty
    when there are two pairs or more and `eval_fraction` > 0.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if eval_fraction == 0 or len(pairs) < 2:
        return list(pairs), []
    groups: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        groups.setdefault(_prompt_key(pair.prompt), []).append(index)
    units = list(groups.values()) if len(groups) > 1 else [[i] for i in range(len(pairs))]
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    target = max(1, round(eval_fraction * len(pairs)))
    for u in rng.permutation(len(units)):
        if len(held) >= target or len(held) + len(units[u]) >= len(pairs):
            continue
        held.update(units[u])
    if not held:  # one prompt holds nearly every pair: split its pairs
        held = {int(i) for i in rng.permutation(len(pairs))[:target]}
    train = [p for i, p in enumerate(pairs) if i not in held]
    held_out = [p for i, p in enumerate(pairs) if i in held]
    return train, held_out


# ---------------------------------------------------------------------------------------------------------------
# Episode text (the episodes themselves are played in rlft/rewards/models/trajectories.py)
# ---------------------------------------------------------------------------------------------------------------


def transcript_text(
    instructions: str, observations: Sequence[str], actions: Sequence[str]
) -> tuple[str, str]:
    """An episode as (prompt, completion) text, laid out as rlft's plain turn format writes it.

    `instructions \\n observation \\nAction:` then ` action \\n observation \\nAction:` per turn, and the final
    observation after the last action (it shows how the episode ended). A reward model trained on these texts
    scores `prompt + completion` of the same layout (whitespace aside, for word-level tokenizers).
    """
    prompt = (instructions + "\n" if instructions else "") + observations[0] + "\nAction:"
    parts = []
    for k, action in enumerate(actions):
        parts.append(" " + action)
        if k + 1 < len(observations):
            parts.append("\n" + observations[k + 1] + ("\nAction:" if k + 1 < len(actions) else ""))
    return prompt, "".join(parts)
