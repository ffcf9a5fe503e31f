"""ui/handlers.py without a browser: the timer reads a run directory and skips what did not change."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_compare import write_run

from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.runs import JobQueue, append_jsonl, atomic_write_json
from prefixlab.ui import values
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


def test_train_in_a_precision_the_machine_cannot_do_is_refused_beside_the_field(tmp_path, monkeypatch):
    from prefixlab.engine import devices

    monkeypatch.setattr(devices, "training_device_type", lambda: "cpu")
    lab = _lab(tmp_path)
    initial, override, _, _ = lab.initial_state("offline-tiny")
    initial["training.precision"] = "fp16"
    messages, _, _ = lab.train(override, *[initial[f.key] for f in lab.fields])
    assert "**training.precision**" in messages and "fp16 needs a CUDA or Apple MPS GPU" in messages
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
    source, _, _, message, rejection = lab.upload_task(str(upload), "e2e-synth")
    assert source is gr.skip() or source == gr.skip()  # data.source keeps its value
    assert "**data.source**" in message and "late-error.jsonl, line 31: bad JSON" in message
    assert str(tmp_path) not in message  # named by the file's own name, not where Gradio put it
    assert "This file was not used (data.source is still 'e2e-synth')" in message
    assert message == values.errors_markdown({"data.source": rejection})
    assert not (tmp_path / "runs" / "uploads").exists()  # checked before anything is stored


def test_initial_state_is_the_offline_preset_with_model_sizes(tmp_path):
    initial, override, rows, errors = _lab(tmp_path).initial_state("offline-tiny")
    assert errors == "" and not override
    assert initial["model.name"] == "tiny-gpt2" and initial["prefix.num_layers"] == "2"
    assert [r[0] for r in rows] == ["no_projection", "projection"]


def test_an_upload_is_named_by_an_absolute_path_so_exported_specs_work_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = Lab(JobQueue("runs"), page_fields(), REPO_PRESETS)  # app.py's default: relative to its folder
    upload = tmp_path / "mine.csv"
    upload.write_text("question,answer\nwhat?,that\n")
    source = lab.upload_task(str(upload))[0]
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()[:12]
    assert source == str(tmp_path / "runs" / "uploads" / f"mine-{digest}.csv")


def test_upload_copies_the_file_and_offers_its_columns(tmp_path):
    lab = _lab(tmp_path)
    upload = tmp_path / "mine.csv"
    upload.write_text("question,answer,id\nwhat?,that,1\n")
    source, source_column, target_column, message, rejection = lab.upload_task(str(upload))
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()[:12]
    assert source == str(tmp_path / "runs" / "uploads" / f"mine-{digest}.csv") and message == rejection == ""
    assert Path(source).read_text() == upload.read_text()
    assert source_column["choices"] == ["question", "answer", "id"] and source_column["value"] == "question"
    assert target_column["value"] == "answer"
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    _, _, _, message, _ = lab.upload_task(str(bad))
    assert "**data.source**" in message and "unsupported file type '.txt'" in message


def test_the_target_picker_never_starts_on_the_source_column(tmp_path):
    lab = _lab(tmp_path)
    upload = tmp_path / "t.csv"
    upload.write_text("x,source\na,b\n")
    _, source_column, target_column, _, _ = lab.upload_task(str(upload))
    assert (source_column["value"], target_column["value"]) == ("source", "x")
    for header, picked in [("target,input", ("input", "target")), ("a,b,c", ("a", "b")),
                           ("target,x,source", ("source", "target")), ("x,source,y", ("source", "x"))]:
        upload.write_text(header + "\n" + ",".join("v" * len(header.split(","))) + "\n")
        _, source_column, target_column, _, _ = lab.upload_task(str(upload))
        assert (source_column["value"], target_column["value"]) == picked, header


def _tiny_form(lab):
    initial, override, _, _ = lab.initial_state("offline-tiny")
    return initial, override


@pytest.mark.parametrize("name,content,needle", [
    ("badline.jsonl", "".join(json.dumps(r) + "\n" for r in _rows(499)) + "{oops\n", "line 500: bad JSON"),
    ("binary.csv", bytes(range(256)) * 4, "binary.csv"),
    ("empty.jsonl", b"", "empty.jsonl"),
    ("latin1.csv", "source,target\ncaf\xe9,b\n".encode("latin-1"), "latin1.csv"),
    ("onecol.csv", "text\nhello\nworld\n", "the file has only one column, 'text'"),
], ids=["badline", "binary", "empty", "latin1", "onecol"])
def test_a_rejected_upload_blocks_train_export_and_save_until_it_is_cleared(tmp_path, name, content, needle):
    """While a rejected file is on show, the task is still the old one: Train (and export, save)
    refuse with the upload's message, and every form edit keeps it; clearing the upload lifts it."""
    lab = _lab(tmp_path)
    initial, override = _tiny_form(lab)
    raw = [initial[f.key] for f in lab.fields]
    upload = tmp_path / name
    upload.write_bytes(content if isinstance(content, bytes) else content.encode())
    source, _, _, shown, rejection = lab.upload_task(str(upload), "e2e-synth")
    assert source == SKIP and needle in rejection and shown == values.errors_markdown({"data.source": rejection})
    assert "clear the upload (×)" in rejection and "Traceback" not in rejection
    messages, run_select, status = lab.train(override, *raw, upload_error=rejection)
    assert messages == shown and run_select == SKIP and lab.queue.list_runs() == []
    assert lab.export_spec(override, *raw, upload_error=rejection)[2] == shown
    assert lab.save_preset("kept-out", override, *raw, upload_error=rejection)[3] == shown
    assert not (lab.presets_dir / "kept-out.json").exists()
    rows, messages, _ = lab.form_changed(override, *raw, upload_error=rejection)
    assert messages == shown and len(rows) == 2  # the table still follows the form
    # Cleared (the page's state goes back to ""): Train runs the form as shown.
    messages, _, _ = lab.train(override, *raw, upload_error="")
    assert messages == "" and len(lab.queue.list_runs()) == 1


