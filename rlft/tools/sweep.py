"""`rlft sweep --config configs/sweeps/x.yaml [--n-trials N] [--storage URL] [--validate]`: an Optuna study.

The sweep file and its checks: rlft/tools/sweep_file.py (its keys are documented there; modelled in
sweep_schema.py); the study's storage: sweep_study.py; the trials: sweep_run.py; their records and the study's
summary: sweep_results.py.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `rlft sweep` on the CLI's subparsers."""
    p = sub.add_parser(
        "sweep", help="hyperparameter search: an Optuna study over a sweep file (configs/sweeps/)"
    )
    p.add_argument("--config", required=True, help="sweep YAML: base config, search space, study, storage")
    p.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="the study's total number of trials (replaces the "
        "file's n_trials); a study that holds fewer continues up to it",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="an RDB URL (sqlite:///..., postgresql://...) shared by every "
        "worker of the study (replaces the file's storage)",
    )
    p.add_argument("--validate", action="store_true", help="check the sweep file and exit")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the base config, for every trial")


def main(args: argparse.Namespace) -> int:
    """`rlft sweep`: returns the exit code; `RlftError`s propagate to the CLI, which prints them."""
    # The sweep file's checks and the trials import the stages (torch, TRL: seconds) and Optuna: imported when
    # `rlft sweep` runs, not when the CLI builds its parser, so that other commands do not wait for them.
    from rlft.tools.sweep_file import load_sweep, redact
    from rlft.tools.sweep_results import format_summary
    from rlft.tools.sweep_run import run_sweep

    sweep = load_sweep(args.config, args.overrides, n_trials=args.n_trials, storage=args.storage)
    if args.validate:
        print(
            f"{args.config}: ok (study {sweep.study}, {len(sweep.file.params)} params, {sweep.n_trials} trials, "
            f"storage {redact(sweep.storage_url)})"
        )
        return 0
    summary = run_sweep(sweep)
    print(format_summary(summary))
    return 0
