"""What a real vocabulary costs an RL step, and the two savings rlft makes, each against its baseline in one run:

1. Rollout: the HF backend's `logits_to_keep=1` against full logits (`rlft.rollout.hf_backend.last_logits_only`).
2. Training: GRPO's log-probs and their backward scored on the loss's positions only (the sampled action tokens)
   against TRL's CPU path, which projects every position of the episode (`rlft.algorithms.trl_bridge`, "scored
   positions only"), on the episodes of part 1.

Each sampling step of `rollout.backend: hf` feeds every live row its pending tokens (one sampled token, or an
observation of tens of tokens after an action) and samples from the last position only. Without
`logits_to_keep`, a model projects every fed position onto the whole vocabulary: free with the quickstart's
word-level tokenizer (about 60 words), 84M logits per observation turn of 64 episodes with Mistral's SentencePiece
v3 (32,768 pieces), four times that with Tekken (131,072).

Per tokenizer: the quickstart's untrained tiny model (so every episode runs to the turn limit), one
`RolloutEngine`, the same episodes and sampling seeds for both variants, alternated per repeat, one warm-up each.
Both variants must sample the same tokens, and both training variants give the same log-probs on the scored
positions (checked: a mismatch stops the benchmark).

    python benchmarks/real_vocab_costs.py                              # word, mistral_v3; 64 episodes, 3 repeats
    python benchmarks/real_vocab_costs.py --tokenizers word mistral_v3 tekken --episodes 32 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from trl.trainer.utils import add_fused_lm_head

import rlft.rollout.hf_backend as hf_backend
from rlft.algorithms.trl_bridge import BridgedGRPOTrainer
from rlft.config.schema import load_config
from rlft.models.policy import load_policy
from rlft.rollout.engine import RolloutEngine
from rlft.stages.common import env_factory, sampling_settings, turn_format_for

FULL = "full logits"
LAST = "last only"
ALL_POSITIONS = "all positions"  # training: TRL's CPU path
SCORED = "scored only"
ROLLOUT = (FULL, LAST)  # env steps per second
TRAINING = (ALL_POSITIONS, SCORED)  # seconds of log-probs + backward


def play(engine: RolloutEngine, seeds: list[int], sampling_seed: int, last_only: bool, monkey: dict) -> tuple:
    hf_backend.last_logits_only = monkey["last"] if last_only else (lambda model: {})
    start = time.perf_counter()
    episodes = engine.play(seeds, torch.Generator().manual_seed(sampling_seed), batch_size=len(seeds))
    seconds = time.perf_counter() - start
    tokens = [tuple(e.completion_ids) for e in episodes]
    return seconds, sum(e.num_turns for e in episodes), tokens, episodes


def training_batch(episodes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's layout: left-padded prompts then right-padded completions; the positions the loss reads (mask 1)."""
    prompt = max(len(e.prompt_ids) for e in episodes)
    completion = max(len(e.completion_ids) for e in episodes)
    ids = torch.zeros(len(episodes), prompt + completion, dtype=torch.long)
    attention = torch.zeros_like(ids)
    scored = torch.zeros(len(episodes), completion, dtype=torch.long)
    for row, e in enumerate(episodes):
        p, c = len(e.prompt_ids), len(e.completion_ids)
        ids[row, prompt - p : prompt] = torch.tensor(e.prompt_ids)
        ids[row, prompt : prompt + c] = torch.tensor(e.completion_ids)
        attention[row, prompt - p : prompt + c] = 1
        scored[row, :c] = torch.tensor(e.mask)
    return ids, attention, scored


def train_pass(model, batch, scored_only: bool) -> tuple[float, torch.Tensor]:
    """GRPO's log-probs (with entropies) of the batch and a backward through them; seconds and the log-probs."""
    ids, attention, scored = batch
    trainer = object.__new__(BridgedGRPOTrainer)  # only what the method reads: the accelerator
    trainer.accelerator = Accelerator(cpu=True)
    trainer.scored_positions = scored if scored_only else None
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, ids, attention, scored.size(1), batch_size=ids.size(0), compute_entropy=True
    )
    (logps * scored).sum().backward()
    return time.perf_counter() - start, logps.detach()


def measure(tokenizer_name: str, episodes: int, repeats: int) -> list[dict]:
    config = load_config("configs/quickstart.yaml", [f"model.tiny.tokenizer={tokenizer_name}"])
    model, tokenizer = load_policy(config.model, config.seed, env_factory(config), config.env.max_turns)
    add_fused_lm_head(
        model, temperature=config.rollout.temperature, outputs=("log_probs", "entropy")
    )  # as TRL
    model.eval()
    engine = RolloutEngine(
        model, tokenizer, turn_format_for(config, tokenizer), env_factory(config), sampling_settings(config)
    )
    monkey = {"last": hf_backend.last_logits_only}
    rows = {FULL: [], LAST: [], ALL_POSITIONS: [], SCORED: []}
    try:
        warm = list(range(10**6, 10**6 + episodes))
        for last_only in (False, True):
            play(engine, warm, 99, last_only, monkey)
        for repeat in range(repeats):
            seeds = list(range(repeat * episodes, (repeat + 1) * episodes))
            results = {}
            for name, last_only in ((FULL, False), (LAST, True)):
                seconds, steps, tokens, played = play(engine, seeds, repeat, last_only, monkey)
                results[name] = tokens
                rows[name].append(steps / seconds)
                print(
                    f"  {tokenizer_name:10s} repeat {repeat} {name:11s} {steps:5d} env steps {seconds:7.2f} s"
                )
            if results[FULL] != results[LAST]:
                raise SystemExit(
                    f"{tokenizer_name}: the two variants sampled different tokens (repeat {repeat})"
                )
            batch = training_batch(played)
            model.train()
            logps = {}
            for name, scored_only in ((ALL_POSITIONS, False), (SCORED, True)):
                seconds, logps[name] = train_pass(model, batch, scored_only)
                rows[name].append(seconds)
                print(
                    f"  {tokenizer_name:10s} repeat {repeat} {name:13s} {batch[0].numel():6d} positions {seconds:7.2f} s"
                )
            model.eval()
            mask = batch[2].bool()
            if not torch.allclose(logps[ALL_POSITIONS][mask], logps[SCORED][mask], atol=1e-5):
                raise SystemExit(
                    f"{tokenizer_name}: scored-only log-probs differ from TRL's (repeat {repeat})"
                )
    finally:
        hf_backend.last_logits_only = monkey["last"]
    vocab = model.get_output_embeddings().weight.shape[0]
    return [
        {"tokenizer": tokenizer_name, "vocab": vocab, "variant": name, "values": v}
        for name, v in rows.items()
    ]


def table(rows: list[dict]) -> str:
    lines = [
        "| tokenizer | vocabulary | part | variant | mean ± sd | speed-up |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for part, variants, unit in (("rollout", ROLLOUT, "env steps/s"), ("training", TRAINING, "s per batch")):
        base = {r["tokenizer"]: statistics.mean(r["values"]) for r in rows if r["variant"] == variants[0]}
        for r in rows:
            if r["variant"] not in variants:
                continue
            mean = statistics.mean(r["values"])
            sd = statistics.stdev(r["values"]) if len(r["values"]) > 1 else 0.0
            ratio = mean / base[r["tokenizer"]] if unit == "env steps/s" else base[r["tokenizer"]] / mean
            lines.append(
                f"| {r['tokenizer']} | {r['vocab']:,} | {part} | {r['variant']} | {mean:.2f} ± {sd:.2f} {unit} | "
                f"{ratio:.2f}x |"
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
