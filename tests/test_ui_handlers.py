"""ui/handlers.py and ui/run_handlers.py without a browser: handlers take their inputs by registry id
and return the outputs they change, by id; the timer reads a run directory and leaves out what did
not change."""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
import shutil
import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio.components.plot import PlotData
from test_compare import write_run

from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.runs import JobQueue, RunDir, append_jsonl, atomic_write_json
from prefixlab.ui import values
from prefixlab.ui.fields import page_fields
from prefixlab.ui.handlers import Lab
from prefixlab.ui.run_handlers import files_signature
from prefixlab.ui.app import REPO_PRESETS

SKIP = gr.skip()
# What the timer's event draws (ui/app.py); the tick leaves out those that did not change.
RUN_PANELS = {"run.chart", "run.metrics", "run.points", "compare.table", "run.bars", "compare.outputs",
              "compare.adapter", "runs.table", "run.select", "run.overlay"}


def cells(table_html: str) -> list[list[str]]:
    """The body rows of one of the page's HTML tables, as the text of their cells (a variant's
    formula line, a row of its own, is left out)."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell, self.skip, self.in_body = [], None, False, False

        def handle_starttag(self, tag, attrs):
            if tag == "tbody":
                self.in_body = True
            elif tag == "tr" and self.in_body:
                self.skip = ("class", "formula") in attrs
                if not self.skip:
                    self.rows.append([])
            elif tag == "td" and self.in_body and not self.skip:
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "td" and self.cell is not None:
                self.rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Rows()
    parser.feed(table_html or "")
    return parser.rows


def _lab(tmp_path, allow=()):
    """A Lab whose Gradio folder is tmp_path/gradio (uploads arrive there); it may read the task
    files and model folders under `allow` (app.py --allow-path)."""
    return Lab(JobQueue(tmp_path / "runs"), page_fields(), REPO_PRESETS, temp_dir=tmp_path / "gradio",
               allow_paths=allow)


def _received(lab, path) -> Path:
    """`path` as Gradio hands an upload to the page: a copy in a folder of its own in the app's
    temporary folder."""
    folder = lab.temp_dir / secrets.token_hex(4)
    folder.mkdir(parents=True)
    return Path(shutil.copyfile(path, folder / Path(path).name))


def _is_chart(value) -> bool:
    """A chart as the tick sends it: the PNG a gr.Plot(format="png") shows, encoded once for every viewer."""
    return isinstance(value, PlotData) and value.type == "matplotlib" and value.plot.startswith("data:image/png;base64,")


def _tick(lab, run_id, overlay="", seen=None, variant=None, smoothing=0.6):
    """The timer's event: its inputs by id (smoothing 0.6, linear scale)."""
    return lab.tick({"run.select": run_id, "run.overlay": overlay, "run.smoothing": smoothing, "run.log_scale": False,
                     "run.seen": seen if seen is not None else {}, "compare.adapter": variant})


def _upload(lab, path, current_source=None):
    return lab.upload_task({"form.upload": str(_received(lab, path)), "form.data.source": current_source})


def test_tick_draws_a_run_then_skips_until_its_files_change(tmp_path):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    out = _tick(lab, run.run_id)
    status, seen = out["run.status"], out["run.seen"]
    assert "**running**" in status and "step 4 / 4" in status
    assert _is_chart(out["run.chart"]) and _is_chart(out["run.bars"]) and _is_chart(out["run.metrics"])
    assert out["run.points"] == ("no\\_projection: 2 training, 1 validation points · "
                                 "projection: 2 training, 1 validation points")
    comparison = cells(out["compare.table"])
    assert [row[0] for row in comparison] == ["no_projection", "projection"]
    assert cells(out["runs.table"])[0][:4] == [run.run_id, "fixture", "tiny-gpt2", "running"]
    # The overlay menu never offers the selected run itself.
    assert out["run.select"]["choices"] == [run.run_id] and out["run.overlay"]["choices"] == [("no overlay", "")]
    # Nothing changed on disk: only the status line (elapsed time) is sent again.
    again = _tick(lab, run.run_id, seen=seen)
    assert not set(again) & RUN_PANELS and "**running**" in again["run.status"]
    # A new metrics line redraws the chart; the runs listing is unchanged (same state and step).
    append_jsonl(run.metrics_path, {"variant": "projection", "step": 3, "loss": 2.5, "time": 1010.0})
    third = _tick(lab, run.run_id, seen=again.get("run.seen", seen))
    assert third["run.points"].endswith("projection: 3 training, 1 validation points") and "runs.table" not in third


def test_the_tick_returns_only_what_changed_keyed_by_id(tmp_path):
    """No list to line up with the event's outputs: an unchanged run sends its status line and
    nothing else, not even "run.seen", and a changed file sends the panels whose content changed
    (a training line: the chart, its point count and the comparison's losses; not the parameter
    bars, the outputs or the adapters)."""
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    first = _tick(lab, run.run_id)
    assert set(first) == RUN_PANELS | {"run.status", "run.seen"}
    assert set(_tick(lab, run.run_id, seen=first["run.seen"])) == {"run.status"}
    append_jsonl(run.metrics_path, {"variant": "projection", "step": 3, "loss": 2.5, "time": 1010.0})
    assert set(_tick(lab, run.run_id, seen=first["run.seen"])) == {
        "run.status", "run.seen", "run.chart", "run.points", "compare.table"}  # the metrics chart: unchanged


def test_files_signature_changes_when_a_run_file_grows(tmp_path):
    run = write_run(tmp_path / "run", finished=False)
    before = files_signature(run.path)
    append_jsonl(run.samples_path, {"prompt": "p", "reference": None, "outputs": {"base": ""}})
    assert files_signature(run.path) != before


def test_page_load_selects_the_running_run(tmp_path):
    lab = _lab(tmp_path)
    write_run(tmp_path / "runs" / "20260101-000000-a", finished=True)
    running = write_run(tmp_path / "runs" / "20250101-000000-b", finished=False)
    out = lab.page_load({})
    assert out["run.select"]["value"] == running.run_id
    assert {r[0] for r in cells(out["runs.table"])} == {"20260101-000000-a", running.run_id}
    assert out["run.overlay"]["choices"] == [("no overlay", ""), "20260101-000000-a"]


