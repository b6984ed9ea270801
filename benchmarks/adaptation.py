"""Adaptation benchmark (issue 14, item 3): does a policy trained on random 4x4 FrozenLake maps adapt faster to new
tasks than the untrained model, given k demonstrations and a fixed RL budget?

Source (trained once, reused by every cell): SFT on 300 expert demos (epsilon 0.3) then GRPO on random 4x4 maps.
Targets: random 5x5 maps, random 6x6 maps (env.kwargs.random_map_size) and slippery random 4x4 maps
(is_slippery). Per target, k in {0, 8, 32, 128} noise-free expert demos (k = 0: no SFT), then the same RL budget;
from the source's checkpoint (sft.init_from / rl.init_from = source/checkpoints/rl) and from the untrained model.
Held-out success: `rlft eval` on 200 test maps never in training (greedy and sampled); curves: validation success
against env steps during RL (eval.every_steps).

The untrained model and the source share one base model (the embedded tiny Qwen2, 4 layers x 128), built with a
vocabulary from slippery 4x4 maps: its word-level tokenizer then covers every target's text (the 4x4-only one would
read the slippery instructions as <unk>, which `rl.init_from` / `sft.init_from` refuse), so both starts read the
targets with the same tokens.

Budget (2 CPU cores): source about 10 minutes; a cell SFT (8 epochs over k demos) + GRPO 30 steps x 32 episodes
(4 maps x 8) + evaluations, about 4-6 minutes: 24 cells per seed, about 2 hours. One seed by default.

    nice -n 15 .venv/bin/python benchmarks/adaptation.py                 # every cell, resumable
    nice -n 15 .venv/bin/python benchmarks/adaptation.py --seeds 3       # seeds 0, 1, 2
    .venv/bin/python benchmarks/adaptation.py --table-only               # the table from finished cells
    nice -n 15 .venv/bin/python benchmarks/adaptation.py --smoke         # tiny budgets, one cell (6 commands)
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/adaptation.py &           # two workers, a core each:
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/adaptation.py --reverse & # they meet in the middle

Results: benchmarks/results/adaptation/<cell>.json (adaptation_smoke/ for --smoke), one per finished cell. The smoke
run took 20 minutes on the 2 shared cores at a load average of 15 (each rlft command pays its imports and config
checks, about a minute there); far less on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from cell_runs import CellStore, commit_id, curve, fresh, held_out, mean_sd, plot_curves, rlft

TARGETS = {
    "random5x5": {"kwargs": {"random_map_size": 5, "is_slippery": False}, "max_turns": 16},
    "random6x6": {"kwargs": {"random_map_size": 6, "is_slippery": False}, "max_turns": 20},
    "slippery4x4": {"kwargs": {"random_map_size": 4, "is_slippery": True}, "max_turns": 16},
}
DEMOS = (0, 8, 32, 128)
STARTS = ("source", "untrained")
SOURCE_ENV = {"kwargs": {"random_map_size": 4, "is_slippery": False}, "max_turns": 12}
VOCAB_ENV = {"kwargs": {"random_map_size": 4, "is_slippery": True}, "max_turns": 12}

BASE: dict[str, Any] = {
    "seed": 0,
    "model": {"tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 256}},
    "env": {"id": "rlft/FrozenLakeRandom-v0", "train_seeds": {"start": 0, "count": 2000}},
    "rollout": {"num_envs": 32, "max_action_tokens": 3},
    "sft": {
        "demos": {"source": "expert", "episodes": 300, "epsilon": 0.3},
        "trainer": {"num_train_epochs": 8},
    },
    "rl": {
        "algorithm": "grpo",
        "trainer": {
            "learning_rate": 5e-4,
            "num_generations": 8,
            "per_device_train_batch_size": 32,
            "max_steps": 30,
        },
    },
    "eval": {"episodes": 200, "greedy": True, "every_steps": 10, "during_episodes": 50, "train_tasks": False},
    "tracking": {"wandb": {"enabled": False}},
}
SOURCE_RL_STEPS = 40
SMOKE = {  # one cell, tiny everything
    "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}},
    "rollout": {"num_envs": 8, "max_action_tokens": 3},
    "sft": {"demos": {"source": "expert", "episodes": 8, "epsilon": 0.3}, "trainer": {"num_train_epochs": 1}},
    "rl": {"trainer": {"num_generations": 2, "per_device_train_batch_size": 4, "max_steps": 2}},
    "eval": {"episodes": 8, "every_steps": 1, "during_episodes": 4, "batch_size": 8, "train_tasks": False},
}


def merged(base: dict[str, Any], *updates: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for update in updates:
        for key, value in update.items():
            out[key] = (
                merged(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
    return out


class Adaptation:
    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.store = CellStore("adaptation_smoke" if smoke else "adaptation")
        self.base = merged(BASE, SMOKE) if smoke else BASE

    def config(self, name: str, env: dict[str, Any], *updates: dict[str, Any]) -> Path:
        return self.store.config(name, merged(self.base, {"env": env}, *updates))

    def vocabulary_base(self) -> Path:
        """The base model both starts share, its vocabulary built on slippery 4x4 maps (see the module doc)."""
        base = self.store.runs / "vocabulary" / "checkpoints" / "base"
        if not (base / "config.json").is_file():
            fresh(base.parents[1])
            one_step = {"sft": {"demos": {"episodes": 1}, "trainer": {"max_steps": 1}}}
            rlft("sft", self.config("vocabulary", VOCAB_ENV, one_step))  # writes checkpoints/base first
        return base

    def source(self) -> Path:
        """SFT + GRPO on random 4x4 maps, trained once (skipped when its checkpoint exists)."""
        policy = self.store.runs / "source" / "checkpoints" / "rl"
        if not (policy / "config.json").is_file():
            fresh(policy.parents[1])
            model = {"model": {"tiny": None, "name_or_path": str(self.vocabulary_base())}}
            steps = {} if self.smoke else {"rl": {"trainer": {"max_steps": SOURCE_RL_STEPS}}}
            config = self.config("source", SOURCE_ENV, model, steps)
            rlft("sft", config)
            rlft("train", config)
        return policy

    def run_cell(self, target: str, k: int, start: str, seed: int) -> dict[str, Any]:
        name = cell_name(target, k, start, seed)
        fresh(self.store.runs / name)
        source = str(self.source())
        model = {"model": {"tiny": None, "name_or_path": str(self.vocabulary_base())}}
        sft = {
            "sft": {
                "init_from": source if start == "source" else "base",
                "demos": {"episodes": max(k, 1), "epsilon": 0.0},
            }
        }
        init = "sft" if k else (source if start == "source" else "base")
        config = self.config(name, TARGETS[target], model, sft, {"seed": seed, "rl": {"init_from": init}})
        wall = rlft("sft", config) if k else 0.0
        wall += rlft("train", config) + rlft("eval", config)
        run = self.store.runs / name
        return {
            "target": target,
            "demos": k,
            "start": start,
            "seed": seed,
            "smoke": self.smoke,
            "held_out": held_out(run),
            "curve": curve(run),
            "wall_s": round(wall, 1),
            "commit": commit_id(),
        }


def cell_name(target: str, k: int, start: str, seed: int) -> str:
    return f"{target}_k{k}_{start}_s{seed}"


def cells(seeds: int, smoke: bool) -> list[tuple[str, int, str, int]]:
    if smoke:
        return [("random5x5", 8, "source", 0)]
    return [(t, k, s, seed) for seed in range(seeds) for t in TARGETS for k in DEMOS for s in STARTS]


def table(store: CellStore, seeds: int, smoke: bool) -> str:
    """Held-out test success (greedy, then sampled; mean ± sd over seeds) per target and k, from the source and
    from the untrained model, and the paired greedy difference."""
    lines = [
        "| target | demos k | from source: greedy | sampled | from untrained: greedy | sampled | source - untrained, greedy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    missing = []
    for target in TARGETS:
        for k in DEMOS:
            greedy, sampled = {}, {}
            for start in STARTS:
                records = [store.load(cell_name(target, k, start, s)) for s in range(seeds)]
                missing += [
                    cell_name(target, k, start, s) for s, r in zip(range(seeds), records) if r is None
                ]
                greedy[start] = [r["held_out"]["greedy"] for r in records if r is not None]
                sampled[start] = [r["held_out"]["sampled"] for r in records if r is not None]
            paired = [a - b for a, b in zip(greedy["source"], greedy["untrained"])]
            lines.append(
                f"| {target} | {k} | {mean_sd(greedy['source'])} | {mean_sd(sampled['source'])} | "
                f"{mean_sd(greedy['untrained'])} | {mean_sd(sampled['untrained'])} | {mean_sd(paired)} |"
            )
    if missing and not smoke:
        lines.append(f"\nmissing cells ({len(missing)}): {', '.join(missing)}")
    return "\n".join(lines)


def curves_figure(store: CellStore, seeds: int) -> Path:
    """benchmarks/results/<name>/curves.png: per target, validation success against env steps for each k and start."""
    panels = {
        target: {
            f"k={k}, from {start}": [
                r["curve"]
                for s in range(seeds)
                if (r := store.load(cell_name(target, k, start, s))) is not None
            ]
            for k in DEMOS
            for start in STARTS
        }
        for target in TARGETS
    }
    return plot_curves(
        store.results / "curves.png", panels, "Adaptation: validation success during GRPO", dashed="untrained"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 of every cell (default 1)")
    parser.add_argument(
        "--table-only", action="store_true", help="print the table of finished cells, run nothing"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny budgets, one cell (results under *_smoke/)"
    )
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="take the cells last first: a second worker beside a first one (each skips cells the other claimed)",
    )
    args = parser.parse_args(argv)
    bench = Adaptation(args.smoke)
    if not args.table_only:
        bench.source()  # trained once, before any worker claims a cell
        todo = cells(args.seeds, args.smoke)
        for target, k, start, seed in reversed(todo) if args.reverse else todo:
            name = cell_name(target, k, start, seed)
            if bench.store.done(name) or not bench.store.claim(name):
                continue
            print(f"cell {name} ...", flush=True)
            try:
                bench.store.save(name, bench.run_cell(target, k, start, seed))
            finally:
                bench.store.release(name)
    print(table(bench.store, args.seeds, args.smoke))
    print(f"curves: {curves_figure(bench.store, args.seeds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
