"""The RL algorithms rlft can train with, by the name `rl.algorithm` gives.

Each entry pairs the trainer's config class (what `rl.trainer` keys are checked against and built into) with a
builder, `build(model, tokenizer, args, engine, train_seeds, batch_size, callbacks=..., max_nonfinite_steps=...)
-> (trainer, EpisodeRollout)`. Adding an algorithm (RLOO, REINFORCE++, ...) is one new module with its config
class and builder, one entry here, and its name in `rlft.config.sections.ALGORITHMS` (the config layer cannot
import this module; tests/test_algorithm_registry.py checks the two agree). Its trainer defaults, if any, go to
`ALGORITHM_DEFAULTS` in rlft/config/defaults.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trl import GRPOConfig

from rlft.algorithms.gigpo import build_gigpo_trainer
from rlft.algorithms.gigpo_config import GiGPOConfig
from rlft.algorithms.grpo import build_grpo_trainer
from rlft.algorithms.ppo import build_ppo_trainer
from rlft.algorithms.ppo_config import PPOConfig
from rlft.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm: its name, its trainer config class, and the builder of its trainer."""

    name: str
    config_class: type
    build: Callable
    summary: str = ""


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("grpo", GRPOConfig, build_grpo_trainer, "TRL's GRPOTrainer as it is (group baseline)"),
        Algorithm("ppo", PPOConfig, build_ppo_trainer, "PPO with a critic and GAE, on rlft's loss"),
        Algorithm(
            "gigpo",
            GiGPOConfig,
            build_gigpo_trainer,
            "GRPO plus step-level credit from step groups (no critic)",
        ),
    )
}


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm called `name`; a ConfigError naming the registered ones otherwise."""
    if name not in ALGORITHMS:
        raise ConfigError(
            f"rl.algorithm = {name!r}: not a registered algorithm{did_you_mean(name, ALGORITHMS)}"
        )
    return ALGORITHMS[name]
