"""Reward models (rlft/rewards/models/ and `rlft rm`): preference data, pairs from a gold signal, training, scoring.

* JSONL preference rows: every malformed row is an error naming `file:line`; the valid forms load in TRL's format.
* The pair builder: budget, seeded sample, ties and identical texts skipped and counted, Bradley-Terry label
  noise (0: labels agree with gold; huge: about half disagree; otherwise the realised rate is the expected one).
* Held-out metrics by hand; a tiny RM trained on synthetic pairs ranks held-out pairs above a stated threshold.
* Scores are padding-invariant (left and right) and survive save -> reload; the model card names the data.
* Ensembles aggregate by hand-computed numbers; `rlft rm` end to end (env pairs, an ensemble; JSONL chat pairs);
  a bad `rm:` section fails before any model loads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft import cli
from rlft.config.schema import ModelConfig, TinyModelConfig
from rlft.errors import DataError
from rlft.rewards.models.preferences import (
    PreferencePair,
    build_preference_pairs,
    load_preferences,
    read_preferences,
    split_by_prompt,
    transcript_text,
)
from rlft.rewards.models.scoring import RewardEnsemble, RewardModelScorer, load_reward_model
from rlft.rewards.models.train import check_pair_lengths, preference_metrics, train_reward_model

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
ACCURACY_THRESHOLD = (
    0.8  # held-out accuracy the synthetic-pairs RM must reach (it reaches 1.0 on CPU, seed 0)
)


# ---------------------------------------------------------------- JSONL preferences

TEXT_ROW = {"prompt": "Reach G.\n", "chosen": "right down", "rejected": "left"}
CHAT_ROW = {
    "prompt": [{"role": "user", "content": "Reach G."}],
    "chosen": [{"role": "assistant", "content": "right"}],
    "rejected": [{"role": "assistant", "content": "left"}],
}


def rows(*items) -> bytes:
    return "".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items).encode("utf-8")


JSONL_CASES = [
    ("invalid-json", rows(TEXT_ROW, '{"chosen": "a", '), ":2:", "invalid JSON"),
    ("not-an-object", rows(TEXT_ROW, TEXT_ROW, ["a", "b"]), ":3:", "expected a JSON object"),
    ("missing-rejected", rows({"prompt": "p", "chosen": "a"}), ":1:", "missing field 'rejected'"),
    ("extra-field", rows(TEXT_ROW, {**TEXT_ROW, "score": 1}), ":2:", "unknown field(s) ['score']"),
    ("wrong-type", rows({"prompt": "p", "chosen": 3, "rejected": "b"}), ":1:", "'chosen' must be a string"),
    (
        "prompt-wrong-type",
        rows({"prompt": 5, "chosen": "a", "rejected": "b"}),
        ":1:",
        "'prompt' must be a string",
    ),
    ("empty-chosen", rows({"prompt": "p", "chosen": "  ", "rejected": "b"}), ":1:", "'chosen' is empty"),
    (
        "same-texts",
        rows(TEXT_ROW, {"prompt": "p", "chosen": "a", "rejected": "a"}),
        ":2:",
        "'chosen' and 'rejected' are the same",
    ),
    ("blank-line", rows(TEXT_ROW, "", TEXT_ROW), ":2:", "line 2 is blank"),
    ("bom", b"\xef\xbb\xbf" + rows(TEXT_ROW), ":1:", "byte-order mark"),
    ("not-utf8", rows(TEXT_ROW) + b'{"chosen": "\xff", "rejected": "b"}\n', ":2:", "not valid UTF-8"),
    ("mixed-formats", rows(TEXT_ROW, CHAT_ROW), ":2:", "row is conversational but line 1 is text"),
    (
        "message-no-role",
        rows({**CHAT_ROW, "chosen": [{"content": "right"}]}),
        ":1:",
        "chosen[0] must be an object with exactly 'role' and 'content'",
    ),
    (
        "message-bad-role",
        rows({**CHAT_ROW, "rejected": [{"role": "robot", "content": "x"}]}),
        ":1:",
        "rejected[0].role is 'robot'",
    ),
    (
        "message-content-type",
        rows({**CHAT_ROW, "chosen": [{"role": "assistant", "content": 1}]}),
        ":1:",
        "chosen[0].content must be a string",
    ),
    ("chat-empty-chosen", rows({**CHAT_ROW, "chosen": []}), ":1:", "'chosen' must be a non-empty list"),
    (
        "chat-blank-content",
        rows({**CHAT_ROW, "chosen": [{"role": "assistant", "content": " "}]}),
        ":1:",
        "'chosen' has no non-empty message content",
    ),
    ("chat-prompt-string", rows({**CHAT_ROW, "prompt": "Reach G."}), ":1:", "'prompt' must be a list"),
    ("chat-same", rows({**CHAT_ROW, "rejected": CHAT_ROW["chosen"]}), ":1:", "are the same"),
]


@pytest.mark.parametrize(
    ("content", "where", "problem"), [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES]
)
def test_malformed_preference_rows_name_file_and_line(
    tmp_path: Path, content: bytes, where: str, problem: str
) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_preferences(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where} "), message
    assert problem in message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match="no rows"):
        read_preferences(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        read_preferences(tmp_path / "absent.jsonl")


def test_valid_files_load_in_trls_format(tmp_path: Path) -> None:
    from trl.data_utils import is_conversational

    text = tmp_path / "text.jsonl"
    text.write_bytes(
        rows(TEXT_ROW, {"chosen": "a b", "rejected": "c"}).replace(b"\n", b"\r\n", 1)
    )  # CRLF is fine
    dataset = load_preferences(text)
    assert dataset.column_names == ["prompt", "chosen", "rejected"] and len(dataset) == 2
    assert dataset[1] == {"prompt": "", "chosen": "a b", "rejected": "c"}  # no prompt: the texts as they are
    assert not is_conversational(dataset[0])
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(rows(CHAT_ROW, CHAT_ROW))
    dataset = load_preferences(chat)
    assert is_conversational(dataset[0]) and dataset[0]["chosen"] == CHAT_ROW["chosen"]
    assert [p.source for p in read_preferences(chat)] == [f"{chat}:1", f"{chat}:2"]


# ---------------------------------------------------------------- pairs from a gold signal


def test_pair_builder_counts_by_hand() -> None:
    # Prompt A: golds 1, 1, 0, 2 (texts a1..a4; a4 repeats a1's text). Pairs: (a1,a2) tie; (a1,a3), (a2,a3),
    # (a2,a4), (a3,a4) candidates; (a1,a4) identical text. Prompt B: one item, no pair. Never across prompts.
    items = [("A", "a1", 1.0), ("A", "a2", 1.0), ("A", "a3", 0.0), ("A", "a1", 2.0), ("B", "b1", 5.0)]
    pairs, stats = build_preference_pairs(items, budget=10, noise=0.0, seed=0)
    assert (stats.items, stats.prompts, stats.candidates, stats.ties, stats.identical, stats.pairs) == (
        5,
        2,
        4,
        1,
        1,
        4,
    )
    # a1 and a2 beat a3; the second a1 (gold 2) beats a2 and a3
    assert sorted((p.chosen, p.rejected) for p in pairs) == [
        ("a1", "a2"),
        ("a1", "a3"),
        ("a1", "a3"),
        ("a2", "a3"),
    ]
    assert sorted((p.gold_chosen, p.gold_rejected) for p in pairs) == [
        (1.0, 0.0),
        (1.0, 0.0),
        (2.0, 0.0),
        (2.0, 1.0),
    ]
    assert all(p.prompt == "A" for p in pairs) and stats.label_noise_rate == 0.0

    few, stats = build_preference_pairs(items, budget=2, noise=0.0, seed=0)
    assert len(few) == 2 and stats.pairs == 2 and stats.candidates == 4
    again, _ = build_preference_pairs(items, budget=2, noise=0.0, seed=0)
    assert [(p.chosen, p.rejected, p.gold_chosen) for p in few] == [
        (p.chosen, p.rejected, p.gold_chosen) for p in again
    ]


def random_items(n_prompts: int, per_prompt: int, seed: int = 0) -> list[tuple[str, str, float]]:
    rng = np.random.default_rng(seed)
    return [
        (f"task {t}", f"completion {t} {i}", float(rng.normal()))
        for t in range(n_prompts)
        for i in range(per_prompt)
    ]


def test_label_noise_zero_agrees_with_gold_and_huge_noise_is_a_coin() -> None:
    items = random_items(200, 6)
    clean, stats = build_preference_pairs(items, budget=2000, noise=0.0, seed=1)
    assert stats.pairs == 2000 and stats.disagree == 0
    assert all(p.gold_chosen > p.gold_rejected for p in clean)
    coin, stats = build_preference_pairs(items, budget=2000, noise=1e6, seed=1)
    # 2000 fair coins: the disagreement rate is 0.5 +- 0.011 (1 sd)
    assert 0.45 < stats.label_noise_rate < 0.55
    assert stats.expected_disagree == pytest.approx(0.5, abs=1e-5)
    assert sum(not p.agrees_with_gold for p in coin) == stats.disagree


def test_label_noise_follows_bradley_terry() -> None:
    # Every pair's gold differs by exactly 1: P(label against gold) = 1 - sigmoid(1 / 0.5) = 0.1192.
    items = [(f"t{t}", f"c{t} {i}", float(i)) for t in range(500) for i in range(2)]
    _, stats = build_preference_pairs(items, budget=500, noise=0.5, seed=3)
    expected = 1 - 1 / (1 + math.exp(-2.0))
    assert stats.expected_disagree == pytest.approx(expected)
    assert abs(stats.label_noise_rate - expected) < 3 * math.sqrt(expected * (1 - expected) / 500)
    other, _ = build_preference_pairs(items, budget=500, noise=0.5, seed=4)
    assert [p.chosen for p in other] != [p.chosen for p in build_preference_pairs(items, 500, 0.5, seed=3)[0]]


def test_split_holds_out_whole_prompts() -> None:
    pairs, _ = build_preference_pairs(random_items(40, 4), budget=200, seed=0)
    train, held = split_by_prompt(pairs, 0.25, seed=0)
    assert len(train) + len(held) == len(pairs) and 0.15 < len(held) / len(pairs) < 0.35
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    one_prompt = [PreferencePair("", f"a{i}", f"b{i}") for i in range(10)]
    train, held = split_by_prompt(one_prompt, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8


def test_transcript_text_lays_out_turns() -> None:
    prompt, completion = transcript_text("Reach G.", ["S . G", ". S G", ". . S"], ["right", "right"])
    assert prompt == "Reach G.\nS . G\nAction:"
    assert completion == " right\n. S G\nAction: right\n. . S"


def test_gold_signal_must_be_a_number() -> None:
    with pytest.raises(DataError, match="not a finite number"):
        build_preference_pairs([("p", "a", float("nan")), ("p", "b", 1.0)], budget=1)


# ---------------------------------------------------------------- metrics by hand


def test_preference_metrics_by_hand() -> None:
    # margins 2, -1, 0: p = 0.8808, 0.2689, 0.5; correct = 1, 0, 1/2 -> accuracy 0.5
    # Brier = (0.1192^2 + 0.7311^2 + 0.5^2) / 3 = 0.26622
    # confidences 0.8808 (bin [0.8, 0.9)), 0.7311 ([0.7, 0.8)), 0.5 ([0.5, 0.6)):
    # ECE = (|1 - 0.8808| + |0 - 0.7311| + |0.5 - 0.5|) / 3 = 0.28342
    m = preference_metrics([2.0, -1.0, 0.0], gold_agrees=[True, False, None])
    assert m["accuracy"] == 0.5
    assert m["brier"] == pytest.approx(0.266219, abs=1e-6)
    assert m["ece"] == pytest.approx(0.283421, abs=1e-6)
    assert m["log_loss"] == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.e) + math.log(2)) / 3)
    assert [r["count"] for r in m["reliability"]] == [1, 0, 1, 1, 0]
    # gold: pair 1 agrees (correct 1), pair 2's label is against gold so the RM's "wrong" is right -> (1 + 1) / 2
    assert m["gold_accuracy"] == 1.0


# ---------------------------------------------------------------- a trained RM


def synthetic_pairs(seed: int = 0) -> list[PreferencePair]:
    """Eight-word texts; gold = the number of 'good' words. Pairs from the builder without label noise."""
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "red", "blue", "cat", "dog"]
    items = []
    for task in range(60):
        for _ in range(4):
            chosen = list(rng.choice(words, size=8))
            items.append((f"task {task % 6} :", " " + " ".join(chosen), float(chosen.count("good"))))
    return build_preference_pairs(items, budget=400, noise=0.0, seed=seed)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    train, held = split_by_prompt(synthetic_pairs(), 0.25, seed=0)
    folder = tmp_path_factory.mktemp("rm")
    data = {"source": "synthetic", "gold": "count of 'good'", "budget": 400, "noise": 0.0}
    result = train_reward_model(
        train,
        held,
        model_cfg=ModelConfig(tiny=TINY),
        output_dir=folder / "trainer",
        seed=0,
        trainer={"num_train_epochs": 3},
        data=data,
        save_to=folder / "rm",
    )
    return result, train, held


def test_rm_trained_on_synthetic_pairs_ranks_held_out_pairs(trained) -> None:
    result, train, held = trained
    assert len(held) > 50 and not {p.prompt for p in train} & {p.prompt for p in held}
    assert result.metrics["accuracy"] >= ACCURACY_THRESHOLD, result.metrics
    assert result.metrics["gold_accuracy"] >= ACCURACY_THRESHOLD
    assert (
        0 <= result.metrics["ece"] <= 1 and result.metrics["brier"] < 0.25
    )  # better than p = 1/2 everywhere


def test_scores_are_padding_invariant_left_and_right(trained) -> None:
    result, _, _ = trained
    texts = [
        "task 0 : good good red",
        "task 1 : bad",
        "task 2 : good blue cat dog red red good bad bad good",
        "task 3 : cat",
        "task 4 : good " * 12,
    ]
    for side in ("right", "left"):
        scorer = RewardModelScorer(result.model, result.tokenizer, batch_size=8, padding_side=side)
        alone = [scorer.score([t])[0] for t in texts]
        batch = scorer.score(texts)
        assert np.max(np.abs(np.subtract(alone, batch))) < 1e-5, side
        assert len(set(np.round(batch, 4))) == len(texts)  # the texts do get different scores

    # The check can fail. Left padding: a forward that lets the pad tokens be attended changes the scores.
    def padding_effect(scorer: RewardModelScorer) -> float:
        return float(np.max(np.abs(np.subtract([scorer.score([t])[0] for t in texts], scorer.score(texts)))))

    leaky = RewardModelScorer(result.model, result.tokenizer, batch_size=8, padding_side="left")
    forward = leaky.model.forward
    leaky.model.forward = lambda input_ids, attention_mask, **kw: forward(
        input_ids=input_ids, attention_mask=torch.ones_like(attention_mask), **kw
    )
    try:
        assert padding_effect(leaky) > 1e-3
    finally:
        del leaky.model.forward
    # Right padding: pooling the last position (a pad token) instead of the last non-pad token changes them.
    text_config = result.model.config.get_text_config()
    pad = text_config.pad_token_id
    text_config.pad_token_id = result.tokenizer.convert_tokens_to_ids(
        "Action"
    )  # in no text: pools position -1
    try:
        assert padding_effect(RewardModelScorer(result.model, result.tokenizer, batch_size=8)) > 1e-3
    finally:
        text_config.pad_token_id = pad


def test_save_reload_same_scores_and_model_card(trained) -> None:
    from tests.test_security import weight_file_problems

    result, train, held = trained
    texts = ["task 5 : good good", "task 0 : bad bad bad", "task 1 : red"]
    reloaded = load_reward_model(result.path)
    assert isinstance(reloaded, RewardModelScorer)
    assert np.allclose(reloaded.score(texts), result.scorer.score(texts), atol=1e-6)
    assert weight_file_problems(result.path) == []
    info = json.loads((result.path / "rm.json").read_text())
    assert info["pairs"] == {"train": len(train), "held_out": len(held)} and info["seed"] == 0
    card = (result.path / "README.md").read_text()
    for expected in (
        "synthetic",
        "count of 'good'",
        f"{len(train)} training, {len(held)} held out",
        f"| accuracy | {result.metrics['accuracy']:.4f} |",
        "embedded tiny qwen2",
        "budget",
    ):
        assert expected in card, expected
    normalized = load_reward_model(result.path, normalize=True)
    stats = info["normalization"]
    assert np.allclose(
        normalized.score(texts), (np.array(reloaded.score(texts)) - stats["mean"]) / stats["std"]
    )


def test_ensemble_aggregates_by_hand(trained) -> None:
    class Fixed:
        def __init__(self, values):
            self.values = values

        def score(self, texts):
            return self.values[: len(texts)]

    members = [Fixed([1.0, 2.0]), Fixed([3.0, 6.0]), Fixed([5.0, 1.0])]
    # per text: (1, 3, 5) mean 3, population std sqrt(8/3) = 1.63299; (2, 6, 1) mean 3, std sqrt(14/3) = 2.16025
    assert RewardEnsemble(members, "mean").score(["x", "y"]) == [3.0, 3.0]
    assert RewardEnsemble(members, "min").score(["x", "y"]) == [1.0, 1.0]
    assert RewardEnsemble(members, "mean_minus_std", k=0.5).score(["x", "y"]) == pytest.approx(
        [3 - 0.5 * 1.632993, 3 - 0.5 * 2.160247], abs=1e-6
    )
    with pytest.raises(ValueError, match="aggregate must be one of"):
        RewardEnsemble(members, "max")

    result, _, _ = trained
    texts = ["task 1 : good", "task 2 : bad dog"]
    twice = load_reward_model([result.path, result.path], aggregate="mean_minus_std", k=2.0)
    assert np.allclose(twice.score(texts), result.scorer.score(texts), atol=1e-6)  # identical members: std 0


def test_pairs_longer_than_max_length_are_refused_not_dropped() -> None:
    from rlft.models.policy import build_word_tokenizer

    tokenizer = build_word_tokenizer(["a b c"])
    pairs = [
        PreferencePair("", "a", "b", source="f.jsonl:1"),
        PreferencePair("", "a b c a b c", "b", source="f.jsonl:2"),
    ]
    check_pair_lengths(pairs, tokenizer, 7, "training")  # 6 words + EOS
    with pytest.raises(
        DataError, match=r"1 training pair\(s\) longer than rm.trainer.max_length = 6.*f.jsonl:2"
    ):
        check_pair_lengths(pairs, tokenizer, 6, "training")


# ---------------------------------------------------------------- `rlft rm`

BASE = """\
name: exp
output_dir: runs
model:
  tiny: {hidden_size: 32, num_heads: 2, num_layers: 1, intermediate_size: 64, corpus_episodes: 10}
