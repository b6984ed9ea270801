"""Turning the `env` section of a config into text environments.

An env is named by a registered Gymnasium id (`rlft/FrozenLake-v0`, or any id a user's package registers)
or by a `module:Class` entry point. A text env (Text action space) is used as it is; an env with a
`Discrete` action space is wrapped by `envs.text_adapter.DiscreteTextEnv`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from rlft.config import EnvConfig
from rlft.errors import ConfigError, did_you_mean


def import_entry_point(spec: str, key: str) -> Any:
    """Import `module:attr` (attr may be dotted); errors name the config key and the closest attribute."""
    if ":" not in spec:
        raise ConfigError(f"key '{key}' = '{spec}': expected 'module:attribute'")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"key '{key}' = '{spec}': module '{module_name}' not found ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"key '{key}' = '{spec}': '{module_name}' has no attribute '{attr}'"
                              f"{did_you_mean(part, names)}")
        obj = getattr(obj, part)
    return obj


def _ensure_registered() -> None:
    import envs  # noqa: F401  (registers the rlft/ namespace)


def check_env_reference(cfg: EnvConfig) -> None:
    """Fail fast on an env id that is not registered or an entry point that does not import."""
    _ensure_registered()
    if ":" in cfg.id and cfg.id.split(":", 1)[0] not in gym.registry:
        import_entry_point(cfg.id, "env.id")
    elif cfg.id not in gym.registry:
        raise ConfigError(f"key 'env.id' = '{cfg.id}': not a registered gymnasium env"
                          f"{did_you_mean(cfg.id, list(gym.registry))}")
    if cfg.adapter is not None:
        for field in ("renderer", "parser"):
            spec = getattr(cfg.adapter, field)
            if spec is not None:
                import_entry_point(spec, f"env.adapter.{field}")


def _instantiate(cfg: EnvConfig) -> gym.Env:
    if cfg.id in gym.registry:
        try:
            return gym.make(cfg.id, **cfg.kwargs)
        except TypeError as exc:
            raise ConfigError(f"key 'env.kwargs': {cfg.id} rejected {sorted(cfg.kwargs)}: {exc}") from None
    cls = import_entry_point(cfg.id, "env.id")
    try:
        return cls(**cfg.kwargs)
    except TypeError as exc:
        raise ConfigError(f"key 'env.kwargs': {cfg.id} rejected {sorted(cfg.kwargs)}: {exc}") from None


def make_env(cfg: EnvConfig) -> gym.Env:
    """One text env for this config (wrapping Discrete-action envs with the adapter)."""
    from envs.text_adapter import DiscreteTextEnv

    _ensure_registered()
    env = _instantiate(cfg)
    if isinstance(env.action_space, gym.spaces.Text):
        return env
    if isinstance(env.action_space, gym.spaces.Discrete):
        adapter = cfg.adapter
        names = adapter.action_names if adapter and adapter.action_names else None
        names = names or [f"action{i}" for i in range(int(env.action_space.n))]
        renderer: Callable | None = None
        parser: Callable | None = None
        if adapter and adapter.renderer:
            renderer = import_entry_point(adapter.renderer, "env.adapter.renderer")
        if adapter and adapter.parser:
            parser = import_entry_point(adapter.parser, "env.adapter.parser")
        try:
            return DiscreteTextEnv(
                env, action_names=names, renderer=renderer, parser=parser,
                instructions=adapter.instructions if adapter else "",
                invalid_action=adapter.invalid_action if adapter else "penalty",
                invalid_penalty=adapter.invalid_penalty if adapter else 0.0,
            )
        except ValueError as exc:
            raise ConfigError(f"key 'env.adapter': {exc}") from None
    raise ConfigError(f"key 'env.id' = '{cfg.id}': action space {env.action_space} is neither Text nor Discrete; "
                      "rlft needs a text env or a Discrete env it can adapt")


def make_envs(cfg: EnvConfig, n: int) -> list[gym.Env]:
    return [make_env(cfg) for _ in range(n)]
