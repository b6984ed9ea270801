"""One rank of tests/test_multiprocess_rl.py: a tiny RL run under `accelerate launch` (DDP or FSDP2, 2 CPU processes).

    accelerate launch --config_file configs/accelerate/cpu_2proc_fsdp.yaml -m tests.multiprocess_worker \\
        MODE OUTPUT_DIR ALGORITHM [STOP_STEP]

MODE is `train` (a fresh run to max_steps), `both` (a short GRPO run, then a short PPO run, in one launch:
the fast test), `stop` (a fresh run whose every rank ends the process with
`os._exit` right after the checkpoint of STOP_STEP is complete: a kill at a step, no cleanup) or `resume`
(`--resume` from the newest complete checkpoint). `train` and `resume` write `OUTPUT_DIR/ranks/rank<i>.json`: a
sha256 of every parameter of the trained module (policy and PPO critic, as whole tensors: under FSDP2 the shards
are gathered) before and after training, the same of the generation copy's weights at the end, and the copy's size
(`both`: `OUTPUT_DIR/ranks/<algorithm>/rank<i>.json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import TrainerCallback

from tests.conftest import tiny_config

TRAINERS = {  # a few optimizer steps, a checkpoint after each; lr high enough that every parameter moves
    # 2 seeds x 2 generations per rank and step; a KL term, so a step whose groups all tie still moves
    "grpo": {"num_generations": 2, "per_device_train_batch_size": 4, "beta": 0.04},
    # one rollout batch of 2 x 2 episodes per rank serves 2 minibatches (a checkpoint between them holds the
    # unconsumed one), then a fresh rollout
    "ppo": {"per_device_train_batch_size": 2, "steps_per_generation": 2, "kl_coef": 0.05},
}


def make_config(output_dir: Path, algorithm: str, max_steps: int = 4, save_steps: int = 1):
    # CliffWalking with a penalty for unparsable actions: returns differ within a group at every step.
    trainer = {
        **TRAINERS[algorithm],
        "max_steps": max_steps,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": save_steps,
        "save_total_limit": 2,
    }
    return tiny_config(
        "rlft/CliffWalking-v0",
        name=algorithm,
        output_dir=str(output_dir),
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 6, "train_seeds": {"start": 0, "count": 8}},
        rl={"algorithm": algorithm, "init_from": "base", "trainer": trainer},
        rollout={"num_envs": 4, "max_action_tokens": 3},
    )


def full_hashes(module: torch.nn.Module) -> dict[str, str]:
    """sha256 of every parameter as a whole tensor (a collective under FSDP2: every rank calls it)."""
    names = {name for name, _ in module.named_parameters()}
    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    return {
        name: hashlib.sha256(tensor.detach().cpu().float().numpy().tobytes()).hexdigest()
        for name, tensor in full.items()
        if name in names
    }


class ExitAfterSave(TrainerCallback):
    """Ends the process on every rank once the checkpoint of `step` is complete (renamed into place)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os._exit(17)


def run(config, rank_file: Path | None, resume: bool, callbacks: list) -> None:
    """`stages.run_rl`, with the trainer's builder wrapped to record the weights before and after."""
    from rlft import stages
    from rlft.algorithms import registry

    entry = registry.ALGORITHMS[config.rl.algorithm]
    record: dict = {}

    def recording_build(*args, **kwargs):
        trainer, rollout = entry.build(*args, **kwargs)
        record["trainer"], record["init"] = trainer, full_hashes(trainer.model)
        return trainer, rollout

    registry.ALGORITHMS[config.rl.algorithm] = dataclasses.replace(entry, build=recording_build)
    try:
        stages.run_rl(config, resume=resume or None, callbacks=callbacks)
    finally:
        registry.ALGORITHMS[config.rl.algorithm] = entry
    trainer = record.pop("trainer")
    final = full_hashes(trainer.accelerator.unwrap_model(trainer.model))
    copied = trainer.generation_copy
    state = trainer.accelerator.state
    if rank_file is not None:
        rank_file.parent.mkdir(parents=True, exist_ok=True)
        rank_file.write_text(
            json.dumps(
                {
                    "rank": state.process_index,
                    "world_size": state.num_processes,
                    "distributed_type": str(state.distributed_type),
                    "final": final,
                    "copy": None if copied is None else full_hashes(copied.model),
                    "copy_nbytes": None if copied is None else copied.nbytes,
                    **record,
                }
            ),
            encoding="utf-8",
        )


def main(argv: list[str]) -> int:
    from rlft.runtime.distributed import process_state

    torch.set_num_threads(1)  # two ranks share two cores
    mode, output_dir, algorithm = argv[0], Path(argv[1]), argv[2]
    rank = process_state().process_index
    if mode == "both":  # 2 steps each (PPO: one rollout batch, 2 minibatches), the final step checkpointed
        for name in ("grpo", "ppo"):
            config = make_config(output_dir, name, max_steps=2, save_steps=2)
            run(config, output_dir / "ranks" / name / f"rank{rank}.json", resume=False, callbacks=[])
        return 0
    config = make_config(output_dir, algorithm)
    rank_file = output_dir / "ranks" / f"rank{rank}.json"
    if mode == "stop":
        run(config, None, resume=False, callbacks=[ExitAfterSave(int(argv[3]))])
        return 1  # not reached: the callback ends the process
    run(config, rank_file, resume=mode == "resume", callbacks=[])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