def test_uploads_are_stored_under_their_own_names_and_a_rejected_one_replaces_nothing(tmp_path):
    """A queued run's task file is never replaced: a bad file of the same name is not stored, and a
    good one of the same name is stored beside it."""
    lab = _lab(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first = tmp_path / "a" / "task.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in _rows(20)))
    stored, _, _, _, _ = lab.upload_task(str(first))
    assert Path(stored).name.startswith("task-") and Path(stored).suffix == ".jsonl"
    before = Path(stored).read_bytes()
    bad = tmp_path / "b" / "task.jsonl"
    bad.write_bytes(b"\xff\xfe not text")
    assert "task.jsonl" in lab.upload_task(str(bad), stored)[4]
    assert Path(stored).read_bytes() == before
    other = tmp_path / "c" / "task.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    stored_other, _, _, _, _ = lab.upload_task(str(other))
    assert stored_other != stored and Path(stored).read_bytes() == before
    assert Path(stored_other).read_bytes() == other.read_bytes()
    assert lab.upload_task(str(first))[0] == stored  # the same content again: the same file
    assert sorted(p.name for p in (tmp_path / "runs" / "uploads").iterdir()) == sorted(
        [Path(stored).name, Path(stored_other).name])


def test_one_column_as_source_and_target_is_refused_at_train(tmp_path):
    lab = _lab(tmp_path)
    initial, override = _tiny_form(lab)
    task = tmp_path / "one.jsonl"
    task.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(20)))
    initial.update({"data.source": str(task), "data.source_column": "text", "data.target_column": "text"})
    messages, _, _ = lab.train(override, *[initial[f.key] for f in lab.fields])
    assert "**data.target_column**" in messages and "the source and target columns are both 'text'" in messages
    assert lab.queue.list_runs() == []