def test_train_with_a_bad_value_names_the_field_and_submits_nothing(tmp_path):
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    form["form.training.batch_size"] = 0
    messages = lab.train(form)["actions.messages"]
    assert "**training.batch_size**" in messages and "got 0" in messages
    assert lab.queue.list_runs() == []


def _fill_the_disk(monkeypatch) -> None:
    """Every JSON file the runs folder would get fails as a full disk does."""
    import errno

    from prefixlab.engine import runs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "atomic_write_json", full)


def test_train_into_a_runs_folder_that_cannot_be_written_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    _fill_the_disk(monkeypatch)
    messages = lab.train(form)["actions.messages"]
    from prefixlab.ui import values

    assert messages.startswith("⚠️ cannot queue the run in " + values.md_text(str(lab.queue.runs_dir)))
    assert "no space left on device" in messages
    assert lab.queue.list_runs() == [] and not [p for p in lab.queue.runs_dir.iterdir() if p.name[0].isdigit()]


def test_a_run_id_is_a_folder_name_never_a_path(tmp_path):
    lab = _lab(tmp_path)
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(ValueError, match="a run id is a folder name, not a path"):
            lab.queue.run_dir(bad)


def test_train_in_a_precision_the_machine_cannot_do_is_refused_beside_the_field(tmp_path, monkeypatch):
    from prefixlab.engine import devices

    monkeypatch.setattr(devices, "training_device_type", lambda: "cpu")
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    form["form.training.precision"] = "fp16"
    messages = lab.train(form)["actions.messages"]
    assert "**training.precision**" in messages and "fp16 needs a CUDA or Apple MPS GPU" in messages
    assert lab.queue.list_runs() == []


def test_train_with_a_model_that_cannot_load_says_so_and_submits_nothing(tmp_path):
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    form["form.model.name"] = str(tmp_path / "no-such-model")
    messages = lab.train(form)["actions.messages"]
    assert "**model.name**" in messages and "no-such-model" in messages
    assert lab.queue.list_runs() == []


def _rows(count: int) -> list[dict]:
    return [{"table": f"name[Place {i}] | food[Thai]", "text": f"Place {i} serves Thai food."} for i in range(count)]


def test_train_reads_the_whole_task_file_and_names_a_bad_line_far_down(tmp_path):
    """A file is checked line by line with the chosen columns before anything is queued, so its 35th
    line is reported beside the form instead of by a failed run (a file under --allow-path)."""
    lab = _lab(tmp_path, allow=[tmp_path])
    form = lab.initial_state("offline-tiny")
    rows = _rows(40)
    del rows[34]["text"]  # line 35 lacks the target column
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    form.update({"form.data.source": str(task), "form.data.source_column": "table", "form.data.target_column": "text"})
    messages = lab.train(form)["actions.messages"]
    assert "**data.target_column**" in messages and "line 35" in messages and "'text'" in messages
    assert lab.queue.list_runs() == []
    rows[34]["text"] = "Place 34 serves Thai food."
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    messages = lab.train(form)["actions.messages"]
    assert messages == "" and len(lab.queue.list_runs()) == 1


def test_upload_reads_every_line_not_only_those_the_pickers_look_at(tmp_path):
    lab = _lab(tmp_path)
    upload = tmp_path / "late-error.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in _rows(30)) + "{not json}\n")
    out = _upload(lab, upload, "e2e-synth")
    message, rejection = out["actions.messages"], out["form.upload_error"]
    assert "form.data.source" not in out  # data.source keeps its value
    assert "**data.source**" in message and "late-error.jsonl, line 31: bad JSON" in message
    assert str(tmp_path) not in message  # named by the file's own name, not where Gradio put it
    assert "This file was not used (data.source is still 'e2e-synth')" in message
    assert message == values.errors_markdown({"data.source": rejection})
    assert not (tmp_path / "runs" / "uploads").exists()  # checked before anything is stored


def test_initial_state_is_the_offline_preset_with_model_sizes(tmp_path):
    initial = _lab(tmp_path).initial_state("offline-tiny")
    assert initial["actions.messages"] == "" and not initial["form.override"] and initial["form.shown_errors"] == {}
    assert initial["form.model.name"] == "tiny-gpt2" and initial["form.prefix.num_layers"] == "2"
    assert [r[0] for r in cells(initial["accounting.table"])] == ["no_projection", "projection"]
    assert initial["accounting.note"] == ""


def test_an_upload_is_named_by_an_absolute_path_so_exported_specs_work_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = Lab(JobQueue("runs"), page_fields(), REPO_PRESETS, temp_dir=tmp_path / "gradio")  # app.py's default: relative
    upload = tmp_path / "mine.csv"
    upload.write_text("question,answer\nwhat?,that\n")
    source = _upload(lab, upload)["form.data.source"]
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()[:12]
    assert source == str(tmp_path / "runs" / "uploads" / f"mine-{digest}.csv")


def test_upload_copies_the_file_and_offers_its_columns(tmp_path):
    lab = _lab(tmp_path)
    upload = tmp_path / "mine.csv"
    upload.write_text("question,answer,id\nwhat?,that,1\n")
    out = _upload(lab, upload)
    source, source_column, target_column = (out["form.data.source"], out["form.data.source_column"],
                                            out["form.data.target_column"])
    message, rejection = out["actions.messages"], out["form.upload_error"]
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()[:12]
    assert source == str(tmp_path / "runs" / "uploads" / f"mine-{digest}.csv") and message == rejection == ""
    assert Path(source).read_text() == upload.read_text()
    assert source_column["choices"] == ["question", "answer", "id"] and source_column["value"] == "question"
    assert target_column["value"] == "answer"
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    message = _upload(lab, bad)["actions.messages"]
    assert "**data.source**" in message and "unsupported file type '.txt'" in message


