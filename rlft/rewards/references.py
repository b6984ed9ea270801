"""What a reward design names, resolved and checked: rule functions and their kwargs, the gold function, and
the reward models behind rm components. Everything here runs before any policy loads (`rlft validate`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rlft.config.schema import Config, RmRewardComponent, RuleRewardComponent
from rlft.errors import ConfigError, did_you_mean
from rlft.rewards.models.scoring import load_reward_model
from rlft.rewards.rules import BUILTIN_RULES, ENTRY_POINT_KWARGS, FIELDS, RuleFunction
from rlft.rollout.env_factory import import_entry_point


class Scorer(Protocol):
    """A learned reward model as a reward: one score per text (rlft.rewards.models.scoring.load_reward_model)."""

    def score(self, texts: list[str]) -> list[float]: ...


def resolve_entry_point(spec: str, key: str) -> Callable:
    function = import_entry_point(spec, key)
    if not callable(function):
        raise ConfigError(
            f"key '{key}' = '{spec}': {type(function).__name__} is not callable; expected a function"
        )
    return function


def resolve_rule(cfg: RuleRewardComponent, key: str) -> tuple[RuleFunction, dict[str, Any]]:
    """The rule function and its kwargs (entry-point kwargs of built-ins resolved); ConfigError naming the key."""
    if ":" in cfg.function:
        function = resolve_entry_point(cfg.function, f"{key}.function")
    elif cfg.function in BUILTIN_RULES:
        function = BUILTIN_RULES[cfg.function]
    else:
        raise ConfigError(
            f"key '{key}.function' = '{cfg.function}': not a built-in rule and not "
            f"'module:function'{did_you_mean(cfg.function, BUILTIN_RULES)}"
        )
    kwargs = dict(cfg.kwargs)
    for name in kwargs:
        if name in FIELDS or name == "actions":
            raise ConfigError(
                f"key '{key}.kwargs.{name}': '{name}' is an episode field the rule receives; "
                "choose another name"
            )
    if cfg.function in BUILTIN_RULES:
        own = [
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            and p.name != "actions"
            and p.name not in FIELDS
        ]
        for name in kwargs:
            if name not in own:
                raise ConfigError(
                    f"key '{key}.kwargs.{name}': {cfg.function} has no option '{name}'"
                    f"{did_you_mean(name, own)}"
                )
        for name in ENTRY_POINT_KWARGS.get(cfg.function, ()):
            if name not in kwargs:
                raise ConfigError(
                    f"key '{key}.kwargs.{name}' is missing: {cfg.function} needs it ('module:function')"
                )
            if isinstance(kwargs[name], str):
                kwargs[name] = resolve_entry_point(kwargs[name], f"{key}.kwargs.{name}")
    return function, kwargs


def load_scorer(cfg: RmRewardComponent, name: str) -> Scorer:
    """The reward model behind an rm component (a model load: only when the design is built for training)."""
    return load_reward_model(cfg.path, aggregate=cfg.aggregate, k=cfg.k)


def check_reward_references(config: Config) -> None:
    """Everything the `reward` section names, checked before any model loads: rule functions and their
    kwargs, potentials, the gold function, reward-model folders."""
    reward = config.reward
    for name, cfg in reward.components.items():
        key = f"reward.components.{name}"
        if isinstance(cfg, RuleRewardComponent):
            resolve_rule(cfg, key)
        elif isinstance(cfg, RmRewardComponent):
            if cfg.path is None:
                if "rm" not in config.model_fields_set and not run_reward_model(config).is_dir():
                    raise ConfigError(
                        f"key '{key}.path' is null (this run's reward model) but the config has no "
                        f"`rm` section to train one and {run_reward_model(config)} does not exist"
                    )
                continue
            paths = [cfg.path] if isinstance(cfg.path, str) else cfg.path
            if not paths:
                raise ConfigError(f"key '{key}.path' = []: expected a reward-model folder or a list of them")
            for path in paths:
                if not Path(path).expanduser().is_dir():
                    raise ConfigError(
                        f"key '{key}.path' = '{path}': no such reward-model folder "
                        "(train one with `rlft rm`, or give the folder of a saved one)"
                    )
    if reward.gold not in ("env", "none"):
        resolve_entry_point(reward.gold, "reward.gold")


def run_reward_model(config: Config) -> Path:
    """Where `rlft rm` saves this run's reward model (an rm component with `path: null` loads it)."""
    return config.run_dir / "checkpoints" / "rm"