env:
  id: rlft/FrozenLakeRandom-v0
  max_turns: 8
tracking:
  wandb: {enabled: false}
"""


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rlft_rm_env_pairs_ensemble_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    from rlft.config.resolved import read_resolved
    from rlft.models.policy import load_policy
    from rlft.runtime.tracking import read_metrics
    from rlft.stages.checks import load_checked_config
    from rlft.stages.common import env_factory

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(BASE, encoding="utf-8")
    overrides = [
        "rm.data={source: env, episodes: 80, episodes_per_task: 4, eval_episodes: 40, budget: 60, "
        "noise: 0.1, epsilon: 0.5}",
        "rm.trainer={num_train_epochs: 2}",
        "rm.ensemble={size: 2, data: bootstrap, aggregate: mean_minus_std, k: 0.5}",
    ]
    code, out, err = run_cli(["rm", "--config", "exp.yaml", *overrides], capsys)
    assert code == 0, err
    assert "reward model: runs/exp/checkpoints/rm" in out
    checkpoints = tmp_path / "runs/exp/checkpoints"
    manifest = json.loads((checkpoints / "rm/ensemble.json").read_text())
    assert manifest["members"] == ["../rm_0", "../rm_1"] and manifest["aggregate"] == "mean_minus_std"
    for member in ("rm_0", "rm_1"):
        info = json.loads((checkpoints / member / "rm.json").read_text())
        assert info["data"]["source"] == "env" and info["data"]["gold"] == "return"
        assert info["data"]["noise"] == 0.1 and info["data"]["budget"] == 60
        assert "rlft/FrozenLakeRandom-v0" in (checkpoints / member / "README.md").read_text()
    assert json.loads((checkpoints / "rm_1/rm.json").read_text())["seed"] == 1
    resolved = tmp_path / "runs/exp/resolved"
    assert sorted(p.name for p in resolved.iterdir()) == ["rm_0.yaml", "rm_1.yaml"]  # one record per member
    _, member_args, _ = read_resolved(resolved / "rm_1.yaml")
    assert (member_args["seed"], member_args["num_train_epochs"]) == (1, 2)
    assert (
        member_args["center_rewards_coefficient"] == 0.01 and member_args["learning_rate"] == 1e-3
    )  # tiny RM
    assert (tmp_path / "runs/exp/preferences/train.jsonl").is_file()
    read_preferences(tmp_path / "runs/exp/preferences/held_out.jsonl")  # the saved pairs read back

    metrics = [m for m in read_metrics(tmp_path / "runs/exp") if m["stage"] == "rm"]
    logged = {k for m in metrics for k in m}
    assert {
        "data/train_pairs",
        "data/label_noise_rate",
        "rm_0/held_out/accuracy",
        "rm_1/held_out/ece",
        "ensemble/held_out/accuracy",
        "ensemble/held_out/brier",
        "rm_0/loss",
    } <= logged

    ensemble = load_reward_model(checkpoints / "rm")
    assert isinstance(ensemble, RewardEnsemble) and ensemble.k == 0.5 and ensemble.scorers[0].scale != 1.0
    prompt, completion = transcript_text("Reach G.", ["S . G", ". S G"], ["right"])
    assert np.isfinite(ensemble.score([prompt + completion])).all()

    # The tiny RM's vocabulary extends the policy's: every policy token keeps its id (an RM can seed a critic).
    config = load_checked_config(tmp_path / "exp.yaml")
    _, policy_tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
    rm_vocab = ensemble.scorers[0].tokenizer.get_vocab()
    assert all(rm_vocab.get(token) == index for token, index in policy_tokenizer.get_vocab().items())


def test_rlft_rm_jsonl_chat_pairs_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(BASE, encoding="utf-8")
    lines = []
    for i in range(24):
        good, bad = ("right", "left") if i % 2 else ("down", "up")
        lines.append(
            {
                "prompt": [{"role": "user", "content": f"Reach G from cell {i}."}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
        )
    (tmp_path / "prefs.jsonl").write_bytes(rows(*lines))
    code, _, err = run_cli(
        [
            "rm",
            "--config",
            "exp.yaml",
            "rm.data={path: prefs.jsonl, eval_fraction: 0.25}",
            "model.chat_template='on'",
            "rm.trainer={num_train_epochs: 2}",
        ],
        capsys,
    )
    assert code == 0, err
    folder = tmp_path / "runs/exp/checkpoints/rm"
    info = json.loads((folder / "rm.json").read_text())
    assert info["conversational"] and info["pairs"] == {"train": 18, "held_out": 6}
    assert "prefs.jsonl" in (folder / "README.md").read_text()
    rm = load_reward_model(folder)
    scores = rm.score_conversations([lines[0]["prompt"] + lines[0]["chosen"]])
    assert len(scores) == 1 and math.isfinite(scores[0])


def constant_gold(episode: dict) -> float:
    """A gold signal under which every pair ties (for the 'no pairs' error)."""
    return 1.0


TRAPS = [
    ("transformers", "AutoModelForSequenceClassification.from_pretrained"),
    ("transformers", "AutoModelForSequenceClassification.from_config"),
    ("transformers", "AutoModelForCausalLM.from_pretrained"),
    ("transformers", "AutoModelForCausalLM.from_config"),
    ("transformers", "PreTrainedModel.from_pretrained"),
    ("rlft.rewards.models.train", "build_reward_model"),
    ("rlft.rewards.models.train", "reward_model_tokenizer"),
    ("rlft.models.policy", "load_tokenizer"),
]

BAD_RM = [
    ("unknown-key", ["rm.dta={}"], ["unknown key 'rm.dta'", "did you mean 'data'"]),
    ("negative-noise", ["rm.data.noise=-1"], ["key 'rm.data.noise' = -1", "greater than or equal to 0"]),
    ("bad-policy", ["rm.data.policy=greedy"], ["key 'rm.data.policy'", "'expert' or 'random'"]),
    (
        "missing-file",
        ["rm.data={path: nope.jsonl}"],
        ["key 'rm.data.path' = 'nope.jsonl': file does not exist"],
    ),
    ("malformed-row", ["rm.data={path: prefs.jsonl}"], ["prefs.jsonl:2: missing field 'rejected'"]),
    (
        "trainer-typo",
        ["rm.trainer={lerning_rate: 1.0e-3}"],
        ["unknown key 'rm.trainer.lerning_rate'", "did you mean 'learning_rate'"],
    ),
    ("trainer-type", ["rm.trainer={num_train_epochs: many}"], ["key 'rm.trainer.num_train_epochs' = 'many'"]),
    (
        "trainer-remote-code",
        ["rm.trainer={trust_remote_code: true}"],
        ["rm.trainer.trust_remote_code", "rm.model"],
    ),
    ("lora", ["rm.model={tiny: {}, lora: {r: 4}}"], ["rm.model.lora", "not supported"]),
    (
        "model-path",
        ["rm.model={name_or_path: ./no/such/model}"],
        ["key 'rm.model.name_or_path' = './no/such/model'"],
    ),
    (
        "gold-entry-point",
        ["rm.data.gold=no_such_module:fn"],
        ["key 'rm.data.gold'", "module 'no_such_module' not found"],
    ),
    ("aggregate", ["rm.ensemble.aggregate=max"], ["key 'rm.ensemble.aggregate' = 'max'"]),
    ("ensemble-size", ["rm.ensemble.size=0"], ["key 'rm.ensemble.size' = 0"]),
    (
        "all-ties",
        ["rm.data={episodes: 8, eval_episodes: 0, gold: 'tests.test_reward_models:constant_gold'}"],
        ["no training pairs", "tie on gold"],
    ),
]


@pytest.mark.parametrize(("overrides", "expect"), [c[1:] for c in BAD_RM], ids=[c[0] for c in BAD_RM])
def test_bad_rm_config_fails_before_any_model_loads(
    tmp_path: Path, monkeypatch, capsys, overrides: list[str], expect: list[str]
) -> None:
    import importlib

    attempts: list[str] = []
    for module_name, dotted in TRAPS:
        owner = importlib.import_module(module_name)
        *parents, name = dotted.split(".")
        for parent in parents:
            owner = getattr(owner, parent)

        def trap(*args, _where=f"{module_name}.{dotted}", **kwargs):
            attempts.append(_where)
            raise AssertionError(f"a model load was attempted: {_where}")

        monkeypatch.setattr(owner, name, trap)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(BASE, encoding="utf-8")
    (tmp_path / "prefs.jsonl").write_bytes(rows(TEXT_ROW, {"prompt": "p", "chosen": "a"}))
    code, out, err = run_cli(["rm", "--config", "exp.yaml", *overrides], capsys)
    assert code == 2, err
    assert attempts == [] and out == ""
    assert err.startswith("rlft: error: ") and "Traceback" not in err
    for part in expect:
        assert part in err, f"{part!r} not in {err}"
    assert not (tmp_path / "runs").exists()  # nothing written either
