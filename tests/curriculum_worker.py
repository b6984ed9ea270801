"""One rank of tests/test_curriculum.py's two-process run: GRPO with `rl.curriculum.strategy: plr`.

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m tests.curriculum_worker OUTPUT_DIR

3 episodes per rank in groups of 2, so one group of each generation batch is split between the ranks. Every rank
writes `OUTPUT_DIR/rank<i>.json`: the seeds it played in each rollout and its curriculum's state after each
update, which the test compares across ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rlft import stages
from rlft.algorithms.grpo import EpisodeRollout
from rlft.runtime.distributed import process_state
from tests.conftest import tiny_config


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)  # two ranks share two cores
    output_dir = Path(argv[0])
    config = tiny_config(
        "rlft/CliffWalking-v0",
        output_dir=str(output_dir),
        name="plr",
        env={"kwargs": {"invalid_penalty": -0.5}, "max_turns": 3, "train_seeds": {"start": 0, "count": 30}},
        rl={
            "algorithm": "grpo",
            "init_from": "base",
            "trainer": {"max_steps": 3, "num_generations": 2, "per_device_train_batch_size": 3},
            "curriculum": {"strategy": "plr", "replay_prob": 0.7, "staleness_coef": 0.3},
        },
        rollout={"num_envs": 3},
    )
    record: dict[str, list] = {"played": [], "states": []}
    task_seeds, observe_scored = EpisodeRollout.task_seeds, EpisodeRollout.observe_scored

    def recorded_seeds(self, prompts, trainer):
        seeds = task_seeds(self, prompts, trainer)
        record["played"].append(seeds)
        return seeds

    def recorded_scores(self, trainer, scored, batch):
        observe_scored(self, trainer, scored, batch)
        record["states"].append(self.curriculum.state_dict())

    EpisodeRollout.task_seeds, EpisodeRollout.observe_scored = recorded_seeds, recorded_scores
    stages.run_rl(config)
    rank = process_state().process_index
    (output_dir / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
