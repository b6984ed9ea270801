"""Which process writes: under `accelerate launch` (or torchrun) every rank runs the same stage code.

Each rank plays its own episodes and trains a replica (DDP) or a shard (FSDP, DeepSpeed) of the policy; only
the main process (global rank 0) writes run files: config.yaml, metrics.jsonl, wandb, checkpoints, eval.json.
A plain `python` / `rlft` run is a world of one process, which is the main one.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from rlft.errors import ConfigError

# transformers' `TrainingArguments.ddp_timeout` default. The first `PartialState` of a launched job creates
# the process group, and with it the timeout of every collective (barriers included): rlft's stages create
# it before the trainer does, so they pass the trainer's timeout, not torch's shorter NCCL default (10 min).
DEFAULT_TIMEOUT_S = 1800


def process_state(timeout_s: int | None = None) -> Any:
    """accelerate's `PartialState` (a singleton): process index, main process, barriers.

    Built as the trainers will build it (`use_cpu` where there is no CUDA device, or under `--cpu`): a
    `PartialState()` without `cpu=True` on a CPU-only launch would be a world of one process on every rank.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, parse_flag_from_env

    cpu = cpu_only() or parse_flag_from_env("ACCELERATE_USE_CPU")
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s or DEFAULT_TIMEOUT_S))
    if (
        cpu
        and state.distributed_type == DistributedType.MULTI_CPU
        and parse_flag_from_env("ACCELERATE_USE_FSDP")
    ):
        # accelerate turns an FSDP launch into FSDP only for accelerator devices: on CPUs (MULTI_CPU, gloo) it
        # would silently train DDP replicas. Marking the (singleton) process state as a multi-device one, its
        # device left on the CPU, makes the AcceleratorState the trainers build honour the launch's FSDP
        # settings, so a CPU job shards as a GPU job would (torch's fully_shard runs on gloo): what
        # tests/test_multiprocess_rl.py runs. Set before any AcceleratorState exists (the stages call this first).
        state._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return state


def cpu_only() -> bool:
    """No CUDA device: the trainers run with `use_cpu` (rlft.config.defaults.base_defaults sets it so too)."""
    return not torch.cuda.is_available()


def load_location(device: torch.device) -> torch.device | str:
    """Where `torch.load` puts what this rank saved: `device`, except that the ranks of a CPU launch have an
    indexed CPU device (accelerate's "cpu:0"), which `torch.load` cannot restore to."""
    return "cpu" if device.type == "cpu" else device


def is_main_process() -> bool:
    return process_state().is_main_process


def deepspeed_zero_stage(trainer_deepspeed: Any = None) -> int | None:
    """The DeepSpeed ZeRO stage this process runs under, or None without DeepSpeed.

    From `accelerate launch` (its environment: the config file's `zero_stage`, or the stage of the DeepSpeed JSON
    it names), else from a trainer's own `deepspeed` argument (a JSON path or dict, e.g. `rl.trainer.deepspeed`).
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        if config_file == "none":
            return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))
        trainer_deepspeed = config_file
    if isinstance(trainer_deepspeed, (str, Path)):
        trainer_deepspeed = json.loads(Path(trainer_deepspeed).read_text(encoding="utf-8"))
    if not isinstance(trainer_deepspeed, dict):
        return None
    stage = trainer_deepspeed.get("zero_optimization", {}).get("stage")
    return int(stage) if isinstance(stage, int) else None


def refuse_zero3_rl(trainer_deepspeed: Any = None) -> None:
    """RL under DeepSpeed ZeRO-3 is refused before any model loads (ConfigError, exit 2), naming FSDP2.

    ZeRO-3 shards the weights, and the rollout engine plays with whole weights outside the trainer's forward:
    under FSDP2 rlft keeps a whole-weight copy for it (rlft.algorithms.generation_copy); under ZeRO-3 that is
    not built, and it cannot be tested here (accelerate runs DeepSpeed on accelerator devices only, and
    deepspeed is not installable on the CPU-only CI). SFT and reward-model training are not affected.
    """
    if deepspeed_zero_stage(trainer_deepspeed) == 3:
        raise ConfigError(
            "RL under DeepSpeed ZeRO-3 is not supported: ZeRO-3 shards the weights, and rlft's rollout engine "
            "needs whole weights on every rank. To shard the policy, launch with FSDP2 instead (accelerate "
            "launch --config_file configs/accelerate/fsdp.yaml ...: rlft keeps a whole-weight copy for "
            "generation); to keep ZeRO, use configs/accelerate/deepspeed_zero2.yaml (weights replicated)"
        )


def ddp_timeout_s(config: Any) -> int:
    """The longest `ddp_timeout` the config gives its trainers (seconds), else transformers' default."""
    values = [
        int(section.trainer.get("ddp_timeout", DEFAULT_TIMEOUT_S)) for section in (config.sft, config.rl)
    ]
    return max(values)


def generation_policy(trainer) -> torch.nn.Module:
    """The module the rollout engine and held-out evaluation play with: the trainer's own (unwrapped from
    accelerate), or under FSDP2 the whole-weight copy `trainer.generation_copy` keeps current
    (rlft.algorithms.generation_copy: a sharded forward is a collective, which ranks playing different
    episodes cannot keep in step)."""
    copied = getattr(trainer, "generation_copy", None)
    return copied.model if copied is not None else trainer.accelerator.unwrap_model(trainer.model)


def save_trained(trainer, path: Path) -> Path:
    """Save a trained model (PPO: with its critic in `critic/`, by `PPOTrainer._save`) on every launch.

    `Trainer.save_model` gathers the full weights under FSDP and DeepSpeed ZeRO-3 (a collective: every rank
    calls it) and writes from the main process only; the barrier keeps other ranks from reading a folder
    still being written (the next stage loads it).
    """
    trainer.save_model(str(path))
    if trainer.accelerator.is_main_process:
        # A pickle of the trainer's args (unsafe to load); runs/<name>/resolved/<stage>.yaml records them as YAML.
        (path / "training_args.bin").unlink(missing_ok=True)
    trainer.accelerator.wait_for_everyone()
    return path
