"""One rank of tests/test_accelerate.py: a tiny sft -> GRPO -> eval run and a PPO run, through `rlft.stages.common`.

    accelerate launch --cpu --num_processes 2 -m tests.accelerate_worker OUTPUT_DIR

Every rank writes `OUTPUT_DIR/ranks/<algorithm>/rank<i>.json`: a sha256 of every parameter of its policy (PPO: critic
included) before and after RL, and what it played itself in each rollout (seeds, turns, returns), so the test
can check that the replicas agree and that the logged metrics are the whole job's; and `OUTPUT_DIR/ranks/eval/rank<i>.json`,
what `run_eval` returned there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch

from tests.conftest import tiny_config

TRAINERS = {  # small batches, a few optimizer steps; lr high enough that every parameter moves
    # with a KL term to the reference (TRL's, under DDP too), so a step whose groups all tie still moves
    "grpo": {
        "max_steps": 3,
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "beta": 0.04,
    },
    # 2 rollout batches of 2 x 2 episodes per rank, one optimizer step per minibatch
    "ppo": {
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "steps_per_generation": 2,
        "num_iterations": 1,
        "learning_rate": 1e-3,
    },
}


def make_config(output_dir: Path, algorithm: str, init_from: str):
    # CliffWalking with a penalty for unparsable actions, from a briefly SFT-ed policy: returns differ within
    # a GRPO group at every step, so advantages (and gradients) are non-zero.
    return tiny_config(
        "rlft/CliffWalking-v0",
        name=algorithm,
        output_dir=str(output_dir),
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 8},
        sft={
            "demos": {"source": "expert", "episodes": 8, "epsilon": 0.2},
            "trainer": {"num_train_epochs": 8, "per_device_train_batch_size": 4, "learning_rate": 5e-3},
            # 8 steps (both ranks' 8 demos a step): validation at steps 4 and 8, the best one kept
            "eval_every_steps": 4,
            "keep_best": True,
        },
        rl={"algorithm": algorithm, "init_from": init_from, "trainer": TRAINERS[algorithm]},
        rollout={"num_envs": 4, "max_action_tokens": 3},
        # the held-out eval during RL runs on the main process only, while the other rank waits
        eval={"episodes": 4, "batch_size": 4, "every_steps": 2, "during_episodes": 4},
    )


def parameter_hashes(model: torch.nn.Module) -> dict[str, str]:
    return {
        name: hashlib.sha256(p.detach().cpu().float().numpy().tobytes()).hexdigest()
        for name, p in model.named_parameters()
    }


def write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")


def train(config, rank_file: Path) -> None:
    """`stages.run_rl`, with the trainer's builder wrapped to record the parameters and each rollout."""
    from rlft import stages
    from rlft.algorithms import registry

    entry = registry.ALGORITHMS[config.rl.algorithm]
    record: dict = {"rollouts": []}

    def recording_build(*args, **kwargs):
        trainer, rollout = entry.build(*args, **kwargs)
        record["trainer"], record["init"] = trainer, parameter_hashes(trainer.model)

        def recorded(batch):  # every RolloutBatch the rollout builds (GRPO and PPO alike)
            record["rollouts"].append(
                {
                    "seeds": batch.seeds,
                    "turns": [e.num_turns for e in batch.episodes],
                    "returns": [e.episode_return for e in batch.episodes],
                    "env_steps_total": rollout.env_steps,
                }
            )

        rollout.add_listener(recorded)
        return trainer, rollout

    registry.ALGORITHMS[config.rl.algorithm] = dataclasses.replace(entry, build=recording_build)
    try:
        stages.run_rl(config)
    finally:
        registry.ALGORITHMS[config.rl.algorithm] = entry
    trainer = record.pop("trainer")
    state = trainer.accelerator.state
    write(
        rank_file,
        {
            "rank": state.process_index,
            "world_size": state.num_processes,
            "final": parameter_hashes(trainer.accelerator.unwrap_model(trainer.model)),
            **record,
        },
    )


def main(argv: list[str]) -> int:
    from rlft import stages
    from rlft.runtime.distributed import process_state
    from rlft.stages import common as stage_common

    torch.set_num_threads(1)  # two ranks share two cores
    output_dir = Path(argv[0])
    rank = process_state().process_index
    grpo = make_config(output_dir, "grpo", init_from="sft")
    stages.run_sft(grpo)
    train(grpo, output_dir / "ranks" / "grpo" / f"rank{rank}.json")
    write(output_dir / "ranks" / "eval" / f"rank{rank}.json", stages.run_eval(grpo))
    ppo = make_config(output_dir, "ppo", init_from=str(stage_common.checkpoint_dir(grpo, "sft")))
    train(ppo, output_dir / "ranks" / "ppo" / f"rank{rank}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
