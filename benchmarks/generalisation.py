"""Generalisation benchmark (issue 14, item 4): held-out success against the number of distinct training tasks.

Random 5x5 FrozenLake maps (4x4 has only about 1,700 distinct maps: 10,000 training seeds would leave few unseen
ones to test on). Every cell starts from one shared SFT checkpoint (300 expert demos, epsilon 0.3, on maps of a
seed range of their own, 5,000,000 on) and runs GRPO with env.train_seeds.count in {10, 100, 1000, 10000} for a
fixed budget; during RL every evaluation plays as many training tasks as validation tasks (eval.train_tasks), so
each cell records training-task success, held-out (validation) success and their gap as curves; after RL,
`rlft eval` plays 200 test maps never in the training range (greedy and sampled).

The RL budget bounds the tasks a run can see: `--rl-steps` x 8 maps per step (32 episodes, 4 per map). With the
default 100 steps a run sees at most 800 distinct maps, so 1,000 and 10,000 differ only in which maps come up;
each cell records the distinct maps it trained on (its sampling order, as rlft.stages.generalisation computes it).

Budget (2 CPU cores): SFT once, about 5 minutes; a cell GRPO 100 steps x 32 episodes with an evaluation every 20
steps (50 + 50 episodes, greedy and sampled) + `rlft eval`, about 10-15 minutes: 4 cells per seed. One seed by
default.

    nice -n 15 .venv/bin/python benchmarks/generalisation.py                 # every cell, resumable
    nice -n 15 .venv/bin/python benchmarks/generalisation.py --seeds 3       # seeds 0, 1, 2
    .venv/bin/python benchmarks/generalisation.py --table-only               # the table from finished cells
    nice -n 15 .venv/bin/python benchmarks/generalisation.py --smoke         # tiny budgets, one cell

Results: benchmarks/results/generalisation/<cell>.json (generalisation_smoke/ for --smoke). The smoke run took about
20 minutes on the 2 shared cores at a load average of 15; far less on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from adaptation import commit_id, merged
from cell_runs import CellStore, curve, fresh, held_out, mean_sd, rlft

from rlft.config.schema import load_config
from rlft.rollout.env_factory import make_env
from rlft.stages.generalisation import train_task_seeds

COUNTS = (10, 100, 1000, 10_000)
SFT_SEED_START = (
    5_000_000  # the SFT demos' maps: apart from every cell's training range (0 ..) and the eval seeds
)
PROMPTS_PER_STEP = 8

BASE: dict[str, Any] = {
    "seed": 0,
    "model": {"tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 256}},
    "env": {
        "id": "rlft/FrozenLakeRandom-v0",
        "kwargs": {"random_map_size": 5, "is_slippery": False},
        "max_turns": 16,
        "train_seeds": {"start": 0, "count": 1000},
    },
    "rollout": {"num_envs": 32, "max_action_tokens": 3},
    "sft": {
        "demos": {"source": "expert", "episodes": 300, "epsilon": 0.3},
        "trainer": {"num_train_epochs": 8},
    },
    "rl": {
        "algorithm": "grpo",
        "trainer": {
            "learning_rate": 5e-4,
            "num_generations": 4,
            "per_device_train_batch_size": 4 * PROMPTS_PER_STEP,
            "max_steps": 100,
        },
    },
    "eval": {"episodes": 200, "greedy": True, "every_steps": 20, "during_episodes": 50},
    "tracking": {"wandb": {"enabled": False}},
}
SMOKE = {
    "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}},
    "rollout": {"num_envs": 8, "max_action_tokens": 3},
    "sft": {"demos": {"source": "expert", "episodes": 8, "epsilon": 0.3}, "trainer": {"num_train_epochs": 1}},
    "rl": {"trainer": {"num_generations": 2, "per_device_train_batch_size": 4, "max_steps": 2}},
    "eval": {"episodes": 8, "every_steps": 1, "during_episodes": 4, "batch_size": 8},
}


class Generalisation:
    def __init__(self, smoke: bool, rl_steps: int):
        self.smoke = smoke
        self.store = CellStore("generalisation_smoke" if smoke else "generalisation")
        self.base = (
            merged(BASE, SMOKE) if smoke else merged(BASE, {"rl": {"trainer": {"max_steps": rl_steps}}})
        )

    def start(self) -> Path:
        """The shared SFT checkpoint (its demos on maps from SFT_SEED_START), trained once."""
        policy = self.store.runs / "sft_start" / "checkpoints" / "sft"
        if not (policy / "config.json").is_file():
            fresh(policy.parents[1])
            demos_range = {"env": {"train_seeds": {"start": SFT_SEED_START, "count": 100_000}}}
            rlft("sft", self.store.config("sft_start", merged(self.base, demos_range)))
        return policy

    def run_cell(self, count: int, seed: int) -> dict[str, Any]:
        name = cell_name(count, seed)
        fresh(self.store.runs / name)
        model = {"model": {"tiny": None, "name_or_path": str(self.start())}}
        tasks = {
            "seed": seed,
            "env": {"train_seeds": {"start": 0, "count": count}},
            "rl": {"init_from": "base"},
        }
        config = self.store.config(name, merged(self.base, model, tasks))
        wall = rlft("train", config) + rlft("eval", config)
        run = self.store.runs / name
        points = curve(run)
        return {
            "train_tasks": count,
            "seed": seed,
            "smoke": self.smoke,
            "distinct_maps_trained": distinct_maps_trained(config),
            "held_out": held_out(run),
            "final_train_success": points[-1].get("train_success"),
            "final_val_success": points[-1]["val_success"],
            "curve": points,
            "wall_s": round(wall, 1),
            "commit": commit_id(),
        }


def distinct_maps_trained(path: Path) -> int:
    """Distinct maps among the seeds the run's sampler drew (steps x prompts per step, in its epoch-0 order)."""
    config = load_config(path)
    trainer = config.rl.trainer
    prompts = trainer["max_steps"] * trainer["per_device_train_batch_size"] // trainer["num_generations"]
    env = make_env(config.env)
    maps = {env.reset(seed=s)[1]["task_id"] for s in set(train_task_seeds(config, prompts))}
    env.close()
    return len(maps)


