"""Sweeps: one spec run once per value of one or two fields (engine/sweep.py), the sweep's chart and
table (views/sweep.py), and `python -m prefixlab sweep`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefixlab.cli import main
from prefixlab.engine import sweep as sweeps
from prefixlab.engine.runs import JobQueue, RunDir, append_jsonl, atomic_write_json, new_status
from prefixlab.engine import zoo
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.views.sweep import default_metric, save_figure, sweep_figure, sweep_series, sweep_table

LENGTH, STEPS = "prefix.num_virtual_tokens", "training.max_steps"


def tiny_spec_dict(**training) -> dict:
    """tests/test_cli.py's tiny run: random tiny-gpt2, 2 steps of batch 4, 64 tokens."""
    return {
        "name": "sw", "model": {"name": "tiny-gpt2"},
        "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
        "data": {"source": "e2e-synth", "max_train_examples": 8, "max_eval_examples": 4},
        "training": {"learning_rate": 0.2, "max_steps": 2, "batch_size": 4, "max_length": 64,
                     "eval_interval": 2, "log_interval": 1, **training},
        "generation": {"num_prompts": 1, "max_new_tokens": 6},
    }


def tiny_spec(**training) -> ExperimentSpec:
    return ExperimentSpec.from_dict(tiny_spec_dict(**training))


def run_folders(runs_dir) -> list:
    return sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.exists() else []


# ---------------------------------------------------------------------------------------------
# The spec's sweep field


def test_the_sweep_field_round_trips_and_is_absent_elsewhere():
    tag = {"id": "20261205-101500-sw-1a2b", "vary": {LENGTH: 5, "data.max_train_examples": None},
           "grid": {LENGTH: [1, 5], "data.max_train_examples": [100, None]}}
    spec = ExperimentSpec.from_dict({**tiny_spec_dict(), "sweep": tag})
    assert spec.sweep.id == tag["id"] and spec.sweep.vary == tag["vary"]
    assert spec.to_dict()["sweep"] == tag
    assert ExperimentSpec.from_json(spec.to_json()).to_dict() == spec.to_dict()
    assert "sweep" not in tiny_spec().to_dict() and tiny_spec().sweep is None


@pytest.mark.parametrize("tag, key, words", [
    ("x", "sweep", "must be a JSON object"),
    ({"id": "a b", "vary": {LENGTH: 1}}, "sweep.id", "letters, digits"),
    ({"id": "s", "vary": {}}, "sweep.vary", "at least one field"),
    ({"id": "s", "vary": {"prefix.lenght": 1}}, "sweep.vary.prefix.lenght", "is not a field of the spec"),
    ({"id": "s", "vary": {LENGTH: [1]}}, f"sweep.vary.{LENGTH}", "must be a number, text"),
    ({"id": "s", "vary": {LENGTH: 3}, "grid": {LENGTH: [1, 5]}}, f"sweep.grid.{LENGTH}", "does not hold this run's value 3"),
    ({"id": "s", "vary": {LENGTH: 1}, "of": 2}, "sweep.of", "unknown key"),
])
def test_a_bad_sweep_field_is_named(tag, key, words):
    with pytest.raises(SpecError) as err:
        ExperimentSpec.from_dict({**tiny_spec_dict(), "sweep": tag})
    assert words in err.value.errors[key]


# ---------------------------------------------------------------------------------------------
# Parsing and validation, before anything is queued


def test_parse_vary():
    assert sweeps.parse_vary(f"{LENGTH}=1, 5,10") == (LENGTH, ["1", "5", "10"])
    assert sweeps.parse_vary('prefix.prefix_tuning_init_text=["a, b", "c"]') == (
        "prefix.prefix_tuning_init_text", ["a, b", "c"])
    assert sweeps.parse_vary(f"{LENGTH}=") == (LENGTH, [])
    with pytest.raises(sweeps.SweepError, match="needs FIELD=VALUE1,VALUE2"):
        sweeps.parse_vary(LENGTH)
    with pytest.raises(sweeps.SweepError, match="hold an empty one"):
        sweeps.parse_vary(f"{LENGTH}=1,,5")


