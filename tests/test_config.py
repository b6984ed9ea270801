"""Tests of rlft/config/ and rlft/stages/checks.py: every YAML in configs/ validates, bad configs fail with a
message naming the key, `key.sub=value` overrides, YAML file errors, trainer pass-through to TRL with rlft's
defaults (rlft/config/defaults.py), and the env section.

The bad-config table runs in-process (`load_checked_config`); tests/test_cli_errors.py runs a few through the CLI.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import gymnasium
import pytest
import trl

from rlft.config.schema import apply_overrides, load_config, parse_overrides, read_yaml, save_config
from rlft.errors import ConfigError, RlftError
from rlft.rollout.env_factory import make_env
from rlft.stages.checks import load_checked_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# configs/accelerate/ holds `accelerate launch --config_file` files, configs/grids/ `rlft launch --grid` files
# (tests/test_launch.py checks those), configs/sweeps/ `rlft sweep` files (tests/test_sweep.py checks those),
# not rlft experiments.
NOT_EXPERIMENTS = {"accelerate", "grids", "sweeps"}
EXPERIMENT_CONFIGS = sorted(
    p for p in CONFIGS.rglob("*.y*ml") if not NOT_EXPERIMENTS & set(p.relative_to(CONFIGS).parts[:-1])
)

# A small valid experiment; each bad case below changes it with overrides.
BASE: dict[str, Any] = {
    "name": "t",
    "model": {"tiny": {"hidden_size": 32, "num_heads": 2, "num_layers": 1, "intermediate_size": 64}},
    "env": {"id": "rlft/FrozenLake-v0", "max_turns": 8},
}
FROZEN_LAKE_V1 = ["env.id=FrozenLake-v1", "env.kwargs={map_name: 4x4, is_slippery: false}"]


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


# ---------------------------------------------------------------- every config in configs/


def test_configs_folder_has_the_experiments() -> None:
    names = {p.name for p in EXPERIMENT_CONFIGS}
    assert {
        "quickstart.yaml",
        "frozen_lake_4x4_slippery_grpo.yaml",
        "taxi_grpo.yaml",
        "cliff_walking_grpo.yaml",
        "custom_env_example.yaml",
    } <= names


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # relative paths in a config (demos, checkpoints) are relative to the repo root
    config = load_checked_config(path)
    assert config.name
    # torchtune-style header: what it is, hardware, and the exact command, which names this very file.
    header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert header.startswith("#"), "a config starts with a comment saying what it is"
    assert "Hardware:" in header
    assert f"--config configs/{path.relative_to(CONFIGS).as_posix()}" in header


# ---------------------------------------------------------------- bad configs: one message per mistake

# (overrides applied to BASE, substrings the error must contain). `{tmp}` is a fresh empty folder.
BAD_CONFIGS: list[tuple[str, list[str], list[str]]] = [
    # unknown keys, with the closest valid one
    ("unknown-section", ["rolout.num_envs=4"], ["unknown key 'rolout'", "did you mean 'rollout'"]),
    ("unknown-key", ["rollout.num_env=4"], ["unknown key 'rollout.num_env'", "did you mean 'num_envs'"]),
    ("unknown-deep-override", ["rollout.sampling.top_k=5"], ["unknown key 'rollout.sampling'"]),
    (
        "unknown-expert-demos-key",
        ["sft.demos.episods=3"],
        ["unknown key 'sft.demos.episods'", "did you mean 'episodes'"],
    ),
    (
        "unknown-jsonl-demos-key",
        ["sft.demos={source: jsonl, path: d.jsonl, pth: x}"],
        ["unknown key 'sft.demos.pth'", "did you mean 'path'"],
    ),
    (
        "unknown-grpo-key",
        ["rl.trainer.learning_rte=1e-3"],
        ["unknown key 'rl.trainer.learning_rte' for trl.GRPOConfig", "did you mean 'learning_rate'"],
    ),
    (
        "unknown-sft-key",
        ["sft.trainer.num_train_epoch=2"],
        ["unknown key 'sft.trainer.num_train_epoch' for trl.SFTConfig", "did you mean 'num_train_epochs'"],
    ),
    (
        "reserved-trainer-key",
        ["sft.trainer.output_dir=elsewhere"],
        ["key 'sft.trainer.output_dir' is set by rlft"],
    ),
    # wrong types and out-of-range values: key, value, what was expected
    ("int-is-word", ["rollout.num_envs=many"], ["key 'rollout.num_envs' = 'many'", "valid integer"]),
    ("int-is-list", ["env.max_turns=[3]"], ["key 'env.max_turns' = [3]", "valid integer"]),
    (
        "int-is-fraction",
        ["rollout.max_action_tokens=1.5"],
        ["key 'rollout.max_action_tokens' = 1.5", "integer"],
    ),
    ("zero-envs", ["rollout.num_envs=0"], ["key 'rollout.num_envs' = 0", "greater than 0"]),
    ("top-p-above-1", ["rollout.top_p=1.5"], ["key 'rollout.top_p' = 1.5", "less than or equal to 1"]),
    ("epsilon-above-1", ["sft.demos.epsilon=2"], ["key 'sft.demos.epsilon' = 2", "less than or equal to 1"]),
    (
        "bad-literal",
        ["model.tiny.architecture=gpt2"],
        ["key 'model.tiny.architecture' = 'gpt2'", "'qwen2' or 'llama'"],
    ),
    ("bad-wandb-mode", ["tracking.wandb.mode=cloud"], ["key 'tracking.wandb.mode' = 'cloud'", "'offline'"]),
    ("bad-algorithm", ["rl.algorithm=dqn"], ["key 'rl.algorithm' = 'dqn'", "'grpo'"]),
    (
        "union-type",
        ["model.lora.target_modules=7"],
        ["key 'model.lora.target_modules' = 7", "valid list or Input should be a valid string"],
    ),
    (
        "heads-do-not-divide",
        ["model.tiny.num_heads=3"],
        ["hidden_size (32) must be divisible by num_heads (3)"],
    ),
    ("kwargs-not-a-mapping", ["env.kwargs=3"], ["key 'env.kwargs' = 3", "valid dictionary"]),
    ("override-into-a-value", ["name.first=x"], ["override 'name.first': 'name' is a value, not a section"]),
    (
        "override-without-value",
        ["rollout.num_envs"],
        ["override 'rollout.num_envs' is not of the form key.sub=value"],
    ),
    # TRL pass-through: types and TRL's own checks, before any model
    (
        "trainer-type",
        ["rl.trainer.learning_rate=fast"],
        ["key 'rl.trainer.learning_rate' = 'fast'", "valid number"],
    ),
    (
        "trainer-negative",
        ["rl.trainer.learning_rate=-0.1"],
        ["key 'rl.trainer.learning_rate' = -0.1", "expected a value > 0"],
    ),
    (
        "trainer-bool-for-int",
        ["sft.trainer.per_device_train_batch_size=true"],
        ["key 'sft.trainer.per_device_train_batch_size' = True", "expected int, got a boolean"],
    ),
    (
        "batch-not-divisible",
        ["rl.trainer.per_device_train_batch_size=12", "rl.trainer.num_generations=8"],
        ["key 'rl.trainer'", "generation_batch_size (12) must be divisible by num_generations (8)"],
    ),
    (
        "batch-vs-default-generations",
        ["rl.trainer.per_device_train_batch_size=6"],
        ["generation_batch_size (6) must be divisible by num_generations (8)"],
    ),
    (
        "generation-batch",
        ["rl.trainer.generation_batch_size=12", "rl.trainer.per_device_train_batch_size=8"],
        ["generation_batch_size (12) must be divisible by the global batch size (8)"],
    ),
    (
        "one-generation",
        ["rl.trainer.num_generations=1", "rl.trainer.per_device_train_batch_size=4"],
        ["at least 2 generations"],
    ),
    ("sampling-in-trainer", ["rl.trainer.temperature=0.7"], ["key 'rl.trainer'", "under 'rollout'"]),
    (
        "bad-scheduler",
        ["sft.trainer.lr_scheduler_type=cosine_slow"],
        ["key 'sft.trainer'", "cosine_slow", "SchedulerType"],
    ),
    # env references
    (
        "unregistered-env",
        ["env.id=rlft/FrozenLak-v0"],
        [
            "key 'env.id' = 'rlft/FrozenLak-v0': not a registered gymnasium env",
            "did you mean 'rlft/FrozenLake-v0'",
        ],
    ),
    (
        "missing-class",
        ["env.id=envs.frozen_lake:TextFrozenLak"],
        [
            "key 'env.id' = 'envs.frozen_lake:TextFrozenLak'",
            "has no attribute 'TextFrozenLak'",
            "did you mean 'TextFrozenLake'",
        ],
    ),
    ("missing-module", ["env.id=no_such_module:Env"], ["key 'env.id'", "module 'no_such_module' not found"]),
    (
        "unknown-env-kwarg",
        ["env.kwargs.slippery=true"],
        ["key 'env.kwargs'", "unexpected keyword argument 'slippery'"],
    ),
    ("bad-env-kwarg-value", ["env.kwargs.map_name=5x5"], ["key 'env.kwargs'", "map_name must be one of"]),
    (
        "adapter-on-text-env",
        ["env.adapter.action_names=[a, b, c, d]"],
        ["key 'env.adapter'", "already speaks text"],
    ),
    (
        "adapter-names-count",
        [*FROZEN_LAKE_V1, "env.adapter.action_names=[left, right]"],
        ["key 'env.adapter'", "2 action names for 4 actions"],
    ),
    (
        "adapter-parser",
        [*FROZEN_LAKE_V1, "env.adapter.parser=envs.text_adapter:make_parsr"],
        ["key 'env.adapter.parser'", "did you mean 'make_parser'"],
    ),
    # paths: model, demos, checkpoint
    ("two-model-sources", ["model.name_or_path=org/model"], ["set exactly one of model.name_or_path"]),
    (
        "missing-model-path",
        ["model.tiny=null", "model.name_or_path={tmp}/no_model"],
        ["key 'model.name_or_path'", "no_model': no such folder"],
    ),
    (
        "model-folder-without-config",
        ["model.tiny=null", "model.name_or_path={tmp}"],
        ["folder has no config.json"],
    ),
    ("jsonl-without-path", ["sft.demos.source=jsonl"], ["missing required key 'sft.demos.path'"]),
    ("missing-jsonl", ["sft.demos.path={tmp}/demos.jsonl"], ["key 'sft.demos.path'", "file does not exist"]),
    ("missing-checkpoint", ["rl.init_from={tmp}/ckpt"], ["key 'rl.init_from'", "no such checkpoint folder"]),
    ("checkpoint-not-saved", ["rl.init_from={tmp}"], ["key 'rl.init_from'", "not a saved checkpoint"]),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_fails_with_clear_message(
    overrides: list[str], expected: list[str], tmp_path: Path
) -> None:
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    with pytest.raises(ConfigError) as info:
        load_checked_config(raw=base(), overrides=overrides)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert info.value.exit_code == 2


def test_bad_config_table_is_large_enough() -> None:
    assert len(BAD_CONFIGS) >= 20


def test_missing_required_section() -> None:
    with pytest.raises(ConfigError, match="missing required key 'env'"):
        load_checked_config(raw={"model": {"tiny": {}}})


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_checked_config(raw=base(), overrides=["rollout.num_envs=0", "eval.episods=3"])
    assert "key 'rollout.num_envs' = 0" in str(info.value)
    assert "unknown key 'eval.episods' (did you mean 'episodes'?)" in str(info.value)


def test_malformed_jsonl_demos_fail_at_validation(tmp_path: Path) -> None:
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"turns": [{"observation": "o", "action": "left"}]}\n{"turns": [\n', encoding="utf-8")
    with pytest.raises(RlftError, match=r"demos\.jsonl:2: invalid JSON"):
        load_checked_config(raw=base(), overrides=[f"sft.demos={{source: jsonl, path: {demos}}}"])


# ---------------------------------------------------------------- YAML files


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  tiny: {}\nenv:\n  id: [unclosed\n", r"{path}:5: YAML syntax error"),
        ("model:\n  tiny: {}\n env: {id: x}\n", r"{path}:3: YAML syntax error"),
        ("", r"{path}: the file is empty"),
        ("# only a comment\n", r"{path}: the file is empty"),
        ("- a\n- b\n", r"{path}: expected a mapping at the top level, got list"),
    ],
    ids=["unclosed-flow", "bad-indent", "empty", "comment-only", "top-level-list"],
)
def test_yaml_file_errors(text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_checked_config(path)
    assert expected.format(path=path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("model: {tiny: {}}\nenv: {id: rlft/FrozenLake-v0}\nseed: abc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid configuration:\n  - key 'seed' = 'abc'"):
        load_checked_config(path)


def test_exponent_floats_are_floats(tmp_path: Path) -> None:
    # PyYAML reads `1e-3` as a string (YAML 1.1 wants `1.0e-3`); TRL must receive a float.
    path = tmp_path / "x.yaml"
    path.write_text(
        "model: {tiny: {}}\nenv: {id: rlft/FrozenLake-v0}\n"
        "sft: {trainer: {learning_rate: 1e-3}}\nrl: {trainer: {learning_rate: 5E-5}}\n",
        encoding="utf-8",
    )
    config = load_checked_config(path)
    assert config.sft.trainer["learning_rate"] == 0.001
    assert config.rl.trainer["learning_rate"] == 5e-5
    assert isinstance(config.sft.trainer["learning_rate"], float)


def test_saved_config_reloads_identically(tmp_path: Path) -> None:
    config = load_checked_config(CONFIGS / "quickstart.yaml", ["rl.trainer.learning_rate=1e-4", "name=copy"])
    save_config(config, tmp_path / "config.yaml")
    assert load_checked_config(tmp_path / "config.yaml") == config


# ---------------------------------------------------------------- overrides


def test_override_values_are_yaml_scalars() -> None:
    parsed = dict(
        (".".join(k), v)
        for k, v in parse_overrides(
            [
                "a.lr=1e-3",
                "a.flag=true",
                "a.off=False",
                "b.list=[1, 2.5, x]",
                "b.map={k: v}",
                "c=null",
                "d=hello",
                "e=",
                "f=3",
                "g='3'",
                "h=a=b",
            ]
        )
    )
    assert parsed == {
        "a.lr": 0.001,
        "a.flag": True,
        "a.off": False,
        "b.list": [1, 2.5, "x"],
        "b.map": {"k": "v"},
        "c": None,
        "d": "hello",
        "e": "",
        "f": 3,
        "g": "3",
        "h": "a=b",
    }
    assert isinstance(parsed["a.lr"], float) and isinstance(parsed["f"], int)


def test_overrides_create_nested_sections_and_leave_the_input_alone() -> None:
    raw = base()
    out = apply_overrides(
        raw, ["model.lora.r=4", "env.adapter.action_names=[a, b]", "tracking.wandb.tags=[x]"]
    )
    assert out["model"]["lora"] == {"r": 4}
    assert out["env"]["adapter"] == {"action_names": ["a", "b"]}
    assert out["tracking"] == {"wandb": {"tags": ["x"]}}
    assert raw == BASE


def test_overrides_apply_to_a_file() -> None:
    config = load_checked_config(
        CONFIGS / "quickstart.yaml",
        [
            "rollout.num_envs=8",
            "rl.trainer.learning_rate=1e-3",
            "model.lora.r=4",
            "tracking.wandb.enabled=false",
            "env.kwargs.random_map_size=5",
            "eval.disjoint_tasks=off",
        ],
    )
    assert config.rollout.num_envs == 8
    assert config.rl.trainer["learning_rate"] == 0.001
    assert config.model.lora is not None and config.model.lora.r == 4 and config.model.lora.alpha == 16
    assert config.tracking.wandb.enabled is False
    assert config.env.kwargs == {"random_map_size": 5, "is_slippery": False}
    assert config.eval.disjoint_tasks is False
    assert config.model.tiny is not None and config.model.tiny.hidden_size == 128  # untouched keys stay


def test_override_of_an_unknown_key_is_caught() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'rollout\.temprature' \(did you mean 'temperature'\?\)"
    ):
        load_checked_config(CONFIGS / "quickstart.yaml", ["rollout.temprature=0.5"])


def test_demo_source_defaults_to_expert() -> None:
    config = load_checked_config(raw=base(), overrides=["sft.demos.episodes=7"])
    assert config.sft.demos.source == "expert" and config.sft.demos.episodes == 7


# ---------------------------------------------------------------- pass-through to TRL


def test_trainer_keys_reach_trl_configs() -> None:
    from rlft.stages.rl import rl_trainer_args
    from rlft.stages.sft import sft_trainer_args

    config = load_checked_config(
        raw=base(),
        overrides=[
            "rl.trainer.learning_rate=3e-4",
            "rl.trainer.num_generations=4",
            "rl.trainer.per_device_train_batch_size=8",
            "rl.trainer.max_steps=7",
            "sft.trainer.num_train_epochs=2",
            "sft.trainer.learning_rate='2e-3'",
            "rollout.temperature=0.8",
            "seed=5",
        ],
    )
    rl = rl_trainer_args(config)
    assert isinstance(rl, trl.GRPOConfig)
    assert (rl.learning_rate, rl.num_generations, rl.per_device_train_batch_size, rl.max_steps) == (
        3e-4,
        4,
        8,
        7,
    )
    assert rl.temperature == 0.8 and rl.seed == 5  # from `rollout` and `seed`, not from rl.trainer
    sft = sft_trainer_args(config)
    assert isinstance(sft, trl.SFTConfig)
    assert sft.num_train_epochs == 2
    assert sft.learning_rate == 0.002 and isinstance(
        sft.learning_rate, float
    )  # a quoted number becomes a number


def test_stage_defaults_come_from_rlft_config_defaults() -> None:
    from rlft.algorithms.ppo import PPOConfig
    from rlft.config import defaults
    from rlft.stages.rl import rl_trainer_args
    from rlft.stages.sft import sft_trainer_args

    config = load_checked_config(raw=base(), overrides=["rollout.max_episode_tokens=300", "name=d"])
    sft = sft_trainer_args(config)
    assert (sft.learning_rate, sft.num_train_epochs, sft.per_device_train_batch_size) == (1e-3, 3, 16)
    assert sft.run_name == "d-sft" and sft.report_to == [] and sft.logging_steps == 1  # base: report_to none
    grpo = rl_trainer_args(config)
    assert (grpo.learning_rate, grpo.num_generations, grpo.max_steps, grpo.beta) == (5e-5, 8, 50, 0.0)
    assert grpo.max_completion_length == 300 and grpo.run_name == "d-rl"  # a function of the rollout section
    ppo = rl_trainer_args(config.model_copy(update={"rl": config.rl.model_copy(update={"algorithm": "ppo"})}))
    assert isinstance(ppo, PPOConfig)
    assert (ppo.num_generations, ppo.num_iterations, ppo.steps_per_generation) == (1, 2, 2)  # PPO's overrides
    assert (
        ppo.learning_rate == defaults.RL_DEFAULTS["learning_rate"]
    )  # the common RL defaults stay under them
    tiny = defaults.rm_defaults(config.model)
    assert tiny["learning_rate"] == 1e-3 and tiny["center_rewards_coefficient"] == 0.01
    assert "learning_rate" not in defaults.rm_defaults(
        config.model.model_copy(update={"tiny": None, "name_or_path": "org/m"})
    )


def test_schema_load_checks_keys_only_and_checks_add_references() -> None:
    # rlft.config imports nothing above it, so a reference (env id, entry point, file) is checked by the stages.
    config = load_config(raw=base(), overrides=["env.id=rlft/NoSuchEnv-v0"])
    assert config.env.id == "rlft/NoSuchEnv-v0"
    with pytest.raises(ConfigError, match="key 'env.id' = 'rlft/NoSuchEnv-v0'"):
        load_checked_config(raw=base(), overrides=["env.id=rlft/NoSuchEnv-v0"])


def test_validation_creates_nothing_on_disk(tmp_path: Path) -> None:
    load_checked_config(raw=base(), overrides=[f"output_dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- env section


def test_custom_env_example_builds_and_steps_with_text() -> None:
    from envs.experts import expert_for

    config = load_checked_config(CONFIGS / "custom_env_example.yaml")
    env = make_env(config.env)
    assert isinstance(env.action_space, gymnasium.spaces.Text)
    assert env.unwrapped.action_names == ["left", "down", "right", "up"]
    assert "frozen lake" in env.unwrapped.instructions
    obs, info = env.reset(seed=0)
    assert obs == "0"  # the default renderer: str(cell index)
    obs, reward, terminated, truncated, info = env.step("right")
    assert (obs, reward, terminated, truncated, info["invalid_action"]) == ("1", 0.0, False, False, False)
    obs, reward, _, _, info = env.step("jump")
    assert (obs, reward, info["invalid_action"]) == ("1", -0.1, True)
    # The optimal path on the 4x4 map: down, down, right, down, right, right... the expert finds it.
    env.reset(seed=0)
    expert = expert_for(env)
    for _ in range(config.env.max_turns):
        obs, reward, terminated, truncated, info = env.step(expert.act(env))
        if terminated or truncated:
            break
    assert terminated and reward == 1.0 and info["success"]
    env.close()


@pytest.fixture
def user_env_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's package that registers a Gymnasium env on import (not imported by rlft)."""
    (tmp_path / "my_user_envs.py").write_text(
        "import gymnasium\n"
        "gymnasium.register(id='MyUserLake-v0', entry_point='gymnasium.envs.toy_text.frozen_lake:FrozenLakeEnv',"
        " kwargs={'is_slippery': False})\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_envs"
    gymnasium.registry.pop("MyUserLake-v0", None)
    sys.modules.pop("my_user_envs", None)


def test_env_from_a_user_package(user_env_package: str) -> None:
    config = load_checked_config(
        raw=base(),
        overrides=[
            f"env.id={user_env_package}:MyUserLake-v0",
            "env.adapter.action_names=[left, down, right, up]",
        ],
    )
    env = make_env(config.env)
    env.reset(seed=0)
    assert env.step("down")[0] == "4"
    with pytest.raises(
        ConfigError, match=r"did not register 'MyUserLake-v9' \(did you mean 'MyUserLake-v0'\?\)"
    ):
        load_checked_config(raw=base(), overrides=[f"env.id={user_env_package}:MyUserLake-v9"])


def test_env_by_entry_point() -> None:
    config = load_checked_config(
        raw=base(), overrides=["env.id=envs.taxi:TextTaxi", "env.kwargs.show_map=false"]
    )
    obs, _ = make_env(config.env).reset(seed=0)
    assert obs.startswith("taxi row")
