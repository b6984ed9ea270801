"""The figures of `rlft compare`, drawn with matplotlib on `Figure` objects (no pyplot state, no display).

Each builder returns a `Plot`: a figure with its caption, or, when the runs lack what it needs, no figure
and a note saying why (the page shows the note in the figure's place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

from rlft.tools.report.runs import Variant
from rlft.tools.report.stats import (
    AGGREGATES,
    X_KEY,
    Band,
    band,
    keys_matching,
    performance_profiles,
    series,
)

PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
PROXY_COLOR, GOLD_COLOR, ALARM_COLOR = "#1f77b4", "#ff7f0e", "#d62728"
BAND_NOTE = (
    "Line: mean over seeds; band: its 95% stratified-bootstrap CI (rliable, per x point); thin lines: "
    "single seeds. x grid: 100 evenly spaced env-step values over the range every seed of the "
    "variant covers, each seed linearly interpolated onto it (no extrapolation)."
)


@dataclass
class Plot:
    name: str  # file stem of the PNG
    title: str
    figure: Figure | None = None
    caption: str = ""
    notes: list[str] = field(default_factory=list)  # why it is missing, or what it leaves out


def colors_for(variants: list[Variant]) -> dict[str, str]:
    return {v.label: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


def _grid(panels: int, ncols: int = 3, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, axes[:panels]


def _draw_band(ax, curve: Band, color: str, label: str, linestyle: str = "-") -> None:
    if len(curve.x) == 1:
        ax.errorbar(
            curve.x,
            curve.mean,
            yerr=[curve.mean - curve.low, curve.high - curve.mean],
            fmt="o",
            color=color,
            label=label,
        )
        return
    ax.plot(curve.x, curve.mean, color=color, linestyle=linestyle, linewidth=2, label=label)
    if curve.seeds > 1:
        ax.fill_between(curve.x, curve.low, curve.high, color=color, alpha=0.2, linewidth=0)


def _draw_metric(
    ax,
    variant: Variant,
    key: str,
    color: str,
    label: str,
    reps: int,
    seed: int,
    notes: list[str],
    linestyle: str = "-",
) -> bool:
    """Seeds faintly, then the variant's band. False when no run of the variant logged `key`."""
    curves = [c for c in (series(run, key) for run in variant.runs) if c is not None]
    if not curves:
        return False
    for c in curves:
        ax.plot(c.x, c.y, color=color, linestyle=linestyle, linewidth=0.7, alpha=0.3)
    curve = band(curves, reps, seed)
    if curve is None:
        notes.append(f"{variant.label}, {key}: the seeds' env-step ranges do not overlap; single seeds only.")
        ax.plot([], [], color=color, linestyle=linestyle, label=label)
    else:
        _draw_band(ax, curve, color, f"{label} (n={curve.seeds})", linestyle)
    return True


def metric_curves(
    variants: list[Variant], keys: list[str], name: str, title: str, reps: int, seed: int, missing: str
) -> Plot:
    """One panel per key (that some run logged), every variant in each, against env steps."""
    plot = Plot(name, title, caption=BAND_NOTE)
    logged = set(keys_matching([r for v in variants for r in v.runs], lambda k: k in keys))
    present = [k for k in keys if k in logged]
    if not present:
        plot.notes.append(missing)
        return plot
    colors = colors_for(variants)
    plot.figure, axes = _grid(len(present))
    for ax, key in zip(axes, present):
        for variant in variants:
            if not _draw_metric(
                ax, variant, key, colors[variant.label], variant.label, reps, seed, plot.notes
            ):
                plot.notes.append(f"{variant.label}: no '{key}' logged.")
        ax.set_title(key)
        ax.set_xlabel("env steps (" + X_KEY + ")")
        ax.grid(alpha=0.25)
        ax.legend(fontsize="small")
    return plot


