"""ui/handlers.py without a browser: the timer reads a run directory and skips what did not change."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_compare import write_run

from prefixlab.experiment import ExperimentSpec
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


def test_train_with_a_model_that_cannot_load_says_so_and_submits_nothing(tmp_path):
    lab = _lab(tmp_path)
    initial, override, _, _ = lab.initial_state("offline-tiny")
    initial["model.name"] = str(tmp_path / "no-such-model")
    messages, _, _ = lab.train(override, *[initial[f.key] for f in lab.fields])
    assert "**model.name**" in messages and "no-such-model" in messages
    assert lab.queue.list_runs() == []


def _rows(count: int) -> list[dict]:
    return [{"table": f"name[Place {i}] | food[Thai]", "text": f"Place {i} serves Thai food."} for i in range(count)]


def test_train_reads_the_whole_task_file_and_names_a_bad_line_far_down(tmp_path):
    """A file is checked line by line with the chosen columns before anything is queued, so its 35th
    line is reported beside the form instead of by a failed run."""
    lab = _lab(tmp_path)
    initial, override, _, _ = lab.initial_state("offline-tiny")
    rows = _rows(40)
    del rows[34]["text"]  # line 35 lacks the target column
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    initial.update({"data.source": str(task), "data.source_column": "table", "data.target_column": "text"})
    messages, _, _ = lab.train(override, *[initial[f.key] for f in lab.fields])
    assert "**data.target_column**" in messages and "line 35" in messages and "'text'" in messages
    assert lab.queue.list_runs() == []
    rows[34]["text"] = "Place 34 serves Thai food."
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    messages, _, _ = lab.train(override, *[initial[f.key] for f in lab.fields])
    assert messages == "" and len(lab.queue.list_runs()) == 1


def test_upload_reads_every_line_not_only_those_the_pickers_look_at(tmp_path):
    lab = _lab(tmp_path)
    upload = tmp_path / "late-error.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in _rows(30)) + "{not json}\n")
    source, _, _, message = lab.upload_task(str(upload))
    assert source is gr.skip() or source == gr.skip()  # data.source keeps its value
    assert "**data.source**" in message and "line 31: bad JSON" in message


def test_initial_state_is_the_offline_preset_with_model_sizes(tmp_path):
    initial, override, rows, errors = _lab(tmp_path).initial_state("offline-tiny")
    assert errors == "" and not override
    assert initial["model.name"] == "tiny-gpt2" and initial["prefix.num_layers"] == "2"
    assert [r[0] for r in rows] == ["no_projection", "projection"]


def test_upload_copies_the_file_and_offers_its_columns(tmp_path):
    lab = _lab(tmp_path)
    upload = tmp_path / "mine.csv"
    upload.write_text("question,answer,id\nwhat?,that,1\n")
    source, source_column, target_column, message = lab.upload_task(str(upload))
    assert source == str(tmp_path / "runs" / "uploads" / "mine.csv") and message == ""
    assert (tmp_path / "runs" / "uploads" / "mine.csv").read_text() == upload.read_text()
    assert source_column["choices"] == ["question", "answer", "id"] and source_column["value"] == "question"
    assert target_column["value"] == "answer"
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    _, _, _, message = lab.upload_task(str(bad))
    assert "**data.source**" in message and "unsupported file type '.txt'" in message


def test_export_and_save_preset_write_the_spec_and_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the command names a preset relative to where the app runs
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "offline-tiny.json").write_text((REPO_PRESETS / "offline-tiny.json").read_text())
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), presets)
    initial, override, _, _ = lab.initial_state("offline-tiny")
    raw = [initial[f.key] for f in lab.fields]
    path, command, message = lab.export_spec(override, *raw)
    assert message == "" and command == "python -m prefixlab train offline-tiny.json"
    exported = ExperimentSpec.load(path).to_dict()
    preset = ExperimentSpec.load(presets / "offline-tiny.json").to_dict()
    # The form has no description field; everything else survives form -> spec.
    assert {**exported, "description": ""} == {**preset, "description": ""}
    dropdown, saved, command, message = lab.save_preset("My Recipe", override, *raw)
    assert saved == str(presets / "my-recipe.json") and dropdown["value"] == "my-recipe"
    assert dropdown["choices"] == ["my-recipe", "offline-tiny"]
    assert command == "python -m prefixlab train presets/my-recipe.json" and "my-recipe" in message
    # Like the shipped presets, the file starts with the command that trains it.
    assert next(iter(json.loads(Path(saved).read_text()))) == "_command"
    assert json.loads(Path(saved).read_text())["_command"] == command
    assert json.loads(Path(path).read_text())["_command"] == "python -m prefixlab train offline-tiny.json"
    # A saved preset loads back into the same form values.
    assert lab.preset_values("my-recipe") == lab.preset_values("offline-tiny")
    # A presets folder outside the current one (app.py --presets-dir) is named by its absolute path.
    monkeypatch.chdir(REPO_PRESETS)
    _, saved, command, _ = lab.save_preset("My Recipe", override, *raw)
    assert command == f"python -m prefixlab train {presets / 'my-recipe.json'}" and Path(saved).is_file()


def test_zip_adapter_holds_the_peft_folder(tmp_path):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True)
    folder = run.adapter_path("projection")
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    with zipfile.ZipFile(lab.zip_adapter(run.run_id, "projection")) as archive:
        assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    with pytest.raises(gr.Error, match="no saved adapter 'no_projection'"):
        lab.zip_adapter(run.run_id, "no_projection")
