"""The generalisation figure of `rlft compare`: success on training tasks against held-out (validation) tasks
during RL, and the gap between them, per variant against env steps (rlft.stages.generalisation logs them)."""

from __future__ import annotations

from rlft.tools.report.figures import BAND_NOTE, Plot, metric_curves
from rlft.tools.report.runs import Variant
from rlft.tools.report.stats import series

GAP_KEY = "generalisation/gap"
KEYS = [GAP_KEY, "eval/train_success", "eval/val_success"]
ALARM_KEY = "generalisation/overfit_alarm"


def generalisation_gap(variants: list[Variant], reps: int, seed: int) -> Plot:
    """One panel for the gap (train - validation success), one each for the two successes; every variant in each.

    The first overfitting alarm of each run that fired is listed in the plot's notes (step in env steps)."""
    plot = metric_curves(
        variants,
        KEYS,
        "generalisation_gap",
        "Generalisation: training tasks against held-out tasks",
        reps,
        seed,
        "No run logged generalisation/gap (eval/train_success - eval/val_success); set eval.every_steps "
        "(with eval.train_tasks, on by default) to log it.",
    )
    plot.caption = (
        "generalisation/gap = eval/train_success - eval/val_success at each evaluation during RL "
        "(eval.every_steps), the decoding eval.greedy names: training tasks are the first of the run's own "
        "sampling order, validation tasks never occur in training. A gap that widens while validation success "
        "falls is overfitting (generalisation/overfit_alarm). " + BAND_NOTE
    )
    for variant in variants:
        for run in variant.runs:
            fired = series(run, ALARM_KEY)
            first = next((x for x, y in zip(fired.x, fired.y) if y > 0), None) if fired is not None else None
            if first is not None:
                plot.notes.append(
                    f"{variant.label}, {run.name}: overfitting alarm first at {first:.0f} env steps."
                )
    return plot
