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
from pathlib import Path

from rlft.config.schema import load_config
from rlft.tools import compare, demos, launch, sweep
from rlft.tools.error_report import report_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("validate", "check a config and exit"),
        ("sft", "supervised fine-tuning on demonstrations"),
        ("train", "reinforcement learning (rl.algorithm)"),
        ("eval", "held-out evaluation of this run's checkpoints and the expert"),
        ("pipeline", "sft -> train -> eval, with a table at the end"),
        ("rm", "train a reward model (or an ensemble) on preference pairs"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="YAML experiment file")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        p.add_argument("--debug", action="store_true", help="on an error, print the traceback as well")
        if name == "train":
            p.add_argument(
                "--resume",
                nargs="?",
                const=True,
                default=None,
                metavar="CHECKPOINT",
                help="continue exactly from the newest complete checkpoint of this run "
                "(or from CHECKPOINT, a trainer/rl/checkpoint-<step> folder)",
            )
    compare.add_compare_parser(
        sub
    )  # `rlft compare RUN_OR_DIR ... --out report.html`: run paths, not --config
    demos.add_parser(sub)  # `rlft demos --config x.yaml --out demos.jsonl [--policy CHECKPOINT]`
    sweep.add_parser(sub)  # `rlft sweep --config sweeps/x.yaml [--n-trials N] [--storage URL]`: a sweep file
    launch.add_parser(
        sub
    )  # `rlft launch --grid configs/grids/x.yaml [--parallel N] [--dry-run]`: a grid file
    return parser


def _overrides_after_resume(args: argparse.Namespace, argv: list[str]) -> None:
    """`train --resume key=value ...`: argparse takes the first override for --resume's CHECKPOINT; give it back.

    A value with `=` that is not an existing folder is an override (a checkpoint folder is named
    `checkpoint-<step>`); the overrides keep the order they were typed in (a later one wins).
    """
    resume = getattr(args, "resume", None)
    if not isinstance(resume, str) or "=" not in resume or Path(resume).is_dir():
        return
    given = {*args.overrides, resume}
    args.overrides = [token for token in argv if token in given]
    args.resume = True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    _overrides_after_resume(args, argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = None  # once loaded, its `module:function` keys name the user's code in an error (error_report)
    try:
        if args.command == "compare":
            return compare.run_compare(args)
        if args.command == "demos":
            return demos.run(args)  # `rlft demos --config x.yaml --out demos.jsonl`: records demonstrations
        if args.command == "sweep":
            return sweep.main(args)
        if args.command == "launch":
            return launch.run(args, run_argv=main)  # jobs run one at a time in this process go through main
        config = load_config(args.config, args.overrides)  # keys and types: a typo fails before torch loads
        from rlft.stages.checks import check_config  # (imports the stages: torch, TRL)

        check_config(config)  # what the config points at, before any model loads
        if args.command == "validate":
            print(f"{args.config}: ok ({config.name}, env {config.env.id}, algorithm {config.rl.algorithm})")
            return 0
        # Imports the stages (torch, TRL: seconds): here, not at the top, so that `rlft --help`, `rlft compare`
        # and a config with a wrong key or type answer without them.
        from rlft.tools.commands import run_command

        return run_command(
            args.command, config, getattr(args, "resume", None), command_line=(args.config, args.overrides)
        )
    except Exception as exc:  # noqa: BLE001  (an RlftError or the user's code: one line; anything else re-raised)
        code = report_error(exc, config, debug=getattr(args, "debug", False))
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
