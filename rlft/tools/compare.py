"""`rlft compare RUN_OR_DIR ... --out report.html`: a self-contained HTML dashboard comparing runs.

Runs are grouped into variants by their resolved config minus the seed (`rlft.tools.report.runs`); the page
shows, per variant and across seeds: held-out learning curves (eval/success, eval/return against env
steps), final held-out performance as IQM, median and mean with 95% stratified-bootstrap CIs and
performance profiles (rliable), per-reward-component curves, gold against proxy with the over-optimisation
alarm's events, success on training against held-out tasks with their gap (generalisation/gap), and a table
of the configs' differences. Every figure is also written as a PNG to `<out stem>_figures/`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rlft.tools.report.runs import (
    DEFAULT_IGNORED,
    CompareError,
    Variant,
    config_differences,
    find_run_dirs,
    group_variants,
    load_run,
)

if (
    TYPE_CHECKING
):  # numpy, matplotlib and rliable load only when a report is made, not with every rlft command
    from rlft.tools.report.figures import Plot
    from rlft.tools.report.stats import FinalScores

FIGURE_NAMES = (
    "learning_curves",
    "final_performance",
    "performance_profiles",
    "reward_components",
    "gold_vs_proxy",
    "generalisation_gap",
)
METRICS = (("success", "success"), ("return", "return"))
DEFAULT_REPS = 2000


@dataclass
class Report:
    """What `compare` wrote and what it computed (the tests read this)."""

    html: Path
    figures_dir: Path
    variants: list[Variant]
    differences: list[str]
    plots: list[Plot]
    finals: dict[str, FinalScores] = field(default_factory=dict)
    # metric -> label -> (IQM, median, mean); the labels are the variants', then the reference rows'
    points: dict[str, dict] = field(default_factory=dict)
    intervals: dict[str, dict] = field(default_factory=dict)  # metric -> label -> (2, 3) low/high rows
    references: dict[str, FinalScores] = field(default_factory=dict)  # untrained, sft, expert, random rows
    per_episode: dict[str, set[str]] = field(default_factory=dict)  # metric -> rows with a per-episode CI

    @property
    def pngs(self) -> dict[str, Path]:
        return {p.name: self.figures_dir / f"{p.name}.png" for p in self.plots if p.figure is not None}


def figures_dir_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}_figures")


def compare(
    paths: list[str | Path],
    out: str | Path = "report.html",
    ignore: tuple[str, ...] = (),
    reps: int = DEFAULT_REPS,
    seed: int = 0,
) -> Report:
    """Read the runs under `paths`, write the HTML page to `out` and one PNG per figure beside it."""
    # numpy, matplotlib and rliable load here, when a report is made, not with every rlft command (the CLI
    # imports this module to build its parser).
    from rlft.tools.report import figures
    from rlft.tools.report.generalisation import generalisation_gap
    from rlft.tools.report.references import reference_scores
    from rlft.tools.report.stats import final_scores, interval_estimates, one_seed_intervals, score_matrices

    out = Path(out)
    ignored = tuple(dict.fromkeys((*DEFAULT_IGNORED, *ignore)))
    runs = [load_run(path) for path in find_run_dirs(list(paths))]
    variants = group_variants(runs, ignored)
    differences = config_differences(variants)

    finals, references, points, intervals, per_episode = {}, {}, {}, {}, {}
    for metric, _ in METRICS:
        finals[metric] = final_scores(variants, metric)
        references[metric] = reference_scores(variants, metric, {v.label for v in variants})
        rows = [f for f in (finals[metric], references[metric]) if f.scores]
        if finals[metric].scores:
            points[metric], intervals[metric] = {}, {}
            for rows_finals in rows:
                point, interval = interval_estimates(score_matrices(rows_finals), reps, seed)
                points[metric].update(point)
                intervals[metric].update(interval)
            per_episode[metric] = set().union(*(one_seed_intervals(f, intervals[metric]) for f in rows))
    labels = [label for metric, label in METRICS if metric in points]
    plots = [
        figures.metric_curves(
            variants,
            ["eval/success", "eval/return"],
            "learning_curves",
            "Held-out learning curves",
            reps,
            seed,
            "No held-out evaluation during RL in any run (eval/success, eval/return against "
            "episode/env_steps_total); set eval.every_steps to log it.",
        ),
        figures.final_performance(points, intervals, labels),
        figures.profiles({m: score_matrices(finals[m]) for m in points}, labels, reps, seed),
        figures.reward_components(variants, reps, seed),
        figures.gold_vs_proxy(variants, reps, seed),
        generalisation_gap(variants, reps, seed),
    ]

    figures_dir = figures_dir_for(out)
    figures_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, Path] = {}
    for plot in plots:
        png = figures_dir / f"{plot.name}.png"
        png.unlink(missing_ok=True)  # a figure this report leaves out must not survive from an earlier one
        if plot.figure is not None:
            plot.figure.savefig(png, dpi=100)
            pngs[plot.name] = png

    report = Report(
        out, figures_dir, variants, differences, plots, finals, points, intervals, references, per_episode
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(report, [str(p) for p in paths], ignored, reps, pngs), encoding="utf-8")
    return report


def _page(
    report: Report, sources: list[str], ignored: tuple[str, ...], reps: int, pngs: dict[str, Path]
) -> str:
    from rlft.tools.report import figures, page  # matplotlib: see `compare`

    by_name = {p.name: p for p in report.plots}
    here = report.html.parent

    def fig(name: str) -> str:
        return page.figure_html(by_name[name], pngs.get(name), here)

    finals_html = "".join(
        page.finals_table(
            label,
            report.finals[metric],
            report.points[metric],
            report.intervals[metric],
            report.references[metric],
            report.per_episode[metric],
        )
        for metric, label in METRICS
        if metric in report.points
    )
    if not finals_html:
        finals_html = page.notes_html(
            [
                "No run has a final held-out score: neither eval.json with an rl policy "
                "(rlft eval) nor eval/success logged during RL."
            ]
        )
    finals_html += fig("final_performance") + fig("performance_profiles")
    alarms = {v.label: figures.alarm_events(v) for v in report.variants}
    gap = by_name["generalisation_gap"]  # drawn: its notes are the overfitting alarms (else they say why not)
    gap_notes = page.notes_html(gap.notes) if gap.figure is not None else ""
    problems = [
        f"{run.name}: {problem}" for v in report.variants for run in v.runs for problem in run.problems
    ]
    return page.render(
        title="rlft compare",
        sources=sources,
        variants=report.variants,
        differences=report.differences,
        ignored=ignored,
        finals_html=finals_html,
        problems=problems,
        reps=reps,
        sections=[
            ("Learning curves (held-out, during RL)", fig("learning_curves")),
            ("Reward components", fig("reward_components")),
            ("Gold against proxy", fig("gold_vs_proxy") + page.alarms_table(alarms)),
            ("Generalisation (training against held-out tasks)", fig("generalisation_gap") + gap_notes),
        ],
    )


# ------------------------------------------------------------------------------------------------ CLI
def add_compare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `rlft compare` on the CLI's subparsers (it takes run paths, not --config)."""
    p = sub.add_parser(
        "compare",
        help="an offline HTML dashboard comparing runs (seeds grouped into variants)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_OR_DIR",
        help="run directories (with config.yaml) or folders holding them, e.g. runs/exp",
    )
    p.add_argument("--out", default="report.html", help="the HTML file; PNGs go to <stem>_figures/ beside it")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="a config key (dotted; a section drops all its keys) that does not make runs different "
        "variants, besides seed, name, output_dir and tracking; e.g. rl.init_from when each "
        "seed starts from its own SFT checkpoint. Repeatable.",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=DEFAULT_REPS,
        help=f"bootstrap replications for every confidence interval (default {DEFAULT_REPS})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    return p


def run_compare(args: argparse.Namespace) -> int:
    if args.reps < 1:
        raise CompareError(f"--reps must be at least 1, got {args.reps}")
    report = compare(args.paths, args.out, tuple(args.ignore), args.reps, args.seed)
    runs = sum(len(v.runs) for v in report.variants)
    print(
        f"{runs} runs in {len(report.variants)} variants: "
        + ", ".join(
            f"{v.label} ({len(v.runs)} seed{'s' if len(v.runs) != 1 else ''})" for v in report.variants
        )
    )
    for plot in report.plots:
        if plot.figure is None:
            print(f"  {plot.name}: not drawn ({'; '.join(plot.notes)})", file=sys.stderr)
    print(f"report: {report.html}  (figures: {report.figures_dir}/)")
    return 0
