"""Transfer (issue 14, item 3): SFT and RL start from another run's checkpoint (the policy, and for PPO its
critic); what can be wrong with that checkpoint exits 2 before any model loads, naming the key and the path."""

from __future__ import annotations

import json

import pytest

from rlft import cli, stages
from rlft.errors import ConfigError
from rlft.models.critic import ValueModel, backbone_of, save_critic
from rlft.models.policy import load_policy, save_policy
from rlft.stages.common import env_factory
from rlft.stages.rl import rl_trainer_args
from tests.conftest import tiny_config

SLIPPERY = {"id": "rlft/FrozenLakeRandom-v0", "kwargs": {"is_slippery": True}, "max_turns": 8}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Another run's checkpoints of the tiny policy on random 4x4 maps: a GRPO-like policy folder (no critic)
    and a PPO-like one (policy + critic/)."""
    root = tmp_path_factory.mktemp("source")
    config = tiny_config()
    model, tokenizer = load_policy(config.model, seed=0, env_factory=env_factory(config), max_turns=8)
    policy = save_policy(model, tokenizer, root / "grpo")
    ppo = save_policy(model, tokenizer, root / "ppo")
    save_critic(ValueModel(backbone_of(model)), ppo / "critic", "separate", "policy")
    return {"policy": policy, "ppo": ppo}


def test_sft_starts_from_another_runs_checkpoint_with_its_tokenizer(tmp_path, source):
    config = tiny_config(
        output_dir=str(tmp_path),
        sft={
            "init_from": str(source["policy"]),
            "demos": {"episodes": 4},
            "trainer": {"max_steps": 1, "per_device_train_batch_size": 2},
        },
    )
    path = stages.run_sft(config)
    saved = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    assert saved == json.loads((source["policy"] / "tokenizer.json").read_text())["model"]["vocab"]
    assert not (config.run_dir / "checkpoints" / "base").exists()  # no base model built: the source's is used


def test_sft_init_from_a_missing_or_unsaved_folder_exits_2_naming_the_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"key 'sft.init_from' = '.*nowhere': no such checkpoint folder"):
        tiny_config(output_dir=str(tmp_path), sft={"init_from": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"key 'sft.init_from' = 'sft': .*\(expected 'base' or a path\)"):
        tiny_config(output_dir=str(tmp_path), sft={"init_from": "sft"})  # SFT cannot start from itself
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ConfigError, match=r"key 'sft.init_from' = '.*empty': folder is not a saved checkpoint"
    ):
        tiny_config(output_dir=str(tmp_path), sft={"init_from": str(tmp_path / "empty")})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {tiny: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}}\n"
        f"env: {{id: rlft/FrozenLakeRandom-v0}}\noutput_dir: {tmp_path}\n"
    )
    assert cli.main(["sft", "--config", str(cfg), f"sft.init_from={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert "sft.init_from" in err and "nowhere" in err
    assert not (tmp_path / "experiment").exists()  # nothing written, no model loaded


def test_a_tokenizer_without_the_target_envs_words_exits_2(tmp_path, source):
    """The source's word-level vocabulary was built on non-slippery maps: the slippery variant's instructions
    have words it lacks, which the policy would read as <unk>."""
    for key, section in (("sft.init_from", "sft"), ("rl.init_from", "rl")):
        with pytest.raises(ConfigError) as error:
            tiny_config(
                output_dir=str(tmp_path), env=SLIPPERY, **{section: {"init_from": str(source["policy"])}}
            )
        message = str(error.value)
        assert (
            f"key '{key}' = '{source['policy']}'" in message
            and "'slippery'" in message
            and "<unk>" in message
        )
    # the same checkpoint on the env it was made for passes
    tiny_config(output_dir=str(tmp_path), rl={"init_from": str(source["policy"])})


def test_a_tokenizer_larger_than_the_models_vocabulary_exits_2(tmp_path, source):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in source["policy"].iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    model_config = json.loads((broken / "config.json").read_text())
    model_config["vocab_size"] = 10
    (broken / "config.json").write_text(json.dumps(model_config))
    with pytest.raises(
        ConfigError, match=r"key 'sft.init_from' = .*broken.*tokens but the model's vocabulary 10"
    ):
        tiny_config(output_dir=str(tmp_path), sft={"init_from": str(broken)})


def ppo_config(tmp_path, **rl):
    return tiny_config(output_dir=str(tmp_path), rl={"algorithm": "ppo", "init_from": "base", **rl})


def test_the_critic_of_another_ppo_run_becomes_critic_init(tmp_path, source):
    for given in (source["ppo"], source["ppo"] / "critic"):  # the checkpoint folder, or its critic/
        config = ppo_config(tmp_path, critic_init_from=str(given), init_from=str(source["policy"]))
        assert rl_trainer_args(config).critic_init == str(source["ppo"] / "critic")
    assert rl_trainer_args(ppo_config(tmp_path)).critic_init == "policy"  # unset: rl.trainer.critic_init


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such folder"),
        ("no_critic", "the checkpoint holds no critic"),
        ("grpo", "only PPO trains a critic"),
        ("both", "'rl.trainer.critic_init'"),
    ],
)
def test_bad_critic_init_from_exits_2_naming_the_key_and_path(tmp_path, source, case, message):
    path = {"missing": tmp_path / "nowhere", "no_critic": source["policy"]}.get(case, source["ppo"])
    rl = {"critic_init_from": str(path)}
    if case == "grpo":
        rl["algorithm"] = "grpo"
    if case == "both":
        rl["trainer"] = {"critic_init": str(source["ppo"] / "critic")}
    with pytest.raises(ConfigError) as error:
        tiny_config(output_dir=str(tmp_path), rl={"algorithm": "ppo", "init_from": "base", **rl})
    assert f"key 'rl.critic_init_from' = '{path}'" in str(error.value) and message in str(error.value)


def test_a_critic_of_another_vocabulary_exits_2(tmp_path, source):
    """A critic trained on a different tokenizer reads the policy's ids as other tokens."""
    other_config = tiny_config(env=SLIPPERY)  # its vocabulary has the slippery words: another size
    model, tokenizer = load_policy(
        other_config.model, seed=0, env_factory=env_factory(other_config), max_turns=8
    )
    other = save_policy(model, tokenizer, tmp_path / "other")
    save_critic(ValueModel(backbone_of(model)), other / "critic", "separate", "policy")
    with pytest.raises(ConfigError) as error:
        ppo_config(tmp_path, critic_init_from=str(other), init_from=str(source["policy"]))
    message = str(error.value)
    assert "key 'rl.critic_init_from'" in message and str(other) in message and "vocabularies of" in message
