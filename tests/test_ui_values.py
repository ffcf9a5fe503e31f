"""ui/values.py: form values -> spec and messages, accounting, status line, runs table (no browser)."""

from __future__ import annotations

import pytest

from prefixlab.engine import checks
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.runs import RunInfo
from prefixlab.ui import values
from prefixlab.ui.fields import form_from_spec, page_fields
from prefixlab.ui.form import component_for, to_component_value

FIELDS = page_fields()


def _raw(**changes):
    """Component values of a valid tiny form by field key, with `changes` (dotted key via __)."""
    spec = ExperimentSpec.from_dict({"name": "t", "model": {"name": "tiny-gpt2"},
                                     "prefix": {"num_virtual_tokens": 4},
                                     "training": {"max_steps": 4, "eval_interval": 2}})
    form, _ = form_from_spec(spec)
    raw = {f.key: to_component_value(f, form.get(f.key)) for f in FIELDS}
    for key, value in changes.items():
        raw[key.replace("__", ".")] = value
    return raw


def _check(override=False, **changes):
    return values.check_form(values.collect_form(FIELDS, _raw(**changes), override))


def test_valid_form_gives_the_spec_with_both_variants():
    spec, errors = _check()
    assert errors == {}
    assert [v.name for v in spec.variants] == ["no_projection", "projection"]
    assert [v.prefix.prefix_projection for v in spec.variants] == [False, True]
    assert spec.variants[0].prefix.num_virtual_tokens == 4 and spec.training.max_steps == 4


def test_inferred_fields_are_ignored_unless_overridden():
    values_off = values.collect_form(FIELDS, _raw(prefix__num_layers=7), override=False)
    assert "prefix.num_layers" not in values_off
    values_on = values.collect_form(FIELDS, _raw(prefix__num_layers=7), override=True)
    assert values_on["prefix.num_layers"] == 7


NUMERIC = [f.key for f in FIELDS if f.kind in ("int", "float") and not f.inferred]


@pytest.mark.parametrize("key", NUMERIC)
def test_every_numeric_field_names_itself_and_the_bad_value(key):
    spec, errors = _check(**{key.replace(".", "__"): "lots"})
    assert spec is None
    assert list(errors) == [key]
    assert "'lots'" in errors[key]


@pytest.mark.parametrize("key,value,needle", [
    ("prefix.num_virtual_tokens", 0, "at least 1"),
    ("prefix.num_virtual_tokens", None, "set the prefix length"),
    ("prefix.encoder_hidden_size", -3, "at least 1"),
    ("training.learning_rate", 0, "must be > 0, got 0"),
    ("training.batch_size", 0, "must be >= 1, got 0"),
    ("training.eval_interval", 9, "never evaluate"),
    ("training.max_steps", 0, "must be >= 1, got 0"),
    ("training.num_epochs", -1, "must be > 0"),
    ("generation.max_new_tokens", 0, "must be >= 1"),
    ("experiment.name", "", "must not be empty"),
    ("data.source", "", "must not be empty"),
    ("model.name", "", "must name a model"),
])
def test_invalid_values_get_a_message_on_their_field(key, value, needle):
    spec, errors = _check(**{key.replace(".", "__"): value})
    assert spec is None and list(errors) == [key], errors
    assert needle in errors[key]
    assert errors_markdown_names(errors, key)


def errors_markdown_names(errors, key):
    return f"**{key}**" in values.errors_markdown(errors)


def test_accounting_rows_and_a_size_that_does_not_fit_the_model():
    spec, _ = _check()
    rows, errors = values.accounting(spec)
    assert errors == {} and [r[0] for r in rows] == ["no_projection", "projection"]
    # tiny-gpt2: 2 layers, hidden 64 -> out = 2*2*64 = 256; no projection trains n*out = 4*256.
    assert rows[0][1] == 4 * 256 and rows[0][4] == 4 * 256
    h = 64  # encoder_hidden_size falls back to token_dim
    assert rows[1][1] == 4 * 64 + 64 * h + h + h * 256 + 256 and rows[1][4] == 4 * 256
    assert rows[0][2] - rows[0][1] == rows[1][2] - rows[1][1]  # same frozen base
    spec, errors = _check(override=True, prefix__num_layers=3)
    assert errors == {}
    rows, errors = values.accounting(spec)
    assert rows == [] and list(errors) == ["prefix.num_layers"] and "num_layers=3" in errors["prefix.num_layers"]


