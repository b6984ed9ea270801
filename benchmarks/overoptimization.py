"""Over-optimisation of a learned reward: RL on rlft/PreferenceText-v0 against a strong and a weak reward model.

The env's only reward is learned: one SFT policy, then two Bradley-Terry reward models trained on pairs ranked
by the env's hidden gold score (strong: many clean pairs; weak: few, noisy pairs), then GRPO against each
reward model alone, pushed hard. The design logs the proxy (`proxy/return`, the reward model's normalised
score) and the hidden gold (`gold/return`) every step, and the over-optimisation alarm watches both.
Prints both curves and where the alarm fired, writes `<out>/overoptimization.json` and `<out>/report.html`.

    python benchmarks/overoptimization.py --out runs/overoptimization
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlft import stages
from rlft.config.schema import load_config
from rlft.runtime.tracking import read_metrics

CONFIG = "configs/preference_text.yaml"
REWARD_MODELS = {  # rm.data overrides: how much preference data, how noisy
    "strong": ["rm.data.episodes=800", "rm.data.budget=1000", "rm.data.noise=0.0"],
    "weak": ["rm.data.episodes=80", "rm.data.budget=40", "rm.data.noise=0.5"],
}
RM_DATA = [
    "rm.data.source=env",
    "rm.data.gold=envs.preference_text:episode_gold",
    "rm.data.policy=expert",
    "rm.data.epsilon=0.7",
    "rm.data.episodes_per_task=4",
    "rm.data.eval_episodes=200",
    "rm.trainer.num_train_epochs=2",
]


def config_for(out: Path, name: str, seed: int, extra: list[str]):
    return load_config(
        CONFIG, [f"name={name}", f"output_dir={out}", f"seed={seed}", "tracking.wandb.mode=offline", *extra]
    )


def curve(run_dir: Path) -> dict[str, list]:
    rows = [r for r in read_metrics(run_dir) if r["stage"] == "rl" and "proxy/return" in r]
    alarms = [r["step"] for r in read_metrics(run_dir) if r.get("alarm/overoptimization") == 1]
    return {
        "step": [r["step"] for r in rows],
        "proxy": [r["proxy/return"] for r in rows],
        "gold": [r["gold/return"] for r in rows],
        "alarms": alarms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/overoptimization"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides for every config")
    args = parser.parse_args()
    from rlft.stages.rm import run_rm

    sft = stages.run_sft(config_for(args.out, "sft", args.seed, args.set))
    results = {}
    for strength, data in REWARD_MODELS.items():
        rm = run_rm(config_for(args.out, f"rm_{strength}", args.seed, [*args.set, *RM_DATA, *data]))
        rm_report = json.loads((Path(rm) / "rm.json").read_text()) if (Path(rm) / "rm.json").is_file() else {}
        design = [
            "reward.name=rm_" + strength,
            f"reward.components={{rm: {{kind: rm, path: '{rm}', normalize: true}}}}",
            "reward.gold=envs.preference_text:gold_reward",
            "reward.alarm.window=12",
            "reward.alarm.min_t=3.0",
            "rl.algorithm=grpo",
            f"rl.init_from={sft}",
            f"rl.trainer.max_steps={args.steps}",
            "rl.trainer.learning_rate=0.001",
            "rl.trainer.num_generations=8",
            "rl.trainer.per_device_train_batch_size=32",
            "rl.trainer.beta=0.0",
            "rollout.num_envs=32",
        ]
        config = config_for(args.out, f"rl_{strength}", args.seed, [*args.set, *design])
        stages.run_rl(config)
        results[strength] = {
            "rm": {k: v for k, v in rm_report.items() if isinstance(v, (int, float, str))},
            **curve(config.run_dir),
        }
    (args.out / "overoptimization.json").write_text(json.dumps(results, indent=1))
    for strength, r in results.items():
        print(f"\n{strength} reward model: alarm at steps {r['alarms'] or 'never'}")
        print("| step | proxy/return | gold/return |\n|---|---|---|")
        for i in range(0, len(r["step"]), 5):
            print(f"| {r['step'][i]} | {r['proxy'][i]:+.3f} | {r['gold'][i]:+.3f} |")
    from rlft.tools.compare import compare

    compare(
        [args.out / f"rl_{s}" for s in REWARD_MODELS],
        args.out / "report.html",
        ignore=("rl.init_from", "reward.components.rm.path"),
    )
    print(f"report: {args.out / 'report.html'}")


if __name__ == "__main__":
    main()
