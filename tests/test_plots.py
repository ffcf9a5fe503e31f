"""plots.py: metrics records -> chart data (pure) and the figures drawn from it."""

from __future__ import annotations

import pytest

from prefixlab.views import figures as plots


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


def test_loss_figure_draws_every_point_and_log_scale():
    fig = plots.loss_figure({"run": _metrics()}, smoothing=0.5, log_scale=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "step"
    # 2 variants x (raw + smoothed) lines + 2 eval marker sets.
    lines = ax.get_lines()
    assert len(lines) == 6
    raw = [ln for ln in lines if ln.get_alpha() == 0.25]
    assert sorted(list(ln.get_xdata()) for ln in raw) == [[1, 2], [1, 3]]
    markers = [ln for ln in lines if ln.get_marker() == "o"]
    assert sorted(float(ln.get_ydata()[0]) for ln in markers) == [3.5, 4.5]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "projection (validation)" in labels and "no_projection" in labels


def test_loss_figure_overlay_labels_name_the_run_and_empty_figure_says_so():
    fig = plots.loss_figure({"a": _metrics(), "b": _metrics()}, smoothing=0.0)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "a / projection" in labels and "b / no_projection (validation)" in labels
    empty = plots.loss_figure({}, smoothing=0.6, log_scale=True)
    assert empty.axes[0].get_yscale() == "linear"  # log of nothing would warn
    assert [t.get_text() for t in empty.axes[0].texts] == ["no loss logged yet"]


def test_parameter_figure_bars_match_rows():
    rows = [
        {"variant": "no_projection", "trainable": 2048, "stored": 2048},
        {"variant": "projection", "trainable": 100_000, "stored": 2048},
    ]
    fig = plots.parameter_figure(rows)
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [2048, 2048, 2048, 100_000]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["no_projection", "projection"]
