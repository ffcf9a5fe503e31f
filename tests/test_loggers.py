"""training.report_to: the worker's records also go to TensorBoard event files and to trackio."""

from __future__ import annotations

import json

import pytest

from prefixlab.engine import checks, loggers
from prefixlab.engine.runs import DONE, RunDir
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.engine.worker import run_worker


def tiny(report_to: list[str]) -> ExperimentSpec:
    return ExperimentSpec.from_dict({
        "name": "dash", "model": {"name": "tiny-gpt2"}, "prefix": {"num_virtual_tokens": 2},
        "data": {"source": "e2e-synth", "max_train_examples": 8, "max_eval_examples": 2},
        "training": {"max_steps": 2, "batch_size": 4, "max_length": 32, "eval_interval": 2, "log_interval": 1,
                     "report_to": report_to},
        "generation": {"num_prompts": 1, "max_new_tokens": 2}})


def test_a_run_reports_to_tensorboard_and_trackio(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    run = RunDir(tmp_path / "run")
    run.write_spec(tiny(["tensorboard", "trackio"]))
    assert run_worker(run.path, progress=False) == DONE, run.read_status()["error"]
    logged = [m for m in run.read_metrics() if "loss" in m]
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    assert {"no_projection/loss", "projection/loss", "no_projection/eval_loss", "projection/lr"} <= set(
        events.Tags()["scalars"])
    board = [(e.step, e.value) for e in events.Scalars("projection/loss")]
    assert board == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in logged if m["variant"] == "projection"]
    import sqlite3

    database = sqlite3.connect(tmp_path / "trackio" / "prefixlab.db")
    rows = [(step, json.loads(values)) for step, values in
            database.execute("select step, metrics from metrics where run_name = ?", (run.run_id,))]
    database.close()
    projection = [(step, v["projection/loss"]) for step, v in rows if "projection/loss" in v]
    assert projection == [(m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in logged if m["variant"] == "projection"]


def test_report_to_names_only_known_dashboards_and_a_missing_package_is_refused(monkeypatch):
    with pytest.raises(SpecError, match="training.report_to: must name tensorboard and/or trackio"):
        tiny(["wandb"])
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    errors = checks.check(tiny(["trackio"])).errors
    assert errors["training.report_to"] == ("trackio is not installed: pip install trackio, or remove it from "
                                            "training.report_to")
    assert "training.report_to" not in checks.check(tiny([])).errors


def test_scalars_name_each_value_by_its_variant():
    assert loggers.scalars({"variant": "projection", "epoch": 0.5, "loss": 1.5, "lr": 0.1, "time": 3.0}) == {
        "projection/loss": 1.5, "projection/lr": 0.1}
