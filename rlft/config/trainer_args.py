"""Pass-through of trainer hyperparameters to TRL's config classes, with rlft's defaults for small runs.

rlft does not re-declare TRL's hyperparameters: `sft.trainer` goes to `trl.SFTConfig` and `rl.trainer` to
`trl.GRPOConfig` (or rlft's `PPOConfig`, a GRPOConfig subclass with PPO's keys). Keys and value types are checked against those dataclasses before any model loads.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from rlft.errors import ConfigError, did_you_mean

# Keys rlft owns: set from other sections of the config (or per stage), not by the user in `*.trainer`.
_RESERVED = {"output_dir", "seed"}
# `report_to` adds TRL's own integrations (tensorboard, trackio, ...) beside rlft's tracking; wandb is rlft's.
_REPORT_TO_OWNED = {"wandb": "rlft logs every stage to wandb itself (tracking.wandb: grouped, tagged, with "
                             "transcripts); remove 'wandb' from report_to",
                    "all": "'all' includes wandb, which rlft logs itself; list the integrations, e.g. [tensorboard]"}
_REPORT_TO_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio"}


def trainer_config_class(kind: str) -> type:
    """The TRL config dataclass for a stage: 'sft' or an RL algorithm name."""
    if kind == "sft":
        from trl import SFTConfig

        return SFTConfig
    if kind == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    if kind == "ppo":
        from rlft.algorithms.ppo import PPOConfig

        return PPOConfig
    if kind == "rm":
        from trl import RewardConfig

        return RewardConfig
    raise ConfigError(f"no trainer config for '{kind}'{did_you_mean(kind, ['sft', 'grpo', 'ppo', 'rm'])}")


def check_trainer_overrides(key: str, overrides: dict[str, Any], kind: str) -> None:
    """Check every key of a `*.trainer` mapping exists on the TRL config class and its value has the right type."""
    from rlft.config.schema import dataclass_field_names, dataclass_type_adapter

    cls = trainer_config_class(kind)
    names = dataclass_field_names(cls)
    for name, value in overrides.items():
        if name in _RESERVED:
            raise ConfigError(f"key '{key}.{name}' is set by rlft (output_dir from the run, seed from 'seed')")
        if name == "report_to":
            _check_report_to(f"{key}.{name}", value)
        if name not in names:
            raise ConfigError(f"unknown key '{key}.{name}' for {_qualified(cls)}{did_you_mean(name, names)}")
        adapter = dataclass_type_adapter(cls, name)
        if adapter is None:
            continue
        try:
            validated = adapter.validate_python(value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ConfigError(f"key '{key}.{name}' = {value!r}: {msg}") from None
        if isinstance(value, bool) and not isinstance(validated, bool):
            # pydantic's lax mode reads `true` as 1; TRL would train with a batch size of True.
            raise ConfigError(f"key '{key}.{name}' = {value!r}: expected {type(validated).__name__}, got a boolean")
        if isinstance(value, str) and isinstance(validated, (int, float)) and not isinstance(validated, bool):
            value = overrides[name] = validated  # a quoted number ("1e-3"): hand TRL the number, not the string
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 and name in _POSITIVE:
            raise ConfigError(f"key '{key}.{name}' = {value!r}: expected a value > 0")


def _check_report_to(key: str, value: Any) -> None:
    """TRL's integrations are allowed beside rlft's tracking, except wandb (rlft's own); the package must exist."""
    from importlib.util import find_spec

    names = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"key '{key}' = {value!r}: expected an integration name or a list of them "
                          "(e.g. [tensorboard, trackio])")
    for name in names:
        if name in _REPORT_TO_OWNED:
            raise ConfigError(f"key '{key}' = {value!r}: {_REPORT_TO_OWNED[name]}")
        package = _REPORT_TO_PACKAGES.get(name)
        if package is not None and find_spec(package) is None:
            raise ConfigError(f"key '{key}' = {value!r}: '{name}' needs the {package} package "
                              f"(pip install {package}, or pip install -e '.[tracking]')")


def check_trainer_configs(config: Any) -> None:
    """Build each stage's TRL config now, so TRL's own checks run before any model loads.

    TRL checks relations between keys in `__post_init__` (the generation batch must hold whole groups of
    `num_generations`, a scheduler name must exist, ...); building the configs is cheap and creates nothing
    on disk. The RL config is built by the same function the rl stage uses, with its defaults.
    """
    from rlft.stages.rl import rl_trainer_args
    from rlft.stages.rm import rm_trainer_args

    output_dir = str(config.run_dir / "trainer")
    builds = (("sft.trainer", lambda: build_trainer_config("sft", config.sft.trainer, output_dir, config.seed)),
              ("rl.trainer", lambda: rl_trainer_args(config)),
              ("rm.trainer", lambda: rm_trainer_args(config)))
    for key, build in builds:
        try:
            build()
        except ConfigError as exc:
            raise ConfigError(f"key '{key}': {exc}") from None


_POSITIVE = {
    "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "num_generations", "num_train_epochs", "max_completion_length", "steps_per_generation", "num_iterations",
    "max_length", "generation_batch_size", "temperature", "kl_horizon", "critic_learning_rate",
}


def cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def base_defaults() -> dict[str, Any]:
    """rlft's defaults for every TRL stage: small-model friendly, bf16 only where the hardware has it."""
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "bf16": bf16,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",  # rlft's own callbacks write metrics.jsonl and wandb (failure-safe)
        "disable_tqdm": False,
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
    }


def build_trainer_config(kind: str, overrides: dict[str, Any], output_dir: str, seed: int,
                         defaults: dict[str, Any] | None = None) -> Any:
    """Instantiate the TRL config for a stage: rlft defaults < stage defaults < the user's `*.trainer` keys."""
    cls = trainer_config_class(kind)
    kwargs = {**base_defaults(), **(defaults or {}), **overrides, "output_dir": output_dir, "seed": seed}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"trainer settings rejected by {_qualified(cls)}: {exc}") from None


def _qualified(cls: type) -> str:
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"