def test_the_target_picker_never_starts_on_the_source_column(tmp_path):
    lab = _lab(tmp_path)
    upload = tmp_path / "t.csv"
    upload.write_text("x,source\na,b\n")
    out = _upload(lab, upload)
    assert (out["form.data.source_column"]["value"], out["form.data.target_column"]["value"]) == ("source", "x")
    for header, picked in [("target,input", ("input", "target")), ("a,b,c", ("a", "b")),
                           ("target,x,source", ("source", "target")), ("x,source,y", ("source", "x"))]:
        upload.write_text(header + "\n" + ",".join("v" * len(header.split(","))) + "\n")
        out = _upload(lab, upload)
        assert (out["form.data.source_column"]["value"], out["form.data.target_column"]["value"]) == picked, header


def _tiny_form(lab):
    """The page's form inputs by id, as it opens on offline-tiny."""
    return lab.initial_state("offline-tiny")


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
    form = _tiny_form(lab)
    upload = tmp_path / name
    upload.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = _upload(lab, upload, "e2e-synth")
    shown, rejection = out["actions.messages"], out["form.upload_error"]
    assert "form.data.source" not in out and needle in rejection
    assert shown == values.errors_markdown({"data.source": rejection})
    assert "clear the upload (×)" in rejection and "Traceback" not in rejection
    form["form.upload_error"] = rejection  # the page's state while the file is shown
    out = lab.train(form)
    assert out["actions.messages"] == shown and "run.select" not in out and lab.queue.list_runs() == []
    assert lab.export_spec(form)["actions.messages"] == shown
    assert lab.save_preset({**form, "export.preset_name": "kept-out"})["actions.messages"] == shown
    assert not (lab.presets_dir / "kept-out.json").exists()
    out = lab.form_changed(form)
    assert out["actions.messages"] == shown and len(cells(out["accounting.table"])) == 2  # the table follows the form
    assert "⚠️" in out["form.data.source"]["info"]  # and the message is beside data.source
    # Cleared (the page's state goes back to ""): Train runs the form as shown.
    form |= lab.clear_upload({})
    assert lab.train(form)["actions.messages"] == "" and len(lab.queue.list_runs()) == 1


def test_uploads_are_stored_under_their_own_names_and_a_rejected_one_replaces_nothing(tmp_path):
    """A queued run's task file is never replaced: a bad file of the same name is not stored, and a
    good one of the same name is stored beside it."""
    lab = _lab(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first = tmp_path / "a" / "task.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in _rows(20)))
    stored = _upload(lab, first)["form.data.source"]
    assert Path(stored).name.startswith("task-") and Path(stored).suffix == ".jsonl"
    before = Path(stored).read_bytes()
    bad = tmp_path / "b" / "task.jsonl"
    bad.write_bytes(b"\xff\xfe not text")
    assert "task.jsonl" in _upload(lab, bad, stored)["form.upload_error"]
    assert Path(stored).read_bytes() == before
    other = tmp_path / "c" / "task.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    stored_other = _upload(lab, other)["form.data.source"]
    assert stored_other != stored and Path(stored).read_bytes() == before
    assert Path(stored_other).read_bytes() == other.read_bytes()
    assert _upload(lab, first)["form.data.source"] == stored  # the same content again: the same file
    assert sorted(p.name for p in (tmp_path / "runs" / "uploads").iterdir()) == sorted(
        [Path(stored).name, Path(stored_other).name])


def test_one_column_as_source_and_target_is_refused_at_train(tmp_path):
    lab = _lab(tmp_path, allow=[tmp_path])
    form = _tiny_form(lab)
    task = tmp_path / "one.jsonl"
    task.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(20)))
    form.update({"form.data.source": str(task), "form.data.source_column": "text", "form.data.target_column": "text"})
    messages = lab.train(form)["actions.messages"]
    assert "**data.target_column**" in messages and "the source and target columns are both 'text'" in messages
    assert lab.queue.list_runs() == []


def test_unticking_override_shows_the_chosen_model_s_sizes_again(tmp_path):
    lab = _lab(tmp_path)
    sizes = ["form.prefix.num_layers", "form.prefix.token_dim", "form.prefix.num_attention_heads",
             "form.prefix.num_transformer_submodules"]
    ticked = lab.override_changed({"form.override": True, "form.model.name": "tiny-gpt2"})
    assert set(ticked) == set(sizes)
    assert all(u["interactive"] is True and "value" not in u for u in ticked.values())  # typed values stay
    unticked = lab.override_changed({"form.override": False, "form.model.name": "tiny-gpt2"})
    assert [unticked[i]["value"] for i in sizes] == ["2", "64", "4", "1"]
    assert all(not u["interactive"] for u in unticked.values())
    assert lab.override_changed({"form.override": False, "form.model.name": "tiny-t5"})[sizes[3]]["value"] == "2"


def test_a_selected_run_deleted_on_disk_is_named_once_and_unselected(tmp_path):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-gone", finished=True)
    other = write_run(tmp_path / "runs" / "20250101-000000-other", finished=True)
    seen = _tick(lab, run.run_id, other.run_id)["run.seen"]
    shutil.rmtree(run.path)
    shutil.rmtree(other.path)
    out = _tick(lab, run.run_id, other.run_id, seen)
    status, runs, run_choices, overlay_choices, seen = (out["run.status"], out["runs.table"], out["run.select"],
                                                        out["run.overlay"], out["run.seen"])
    assert status.startswith(f"Run **{run.run_id}** no longer exists") and "No run selected" in status
    assert cells(runs) == [] and run_choices["value"] is None and run_choices["choices"] == []
    assert _is_chart(out["run.chart"]) and out["run.points"] == "" and cells(out["compare.table"]) == []
    assert out["compare.adapter"]["choices"] == []  # cleared
    assert overlay_choices["value"] == ""
    # The dropdown's change (no run) and later ticks go on quietly, and a new run is listed.
    again = _tick(lab, None, "", seen)
    assert "No run selected" in again["run.status"]
    seen = again.get("run.seen", seen)
    new = write_run(tmp_path / "runs" / "20270101-000000-new", finished=True)
    later = _tick(lab, None, "", seen)
    assert cells(later["runs.table"])[0][0] == new.run_id and later["run.select"]["choices"] == [new.run_id]
    assert "no longer exists" not in _tick(lab, new.run_id, "", later["run.seen"])["run.status"]


