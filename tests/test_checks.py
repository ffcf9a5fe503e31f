"""engine/checks.py: the one check of a spec against its model, data and machine (page, CLI, worker)."""

from __future__ import annotations

import json

from prefixlab.engine import checks
from prefixlab.engine.spec import ExperimentSpec


def _spec(**sections) -> ExperimentSpec:
    document = {"model": {"name": "tiny-gpt2"}, "prefix": {"num_virtual_tokens": 4},
                "training": {"max_steps": 4, "eval_interval": 2}}
    for key, value in sections.items():
        document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentSpec.from_dict(document)


def test_a_good_spec_has_no_problems_and_its_sizes_filled():
    checked = checks.check(_spec())
    assert checked.errors == {}
    assert {name: c.num_layers for name, c in checked.filled.items()} == {"no_projection": 2, "projection": 2}
    assert [r["variant"] for r in checked.rows()] == ["no_projection", "projection"]


def test_every_problem_is_named_at_once_on_the_key_it_comes_from(tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"src": "a", "tgt": "b"}) + "\n")
    spec = _spec(training={"max_length": 600, "precision": "fp16"},
                 data={"source": str(task), "source_column": "src", "target_column": "target"})
    errors = checks.check(spec).errors
    assert set(errors) == {"training.max_length", "training.precision", "data.target_column"}
    assert "no target column 'target'" in errors["data.target_column"]
    # A size that does not fit: on the shared prefix, or on the variant that sets it.
    custom = ExperimentSpec.from_dict({"model": {"name": "tiny-gpt2"}, "prefix": {"num_virtual_tokens": 4},
                                       "variants": ["no_projection", {"name": "deep", "prefix": {"num_layers": 3}}]})
    checked = checks.check(custom)
    assert list(checked.errors) == ["variants[1].prefix.num_layers"] and checked.filled == {}
    shared = ExperimentSpec.from_dict({"model": {"name": "tiny-gpt2"},
                                       "prefix": {"num_virtual_tokens": 4, "token_dim": 60}})
    assert list(checks.check(shared).errors) == ["prefix.token_dim"]


def test_a_model_that_cannot_be_read_still_lets_the_data_be_checked(tmp_path):
    spec = _spec(model={"name": str(tmp_path / "missing")}, data={"source": str(tmp_path / "none.jsonl")})
    errors = checks.check(spec).errors
    assert set(errors) == {"model.name", "data.source"} and "no such file" in errors["data.source"]


def test_a_task_file_is_read_again_only_when_it_changes(tmp_path, monkeypatch):
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    spec = _spec(data={"source": str(task)})
    calls = []
    real = checks.load_task
    monkeypatch.setattr(checks, "load_task", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert checks.task_data_errors(spec) == {} and checks.task_data_errors(spec) == {}
    assert len(calls) == 1
    task.write_text(json.dumps({"source": "a"}) + "\n")  # the same name, new content: read again
    assert "no target column 'target'" in checks.task_data_errors(spec)["data.target_column"]
    assert len(calls) == 2


def test_the_worker_checks_the_real_prompt_lengths():
    """With the prompts' lengths known, the room for new tokens is what the longest prompt leaves."""
    spec = _spec(generation={"max_new_tokens": 500})  # tiny-gpt2: 512 positions, a 4-token prefix
    assert checks.check(spec).errors == {}  # after a one-token prompt, 508 fit
    errors = checks.check(spec, prompt_lengths=[3, 20], data=False).errors
    assert errors == {"generation.max_new_tokens": "500 new tokens after a 20-token prompt and the 4-token prefix "
                                                   "run past tiny-gpt2's 512 positions; set it to at most 489 or "
                                                   "use a shorter prompt"}
