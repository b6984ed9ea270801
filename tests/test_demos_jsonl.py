"""Tests of JSONL demonstrations (rlft/rollout/demos.py): every malformed row fails naming `file:line` and the problem,
no row is dropped silently, and valid rows (`turns` and `messages` shapes) become token-exact Episodes whose
mask is 1 exactly on action tokens and the end-of-action token. Blank lines and a UTF-8 BOM are errors too.
Demonstrations recorded by `rlft demos` read back as the expert source's token-exact Episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlft import cli
from rlft.config.schema import load_config
from rlft.errors import DataError
from rlft.models.policy import build_word_tokenizer, env_corpus
from rlft.rollout.demos import expert_demos, jsonl_demos, read_jsonl_demos, sft_rows
from rlft.rollout.turn_format import PlainFormat
from rlft.stages.common import env_factory

GOOD_ROW = json.dumps({"instructions": "Go to G.", "turns": [{"observation": "cell 0", "action": "right"}]})


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- malformed rows

# Each bad row is written on line 3, after two good rows.
BAD_ROWS: list[tuple[str, str, str]] = [
    ("truncated", '{"turns": [{"observation": "cell 0", "action": "ri', "invalid JSON"),
    ("two-objects-one-line", GOOD_ROW + " " + GOOD_ROW, "invalid JSON"),
    ("list-row", "[1, 2]", "expected a JSON object, got list"),
    ("string-row", '"cell 0 right"', "expected a JSON object, got str"),
    ("no-turns-or-messages", '{"steps": []}', "expected a 'turns' or 'messages' field, got keys ['steps']"),
    ("both-shapes", '{"turns": [{"observation": "o", "action": "a"}], "messages": []}', "not both"),
    ("turns-not-list", '{"turns": "right"}', "'turns' must be a non-empty list"),
    ("turns-empty", '{"turns": []}', "'turns' must be a non-empty list"),
    ("turn-not-object", '{"turns": ["right"]}', "turns[0] must be an object"),
    (
        "turn-missing-action",
        '{"turns": [{"observation": "o", "action": "a"}, {"observation": "p"}]}',
        "turns[1] is missing 'action'",
    ),
    ("turn-missing-observation", '{"turns": [{"action": "a"}]}', "turns[0] is missing 'observation'"),
    (
        "action-wrong-type",
        '{"turns": [{"observation": "o", "action": 2}]}',
        "turns[0].action must be a string, got int",
    ),
    (
        "observation-wrong-type",
        '{"turns": [{"observation": null, "action": "a"}]}',
        "turns[0].observation must be a string, got NoneType",
    ),
    ("empty-action", '{"turns": [{"observation": "o", "action": "  "}]}', "turns[0].action is empty"),
    (
        "instructions-wrong-type",
        '{"instructions": 3, "turns": [{"observation": "o", "action": "a"}]}',
        "'instructions' must be a string",
    ),
    ("messages-not-list", '{"messages": {"role": "user"}}', "'messages' must be a non-empty list"),
    ("message-missing-role", '{"messages": [{"content": "o"}]}', "messages[0] must be an object with 'role'"),
    (
        "message-content-wrong-type",
        '{"messages": [{"role": "user", "content": ["o"]}]}',
        "messages[0].content must be a string, got list",
    ),
    (
        "roles-not-alternating",
        '{"messages": [{"role": "user", "content": "o"}, {"role": "user", "content": "p"}]}',
        "messages[1].role is 'user', expected 'assistant'",
    ),
    (
        "starts-with-assistant",
        '{"messages": [{"role": "assistant", "content": "a"}]}',
        "messages[0].role is 'assistant', expected 'user'",
    ),
    (
        "system-not-first",
        '{"messages": [{"role": "user", "content": "o"}, {"role": "system", "content": "s"}]}',
        "messages[1].role is 'system', expected 'assistant'",
    ),
    ("unknown-role", '{"messages": [{"role": "tool", "content": "o"}]}', "messages[0].role is 'tool'"),
    (
        "ends-with-user",
        '{"messages": [{"role": "user", "content": "o"}, {"role": "assistant", "content": "a"},'
        ' {"role": "user", "content": "p"}]}',
        "must end with an assistant turn",
    ),
    (
        "empty-assistant",
        '{"messages": [{"role": "user", "content": "o"}, {"role": "assistant", "content": ""}]}',
        "messages[1].content is empty",
    ),
    # What a recording (`rlft demos`) adds to a `turns` row is checked as strictly.
    (
        "reward-wrong-type",
        '{"turns": [{"observation": "o", "action": "a", "reward": "1"}]}',
        "turns[0].reward must be a number, got str",
    ),
    (
        "reward-in-some-turns",
        '{"turns": [{"observation": "o", "action": "a", "reward": 0}, {"observation": "p", "action": "b"}]}',
        "turns[1]: give 'reward' in every turn or none",
    ),
    (
        "seed-wrong-type",
        '{"seed": "3", "turns": [{"observation": "o", "action": "a"}]}',
        "'seed' must be int",
    ),
    (
        "seed-bool",
        '{"seed": true, "turns": [{"observation": "o", "action": "a"}]}',
        "'seed' must be int, got bool",
    ),
    (
        "success-wrong-type",
        '{"success": 1, "turns": [{"observation": "o", "action": "a"}]}',
        "'success' must be bool",
    ),
]


@pytest.mark.parametrize(("bad_row", "problem"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_malformed_row_names_file_line_and_problem(bad_row: str, problem: str, tmp_path: Path) -> None:
    path = write(tmp_path, [GOOD_ROW, GOOD_ROW, bad_row, GOOD_ROW])
    with pytest.raises(DataError) as info:
        read_jsonl_demos(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert problem in str(info.value)
    assert info.value.exit_code == 2


def test_byte_order_mark_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_ROW.encode() + b"\n")
    with pytest.raises(DataError, match=rf"^{path}:1: file starts with a UTF-8 byte-order mark"):
        read_jsonl_demos(path)


@pytest.mark.parametrize(
    ("lines", "number"),
    [
        ([GOOD_ROW, "", GOOD_ROW], 2),
        ([GOOD_ROW, "  \t", GOOD_ROW], 2),
        ([GOOD_ROW, "\r", GOOD_ROW], 2),
        ([GOOD_ROW, GOOD_ROW, ""], 3),
        (["", GOOD_ROW], 1),
    ],
    ids=["empty", "whitespace", "crlf", "trailing", "leading"],
)
def test_blank_line_is_an_error(lines: list[str], number: int, tmp_path: Path) -> None:
    # write() ends the file with one newline, which ends the last row and is not a blank line.
    path = write(tmp_path, lines)
    with pytest.raises(
        DataError, match=rf"^{path}:{number}: line {number} is blank; expected one JSON object"
    ):
        read_jsonl_demos(path)


def test_final_newline_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_text(GOOD_ROW + "\n" + GOOD_ROW, encoding="utf-8")
    assert [row[3] for row in read_jsonl_demos(path)] == [1, 2]


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_bytes(
        (GOOD_ROW + "\n" + GOOD_ROW + "\n").encode()
        + b'{"turns": [{"observation": "\xff", "action": "a"}]}\n'
    )
    with pytest.raises(DataError, match=rf"^{path}:3: not valid UTF-8"):
        read_jsonl_demos(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "no rows (the file is empty)"), ("\n", ":1: line 1 is blank"), ("\n\n  \n", ":1: line 1 is blank")],
    ids=["empty", "one-newline", "blank-lines-only"],
)
def test_no_rows_is_an_error(content: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_jsonl_demos(path)
    assert problem in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file does not exist"):
        read_jsonl_demos(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- valid files

TURNS_ROWS = [
    {
        "instructions": "Reach G.",
        "turns": [
            {"observation": "cell 0", "action": "right"},
            {"observation": "cell 1", "action": "down"},
            {"observation": "cell 5", "action": "down"},
        ],
    },
    {"turns": [{"observation": "cell 14", "action": "right"}]},
]
MESSAGES_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Reach G."},
            {"role": "user", "content": "cell 0"},
            {"role": "assistant", "content": "down"},
            {"role": "user", "content": "cell 4"},
            {"role": "assistant", "content": "right"},
        ]
    },
    {"messages": [{"role": "user", "content": "cell 2"}, {"role": "assistant", "content": "left"}]},
]


@pytest.fixture
def demos_file(tmp_path: Path) -> Path:
    # A CRLF line ending is read as the row's trailing whitespace.
    lines = [
        json.dumps(TURNS_ROWS[0]),
        json.dumps(TURNS_ROWS[1]) + "\r",
        json.dumps(MESSAGES_ROWS[0]) + "\r",
        json.dumps(MESSAGES_ROWS[1]),
    ]
    return write(tmp_path, lines)


def test_valid_rows_parse_into_episodes(demos_file: Path) -> None:
    rows = read_jsonl_demos(demos_file)
    assert rows == [
        ("Reach G.", ["cell 0", "cell 1", "cell 5"], ["right", "down", "down"], 1),
        ("", ["cell 14"], ["right"], 2),
        ("Reach G.", ["cell 0", "cell 4"], ["down", "right"], 3),
        ("", ["cell 2"], ["left"], 4),
    ]


def test_line_separators_inside_strings_do_not_split_rows(tmp_path: Path) -> None:
    # str.splitlines() would cut this row at U+2028 and report a truncated line.
    row = {"turns": [{"observation": "a\u2028b\x1cc", "action": "up"}]}
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n" + GOOD_ROW + "\n", encoding="utf-8")
    rows = read_jsonl_demos(path)
    assert [r[1] for r in rows] == [["a\u2028b\x1cc"], ["cell 0"]]


def test_jsonl_demos_tokenize_with_mask_on_actions(demos_file: Path) -> None:
    texts = ["Reach G.", "left down right up", *(f"cell {i}" for i in range(16))]
    tokenizer = build_word_tokenizer(texts)
    fmt = PlainFormat(tokenizer)
    episodes = jsonl_demos(demos_file, fmt)
    assert [e.actions for e in episodes] == [
        ["right", "down", "down"],
        ["right"],
        ["down", "right"],
        ["left"],
    ]

    # Hand-derived layout of the first episode, word by word (the word tokenizer drops whitespace):
    #   prompt:     <s> Reach G . cell 0 Action :
    #   completion: right </s> | cell 1 Action : | down </s> | cell 5 Action : | down </s>
    #   mask:         1    1   |  0   0    0   0 |  1    1   |  0   0    0   0 |  1    1
    first = episodes[0]
    assert tokenizer.convert_ids_to_tokens(first.prompt_ids) == [
        "<s>",
        "Reach",
        "G",
        ".",
        "cell",
        "0",
        "Action",
        ":",
    ]
    assert tokenizer.convert_ids_to_tokens(first.completion_ids) == [
        "right",
        "</s>",
        "cell",
        "1",
        "Action",
        ":",
        "down",
        "</s>",
        "cell",
        "5",
        "Action",
        ":",
        "down",
        "</s>",
    ]
    assert first.mask == [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    assert first.action_ends == [1, 7, 13]
    assert tokenizer.unk_token_id not in first.completion_ids

    # Every episode: mask == 1 exactly on each action's tokens plus its end-of-action token.
    for episode in episodes:
        sampled = [t for t, m in zip(episode.completion_ids, episode.mask) if m == 1]
        assert sampled == [t for action in episode.actions for t in fmt.action_ids(action)]
        assert all(episode.completion_ids[end] == fmt.end_of_action for end in episode.action_ends)
        assert sum(episode.mask) == sum(len(fmt.action_ids(a)) for a in episode.actions)

    rows = sft_rows(episodes)
    assert rows[1]["input_ids"] == episodes[1].prompt_ids + episodes[1].completion_ids
    assert rows[1]["assistant_masks"] == [0] * len(episodes[1].prompt_ids) + [1, 1]


# ---------------------------------------------------------------- recorded demonstrations round-trip


def test_recorded_demos_read_back_as_the_expert_sources_episodes(tmp_path: Path) -> None:
    """`rlft demos` -> JSONL -> `sft.demos: {source: jsonl}` gives token for token the Episodes that
    `sft.demos: {source: expert}` makes with the same settings: prompt, completion, mask, actions, observations,
    per-turn rewards, seed, success and task id."""
    raw = {
        "name": "record",
        "output_dir": str(tmp_path / "runs"),
        "model": {"tiny": {}},
        "env": {"id": "rlft/FrozenLakeRandom-v0", "max_turns": 12, "train_seeds": {"start": 40}},
        "tracking": {"wandb": {"enabled": False}},
    }
    config_path = tmp_path / "record.yaml"
    config_path.write_text(json.dumps(raw), encoding="utf-8")
    out = tmp_path / "demos.jsonl"
    argv = ["demos", "--config", str(config_path), "--out", str(out), "--episodes", "12", "--epsilon", "0.3"]
    assert cli.main([*argv, "--seed", "5"]) == 0

    config = load_config(raw=raw)
    tokenizer = build_word_tokenizer(env_corpus(env_factory(config), episodes=20, max_turns=12, seed=0))
    fmt = PlainFormat(tokenizer)
    expected, _ = expert_demos(env_factory(config), fmt, 12, epsilon=0.3, seed=5, seed_start=40, max_turns=12)
    recorded = jsonl_demos(out, fmt)
    assert recorded == expected
    assert [e.seed for e in recorded] == list(range(40, 52))
    assert any(not e.success for e in recorded) and any(e.success for e in recorded)  # the noise shows
    assert len({e.task_id for e in recorded}) > 1  # random maps: each row keeps its own layout
    assert sft_rows(recorded) == sft_rows(expected)