def test_export_and_save_preset_write_the_spec_and_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the command names a preset relative to where the app runs
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "offline-tiny.json").write_text((REPO_PRESETS / "offline-tiny.json").read_text())
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), presets)
    form = lab.initial_state("offline-tiny")
    out = lab.export_spec(form)
    path, command, message = out["export.spec_file"], out["export.command"], out["actions.messages"]
    assert message == "" and command == "python -m prefixlab train offline-tiny.json"
    exported = ExperimentSpec.load(path).to_dict()
    preset = ExperimentSpec.load(presets / "offline-tiny.json").to_dict()
    assert exported == preset
    dropdown, saved, command, message = _save(lab, form, "My Recipe")
    # Saved with the runs (runs/presets), never into the shipped presets folder; the download is a
    # copy in the page's own folder.
    mine = tmp_path / "runs" / "presets" / "my-recipe.json"
    assert Path(saved).read_bytes() == mine.read_bytes() and dropdown["value"] == "my-recipe"
    assert sorted(p.name for p in presets.iterdir()) == ["offline-tiny.json"]
    assert Path(saved).name == "my-recipe.json" and Path(saved).is_relative_to(lab.exports)
    assert dropdown["choices"] == ["offline-tiny", "my-recipe"]  # the shipped presets first, then the user's
    assert command == "python -m prefixlab train runs/presets/my-recipe.json" and "my-recipe" in message
    # Like the shipped presets, the file starts with the command that trains it.
    assert next(iter(json.loads(mine.read_text()))) == "_command"
    assert json.loads(mine.read_text())["_command"] == command
    assert json.loads(Path(path).read_text())["_command"] == "python -m prefixlab train offline-tiny.json"
    # A saved preset loads back into the same form values.
    assert lab.preset_values("my-recipe") == lab.preset_values("offline-tiny")
    # A runs folder outside the current one (app.py --runs-dir) is named by its absolute path.
    monkeypatch.chdir(REPO_PRESETS)
    _, saved, command, _ = _save(lab, form, "Other Recipe")
    assert command == f"python -m prefixlab train {tmp_path / 'runs' / 'presets' / 'other-recipe.json'}"
    assert Path(saved).is_file()


def _save(lab, form, name):
    """Save as preset -> (preset dropdown, saved file, command, messages); SKIP for an output left out."""
    out = lab.save_preset({**form, "export.preset_name": name})
    return tuple(out.get(i, SKIP) for i in ("preset.choice", "export.spec_file", "export.command",
                                             "actions.messages"))


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
    form = _tiny_form(lab)
    form["form.training.max_steps"] = "70"
    assert _save(lab, form, "my-recipe")[3] == "Saved preset **my-recipe**."
    slug = values.preset_slug(name)
    existing = lab.preset_path(slug)
    assert existing == (presets if slug == "offline-tiny" else tmp_path / "runs" / "presets") / f"{slug}.json"
    before = existing.read_bytes()
    form["form.training.max_steps"] = "90"
    dropdown, saved, command, message = _save(lab, form, name)
    assert dropdown == SKIP and saved is None and command == ""
    assert message == values.errors_markdown({"preset name": (
        f"a preset named {slug!r} already exists ({existing}); saving never replaces a preset: type another name")})
    assert existing.read_bytes() == before
    assert not (tmp_path / "runs" / "presets" / "offline-tiny.json").exists()


@pytest.mark.parametrize("name,file_name", [("!!!", "experiment.json"), ("日本語", "日本語.json"),
                                            ("x" * 300, "x" * 60 + ".json"), ("My run #2", "my-run-2.json")])
def test_export_names_the_file_after_any_experiment_name_the_form_accepts(tmp_path, name, file_name):
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), _presets_copy(tmp_path))
    form = _tiny_form(lab)
    form["form.experiment.name"] = name
    out = lab.export_spec(form)
    path, command, message = out["export.spec_file"], out["export.command"], out["actions.messages"]
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
    form = _tiny_form(lab)
    before = sorted(presets.iterdir())
    dropdown, saved, _, message = _save(lab, form, name)
    assert message == f"⚠️ **preset name**: {values.md_text(needle)}" and saved is None and dropdown == SKIP
    assert sorted(presets.iterdir()) == before and not (tmp_path / "runs" / "presets").exists()
    # With no preset name typed, the experiment name is used: "日本語" keeps its letters.
    form["form.experiment.name"] = "日本語"
    assert _save(lab, form, "")[3] == "Saved preset **日本語**."


def test_a_reloaded_page_offers_presets_saved_since_start_up(tmp_path):
    """Presets are read from the folder on every page load: a saved one is offered, and the opening
    preset's file changed on disk refills the form; otherwise the form is left as it is."""
    presets = _presets_copy(tmp_path)
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), presets)
    form = _tiny_form(lab)  # what build_app does at start-up
    unchanged = lab.presets_on_load({"preset.default": "offline-tiny"})
    assert set(unchanged) == {"preset.choice"}  # the form is left as it is
    _save(lab, form, "later")
    assert "later" in lab.presets_on_load({"preset.default": "offline-tiny"})["preset.choice"]["choices"]
    spec = json.loads((presets / "offline-tiny.json").read_text())
    spec["training"]["max_steps"] = 123
    (presets / "offline-tiny.json").write_text(json.dumps(spec))
    refilled = lab.presets_on_load({"preset.default": "offline-tiny"})
    assert refilled["form.training.max_steps"] == "123"


def whole_adapter(folder) -> None:
    """A folder the readers take for a whole checkpoint: a config object and complete weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    save_file({"prompt_embeddings": torch.zeros(2, 4)}, str(folder / "adapter_model.safetensors"))


def test_zip_adapter_holds_the_peft_folder(tmp_path):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True)
    whole_adapter(run.adapter_path("projection"))
    zipped = lab.zip_adapter({"run.select": run.run_id, "compare.adapter": "projection"})["compare.adapter_file"]
    with zipfile.ZipFile(zipped) as archive:
        assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    # What stops a download is said beside the button, not in a toast.
    out = lab.zip_adapter({"run.select": run.run_id, "compare.adapter": "no_projection"})
    assert out["compare.adapter_file"] is None and "no saved adapter 'no\\_projection'" in out["compare.adapter_note"]


def test_a_paper_layout_adapter_downloads_with_a_note_that_peft_cannot_load_it(tmp_path):
    """An adapter saved by the core in the paper's encoder-decoder layout (tiny-t5) says so at its
    download; one in PEFT's layout says nothing."""
    from prefixlab import PrefixTuningConfig, get_peft_model
    from prefixlab.engine.zoo import load_base

    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True)
    for name, positions in (("projection", "paper"), ("no_projection", None)):
        base, _, _ = load_base("tiny-t5")
        model = get_peft_model(base, PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2,
                                                        prefix_positions=positions))
        model.save_pretrained(str(run.adapter_path(name)))
    notes = {name: lab.zip_adapter({"run.select": run.run_id, "compare.adapter": name})["compare.adapter_note"]
             for name in ("projection", "no_projection")}
    assert "PEFT cannot" in notes["projection"] and "paper_prompt_embeddings" in notes["projection"]
    assert notes["no_projection"] == ""