def test_unticking_override_shows_the_chosen_model_s_sizes_again(tmp_path):
    lab = _lab(tmp_path)
    ticked = lab.override_changed(True, "tiny-gpt2")
    assert all(u["interactive"] is True and "value" not in u for u in ticked)  # typed values stay
    unticked = lab.override_changed(False, "tiny-gpt2")
    assert [u["value"] for u in unticked] == ["2", "64", "4", "1"] and all(not u["interactive"] for u in unticked)
    assert [u["value"] for u in lab.override_changed(False, "tiny-t5")][3] == "2"


def test_a_selected_run_deleted_on_disk_is_named_once_and_unselected(tmp_path):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-gone", finished=True)
    other = write_run(tmp_path / "runs" / "20250101-000000-other", finished=True)
    seen = lab.tick(run.run_id, other.run_id, 0.6, False, {})[-1]
    shutil.rmtree(run.path)
    shutil.rmtree(other.path)
    out = lab.tick(run.run_id, other.run_id, 0.6, False, seen)
    status, runs, run_choices, overlay_choices, seen = out[0], out[7], out[8], out[9], out[10]
    assert status.startswith(f"Run **{run.run_id}** no longer exists") and "No run selected" in status
    assert runs == [] and run_choices["value"] is None and run_choices["choices"] == []
    assert isinstance(out[1], Figure) and out[2] == "" and out[3].empty and out[6]["choices"] == []  # cleared
    assert overlay_choices["value"] == ""
    # The dropdown's change (no run) and later ticks go on quietly, and a new run is listed.
    again = lab.tick(None, "", 0.6, False, seen)
    assert "No run selected" in again[0]
    new = write_run(tmp_path / "runs" / "20270101-000000-new", finished=True)
    later = lab.tick(None, "", 0.6, False, again[-1])
    assert later[7][0][0] == new.run_id and later[8]["choices"] == [new.run_id]
    assert "no longer exists" not in lab.tick(new.run_id, "", 0.6, False, later[-1])[0]


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
    _, saved, command, _ = lab.save_preset("Other Recipe", override, *raw)
    assert command == f"python -m prefixlab train {presets / 'other-recipe.json'}" and Path(saved).is_file()


def _presets_copy(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    for path in REPO_PRESETS.glob("*.json"):
        (presets / path.name).write_text(path.read_text())
    return presets


@pytest.mark.parametrize("name", ["offline-tiny", "Offline Tiny!", "my-recipe"])
def test_save_preset_never_replaces_a_preset(tmp_path, name):
    """A shipped preset, one saved before, or a name that slugifies to one of them: refused, naming
    the file, and the file is unchanged."""
    presets = _presets_copy(tmp_path)
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), presets)
    initial, override = _tiny_form(lab)
    initial["training.max_steps"] = "70"
    raw = [initial[f.key] for f in lab.fields]
    assert lab.save_preset("my-recipe", override, *raw)[3] == "Saved preset **my-recipe**."
    slug = values.preset_slug(name)
    before = (presets / f"{slug}.json").read_bytes()
    initial["training.max_steps"] = "90"
    dropdown, saved, command, message = lab.save_preset(name, override, *[initial[f.key] for f in lab.fields])
    assert dropdown == SKIP and saved is None and command == ""
    assert message == (f"⚠️ **preset name**: a preset named {slug!r} already exists ({presets / (slug + '.json')}); "
                       "saving never replaces a preset: type another name")
    assert (presets / f"{slug}.json").read_bytes() == before


@pytest.mark.parametrize("name,file_name", [("!!!", "experiment.json"), ("日本語", "日本語.json"),
                                            ("x" * 300, "x" * 60 + ".json"), ("My run #2", "my-run-2.json")])
def test_export_names_the_file_after_any_experiment_name_the_form_accepts(tmp_path, name, file_name):
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), _presets_copy(tmp_path))
    initial, override = _tiny_form(lab)
    initial["experiment.name"] = name
    path, command, message = lab.export_spec(override, *[initial[f.key] for f in lab.fields])
    assert message == "" and Path(path).name == file_name and command == f"python -m prefixlab train {shlex.quote(file_name)}"
    assert ExperimentSpec.load(path).name == name


