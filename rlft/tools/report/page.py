"""The HTML page of `rlft compare`: one self-contained file (figures as base64 PNG data URIs, inline CSS, no
script, nothing fetched), so it opens offline from disk or as an e-mail attachment."""

from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path

from rlft.tools.report.figures import Plot
from rlft.tools.report.runs import Variant, config_value

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1500px;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 1100px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; margin: 0.5em 0; }
.meta { color: #666; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{cell}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def notes_html(notes: list[str]) -> str:
    return "".join(f'<p class="note">{_e(n)}</p>' for n in dict.fromkeys(notes))


def figure_html(plot: Plot, png: Path | None, relative_to: Path) -> str:
    """The plot as an <img> with its PNG inlined (and linked), or its notes when it was not drawn."""
    if plot.figure is None or png is None:
        return f"<h3>{_e(plot.title)}</h3>" + notes_html(plot.notes or ["not drawn"])
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    link = Path(os.path.relpath(png.resolve(), relative_to.resolve())).as_posix()
    return (
        f'<figure id="fig-{_e(plot.name)}"><h3>{_e(plot.title)}</h3>'
        f'<img alt="{_e(plot.title)}" src="data:image/png;base64,{data}">'
        f'<figcaption>{_e(plot.caption)} PNG: <a href="{_e(link)}">{_e(link)}</a></figcaption>'
        f"</figure>" + notes_html(plot.notes)
    )


def variants_table(variants: list[Variant]) -> str:
    """One row per variant: its number of seeds (runs), which seeds, and the run directories."""
    rows = [
        [
            f"<b>{_e(v.label)}</b>",
            str(len(v.runs)),
            _e(", ".join("?" if s is None else str(s) for s in v.seeds)),
            "<br>".join(f"{_e(r.name)} <span class=meta>({_e(r.path)})</span>" for r in v.runs),
        ]
        for v in variants
    ]
    return _table(["variant", "seeds", "seed values", "run directories"], rows, numeric={1})


def differences_table(variants: list[Variant], differences: list[str], ignored: tuple[str, ...]) -> str:
    intro = (
        f"<p>Keys of the resolved configs (config.yaml) whose values differ between variants; runs are "
        f"grouped into variants by every other key, ignoring <code>{_e(', '.join(ignored))}</code> "
        f"(the seed is the replicate).</p>"
    )
    if len(variants) < 2:
        return intro + notes_html(["One variant: nothing to compare."])
    rows = [[f"<code>{_e(key)}</code>", *(_e(config_value(v, key)) for v in variants)] for key in differences]
    return intro + _table(["key", *(v.label for v in variants)], rows)


PER_EPISODE_CI = {
    "success": "per-episode Wilson 95% CI",
    "return": "per-episode 95% CI (normal approximation)",
}


def finals_table(
    metric_label: str,
    finals,
    points: dict,
    intervals: dict,
    references=None,
    per_episode: set[str] = frozenset(),
) -> str:
    """The variants' final held-out scores, then the reference policies' rows (from eval.json).

    Args:
        metric_label: 'success' or 'return'.
        finals, references: `FinalScores` of the variants and of the references (None: no reference rows).
        points, intervals: label -> (3,) aggregates and (2, 3) low/high rows, for variants and references.
        per_episode: rows with one seed, whose interval is eval.json's per-episode CI (a bootstrap over one
            seed is a point).
    """
    rows = _score_rows(finals, points, intervals, per_episode, PER_EPISODE_CI.get(metric_label, ""))
    if references is not None and references.scores:
        rows.append(["<i>reference policies (each run's eval.json, same held-out seeds)</i>", *[""] * 6])
        rows += _score_rows(references, points, intervals, per_episode, PER_EPISODE_CI.get(metric_label, ""))
    header = [
        "variant",
        "seeds",
        f"IQM {metric_label} [95% CI]",
        "median [95% CI]",
        "mean [95% CI]",
        "per seed",
        "from",
    ]
    note = notes_html(
        [
            "seeds: the number of seeds (runs) a row aggregates. With one seed a bootstrap interval is a "
            "point, so such a row shows the per-episode CI of its held-out episodes instead (marked)."
        ]
    )
    return f"<h3>Final held-out {_e(metric_label)}</h3>" + _table(header, rows, numeric={1, 2, 3, 4}) + note


def _score_rows(
    finals, points: dict, intervals: dict, per_episode: set[str], ci_kind: str
) -> list[list[str]]:
    rows = []
    for label, scores in finals.scores.items():
        point, interval = points[label], intervals[label]
        per_seed = ", ".join(
            f"{'?' if s is None else s}: {_fmt(v)}" for s, v in zip(finals.seeds[label], scores)
        )
        source = ", ".join(dict.fromkeys(finals.sources[label]))
        rows.append(
            [
                f"<b>{_e(label)}</b>",
                str(len(scores)),
                *(f"{_fmt(point[i])} [{_fmt(interval[0][i])}, {_fmt(interval[1][i])}]" for i in range(3)),
                _e(per_seed),
                _e(source + (f"; 1 seed: {ci_kind}" if label in per_episode else "")),
            ]
        )
    return rows


def alarms_table(alarms: dict[str, dict]) -> str:
    rows = [
        [_e(label), _e(seed), _fmt(xs[0]), str(len(xs))]
        for label, by_seed in alarms.items()
        for seed, xs in by_seed.items()
    ]
    if not rows:
        return ""
    return "<h3>Over-optimisation alarms</h3>" + _table(
        ["variant", "seed", "first event at env steps", "events"], rows, numeric={2, 3}
    )


def render(
    *,
    title: str,
    sources: list[str],
    variants: list[Variant],
    differences: list[str],
    ignored: tuple[str, ...],
    finals_html: str,
    sections: list[tuple[str, str]],
    problems: list[str],
    reps: int,
) -> str:
    """The whole page; `sections` are (heading, inner html) in order."""
    runs = sum(len(v.runs) for v in variants)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{runs} runs in {len(variants)} variants, from {_e(", ".join(sources))}; generated '
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>rlft compare</code>.</p>",
        "<p>Statistics (Agarwal et al. 2021, <i>Deep RL at the Edge of the Statistical Precipice</i>, through "
        "the <code>rliable</code> library): per variant, the final held-out score of each seed is aggregated "
        "with the interquartile mean (IQM, the mean of the middle 50% of runs: robust to an outlier seed, less "
        f"noisy than the median), and every aggregate has a 95% stratified-bootstrap confidence interval "
        f"({reps} bootstrap replications, percentile method). With few seeds the intervals are wide: that is "
        "the uncertainty, not a defect of the report.</p>",
        "<h2>Variants</h2>",
        variants_table(variants),
        "<h2>Configuration differences</h2>",
        differences_table(variants, differences, ignored),
        "<h2>Final performance</h2>",
        finals_html,
    ]
    for heading, inner in sections:
        body += [f"<h2>{_e(heading)}</h2>", inner]
    if problems:
        body += ["<h2>Problems reading runs</h2>", notes_html(problems)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{_e(title)}</title><link rel="icon" href="data:,"><style>{CSS}</style></head>'
        "<body>" + "\n".join(body) + "</body></html>\n"
    )