def test_the_adapter_picked_stays_picked_while_the_run_saves_again(tmp_path):
    """The timer redraws a running run's panels whenever its files change; the adapter the user
    picked for download must survive that (it snapped back to the first one every second)."""
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    for variant in ("no_projection", "projection"):
        whole_adapter(run.adapter_path(variant))
    adapters = _tick(lab, run.run_id, variant="projection")["compare.adapter"]
    assert adapters["choices"] == ["no_projection", "projection"] and adapters["value"] == "projection"
    assert _tick(lab, run.run_id, variant=None)["compare.adapter"]["value"] == "no_projection"
    shutil.rmtree(run.adapter_path("projection"))
    assert _tick(lab, run.run_id, variant="projection")["compare.adapter"] == {"choices": ["no_projection"],
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
    # Generate says it where its outputs go; the download beside its button.
    shown = lab.generate({"run.select": run.run_id, "compare.prompt": "a prompt"})["compare.generated"]
    assert shown.startswith('<p class="generate-message">⚠️ ') and says in shown
    note = lab.zip_adapter({"run.select": run.run_id, "compare.adapter": None})["compare.adapter_note"]
    assert note.startswith("⚠️ ") and values.md_text(says) in note


def test_many_viewers_of_a_run_render_its_panels_once_per_change(tmp_path, monkeypatch):
    """Twenty sessions ticking on one running run (each its own "run.seen", some at the same
    moment) draw its chart once per change of its files, not twenty times; every session still
    gets the chart it has not drawn."""
    import threading

    from prefixlab.ui import run_handlers

    drawn = []
    real = run_handlers.plots.loss_figure
    monkeypatch.setattr(run_handlers.plots, "loss_figure", lambda *a, **k: drawn.append(1) or real(*a, **k))
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=False)
    sent = []
    threads = [threading.Thread(target=lambda: sent.append(_tick(lab, run.run_id))) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(drawn) == 1 and len(sent) == 20 and all(_is_chart(out["run.chart"]) for out in sent)
    seen = sent[0]["run.seen"]
    append_jsonl(run.metrics_path, {"variant": "projection", "step": 3, "loss": 2.5, "time": 1010.0})
    again = [_tick(lab, run.run_id, seen=seen) for _ in range(20)]
    assert len(drawn) == 2 and all(out["run.points"].endswith("projection: 3 training, 1 validation points")
                                   for out in again)
    assert _tick(lab, run.run_id, smoothing=0.9)["run.chart"] != again[0]["run.chart"] and len(drawn) == 3


# --- every problem at once, beside its field ---------------------------------------------------------


def test_every_problem_is_named_at_once_each_beside_its_field(tmp_path):
    """A spec value wrong (batch_size 0), a prefix value wrong (0 virtual tokens) and a task file
    whose chosen target column is missing on a line: all three at once, each beside its own field,
    the Training section (collapsed) opened for batch_size, and the parameter table naming the
    field that keeps it from being computed. Fixed, each field shows its help again."""
    lab = _lab(tmp_path, allow=[tmp_path])
    form = lab.initial_state("offline-tiny")
    rows = _rows(20)
    del rows[4]["text"]
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    form.update({"form.training.batch_size": 0, "form.prefix.num_virtual_tokens": 0, "form.data.source": str(task),
                 "form.data.source_column": "table", "form.data.target_column": "text"})
    out = lab.form_changed(form)
    messages = out["actions.messages"]
    for key in ("training.batch_size", "prefix.num_virtual_tokens", "data.target_column"):
        assert f"**{key}**" in messages, key
        assert out[f"form.{key}"]["info"].startswith("⚠️ ") and out[f"form.{key}"]["elem_classes"] == ["field-error"]
    assert "line 5" in out["form.data.target_column"]["info"] and "got 0" in out["form.training.batch_size"]["info"]
    assert out["form.more.training"]["open"] is True and out["form.more.data"]["open"] is True
    assert "form.more.prefix" not in out  # num_virtual_tokens is an essential: always in view
    assert out["accounting.table"] == "" and "**prefix.num_virtual_tokens**" in out["accounting.note"]
    shown = out["form.shown_errors"]
    assert set(shown) == {"training.batch_size", "prefix.num_virtual_tokens", "data.target_column"}
    # The same form again: nothing beside the fields changes, and no section is reopened.
    again = lab.form_changed({**form, "form.shown_errors": shown})
    assert not [k for k in again if k.startswith("form.") and k != "form.prefix.encoder_hidden_size"]
    # Only batch_size wrong: the counts do not depend on it, so the table is back.
    form.update({"form.prefix.num_virtual_tokens": 10, "form.data.source": "e2e-synth",
                 "form.data.source_column": "source", "form.data.target_column": "target"})
    out = lab.form_changed({**form, "form.shown_errors": shown})
    assert len(cells(out["accounting.table"])) == 2 and out["accounting.note"] == ""
    assert out["form.prefix.num_virtual_tokens"]["info"] == "Number of virtual tokens"
    assert out["form.prefix.num_virtual_tokens"]["elem_classes"] == []
    assert out["form.shown_errors"] == {"training.batch_size": shown["training.batch_size"]}
    # Train says the same, beside the fields too.
    trained = lab.train({**form, "form.shown_errors": {}})
    assert trained["form.training.batch_size"]["info"].startswith("⚠️ must be >= 1, got 0")
    assert lab.queue.list_runs() == []


def test_a_typed_link_in_a_message_beside_a_field_stays_text():
    from prefixlab.ui.values import field_info

    assert field_info("help", None) == "help"
    assert field_info("help", "got '[x](http://e)'") == "⚠️ got '[x]\u200b(http://e)'"


def test_edit_in_form_fills_the_form_from_a_run(tmp_path):
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    form["form.training.max_steps"] = "7"
    spec = ExperimentSpec.from_dict({**ExperimentSpec.load(REPO_PRESETS / "offline-tiny.json").to_dict(),
                                     "training": {"max_steps": 33, "eval_interval": 11}})
    run_id = lab.queue.submit(spec)
    out = lab.edit_run({"run.select": run_id})
    assert out["form.training.max_steps"] == "33" and out["form.training.eval_interval"] == 11
    assert out["form.prefix.num_layers"] == "2" and out["form.override"] is False  # the model's sizes shown
    assert run_id in out["run.note"] and "actions.messages" not in out
    assert "select a run" in lab.edit_run({"run.select": None})["run.note"]
    assert "choose one in the runs list" in lab.edit_run({"run.select": "../elsewhere"})["run.note"]


def test_the_overlay_menu_never_offers_the_selected_run(tmp_path):
    lab = _lab(tmp_path)
    a = write_run(tmp_path / "runs" / "20260101-000000-a", finished=True)
    b = write_run(tmp_path / "runs" / "20260102-000000-b", finished=True)
    first = _tick(lab, a.run_id, overlay=b.run_id)
    assert first["run.overlay"]["choices"] == [("no overlay", ""), b.run_id]
    # The overlaid run selected: the overlay goes (a run is not overlaid on itself).
    out = _tick(lab, b.run_id, overlay=b.run_id, seen=first["run.seen"])
    assert out["run.overlay"] == {"__type__": "update", "choices": [("no overlay", ""), a.run_id], "value": ""}


def test_the_charts_and_metrics_download_as_png_svg_and_csv(tmp_path):
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True)
    out = lab.export_charts({"run.select": run.run_id, "run.overlay": "", "run.smoothing": 7, "run.log_scale": True})
    files = out["run.files"]["value"]
    names = sorted(Path(f).name for f in files)
    assert names == sorted([f"{run.run_id}-{n}.{f}" for n in ("loss", "task-metrics", "parameters") for f in ("png", "svg")]
                           + [f"{run.run_id}-metrics.csv"])
    assert all(Path(f).is_relative_to(lab.exports) for f in files) and out["run.files"]["visible"]
    csv_text = Path(next(f for f in files if f.endswith(".csv"))).read_text()
    assert csv_text.splitlines()[0].startswith("run,variant,step,epoch,loss,eval_loss")
    assert len(csv_text.splitlines()) == 1 + len(run.read_metrics())
    refused = lab.export_charts({"run.select": None, "run.overlay": "", "run.smoothing": 0.6, "run.log_scale": False})
    assert refused["run.files"]["visible"] is False and "select a run" in refused["run.note"]