@pytest.mark.parametrize("name,needle", [
    ("!!!", "preset name '!!!' has no letters or digits; type a name such as my-recipe"),
    ("x" * 300, "preset name is 300 characters long as a file name (xxxxxxxxxxxxxxxxxxxx...); type a name of at "
                "most 60 letters and digits"),
])
def test_save_preset_names_a_preset_name_that_cannot_be_a_file(tmp_path, name, needle):
    presets = _presets_copy(tmp_path)
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), presets)
    initial, override = _tiny_form(lab)
    before = sorted(presets.iterdir())
    dropdown, saved, _, message = lab.save_preset(name, override, *[initial[f.key] for f in lab.fields])
    assert message == f"⚠️ **preset name**: {needle}" and saved is None and dropdown == SKIP
    assert sorted(presets.iterdir()) == before
    # With no preset name typed, the experiment name is used: "日本語" keeps its letters.
    initial["experiment.name"] = "日本語"
    assert lab.save_preset("", override, *[initial[f.key] for f in lab.fields])[3] == "Saved preset **日本語**."


def test_a_reloaded_page_offers_presets_saved_since_start_up(tmp_path):
    """Presets are read from the folder on every page load: a saved one is offered, and the opening
    preset's file changed on disk refills the form; otherwise the form is left as it is."""
    presets = _presets_copy(tmp_path)
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), presets)
    initial, override = _tiny_form(lab)  # what build_app does at start-up
    unchanged = lab.presets_on_load("offline-tiny")
    assert all(value == SKIP for value in unchanged[1:])
    lab.save_preset("later", override, *[initial[f.key] for f in lab.fields])
    assert "later" in lab.presets_on_load("offline-tiny")[0]["choices"]
    spec = json.loads((presets / "offline-tiny.json").read_text())
    spec["training"]["max_steps"] = 123
    (presets / "offline-tiny.json").write_text(json.dumps(spec))
    refilled = lab.presets_on_load("offline-tiny")
    assert refilled[1 + [f.key for f in lab.fields].index("training.max_steps")] == "123"


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


def test_the_adapter_picked_stays_picked_while_the_run_saves_again(tmp_path):
    """The timer redraws a running run's panels whenever its files change; the adapter the user
    picked for download must survive that (it snapped back to the first one every second)."""
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    for variant in ("no_projection", "projection"):
        (run.adapter_path(variant)).mkdir(parents=True)
        (run.adapter_path(variant) / "adapter_config.json").write_text("{}")
    adapters = lab.tick(run.run_id, "", 0.6, False, {}, "projection")[6]
    assert adapters["choices"] == ["no_projection", "projection"] and adapters["value"] == "projection"
    assert lab.tick(run.run_id, "", 0.6, False, {}, None)[6]["value"] == "no_projection"
    shutil.rmtree(run.adapter_path("projection"))
    assert lab.tick(run.run_id, "", 0.6, False, {}, "projection")[6] == {"choices": ["no_projection"],
                                                                          "value": "no_projection",
                                                                          "__type__": "update"}


@pytest.mark.parametrize("state, error, says", [
    ("queued", None, "has no trained adapter yet; wait until it saves one"),
    ("cancelled", None, "was cancelled and saved no adapter, so there is nothing to generate with; press Train"),
    ("failed", "ModelLoadError: no model 'x'", "failed (ModelLoadError: no model 'x') and saved no adapter"),
    ("running", None, "lost its worker (the worker never recorded its pid (the app stopped while starting it?)) "
                      "and saved no adapter"),
])
def test_a_run_without_adapters_says_why_on_generate_and_download(tmp_path, state, error, says):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    run.update_status(state=state, error=error)
    if state == "running":  # marked running long ago, no pid: its worker never started
        atomic_write_json(run.status_path, {**run.read_status(), "pid": None, "heartbeat": 1.0, "updated_at": 1.0})
    for call in (lambda: lab.generate(run.run_id, "a prompt"), lambda: lab.zip_adapter(run.run_id, None)):
        with pytest.raises(gr.Error, match=re.escape(says)):
            call()
