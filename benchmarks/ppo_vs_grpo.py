"""PPO against GRPO: env steps to reach 90% of the expert's held-out success, over several seeds.

For each seed, SFT runs once (in the first config's run directory) and both algorithms start from that same
SFT checkpoint, so each seed is a paired comparison. During RL the policy is evaluated on held-out seeds
every `--every` optimizer steps; the env steps consumed when held-out success first reaches
`--target` x the expert's success (on the same held-out seeds) is that run's cost. A run that never gets
there is reported as not reached ("-") with the steps it used.

    python benchmarks/ppo_vs_grpo.py --configs configs/frozen_lake_4x4_slippery_ppo.yaml \\
        configs/frozen_lake_4x4_slippery_grpo.yaml --seeds 0 1 2 --out runs/bench_slippery

Prints a markdown table per run and a summary (mean and standard deviation across seeds) per algorithm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def steps_to_target(curve: list[dict], target: float) -> float | None:
    """Env steps at the first evaluation whose success reaches `target` (None if none does)."""
    for point in curve:
        if point["eval/success"] >= target:
            return point["episode/env_steps_total"]
    return None


def held_out_curve(run_dir: Path) -> list[dict]:
    from rlft.runtime.tracking import read_metrics

    return [r for r in read_metrics(run_dir) if r.get("stage") == "rl" and "eval/success" in r]


def run_one(config_path: str, seed: int, out: Path, every: int, sft_from: Path | None, overrides: list[str]):
    from rlft import stages
    from rlft.config.schema import load_config

    name = Path(config_path).stem + f"_s{seed}"
    items = [
        f"name={name}",
        f"output_dir={out}",
        f"seed={seed}",
        f"eval.every_steps={every}",
        "tracking.wandb.enabled=false",
        *overrides,
    ]
    if sft_from is not None:
        items.append(f"rl.init_from={sft_from}")
    config = load_config(config_path, items)
    t0 = time.perf_counter()
    if sft_from is None:
        stages.run_sft(config)
    t_sft = time.perf_counter()
    stages.run_rl(config)
    t_rl = time.perf_counter()
    return config, t_sft - t0, t_rl - t_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", required=True, help="one YAML per algorithm (same env and SFT)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=4, help="held-out evaluation every N optimizer steps")
    parser.add_argument("--target", type=float, default=0.9, help="fraction of the expert's success to reach")
    parser.add_argument("--out", default="runs/bench_ppo_vs_grpo")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides applied to every run")
    args = parser.parse_args()

    from rlft.config.schema import load_config
    from rlft.rollout.evaluation import evaluate_expert, held_out_seeds
    from rlft.stages.common import env_factory

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = load_config(args.configs[0], args.set)
    seeds = held_out_seeds(env_factory(first), first.env, first.eval)[: first.eval.during_episodes]
    expert = evaluate_expert(env_factory(first), seeds, first.env.max_turns)["success"]
    target = args.target * expert
    rows = []
    for seed in args.seeds:
        sft_path = None
        for config_path in args.configs:
            config, t_sft, t_rl = run_one(config_path, seed, out, args.every, sft_path, args.set)
            if sft_path is None:
                sft_path = config.run_dir / "checkpoints" / "sft"
            curve = held_out_curve(config.run_dir)
            rows.append(
                {
                    "algorithm": config.rl.algorithm,
                    "config": config_path,
                    "seed": seed,
                    "sft_success": curve[0]["eval/success"] if curve else None,
                    "final_success": curve[-1]["eval/success"] if curve else None,
                    "best_success": max((p["eval/success"] for p in curve), default=None),
                    "env_steps_to_target": steps_to_target(curve, target),
                    "env_steps_total": curve[-1]["episode/env_steps_total"] if curve else None,
                    "rl_seconds": round(t_rl, 1),
                    "sft_seconds": round(t_sft, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(
        json.dumps(
            {"expert_success": expert, "target": target, "held_out_episodes": len(seeds), "runs": rows},
            indent=2,
        )
    )
    print(
        f"\nexpert success on {len(seeds)} held-out seeds: {expert:.3f}; target {args.target:.0%} = {target:.3f}"
    )
    print("| algorithm | seed | SFT success | best | final | env steps to target | env steps used | RL s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        reached = "-" if r["env_steps_to_target"] is None else f"{r['env_steps_to_target']:.0f}"
        print(
            f"| {r['algorithm']} | {r['seed']} | {r['sft_success']:.3f} | {r['best_success']:.3f} | "
            f"{r['final_success']:.3f} | {reached} | {r['env_steps_total']:.0f} | {r['rl_seconds']:.0f} |"
        )
    print(
        "\n| algorithm | runs reaching target | env steps to target, mean ± sd (reached runs) | final success, mean ± sd |"
    )
    print("|---|---|---|---|")
    for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
        mine = [r for r in rows if r["algorithm"] == algorithm]
        reached = [r["env_steps_to_target"] for r in mine if r["env_steps_to_target"] is not None]
        finals = [r["final_success"] for r in mine]
        steps = (
            f"{statistics.mean(reached):.0f} ± {statistics.stdev(reached):.0f}"
            if len(reached) > 1
            else (f"{reached[0]:.0f}" if reached else "-")
        )
        print(
            f"| {algorithm} | {len(reached)}/{len(mine)} | {steps} | "
            f"{statistics.mean(finals):.3f} ± {statistics.stdev(finals) if len(finals) > 1 else 0:.3f} |"
        )


if __name__ == "__main__":
    main()
