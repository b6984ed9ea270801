"""A user's own env (tests/user_grid_env.py: Discrete(4) actions, a hand-written `expert_action()`, no transition
table) gets its expert from the user's side: a `module:function` in `env.expert`, a method named in
`env.adapter.expert_method`, or `make_expert` on the user's env reached through the adapter; value iteration stays
for envs with a transition table. Without an expert, a config that needs one fails with exit 2 before anything
runs, naming the options; `rlft demos` records the expert's episodes as the JSONL `sft.demos` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.experts import (
    ExpertActionError,
    FunctionExpert,
    InnerEnvExpert,
    NoExpertError,
    TabularExpert,
    expert_for,
    play_expert_episode,
)
from rlft import cli
from rlft.config.schema import EnvConfig, load_config
from rlft.errors import ConfigError
from rlft.rollout.env_factory import make_env
from rlft.rollout.experts import check_expert
from rlft.stages.checks import check_config
from tests.user_grid_env import ACTION_NAMES

ENV = "tests.user_grid_env:GridEnv"
ADAPTER = {"action_names": ACTION_NAMES, "renderer": "tests.user_grid_env:render", "instructions": "Reach G."}


def env_section(env_id: str = ENV, expert: str | None = None, **adapter) -> dict:
    section = {"id": env_id, "adapter": {**ADAPTER, **adapter}, "max_turns": 8}
    if expert is not None:
        section["expert"] = expert
    return section


def text_env(**section):
    return make_env(EnvConfig.model_validate(env_section(**section)))


def raw_config(tmp_path: Path, env: dict, **sections) -> dict:
    return {
        "name": "user-env",
        "output_dir": str(tmp_path / "runs"),
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
        "env": env,
        "tracking": {"wandb": {"enabled": False}},
        **sections,
    }


def write_config(tmp_path: Path, env: dict, **sections) -> Path:
    path = tmp_path / "user_env.yaml"
    path.write_text(json.dumps(raw_config(tmp_path, env, **sections)), encoding="utf-8")  # JSON is YAML
    return path


# ---------------------------------------------------------------- the three user-side experts


@pytest.mark.parametrize(
    "section",
    [
        {"adapter": {"expert_method": "expert_action"}},
        {"expert": "tests.user_grid_env:expert"},
        {"expert": "tests.user_grid_env:expert_by_name"},
        {"env_id": "tests.user_grid_env:MakeExpertGridEnv"},
    ],
    ids=["expert_method", "function-returns-id", "function-returns-name", "make_expert-on-user-env"],
)
def test_user_expert_solves_every_layout(section: dict) -> None:
    env = text_env(
        env_id=section.get("env_id", ENV), expert=section.get("expert"), **section.get("adapter", {})
    )
    expert = expert_for(env)
    kind = InnerEnvExpert if "env_id" in section else FunctionExpert
    assert isinstance(expert, kind)
    for seed in range(8):  # layouts 0..7: every goal cell
        played = play_expert_episode(env, expert, seed=seed, max_turns=8)
        assert played["success"] and played["terminated"]
        assert set(played["actions"]) <= set(ACTION_NAMES)  # canonical names, whatever the expert returned
        goal_row, goal_col = divmod(1 + seed, 3)
        assert played["turns"] == goal_row + goal_col  # the shortest path


def test_value_iteration_stays_for_a_transition_table() -> None:
    env = make_env(EnvConfig(id="FrozenLake-v1", kwargs={"is_slippery": False}))
    assert isinstance(expert_for(env), TabularExpert)
    assert play_expert_episode(env, expert_for(env), seed=0, max_turns=20)["success"]


def test_function_expert_noise_is_reproducible_and_its_own() -> None:
    env = text_env(expert_method="expert_action")

    def actions(seed: int) -> list[str]:
        expert = expert_for(env, epsilon=1.0, seed=seed)
        env.reset(seed=0)
        return [expert.act(env) for _ in range(30)]

    assert actions(1) == actions(1) != actions(2)
    assert set(actions(1)) == set(
        ACTION_NAMES
    )  # epsilon 1: uniformly random names, not the expert's two moves
    with pytest.raises(ValueError, match="epsilon"):
        expert_for(env, epsilon=1.5)


def test_expert_that_names_no_action_is_named_with_its_file_and_line() -> None:
    env = text_env(expert="tests.user_grid_env:bad_expert")
    env.reset(seed=0)
    with pytest.raises(ExpertActionError) as caught:
        expert_for(env).act(env)
    message = str(caught.value)
    assert "tests.user_grid_env.bad_expert (" in message and "user_grid_env.py:" in message
    assert "returned 7 (int)" in message and "[0, 4)" in message and "'right'" in message
    with pytest.raises(ConfigError, match="key 'env.expert': expert tests.user_grid_env.bad_expert"):
        check_expert(EnvConfig.model_validate(env_section(expert="tests.user_grid_env:bad_expert")), "x", "y")


def test_no_expert_names_every_option() -> None:
    env = text_env(env_id="tests.user_grid_env:NoExpertGridEnv")
    with pytest.raises(NoExpertError, match="No expert") as caught:
        expert_for(env)
    assert "expert_method" in str(caught.value) and "make_expert" in str(caught.value)


# ---------------------------------------------------------------- config errors, before anything runs


def test_sft_on_expert_demos_without_an_expert_fails_validate_with_the_options(tmp_path, capsys) -> None:
    env = env_section(env_id="tests.user_grid_env:NoExpertGridEnv")
    path = write_config(tmp_path, env, sft={"demos": {"source": "expert"}})
    assert cli.main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "key 'sft.demos.source' = 'expert' needs the env's expert" in err
    for option in (
        "env.expert: 'module:function'",
        "env.adapter.expert_method",
        "make_expert",
        "source: jsonl",
    ):
        assert option in err
    assert not (tmp_path / "runs").exists()
    # `rlft sft` runs the same check before anything is written
    assert cli.main(["sft", "--config", str(path)]) == 2
    assert not (tmp_path / "runs").exists()


def test_default_expert_demos_are_checked_when_a_command_runs_sft(tmp_path, capsys) -> None:
    # sft.demos unset (its default source is the expert): validate and RL-only commands need no expert ...
    path = write_config(tmp_path, env_section(env_id="tests.user_grid_env:NoExpertGridEnv"))
    assert cli.main(["validate", "--config", str(path)]) == 0
    capsys.readouterr()
    # ... and a command that runs SFT fails before it writes anything, naming the options.
    for command in ("sft", "pipeline"):
        assert cli.main([command, "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert "SFT (sft.demos unset: source expert) needs the env's expert" in err
        assert "env.adapter.expert_method" in err and "source: jsonl" in err
        assert not (tmp_path / "runs").exists()


def test_expert_method_typo_names_the_closest_method(tmp_path) -> None:
    env = env_section(expert_method="expert_actoin")
    with pytest.raises(ConfigError) as caught:
        check_config(load_config(raw=raw_config(tmp_path, env)))
    message = str(caught.value)
    assert "key 'env.adapter'" in message and "GridEnv has no method 'expert_actoin'" in message
    assert "did you mean 'expert_action'?" in message


def test_expert_key_on_a_text_env_is_refused(tmp_path) -> None:
    raw = raw_config(tmp_path, {"id": "tests.sweep_env:CoinEnv", "expert": "tests.user_grid_env:expert"})
    with pytest.raises(ConfigError, match="key 'env.expert'.*already speaks text.*make_expert"):
        check_config(load_config(raw=raw))


def test_expert_entry_point_typo_names_the_closest_function(tmp_path) -> None:
    env = env_section(expert="tests.user_grid_env:expertt")
    with pytest.raises(ConfigError, match="key 'env.expert'.*did you mean 'expert'"):
        check_config(load_config(raw=raw_config(tmp_path, env)))


# ---------------------------------------------------------------- rlft demos


def test_rlft_demos_records_the_expert(tmp_path, capsys) -> None:
    config = write_config(tmp_path, env_section(expert_method="expert_action"))
    out = tmp_path / "demos.jsonl"
    args = [
        "demos",
        "--config",
        str(config),
        "--out",
        str(out),
        "--episodes",
        "5",
        "--epsilon",
        "0",
        "--seed-start",
        "3",
    ]
    assert cli.main(args) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["seed"] for row in rows] == [3, 4, 5, 6, 7]
    assert [row["task_id"] for row in rows] == [f"layout{seed}" for seed in range(3, 8)]
    assert all(row["success"] and row["instructions"] == "Reach G." for row in rows)
    first = rows[0]["turns"][0]
    assert first["observation"] == "A..\n.G.\n..." and first["action"] == "down"  # the env's own renderer
    assert "5 demonstrations by the expert (epsilon 0.0), success 1.000" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.partial"))
    assert not (tmp_path / "runs").exists()  # a recording writes no run folder


def test_rlft_demos_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys) -> None:
    no_expert = write_config(tmp_path, env_section(env_id="tests.user_grid_env:NoExpertGridEnv"))
    out = tmp_path / "demos.jsonl"
    assert cli.main(["demos", "--config", str(no_expert), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "`rlft demos` (without --policy) needs the env's expert" in err and "--policy CHECKPOINT" in err
    assert not out.exists()

    config = write_config(tmp_path, env_section(expert_method="expert_action"))
    for extra, expected in (
        (["--epsilon", "1.5"], "--epsilon 1.5: expected a probability in [0, 1]"),
        (["--episodes", "0"], "--episodes 0: expected at least 1"),
        (["--policy", str(tmp_path), "--epsilon", "0.1"], "--epsilon is the expert's noise"),
        (["--policy", str(tmp_path)], "not a saved checkpoint (no config.json)"),
        (["--greedy"], "--greedy is for --policy"),
    ):
        assert cli.main(["demos", "--config", str(config), "--out", str(out), *extra]) == 2
        assert expected in capsys.readouterr().err
        assert not out.exists()
    out.write_text("keep me\n", encoding="utf-8")
    assert cli.main(["demos", "--config", str(config), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err and out.read_text(encoding="utf-8") == "keep me\n"


def test_rlft_demos_records_a_saved_policy(tmp_path, capsys) -> None:
    from rlft.models.policy import load_policy, save_policy
    from rlft.rollout.demos import jsonl_demos, read_demo_records
    from rlft.rollout.turn_format import PlainFormat
    from rlft.stages.common import env_factory

    # A policy for an env with no expert: recording from a policy needs none.
    env = env_section(env_id="tests.user_grid_env:NoExpertGridEnv")
    config_path = write_config(tmp_path, env, rl={"init_from": "base"})
    config = load_config(config_path)
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=8)
    checkpoint = save_policy(model, tokenizer, tmp_path / "policy")
    out = tmp_path / "policy_demos.jsonl"
    argv = ["demos", "--config", str(config_path), "--out", str(out), "--policy", str(checkpoint)]
    assert cli.main([*argv, "--episodes", "3", "--greedy", "--seed-start", "5"]) == 0
    assert "by the policy" in capsys.readouterr().out

    records = read_demo_records(out)
    assert [r.seed for r in records] == [5, 6, 7] and all(r.instructions == "Reach G." for r in records)
    assert [r.task_id for r in records] == ["layout5", "layout6", "layout7"]
    assert (
        records[0].observations[0] == "A..\n...\nG.."
    )  # layout 5: the goal is cell 6, as the renderer draws
    episodes = jsonl_demos(out, PlainFormat(tokenizer))  # the file is what sft.demos: {source: jsonl} reads
    assert [len(e.actions) for e in episodes] == [len(r.actions) for r in records]
    assert all(len(r.rewards) == len(r.actions) >= 1 for r in records)
