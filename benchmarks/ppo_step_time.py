"""Where a PPO step's time goes, against a GRPO step on the same rollout batch size and seeds.

Each algorithm trains `--steps` rollout batches from the same checkpoint with one optimizer step per rollout
(`steps_per_generation = num_iterations = 1` for both, so the update work is comparable); the time of each
phase is summed by wrapping the trainer's methods:

    rollout    the rollout engine playing the batch (EpisodeRollout.__call__)
    reference  reference-policy log-probs (only with a KL term)
    critic     PPO's critic values for GAE at rollout time
    update     everything else in the training step: the loss forward/backward (policy and critic) and the
               optimizer step

    python benchmarks/ppo_step_time.py --config configs/quickstart.yaml --init runs/quickstart/checkpoints/sft

Tokens/s counts prompt + completion tokens of the batch over the whole step. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def timed(totals: dict, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        totals[name] += time.perf_counter() - t0


def wrap(obj, method: str, totals: dict, name: str, when=None):
    original = getattr(obj, method)

    def wrapper(*args, **kwargs):
        if when is not None and not when(*args, **kwargs):
            return original(*args, **kwargs)
        with timed(totals, name):
            return original(*args, **kwargs)

    setattr(obj, method, wrapper)


def measure(config, steps: int, kl_coef: float) -> dict[str, float]:
    import torch

    from rlft.algorithms.grpo import build_grpo_trainer
    from rlft.algorithms.ppo import build_ppo_trainer
    from rlft.rollout.engine import RolloutEngine
    from rlft.stages.common import env_factory, load_trainable, sampling_settings, turn_format_for
    from rlft.stages.rl import resolve_init, rl_trainer_args

    model, tokenizer = load_trainable(resolve_init(config), config)
    args = rl_trainer_args(config)
    engine = RolloutEngine(
        None, tokenizer, turn_format_for(config, tokenizer), env_factory(config), sampling_settings(config)
    )
    seeds = list(
        range(config.env.train_seeds.start, config.env.train_seeds.start + config.env.train_seeds.count)
    )
    build = build_ppo_trainer if config.rl.algorithm == "ppo" else build_grpo_trainer
    trainer, rollout = build(model, tokenizer, args, engine, seeds, batch_size=config.rollout.num_envs)
    totals: dict[str, float] = defaultdict(float)
    tokens = {"n": 0}
    call = rollout.__call__

    def rollout_call(prompts, trainer_):
        with timed(totals, "rollout"):
            out = call(prompts, trainer_)
        tokens["n"] += sum(
            len(p) + len(c) for p, c in zip(out["prompt_ids"], out["completion_ids"], strict=True)
        )
        return out

    trainer.rollout_func = rollout_call
    is_ref = lambda model_, *a, **k: trainer.ref_model is not None and model_ is trainer.ref_model  # noqa: E731
    wrap(trainer, "_get_per_token_logps_and_entropies", totals, "reference", when=is_ref)
    if hasattr(trainer, "rollout_values"):
        wrap(trainer, "rollout_values", totals, "critic")
    wrap(trainer, "training_step", totals, "step")
    torch.manual_seed(config.seed)
    trainer.train()
    totals["update"] = totals["step"] - totals["rollout"] - totals["reference"] - totals["critic"]
    per_step = {k: v / steps for k, v in totals.items()}
    per_step["tokens_per_s"] = tokens["n"] / totals["step"]
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument(
        "--init", required=True, help="checkpoint both algorithms start from (e.g. an SFT one)"
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="episodes per rollout batch")
    parser.add_argument("--kl", type=float, default=0.0, help="KL coefficient (beta / kl_coef) for both")
    parser.add_argument("--critic", default="separate", choices=["separate", "shared"])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    from rlft.config.schema import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    common = [
        f"rl.init_from={Path(args.init)}",
        "tracking.wandb.enabled=false",
        "output_dir=/tmp/rlft_step_time",
        f"rollout.num_envs={args.batch}",
    ]
    grpo_trainer = {
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "num_generations": 8,
        "beta": args.kl,
    }
    ppo_trainer = {
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "num_generations": 1,
        "steps_per_generation": 1,
        "num_iterations": 1,
        "kl_coef": args.kl,
        "critic": args.critic,
    }
    results = {}
    for name, algorithm, trainer in (
        ("grpo", "grpo", grpo_trainer),
        (f"ppo ({args.critic} critic)", "ppo", ppo_trainer),
    ):
        config = load_config(
            args.config, [*common, f"rl.algorithm={algorithm}", f"name=step_time_{algorithm}"]
        )
        config.rl.trainer = trainer
        results[name] = measure(config, args.steps, args.kl)
    base = results["grpo"]
    print(
        f"\n{args.steps} steps of {args.batch} episodes, {torch.get_num_threads()} threads, KL coefficient {args.kl}"
    )
    print("| algorithm | rollout s | reference s | critic s | update s | step s | x GRPO step | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['rollout']:.2f} | {r['reference']:.2f} | {r['critic']:.2f} | {r['update']:.2f} | "
            f"{r['step']:.2f} | {r['step'] / base['step']:.2f} | {r['tokens_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
