"""Matplotlib figures for the lab: loss curves, task-metric curves and parameter bars.

The page redraws the loss chart about once a second while a run trains, so the figures are built
from `matplotlib.figure.Figure` directly (no pyplot): pyplot keeps every figure in a global registry
until closed, which leaks memory in a long-lived web process. The data preparation (which points,
which smoothing, which ticks) is pure and lives in small functions so it can be tested without
drawing.

How the charts read (one convention for all of them):

- one colour per variant, the same in every chart and table (tables.variant_colours); the untuned
  base model, where a chart shows it, is grey;
- runs are told apart by line style and validation-marker shape (the selected run solid with
  filled circles, an overlaid one dashed with hollow squares), and named by a short label
  (experiment name and start time) rather than the run id;
- the legend sits outside the plot area, so it never covers a curve;
- a log-scale axis labels the ticks between its decades (2, 3, 5, ...), not only 10^k.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # headless: the page only needs the rendered image
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from prefixlab.views.tables import BASE, variant_colours  # noqa: E402

# Line styles and validation markers tell overlaid runs apart: the first run solid with filled
# markers, the second dashed with hollow ones, ...
RUN_STYLES = ("-", "--", ":", "-.")
EVAL_MARKERS = ("o", "s", "^", "D")
# Task metrics the worker logs at evaluation steps, one line per model (per variant and for "base"), with their names on
# the chart; every value is on 0-100 (engine/metrics.py).
METRICS = {"bleu": "BLEU", "chrf": "chrF", "rouge_l": "ROUGE-L", "slot_accuracy": "slot accuracy"}
# Figure sizes in inches at DPI: wide and short, so the chart and the comparison under it fit a
# 1280x800 screen together.
DPI = 100
LOSS_SIZE = (8.4, 2.9)
EMPTY_NOTE_COLOUR = "grey"


@dataclass
class Curve:
    """One line or marker set on the loss chart: `values[i]` was logged at `steps[i]`."""

    run: str
    variant: str
    kind: str  # "train" (raw, faint), "smoothed" (over the raw line) or "eval" (markers)
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing).

    `smoothing` in [0, 1): 0 returns the values unchanged; 0.9 averages over roughly the last ten
    points. The bias correction divides by 1 - smoothing**t so the first points are not pulled
    towards zero.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}; use 0 for raw curves")
    out, acc = [], 0.0
    for t, value in enumerate(values, start=1):
        acc = smoothing * acc + (1.0 - smoothing) * value
        out.append(acc / (1.0 - smoothing**t))
    return out


def clamp_smoothing(value, default: float = 0.6, top: float = 0.99) -> float:
    """A smoothing weight the chart can use: a number outside [0, top] is clamped into it, anything
    else (empty, text) is `default`. The page's slider never stops the chart over a typed value."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(value) else min(max(value, 0.0), top)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def split_metrics(records: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per variant, the (steps, values) of every record carrying a finite `key`, in step order.

    `key` is "loss" for training lines and "eval_loss" for evaluation lines (CONTRACTS.md), or a
    task metric ("bleu", ...). A record with a NaN or infinite value is left out of the chart (it is
    still in metrics.jsonl): matplotlib would break the line there and the autoscaled axis would be
    useless.
    """
    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        value = record.get(key)
        if not _finite(value):
            continue
        steps, values = out.setdefault(str(record.get("variant", "?")), ([], []))
        steps.append(int(record.get("step", len(steps))))
        values.append(float(value))
    for variant, (steps, values) in out.items():
        order = sorted(range(len(steps)), key=steps.__getitem__)
        out[variant] = ([steps[i] for i in order], [values[i] for i in order])
    return out


def loss_curves(runs_metrics: dict[str, list[dict]], smoothing: float = 0.6) -> list[Curve]:
    """Everything the loss chart draws, as data: raw, smoothed and eval curves of every variant.

    `runs_metrics` maps a run to its metrics.jsonl records; one run is the usual case, two when
    the user overlays another run.
    """
    curves = []
    for run, records in runs_metrics.items():
        for variant, (steps, values) in split_metrics(records, "loss").items():
            curves.append(Curve(run, variant, "train", steps, values))
            curves.append(Curve(run, variant, "smoothed", steps, ema(values, smoothing)))
        for variant, (steps, values) in split_metrics(records, "eval_loss").items():
            curves.append(Curve(run, variant, "eval", steps, values))
    return curves


def curve_counts(curves: list[Curve]) -> dict[str, int]:
    """How many train and eval points the chart shows in all (every run and variant together)."""
    return {
        "train": sum(len(c.steps) for c in curves if c.kind == "train"),
        "eval": sum(len(c.steps) for c in curves if c.kind == "eval"),
    }


def point_counts(curves: list[Curve]) -> dict[str, dict[str, dict[str, int]]]:
    """{run: {variant: {"train": n, "eval": m}}}: the points the chart shows of each variant of each
    run (the page prints them under the chart, one variant at a time)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for c in curves:
        if c.kind == "smoothed":
            continue
        counts = out.setdefault(c.run, {}).setdefault(c.variant, {"train": 0, "eval": 0})
        counts[c.kind] += len(c.steps)
    return out


