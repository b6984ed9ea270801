"""The over-optimisation alarm: the proxy reward keeps rising while the gold signal falls.

Optimising a learned or shaped proxy hard enough eventually buys proxy reward at the gold reward's expense
(Gao, Schulman & Hilton 2023, "Scaling laws for reward model overoptimization"). Over the last `window`
logged steps the alarm fits a least-squares line to each of the two logged series and fires when the
proxy's slope is positive and the gold's negative, each with |t| = |slope| / stderr(slope) above `min_t`.
The t-statistic makes the threshold noise-aware: the same slope fires on a smooth curve and not on a noisy
one. It is a test against the null of no trend with independent residuals; RL curves are autocorrelated,
which inflates t, hence a conservative default (3.0, p ~ 0.004 per series for a window of 20).

When it fires (a TrainerCallback reading the logs, placed before the tracker so its keys reach
metrics.jsonl): `alarm/overoptimization` = 1 with both slopes and t-statistics is added to that step's
logs, a warning is printed the first time, and with `stop` training stops after a checkpoint of the step
is saved. Every process reads the same logged values (the design's metrics are reduced across processes),
so every process takes the same decision.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


@dataclass
class Trend:
    slope: float
    t: float  # slope / its standard error; +-inf for a noiseless line, 0 for a flat one


def trend(values: Sequence[float]) -> Trend:
    """Least-squares slope of `values` against their index, and its t-statistic.

    scipy.stats.linregress when scipy is installed; otherwise the same closed form in numpy.

    >>> round(trend([1.0, 2.0, 2.9, 4.1]).slope, 6)
    1.02
    """
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    try:
        from scipy.stats import linregress
    except ImportError:
        linregress = None
    if linregress is not None:
        fit = linregress(x, y)
        slope, stderr = float(fit.slope), float(fit.stderr)
    else:
        dx = x - x.mean()
        sxx = float((dx * dx).sum())
        slope = float((dx * (y - y.mean())).sum() / sxx)
        residuals = y - (y.mean() + slope * dx)
        stderr = math.sqrt(float((residuals * residuals).sum()) / (len(y) - 2) / sxx)
    if stderr == 0.0 or not math.isfinite(stderr):  # a noiseless line (or too few points to tell)
        return Trend(slope, math.copysign(math.inf, slope) if abs(slope) > 1e-12 else 0.0)
    return Trend(slope, slope / stderr)


@dataclass
class AlarmEvent:
    step: int
    proxy: Trend
    gold: Trend


class OverOptimizationAlarm(TrainerCallback):
    """Fires when, over the last `window` logged steps, `proxy` trends up and `gold` trends down (|t| > min_t).

    Args:
        window: logged steps the trends are fitted over (the alarm is silent until it has that many).
        min_t: the |t-statistic| each slope must exceed.
        stop: stop training (checkpoint saved) when it fires.
        proxy, gold: the logged metric names.
    """

    def __init__(
        self,
        window: int = 20,
        min_t: float = 3.0,
        stop: bool = False,
        proxy: str = "proxy/return",
        gold: str = "gold/return",
    ):
        self.window, self.min_t, self.stop = window, min_t, stop
        self.proxy_key, self.gold_key = proxy, gold
        self.history: list[tuple[int, float, float]] = []  # (step, proxy, gold), the last `window`
        self.fired_at: int | None = None  # the first step it fired at
        self.events = 0

    @classmethod
    def from_config(cls, config) -> OverOptimizationAlarm:
        return cls(
            window=config.window, min_t=config.min_t, stop=config.stop, proxy=config.proxy, gold=config.gold
        )

    def observe(self, step: int, proxy: float, gold: float) -> AlarmEvent | None:
        """Add one logged step; the event when the alarm fires on it."""
        if not (math.isfinite(proxy) and math.isfinite(gold)):
            return None
        self.history = (self.history + [(int(step), float(proxy), float(gold))])[-self.window :]
        if len(self.history) < self.window:
            return None
        proxy_trend = trend([p for _, p, _ in self.history])
        gold_trend = trend([g for _, _, g in self.history])
        if proxy_trend.t > self.min_t and gold_trend.t < -self.min_t:
            self.events += 1
            if self.fired_at is None:
                self.fired_at = int(step)
            return AlarmEvent(int(step), proxy_trend, gold_trend)
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.proxy_key not in logs or self.gold_key not in logs:
            return control
        proxy, gold = logs[self.proxy_key], logs[self.gold_key]
        if proxy is None or gold is None:
            return control
        first = self.fired_at is None
        event = self.observe(state.global_step, proxy, gold)
        if event is None:
            return control
        logs.update(
            {
                "alarm/overoptimization": 1.0,
                "alarm/proxy_slope": event.proxy.slope,
                "alarm/gold_slope": event.gold.slope,
                "alarm/proxy_t": event.proxy.t,
                "alarm/gold_t": event.gold.t,
            }
        )
        if first and state.is_world_process_zero:
            logger.warning(
                "over-optimisation alarm at step %d: over the last %d logged steps %s rose (slope %+.4g per step, "
                "t = %.1f) while %s fell (slope %+.4g, t = %.1f)%s",
                event.step,
                self.window,
                self.proxy_key,
                event.proxy.slope,
                event.proxy.t,
                self.gold_key,
                event.gold.slope,
                event.gold.t,
                "; stopping after a checkpoint (reward.alarm.stop)" if self.stop else "",
            )
        if self.stop:
            control.should_save = True
            control.should_training_stop = True
        return control

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "fired_at": self.fired_at, "events": self.events}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(s), float(p), float(g)) for s, p, g in state["history"]]
        self.fired_at = state["fired_at"]
        self.events = int(state["events"])
