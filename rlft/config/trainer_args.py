"""Pass-through of trainer hyperparameters to TRL's config classes: checks, and building them with rlft's defaults.

rlft does not re-declare TRL's hyperparameters: `sft.trainer` goes to `trl.SFTConfig`, `rl.trainer` to
`trl.GRPOConfig` (or rlft's `PPOConfig`, a GRPOConfig subclass with PPO's keys) and `rm.trainer` to
`trl.RewardConfig`. Keys and value types are checked against those dataclasses before any model loads.

The config layer never imports a trainer: whoever knows which TRL config a stage uses (the stage, or the
algorithm registry) passes the class in. rlft's defaults come from rlft/config/defaults.py alone.
"""

from __future__ import annotations

import dataclasses
from importlib.util import find_spec
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

from rlft.config.defaults import base_defaults
from rlft.errors import ConfigError, did_you_mean

# Keys rlft owns: set from other sections of the config (or per stage), not by the user in `*.trainer`.
_RESERVED = {"output_dir", "seed"}
# `report_to` adds TRL's own integrations (tensorboard, trackio, ...) beside rlft's tracking; wandb is rlft's.
_REPORT_TO_OWNED = {
    "wandb": "rlft logs every stage to wandb itself (tracking.wandb: grouped, tagged, with "
    "transcripts); remove 'wandb' from report_to",
    "all": "'all' includes wandb, which rlft logs itself; list the integrations, e.g. [tensorboard]",
}
_REPORT_TO_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio"}
_POSITIVE = {
    "learning_rate",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "num_train_epochs",
    "max_completion_length",
    "steps_per_generation",
    "num_iterations",
    "max_length",
    "generation_batch_size",
    "temperature",
    "kl_horizon",
    "critic_learning_rate",
}


def check_trainer_overrides(key: str, overrides: dict[str, Any], cls: type) -> None:
    """Check every key of a `*.trainer` mapping exists on the TRL config class `cls` and has the right type.

    A quoted number (`"1e-3"`) is replaced in `overrides` by the number, so TRL gets a float, not a string.
    """
    names = dataclass_field_names(cls)
    for name, value in overrides.items():
        if name in _RESERVED:
            raise ConfigError(
                f"key '{key}.{name}' is set by rlft (output_dir from the run, seed from 'seed')"
            )
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
            raise ConfigError(
                f"key '{key}.{name}' = {value!r}: expected {type(validated).__name__}, got a boolean"
            )
        if isinstance(value, str) and isinstance(validated, (int, float)) and not isinstance(validated, bool):
            value = overrides[name] = (
                validated  # a quoted number ("1e-3"): hand TRL the number, not the string
            )
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value <= 0
            and name in _POSITIVE
        ):
            raise ConfigError(f"key '{key}.{name}' = {value!r}: expected a value > 0")


def _check_report_to(key: str, value: Any) -> None:
    """TRL's integrations are allowed beside rlft's tracking, except wandb (rlft's own); the package must exist."""
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"key '{key}' = {value!r}: expected an integration name or a list of them "
            "(e.g. [tensorboard, trackio])"
        )
    for name in names:
        if name in _REPORT_TO_OWNED:
            raise ConfigError(f"key '{key}' = {value!r}: {_REPORT_TO_OWNED[name]}")
        package = _REPORT_TO_PACKAGES.get(name)
        if package is not None and find_spec(package) is None:
            raise ConfigError(
                f"key '{key}' = {value!r}: '{name}' needs the {package} package "
                f"(pip install {package}, or pip install -e '.[tracking]')"
            )


def build_trainer_config(
    cls: type, overrides: dict[str, Any], output_dir: str, seed: int, defaults: dict[str, Any] | None = None
) -> Any:
    """Instantiate the TRL config class `cls` for a stage.

    Precedence: `base_defaults()` < the stage's `defaults` (rlft/config/defaults.py) < the user's `*.trainer`
    keys; `output_dir` and `seed` are always the run's.
    """
    kwargs = {**base_defaults(), **(defaults or {}), **overrides, "output_dir": output_dir, "seed": seed}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"trainer settings rejected by {_qualified(cls)}: {exc}") from None


def dataclass_type_adapter(cls: type, name: str) -> TypeAdapter | None:
    """A pydantic adapter for one field of a dataclass (the TRL pass-through checks)."""
    hints = get_type_hints(cls)
    if name not in hints:
        return None
    return TypeAdapter(hints[name])


def dataclass_field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _qualified(cls: type) -> str:
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"