def final_performance(
    points: dict, intervals: dict, metric_labels: list[str], name: str = "final_performance"
) -> Plot:
    """Per metric (a row) the IQM, median and mean (columns) of each variant with their 95% CIs.

    `points[metric][label]` has shape (3,), `intervals[metric][label]` (2, 3), in AGGREGATES order.
    """
    plot = Plot(
        name,
        "Final held-out performance: aggregates with 95% stratified-bootstrap CIs",
        caption="Bar: 95% stratified-bootstrap CI (rliable.library.get_interval_estimates); black tick: "
        "the point estimate. IQM = interquartile mean (rliable.metrics.aggregate_iqm).",
    )
    if not points:
        plot.notes.append(
            "No run has a final held-out score (eval.json's rl policy or eval/success during RL)."
        )
        return plot
    labels = list(next(iter(points.values())))
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    nrows = len(points)
    figure = Figure(
        figsize=(4.2 * len(AGGREGATES), 0.6 * len(labels) * nrows + 1.2 * nrows), layout="constrained"
    )
    axes = figure.subplots(nrows, len(AGGREGATES), squeeze=False)
    for row, (metric, metric_label) in enumerate(zip(points, metric_labels)):
        mine = list(points[metric])
        for col, aggregate in enumerate(AGGREGATES):
            ax = axes[row][col]
            for i, label in enumerate(mine):
                low, high = intervals[metric][label][:, col]
                ax.barh(i, high - low, left=low, height=0.6, color=colors.get(label, "grey"), alpha=0.75)
                ax.vlines(points[metric][label][col], i - 0.35, i + 0.35, color="k")
            ax.set_yticks(range(len(mine)), mine if col == 0 else [""] * len(mine))
            ax.set_ylim(-0.6, len(mine) - 0.4)
            ax.use_sticky_edges = False  # barh pins the x limits to the bars' left edge; keep a margin
            ax.margins(x=0.05)
            ax.set_title(f"{aggregate} of final {metric_label}")
            ax.grid(alpha=0.25, axis="x")
    plot.figure = figure
    return plot


def profiles(
    matrices: dict[str, dict[str, np.ndarray]],
    metric_labels: list[str],
    reps: int,
    seed: int,
    name: str = "performance_profiles",
) -> Plot:
    """Performance profiles (rliable): the fraction of runs whose final score exceeds each threshold tau."""
    from rliable import plot_utils

    plot = Plot(
        name,
        "Performance profiles of the final held-out scores",
        caption="Fraction of runs (seeds) with a final score above tau, with 95% stratified-bootstrap "
        "CIs (rliable.library.create_performance_profile, drawn by "
        "rliable.plot_utils.plot_performance_profiles). A curve above another everywhere "
        "dominates it.",
    )
    if not matrices:
        plot.notes.append("No run has a final held-out score.")
        return plot
    plot.figure, axes = _grid(len(matrices), ncols=2, width=6.0, height=4.2)
    for ax, (metric, metric_label) in zip(axes, zip(matrices, metric_labels)):
        scores = matrices[metric]
        low = min(float(m.min()) for m in scores.values())
        high = max(float(m.max()) for m in scores.values())
        if metric == "success":
            low, high = min(low, 0.0), max(high, 1.0)
        if high <= low:
            low, high = low - 1.0, high + 1.0
        low -= 0.02 * (high - low)  # start below the lowest score, so the profile starts at 1 (score > tau)
        taus = np.linspace(low, high, 101)
        curves, cis = performance_profiles(scores, taus, reps, seed)
        colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(scores)}
        plot_utils.plot_performance_profiles(
            curves,
            taus,
            performance_profile_cis=cis,
            ax=ax,
            colors=colors,
            xlabel=rf"final {metric_label} ($\tau$)",
            ylabel=r"fraction of runs with score $> \tau$",
            labelsize="medium",
            ticklabelsize="medium",
            legend=True,
            legendsize="small",
        )
        ax.set_title(f"final {metric_label}")
    return plot


def reward_components(variants: list[Variant], reps: int, seed: int) -> Plot:
    """Every `episode/reward/<component>` and `reward/<name>/...` key the runs logged, against env steps."""
    runs = [r for v in variants for r in v.runs]
    keys = keys_matching(runs, lambda k: k.startswith(("episode/reward/", "reward/")))
    plot = metric_curves(
        variants,
        keys,
        "reward_components",
        "Reward components during RL",
        reps,
        seed,
        "No per-component reward was logged (episode/reward/<component>, reward/<name>/...).",
    )
    plot.caption = (
        "Each reward component as logged per rollout batch (training episodes, not held-out). " + BAND_NOTE
    )
    return plot


def alarm_events(variant: Variant) -> dict[int | None, list[float]]:
    """Per seed, the env steps of every logged `alarm/overoptimization` event (it fires on each logged step
    while the trends hold, so a run that goes bad has a run of them)."""
    events: dict[int | None, list[float]] = {}
    for run in variant.runs:
        fired = series(run, "alarm/overoptimization")
        xs = [] if fired is None else [float(x) for x, y in zip(fired.x, fired.y) if y > 0]
        if xs:
            events.setdefault(run.seed, []).extend(xs)
    return events


