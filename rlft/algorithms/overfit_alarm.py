"""The overfitting alarm: success on the training tasks keeps rising while success on held-out tasks falls.

A policy trained on few tasks can learn them by heart (Cobbe et al. 2019, "Quantifying generalization in
reinforcement learning"): its success on the tasks it trains on rises while its success on unseen tasks of the
same distribution falls. The reward over-optimisation alarm (rlft.rewards.alarm) watches proxy against gold
reward; this one watches training against validation success, as measured at each evaluation of
`eval.every_steps` (rlft.stages.generalisation).

Over the last `window` evaluations it fits a least-squares line to each series and takes the line's change
across the window (slope x (window - 1)) as the rise or fall: every point of the window counts, so one noisy
evaluation moves it less than it would move a difference of the window's two ends. It fires when training
success rose by more than `margin` while validation success fell by more than `margin`. Each evaluation logs
`generalisation/overfit_alarm` (1 fired, 0 not) once the window is full, with the two changes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


def window_change(values: list[float]) -> float:
    """The change of the least-squares line through `values` (one per evaluation) from the first to the last.

    >>> round(window_change([0.2, 0.3, 0.5, 0.6]), 6)  # slope 0.14 per evaluation, over 3 intervals
    0.42
    """
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    dx = x - x.mean()
    slope = float((dx * (y - y.mean())).sum() / (dx * dx).sum())
    return slope * (len(y) - 1)


@dataclass
class OverfitEvent:
    step: int
    train_rise: float  # the training success line's change over the window (> margin)
    validation_fall: float  # minus the validation success line's change (> margin)
    train_success: float  # the latest evaluation's
    validation_success: float


class OverfitAlarm:
    """Fires when, over the last `window` evaluations, training success rose and validation success fell, each
    by more than `margin` (changes of their least-squares lines).

    Args:
        window: evaluations the changes are measured over (silent until it has that many).
        margin: the rise and the fall each must exceed (success is a fraction, so 0.1 is 10 points).
    """

    def __init__(self, window: int = 4, margin: float = 0.1):
        if window < 2:
            raise ValueError(f"window must be at least 2 evaluations, got {window}")
        self.window, self.margin = window, margin
        self.history: list[tuple[int, float, float]] = []  # (step, train, validation), the last `window`
        self.fired_at: int | None = None  # the first step it fired at
        self.last: dict[str, float] = {}  # the metrics of the latest full window

    def observe(self, step: int, train_success: float, validation_success: float) -> OverfitEvent | None:
        """Add one evaluation; the event when the alarm fires on it."""
        self.last = {}
        if not (math.isfinite(train_success) and math.isfinite(validation_success)):
            return None
        self.history = (self.history + [(int(step), float(train_success), float(validation_success))])[
            -self.window :
        ]
        if len(self.history) < self.window:
            return None
        rise = window_change([t for _, t, _ in self.history])
        fall = -window_change([v for _, _, v in self.history])
        fired = rise > self.margin and fall > self.margin
        self.last = {
            "generalisation/overfit_alarm": float(fired),
            "generalisation/train_rise": rise,
            "generalisation/validation_fall": fall,
        }
        if not fired:
            return None
        event = OverfitEvent(int(step), rise, fall, float(train_success), float(validation_success))
        if self.fired_at is None:
            self.fired_at = event.step
            self.warn(event)
        return event

    def warn(self, event: OverfitEvent) -> None:
        """The console warning, the first time it fires: the step and the numbers, and what to try."""
        logger.warning(
            "overfitting alarm at step %d: over the last %d evaluations training-task success rose by %.3f (now "
            "%.3f) while validation success fell by %.3f (now %.3f), both past eval.overfit_alarm.margin = %.2f: "
            "the policy is learning its training tasks rather than the task. Try more training tasks "
            "(env.train_seeds.count), fewer RL steps or eval.keep_best: true (the best validation checkpoint)",
            event.step,
            self.window,
            event.train_rise,
            event.train_success,
            event.validation_fall,
            event.validation_success,
            self.margin,
        )