def cell_name(count: int, seed: int) -> str:
    return f"tasks{count}_s{seed}"


def column(records: list[dict[str, Any]], key: str, sub: str | None = None) -> str:
    """mean ± sd over the records of `record[key]` (or `record[key][sub]`), those that have it."""
    values = [r[key][sub] if sub else r[key] for r in records if r[key] is not None]
    return mean_sd(values, digits=0 if all(isinstance(v, int) for v in values) else 3)


def table(store: CellStore, seeds: int, smoke: bool) -> str:
    """Per training-task count: maps trained on, final training-task and held-out success, the gap."""
    lines = [
        "| training tasks | maps trained on | train success (last eval) | validation success (last eval) | "
        "test success, greedy | test success, sampled |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    missing = []
    for count in COUNTS[:1] if smoke else COUNTS:
        records = [store.load(cell_name(count, s)) for s in range(seeds)]
        missing += [cell_name(count, s) for s, r in zip(range(seeds), records) if r is None]
        done = [r for r in records if r is not None]
        lines.append(
            f"| {count} | {column(done, 'distinct_maps_trained')} | {column(done, 'final_train_success')} | "
            f"{column(done, 'final_val_success')} | {column(done, 'held_out', 'greedy')} | "
            f"{column(done, 'held_out', 'sampled')} |"
        )
    if missing:
        lines.append(f"\nmissing cells ({len(missing)}): {', '.join(missing)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 of every cell (default 1)")
    parser.add_argument(
        "--rl-steps", type=int, default=100, help="GRPO steps per cell (8 maps each; default 100)"
    )
    parser.add_argument(
        "--table-only", action="store_true", help="print the table of finished cells, run nothing"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny budgets, one cell (results under *_smoke/)"
    )
    args = parser.parse_args(argv)
    bench = Generalisation(args.smoke, args.rl_steps)
    if not args.table_only:
        for count in COUNTS[:1] if args.smoke else COUNTS:
            for seed in range(1 if args.smoke else args.seeds):
                name = cell_name(count, seed)
                if bench.store.done(name):
                    continue
                print(f"cell {name} ...", flush=True)
                bench.store.save(name, bench.run_cell(count, seed))
    print(table(bench.store, 1 if args.smoke else args.seeds, args.smoke))
    return 0


if __name__ == "__main__":
    sys.exit(main())
