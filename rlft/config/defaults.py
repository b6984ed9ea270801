"""Every default rlft applies to TRL's config classes, in one place.

A stage's TRL config is built (rlft.config.trainer_args.build_trainer_config) from, lowest first:

    base_defaults()                      every stage: small-model friendly, bf16 only where the hardware has it
    sft_defaults / rl_defaults / rm_defaults   the stage's own (RL: common keys, then the algorithm's overrides)
    the user's `sft.trainer` / `rl.trainer` / `rm.trainer` keys
    output_dir and seed                  always the run's

TRL's own defaults fill every key named nowhere above. What a stage actually used is written to
`runs/<name>/resolved/<stage>.yaml` (rlft/config/resolved.py).
"""

from __future__ import annotations

from typing import Any

import torch

from rlft.config.schema import Config, ModelConfig

SFT_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 16,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
}
RL_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "num_generations": 8,
    "per_device_train_batch_size": 32,
    "max_steps": 50,
    "lr_scheduler_type": "constant",
    "beta": 0.0,
    "loss_type": "dapo",
    # A complete checkpoint every 10 steps, the last 2 kept (`rlft train --resume` continues from it).
    "save_strategy": "steps",
    "save_steps": 10,
    "save_total_limit": 2,
}
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {},
    # One episode per seed (the critic is the baseline); 2 epochs x 2 minibatches per rollout batch.
    "ppo": {"num_generations": 1, "num_iterations": 2, "steps_per_generation": 2},
}
# center_rewards_coefficient 0.01 (Eisenstein et al., 2023, eq. 2) so that ensemble members agree on where zero is.
RM_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 16,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "center_rewards_coefficient": 0.01,
}
# The embedded tiny model starts from random weights and learns at the SFT stage's rate; a pretrained one keeps
# TRL's 1e-4.
TINY_RM_LEARNING_RATE = 1e-3


def base_defaults() -> dict[str, Any]:
    """rlft's defaults for every TRL stage: small-model friendly, bf16 only where the hardware has it."""
    cuda = torch.cuda.is_available()
    return {
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",  # rlft's own callbacks write metrics.jsonl and wandb (failure-safe)
        "disable_tqdm": False,
        "dataloader_num_workers": 0,
        "use_cpu": not cuda,
    }


def tracking_defaults(config: Config, stage: str) -> dict[str, Any]:
    """TRL settings for its `report_to` integrations: the run's name and project (trackio)."""
    return {"run_name": f"{config.name}-{stage}", "project": config.tracking.wandb.project}


def sft_defaults(config: Config) -> dict[str, Any]:
    """`trl.SFTConfig` defaults of the sft stage."""
    return {**SFT_DEFAULTS, **tracking_defaults(config, "sft")}


def rl_defaults(config: Config) -> dict[str, Any]:
    """`trl.GRPOConfig` / `PPOConfig` defaults of the rl stage: common, from the rollout, then the algorithm's.

    TRL scores completions at `temperature` / `top_p`, so they must be the rollout's (which sampled them);
    the completion budget is the whole episode's (prompt + turns + observations) token cap.
    """
    rollout = config.rollout
    return {
        **RL_DEFAULTS,
        "max_completion_length": rollout.max_episode_tokens,
        "temperature": rollout.temperature,
        "top_p": rollout.top_p,
        **tracking_defaults(config, "rl"),
        **ALGORITHM_DEFAULTS.get(config.rl.algorithm, {}),
    }


def rm_defaults(model_cfg: ModelConfig) -> dict[str, Any]:
    """`trl.RewardConfig` defaults of a reward model with this model section (the tiny one learns faster)."""
    return {**RM_DEFAULTS, **({"learning_rate": TINY_RM_LEARNING_RATE} if model_cfg.tiny is not None else {})}
