"""plots.py: metrics records -> chart data (pure) and the figures drawn from it."""

from __future__ import annotations

import pytest

from matplotlib.colors import to_hex

from prefixlab.views import figures as plots
from prefixlab.views.tables import metrics_csv, variant_colours


def _metrics():
    # Two variants stepping in lockstep, logged out of order, one NaN loss and one eval line each.
    return [
        {"variant": "no_projection", "step": 2, "epoch": 0, "loss": 4.0, "lr": 1e-3, "tokens_per_s": 10, "time": 2},
        {"variant": "no_projection", "step": 1, "epoch": 0, "loss": 5.0, "lr": 1e-3, "tokens_per_s": 10, "time": 1},
        {"variant": "projection", "step": 1, "epoch": 0, "loss": 6.0, "lr": 1e-3, "tokens_per_s": 9, "time": 1},
        {"variant": "projection", "step": 2, "epoch": 0, "loss": float("nan"), "lr": 1e-3, "tokens_per_s": 9, "time": 2},
        {"variant": "projection", "step": 3, "epoch": 0, "loss": 3.0, "lr": 1e-3, "tokens_per_s": 9, "time": 3},
        {"variant": "no_projection", "step": 3, "eval_loss": 4.5, "time": 3},
        {"variant": "projection", "step": 3, "eval_loss": 3.5, "time": 3},
    ]


def test_ema_zero_smoothing_is_identity_and_bias_corrected_otherwise():
    assert plots.ema([3.0, 1.0, 2.0], 0.0) == [3.0, 1.0, 2.0]
    # First point is the value itself (bias correction), second the weighted mean of the two.
    smoothed = plots.ema([4.0, 2.0], 0.5)
    assert smoothed[0] == pytest.approx(4.0)
    assert smoothed[1] == pytest.approx((0.5 * 0.5 * 4.0 + 0.5 * 2.0) / (1 - 0.25))


def test_ema_rejects_smoothing_outside_unit_interval():
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\), got 1.0"):
        plots.ema([1.0], 1.0)


def test_split_metrics_sorts_by_step_and_drops_non_finite_losses():
    train = plots.split_metrics(_metrics(), "loss")
    assert train == {"no_projection": ([1, 2], [5.0, 4.0]), "projection": ([1, 3], [6.0, 3.0])}
    evals = plots.split_metrics(_metrics(), "eval_loss")
    assert evals == {"no_projection": ([3], [4.5]), "projection": ([3], [3.5])}


def test_loss_curves_have_raw_smoothed_and_eval_per_variant_and_per_run():
    curves = plots.loss_curves({"run-a": _metrics(), "run-b": _metrics()[:2]}, smoothing=0.0)
    kinds = sorted((c.run, c.variant, c.kind) for c in curves)
    assert kinds == sorted([
        ("run-a", "no_projection", "train"), ("run-a", "no_projection", "smoothed"),
        ("run-a", "projection", "train"), ("run-a", "projection", "smoothed"),
        ("run-a", "no_projection", "eval"), ("run-a", "projection", "eval"),
        ("run-b", "no_projection", "train"), ("run-b", "no_projection", "smoothed"),
    ])
    assert plots.curve_counts(curves) == {"train": 6, "eval": 2}


def _legend_texts(fig) -> list[str]:
    """The figure's legend entries (the legend sits outside the axes, on the figure)."""
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_loss_figure_draws_every_point_and_log_scale():
    fig = plots.loss_figure({"run": _metrics()}, smoothing=0.5, log_scale=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    # 2 variants x (raw + smoothed) lines + 2 eval marker sets.
    lines = ax.get_lines()
    assert len(lines) == 6
    raw = [ln for ln in lines if ln.get_alpha() == 0.25]
    assert sorted(list(ln.get_xdata()) for ln in raw) == [[1, 2], [1, 3]]
    markers = [ln for ln in lines if ln.get_marker() == "o"]
    assert sorted(float(ln.get_ydata()[0]) for ln in markers) == [3.5, 4.5]
    # The legend is outside the plot (on the figure, not the axes), one entry per variant.
    assert ax.get_legend() is None
    assert _legend_texts(fig) == ["no_projection", "projection", "raw (unsmoothed)", "validation"]


def test_one_colour_per_variant_in_every_chart_and_validation_markers_in_it():
    """no_projection is blue and projection orange in the loss chart (lines and markers alike), the
    metric chart and the parameter bars, and in the tables (tables.variant_colours)."""
    colours = variant_colours(["no_projection", "projection"])
    fig = plots.loss_figure({"run": _metrics()}, smoothing=0.5)
    for line in fig.axes[0].get_lines():
        assert to_hex(line.get_color()) in colours.values()
    markers = {float(ln.get_ydata()[0]): to_hex(ln.get_markerfacecolor())
               for ln in fig.axes[0].get_lines() if ln.get_marker() == "o"}
    assert markers == {4.5: colours["no_projection"], 3.5: colours["projection"]}
    bars = plots.parameter_figure([{"variant": "projection", "trainable": 9, "stored": 3}])
    assert {to_hex(p.get_facecolor()[:3]) for p in bars.axes[0].patches} == {colours["projection"]}
    # Custom variants take the next free colours, never a standard variant's.
    custom = variant_colours(["no_projection", "mine", "projection", "other"])
    assert len(set(custom.values())) == 4 and custom["projection"] == colours["projection"]


def test_overlaid_runs_differ_by_line_style_and_are_named_by_their_labels():
    fig = plots.loss_figure({"a": _metrics(), "b": _metrics()}, smoothing=0.0,
                            labels={"a": "offline-tiny 14:03:12", "b": "offline-tiny 13:10:02"})
    texts = _legend_texts(fig)
    assert texts[-2:] == ["offline-tiny 14:03:12", "offline-tiny 13:10:02"]
    assert texts.count("projection") == 1  # one entry per variant, whatever the number of runs
    styles = {ln.get_linestyle() for ln in fig.axes[0].get_lines() if ln.get_linewidth() > 1 and ln.get_marker() == "None"}
    assert styles == {"-", "--"}
    # The overlaid run's validation markers: its variant's colour, hollow, another shape.
    hollow = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "s"]
    assert len(hollow) == 2 and all(to_hex(ln.get_markerfacecolor()) == "#ffffff" for ln in hollow)


