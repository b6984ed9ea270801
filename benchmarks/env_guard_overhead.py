"""What the env-step timeout guard costs: a rollout with `rollout.env_step_timeout_s` off, on (one long-lived
worker thread per env, rlft's default), on with a thread started per call (the simpler design it replaced), and
on with a worker process per env (`rollout.env_workers: subprocess`).

Same model, env, seeds and sampling seed for all three; each repeat plays a fresh block of seeds with every
variant, in alternating order so that drifting machine load hits them alike. Reported per variant: wall and
CPU seconds of a rollout (min / median over repeats), the time spent in env calls per env step (the
engine's `rollout/env_seconds`, min over repeats; the guard's cost lands there), and that cost over the
no-guard run, per env step and as a share of the no-guard rollout's CPU time.

    python benchmarks/env_guard_overhead.py --config configs/quickstart.yaml --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

import rlft.rollout.env_workers as env_workers_module
from rlft.config.schema import load_config
from rlft.models.policy import load_policy
from rlft.rollout.engine import RolloutEngine
from rlft.runtime.faults import EnvCallTimeout, EnvWorker
from rlft.stages.common import env_factory, sampling_settings, turn_format_for


class ThreadPerCall:
    """The alternative design: a new daemon thread for every env call, joined with the timeout."""

    def __init__(self, env):
        del env

    def submit(self, function, *args) -> None:
        self.box: dict = {}

        def target():
            try:
                self.box["value"] = function(*args)
            except BaseException as exc:  # noqa: BLE001
                self.box["error"] = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def result(self, timeout: float):
        self.thread.join(max(timeout, 0.0))
        if self.thread.is_alive():
            raise EnvCallTimeout
        if "error" in self.box:
            raise self.box["error"]
        return self.box["value"]


# name: (rollout.env_step_timeout_s, the thread pool's worker class, rollout.env_workers)
VARIANTS = {
    "no guard (timeout null)": (None, EnvWorker, "thread"),
    "worker thread per env (rlft)": (30.0, EnvWorker, "thread"),
    "thread per call": (30.0, ThreadPerCall, "thread"),
    "worker process per env": (30.0, EnvWorker, "subprocess"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--episodes", type=int, default=64, help="episodes per rollout, all live at once")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--subprocess",
        action="store_true",
        help="also time a worker process per env (each worker imports this script as its main module on "
        "Python < 3.13: torch included, seconds per worker to start)",
    )
    args = parser.parse_args()
    if not args.subprocess:
        del VARIANTS["worker process per env"]
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    model, tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
    model.eval()
    engines = {}
    for name, (timeout, _worker, workers) in VARIANTS.items():
        settings = sampling_settings(config)
        settings.env_step_timeout_s, settings.env_workers = timeout, workers
        engines[name] = RolloutEngine(
            model, tokenizer, turn_format_for(config, tokenizer), env_factory(config), settings
        )

    def play(name: str, seeds: list[int], sampling_seed: int):
        env_workers_module.EnvWorker = VARIANTS[name][
            1
        ]  # the thread pool makes its workers through this name
        return engines[name].play(
            seeds, torch.Generator().manual_seed(sampling_seed), batch_size=args.episodes
        )

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    warm = list(range(10**6, 10**6 + args.episodes))
    for name in VARIANTS:
        play(name, warm, 99)
    wall, cpu, env_per_step = ({name: [] for name in VARIANTS} for _ in range(3))
    steps = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
        seeds = list(range(repeat * args.episodes, (repeat + 1) * args.episodes))
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            episodes = play(name, seeds, repeat)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            steps[name].append(sum(e.num_turns for e in episodes))
            env_per_step[name].append(engines[name].stats["rollout/env_seconds"] / steps[name][-1])
            print(
                f"  repeat {repeat} {name:30s} wall {wall[name][-1]:6.2f} s  cpu {cpu[name][-1]:6.2f} s  "
                f"{steps[name][-1]} env steps",
                flush=True,
            )
    print(f"load average at end: {os.getloadavg()[0]:.2f}\n")
    base = next(iter(VARIANTS))
    base_step = min(env_per_step[base])
    print(
        "| variant | wall s (min / median) | CPU s (min / median) | env calls, us per env step | added per "
        "env step | added, % of the no-guard rollout's CPU s |"
    )
    print("|---|---|---|---|---|---|")
    for name in VARIANTS:
        added = min(env_per_step[name]) - base_step
        share = 100 * added * statistics.mean(steps[name]) / min(cpu[base])
        print(
            f"| {name} | {min(wall[name]):.2f} / {statistics.median(wall[name]):.2f} | "
            f"{min(cpu[name]):.2f} / {statistics.median(cpu[name]):.2f} | {min(env_per_step[name]) * 1e6:.0f} | "
            f"{added * 1e6:+.0f} us | {share:+.1f}% |"
        )


if __name__ == "__main__":
    main()