def test_invalid_values_are_named_with_their_field_all_at_once():
    with pytest.raises(sweeps.SweepError) as err:
        sweeps.plan_sweep(tiny_spec(), {LENGTH: ["1", "0", "x", "600"]})
    errors = err.value.errors
    assert set(errors) == {f"{LENGTH}=0", f"{LENGTH}=x", f"{LENGTH}=600"}  # 1 is fine
    assert "must be at least 1" in errors[f"{LENGTH}=0"]
    assert "must be a whole number, got 'x'" in errors[f"{LENGTH}=x"]
    assert "no room in tiny-gpt2's 512 positions" in errors[f"{LENGTH}=600"]  # engine.checks, not the schema


def test_a_problem_of_one_value_of_two_fields_is_named_by_that_value():
    with pytest.raises(sweeps.SweepError) as err:
        sweeps.plan_sweep(tiny_spec(), {STEPS: [1, 4], LENGTH: [2, 3]})
    # eval_interval=2 > max_steps=1 for both lengths: named by max_steps=1 alone, with its own field
    assert err.value.errors == {f"{STEPS}=1": "training.eval_interval: 2 is more than training.max_steps=1, so the "
                                              "run would never evaluate; set it to at most max_steps"}


@pytest.mark.parametrize("vary, key, words", [
    ({"prefix.lenght": [1]}, "prefix.lenght", f"is not a field a sweep can vary; it can vary prefix.{{{LENGTH[7:]}, "),
    ({"generation.prompts": ["a"]}, "generation.prompts", "training.{learning_rate"),
    ({LENGTH: []}, LENGTH, "has no values to sweep over; give one or more (int values)"),
    ({"data.max_train_examples": []}, "data.max_train_examples", "(int values, or none)"),
    ({LENGTH: [1, 2], STEPS: [2], "training.seed": [1]}, "vary", "at most 2 fields, got 3"),
    ({LENGTH: ["5", "5.0"]}, LENGTH, "5 is given twice"),
    ({"prefix.prefix_projection": [True]}, "prefix.prefix_projection", "is set by every variant"),
    ({LENGTH: list(range(1, 12)), "training.seed": list(range(10))}, "vary", "11 x 10 values make 110 runs"),
])
def test_unknown_fields_empty_lists_and_too_much_are_refused(vary, key, words):
    with pytest.raises(sweeps.SweepError) as err:
        sweeps.plan_sweep(tiny_spec(), vary)
    assert words in err.value.errors[key], err.value.errors


