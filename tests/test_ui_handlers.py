"""ui/handlers.py without a browser: the timer reads a run directory and skips what did not change."""

from __future__ import annotations

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure
from test_compare import write_run

from prefixlab.runs import JobQueue, append_jsonl
from prefixlab.ui.fields import page_fields
from prefixlab.ui.handlers import Lab, files_signature
from prefixlab.ui.app import REPO_PRESETS

SKIP = gr.skip()


def _lab(tmp_path):
    return Lab(JobQueue(tmp_path / "runs"), page_fields(), REPO_PRESETS)


def test_tick_draws_a_run_then_skips_until_its_files_change(tmp_path):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    out = lab.tick(run.run_id, "", 0.6, False, {})
    status, chart, points, comparison, bars, grid, adapters, runs, run_choices, overlay_choices, seen = out
    assert "**running**" in status and "step 4 / 4" in status
    assert isinstance(chart, Figure) and isinstance(bars, Figure)
    assert points == "4 training points, 2 validation points"
    assert isinstance(comparison, pd.DataFrame) and list(comparison["variant"]) == ["no_projection", "projection"]
    assert runs[0][:4] == [run.run_id, "fixture", "tiny-gpt2", "running"]
    assert run_choices["choices"] == [run.run_id] and overlay_choices["choices"] == ["", run.run_id]
    # Nothing changed on disk: only the status line (elapsed time) is sent again.
    again = lab.tick(run.run_id, "", 0.6, False, seen)
    assert all(value == SKIP for value in again[1:10]) and "**running**" in again[0]
    # A new metrics line redraws the chart; the runs listing is unchanged (same state and step).
    append_jsonl(run.metrics_path, {"variant": "projection", "step": 3, "loss": 2.5, "time": 1010.0})
    third = lab.tick(run.run_id, "", 0.6, False, again[-1])
    assert third[2] == "5 training points, 2 validation points" and third[7] == SKIP


def test_files_signature_changes_when_a_run_file_grows(tmp_path):
    run = write_run(tmp_path / "run", finished=False)
    before = files_signature(run.path)
    append_jsonl(run.samples_path, {"prompt": "p", "reference": None, "outputs": {"base": ""}})
    assert files_signature(run.path) != before


def test_page_load_selects_the_running_run(tmp_path):
    lab = _lab(tmp_path)
    write_run(tmp_path / "runs" / "20260101-000000-a", finished=True)
    running = write_run(tmp_path / "runs" / "20250101-000000-b", finished=False)
    run_select, overlay, rows = lab.page_load()
    assert run_select["value"] == running.run_id
    assert {r[0] for r in rows} == {"20260101-000000-a", running.run_id}


def test_train_with_a_bad_value_names_the_field_and_submits_nothing(tmp_path):
    lab = _lab(tmp_path)
    initial, override, _, _ = lab.initial_state("offline-tiny")
    raw = [initial[f.key] for f in lab.fields]
    raw[[f.key for f in lab.fields].index("training.batch_size")] = 0
    messages, run_select, status = lab.train(override, *raw)
    assert "**training.batch_size**" in messages and "got 0" in messages
    assert lab.queue.list_runs() == []


def test_initial_state_is_the_offline_preset_with_model_sizes(tmp_path):
    initial, override, rows, errors = _lab(tmp_path).initial_state("offline-tiny")
    assert errors == "" and not override
    assert initial["model.name"] == "tiny-gpt2" and initial["prefix.num_layers"] == "2"
    assert [r[0] for r in rows] == ["no_projection", "projection"]