def _variants(curves_or_names, order=()) -> list[str]:
    """Variant names: `order` first (the selected run's spec), then as they appear."""
    names = [c.variant if isinstance(c, Curve) else c for c in curves_or_names]
    return list(dict.fromkeys([*order, *names]))


def _run_styles(runs) -> dict[str, tuple[str, str]]:
    """{run: (line style, validation marker)} in the order given (the selected run first)."""
    return {r: (RUN_STYLES[i % len(RUN_STYLES)], EVAL_MARKERS[i % len(EVAL_MARKERS)]) for i, r in enumerate(runs)}


# ---------------------------------------------------------------------------------------------
# Axes


def nice_log_ticks(low: float, high: float, most: int = 8) -> list[float]:
    """Tick values for a log axis from `low` to `high` (both > 0): the densest of the sequences
    1, 1-2-5, 1-1.5-2-3-5-7 and 1-...-9 per decade that gives at most `most` ticks inside the
    range, so an axis from 0.8 to 6 reads 0.8, 1, 1.5, 2, 3, 5 rather than a lone 10^0."""
    if not (low > 0 and high > 0):
        return []
    low, high = min(low, high), max(low, high)
    choices = ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
    best: list[float] = []
    for subs in choices:
        ticks = [round(m * 10.0**k, 12) for k in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
                 for m in subs]
        inside = sorted(t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9))
        if len(inside) > most:
            break
        best = inside
        if len(inside) >= 4:
            break
    return best or [low, high]


def _tick_label(value: float, _position=None) -> str:
    return f"{value:g}"


def use_log_scale(ax, values: list[float]) -> None:
    """Log y axis whose labelled ticks cover the data (nice_log_ticks), with unlabelled minor ticks."""
    positive = [v for v in values if v > 0]
    ax.set_yscale("log")
    if not positive:
        return
    low, high = min(positive), max(positive)
    if high / low < 1.05:  # a flat line: room around it, so the axis has ticks to label
        low, high = low / 1.1, high * 1.1
    ticks = nice_log_ticks(low, high)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick_label))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(low / 1.08, high * 1.08)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=EMPTY_NOTE_COLOUR, wrap=True)


def _legend(fig, handles: list) -> None:
    """The legend outside the plot area, to the right (constrained layout makes room for it)."""
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)


def _run_handles(runs: list[str], labels: dict[str, str], styles: dict[str, tuple[str, str]],
                 with_markers: bool) -> list:
    """One legend entry per run, when there are several: its line style (and validation marker)."""
    if len(runs) < 2:
        return []
    return [Line2D([], [], color="black", linestyle=styles[r][0], marker=styles[r][1] if with_markers else None,
                   markerfacecolor="black" if i == 0 else "white", label=labels.get(r, r))
            for i, r in enumerate(runs)]


# ---------------------------------------------------------------------------------------------
# Figures


