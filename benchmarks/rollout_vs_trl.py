"""rlft's rollout against TRL 1.16's own multi-turn loop (`GRPOTrainer(environment_factory=...)`), in one run.

Same model (the config's tiny model, built once and saved so every method loads the same weights), env, episodes
per batch (`--groups` seeds x `--generations` episodes each, as one GRPO step plays them) and sampling settings:

  acting    env steps/s of rlft's HF engine (`RolloutEngine.play`), TRL's loop (`_generate_and_score_completions`,
            its generation and env calls without the optimizer step; see benchmarks/trl_env_loop.py) and rlft's
            vLLM backend (in .venv-vllm, through this script with `--vllm-worker`; skipped with a note without it);
  training  seconds per GRPO step (rollout + loss + optimizer step, median over the steps after the first) of
            rlft (hf; vllm where present) and TRL's loop, on the same episodes per step;
  FLOP/s    the HF engine's achieved matmul FLOP/s (benchmarks/rollout_costs.py says what is counted) as a share
            of this machine's measured float32 `torch.matmul` rate at the model's hidden size and at 2048, same
            thread count, for every tiny-model size in configs/;
  padding   the share of token positions fed to the model that are padding: per generated-token forward of the
            HF engine (and of the attended cache slots), as it is and with split steps (hf_backend.SPLIT_BELOW,
            off by default), and in the training forward.

Env steps are actions taken in the env. Ratios are of medians over `--repeats` (acting; methods alternate within
a repeat so drifting load hits all alike) or over steps (training), all from this run.

    python benchmarks/rollout_vs_trl.py --config configs/quickstart.yaml --out results.json
    python benchmarks/rollout_vs_trl.py --config configs/quickstart.yaml --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import rollout_costs  # noqa: E402
import trl_env_loop  # noqa: E402
from rollout_vs_trl_table import format_report  # noqa: E402

import rlft.rollout.hf_backend as hf_backend  # noqa: E402
from rlft.algorithms.grpo import build_grpo_trainer  # noqa: E402
from rlft.config.schema import Config, load_config  # noqa: E402
from rlft.models.policy import load_policy, save_policy  # noqa: E402
from rlft.stages.common import env_factory, load_checkpoint, load_trainable, rollout_engine  # noqa: E402
from rlft.stages.rl import rl_trainer_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
GOAL_SPEEDUP, GOAL_MATMUL_SHARE = 2.0, 0.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--groups", type=int, default=8, help="distinct env seeds per batch")
    p.add_argument("--generations", type=int, default=8, help="episodes per seed (GRPO's num_generations)")
    p.add_argument("--repeats", type=int, default=3, help="acting repeats (medians)")
    p.add_argument("--train-steps", type=int, default=4, help="GRPO steps per method (first one is warm-up)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (see rollout_throughput.py)"
    )
    p.add_argument(
        "--quick", action="store_true", help="2 seeds x 8, 2 repeats, 2 train steps, no vLLM training"
    )
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--vllm-worker", default=None, help=argparse.SUPPRESS)  # checkpoint folder; internal
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.groups, args.repeats, args.train_steps = 2, 2, 2
    return args


def episode_seeds(config: Config, args: argparse.Namespace, repeat: int) -> list[int]:
    """`groups` seeds, each `generations` times in a row (GRPO's layout); repeat r takes the next block."""
    first = config.env.train_seeds.start + repeat * args.groups
    return [s for s in range(first, first + args.groups) for _ in range(args.generations)]


def config_for(args: argparse.Namespace, checkpoint: str, backend: str, run_dir: str) -> Config:
    batch = args.groups * args.generations
    config = load_config(
        args.config,
        [
            *args.overrides,
            f"rl.init_from={checkpoint}",
            f"rollout.backend={backend}",
            f"output_dir={run_dir}",
            "tracking.wandb.enabled=false",
            f"rollout.num_envs={batch}",
            f"name=bench_{backend}",
            # TRL's loop takes every step; rlft skips a step whose advantages are all 0 (the untrained policy's
            # are), which would time a step without its loss forward and backward
            "rl.skip_steps_without_signal=false",
        ],
    )
    config.rl.trainer = {
        **config.rl.trainer,
        "max_steps": args.train_steps,
        "per_device_train_batch_size": batch,
        "num_generations": args.generations,
        "save_strategy": "no",
        "logging_steps": 1,
    }
    return config


def rlft_acting(engine, seeds: list[int], sampling_seed: int, batch: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(sampling_seed)
    start = time.perf_counter()
    episodes = engine.play(seeds, generator, batch_size=batch)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "env_steps": sum(e.num_turns for e in episodes),
        "sampled_tokens": sum(sum(e.mask) for e in episodes),
    }


def rlft_training(config: Config) -> dict[str, float]:
    """Median seconds per GRPO step of rlft's own trainer (the stage's GRPOConfig, this run's batch), and the
    padding share of its training forwards (TRL pads each batch's prompt + completion to its longest row)."""
    model, tokenizer = load_trainable(Path(config.rl.init_from), config)
    seeds = list(
        range(config.env.train_seeds.start, config.env.train_seeds.start + config.env.train_seeds.count)
    )
    timer, counter = rollout_costs.StepTimer(), rollout_costs.FedTokens().attach(model)
    trainer, _ = build_grpo_trainer(
        model,
        tokenizer,
        rl_trainer_args(config),
        rollout_engine(config, tokenizer),
        seeds,
        batch_size=config.rollout.num_envs,
        callbacks=[timer],
    )
    # as the rl stage does (rlft.stages.rl): config_for turns the skip of steps without signal off
    trainer.learning_signal.configure(config.rl.skip_steps_without_signal, config.rl.no_signal_warn_fraction)
    torch.manual_seed(config.seed)
    trainer.train()
    counter.detach()
    return {
        "step_seconds": timer.median(),
        "training_fed_padding": counter.padding_shares()["training_fed_padding"],
    }


def vllm_worker(args: argparse.Namespace) -> None:
    """In .venv-vllm: acting and (not in quick mode) training with `rollout.backend: vllm`; JSON to --worker-out."""
    run_dir = tempfile.mkdtemp(prefix="rlft_bench_vllm_")
    config = config_for(args, args.vllm_worker, "vllm", run_dir)
    model, tokenizer = load_checkpoint(args.vllm_worker, config)
    engine = rollout_engine(config, tokenizer, model=model.eval())
    batch = args.groups * args.generations
    rlft_acting(
        engine, episode_seeds(config, args, args.repeats), config.seed, batch
    )  # warm-up (engine start)
    acting = [
        rlft_acting(engine, episode_seeds(config, args, r), config.seed + r, batch)
        for r in range(args.repeats)
    ]
    step = None if args.quick else rlft_training(config)["step_seconds"]
    Path(args.worker_out).write_text(json.dumps({"acting": acting, "step_seconds": step}), encoding="utf-8")


def run_vllm(args: argparse.Namespace, checkpoint: str) -> dict | None:
    if args.skip_vllm or not VLLM_PYTHON.exists():
        return {
            "skipped": "--skip-vllm" if args.skip_vllm else f"{VLLM_PYTHON} is absent (scripts/setup_vllm.sh)"
        }
    out = Path(tempfile.mkdtemp(prefix="rlft_bench_")) / "vllm.json"
    command = [
        str(VLLM_PYTHON),
        __file__,
        "--config",
        args.config,
        *args.overrides,
        "--vllm-worker",
        checkpoint,
        "--worker-out",
        str(out),
        "--groups",
        str(args.groups),
        "--generations",
        str(args.generations),
        "--repeats",
        str(args.repeats),
        "--train-steps",
        str(args.train_steps),
        "--threads",
        str(args.threads),
    ]
    command += ["--quick"] if args.quick else []
    # vLLM's CPU backend runs its own OpenMP threads (all cores by default): bound to as many cores as torch uses
    # here, unless the caller set the binding
    cores = "0" if args.threads == 1 else f"0-{args.threads - 1}"
    env = {"VLLM_CPU_OMP_THREADS_BIND": cores, **os.environ}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return {"skipped": f"the vLLM worker failed: {result.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.read_text(encoding="utf-8"))


# The HF engine as it is (one forward per step), and with mixed steps split in two (hf_backend.SPLIT_BELOW, off by
# default: on CPU the split fed less padding but took longer).
HF_VARIANTS = {"rlft hf": None, "rlft hf, split steps": 0.75}


def hf_acting(engine, seeds, sampling_seed: int, batch: int, counter, split_below: float | None) -> dict:
    saved = hf_backend.SPLIT_BELOW
    hf_backend.SPLIT_BELOW = saved if split_below is None else split_below
    counter.attach(engine.model)
    try:
        return rlft_acting(engine, seeds, sampling_seed, batch)
    finally:
        counter.detach()
        hf_backend.SPLIT_BELOW = saved


def acting_round(config, args, engine, trl_trainer) -> tuple[dict[str, list[dict]], dict]:
    """Warm up, then `repeats` rounds of the HF engine (both variants) and TRL's loop on the same seeds,
    alternating; also the HF variants' fed-token counts."""
    batch = args.groups * args.generations
    rlft_acting(engine, episode_seeds(config, args, args.repeats), config.seed, batch)
    trl_env_loop.act(trl_trainer, episode_seeds(config, args, args.repeats)[: args.generations])
    results: dict[str, list[dict]] = {name: [] for name in [*HF_VARIANTS, "trl environment_factory"]}
    counters = {name: rollout_costs.FedTokens() for name in HF_VARIANTS}
    for r in range(args.repeats):
        seeds = episode_seeds(config, args, r)
        for name, split_below in HF_VARIANTS.items():
            run = hf_acting(engine, seeds, config.seed + r, batch, counters[name], split_below)
            results[name].append(run)
        results["trl environment_factory"].append(trl_env_loop.act(trl_trainer, seeds))
        done = ", ".join(f"{m} {v[-1]['env_steps'] / v[-1]['seconds']:.1f}" for m, v in results.items())
        print(f"  repeat {r}, env steps/s: {done}", file=sys.stderr, flush=True)
    return results, counters


def steps_per_second(runs: list[dict]) -> float:
    return statistics.median(r["env_steps"] / r["seconds"] for r in runs)


# What sets a forward's cost; configs differing elsewhere (e.g. max_position_embeddings) share a size.
SIZE_KEYS = ("architecture", "hidden_size", "num_layers", "num_heads", "intermediate_size")


def model_sizes() -> dict[str, dict]:
    """Each distinct tiny-model size of configs/*.yaml, named by the configs that use it (quickstart's first)."""
    users: dict[tuple, list[str]] = {}
    tinies: dict[tuple, dict] = {}
    paths = sorted((ROOT / "configs").glob("*.yaml"), key=lambda p: (p.name != "quickstart.yaml", p.name))
    for path in paths:
        tiny = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model") or {}).get("tiny")
        if tiny:
            key = tuple(tiny.get(k) for k in SIZE_KEYS)
            users.setdefault(key, []).append(path.name)
            tinies.setdefault(key, {k: v for k, v in tiny.items() if k in SIZE_KEYS})
    return {
        names[0] + (f" (+{len(names) - 1} more)" if len(names) > 1 else ""): tinies[key]
        for key, names in users.items()
    }


def flops_line(args, name: str, tiny: dict, run_dir: str) -> dict:
    """The HF engine's achieved matmul FLOP/s with one model size (as it is, and with split steps), against
    the matmul rate at its hidden size and at 2048."""
    config = load_config(args.config, [*args.overrides, f"output_dir={run_dir}"])
    config.model.tiny = config.model.tiny.model_copy(update=tiny)
    model, tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
    engine = rollout_engine(config, tokenizer, model=model.eval())
    batch = args.groups * args.generations
    rlft_acting(engine, episode_seeds(config, args, args.repeats), config.seed, batch)  # warm-up
    weights = rollout_costs.matmul_weights(model)
    hidden = config.model.tiny.hidden_size
    line = {
        "config": name,
        "hidden_size": hidden,
        "layers": config.model.tiny.num_layers,
        "matmul_weights": weights,
    }
    line["matmul_rate_hidden"] = rollout_costs.matmul_rate(hidden, rows=batch)
    line["matmul_rate_2048"] = rollout_costs.matmul_rate(2048)
    for variant, split_below in HF_VARIANTS.items():
        counter = rollout_costs.FedTokens()
        run = hf_acting(engine, episode_seeds(config, args, 0), config.seed, batch, counter, split_below)
        achieved = 2 * weights * counter.generation_fed / run["seconds"]
        line[variant] = {
            "fed_tokens_per_s": counter.generation_fed / run["seconds"],
            "real_tokens_per_s": counter.generation_real / run["seconds"],
            "achieved_flops": achieved,
            "share_of_hidden_rate": achieved / line["matmul_rate_hidden"],
            "share_of_2048_rate": achieved / line["matmul_rate_2048"],
        }
    return line


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    if args.vllm_worker:
        return vllm_worker(args)
    run_dir = tempfile.mkdtemp(prefix="rlft_bench_")
    base = load_config(args.config, [*args.overrides, f"output_dir={run_dir}"])
    model, tokenizer = load_policy(base.model, base.seed, env_factory(base), base.env.max_turns)
    checkpoint = str(save_policy(model, tokenizer, Path(run_dir) / "policy"))
    config = config_for(args, checkpoint, "hf", run_dir)
    # vLLM first: its engine start would otherwise compete with the timings below
    vllm = run_vllm(args, checkpoint)

    model, tokenizer = load_checkpoint(checkpoint, config)
    engine = rollout_engine(config, tokenizer, model=model.eval())
    trl_model, _ = load_checkpoint(checkpoint, config)
    trl_args = trl_env_loop.trl_args(
        rl_trainer_args(config),
        config.env.max_turns,
        config.rollout.max_action_tokens,
        args.train_steps,
        str(Path(run_dir) / "trl"),
    )
    train = config.env.train_seeds
    trl_trainer = trl_env_loop.build_trl_trainer(
        trl_model,
        tokenizer,
        trl_args,
        env_factory(config),
        list(range(train.start, train.start + train.count)),
    )
    acting, counters = acting_round(config, args, engine, trl_trainer)
    if "acting" in vllm:
        acting["rlft vllm"] = vllm["acting"]

    timer = rollout_costs.StepTimer()
    trl_trainer.add_callback(timer)
    trl_trainer.train()
    rlft_hf = rlft_training(config)
    step_seconds = {"trl environment_factory": timer.median(), "rlft hf": rlft_hf["step_seconds"]}
    if vllm.get("step_seconds"):
        step_seconds["rlft vllm"] = vllm["step_seconds"]
    padding = {
        name: {**c.padding_shares(), "generation_fed": c.generation_fed, "generation_real": c.generation_real}
        for name, c in counters.items()
    }
    results = {
        "settings": {
            "config": args.config,
            "overrides": args.overrides,
            "groups": args.groups,
            "generations": args.generations,
            "repeats": args.repeats,
            "train_steps": args.train_steps,
            "threads": args.threads,
            "quick": args.quick,
        },
        "environment": {
            "cpu_cores": os.cpu_count(),
            "torch": torch.__version__,
            "load_1min": os.getloadavg()[0],
        },
        "acting": acting,
        "acting_env_steps_per_s": {m: steps_per_second(v) for m, v in acting.items()},
        "step_seconds": step_seconds,
        "padding": padding,
        "training_fed_padding": rlft_hf["training_fed_padding"],
        "flops": [flops_line(args, name, tiny, run_dir) for name, tiny in model_sizes().items()],
        "vllm_note": vllm.get("skipped") or ("acting only (--quick)" if args.quick else None),
    }
    print(format_report(results, tuple(HF_VARIANTS)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
