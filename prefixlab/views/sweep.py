"""The sweep view: a sweep's final metric per variant against the value it varied, and against the
trainable parameters that value gives, plus the same as a table.

    view = engine.sweep.read_sweep(runs_dir, sweep_id)
    figure = sweep_figure(view)                 # metric: slot accuracy, else BLEU, else validation loss
    save_figure(figure, "sweep.png")            # or .svg
    headers, rows = sweep_table(view)

The paper's Figure 4 (Li & Liang 2021) is this chart for prefix length: quality rises to a length,
then falls. Built from `matplotlib.figure.Figure` directly (no pyplot, as views/figures.py), with the
data preparation (`sweep_series`) pure, so tests read the points without drawing. Variant colours
are the page's (tables.variant_colours); for a two-field sweep the second field's values are told
apart by line style and marker. A run that ended before its last step (cancelled, failed) is drawn
hollow; a queued or running one has no point yet and is counted in the subtitle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless, as views/figures.py
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from prefixlab.engine.runs import FINAL_STATES  # noqa: E402
from prefixlab.engine.sweep import TASK_METRICS, SweepPoint, SweepView, format_value, short_name  # noqa: E402
from prefixlab.views import figures  # noqa: E402
from prefixlab.views.tables import variant_colours  # noqa: E402

METRIC_LABELS = {**figures.METRICS, "val_loss": "validation loss"}
METRIC_CHOICES = (*TASK_METRICS, "val_loss")
# The default metric: the task's own measure where it has one (slot accuracy for attribute tables,
# E2E's semantic measure), else BLEU (the paper's headline), else the loss every run reports.
PREFERENCE = ("slot_accuracy", "bleu", "val_loss")
SECOND_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
WIDE_RANGE = 10.0  # values spanning this factor or more get a log axis (prefix lengths, example counts)
DPI = 100


def default_metric(points: list[SweepPoint]) -> str:
    """slot_accuracy when any point has it, else bleu when any has it, else val_loss."""
    for metric in PREFERENCE[:-1]:
        if any(metric in p.metrics for p in points):
            return metric
    return "val_loss"


def check_metric(metric: str | None) -> str | None:
    """`metric` if the chart can draw it (None: the default); ValueError naming the choices."""
    if metric is not None and metric not in METRIC_CHOICES:
        raise ValueError(f"no metric {metric!r}; choose one of {', '.join(METRIC_CHOICES)}")
    return metric


@dataclass
class Series:
    """One line of the chart: a variant (and, in a two-field sweep, one value of the second field),
    its points in the order of the first field's values."""

    variant: str
    second: Any  # the second field's value; None for a one-field sweep
    values: list[Any] = field(default_factory=list)  # the first field's value of each point
    ys: list[float] = field(default_factory=list)  # the metric
    trainable: list[int | None] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)  # the run trained all its steps


def sweep_series(view: SweepView, metric: str) -> list[Series]:
    """Every (variant, second value) line of the chart for `metric`, with the points that have a value,
    ordered along the first field's values."""
    first, second = view.fields[0], (view.fields[1] if len(view.fields) > 1 else None)
    order = {_key(v): i for i, v in enumerate(view.grid[first])}
    lines: dict[tuple, Series] = {}
    for point in view.points:
        y = point.value(metric)
        if y is None:
            continue
        other = point.values.get(second) if second else None
        series = lines.setdefault((point.variant, _key(other)), Series(point.variant, other))
        series.values.append(point.values.get(first))
        series.ys.append(y)
        series.trainable.append(point.trainable)
        series.complete.append(point.complete)
    for series in lines.values():
        ranks = sorted(range(len(series.values)), key=lambda i: order.get(_key(series.values[i]), len(order)))
        for name in ("values", "ys", "trainable", "complete"):
            setattr(series, name, [getattr(series, name)[i] for i in ranks])
    variants = view.variants
    seconds = [_key(v) for v in view.grid[second]] if second else [_key(None)]
    return sorted(lines.values(), key=lambda s: (variants.index(s.variant) if s.variant in variants else len(variants),
                                                 seconds.index(_key(s.second)) if _key(s.second) in seconds else 0))


def _key(value: Any) -> tuple:
    """A hashable key telling 1 from True and from "1"."""
    return (type(value).__name__, value)


def _numeric(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def wide(values: list[float]) -> bool:
    """Whether positive `values` span WIDE_RANGE or more, so a log axis reads them better."""
    positive = [v for v in values if v is not None and v > 0]
    return len(positive) == len([v for v in values if v is not None]) and len(positive) > 1 \
        and max(positive) / min(positive) >= WIDE_RANGE


def _count(value: float, _position=None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _value_axis(ax, name: str, grid_values: list[Any]) -> dict:
    """Set up the x axis for the first field's values: numbers at their values (log where they span a
    wide range), anything else (text, true/false, none) in order. Returns {value key: x}."""
    if _numeric(grid_values):
        if wide(grid_values):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(grid_values, [format_value(v) for v in grid_values])
        return {_key(v): v for v in grid_values}
    ax.set_xticks(range(len(grid_values)), [format_value(v) for v in grid_values])
    ax.set_xlim(-0.5, len(grid_values) - 0.5)
    return {_key(v): i for i, v in enumerate(grid_values)}


def _style(view: SweepView, second: Any) -> tuple[str, str]:
    if len(view.fields) < 2:
        return SECOND_STYLES[0]
    keys = [_key(v) for v in view.grid[view.fields[1]]]
    index = keys.index(_key(second)) if _key(second) in keys else 0
    return SECOND_STYLES[index % len(SECOND_STYLES)]


def _draw(ax, series: Series, xs: list, colour: str, style: tuple[str, str], labels: list[str], gid: str) -> None:
    """One line through the series' points (`gid` names it, so a test finds it), their markers filled
    for complete runs and hollow for runs that stopped early; each point labelled."""
    line, marker = style
    ax.plot(xs, series.ys, linestyle=line, marker=marker, color=colour, linewidth=1.6, markersize=6, gid=gid)
    early = [i for i, complete in enumerate(series.complete) if not complete]
    if early:
        ax.plot([xs[i] for i in early], [series.ys[i] for i in early], marker=marker, linestyle="none",
                markersize=6, color=colour, markerfacecolor="white", zorder=3)
    for x, y, text in zip(xs, series.ys, labels):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 5), fontsize="x-small", color=colour)