def test_generate_s_unexpected_failure_is_one_line_in_the_log_not_a_traceback(tmp_path, monkeypatch, capsys):
    from prefixlab.ui import run_handlers

    def fail(*args, **kwargs):
        raise IndexError("index out of range in self")

    monkeypatch.setattr(run_handlers, "generate_all", fail)
    lab = _lab(tmp_path)
    run = write_run(tmp_path / "runs" / "20260101-000000-fixture", finished=True)
    shown = lab.generate({"run.select": run.run_id, "compare.prompt": "p"})["compare.generated"]
    assert "generation failed (IndexError: index out of range in self)" in shown
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == f"generate: run {run.run_id}: IndexError: index out of range in self"


# --- sweeps: started from the form, read back from the run folders ------------------------------------


def _sweep(lab, form, vary, vary2="", metric=""):
    """Start sweep with the form's values and the vary boxes' texts."""
    return lab.start_sweep({**form, "sweep.vary": vary, "sweep.vary2": vary2, "sweep.metric": metric})


def _sweep_tick(lab, selected, seen=None, metric=""):
    return lab.sweep_tick({"sweep.select": selected, "sweep.seen": seen if seen is not None else {},
                           "sweep.metric": metric})


def test_a_sweep_with_a_bad_value_names_the_value_and_field_and_queues_nothing(tmp_path):
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    out = _sweep(lab, form, "prefix.num_virtual_tokens=1,0")
    assert "**prefix.num_virtual_tokens=0**" in out["sweep.note"] and "must be at least 1" in out["sweep.note"]
    assert out["sweep.note"].endswith("Nothing was queued.")
    beside = out["sweep.vary"]
    assert beside["info"].startswith("⚠️ prefix.num_virtual_tokens=0: ") and beside["elem_classes"] == ["field-error"]
    assert out["sweep.vary2"]["elem_classes"] == [] and "sweep.select" not in out
    # A field no sweep can vary lists those it can; the same field twice, or no field, is said too.
    unknown = _sweep(lab, form, "prefix.no_such_field=1,2")["sweep.note"]
    assert "**prefix.no_such_field**" in unknown and "is not a field a sweep can vary" in unknown
    assert "training.{learning\\_rate" in unknown
    twice = _sweep(lab, form, "training.max_steps=10,20", "training.max_steps=30")
    assert "is in both vary boxes" in twice["sweep.note"] and "is in both" in twice["sweep.vary2"]["info"]
    assert "type a field and its values" in _sweep(lab, form, "", " ")["sweep.vary"]["info"]
    # A value that breaks another field is named by the value, with the field it breaks.
    broken = _sweep(lab, form, "training.max_steps=5,40")["sweep.note"]
    assert "**training.max_steps=5**" in broken and "training.eval\\_interval" in broken
    # A form problem is named as Train names it (the message line, beside the field).
    form["form.training.batch_size"] = 0
    refused = _sweep(lab, form, "prefix.num_virtual_tokens=1,5")
    assert "**training.batch_size**" in refused["actions.messages"]
    assert refused["form.training.batch_size"]["info"].startswith("⚠️ must be >= 1, got 0")
    assert refused["sweep.note"].startswith("⚠️ The form has problems") and "Nothing was queued" in refused["sweep.note"]
    assert lab.queue.list_runs() == [] and not list(lab.queue.runs_dir.glob("*/spec.json"))