def test_bad_input_exits_2_with_one_line_and_queues_nothing(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    runs = tmp_path / "runs"
    for argv, words in [
        (["--vary", f"{LENGTH}=2,0"], f"{LENGTH}=0: num_virtual_tokens=0 is invalid"),
        (["--vary", f"{LENGTH}=2,0", "--queue"], f"{LENGTH}=0: num_virtual_tokens=0 is invalid"),
        (["--vary", "prefix.lenght=1"], "prefix.lenght: is not a field a sweep can vary"),
        (["--vary", f"{LENGTH}="], f"{LENGTH}: has no values to sweep over"),
        (["--vary", LENGTH], f"--vary {LENGTH}: needs FIELD=VALUE1"),
        (["--vary", f"{LENGTH}=1", "--vary", f"{LENGTH}=2"], f"--vary {LENGTH} is given twice"),
        (["--vary", f"{LENGTH}=1", "--plot", str(tmp_path / "x.pdf")], "name a .png or .svg file"),
        (["--vary", f"{LENGTH}=1", "--metric", "bleuu"], "no metric 'bleuu'; choose one of bleu, chrf"),
        ([], "sweep needs SPEC.json and --vary"),
    ]:
        assert main(["sweep", str(spec_path), "--runs-dir", str(runs), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, (argv, err)
    assert not runs.exists()  # nothing queued, not even the runs folder made
    assert main(["sweep", "--show", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Expansion


def test_one_field_expands_to_one_tagged_spec_per_value():
    plan = sweeps.plan_sweep(tiny_spec(), {LENGTH: ["1", "5", "10"]}, sweep_id="s1")
    assert plan.id == "s1" and plan.grid == {LENGTH: [1, 5, 10]}
    assert [s.prefix.num_virtual_tokens for s in plan.specs] == [1, 5, 10]
    assert all(v.prefix.num_virtual_tokens == s.prefix.num_virtual_tokens for s in plan.specs for v in s.variants)
    assert [s.name for s in plan.specs] == ["sw (num_virtual_tokens=1)", "sw (num_virtual_tokens=5)",
                                            "sw (num_virtual_tokens=10)"]
    assert plan.specs[1].sweep.to_dict() == {"id": "s1", "vary": {LENGTH: 5}, "grid": {LENGTH: [1, 5, 10]}}
    # nothing else changes: the spec with the value set and the name changed is the sweep's spec
    document = plan.specs[1].to_dict()
    document.pop("sweep")
    expected = tiny_spec_dict()
    expected["prefix"]["num_virtual_tokens"] = 5
    assert document == {**ExperimentSpec.from_dict(expected).to_dict(), "name": "sw (num_virtual_tokens=5)"}


def test_two_fields_expand_to_their_cartesian_product():
    plan = sweeps.plan_sweep(tiny_spec(), {"training.learning_rate": ["1e-3", "0.1"], "data.max_train_examples":
                                           ["4", "8", "none"]})
    assert plan.grid == {"training.learning_rate": [0.001, 0.1], "data.max_train_examples": [4, 8, None]}
    assert [(s.training.learning_rate, s.data.max_train_examples) for s in plan.specs] == [
        (0.001, 4), (0.001, 8), (0.001, None), (0.1, 4), (0.1, 8), (0.1, None)]
    assert plan.values(2) == {"training.learning_rate": 0.001, "data.max_train_examples": None}
    assert len({s.sweep.id for s in plan.specs}) == 1


def test_the_queue_way_writes_queued_runs_a_page_lists(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    assert main(["sweep", str(spec_path), "--vary", f"{LENGTH}=1,3", "--queue", "--runs-dir", str(tmp_path / "runs")]) == 0
    infos = JobQueue(tmp_path / "runs").list_runs()
    assert [i.state for i in infos] == ["queued", "queued"]
    sweep_id = RunDir(infos[0].path).read_spec().sweep.id
    assert f"sweep --show {sweep_id}" in capsys.readouterr().err
    view = sweeps.read_sweep(tmp_path / "runs", sweep_id)
    assert [(r.values[LENGTH], r.state) for r in view.runs] == [(1, "queued"), (3, "queued")]


def test_runs_reserved_for_this_process_are_not_started_by_a_page_queue(tmp_path):
    plan = sweeps.plan_sweep(tiny_spec(), {LENGTH: [1, 2]})
    queue = JobQueue(tmp_path, worker_command=["false"])
    with sweeps.reserve_sweep(tmp_path, plan) as reserved:
        assert [r.read_status()["state"] for r in reserved.runs] == ["queued", "queued"]
        assert queue.poll() is None  # held by us: the queue starts neither
        reserved.release(0)
        assert queue.poll() is None  # still one held: the device counts as busy
    assert {i.state for i in queue.list_runs()} == {"queued"}


# ---------------------------------------------------------------------------------------------
# Reading a sweep: points from finished, running and queued runs


def fake_sweep(runs_dir, metrics: bool = True) -> sweeps.SweepPlan:
    """A sweep of three lengths whose first run is done (summary.json, with task metrics in summary and
    on metrics.jsonl), second running, third queued; no worker."""
    plan = sweeps.plan_sweep(tiny_spec(), {LENGTH: [2, 8, 32]}, sweep_id="fake", check=False)
    for i, (spec, state) in enumerate(zip(plan.specs, ["done", "running", "queued"])):
        run = RunDir(runs_dir / f"2026120{i}-000000000-sw")
        run.write_spec(spec)
        atomic_write_json(run.status_path, new_status(state, step=2 if state == "done" else 1, total_steps=2))
        if state == "queued":
            continue
        for variant, loss in (("no_projection", 5.5), ("projection", 5.0)):
            append_jsonl(run.metrics_path, {"variant": variant, "step": 1, "eval_loss": loss + 0.5,
                                            **({"bleu": 10.0} if metrics else {})})
            append_jsonl(run.metrics_path, {"variant": variant, "step": 2, "eval_loss": loss,
                                            **({"bleu": 12.5, "chrf": 30.0} if metrics else {})})
        if state == "done":
            atomic_write_json(run.summary_path, {"variants": {
                "no_projection": {"trainable": 1111, "final_eval_loss": 5.25,
                                  **({"metrics": {"slot_accuracy": 40.0}} if metrics else {})},
                "projection": {"trainable": 2222, "final_eval_loss": None}}})  # -> metrics.jsonl's last
    return plan


def test_points_of_a_finished_a_running_and_a_queued_run(tmp_path):
    fake_sweep(tmp_path)
    (tmp_path / "other").mkdir()
    RunDir(tmp_path / "other").write_spec(tiny_spec())  # not in the sweep
    view = sweeps.read_sweep(tmp_path, "fake")
    assert view.fields == [LENGTH] and view.grid == {LENGTH: [2, 8, 32]} and view.model == "tiny-gpt2"
    assert [r.state for r in view.runs] == ["done", "running", "queued"] and view.missing == []
    points = {(p.values[LENGTH], p.variant): p for p in view.points}
    assert len(points) == 6
    done = points[(2, "no_projection")]
    assert (done.state, done.trainable, done.val_loss) == ("done", 1111, 5.25)  # summary.json's
    assert done.metrics == {"bleu": 12.5, "chrf": 30.0, "slot_accuracy": 40.0}  # summary first, then metrics.jsonl
    assert points[(2, "projection")].val_loss == 5.0  # summary has none: metrics.jsonl's last
    accounting = {row["variant"]: row["trainable"] for row in
                  sweeps.checks.check(ExperimentSpec.from_dict({**tiny_spec_dict(), "prefix": {
                      "num_virtual_tokens": 8, "encoder_hidden_size": 16}}), data=False).rows()}
    for variant in ("no_projection", "projection"):
        running, queued = points[(8, variant)], points[(32, variant)]
        assert (running.state, running.val_loss, running.metrics) == ("running", None, {})  # no values yet
        assert running.trainable == accounting[variant]  # engine.checks before summary.json exists
        assert (queued.state, queued.val_loss, queued.trainable > running.trainable) == ("queued", None, True)
    [listed] = sweeps.list_sweeps(tmp_path)
    assert (listed.id, listed.name, listed.fields, listed.runs, listed.states) == (
        "fake", "sw", [LENGTH], 3, {"done": 1, "running": 1, "queued": 1})
    headers, rows = sweep_table(view)
    assert headers == [LENGTH, "variant", "state", "trainable", "val loss", "bleu", "chrf", "slot_accuracy"]
    assert rows[0] == [2, "no_projection", "done", 1111, 5.25, 12.5, 30.0, 40.0]
    assert rows[3][:5] == [8, "projection", "running", accounting["projection"], None]


def test_the_chart_has_a_point_per_finished_run_and_variant(tmp_path):
    fake_sweep(tmp_path)
    view = sweeps.read_sweep(tmp_path, "fake")
    assert default_metric(view.points) == "slot_accuracy"
    figure = sweep_figure(view)
    by_value, by_loss, by_trainable = figure.axes[:3]
    assert by_value.get_ylabel() == "slot accuracy" and by_loss.get_ylabel() == "validation loss"
    assert by_value.get_xscale() == "log"  # 2 to 32
    lines = {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata())) for line in by_value.get_lines()
             if line.get_gid()}
    assert lines == {"series:no_projection": ([2], [40.0])}  # projection has no slot accuracy
    trainable = {line.get_gid(): list(line.get_xdata()) for line in by_trainable.get_lines() if line.get_gid()}
    assert trainable == {"series:no_projection": [1111]}
    losses = {line.get_gid(): list(line.get_ydata()) for line in by_loss.get_lines() if line.get_gid()}
    assert losses == {"series:no_projection": [5.25], "series:projection": [5.0]}
    assert "slot accuracy vs prefix.num_virtual_tokens, tiny-gpt2" in figure._suptitle.get_text()
    assert "1 of 3 runs ended, 2 queued or running" in figure._suptitle.get_text()
    series = sweep_series(view, "bleu")
    assert [(s.variant, s.values, s.ys) for s in series] == [("no_projection", [2], [12.5]), ("projection", [2], [12.5])]
    save_figure(figure, tmp_path / "sweep.svg")
    assert (tmp_path / "sweep.svg").read_text().lstrip().startswith("<?xml")


def test_a_chart_without_task_metrics_shows_validation_loss(tmp_path):
    fake_sweep(tmp_path, metrics=False)
    view = sweeps.read_sweep(tmp_path, "fake")
    assert default_metric(view.points) == "val_loss"
    figure = sweep_figure(view)
    assert len(figure.axes) == 2 and figure.axes[0].get_ylabel() == "validation loss"


# ---------------------------------------------------------------------------------------------
# The CLI, end to end


def test_a_sweep_of_three_tiny_runs_trains_here_and_plots(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    runs, plot = tmp_path / "runs", tmp_path / "sweep.png"
    assert main(["sweep", str(spec_path), "--vary", f"{LENGTH}=1,2,8", "--runs-dir", str(runs),
                 "--plot", str(plot), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # every run scores its 4 validation examples (training.metric_examples): their task metrics follow
    assert out.splitlines()[0].split() == [LENGTH, "variant", "state", "trainable", "val", "loss", "bleu", "chrf", "rouge_l", "slot_accuracy"]
    assert len(out.splitlines()) == 1 + 3 * 2 and out.count(" done ") == 6
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [listed] = sweeps.list_sweeps(runs)
    view = sweeps.read_sweep(runs, listed.id)
    assert [(r.values[LENGTH], r.state) for r in view.runs] == [(1, "done"), (2, "done"), (8, "done")]
    assert all(p.val_loss is not None and p.trainable for p in view.points)
    for run in view.runs:  # ordinary runs: summary, adapters, samples, as `train` leaves them
        assert RunDir(run.path).read_summary() and RunDir(run.path).trained_variants() == ["no_projection",
                                                                                           "projection"]
    assert all(set(p.metrics) == {"bleu", "chrf", "rouge_l", "slot_accuracy"} for p in view.points)
    by_value, by_trainable = sweep_figure(view, metric="val_loss").axes[:2]
    for variant in ("no_projection", "projection"):
        [line] = [ln for ln in by_value.get_lines() if ln.get_gid() == f"series:{variant}"]
        assert list(line.get_xdata()) == [1, 2, 8]
        assert list(line.get_ydata()) == [p.val_loss for p in view.points if p.variant == variant]
        [line] = [ln for ln in by_trainable.get_lines() if ln.get_gid() == f"series:{variant}"]
        assert list(line.get_xdata()) == [p.trainable for p in view.points if p.variant == variant]
    assert main(["sweep", "--show", listed.id, "--runs-dir", str(runs)]) == 0
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("outcome, status, trained, states", [
    # the worker turns a first Ctrl-C (or a SIGTERM) into a graceful stop: cancelled, no cancel file
    ("interrupted", 130, 1, ["cancelled", "cancelled", "cancelled"]),
    # Stop on the page (JobQueue.cancel leaves the cancel file) stops that run only
    ("stopped from the page", 0, 3, ["cancelled", "cancelled", "cancelled"]),
    ("failed", 1, 3, ["failed", "failed", "failed"]),
])
def test_after_each_run_the_sweep_goes_on_or_stops(tmp_path, capsys, monkeypatch, outcome, status, trained, states):
    import prefixlab.cli as cli

    started = []

    def fake_train_in(args, owner, stack):  # what `train --run-dir` leaves behind, without training
        run = RunDir(args.run_dir)
        started.append(run.path.name)
        if outcome == "stopped from the page":
            run.cancel_path.touch()
        run.update_status(state="failed" if outcome == "failed" else "cancelled", step=1)
        return 0

    monkeypatch.setattr(cli, "train_in", fake_train_in)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    assert main(["sweep", str(spec_path), "--vary", f"{LENGTH}=1,2,3", "--runs-dir", str(tmp_path / "runs")]) == status
    assert len(started) == trained
    assert [i.state for i in reversed(JobQueue(tmp_path / "runs").list_runs())] == states
    out, err = capsys.readouterr()
    assert ("interrupted: the runs not started are cancelled" in err) == (outcome == "interrupted")
    if outcome == "interrupted":
        assert out.count("cancelled before training") == 4  # two runs x two variants never started


# ---------------------------------------------------------------------------------------------
# Sweep presets: presets/sweeps/*.json carry their own "_vary"


SWEEP_PRESETS = sorted((Path(__file__).resolve().parents[1] / "presets" / "sweeps").glob("*.json"))


def test_every_sweep_preset_is_a_spec_with_its_own_sweep():
    from prefixlab.cli import preset_vary

    assert {p.stem for p in SWEEP_PRESETS} >= {"offline-prefix-length", "offline-low-data", "gpt2-prefix-length",
                                                "gpt2-low-data", "gpt2-medium-prefix-length", "gpt2-medium-low-data"}
    for path in SWEEP_PRESETS:
        spec = ExperimentSpec.load(path)
        vary = dict(sweeps.parse_vary(text) for text in preset_vary(str(path)))
        assert len(vary) == 1 and all(len(values) >= 4 for values in vary.values()), path
        command = json.loads(path.read_text())["_command"]
        assert command.startswith(f"python -m prefixlab sweep presets/sweeps/{path.name}"), path
        if spec.model.name in zoo.OFFLINE_PRESETS:  # offline: every run is checked as the CLI checks it
            plan = sweeps.plan_sweep(spec, vary)
            assert len(plan.specs) == len(next(iter(vary.values())))


def test_sweep_without_vary_takes_the_presets_and_a_bad_one_is_named(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({**tiny_spec_dict(), "_vary": {LENGTH: [1, 0]}}))
    assert main(["sweep", str(spec_path), "--runs-dir", str(tmp_path / "runs"), "--queue"]) == 2
    err = capsys.readouterr().err
    assert f"{LENGTH}=0" in err and "nothing was queued" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/spec.json"))
    spec_path.write_text(json.dumps({**tiny_spec_dict(), "_vary": {LENGTH: "1,2"}}))
    assert main(["sweep", str(spec_path), "--queue", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert '"_vary" must map each field to a list of values' in capsys.readouterr().err
    spec_path.write_text(json.dumps({**tiny_spec_dict(), "_vary": {LENGTH: [1, 2]}}))
    assert main(["sweep", str(spec_path), "--queue", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert [r.values[LENGTH] for r in sweeps.read_sweep(tmp_path / "runs", sweeps.list_sweeps(tmp_path / "runs")[0].id).runs] == [1, 2]
