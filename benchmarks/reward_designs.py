"""Reward designs compared over seeds: held-out gold success after RL, per design, mean and spread; report.html.

For each seed: one SFT policy and one learned reward model (both shared by every design of that seed, so the
designs differ only in their reward), then RL with each design from that SFT policy, then held-out evaluation.
On FrozenLake the env's success is the gold signal. Prints a table, writes `<out>/reward_designs.json` and
`<out>/report.html` (`rlft compare` of the RL runs: curves, IQM with stratified-bootstrap CIs, profiles).

    python benchmarks/reward_designs.py --seeds 0 1 2 --out runs/reward_designs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rlft import stages
from rlft.config.schema import load_config

DESIGNS = {
    "sparse": "configs/reward_designs/frozen_lake_sparse.yaml",
    "shaped": "configs/reward_designs/frozen_lake_shaped.yaml",
    "rm_only": "configs/reward_designs/frozen_lake_rm_only.yaml",
    "env_rm": "configs/reward_designs/frozen_lake_env_rm.yaml",
}


def config_for(design: str, seed: int, out: Path, name: str, extra: list[str]):
    return load_config(
        DESIGNS[design],
        [f"name={name}", f"output_dir={out}", f"seed={seed}", "tracking.wandb.mode=offline", *extra],
    )


def run_seed(seed: int, out: Path, extra: list[str], sft: Path | None = None) -> dict[str, dict]:
    from rlft.stages.rm import run_rm

    shared = config_for("rm_only", seed, out / "shared", f"seed{seed}", extra)
    sft = sft or stages.run_sft(shared)  # the same SFT policy for every design of this seed
    sft_eval = stages.run_eval(shared, policies={"sft": sft}, expert=True)["policies"]
    reward_model = run_rm(shared)
    results = {"sft": sft_eval["sft"], "expert": sft_eval["expert"]}
    for design in DESIGNS:
        overrides = [f"rl.init_from={sft}"]
        if design in ("rm_only", "env_rm"):
            overrides.append(f"reward.components.rm.path={reward_model}")
        config = config_for(design, seed, out, f"{design}-s{seed}", [*extra, *overrides])
        start = time.perf_counter()
        rl = stages.run_rl(config)
        summary = stages.run_eval(config, policies={"rl": rl}, expert=False)["policies"]["rl"]
        results[design] = {**summary, "seconds": time.perf_counter() - start}
        print(f"seed {seed} {design}: sampled success {summary['sampled']['success']:.3f}", flush=True)
    return results


def table(per_seed: dict[int, dict]) -> str:
    rows = ["| policy | held-out gold success, sampled (mean ± sd over seeds) | per seed |", "|---|---|---|"]
    for label in ("sft", *DESIGNS, "expert"):
        values = [r[label].get("sampled", r[label])["success"] for r in per_seed.values()]
        rows.append(
            f"| {label} | {np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f} "
            f"| {', '.join(f'{v:.2f}' for v in values)} |"
        )
    env = [r["sparse"]["sampled"]["success"] for r in per_seed.values()]
    learned = [r["rm_only"]["sampled"]["success"] for r in per_seed.values()]
    rows.append(f"\nlearned RM alone / env reward (sparse): {np.mean(learned) / max(np.mean(env), 1e-9):.2f}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/reward_designs"))
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides for every config")
    parser.add_argument(
        "--sft",
        type=Path,
        default=None,
        help="one SFT checkpoint for every seed (seeds then vary the RM and RL only); default: "
        "an SFT run per seed",
    )
    args = parser.parse_args()
    results = args.out / "reward_designs.json"
    per_seed = {int(k): v for k, v in json.loads(results.read_text()).items()} if results.is_file() else {}
    for seed in args.seeds:
        if seed in per_seed:
            continue  # done by an earlier invocation
        per_seed[seed] = run_seed(seed, args.out, args.set, args.sft)
        results.write_text(json.dumps(per_seed, indent=1))
    print(table(per_seed))
    write_report(args.out)


def write_report(out: Path) -> Path:
    """`rlft compare` over the designs' RL runs (each seed's SFT path and RM path are not design differences)."""
    from rlft.tools.compare import compare

    runs = [
        out / f"{design}-s{seed}"
        for design in DESIGNS
        for seed in range(100)
        if (out / f"{design}-s{seed}").is_dir()
    ]
    compare(runs, out / "report.html", ignore=("rl.init_from", "reward.components.rm.path"))
    print(f"report: {out / 'report.html'}")
    return out / "report.html"


if __name__ == "__main__":
    main()
