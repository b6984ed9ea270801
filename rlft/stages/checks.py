"""Checks of what a configuration points at, run by every command before any model loads.

`rlft.config.schema.load_config` checks keys and types. The checks here need the layers above the config
(env ids are built and played a few seeds, entry points imported, JSONL files read row by row, TRL's configs
built), so they live with the stages: `rlft validate`, each stage command, `rlft launch` and `rlft sweep` call
`load_checked_config` (or `check_config` on a config they already hold). Nothing here loads a model or writes to
disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlft.config.schema import Config, JsonlDemos, JsonlPreferences, load_config
from rlft.config.trainer_args import check_trainer_overrides
from rlft.errors import ConfigError
from rlft.rewards import check_reward_references
from rlft.rewards.models.preferences import read_preferences
from rlft.rollout.demos import read_jsonl_demos
from rlft.rollout.env_check import check_env_plays
from rlft.rollout.env_factory import check_env_reference, import_entry_point
from rlft.rollout.experts import check_expert_demos
from rlft.rollout.vllm_backend import check_vllm_backend
from rlft.stages.common import check_loadable, check_output_folder, trainer_config_class
from rlft.stages.eval import check_eval_expert
from rlft.stages.rl import rl_trainer_args
from rlft.stages.rm import rm_trainer_args
from rlft.stages.sft import sft_trainer_args
from rlft.stages.sft_selection import check_validation_expert
from rlft.stages.transfer import check_critic_init_from, check_policy_tokenizer

# rlft's reward has one source today: the env's per-turn rewards, summed into the episode return
# (`reward_funcs=[episode_return]` in rlft/algorithms/grpo.py and rlft/algorithms/ppo.py). TRL compares
# `reward_weights` with its reward functions only when the trainer is built, after the model has loaded.
REWARD_SOURCES = ("env",)


def load_checked_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    raw: dict[str, Any] | None = None,
) -> Config:
    """`load_config` (keys and types), then `check_config` (references). Raises `ConfigError` naming the key."""
    config = load_config(path, overrides, raw=raw)
    check_config(config)
    return config


def check_config(config: Config) -> None:
    """Checks that need imports but no model: env ids, kwargs and adapter (one env is built), entry points,
    paths, JSONL rows, trainer pass-through keys and TRL's own checks of the built trainer configs, and that
    the run folder can be created and written (a probe that leaves nothing behind)."""
    check_output_folder(config)
    check_vllm_backend(config.rollout.backend, config.model.lora is not None, config.rollout.top_p)
    check_env_reference(config.env)
    check_env_plays(config.env)  # a few seeds reset and stepped: the user's env, renderer and parser
    if config.model.name_or_path is not None:
        _check_model_path(config.model.name_or_path)
    if isinstance(config.sft.demos, JsonlDemos):
        if not Path(config.sft.demos.path).is_file():
            raise ConfigError(f"key 'sft.demos.path' = '{config.sft.demos.path}': file does not exist")
        read_jsonl_demos(
            config.sft.demos.path
        )  # a malformed row fails here (file:line), not after a model loads
    check_expert_demos(config)  # SFT on the expert's demos, and the env has no expert: the options, now
    check_eval_expert(config)  # eval.expert: true, and the env has no expert
    check_validation_expert(config)  # sft.eval_every_steps scores the expert on the validation tasks
    # Another run's checkpoint to start from (rlft.stages.transfer): whole, with a tokenizer that reads this env.
    for key, start, named in (
        ("sft.init_from", config.sft.init_from, ("base",)),
        ("rl.init_from", config.rl.init_from, ("sft", "base")),
    ):
        if start not in named:
            _check_checkpoint_path(start, key, ", ".join(f"'{name}'" for name in named) + " or a path")
            check_policy_tokenizer(start, key, config)
    check_critic_init_from(config)
    check_trainer_overrides("sft.trainer", config.sft.trainer, trainer_config_class("sft"))
    check_trainer_overrides("rl.trainer", config.rl.trainer, trainer_config_class(config.rl.algorithm))
    _check_reward_weights(config.rl.trainer.get("reward_weights"))
    _check_rm(config)
    critic_init = config.rl.trainer.get("critic_init", "policy")
    if config.rl.algorithm == "ppo" and critic_init != "policy":
        _check_critic_path(str(critic_init))
    check_trainer_configs(config)
    check_reward_references(config)


def check_trainer_configs(config: Config) -> None:
    """Build each stage's TRL config now, so TRL's own checks run before any model loads.

    TRL checks relations between keys in `__post_init__` (the generation batch must hold whole groups of
    `num_generations`, a scheduler name must exist, ...); building the configs is cheap and creates nothing
    on disk. Each is built by the same function its stage uses, with its defaults.
    """
    builds = (
        ("sft.trainer", sft_trainer_args),
        ("rl.trainer", rl_trainer_args),
        ("rm.trainer", rm_trainer_args),
    )
    for key, build in builds:
        try:
            build(config)
        except ConfigError as exc:
            raise ConfigError(f"key '{key}': {exc}") from None


def _check_reward_weights(weights: list[float] | None) -> None:
    if weights is None:
        return
    count = len(REWARD_SOURCES)
    if len(weights) != count:
        raise ConfigError(
            f"key 'rl.trainer.reward_weights' = {weights!r}: {len(weights)} weights for {count} "
            f"reward source(s) ({', '.join(REWARD_SOURCES)}); expected a list of {count} or leave it "
            "unset"
        )
    if not any(weights):
        raise ConfigError(
            f"key 'rl.trainer.reward_weights' = {weights!r}: no reward source has a non-zero weight, "
            "so there is no reward to learn from; expected at least one non-zero weight"
        )


def _check_critic_path(path: str) -> None:
    """`rl.trainer.critic_init`: a saved critic (critic.json) or a reward model (config.json)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"key 'rl.trainer.critic_init' = '{path}': no such folder "
            "(expected 'policy', a saved critic folder or a reward-model folder)"
        )
    if not (folder / "critic.json").is_file() and not (folder / "config.json").is_file():
        raise ConfigError(
            f"key 'rl.trainer.critic_init' = '{path}': neither a saved critic (critic.json) "
            "nor a reward model (config.json)"
        )