def _format_metric(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric == "val_loss" else f"{value:.1f}"


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey", wrap=True)


def sweep_figure(view: SweepView, metric: str | None = None) -> Figure:
    """The sweep's chart: `metric` (default_metric) of each variant against the first varied field, and
    against trainable parameters; with a task metric, validation loss against the field too. One
    colour per variant; in a two-field sweep a line style per value of the second field."""
    metric = check_metric(metric) or default_metric(view.points)
    panels = [("value", metric), ("trainable", metric)]
    if metric != "val_loss" and any(p.val_loss is not None for p in view.points):
        panels.insert(1, ("value", "val_loss"))
    fig = Figure(figsize=(4.2 * len(panels) + 1.6, 4.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    first = view.fields[0]
    colours = variant_colours(view.variants)
    for ax, (against, name) in zip(axes, panels):
        series = sweep_series(view, name)
        if against == "value":
            positions = _value_axis(ax, first, view.grid[first])
            ax.set_xlabel(first)
        else:
            ax.set_xlabel(f"trainable parameters (points: {short_name(first)})")
            counts = [t for s in series for t in s.trainable if t]
            if wide(counts):
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_count))
            ax.xaxis.set_minor_formatter(NullFormatter())
        for s in series:
            if against == "value":
                xs = [positions.get(_key(v)) for v in s.values]
                labels = [_format_metric(y, name) for y in s.ys]
            else:
                keep = [i for i, t in enumerate(s.trainable) if t]
                s = Series(s.variant, s.second, [s.values[i] for i in keep], [s.ys[i] for i in keep],
                           [s.trainable[i] for i in keep], [s.complete[i] for i in keep])
                xs, labels = s.trainable, [format_value(v) for v in s.values]
            gid = f"series:{s.variant}" + (f":{format_value(s.second)}" if len(view.fields) > 1 else "")
            _draw(ax, s, xs, colours.get(s.variant, "black"), _style(view, s.second), labels, gid)
        ax.set_ylabel(METRIC_LABELS[name])
        ax.grid(True, alpha=0.3)
        if not series:
            _note(ax, f"no {METRIC_LABELS[name]} yet:\nthe runs report it when they end")
    fig.suptitle(_title(view, metric))
    handles = [Line2D([], [], color=colours[v], linewidth=1.6, marker="o", label=v) for v in view.variants]
    if len(view.fields) > 1:
        second = view.fields[1]
        handles += [Line2D([], [], color="black", linestyle=_style(view, v)[0], marker=_style(view, v)[1],
                           label=f"{short_name(second)}={format_value(v)}") for v in view.grid[second]]
    if any(not p.complete and p.finished for p in view.points):
        handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="none",
                              label="stopped early"))
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    return fig


def _title(view: SweepView, metric: str) -> str:
    """"slot accuracy vs prefix.num_virtual_tokens, tiny-gpt2 (sweep offline-tiny, 3 of 5 runs ended; ...)"."""
    fields = " and ".join(view.fields)
    ended = sum(1 for r in view.runs if r.state in FINAL_STATES)
    waiting = len(view.runs) - ended
    detail = f"{ended} of {len(view.runs)} runs ended"
    if waiting:
        detail += f", {waiting} queued or running"
    if view.missing:
        detail += f", {len(view.missing)} missing"
    return f"{METRIC_LABELS[metric]} vs {fields}, {view.model}\nsweep {view.id}: {detail}"


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write the figure as PNG or SVG, by `path`'s suffix; ValueError for any other suffix."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"{path}: a sweep plot is saved as .png or .svg; name the file so")
    figure.savefig(path, format=fmt)
    return path


# ---------------------------------------------------------------------------------------------
# The table


def sweep_table(view: SweepView) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): per point, the varied value(s), variant, state, trainable parameters, final
    validation loss and each task metric any point has (None where a point has no value)."""
    metrics = [m for m in TASK_METRICS if any(m in p.metrics for p in view.points)]
    headers = [*view.fields, "variant", "state", "trainable", "val loss", *metrics]
    rows = []
    for p in view.points:
        state = p.state if p.complete or p.state not in FINAL_STATES else \
            f"{p.state} at step {p.step}" if p.step else f"{p.state} before training"
        rows.append([*(p.values.get(f) for f in view.fields), p.variant, state, p.trainable,
                     None if p.val_loss is None else round(p.val_loss, 4),
                     *(None if p.metrics.get(m) is None else round(p.metrics[m], 2) for m in metrics)])
    for values in view.missing:
        rows.append([*(values.get(f) for f in view.fields), "-", "missing (no run folder)", None, None,
                     *(None for _ in metrics)])
    return headers, rows


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """The table as aligned text, for a terminal: numbers with thousands separators, - for no value."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return format_value(value) if isinstance(value, (bool, float)) else str(value)

    lines = [headers] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def metric_is_absent(view: SweepView, metric: str) -> bool:
    """Whether no point of the sweep has `metric` (a finished sweep whose task has no slots, say)."""
    return not any(p.value(metric) is not None for p in view.points)

