"""One step of classification-based policy iteration with rollouts, on a text policy's greedy decisions.

Lagoudakis & Parr (2003), "Reinforcement learning as classification: leveraging modern classifiers"; Lazaric,
Ghavamzadeh & Munos (2010). No expert: only the env's reward. For each training task the policy plays greedily;
in each failed greedy episode, at every turn, every other move is tried once, followed by the policy's own greedy
play (the env is deterministic, so one rollout values a branch exactly). A turn where some other move then
succeeds gets that move as a label (the shortest such episode's move); the greedy decisions of the successful
episodes are kept as labels too, so the step does not drift where the policy is already right. The policy is
then fine-tuned on the labels with cross-entropy on the action tokens (as SFT does), and played greedily on the
validation tasks, before and after.

Unlike a policy-gradient step, the update is a positive label on the better move at exactly the states where the
greedy decision is wrong; the seventh-session probes found policy gradients (even with exact per-turn credit)
raise the wrong move there instead. Used by the addendum of benchmarks/investigations/greedy_success_2026-12-07.md.

Command:
    python benchmarks/investigations/probes/rollout_policy_iteration.py --config configs/quickstart.yaml \\
        --init runs/learning_table/random_4x4/random_4x4_sft_s0/checkpoints/sft --tasks 600 --out /tmp/rpi
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from rlft.config.schema import load_config
from rlft.models.policy import load_pretrained
from rlft.rollout.env_factory import make_env
from rlft.rollout.evaluation import evaluate_policy, held_out_seeds
from rlft.stages.common import env_factory, rollout_engine, turn_format_for
from rlft.stages.generalisation import validation_seeds

MOVES = ("left", "down", "right", "up")


class GreedyPlayer:
    """Plays an episode from a forced action prefix, then greedily over the four moves."""

    def __init__(self, config, model, tokenizer):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.format = turn_format_for(config, tokenizer)
        self.move_ids = [tokenizer.convert_tokens_to_ids(m) for m in MOVES]
        self.env = make_env(config.env)

    @torch.no_grad()
    def play(self, seed: int, prefix: list[str]) -> tuple[bool, list[str], list[list[int]]]:
        """(success, actions, the context before each action)."""
        observation, _ = self.env.reset(seed=seed)
        context = self.format.prompt_ids(getattr(self.env.unwrapped, "instructions", ""), observation)
        actions, contexts = [], []
        for turn in range(self.config.env.max_turns):
            contexts.append(list(context))
            if turn < len(prefix):
                action = prefix[turn]
            else:
                logits = self.model(torch.tensor([context])).logits[0, -1, self.move_ids]
                action = MOVES[int(logits.argmax())]
            actions.append(action)
            observation, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                return bool(info.get("success", False)), actions, contexts
            context += self.format.action_ids(action) + self.format.observation_ids(observation)
        return False, actions, contexts


def improvement_labels(
    player: GreedyPlayer, seeds: list[int], anchors: bool = True, repeat: int = 1
) -> tuple[list[tuple[list[int], str]], dict]:
    labels, stats = [], {"tasks": len(seeds), "greedy_success": 0, "failed_fixed": 0, "improved_turns": 0}
    for seed in seeds:
        success, actions, contexts = player.play(seed, [])
        if success:
            stats["greedy_success"] += 1
            if anchors:
                labels += [(c, a) for c, a in zip(contexts, actions, strict=True)]
            continue
        fixed = False
        for t in range(len(actions)):
            best = None
            for move in MOVES:
                if move == actions[t]:
                    continue
                ok, branch, _ = player.play(seed, actions[:t] + [move])
                if ok and (best is None or len(branch) < best[0]):
                    best = (len(branch), move)
            if best is not None:
                labels += [(contexts[t], best[1])] * repeat
                stats["improved_turns"] += 1
                fixed = True
        stats["failed_fixed"] += int(fixed)
    return labels, stats


def fine_tune(model, player: GreedyPlayer, labels, lr: float, epochs: int, batch: int, seed: int) -> None:
    """Cross-entropy on each label's action tokens (the move and its end-of-action token)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rows = []
    for context, move in labels:
        target = player.format.action_ids(move)
        rows.append((context + target, len(target)))
    rng = random.Random(seed)
    model.train()
    for _ in range(epochs):
        rng.shuffle(rows)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            width = max(len(ids) for ids, _ in chunk)
            pad = player.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(r)) + r for r, _ in chunk])
            attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r, _ in chunk])
            labels_t = torch.full_like(ids, -100)
            for i, (_, n) in enumerate(chunk):
                labels_t[i, width - n :] = ids[i, width - n :]
            loss = model(input_ids=ids, attention_mask=attention, labels=labels_t).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()


def validate(config, model, tokenizer, seeds: list[int] | None = None) -> dict:
    """Greedy and sampled success on the validation seeds (or on `seeds`)."""
    seeds = validation_seeds(config) if seeds is None else seeds
    out = {}
    for greedy in (True, False):
        summary, _ = evaluate_policy(rollout_engine(config, tokenizer, model, greedy=greedy), seeds, 100)
        out["greedy" if greedy else "sampled"] = summary["success"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--init", required=True, help="the policy checkpoint to improve")
    parser.add_argument("--tasks", type=int, default=600, help="training seeds 0..N-1")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1, help="copies of each improvement label")
    parser.add_argument("--no-anchors", action="store_true", help="label only the improved turns")
    parser.add_argument(
        "--test-only",
        action="store_true",
        help="only play --init on the test seeds (eval.seed_start, eval.episodes)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = load_config(args.config, overrides=["eval.during_episodes=100"])
    model, tokenizer = load_pretrained(args.init)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.test_only:
        test = held_out_seeds(env_factory(config), config.env, config.eval)
        result = {
            "checkpoint": args.init,
            "test_episodes": len(test),
            **validate(config, model, tokenizer, test),
        }
        print(json.dumps(result), flush=True)
        with (args.out / "test.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
        return
    report = [{"iteration": 0, "validation": validate(config, model, tokenizer)}]
    print(json.dumps(report[-1]), flush=True)
    for iteration in range(1, args.iterations + 1):
        player = GreedyPlayer(config, model, tokenizer)
        seeds = list(range((iteration - 1) * args.tasks, iteration * args.tasks))
        labels, stats = improvement_labels(player, seeds, anchors=not args.no_anchors, repeat=args.repeat)
        print(json.dumps({"iteration": iteration, **stats, "labels": len(labels)}), flush=True)
        fine_tune(model, player, labels, args.lr, args.epochs, args.batch, seed=iteration)
        trained = sum(player.play(seed, [])[0] for seed in seeds)
        report.append(
            {
                "iteration": iteration,
                **stats,
                "greedy_success_after": trained,
                "validation": validate(config, model, tokenizer),
            }
        )
        print(json.dumps(report[-1]), flush=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        model.save_pretrained(args.out / f"iteration-{iteration}")
        tokenizer.save_pretrained(args.out / f"iteration-{iteration}")


if __name__ == "__main__":
    main()