def test_a_good_sweep_queues_a_run_per_value_with_its_tag_and_shows_it(tmp_path):
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    out = _sweep(lab, form, " prefix.num_virtual_tokens=1, 5,10 ", "training.learning_rate=0.05,0.1")
    runs = sorted(lab.queue.list_runs(), key=lambda info: info.run_id)
    assert len(runs) == 6 and {info.state for info in runs} == {"queued"}
    specs = [RunDir(info.path).read_spec() for info in runs]
    sweep_id = specs[0].sweep.id
    assert {s.sweep.id for s in specs} == {sweep_id}
    assert [(s.prefix.num_virtual_tokens, s.training.learning_rate) for s in specs] == [
        (n, lr) for n in (1, 5, 10) for lr in (0.05, 0.1)]
    assert specs[0].name == "offline-tiny (num_virtual_tokens=1, learning_rate=0.05)"
    assert specs[0].training.max_steps == 40  # the rest of the form as it was
    assert out["sweep.select"]["value"] == sweep_id and [c[1] for c in out["sweep.select"]["choices"]] == [sweep_id]
    assert out["sweep.note"].startswith(f"Queued sweep **{sweep_id}**: 6 runs varying prefix.num\\_virtual\\_tokens, ")
    assert out["actions.messages"] == "" and out["sweep.vary"]["elem_classes"] == []
    assert _is_chart(out["sweep.chart"])
    rows = cells(out["sweep.table"])
    assert len(rows) == 6 * 2  # a row per run and variant
    assert [row[:3] for row in rows[:2]] == [["1", "0.05", "no_projection"], ["1", "0.05", "projection"]]
    assert {row[3] for row in rows} == {"queued"}


def _finish(run: RunDir, val_losses: dict, slot: dict | None = None) -> None:
    """Mark a queued run done with a summary.json, as the worker leaves it."""
    variants = {name: {"trainable": 100 * (i + 1), "final_eval_loss": loss,
                       **({"metrics": {"slot_accuracy": slot[name]}} if slot else {})}
                for i, (name, loss) in enumerate(val_losses.items())}
    atomic_write_json(run.summary_path, {"variants": variants})
    run.update_status(state="done", step=40, total_steps=40)


def test_the_sweep_view_has_a_row_per_run_and_variant_redrawn_only_when_it_changes(tmp_path, monkeypatch):
    from prefixlab.ui import run_handlers

    drawn = []
    real = run_handlers.sweep_figure
    monkeypatch.setattr(run_handlers, "sweep_figure", lambda *a, **k: drawn.append(1) or real(*a, **k))
    lab = _lab(tmp_path)
    out = _sweep(lab, lab.initial_state("offline-tiny"), "prefix.num_virtual_tokens=1,5,10")
    sweep_id, seen = out["sweep.select"]["value"], out["sweep.seen"]
    assert len(drawn) == 1
    # Nothing changed on disk: nothing is sent, nothing drawn (a running run's heartbeat changes nothing).
    assert _sweep_tick(lab, sweep_id, seen) == {}
    runs = sorted(lab.queue.list_runs(), key=lambda info: info.run_id)
    first = RunDir(runs[0].path)
    first.update_status(state="running", heartbeat=1.0)
    changed = _sweep_tick(lab, sweep_id, seen)
    seen = changed["sweep.seen"]
    assert {row[2] for row in cells(changed["sweep.table"])} == {"running", "queued"} and len(drawn) == 2
    first.update_status(heartbeat=2.0)
    assert _sweep_tick(lab, sweep_id, seen) == {} and len(drawn) == 2
    # Every run ends: their final losses and slot accuracy fill the table, per run and variant.
    for info, loss in zip(runs, (3.0, 2.0, 2.5)):
        _finish(RunDir(info.path), {"no_projection": loss, "projection": loss - 1}, {"no_projection": 10 * loss,
                                                                                       "projection": 20 * loss})
    done = _sweep_tick(lab, sweep_id, seen)
    rows = cells(done["sweep.table"])
    assert [row[:5] for row in rows] == [
        ["1", "no_projection", "done", "100", "3.0000"], ["1", "projection", "done", "200", "2.0000"],
        ["5", "no_projection", "done", "100", "2.0000"], ["5", "projection", "done", "200", "1.0000"],
        ["10", "no_projection", "done", "100", "2.5000"], ["10", "projection", "done", "200", "1.5000"]]
    assert [row[5] for row in rows] == ["30.0", "60.0", "20.0", "40.0", "25.0", "50.0"]  # slot accuracy
    assert "slot acc. %" in done["sweep.table"] and _is_chart(done["sweep.chart"]) and len(drawn) == 3
    # Another metric is another chart; the table is the same.
    by_loss = _sweep_tick(lab, sweep_id, done["sweep.seen"], metric="val_loss")
    assert _is_chart(by_loss["sweep.chart"]) and by_loss["sweep.chart"] != done["sweep.chart"] and len(drawn) == 4
    # A restarted app (a new Lab over the same runs folder) lists the sweep on page load, selected.
    again = _lab(tmp_path).sweeps_on_load({})["sweep.select"]
    assert again["value"] == sweep_id and [c[1] for c in again["choices"]] == [sweep_id]
    # Its runs removed: the view says there is no sweep, and the menu is emptied.
    for info in runs:
        shutil.rmtree(info.path)
    gone = _sweep_tick(lab, sweep_id, done["sweep.seen"])
    assert gone["sweep.select"] == {"__type__": "update", "choices": [], "value": None}
    assert "no sweep in this runs folder yet" in gone["sweep.table"] and gone["sweep.chart"] is None


def test_the_sweep_table_escapes_every_value():
    headers = ["data.separator", "variant", "state", "trainable", "val loss"]
    rows = [["<img src=x onerror=alert(1)>", "projection", "failed <b>at</b> step 3", 1200, 1.23456]]
    shown = values.sweep_html(headers, rows, ["data.separator"], ["projection"])
    assert "<img" not in shown and "<b>" not in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown
    assert cells(shown) == [["<img src=x onerror=alert(1)>", "projection", "failed <b>at</b> step 3", "1,200", "1.2346"]]