def _check_rm(config: Config) -> None:
    """The `rm` section's references: preference files (every row, file:line), the gold entry point, the model."""
    data = config.rm.data
    if isinstance(data, JsonlPreferences):
        for key, path in (("rm.data.path", data.path), ("rm.data.eval_path", data.eval_path)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"key '{key}' = '{path}': file does not exist")
            if path is not None:
                read_preferences(path)  # a malformed row fails here (file:line), not after a model loads
    elif data.gold != "return" and not callable(import_entry_point(data.gold, "rm.data.gold")):
        raise ConfigError(
            f"key 'rm.data.gold' = '{data.gold}': not callable; expected 'return' or "
            "'module:function' (played episode -> float)"
        )
    model = config.rm.model
    if model is not None and model.name_or_path is not None:
        _check_model_path(model.name_or_path, "rm.model.name_or_path")
    if model is not None and model.lora is not None:  # (the policy's lora is not used: see rlft.stages.rm)
        raise ConfigError("key 'rm.model.lora': LoRA is not supported for reward models yet; remove it")
    for name in ("trust_remote_code", "model_init_kwargs"):
        if name in config.rm.trainer:
            raise ConfigError(
                f"key 'rm.trainer.{name}' is set by rlft from rm.model (trust_remote_code, revision, "
                "dtype); set it there"
            )
    check_trainer_overrides("rm.trainer", config.rm.trainer, trainer_config_class("rm"))


def _check_checkpoint_path(path: str, key: str, expected: str = "'sft', 'base' or a path") -> None:
    """A checkpoint is a `save_pretrained` folder: full weights (config.json) or a LoRA adapter (adapter_config.json)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"key '{key}' = '{path}': no such checkpoint folder (expected {expected})")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"key '{key}' = '{path}': folder is not a saved checkpoint (no config.json)")
    check_loadable(folder, key)  # a truncated or altered weight file: named now, not when the model loads


def _check_model_path(name_or_path: str, key: str = "model.name_or_path") -> None:
    """A local path must exist; a hub id (`org/name`) is accepted as long as it looks like one."""
    looks_local = (
        name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]
    )
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"key '{key}' = '{name_or_path}': folder has no config.json")
        return
    if looks_local or name_or_path.count("/") > 1:
        raise ConfigError(
            f"key '{key}' = '{name_or_path}': no such folder, and it is not a hub id ('org/name')"
        )