def test_empty_figures_say_so():
    empty = plots.loss_figure({}, smoothing=0.6, log_scale=True)
    assert empty.axes[0].get_yscale() == "linear"  # log of nothing would warn
    assert [t.get_text() for t in empty.axes[0].texts] == ["no loss logged yet"]
    assert "no task metrics in this run" in plots.metric_figure({"r": _metrics()}).axes[0].texts[0].get_text()


def test_log_scale_labels_the_ticks_between_decades():
    """A loss from 0.8 to 6 on a log axis reads 1, 1.5, 2, 3, 5 (not a lone 10^0), every tick labelled."""
    assert plots.nice_log_ticks(0.8, 6) == [1, 1.5, 2, 3, 5]
    assert plots.nice_log_ticks(0.01, 10) == [0.01, 0.1, 1, 10]
    records = [{"variant": "v", "step": s, "loss": 6.0 * 0.93**s} for s in range(1, 30)]
    fig = plots.loss_figure({"r": records}, smoothing=0.0, log_scale=True)
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    labels = [(t.get_position()[1], t.get_text()) for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert len(labels) >= 4 and all(text for _, text in labels)
    assert "6" in [text for _, text in labels] or "5" in [text for _, text in labels]


def test_metric_figure_draws_each_task_metric_per_variant_and_the_base_model():
    records = [{"variant": v, "step": s, "bleu": b, "chrf": 2 * b} for s in (10, 20)
               for v, b in (("no_projection", s / 2), ("projection", s), ("base", 3.0))]
    records.append({"variant": "projection", "step": 20, "eval_loss": 1.0})
    assert plots.metric_series(records)["bleu"]["projection"] == ([10, 20], [10.0, 20.0])
    fig = plots.metric_figure({"r": records})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["BLEU", "chrF"]
    assert len(fig.axes[0].get_lines()) == 3  # two variants and the base model
    assert _legend_texts(fig) == ["no_projection", "projection", "base model"]


def test_parameter_figure_is_linear_with_every_bar_labelled():
    rows = [
        {"variant": "no_projection", "trainable": 2560, "stored": 2560},
        {"variant": "projection", "trainable": 21_440, "stored": 2560},
    ]
    fig = plots.parameter_figure(rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == [2560, 2560, 2560, 21_440]
    assert sorted(t.get_text().strip() for t in ax.texts) == ["2,560", "2,560", "2,560", "21,440"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["no_projection", "projection"]


def test_figures_encode_as_png_and_svg_and_metrics_as_csv():
    fig = plots.loss_figure({"run": _metrics()})
    assert plots.figure_bytes(fig, "png").startswith(b"\x89PNG")
    assert b"<svg" in plots.figure_bytes(fig, "svg")[:500]
    text = metrics_csv({"run": _metrics()[:1] + [{"variant": "base", "step": 3, "bleu": 1.5}]})
    assert text.splitlines() == ["run,variant,step,epoch,loss,eval_loss,lr,tokens_per_s,time,bleu",
                                 "run,no_projection,2,0,4.0,,0.001,10,2,", "run,base,3,,,,,,,1.5"]


def test_a_smoothing_out_of_range_is_clamped_not_an_error():
    assert plots.clamp_smoothing(5) == 0.99 and plots.clamp_smoothing(-1) == 0.0
    assert plots.clamp_smoothing("x") == 0.6 and plots.clamp_smoothing(0.3) == 0.3
