"""The HF backend's `logits_to_keep=1` against full logits: rollout time with a word-level and a real vocabulary.

Each sampling step of `rollout.backend: hf` feeds every live row its pending tokens (one sampled token, or an
observation of tens of tokens after an action) and samples from the last position only. Without
`logits_to_keep`, a model projects every fed position onto the whole vocabulary: free with the quickstart's
word-level tokenizer (about 60 words), 84M logits per observation turn of 64 episodes with Mistral's SentencePiece
v3 (32,768 pieces), four times that with Tekken (131,072).

Per tokenizer: the quickstart's untrained tiny model (so every episode runs to the turn limit), one
`RolloutEngine`, the same episodes and sampling seeds for both variants, alternated per repeat, one warm-up each.
Both variants must sample the same tokens (checked: a mismatch stops the benchmark).

    python benchmarks/last_logits.py                                  # word, mistral_v3; 64 episodes, 3 repeats
    python benchmarks/last_logits.py --tokenizers word mistral_v3 tekken --episodes 32 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import torch

import rlft.rollout.hf_backend as hf_backend
from rlft.config.schema import load_config
from rlft.models.policy import load_policy
from rlft.rollout.engine import RolloutEngine
from rlft.stages.common import env_factory, sampling_settings, turn_format_for

FULL = "full logits"
LAST = "last only"


def play(engine: RolloutEngine, seeds: list[int], sampling_seed: int, last_only: bool, monkey: dict) -> tuple:
    hf_backend.last_logits_only = monkey["last"] if last_only else (lambda model: {})
    start = time.perf_counter()
    episodes = engine.play(seeds, torch.Generator().manual_seed(sampling_seed), batch_size=len(seeds))
    seconds = time.perf_counter() - start
    tokens = [tuple(e.completion_ids) for e in episodes]
    return seconds, sum(e.num_turns for e in episodes), tokens


def measure(tokenizer_name: str, episodes: int, repeats: int) -> list[dict]:
    config = load_config("configs/quickstart.yaml", [f"model.tiny.tokenizer={tokenizer_name}"])
    model, tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
    model.eval()
    engine = RolloutEngine(
        model, tokenizer, turn_format_for(config, tokenizer), env_factory(config), sampling_settings(config)
    )
    monkey = {"last": hf_backend.last_logits_only}
    rows = {FULL: [], LAST: []}
    try:
        warm = list(range(10**6, 10**6 + episodes))
        for last_only in (False, True):
            play(engine, warm, 99, last_only, monkey)
        for repeat in range(repeats):
            seeds = list(range(repeat * episodes, (repeat + 1) * episodes))
            results = {}
            for name, last_only in ((FULL, False), (LAST, True)):
                seconds, steps, tokens = play(engine, seeds, repeat, last_only, monkey)
                results[name] = tokens
                rows[name].append(steps / seconds)
                print(
                    f"  {tokenizer_name:10s} repeat {repeat} {name:11s} {steps:5d} env steps {seconds:7.2f} s"
                )
            if results[FULL] != results[LAST]:
                raise SystemExit(
                    f"{tokenizer_name}: the two variants sampled different tokens (repeat {repeat})"
                )
    finally:
        hf_backend.last_logits_only = monkey["last"]
    vocab = model.get_output_embeddings().weight.shape[0]
    return [
        {"tokenizer": tokenizer_name, "vocab": vocab, "variant": name, "steps_per_s": values}
        for name, values in rows.items()
    ]


def table(rows: list[dict]) -> str:
    lines = [
        "| tokenizer | vocabulary | variant | env steps / s (mean ± sd) | speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    base = {r["tokenizer"]: statistics.mean(r["steps_per_s"]) for r in rows if r["variant"] == FULL}
    for r in rows:
        mean = statistics.mean(r["steps_per_s"])
        sd = statistics.stdev(r["steps_per_s"]) if len(r["steps_per_s"]) > 1 else 0.0
        lines.append(
            f"| {r['tokenizer']} | {r['vocab']:,} | {r['variant']} | {mean:.1f} ± {sd:.1f} | "
            f"{mean / base[r['tokenizer']]:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizers", nargs="+", default=["word", "mistral_v3"])
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [row for name in args.tokenizers for row in measure(name, args.episodes, args.repeats)]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
