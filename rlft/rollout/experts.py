"""The configured env's expert, checked before anything runs, with errors in the config's terms.

`envs.experts.expert_for` finds an env's expert (the user's function or method behind the adapter, the
user's `make_expert`, value iteration on a transition table); `rlft.rollout.env_factory.make_env` hands the
adapter what `env.expert` and `env.adapter.expert_method` name. This module asks for the expert once, on a
freshly reset env, so a config that needs one and has none (or one that answers with no action) fails with
exit 2 before any model loads, naming the ways to give the env an expert.
"""

from __future__ import annotations

from collections.abc import Iterable

from envs.experts import ExpertActionError, NoExpertError, expert_for
from envs.optimum import ReferenceReturns, reference_returns
from rlft.config.schema import Config, EnvConfig, ExpertDemos
from rlft.errors import ConfigError
from rlft.rollout.env_factory import make_env

EXPERT_OPTIONS = (
    "give the env an expert: env.expert: 'module:function' (env, observation) -> action id or action "
    "name; env.adapter.expert_method: the name of the env's expert method (e.g. expert_action); a "
    "make_expert(epsilon, seed) method on the env whose expert's act(env) returns an action id or name; "
    "or a tabular transition table P (value iteration)"
)


def expert_key(cfg: EnvConfig) -> str:
    """The config key that names the env's expert, for errors about what it returned."""
    if cfg.expert is not None:
        return "env.expert"
    if cfg.adapter is not None and cfg.adapter.expert_method is not None:
        return "env.adapter.expert_method"
    return "env.id"


def check_expert(cfg: EnvConfig, needed_by: str, instead: str) -> None:
    """Fail now if the env has no expert, or if its first answer (after one reset) names no action.

    Args:
        cfg: the env section.
        needed_by: what asks for the expert, e.g. "key 'sft.demos.source' = 'expert'".
        instead: the closest valid choice that needs no expert, e.g. "sft.demos: {source: jsonl, path: ...}".

    Raises:
        ConfigError: naming `needed_by`, the ways to give the env an expert and `instead`.
    """
    env = make_env(cfg)
    try:
        expert = expert_for(env, epsilon=0.0, seed=0)
        env.reset(seed=cfg.train_seeds.start)
        expert.act(env)
    except NoExpertError as exc:
        raise ConfigError(
            f"{needed_by} needs the env's expert, and {cfg.id} has none ({exc}); {EXPERT_OPTIONS}; "
            f"or use {instead}"
        ) from None
    except ExpertActionError as exc:
        raise ConfigError(f"key '{expert_key(cfg)}': {exc}") from None
    finally:
        env.close()


def expert_demos_needed(config: Config, runs_sft: bool = False) -> bool:
    """SFT's demos come from the expert: the config asks for them, or a command that runs SFT (`rlft sft`,
    `rlft pipeline`) finds `sft.demos` unset, whose default source is the expert.

    A config that never runs SFT (`rl.init_from` is `base` or a checkpoint) needs no expert, so `rlft validate`
    and `rlft train` do not ask for one then, even when `sft.demos` names the expert (a saved config spells out
    every default).
    """
    if not isinstance(config.sft.demos, ExpertDemos):
        return False
    return runs_sft or ("demos" in config.sft.model_fields_set and config.rl.init_from == "sft")


def check_expert_demos(config: Config, runs_sft: bool = False) -> None:
    """`check_expert` for a config whose SFT demos are the expert's (see `expert_demos_needed`)."""
    if not expert_demos_needed(config, runs_sft):
        return
    asked = "demos" in config.sft.model_fields_set
    needed_by = "key 'sft.demos.source' = 'expert'" if asked else "SFT (sft.demos unset: source expert)"
    check_expert(
        config.env,
        needed_by,
        "sft.demos: {source: jsonl, path: demos.jsonl} (e.g. written by `rlft demos --policy CHECKPOINT`)",
    )


def env_reference_returns(cfg: EnvConfig, seeds: Iterable[int] | None = None) -> ReferenceReturns:
    """The optimum's and a uniformly random policy's expected return for the configured env and turn limit.

    The turn limit is `env.max_turns`, capped by the env's own time limit (its registration's
    `max_episode_steps`), as the rollout engine plays it. What a results table normalises by:
    `(R - R_random) / (R_optimal - R_random)`; on FrozenLake the optimum's return is its success probability.

    Args:
        cfg: the env section.
        seeds: reset seeds whose tasks are averaged (random maps: the held-out seeds); default the first
            training seed (one task for a fixed map, Taxi, CliffWalking).

    Raises:
        envs.experts.NoExpertError: the env exposes no transition table P.
    """
    env = make_env(cfg)
    try:
        return reference_returns(
            env, _turn_limit(env, cfg.max_turns), [cfg.train_seeds.start] if seeds is None else seeds
        )
    finally:
        env.close()


def _turn_limit(env, max_turns: int) -> int:
    """`max_turns`, capped by a time limit of the text env's registration or of the env the adapter wraps."""
    inner = getattr(env.unwrapped, "inner", None)
    limits = [getattr(e.spec, "max_episode_steps", None) for e in (env, inner) if e is not None and e.spec]
    return min([max_turns, *(limit for limit in limits if limit)])
