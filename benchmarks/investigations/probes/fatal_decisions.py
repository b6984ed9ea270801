"""How sure a policy is of the move that ends its failed greedy episodes, checkpoint by checkpoint.

Plays the FIRST checkpoint greedily on training seeds, takes the context of the last action of every failed
episode (on FrozenLake: the step into a hole), and prints, for each checkpoint, the mean probability of that
fatal move over the whole vocabulary, the mass on the four action words, and the fatal move's probability
renormalised over the action words (the action-set policy's view). Used by the seventh-session addendum of
benchmarks/investigations/greedy_success_2026-12-07.md.

Command:
    python benchmarks/investigations/probes/fatal_decisions.py --config CONFIG CKPT_SFT CKPT_RL [...]
"""

from __future__ import annotations

import argparse

import torch

from rlft.config.schema import load_config
from rlft.models.policy import load_pretrained
from rlft.rollout.evaluation import evaluate_policy
from rlft.stages.common import rollout_engine

ACTIONS = ("left", "down", "right", "up")


def fatal_contexts(config_path: str, checkpoint: str, seeds: list[int]) -> tuple[list, list[int]]:
    """(token ids before the last action, that action's index) for each failed greedy episode."""
    model, tokenizer = load_pretrained(checkpoint)
    engine = rollout_engine(load_config(config_path), tokenizer, model, greedy=True)
    _, episodes = evaluate_policy(engine, seeds, batch_size=len(seeds))
    contexts = []
    for episode in episodes:
        last = episode.actions[-1] if episode.actions else ""
        if episode.success or last not in ACTIONS:
            continue
        k = len(episode.action_ends) - 1
        start = episode.action_ends[k - 1] + 1 if k > 0 else 0
        while episode.mask[start] == 0:
            start += 1
        contexts.append((episode.prompt_ids + episode.completion_ids[:start], ACTIONS.index(last)))
    ids = [tokenizer.convert_tokens_to_ids(word) for word in ACTIONS]
    return contexts, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, default=150, help="training seeds 0..N-1")
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    contexts, action_ids = fatal_contexts(args.config, args.checkpoints[0], list(range(args.seeds)))
    print(f"{len(contexts)} failed greedy episodes of {args.seeds} (played by {args.checkpoints[0]})")
    print(
        "| checkpoint | p(fatal move) | mass on the action words | p(fatal move), action set | argmax changed |"
    )
    print("| --- | --- | --- | --- | --- |")
    for path in args.checkpoints:
        model, _ = load_pretrained(path)
        model.eval()
        fatal, mass, in_set, changed = [], [], [], 0
        with torch.no_grad():
            for ids, move in contexts:
                logits = model(torch.tensor([ids])).logits[0, -1]
                probs = torch.softmax(logits, -1)
                fatal.append(float(probs[action_ids[move]]))
                mass.append(float(probs[action_ids].sum()))
                in_set.append(float(torch.softmax(logits[action_ids], -1)[move]))
                changed += int(int(probs.argmax()) != action_ids[move])
        n = len(contexts)
        print(
            f"| {path} | {sum(fatal) / n:.3f} | {sum(mass) / n:.3f} | {sum(in_set) / n:.3f} | {changed} / {n} |"
        )


if __name__ == "__main__":
    main()
