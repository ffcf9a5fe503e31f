"""ui/datanote.py: what the task's data will do at max_length, before training: the counts equal
the engine's own encoding (engine.data.encode_examples' num_truncated) at every max_length."""

from __future__ import annotations

import json

import pytest

from prefixlab.engine.data import encode_examples, load_task
from prefixlab.engine.runs import JobQueue
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.tiny import tiny_tokenizer
from prefixlab.engine.zoo import MODEL_PRESETS
from prefixlab.ui import datanote
from prefixlab.ui.app import REPO_PRESETS
from prefixlab.ui.fields import page_fields
from prefixlab.ui.handlers import Lab


def _spec(model="tiny-gpt2", **data):
    return ExperimentSpec.from_dict({"model": {"name": model},
                                     "data": {"max_train_examples": 60, "max_eval_examples": 12, **data}})


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_truncation_counts_equal_the_engine_s_encoding_at_every_max_length(model):
    spec = _spec(model)
    splits = load_task(spec.data)
    examples = splits["train"] + splits["validation"]
    lengths = datanote.task_lengths(spec)
    assert len(lengths.prompts) == len(examples) == 72 and lengths.splits == (("train", 60), ("validation", 12))
    task_type = MODEL_PRESETS[model].task_type
    for max_length in (24, 48, 64, 100, 128, 160, 200, 400):
        counted = datanote.truncation(lengths, max_length)
        encoded = encode_examples(examples, tiny_tokenizer(), task_type, max_length, spec.data.separator)
        assert counted.truncated == encoded.num_truncated, max_length
        assert counted.source_cut <= counted.truncated and counted.target_cut <= counted.truncated
        assert max(counted.source_cut, counted.target_cut) <= counted.truncated <= counted.source_cut + counted.target_cut
    longest = datanote.truncation(lengths, 8).longest
    assert datanote.truncation(lengths, longest).truncated == 0
    assert datanote.truncation(lengths, longest - 1).truncated >= 1


def test_offline_tiny_s_note_names_the_truncated_examples_and_suggests_a_length():
    """The issue's numbers: offline-tiny's max_length 128 truncates 320 of its 352 examples."""
    spec = ExperimentSpec.load(REPO_PRESETS / "offline-tiny.json")
    note = datanote.data_note(spec, limit=502)
    assert note.markdown.startswith("**352 examples** (320 train + 32 validation) at max_length 128: "
                                    "**320 truncated** (source cut in 320, target cut in ")
    longest = datanote.truncation(datanote.task_lengths(spec), 128).longest
    assert note.suggestion == datanote.suggested(longest, 502) and note.suggestion % datanote.ROUND_TO == 0
    assert f"At **{note.suggestion}** all fit." in note.markdown
    # Within the model's positions: a limit below the longest example is what is suggested.
    capped = datanote.data_note(spec, limit=300)
    assert capped.suggestion == 300 and "the model's positions allow at most 300" in capped.markdown
    at_limit = datanote.note_markdown(datanote.truncation(datanote.task_lengths(spec), 300), 300)
    assert at_limit.suggestion is None and "allow at most 300" in at_limit.markdown
    fits = datanote.data_note(ExperimentSpec.from_dict({**spec.to_dict(), "training": {
        **spec.to_dict()["training"], "max_length": 500}}), limit=502)
    assert fits.suggestion is None and "none truncated (the longest takes" in fits.markdown


def test_lengths_are_measured_once_per_task_and_tokenizer():
    spec = _spec(max_train_examples=30)
    datanote.task_lengths(spec)
    before = datanote._lengths.cache_info()
    for max_length in (32, 64, 96):  # a new max_length is arithmetic on the cached lengths
        datanote.data_note(ExperimentSpec.from_dict({**spec.to_dict(), "training": {"max_length": max_length}}), None)
    after = datanote._lengths.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 3


def test_a_rewritten_task_file_is_measured_again(tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"source": "s" * 10, "target": "t"}) + "\n" for _ in range(20)))
    spec = _spec(source=str(task), max_train_examples=None, max_eval_examples=None)
    assert datanote.truncation(datanote.task_lengths(spec), 999).longest < 30
    task.write_text("".join(json.dumps({"source": "s" * 200, "target": "t"}) + "\n" for _ in range(20)))
    assert datanote.truncation(datanote.task_lengths(spec), 999).longest > 200


def test_a_hub_model_without_a_local_tokenizer_or_a_hub_dataset_is_said_not_guessed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    note = datanote.data_note(_spec("someone/not-in-any-cache"), None)
    assert note.suggestion is None and note.markdown.startswith("Truncation not counted: someone/not-in-any-cache's "
                                                                "tokenizer is not on this machine")
    hub = datanote.data_note(_spec(source="GEM/web_nlg"), None)
    assert hub.suggestion is None and "counted when the worker downloads it" in hub.markdown


def test_the_page_shows_the_note_and_sets_the_suggested_length(tmp_path):
    lab = Lab(JobQueue(tmp_path / "runs"), page_fields(), REPO_PRESETS, temp_dir=tmp_path / "gradio")
    form = lab.initial_state("offline-tiny")
    out = lab.data_note(form)
    assert "**320 truncated**" in out["form.data_note"]
    suggestion = out["form.suggested"]
    assert out["form.use_suggested"]["visible"] and out["form.use_suggested"]["value"] == f"Use max_length {suggestion}"
    assert lab.use_suggested({"form.suggested": suggestion}) == {"form.training.max_length": suggestion}
    form["form.training.max_length"] = suggestion
    out = lab.data_note(form)
    assert "none truncated" in out["form.data_note"] and out["form.suggested"] is None
    assert out["form.use_suggested"]["visible"] is False
    # While max_length (or the task, or the model) is wrong, its own message says so: no note.
    form["form.training.max_length"] = "lots"
    assert lab.data_note(form)["form.data_note"] == ""
    form["form.training.max_length"] = 128
    form["form.model.name"] = "/no/such/model"
    assert lab.data_note(form)["form.data_note"] == ""