def gold_vs_proxy(variants: list[Variant], reps: int, seed: int) -> Plot:
    """Per variant (a row): each `proxy/<x>` beside its `gold/<x>` (own y axes), alarm events marked."""
    runs = [r for v in variants for r in v.runs]
    keys = keys_matching(runs, lambda k: k.startswith(("gold/", "proxy/")))
    plot = Plot(
        "gold_vs_proxy",
        "Gold against proxy reward",
        caption="Solid (left axis): the optimised proxy; dashed (right axis): the gold signal; red "
        "dotted line: the first alarm/overoptimization event of each seed that fired (proxy "
        "trending up while gold trends down), red ticks along the top: every event. " + BAND_NOTE,
    )
    if not keys:
        plot.notes.append(
            "No gold/ or proxy/ metrics were logged (a reward design with a gold signal logs them)."
        )
        return plot
    panels = _gold_proxy_panels(keys)
    figure = Figure(figsize=(5.5 * len(panels), 3.8 * len(variants)), layout="constrained")
    axes = figure.subplots(len(variants), len(panels), squeeze=False)
    for row, variant in enumerate(variants):
        events = alarm_events(variant)
        for col, suffix in enumerate(panels):
            ax = axes[row][col]
            twin = _draw_gold_and_proxy(ax, variant, suffix, keys, reps, seed, plot.notes)
            _mark_alarm_events(ax, events)
            _legend_over(ax, [ax] if twin is None else [ax, twin])
            ax.set_title(f"{variant.label}: {suffix}")
            ax.set_xlabel("env steps")
            ax.grid(alpha=0.25)
    plot.figure = figure
    return plot


def _gold_proxy_panels(keys: list[str]) -> list[str]:
    """The panels' metric suffixes (`<x>` of `proxy/<x>`, `gold/<x>`)."""
    suffixes = list(dict.fromkeys(k.split("/", 1)[1] for k in keys))
    # paired suffixes first (the comparison this figure is for), then keys with no partner
    panels = [s for s in suffixes if f"proxy/{s}" in keys and f"gold/{s}" in keys]
    return panels + [s for s in suffixes if s not in panels]


def _draw_gold_and_proxy(
    ax, variant: Variant, suffix: str, keys: list[str], reps: int, seed: int, notes: list[str]
):
    """`proxy/<suffix>` on `ax` and `gold/<suffix>` on a right-hand twin of it (on `ax` when there is no proxy).

    Returns:
        The twin axes when one was made, else None.
    """
    drew_proxy = f"proxy/{suffix}" in keys and _draw_metric(
        ax, variant, f"proxy/{suffix}", PROXY_COLOR, f"proxy/{suffix}", reps, seed, notes
    )
    gold_ax = ax.twinx() if drew_proxy else ax
    drew_gold = f"gold/{suffix}" in keys and _draw_metric(
        gold_ax, variant, f"gold/{suffix}", GOLD_COLOR, f"gold/{suffix}", reps, seed, notes, linestyle="--"
    )
    if drew_proxy:
        ax.set_ylabel(f"proxy/{suffix}", color=PROXY_COLOR)
    if drew_gold:
        gold_ax.set_ylabel(f"gold/{suffix}", color=GOLD_COLOR)
    if not (drew_proxy or drew_gold):
        ax.text(
            0.5,
            0.5,
            f"{variant.label}: no proxy/{suffix} or gold/{suffix}",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    return None if gold_ax is ax else gold_ax


def _mark_alarm_events(ax, events: dict[int | None, list[float]]) -> None:
    """The first event of each seed as a line, every event as a tick along the top."""
    for i, (event_seed, xs) in enumerate(events.items()):
        ax.axvline(
            xs[0],
            color=ALARM_COLOR,
            linestyle=":",
            linewidth=1.5,
            label="alarm/overoptimization" if i == 0 else None,
        )
        ax.scatter(
            xs,
            [0.97] * len(xs),
            marker="v",
            s=14,
            color=ALARM_COLOR,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
        ax.annotate(
            f"alarm, seed {event_seed}",
            (xs[0], 0.9),
            xycoords=("data", "axes fraction"),
            color=ALARM_COLOR,
            fontsize="x-small",
            rotation=90,
            va="top",
            ha="right",
        )


def _legend_over(ax, handles_from: list) -> None:
    """One legend on `ax` for the lines of `ax` and its twin (each axes otherwise keeps its own)."""
    handles, labels = [], []
    for a in handles_from:
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        ax.legend(handles, labels, fontsize="small", loc="lower left")