def test_lengths_past_the_model_s_positions_are_named_beside_the_rows():
    """tiny-gpt2 has 512 positions and the form's prefix 4 tokens: max_length 508 fits, 509 does not;
    so do 508 new tokens after a one-token prompt (the last is never fed back). tiny-llama (rotary
    positions) has no such wall."""
    spec, errors = _check(training__max_length=508, generation__max_new_tokens=508)
    assert errors == {} and values.accounting(spec)[1] == {}
    spec, _ = _check(training__max_length=509, generation__max_new_tokens=509)
    rows, errors = values.accounting(spec)
    assert len(rows) == 2 and errors == {
        "training.max_length": "509 tokens after the 4-token prefix run past tiny-gpt2's 512 positions; "
                               "set it to at most 508",
        "generation.max_new_tokens": "509 new tokens after the 4-token prefix and a prompt run past tiny-gpt2's "
                                     "512 positions; set it to at most 508"}
    spec, _ = _check(prefix__num_virtual_tokens=512)
    assert values.accounting(spec)[1] == {
        "prefix.num_virtual_tokens": "512 virtual tokens leave no room in tiny-gpt2's 512 positions; use at most 511"}
    spec, _ = _check(model__name="tiny-llama", training__max_length=5000)
    assert values.accounting(spec)[1] == {}


def test_a_model_that_cannot_be_read_is_a_message_on_model_name():
    spec, _ = _check(model__name="/no/such/model/folder")
    rows, errors = values.accounting(spec)
    assert rows == [] and list(errors) == ["model.name"]
    assert "/no/such/model/folder" in errors["model.name"]


def test_inferred_sizes_of_tiny_models():
    assert values.inferred_sizes("tiny-gpt2") == {"prefix.num_layers": 2, "prefix.token_dim": 64,
                                                  "prefix.num_attention_heads": 4,
                                                  "prefix.num_transformer_submodules": 1}
    # Grouped-query attention: the prefix holds the 2 key/value heads of 16 dims.
    llama = values.inferred_sizes("tiny-llama")
    assert (llama["prefix.token_dim"], llama["prefix.num_attention_heads"]) == (32, 2)
    assert values.inferred_sizes("tiny-t5")["prefix.num_transformer_submodules"] == 2


def test_form_from_spec_round_trips_and_unlocks_pinned_sizes():
    spec = ExperimentSpec.from_dict({"model": {"name": "tiny-gpt2"},
                                     "prefix": {"num_virtual_tokens": 6, "num_layers": 2}})
    form, override = form_from_spec(spec)
    assert override and form["prefix.num_layers"] == 2 and form["prefix.num_virtual_tokens"] == 6
    raw = {f.key: to_component_value(f, form.get(f.key)) for f in FIELDS}
    again, errors = values.check_form(values.collect_form(FIELDS, raw, override))
    assert errors == {} and again.to_dict() == spec.to_dict()


def test_status_line_running_failed_and_out_of_memory():
    running = values.status_markdown("r1", {"state": "running", "step": 10, "total_steps": 40,
                                            "started_at": 100.0}, now=120.0, pace=2.0, settings="tiny-gpt2 · lr 0.1")
    assert "**running**" in running and "step 10 / 40" in running
    assert "elapsed 0:20" in running and "remaining 1:00" in running and running.endswith("\ntiny-gpt2 · lr 0.1")
    # Before two steps are logged there is no pace to estimate from: said so, not guessed.
    measuring = values.status_markdown("r1", {"state": "running", "step": 1, "total_steps": 40, "started_at": 100.0},
                                       now=400.0)
    assert "remaining: measuring the step time" in measuring
    failed = values.status_markdown("r2", {"state": "failed", "error": "CUDA out of memory. Tried 2 GiB",
                                           "started_at": 0, "finished_at": 5}, log_tail="Traceback ...")
    assert "**Out of memory.**" in failed and "CUDA out of memory" in failed and "Traceback ..." in failed
    other = values.status_markdown("r3", {"state": "failed", "error": "KeyError: 'x'"})
    assert "Out of memory" not in other and "KeyError" in other
    assert "Train" in values.status_markdown("", {})


