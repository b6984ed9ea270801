"""`rlft <command> --config configs/x.yaml key.sub=value ...`

Commands: sft, train, eval, pipeline (sft -> train -> eval), rm (reward model), validate. The config is loaded and checked
(keys, types, env ids, paths, trainer keys) before any model is loaded; a bad one exits with code 2.
`rlft launch --grid configs/grids/x.yaml` runs a grid of configs x overrides x seeds (rlft/tools/launch.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from rlft.errors import CheckpointError, RlftError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("validate", "check a config and exit"),
                            ("sft", "supervised fine-tuning on demonstrations"),
                            ("train", "reinforcement learning (rl.algorithm)"),
                            ("eval", "held-out evaluation of this run's checkpoints and the expert"),
                            ("pipeline", "sft -> train -> eval, with a table at the end"),
                            ("rm", "train a reward model (or an ensemble) on preference pairs")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="YAML experiment file")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        if name == "train":
            p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                           help="continue exactly from the newest complete checkpoint of this run "
                                "(or from CHECKPOINT, a trainer/rl/checkpoint-<step> folder)")
    from rlft.tools.compare import add_compare_parser

    add_compare_parser(sub)  # `rlft compare RUN_OR_DIR ... --out report.html`: run paths, not --config
    from rlft.tools.sweep import add_parser as add_sweep_parser

    add_sweep_parser(sub)  # `rlft sweep --config sweeps/x.yaml [--n-trials N] [--storage URL]`: a sweep file
    from rlft.tools import launch

    launch.add_parser(sub)  # `rlft launch --grid configs/grids/x.yaml [--parallel N] [--dry-run]`: a grid file
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "compare":
            from rlft.tools.compare import run_compare

            return run_compare(args)
        if args.command == "sweep":
            from rlft.tools import sweep

            return sweep.main(args)
        if args.command == "launch":
            from rlft.tools import launch

            return launch.run(args)
        from rlft.config.schema import load_config

        config = load_config(args.config, args.overrides)  # keys and types: a typo fails before torch loads
        from rlft.stages.checks import check_config  # (imports the stages: torch, TRL)

        check_config(config)  # what the config points at, before any model loads
        if args.command == "validate":
            print(f"{args.config}: ok ({config.name}, env {config.env.id}, algorithm {config.rl.algorithm})")
            return 0
        return _run(args.command, config, getattr(args, "resume", None))
    except RlftError as exc:
        print(f"rlft: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(command: str, config, resume=None) -> int:
    from rlft import stages
    from rlft.stages import common as stage_common

    _check_earlier_stages(command, config)
    if command == "pipeline" or (command == "train" and not resume):
        from rlft.algorithms.checkpointing import refuse_to_overwrite

        refuse_to_overwrite(config.run_dir / "trainer" / "rl")  # before SFT, so a pipeline fails fast
    start = time.perf_counter()
    if command == "sft":
        print(f"sft checkpoint: {stages.run_sft(config)}")
    elif command == "train":
        print(f"rl checkpoint: {stages.run_rl(config, resume=resume)}")
    elif command == "eval":
        print(stages.format_table(stages.run_eval(config)))
    elif command == "pipeline":
        print(stages.format_table(stages.run_pipeline(config)))
    elif command == "rm":
        from rlft.stages.rm import run_rm

        print(f"reward model: {run_rm(config)}")
    print(f"run directory: {config.run_dir}  ({time.perf_counter() - start:.0f} s)")
    for command_line in stage_common.sync_commands():
        print(f"to upload the offline wandb run: {command_line}")
    return 0


def _check_earlier_stages(command: str, config) -> None:
    """What a stage needs from this run's earlier stages, checked before the stage writes into the run directory."""
    from rlft.stages import eval as stage_eval
    from rlft.stages import rl as stage_rl

    if command == "train" and config.rl.init_from == "sft":
        stage_rl.resolve_init(config)  # no SFT checkpoint yet: CheckpointError naming the command to run first
    if command == "train":
        from rlft.config.schema import RmRewardComponent
        from rlft.rewards.references import run_reward_model

        rm_path = run_reward_model(config)
        if any(isinstance(c, RmRewardComponent) and c.path is None for c in config.reward.components.values()) \
                and not rm_path.is_dir():
            raise CheckpointError(f"the reward design uses this run's reward model but {rm_path} does not exist; "
                                  "run `rlft rm` first (or `rlft pipeline`, which trains it)")
    elif command == "eval":
        stage_eval.default_policies(config)  # no checkpoint at all: CheckpointError


if __name__ == "__main__":
    sys.exit(main())