def loss_figure(runs_metrics: dict[str, list[dict]], smoothing: float = 0.6, log_scale: bool = False,
                labels: dict[str, str] | None = None, order=()) -> Figure:
    """Training loss of every variant: raw faint, smoothed over it, validation loss as markers.

    `runs_metrics`: {run: metrics records}, the selected run first; `labels`: {run: short label}
    for the legend; `order`: variant names in the selected run's order (their colours). The x axis
    is the optimizer step; all history is drawn (the page never truncates it).
    """
    labels = labels or {}
    curves = loss_curves(runs_metrics, smoothing)
    colours = variant_colours(_variants(curves, order))
    styles = _run_styles(runs_metrics)
    fig = Figure(figsize=LOSS_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for c in curves:
        colour, (style, marker) = colours[c.variant], styles[c.run]
        first = c.run == next(iter(styles))
        if c.kind == "train":
            ax.plot(c.steps, c.values, style, color=colour, alpha=0.25, linewidth=1)
        elif c.kind == "smoothed":
            ax.plot(c.steps, c.values, style, color=colour, linewidth=2 if first else 1.6)
        else:
            ax.plot(c.steps, c.values, marker, linestyle="none", color=colour, markersize=6,
                    markeredgecolor="black" if first else colour, markerfacecolor=colour if first else "white",
                    markeredgewidth=0.8 if first else 1.5, zorder=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.12)
    if not curves:
        _note(ax, "no loss logged yet")
        return fig
    if log_scale:
        use_log_scale(ax, [v for c in curves for v in c.values])
    has_eval = any(c.kind == "eval" for c in curves)
    handles = [Line2D([], [], color=colours[v], linewidth=2, label=v) for v in colours]
    handles.append(Line2D([], [], color="grey", alpha=0.35, linewidth=1, label="raw (unsmoothed)"))
    if has_eval:
        handles.append(Line2D([], [], color="grey", marker="o", linestyle="none", markeredgecolor="black",
                              label="validation"))
    _legend(fig, handles + _run_handles(list(styles), labels, styles, has_eval))
    return fig


def metric_series(records: list[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """{metric: {variant: (steps, values)}} of every task metric (METRICS) the records carry; the
    base model's lines are under "base"."""
    out = {}
    for key in METRICS:
        series = split_metrics(records, key)
        if series:
            out[key] = series
    return out


def metric_figure(runs_metrics: dict[str, list[dict]], labels: dict[str, str] | None = None, order=()) -> Figure:
    """Task metrics over the steps, one panel per metric (BLEU, chrF, ROUGE-L, slot accuracy, as
    logged at evaluation steps): each variant in its colour, the base model grey; an overlaid run
    dashed. A run that logged none says so."""
    labels = labels or {}
    series = {run: metric_series(records) for run, records in runs_metrics.items()}
    present = [m for m in METRICS if any(m in s for s in series.values())]
    styles = _run_styles(runs_metrics)
    if not present:
        fig = Figure(figsize=LOSS_SIZE, dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        ax.set_axis_off()
        _note(ax, "no task metrics in this run: BLEU, chrF, ROUGE-L and slot accuracy appear here\n"
                  "when the worker logs them at evaluation steps")
        return fig
    columns = 2 if len(present) > 2 else len(present)
    rows = math.ceil(len(present) / columns)
    fig = Figure(figsize=(LOSS_SIZE[0], LOSS_SIZE[1] if rows == 1 else 4.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    names = _variants([v for s in series.values() for m in present for v in s.get(m, {})], order)
    colours = variant_colours([n for n in names if n != BASE] + [BASE])
    for ax, metric in zip(axes, present):
        for run, per_metric in series.items():
            style, marker = styles[run]
            for variant, (steps, values) in per_metric.get(metric, {}).items():
                base = variant == BASE
                ax.plot(steps, values, linestyle=":" if base and style == "-" else style, marker=marker, markersize=4,
                        color=colours[variant], linewidth=1.2 if base else 1.8,
                        markerfacecolor=colours[variant] if run == next(iter(styles)) else "white")
        ax.set_title(METRICS[metric], fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(present):]:
        ax.set_axis_off()
    shown = [v for v in colours if any(v in s.get(m, {}) for s in series.values() for m in present)]
    handles = [Line2D([], [], color=colours[v], linewidth=1.2 if v == BASE else 1.8, linestyle=":" if v == BASE else "-",
                      label="base model" if v == BASE else v) for v in shown]
    _legend(fig, handles + _run_handles(list(styles), labels, styles, True))
    return fig


def parameter_figure(rows: list[dict], order=()) -> Figure:
    """Trainable and adapter-stored parameters per variant, as horizontal bars on a linear axis,
    each labelled with its count (a 2,560-parameter bar beside a 21,440 one is short, and says so).

    `rows` are comparison-table rows: dicts with "variant", "trainable" and "stored" counts.
    """
    names = [str(r["variant"]) for r in rows]
    colours = variant_colours(_variants(names, order))
    height = 0.9 + 0.75 * max(len(rows), 1)
    fig = Figure(figsize=(LOSS_SIZE[0], height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if not rows:
        ax.set_axis_off()
        _note(ax, "no run selected")
        return fig
    bar = 0.38
    largest = max(max(int(r.get("trainable") or 0), int(r.get("stored") or 0)) for r in rows) or 1
    for i, r in enumerate(rows):
        colour = colours[names[i]]
        for offset, key, style in ((-bar / 2, "trainable", {}), (bar / 2, "stored", {"hatch": "///", "alpha": 0.55})):
            value = int(r.get(key) or 0)
            drawn = ax.barh(i + offset, value, bar, color=colour, edgecolor=colour, **style)
            ax.bar_label(drawn, labels=[f" {value:,}"], fontsize="small", padding=2)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # the first variant on top, as in the table
    ax.set_xlim(0, largest * 1.22)  # room for the labels
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("parameters (linear scale)")
    ax.grid(True, axis="x", alpha=0.3)
    _legend(fig, [Patch(facecolor="grey", label="trainable"),
                  Patch(facecolor="grey", alpha=0.55, hatch="///", label="stored in adapter")])
    return fig


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure encoded as `fmt` ("png" or "svg"): what the page shows and what it downloads."""
    with io.BytesIO() as buffer:
        figure.savefig(buffer, format=fmt)
        return buffer.getvalue()