# --- Generate with the fine_tune baseline ---------------------------------------------------------------


def test_generate_shows_base_every_adapter_and_the_fine_tuned_model_which_is_no_adapter_download(tmp_path):
    """A run with the paper's baseline (variants no_projection, projection, fine_tune) trained in-process:
    Generate has a column for the fine-tuned model (its own saved copy of the base, runs/<id>/models/
    fine_tune, generating as evaluate's loader and the worker's generate_outputs do), while the adapter
    downloads offer the two adapters only, and refuse fine_tune by name."""
    from prefixlab.engine.evaluate import load_fine_tuned
    from prefixlab.engine.generation import generate_outputs
    from prefixlab.engine.worker import run_worker
    from prefixlab.engine.zoo import load_base

    lab = _lab(tmp_path)
    spec = ExperimentSpec.from_dict({
        "name": "baseline", "model": {"name": "tiny-gpt2-e2e"}, "variants": ["no_projection", "projection", "fine_tune"],
        "prefix": {"num_virtual_tokens": 3, "encoder_hidden_size": 8},
        "data": {"source": "e2e-synth", "max_train_examples": 8, "max_eval_examples": 2},
        "training": {"learning_rate": 0.05, "fine_tune_learning_rate": 0.01, "max_steps": 2, "batch_size": 4,
                     "max_length": 64, "eval_interval": 2, "log_interval": 1, "seed": 3, "metric_examples": 0},
        "generation": {"num_prompts": 1, "max_new_tokens": 8},
    })
    run = lab.queue.run_dir(lab.queue.submit(spec))
    assert run_worker(run.path, progress=False) == "done"
    assert run.trained_variants() == ["no_projection", "projection"] and run.trained_models() == ["fine_tune"]
    prompt = "name[The Eagle] | food[French]"
    headers, rows = _generated(lab.generate({"run.select": run.run_id, "compare.prompt": prompt})["compare.generated"])
    assert headers == ["prompt", "base", "no_projection", "projection", "fine_tune"]
    outputs = dict(zip(headers, rows[0]))
    _, tokenizer, task_type = load_base("tiny-gpt2-e2e")
    fine_tuned = load_fine_tuned(run.model_path("fine_tune"), task_type).eval()
    expected = generate_outputs(None, tokenizer, task_type, spec, prompt, [], torch.device("cpu"),
                                models={"fine_tune": fine_tuned}, base=False)["fine_tune"]
    assert outputs["fine_tune"] == expected and outputs["fine_tune"] != outputs["base"]  # its own trained weights
    # The adapter menu offers adapters only; fine_tune is a whole model, not a PEFT adapter.
    assert _tick(lab, run.run_id)["compare.adapter"]["choices"] == ["no_projection", "projection"]
    refused = lab.zip_adapter({"run.select": run.run_id, "compare.adapter": "fine_tune"})
    assert refused["compare.adapter_file"] is None and "no saved adapter 'fine\\_tune'" in refused["compare.adapter_note"]


def _generated(table_html: str) -> tuple[list[str], list[list[str]]]:
    from html.parser import HTMLParser

    class Grid(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headers, self.rows, self.cell = [], [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                (self.headers if tag == "th" else self.rows[-1]).append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    grid = Grid()
    grid.feed(table_html)
    return grid.headers, [row for row in grid.rows if row]


# --- training.num_processes: one process per GPU of this machine ---------------------------------------


def test_num_processes_is_read_only_without_several_gpus_and_says_why(tmp_path, monkeypatch):
    from prefixlab.ui.form import component_for

    for gpus in (0, 1):
        monkeypatch.setattr(torch.cuda, "device_count", lambda gpus=gpus: gpus)
        lab = _lab(tmp_path)
        field = lab.by_key["training.num_processes"]
        box = component_for(field)
        assert box.interactive is False and f"torch.cuda.device_count() = {gpus}" in box.info
        assert "so runs train in one process" in box.info
        # A preset's or a run's 2 processes: refused beside the field, which is then editable to fix it.
        form = lab.initial_state("offline-tiny")
        form["form.training.num_processes"] = 2
        out = lab.form_changed(form)
        beside = out["form.training.num_processes"]
        assert beside["info"].startswith("⚠️ must be at most 1 on this machine") and beside["interactive"] is True
        assert "**training.num_processes**" in out["actions.messages"]
        refused = lab.train(form)
        assert "got 2; set 1" in refused["actions.messages"] and lab.queue.list_runs() == []
        form |= {"form.training.num_processes": 1, "form.shown_errors": out["form.shown_errors"]}
        fixed = lab.form_changed(form)["form.training.num_processes"]
        assert fixed["interactive"] is False and fixed["info"] == field.help


def test_num_processes_takes_one_to_the_machine_s_gpus(tmp_path, monkeypatch):
    from prefixlab.ui.form import component_for

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    lab = _lab(tmp_path)
    field = lab.by_key["training.num_processes"]
    assert not field.locked and component_for(field).interactive is not False
    assert field.help.endswith("Here: 1 to 4 (this machine has 4 GPUs, one process each).")
    form = lab.initial_state("offline-tiny")
    form["form.training.num_processes"] = 4
    assert "training.num_processes" not in lab.assess(form).errors
    form["form.training.num_processes"] = 5
    out = lab.form_changed(form)
    assert out["form.training.num_processes"]["info"] == (
        "⚠️ must be at most 4 on this machine (this machine has 4 GPUs, one process each), got 5; set 1 to 4")
    assert "interactive" not in out["form.training.num_processes"]


def test_a_sweep_into_a_runs_folder_that_cannot_be_written_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    lab = _lab(tmp_path)
    form = lab.initial_state("offline-tiny")
    _fill_the_disk(monkeypatch)
    out = _sweep(lab, form, "prefix.num_virtual_tokens=1,5")
    assert out["sweep.note"].startswith("⚠️ cannot queue the run in ") and "no space left on device" in out["sweep.note"]
    assert "sweep.select" not in out and lab.queue.list_runs() == []
    assert not [p for p in lab.queue.runs_dir.iterdir() if p.name[0].isdigit()]