def test_remaining_time_comes_from_the_measured_step_time_not_the_start_up():
    """A run that spent 5 minutes loading and then 2 s a step: after 10 of 200 steps the estimate is
    380 s (190 steps x 2 s), not 1.5 hours (the elapsed time spread over the steps so far)."""
    metrics = []
    for step in range(1, 11):  # logged every step; both variants; the first line after 300 s of start-up
        for variant in ("no_projection", "projection"):
            metrics.append({"variant": variant, "step": step, "loss": 1.0, "time": 1000.0 + 300 + 2 * step})
    metrics.append({"variant": "projection", "step": 10, "eval_loss": 1.0, "time": 1321.0})  # not a training line
    pace = values.seconds_per_step(metrics)
    assert pace == pytest.approx(2.0)
    assert values.remaining_seconds(10, 200, pace) == pytest.approx(380.0)
    assert values.seconds_per_step(metrics[:2]) is None  # one logged step: nothing measured yet
    assert values.remaining_seconds(5, None, 2.0) is None and values.remaining_seconds(5, 10, None) is None
    # The window: only the last PACE_WINDOW intervals count, so a slow start is forgotten.
    slow_then_fast = [{"variant": "a", "step": s, "loss": 1.0, "time": 10.0 * s if s <= 5 else 50 + (s - 5)}
                      for s in range(1, 5 + values.PACE_WINDOW + 2)]
    assert values.seconds_per_step(slow_then_fast) == pytest.approx(1.0)


def test_run_labels_name_the_experiment_and_its_start_time():
    assert values.run_label("20261205-140312123-offline-tiny", "offline-tiny") == "offline-tiny 14:03:12"
    assert values.run_label("20261205-140312123-my-run") == "my-run 14:03:12"
    assert values.run_label("odd-name") == "odd-name"
    same = values.run_labels(["20261205-140312123-a", "20261206-140312999-a"], {})
    assert same == {"20261205-140312123-a": "20261205-140312123-a", "20261206-140312999-a": "20261206-140312999-a"}


def test_tables_keep_numbers_whole_and_colour_each_variant():
    rows = [{"variant": "no_projection", "trainable": 2560, "total": 160000, "trainable %": 1.6, "stored": 2560,
             "train loss": 4.12345, "val loss": None, "tokens/s": 12345.6, "wall time (s)": 388.2}]
    table = values.comparison_html(rows)
    assert '<span class="swatch" style="background:#1f77b4"></span>no_projection' in table
    for text in ("2,560", "160,000", "1.60", "4.1235", "12,346", "6:28", "–"):
        assert f">{text}</td>" in table, text
    assert 'class="grid data"' in table  # cells that never break inside a word or number (ui/app.py's CSS)
    accounting = values.accounting_html([["projection", 21440, 178880, 11.9857, 2560, "n*d + <x>"]])
    assert "#ff7f0e" in accounting and ">11.99</td>" in accounting and "n*d + &lt;x&gt;" in accounting
    runs = values.runs_html([["r1", "<b>", "tiny-gpt2", "done", "4 / 4", "", "", ""]], selected="r1")
    assert '<tr class="selected"><td>r1</td><td>&lt;b&gt;</td>' in runs


