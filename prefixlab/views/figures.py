"""Matplotlib figures for the lab: loss curves and parameter bars.

The page redraws the loss chart about once a second while a run trains, so the figures are built
from `matplotlib.figure.Figure` directly (no pyplot): pyplot keeps every figure in a global registry
until closed, which leaks memory in a long-lived web process. The data preparation (which points,
which smoothing) is pure and lives in small functions so it can be tested without drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # headless: the page only needs the rendered image
from matplotlib.figure import Figure  # noqa: E402

# One colour per variant, stable across redraws: variants are coloured by their order of appearance.
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
# Line styles tell overlaid runs apart (the first run solid, the second dashed, ...).
_RUN_STYLES = ("-", "--", ":", "-.")


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


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def split_metrics(records: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per variant, the (steps, values) of every record carrying a finite `key`, in step order.

    `key` is "loss" for training lines and "eval_loss" for evaluation lines (CONTRACTS.md). A record
    with a NaN or infinite loss is left out of the chart (it is still in metrics.jsonl): matplotlib
    would break the line there and the autoscaled axis would be useless.
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

    `runs_metrics` maps a run's label to its metrics.jsonl records; one run is the usual case, two
    when the user overlays another run.
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
    """How many train and eval points the chart shows (the page prints this under the chart)."""
    return {
        "train": sum(len(c.steps) for c in curves if c.kind == "train"),
        "eval": sum(len(c.steps) for c in curves if c.kind == "eval"),
    }


def _style_maps(curves: list[Curve]) -> tuple[dict[str, str], dict[str, str]]:
    variants = list(dict.fromkeys(c.variant for c in curves))
    runs = list(dict.fromkeys(c.run for c in curves))
    colours = {v: _COLOURS[i % len(_COLOURS)] for i, v in enumerate(variants)}
    styles = {r: _RUN_STYLES[i % len(_RUN_STYLES)] for i, r in enumerate(runs)}
    return colours, styles


def _curve_label(curve: Curve, several_runs: bool) -> str:
    base = f"{curve.run} / {curve.variant}" if several_runs else curve.variant
    return base + (" (validation)" if curve.kind == "eval" else "")


def loss_figure(runs_metrics: dict[str, list[dict]], smoothing: float = 0.6, log_scale: bool = False) -> Figure:
    """Training loss of every variant on one figure: raw faint, smoothed over it, eval as markers.

    The x axis is the optimizer step; all history is drawn (the page never truncates it).
    """
    curves = loss_curves(runs_metrics, smoothing)
    colours, styles = _style_maps(curves)
    several_runs = len(runs_metrics) > 1
    fig = Figure(figsize=(7.5, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for c in curves:
        colour, style = colours[c.variant], styles[c.run]
        if c.kind == "train":
            ax.plot(c.steps, c.values, style, color=colour, alpha=0.25, linewidth=1)
        elif c.kind == "smoothed":
            ax.plot(c.steps, c.values, style, color=colour, linewidth=2, label=_curve_label(c, several_runs))
        else:
            ax.plot(c.steps, c.values, "o", color=colour, markersize=6, markeredgecolor="black",
                    label=_curve_label(c, several_runs))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if log_scale and curves:
        ax.set_yscale("log")
    if curves:
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.grid(True, alpha=0.3)
    return fig


def parameter_figure(rows: list[dict]) -> Figure:
    """Bar chart of trainable and adapter-stored parameters per variant (log scale: they differ by orders).

    `rows` are comparison-table rows: dicts with "variant", "trainable" and "stored" counts.
    """
    fig = Figure(figsize=(7.5, 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    names = [str(r["variant"]) for r in rows]
    width = 0.38
    xs = range(len(rows))
    for offset, key, colour in ((-width / 2, "trainable", "#1f77b4"), (width / 2, "stored", "#ff7f0e")):
        values = [int(r.get(key) or 0) for r in rows]
        bars = ax.bar([x + offset for x in xs], values, width, label=key, color=colour)
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize="small")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("parameters")
    if rows:
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no run selected", ha="center", va="center", transform=ax.transAxes, color="grey")
    return fig
