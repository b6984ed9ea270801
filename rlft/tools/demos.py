"""`rlft demos --config x.yaml --out demos.jsonl [--episodes N] [--epsilon E] [--seed S] [--policy CHECKPOINT]`

Records demonstrations as JSONL rows that `sft.demos: {source: jsonl, path: demos.jsonl}` reads back as the
same token-exact Episodes the expert source makes: the env's own instructions and observation texts, each
turn's action and reward, and the episode's seed, success and task id. The players:

- the env's expert (default): the function named by `env.expert`, the method named by
  `env.adapter.expert_method`, the env's `make_expert(epsilon, seed)`, or value iteration on a transition
  table; `--epsilon` plays a uniformly random action with that probability, from a generator seeded
  with `--seed`;
- a saved policy (`--policy CHECKPOINT`), sampled as `rollout.temperature` / `top_p` say (`--greedy` for
  greedy decoding); episodes whose env failed are left out.

Episodes are played on reset seeds `--seed-start + i` (default: `env.train_seeds.start`). Every bad input
(no expert, a bad value, an existing file without `--force`) exits with code 2 before anything plays, and
the file is written at once at the end, so an interrupted recording leaves nothing behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlft.config.schema import Config, ExpertDemos, load_config
from rlft.errors import ConfigError
from rlft.rollout.demos import (
    DemoRecord,
    demo_stats,
    policy_demo_records,
    record_expert_demos,
    write_jsonl_demos,
)
from rlft.rollout.env_check import check_env_plays
from rlft.rollout.env_factory import check_env_reference, make_env
from rlft.rollout.experts import check_expert


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `rlft demos` on the CLI's subparsers."""
    p = sub.add_parser(
        "demos",
        help="record demonstrations (the JSONL sft.demos reads) from the env's expert or a saved policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="YAML experiment file (its env section is played)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--episodes", type=int, help="episodes to record (default: sft.demos.episodes)")
    p.add_argument(
        "--epsilon", type=float, help="expert only: random-action probability (default: sft.demos)"
    )
    p.add_argument("--seed", type=int, help="seed of the expert's noise or the policy's sampling")
    p.add_argument("--seed-start", type=int, help="first reset seed (default: env.train_seeds.start)")
    p.add_argument("--policy", metavar="CHECKPOINT", help="record a saved policy instead of the expert")
    p.add_argument("--greedy", action="store_true", help="with --policy: greedy decoding instead of sampling")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def run(args: argparse.Namespace) -> int:
    """Check everything, play the episodes, write the file; print where it is and what it holds."""
    config = load_config(args.config, args.overrides)
    settings = _settings(args, config)
    check_env_reference(config.env)
    check_env_plays(config.env)  # the user's env, renderer and parser checked as `rlft validate` does
    if args.policy is None:
        check_expert(config.env, "`rlft demos` (without --policy)", "`rlft demos --policy CHECKPOINT`")
        records = record_expert_demos(
            lambda: make_env(config.env),
            settings["episodes"],
            settings["epsilon"],
            settings["seed"],
            settings["seed_start"],
            config.env.max_turns,
        )
    else:
        records = _record_policy(config, args.policy, settings, args.greedy)
    path = write_jsonl_demos(settings["out"], records)
    stats = demo_stats(records)
    player = f"policy {args.policy}" if args.policy else f"expert (epsilon {settings['epsilon']})"
    print(
        f"{path}: {len(records)} demonstrations by the {player}, success {stats['demos/success']:.3f}, "
        f"mean return {stats['demos/return']:.3f}; train on them with sft.demos.path={path}"
    )
    return 0


def _settings(args: argparse.Namespace, config: Config) -> dict:
    """The command's values with defaults from the config's `sft.demos`; ConfigError for one that cannot work."""
    demos = config.sft.demos if isinstance(config.sft.demos, ExpertDemos) else ExpertDemos()
    settings = {
        "out": Path(args.out),
        "episodes": args.episodes if args.episodes is not None else demos.episodes,
        "epsilon": args.epsilon if args.epsilon is not None else demos.epsilon,
        "seed": args.seed if args.seed is not None else demos.seed,
        "seed_start": args.seed_start if args.seed_start is not None else config.env.train_seeds.start,
    }
    if settings["episodes"] < 1:
        raise ConfigError(f"--episodes {settings['episodes']}: expected at least 1")
    if not 0.0 <= settings["epsilon"] <= 1.0:
        raise ConfigError(f"--epsilon {settings['epsilon']}: expected a probability in [0, 1]")
    if settings["seed_start"] < 0:
        raise ConfigError(f"--seed-start {settings['seed_start']}: expected a reset seed >= 0")
    if args.policy is not None and args.epsilon is not None:
        raise ConfigError(
            "--epsilon is the expert's noise; a policy (--policy) samples as rollout.temperature says: "
            "remove --epsilon (or add --greedy for greedy decoding)"
        )
    if args.greedy and args.policy is None:
        raise ConfigError("--greedy is for --policy; the expert is greedy unless --epsilon is above 0")
    if settings["out"].exists() and not args.force:
        raise ConfigError(f"--out {settings['out']}: the file exists; pass --force to overwrite it")
    if settings["out"].is_dir():
        raise ConfigError(f"--out {settings['out']}: is a folder; expected a file path such as demos.jsonl")
    return settings


def _record_policy(config: Config, checkpoint: str, settings: dict, greedy: bool) -> list[DemoRecord]:
    """A saved policy's episodes as demonstrations."""
    # torch, transformers and TRL load here, when a policy plays, not with every rlft command (rlft.cli).
    import torch

    from rlft.stages.common import load_checkpoint, rollout_engine

    folder = Path(checkpoint).expanduser()
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ConfigError(
            f"--policy {checkpoint}: not a saved checkpoint (no config.json); expected a folder such as "
            f"{config.run_dir / 'checkpoints' / 'sft'}"
        )
    model, tokenizer = load_checkpoint(folder, config)
    engine = rollout_engine(config, tokenizer, model, greedy=greedy)
    seeds = [settings["seed_start"] + i for i in range(settings["episodes"])]
    generator = torch.Generator().manual_seed(settings["seed"])
    episodes = engine.play(seeds, generator=generator, batch_size=config.eval.batch_size)
    env = make_env(config.env)
    instructions = getattr(env.unwrapped, "instructions", "")
    env.close()
    return policy_demo_records(episodes, instructions)