def test_runs_table_row_and_default_selection():
    info = RunInfo(run_id="20260101-000000-t", path=None, name="t", model="tiny-gpt2", state="done", step=4,
                   total_steps=4, started_at=0.0, updated_at=1.0, finished_at=2.0, error=None)
    summary = {"variants": {"a": {"final_train_loss": 1.23456, "final_eval_loss": 2.0}}}
    row = values.run_row(info, summary, [{"variant": "a", "loss": 9.0}])
    assert row == ["20260101-000000-t", "t", "tiny-gpt2", "done", "4 / 4", "1970-01-01 00:00:00",
                   "a 1.235", "a 2.000"]
    running = RunInfo(**{**info.__dict__, "run_id": "old", "state": "running"})
    assert values.default_selection([info, running]) == "old"
    assert values.default_selection([info]) == info.run_id and values.default_selection([]) is None


def test_preset_slug_and_command():
    assert values.preset_slug("My run #2") == "my-run-2"
    with pytest.raises(ValueError, match="preset name '!!' has no letters"):
        values.preset_slug("!!")
    assert values.cli_command("presets/a b.json") == "python -m prefixlab train 'presets/a b.json'"


def test_grid_html_escapes_and_marks_empty_outputs():
    out = values.grid_html(["prompt", "base", "v", "w"], [["<b>x</b>", "", "a & b", "   "]])
    assert "<th>prompt</th><th>base</th><th>v</th><th>w</th>" in out
    assert ("<td>&lt;b&gt;x&lt;/b&gt;</td><td><em>(empty)</em></td><td>a &amp; b</td>"
            "<td><em>(only whitespace, 3 characters)</em></td>") in out
    assert values.grid_html(["prompt"], []) == '<p class="grid-empty">no outputs yet</p>'


WHOLE = [f.key for f in FIELDS if f.kind == "int" and not (f.optional or f.inferred)]


@pytest.mark.parametrize("key", WHOLE)
def test_a_fraction_in_a_whole_number_box_is_named_not_rounded(key):
    """The number boxes send 2.5 as typed (form.py sets no precision): it gets the text boxes' message;
    3.0 is 3. The boxes are built with no rounding."""
    assert {"prefix.num_virtual_tokens", "training.batch_size", "training.seed", "training.eval_interval",
            "training.log_interval"} <= set(WHOLE)
    spec, errors = _check(**{key.replace(".", "__"): 2.5})
    assert spec is None and errors == {key: "must be a whole number, got '2.5'; round it"}
    assert values.collect_form(FIELDS, _raw(**{key.replace(".", "__"): 3.0}), False)[key] == 3
    box = component_for(next(f for f in FIELDS if f.key == key))
    assert box.preprocess(2.5) == 2.5 and box.preprocess(3) == 3


def test_one_column_as_source_and_target_is_refused_for_files_and_hub_datasets(tmp_path):
    task = tmp_path / "one.csv"
    task.write_text("text\nhello\nworld\n")
    spec, _ = _check(data__source=str(task), data__source_column="text", data__target_column="text")
    assert checks.task_data_errors(spec) == {"data.target_column": (
        f"{task}: the source and target columns are both 'text'; a task needs a source column and a different "
        "target column: set one of them to another column (a file with a single column cannot be a task)")}
    spec, _ = _check(data__source="someone/dataset", data__source_column="a", data__target_column="a")
    assert "both 'a'" in checks.task_data_errors(spec)["data.target_column"]
    spec, _ = _check(data__source="someone/dataset", data__source_column="a", data__target_column="b")
    assert "data.target_column" not in checks.task_data_errors(spec)  # the columns are the worker's to check


def test_file_names_for_presets_and_exports_keep_letters_of_any_script():
    assert values.preset_slug("日本語 run") == "日本語-run" and values.preset_slug("Offline Tiny!") == "offline-tiny"
    assert values.preset_slug("a_b") == "a-b" and values.preset_slug("x" * 60) == "x" * 60
    with pytest.raises(ValueError, match="preset name is 61 characters long as a file name"):
        values.preset_slug("x" * 61)
    assert values.export_file_name("!!!") == "experiment.json"
    assert values.export_file_name("日本語") == "日本語.json"
    assert values.export_file_name("a" * 59 + "-b" * 10) == "a" * 59 + ".json"
    assert values.upload_name("with space é.JSONL", "0123456789abcdef") == "with space é-0123456789ab.jsonl"
