"""The env-authoring guide (README.md, "Your own environment"), followed step by step as a new user would.

The env code, the config, the commands, the eval table, the typical mistake and its message are taken from the
README's own fenced blocks (each after an HTML marker `<!-- guide:NAME -->`), written into a temporary folder
and run through `rlft.cli.main` in the order the guide gives them, so a guide whose code or commands stop
working fails here. `export PYTHONPATH=$PWD` is the folder put on `sys.path`, as the shell would.

The guide's numbers (300 demos, 10 SFT epochs, 50 GRPO steps, 100 eval episodes) are for a user's first run; the
end-to-end test shrinks them (`SHRINK`: the model, steps and episodes, nothing else) to stay fast, while the fast
test plays `rlft demos` and `rlft validate` on the guide's files exactly as written.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from rlft import cli

README = Path(__file__).resolve().parents[1] / "README.md"
MODULE = "corridor"  # the guide saves the env as corridor.py and names it corridor:Corridor
ENV_FILE, CONFIG_FILE = f"{MODULE}.py", "corridor.yaml"

# What the end-to-end test changes in the guide's config to finish in seconds: sizes and counts only.
SHRINK = {
    "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
    "rollout": {"num_envs": 8},
    "sft": {"trainer": {"max_steps": 3}},
    "rl": {"trainer": {"max_steps": 2, "num_generations": 4, "per_device_train_batch_size": 8}},
    "eval": {"episodes": 8},
}


def guide_block(marker: str) -> str:
    """The text of the one fenced block that follows `<!-- guide:<marker> -->` in the README."""
    pattern = rf"<!-- guide:{re.escape(marker)} -->\n```[a-z]*\n(.*?)^```"
    blocks = re.findall(pattern, README.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, (
        f"README.md: expected one block marked <!-- guide:{marker} -->, found {len(blocks)}"
    )
    return blocks[0]


def guide_commands() -> list[list[str]]:
    """The guide's commands, one argv per line, comments dropped."""
    return [shlex.split(line, comments=True) for line in guide_block("commands").splitlines() if line.strip()]


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict):
            deep_update(base.setdefault(key, {}), value)
        else:
            base[key] = value
    return base


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as the working directory, on the import path (the guide's `export PYTHONPATH=$PWD`)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)  # each test imports its own corridor.py
    yield tmp_path
    sys.modules.pop(MODULE, None)


def write_guide_files(folder: Path, env_code: str | None = None, shrink: bool = False) -> dict:
    """The guide's corridor.py and corridor.yaml in `folder`; returns the config as written."""
    (folder / ENV_FILE).write_text(env_code or guide_block("env"), encoding="utf-8")
    config = yaml.safe_load(guide_block("config"))
    if shrink:
        deep_update(config, SHRINK)
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    else:
        (folder / CONFIG_FILE).write_text(guide_block("config"), encoding="utf-8")
    return config


def run_guide_command(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    assert argv[0] == "rlft", f"the guide's commands are rlft commands, not {argv}"
    code = cli.main(argv[1:])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_export_line(argv: list[str]) -> None:
    # The one shell step: the folder with corridor.py on the import path (the fixture does it).
    assert argv == ["export", "PYTHONPATH=$PWD"], argv


def check_demos(folder: Path, argv: list[str], config: dict) -> None:
    """demos.jsonl: the expert's episodes (as many as --episodes says), in the env's own text and actions."""
    path = folder / argv[argv.index("--out") + 1]
    assert config["sft"]["demos"] == {"source": "jsonl", "path": path.name}  # the file SFT trains on
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == int(argv[argv.index("--episodes") + 1])
    assert {row["instructions"] for row in rows} == {config["env"]["adapter"]["instructions"]}
    actions = {turn["action"] for row in rows for turn in row["turns"]}
    assert actions == set(config["env"]["adapter"]["action_names"])
    assert sum(row["success"] for row in rows) >= 0.8 * len(rows)  # the hand-written expert, epsilon 0.1
    assert re.fullmatch(r"[.AG]+", rows[0]["turns"][0]["observation"].splitlines()[-1])  # the ANSI picture


def test_guide_demos_and_validate_as_written(user_folder: Path, capsys: pytest.CaptureFixture) -> None:
    """The fast part: the guide's files unchanged, its first commands exit 0, validate writes nothing."""
    config = write_guide_files(user_folder)
    export, demos, validate = guide_commands()[:3]
    check_export_line(export)
    assert demos[1] == "demos" and validate[1] == "validate"
    code, out, err = run_guide_command(demos, capsys)
    assert code == 0, err
    check_demos(user_folder, demos, config)
    code, out, err = run_guide_command(validate, capsys)
    assert code == 0, err
    assert f"{CONFIG_FILE}: ok (corridor, env {MODULE}:Corridor" in out
    assert not (user_folder / "runs").exists()


def test_guide_from_nothing_to_an_eval_table(user_folder: Path, capsys: pytest.CaptureFixture) -> None:
    """Every command of the guide in order, on its env and (shrunk) config, to eval.json and the printed table."""
    config = write_guide_files(user_folder, shrink=True)
    export, *commands = guide_commands()
    check_export_line(export)
    assert [argv[1] for argv in commands] == ["demos", "validate", "sft", "train", "eval"]
    run_dir = user_folder / "runs" / "corridor"
    outputs = {}
    for argv in commands:
        code, outputs[argv[1]], err = run_guide_command(argv, capsys)
        assert code == 0, f"{shlex.join(argv)} exited {code}:\n{err}"
    check_demos(user_folder, commands[0], config)
    assert (run_dir / "checkpoints" / "sft" / "config.json").is_file()
    assert (run_dir / "checkpoints" / "rl" / "config.json").is_file()

    results = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    table = guide_block("table").splitlines()
    shown_policies = [row.split("|")[1].strip() for row in table[2:]]
    assert list(results["policies"]) == shown_policies == ["untrained", "sft", "rl", "expert"]
    assert results["policies"]["expert"]["success"] == 1.0  # the hand-written expert reaches every goal
    assert all(p["episodes"] == SHRINK["eval"]["episodes"] for p in results["policies"].values())
    printed = outputs["eval"].splitlines()
    header = printed.index(table[0])  # the guide's header and rows, in the guide's order
    assert printed[header + 1] == table[1]
    assert [row.split("|")[1].strip() for row in printed[header + 2 : header + 6]] == shown_policies
    assert printed[header + 5].startswith("| expert | 1.000 [")


def test_guide_typical_mistake_gives_the_message_it_shows(
    user_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    """`reset` returning only the observation, put into the guide's env in place of its own return line: the
    guide's `rlft demos` and `rlft validate` each exit 2 with the very line the guide prints, and write nothing."""
    mistake = guide_block("mistake").rstrip("\n")
    env_lines = guide_block("env").splitlines()
    start = next(i for i, line in enumerate(env_lines) if line.strip().startswith("def reset("))
    reset_return = next(i for i in range(start, len(env_lines)) if env_lines[i].strip().startswith("return "))
    assert env_lines[reset_return] != mistake
    env_lines[reset_return] = mistake
    write_guide_files(user_folder, env_code="\n".join(env_lines) + "\n")
    demos, validate = guide_commands()[1:3]
    for argv in (demos, validate):
        code, out, err = run_guide_command(argv, capsys)
        assert code == 2, err
        assert err.strip() == guide_block("mistake-error").strip()
        assert sorted(p.name for p in user_folder.iterdir()) == sorted([ENV_FILE, CONFIG_FILE])
