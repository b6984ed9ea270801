"""The experiment configuration: one YAML file, `key.sub=value` overrides, validated before anything heavy loads.

`Config` is the root; its sections live in rlft/config/sections.py and reward_sections.py (re-exported here, so `from
rlft.config.schema import EnvConfig` names every config type from one place). Trainer hyperparameters are not
re-declared: `sft.trainer` passes through to TRL's `SFTConfig`, `rl.trainer` to `GRPOConfig` (or rlft's PPO
config) and `rm.trainer` to `RewardConfig` (rlft/config/trainer_args.py).

`load_config` checks keys and types only. What a config points at (env ids, files, entry points, the TRL
configs it builds) needs the layers above and is checked by `rlft.stages.checks.check_config`;
`rlft.stages.checks.load_checked_config` does both, as every command does before any model loads.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from rlft.config.eval_sections import EvalConfig, OverfitAlarmConfig
from rlft.config.messages import format_validation_error, validation_error_lines
from rlft.config.reward_sections import (
    EnvRewardComponent,
    RewardAlarmConfig,
    RewardComponent,
    RewardConfig,
    RmRewardComponent,
    RuleRewardComponent,
)
from rlft.config.sections import (
    AdapterConfig,
    EnvConfig,
    EnvPreferences,
    JsonlPreferences,
    LoraSettings,
    ModelConfig,
    RlConfig,
    RmConfig,
    RmEnsembleConfig,
    RolloutConfig,
    Section,
    SeedRange,
    TinyModelConfig,
    TrackingConfig,
    WandbConfig,
)
from rlft.config.sft_sections import ExpertDemos, JsonlDemos, SftConfig
from rlft.config.yaml_io import apply_overrides, parse_overrides, read_yaml
from rlft.errors import ConfigError

__all__ = [
    "AdapterConfig",
    "Config",
    "EnvConfig",
    "EnvPreferences",
    "EnvRewardComponent",
    "EvalConfig",
    "ExpertDemos",
    "JsonlDemos",
    "JsonlPreferences",
    "LoraSettings",
    "ModelConfig",
    "OverfitAlarmConfig",
    "RewardAlarmConfig",
    "RewardComponent",
    "RewardConfig",
    "RlConfig",
    "RmConfig",
    "RmEnsembleConfig",
    "RmRewardComponent",
    "RolloutConfig",
    "RuleRewardComponent",
    "SeedRange",
    "SftConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "WandbConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "validation_error_lines",
]


class Config(Section):
    """One experiment. Every field is documented once, in its section (rlft/config/sections.py)."""

    name: str = "experiment"
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig
    env: EnvConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    rl: RlConfig = Field(default_factory=RlConfig)
    rm: RmConfig = Field(default_factory=RmConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    raw: dict[str, Any] | None = None,
) -> Config:
    """Load, override and validate a configuration (keys and types). Raises `ConfigError` naming the key.

    What the config points at is not checked here: see `rlft.stages.checks.load_checked_config`.

    Args:
        path: a YAML file; or None with `raw` given.
        overrides: `key.sub=value` strings applied after the file.
        raw: an already-parsed mapping (tests, sweeps).
    """
    source = str(path) if path is not None else "<config>"
    data = read_yaml(path) if path is not None else copy.deepcopy(raw or {})
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, Config)) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """Every key of the config, defaults filled in, as plain YAML / JSON values."""
    return config.model_dump(mode="json")


def save_config(config: Config, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
