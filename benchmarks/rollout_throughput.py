"""Rollout throughput: rlft's batched RolloutEngine against one `model.generate` call per turn per episode.

Measures env steps per second (an env step is one action taken in the env, the sum of `episode.num_turns`)
and sampled tokens per second of

  engine    `RolloutEngine.play(seeds, generator, batch_size)`: every live episode is a row of one batch,
            one forward per generated token, one shared KV cache;
  baseline  `rlft.rollout.engine.play_one_at_a_time` over the episodes one by one: the LlamaGym pattern, which
            calls `model.generate` once per turn and recomputes the whole context each time.

Both use the same model, env, sampling settings, device and thread count, in the same process and run.
Repeats use different rollout seeds (env reset seeds and sampling seeds); engine and baseline alternate
within each repeat so that drifting machine load hits both alike. The baseline plays fewer episodes
because it is slow; throughput is per env step, so the counts need not match.

The default policy is the untrained tiny model built from the config: its actions are garbage, so every
episode runs to `env.max_turns`. `--checkpoint` measures a saved (e.g. SFT) policy, whose episodes are
short and realistic. The table says which one was used.

    python benchmarks/rollout_throughput.py --config configs/quickstart.yaml
    python benchmarks/rollout_throughput.py --config configs/quickstart.yaml \\
        --checkpoint runs/quickstart/checkpoints/sft --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import transformers

from rlft.config.schema import Config, load_config
from rlft.core.episode import Episode
from rlft.models.policy import load_policy
from rlft.rollout.engine import RolloutEngine, play_one_at_a_time
from rlft.stages.common import env_factory, load_checkpoint, sampling_settings, turn_format_for

# The project's goal for the engine against the per-turn `generate` baseline.
TARGET_SPEEDUP = 20.0


@dataclass
class Measurement:
    """One timed rollout: a method over one repeat's seeds."""

    method: str
    repeat: int
    episodes: int
    env_steps: int
    sampled_tokens: int
    seconds: float
    successes: int

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.sampled_tokens / self.seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="an rlft YAML config (env, model, rollout settings)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument(
        "--checkpoint", default=None, help="a saved policy folder (default: the untrained tiny model)"
    )
    parser.add_argument("--episodes", type=int, default=64, help="engine episodes per repeat")
    parser.add_argument("--batch-size", type=int, default=64, help="engine: episodes live at once")
    parser.add_argument("--baseline-episodes", type=int, default=16, help="baseline episodes per repeat")
    parser.add_argument("--seeds", type=int, default=3, help="repeats, each with different rollout seeds")
    parser.add_argument(
        "--seed-start",
        type=int,
        default=None,
        help="first env seed (default: env.train_seeds.start); repeat r uses the next block",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    # One thread by default: the tiny model's ops are too small to gain from intra-op threads, and on a
    # shared 2-core machine that is also running something else, 2 spinning OpenMP threads made the
    # batch-1 baseline ~16x slower (2.6 vs 41 env steps/s measured), which would flatter the engine.
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: every CPU core this process may use)",
    )
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.episodes < 1 or args.baseline_episodes < 1 or args.seeds < 1 or args.batch_size < 1:
        parser.error("--episodes, --batch-size, --baseline-episodes and --seeds must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def build_model(config: Config, checkpoint: str | None, device: str):
    """The policy both methods share, on `device`, in eval mode; and a label saying which one it is."""
    if checkpoint is None:
        model, tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
        label = "untrained tiny model (from config)"
    else:
        model, tokenizer = load_checkpoint(checkpoint, config)
        label = f"checkpoint {checkpoint}"
    return model.to(device).eval(), tokenizer, label


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(method: str, repeat: int, device: str, play: Callable[[], list[Episode]]) -> Measurement:
    _synchronize(device)
    start = time.perf_counter()
    episodes = play()
    _synchronize(device)
    seconds = time.perf_counter() - start
    return Measurement(
        method=method,
        repeat=repeat,
        episodes=len(episodes),
        env_steps=sum(e.num_turns for e in episodes),
        sampled_tokens=sum(sum(e.mask) for e in episodes),
        seconds=seconds,
        successes=sum(e.success for e in episodes),
    )


def run_engine(engine: RolloutEngine, seeds: list[int], batch_size: int, sampling_seed: int) -> list[Episode]:
    generator = torch.Generator().manual_seed(sampling_seed)
    return engine.play(seeds, generator, batch_size=batch_size)


def run_baseline(
    model, tokenizer, turn_format, env, seeds: list[int], settings, sampling_seed: int
) -> list[Episode]:
    # `generate` samples from the global RNG, so that is what a repeat seeds.
    torch.manual_seed(sampling_seed)
    return [play_one_at_a_time(model, tokenizer, turn_format, env, seed, settings) for seed in seeds]


def benchmark(config: Config, args: argparse.Namespace, model, tokenizer) -> list[Measurement]:
    """Warm up each method once, then time engine and baseline alternately over `args.seeds` repeats."""
    turn_format = turn_format_for(config, tokenizer)
    settings = sampling_settings(config)
    engine = RolloutEngine(model, tokenizer, turn_format, env_factory(config), settings)
    baseline_env = env_factory(config)()
    # `generate` falls back to transformers' global default top_k=50 when neither the call nor the model's
    # generation_config sets it; the engine samples from the full (temperature, top-p) distribution, so
    # top-k is switched off here to give the baseline the same sampling settings (0 = off).
    model.generation_config.top_k = 0
    first = config.env.train_seeds.start if args.seed_start is None else args.seed_start
    block = max(args.episodes, args.baseline_episodes)

    # Warm-up (not timed): seeds after the timed blocks, the engine at its full batch width.
    warm_seeds = list(range(first + args.seeds * block, first + args.seeds * block + args.batch_size))
    warm_sampling_seed = config.seed + args.seeds
    run_engine(engine, warm_seeds, args.batch_size, warm_sampling_seed)
    run_baseline(model, tokenizer, turn_format, baseline_env, warm_seeds[:1], settings, warm_sampling_seed)

    measurements = []
    for repeat in range(args.seeds):
        seeds = list(range(first + repeat * block, first + repeat * block + block))
        sampling_seed = config.seed + repeat
        play_engine = partial(run_engine, engine, seeds[: args.episodes], args.batch_size, sampling_seed)
        play_baseline = partial(
            run_baseline,
            model,
            tokenizer,
            turn_format,
            baseline_env,
            seeds[: args.baseline_episodes],
            settings,
            sampling_seed,
        )
        for method, play in (("engine", play_engine), ("baseline", play_baseline)):
            m = _measure(method, repeat, args.device, play)
            measurements.append(m)
            print(
                f"  repeat {repeat} {m.method:8s} {m.episodes:4d} episodes {m.env_steps:6d} env steps "
                f"{m.seconds:7.2f} s  {m.steps_per_second:8.1f} env steps/s",
                file=sys.stderr,
                flush=True,
            )
    baseline_env.close()
    return measurements


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(measurements: list[Measurement], method: str) -> dict[str, float]:
    ms = [m for m in measurements if m.method == method]
    steps_mean, steps_std = _mean_std([m.steps_per_second for m in ms])
    tokens_mean, tokens_std = _mean_std([m.tokens_per_second for m in ms])
    seconds_mean, seconds_std = _mean_std([m.seconds for m in ms])
    episodes = sum(m.episodes for m in ms)
    return {
        "episodes_per_repeat": ms[0].episodes,
        "env_steps_per_repeat": statistics.fmean(m.env_steps for m in ms),
        "seconds": seconds_mean,
        "seconds_std": seconds_std,
        "env_steps_per_s": steps_mean,
        "env_steps_per_s_std": steps_std,
        "tokens_per_s": tokens_mean,
        "tokens_per_s_std": tokens_std,
        "turns_per_episode": sum(m.env_steps for m in ms) / episodes,
        "success": sum(m.successes for m in ms) / episodes,
    }


def format_table(summary: dict[str, dict[str, float]], concurrency: dict[str, int], repeats: int) -> str:
    rows = [
        f"| method | concurrent episodes | episodes / repeat | env steps / repeat | seconds / repeat | "
        f"env steps/s (mean ± std, {repeats} seeds) | sampled tokens/s | turns / episode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in ("engine", "baseline"):
        s = summary[method]
        rows.append(
            f"| {method} | {concurrency[method]} | {s['episodes_per_repeat']} | "
            f"{s['env_steps_per_repeat']:.0f} | {s['seconds']:.2f} ± {s['seconds_std']:.2f} | "
            f"{s['env_steps_per_s']:.1f} ± {s['env_steps_per_s_std']:.1f} | "
            f"{s['tokens_per_s']:.1f} ± {s['tokens_per_s_std']:.1f} | {s['turns_per_episode']:.1f} |"
        )
    return "\n".join(rows)


def speedups(measurements: list[Measurement]) -> dict[str, float]:
    """Engine / baseline env steps per second: ratio of the means, and the range of the per-repeat ratios."""
    engine = [m.steps_per_second for m in measurements if m.method == "engine"]
    baseline = [m.steps_per_second for m in measurements if m.method == "baseline"]
    paired = [e / b for e, b in zip(engine, baseline, strict=True)]
    return {
        "ratio_of_means": statistics.fmean(engine) / statistics.fmean(baseline),
        "per_repeat_min": min(paired),
        "per_repeat_max": max(paired),
    }


def available_cores() -> int:
    """CPU cores this process may run on (cgroup or taskset limits included where the OS reports them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment_info(args: argparse.Namespace, threads: int) -> dict[str, object]:
    info: dict[str, object] = {
        "device": args.device,
        "torch_threads": threads,
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    if hasattr(os, "getloadavg"):
        info["load_average_1min_start"] = os.getloadavg()[0]
    return info


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # per-call `generate` flag warnings would flood the output
    config = load_config(args.config, args.overrides)
    model, tokenizer, policy = build_model(config, args.checkpoint, args.device)
    info = environment_info(args, threads)
    print(
        f"policy: {policy}; env {config.env.id}, max_turns {config.env.max_turns}; device {args.device}, "
        f"torch threads {threads}; load average {info.get('load_average_1min_start', 'n/a')}",
        file=sys.stderr,
        flush=True,
    )

    measurements = benchmark(config, args, model, tokenizer)
    summary = {method: summarize(measurements, method) for method in ("engine", "baseline")}
    ratio = speedups(measurements)
    if hasattr(os, "getloadavg"):
        info["load_average_1min_end"] = os.getloadavg()[0]
    concurrency = {"engine": min(args.batch_size, args.episodes), "baseline": 1}

    print(f"\n## Rollout throughput: {config.env.id}, {policy}\n")
    print(
        f"device {args.device}, torch threads {threads}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; load average {info.get('load_average_1min_start', 'n/a')} "
        f"-> {info.get('load_average_1min_end', 'n/a')}\n"
    )
    print(format_table(summary, concurrency, args.seeds))
    verdict = "meets" if ratio["ratio_of_means"] >= TARGET_SPEEDUP else "below"
    print(
        f"\nengine / baseline env steps/s: {ratio['ratio_of_means']:.1f}x (per repeat "
        f"{ratio['per_repeat_min']:.1f}x-{ratio['per_repeat_max']:.1f}x); target {TARGET_SPEEDUP:.0f}x: {verdict}"
    )
    print(
        f"success rate: engine {summary['engine']['success']:.3f}, baseline {summary['baseline']['success']:.3f}"
    )

    results = {
        "config": args.config,
        "overrides": args.overrides,
        "policy": policy,
        "environment": info,
        "settings": {
            "episodes": args.episodes,
            "batch_size": args.batch_size,
            "baseline_episodes": args.baseline_episodes,
            "repeats": args.seeds,
            "sampling": asdict(sampling_settings(config)),
        },
        "summary": summary,
        "speedup": ratio,
        "measurements": [asdict(m) for m in measurements],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
