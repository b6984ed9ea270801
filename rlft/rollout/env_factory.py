"""Turning the `env` section of a config into text environments.

An env is named by a registered Gymnasium id (`rlft/FrozenLake-v0`, `FrozenLake-v1`), by `package:Env-v0`
(Gymnasium's form: import the package that registers the id, then make it) or by a `module:Class` entry point.
A text env (Text action space) is used as it is; an env with a `Discrete` action space is wrapped by
`envs.text_adapter.DiscreteTextEnv`, which also carries the user's expert (`env.expert`,
`env.adapter.expert_method`) and how the user's tasks are identified (`env.adapter.task_id`).
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

import gymnasium as gym

from rlft.config.schema import AdapterConfig, EnvConfig
from rlft.errors import ConfigError, did_you_mean
from rlft.rollout.user_callables import CheckedParser, CheckedRenderer


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
            raise ConfigError(
                f"key '{key}' = '{spec}': '{module_name}' has no attribute '{attr}'"
                f"{did_you_mean(part, names)}"
            )
        obj = getattr(obj, part)
    return obj


def _ensure_registered() -> None:
    import envs  # noqa: F401  (registers the rlft/ namespace)


def _registered_id(env_id: str) -> str | None:
    """The registry id `env_id` names: itself, or `name` in `package:name` once that package is imported."""
    if env_id in gym.registry:
        return env_id
    if ":" not in env_id:
        return None
    module_name, name = env_id.split(":", 1)
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"key 'env.id' = '{env_id}': module '{module_name}' not found ({exc})") from None
    if name in gym.registry:
        return name
    if not name.replace(".", "_").isidentifier():  # `Env-v0`, `ns/Env-v0`: an env id, not an attribute
        raise ConfigError(
            f"key 'env.id' = '{env_id}': importing '{module_name}' did not register '{name}'"
            f"{did_you_mean(name, list(gym.registry))}"
        )
    return None


def check_env_reference(cfg: EnvConfig) -> None:
    """Fail fast on an env that is not registered, does not import, or rejects its kwargs or adapter.

    One env is built and closed: text envs are cheap next to a model, and building one is the only check
    of `env.kwargs` and `env.adapter` that does not guess.
    """
    _ensure_registered()
    if _registered_id(cfg.id) is None:
        if ":" not in cfg.id:
            raise ConfigError(
                f"key 'env.id' = '{cfg.id}': not a registered gymnasium env"
                f"{did_you_mean(cfg.id, list(gym.registry))}"
            )
        import_entry_point(cfg.id, "env.id")
    for key, spec in _user_functions(cfg).items():
        if not callable(import_entry_point(spec, key)):
            raise ConfigError(f"key '{key}' = '{spec}': not callable; expected 'module:function'")
    make_env(cfg).close()


def _user_functions(cfg: EnvConfig) -> dict[str, str]:
    """The `module:function` entry points the env section names, by config key."""
    specs = {"env.expert": cfg.expert}
    if cfg.adapter is not None:
        specs.update({f"env.adapter.{field}": getattr(cfg.adapter, field) for field in ADAPTER_FUNCTIONS})
    return {key: spec for key, spec in specs.items() if spec is not None}


TEXT_ENV_EXPERT = " (a text env gives its expert through a make_expert(epsilon, seed) method)"

# The adapter keys that name a user's `module:function`, and the DiscreteTextEnv argument each becomes.
ADAPTER_FUNCTIONS = {"renderer": "renderer", "parser": "parser", "task_id": "task_id_fn"}


def _instantiate(cfg: EnvConfig) -> gym.Env:
    env_id = _registered_id(cfg.id)
    make = partial(gym.make, env_id) if env_id else import_entry_point(cfg.id, "env.id")
    try:
        env = make(**cfg.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"key 'env.kwargs': {cfg.id} rejected {cfg.kwargs}: {exc}") from None
    if not isinstance(env, gym.Env):
        raise ConfigError(
            f"key 'env.id' = '{cfg.id}': made a {type(env).__name__}, not a gymnasium.Env; expected a "
            "registered env id or 'module:Class' of a gymnasium.Env subclass"
        )
    return env


def make_env(cfg: EnvConfig) -> gym.Env:
    """One text env for this config (wrapping Discrete-action envs with the adapter)."""
    from envs.text_adapter import DiscreteTextEnv

    _ensure_registered()
    env = _instantiate(cfg)
    if isinstance(env.action_space, gym.spaces.Text):
        adapter_only = {"env.adapter": (cfg.adapter, ""), "env.expert": (cfg.expert, TEXT_ENV_EXPERT)}
        for key, (value, hint) in adapter_only.items():
            if value is not None:
                env.close()
                raise ConfigError(
                    f"key '{key}': {cfg.id} already speaks text (Text action space); {key} is for envs "
                    f"with a Discrete action space that rlft adapts, remove it{hint}"
                )
        return env
    if isinstance(env.action_space, gym.spaces.Discrete):
        try:
            return DiscreteTextEnv(env, **_adapter_arguments(cfg, int(env.action_space.n)))
        except ValueError as exc:
            raise ConfigError(f"key 'env.adapter': {exc}") from None
    raise ConfigError(
        f"key 'env.id' = '{cfg.id}': action space {env.action_space} is neither Text nor Discrete; "
        "rlft needs a text env or a Discrete env it can adapt"
    )


def _adapter_arguments(cfg: EnvConfig, n_actions: int) -> dict[str, Any]:
    """`DiscreteTextEnv` keyword arguments from `env.adapter` and `env.expert` (entry points imported)."""
    adapter = cfg.adapter or AdapterConfig()
    arguments: dict[str, Any] = {
        "action_names": adapter.action_names or [f"action{i}" for i in range(n_actions)],
        "instructions": adapter.instructions,
        "invalid_action": adapter.invalid_action,
        "invalid_penalty": adapter.invalid_penalty,
        "expert_method": adapter.expert_method,
    }
    for field, argument in ADAPTER_FUNCTIONS.items():
        spec = getattr(adapter, field)
        arguments[argument] = import_entry_point(spec, f"env.adapter.{field}") if spec else None
    # The user's renderer and parser, checked where they return: an error names the function and its file:line.
    if arguments["renderer"] is not None:
        arguments["renderer"] = CheckedRenderer(arguments["renderer"])
    if arguments["parser"] is not None:
        arguments["parser"] = CheckedParser(arguments["parser"], arguments["action_names"])
    arguments["expert"] = import_entry_point(cfg.expert, "env.expert") if cfg.expert else None
    return arguments


def make_envs(cfg: EnvConfig, n: int) -> list[gym.Env]:
    return [make_env(cfg) for _ in range(n)]
