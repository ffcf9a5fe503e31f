"""`python -m prefixlab ...` through `main(argv)` in-process, and the engine benchmark's pieces."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from prefixlab import get_peft_model
from prefixlab.cli import CliError, _import, main
from prefixlab.tools.bench import bench_spec, compare, measure_one
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.runs import QUEUE_LAUNCH_ENV, JobQueue, RunDir
from prefixlab.engine.tiny import tiny_model
from prefixlab.engine.worker import run_worker


def tiny_spec_dict(**data) -> dict:
    return {
        "name": "cli", "model": {"name": "tiny-gpt2"},
        "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
        "data": {"source": "e2e-synth", "max_train_examples": 8, "max_eval_examples": 4, **data},
        "training": {"learning_rate": 0.2, "max_steps": 2, "batch_size": 4, "max_length": 64,
                     "eval_interval": 2, "log_interval": 1},
        "generation": {"num_prompts": 1, "max_new_tokens": 6},
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("cli") / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict()))
    assert run_worker(run.path, progress=False) == "done"
    return run


def test_inspect_counts_match_the_real_model(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    assert main(["inspect", str(spec_path)]) == 0
    out = capsys.readouterr().out
    spec = ExperimentSpec.from_dict(tiny_spec_dict())
    for variant in spec.variants:
        prefix = variant.prefix.to_json_dict() | {"task_type": "CAUSAL_LM"}
        model = get_peft_model(tiny_model("gpt2"), type(variant.prefix).from_dict(prefix))
        trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
        assert re.search(rf"^{variant.name}: {trainable:,} trainable", out, re.M), out
    base = sum(p.numel() for p in tiny_model("gpt2").parameters())
    assert f"{base:,} base parameters" in out


def test_inspect_a_model_without_a_spec(capsys):
    assert main(["inspect", "--model", "tiny-llama", "--prefix-length", "5"]) == 0
    out = capsys.readouterr().out
    # Grouped-query attention: the prefix holds 2 key/value heads x head_dim 16 = 32 per layer.
    assert "no_projection: 640 trainable" in out and "prefix 5 x 2 layers x 2 x 32" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train"], "train needs SPEC.json, --run-dir DIR"),
        (["train", "--run-dir", "{tmp}/empty"], "spec.json does not exist; pass SPEC.json"),
        (["train", "{tmp}/bad.json"], "not valid JSON"),
        (["train", "{tmp}/missing.json"], "cannot read spec file"),
        (["inspect"], "inspect needs SPEC.json or --model NAME"),
        (["inspect", "--model", "tiny-gpt2", "--prefix-length", "0"], "num_virtual_tokens=0"),
        (["generate", "--run-dir", "{tmp}/empty", "--prompt", "x"], "empty is not a run folder (it has no spec.json)"),
        # a corrupt spec.json in a run folder, a spec file that is not UTF-8: the file is named
        (["train", "--run-dir", "{tmp}/corrupt"],
         "{tmp}/corrupt/spec.json is not valid JSON (Expecting property name enclosed in double quotes at line 2 "
         "column 1); fix the file"),
        (["generate", "--run-dir", "{tmp}/corrupt", "--prompt", "x"], "{tmp}/corrupt/spec.json is not valid JSON"),
        (["train", "{tmp}/latin1.json"], "cannot read spec file {tmp}/latin1.json: not UTF-8 text (byte 0xff at "
                                         "position 10); save it as UTF-8"),
        (["inspect", "{tmp}/latin1.json"], "cannot read spec file {tmp}/latin1.json: not UTF-8"),
        # folders that are files, or cannot be made
        (["train", "{tmp}/spec.json", "--run-dir", "{tmp}/afile"], "--run-dir {tmp}/afile is a file, not a folder"),
        (["train", "{tmp}/spec.json", "--runs-dir", "{tmp}/afile"], "--runs-dir {tmp}/afile is a file, not a folder"),
        (["train", "--run-dir", "{tmp}/afile"], "--run-dir {tmp}/afile is a file, not a folder"),
        (["generate", "--run-dir", "{tmp}/afile", "--prompt", "x"], "--run-dir {tmp}/afile is a file, not a folder"),
        (["runs", "--runs-dir", "{tmp}/afile"], "--runs-dir {tmp}/afile is a file, not a folder"),
        (["train", "{tmp}/spec.json", "--runs-dir", "{tmp}/afile/runs"],
         "--runs-dir {tmp}/afile/runs: cannot create the folder (Not a directory); give a folder you can write to"),
        # inspect: --model and the prefix flags are instead of a spec, as its help says
        (["inspect", "{tmp}/spec.json", "--model", "tiny-t5"],
         "inspect takes SPEC.json or --model NAME, not both: --model tiny-t5 would be ignored; edit the spec "
         "({tmp}/spec.json), or leave SPEC.json out"),
        (["inspect", "{tmp}/spec.json", "--prefix-length", "3"], "--prefix-length 3 would be ignored"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "spec.json").write_text("{\n")
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xff"}')
    (tmp_path / "spec.json").write_text(json.dumps(tiny_spec_dict()))
    (tmp_path / "afile").write_text("")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in err, err
    assert err.count("\n") == 1, err


def test_train_run_dir_with_failing_data_exits_1(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict(source=str(tmp_path / "missing.jsonl"))))
    assert main(["train", "--run-dir", str(run.path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "failed: " in err and "missing.jsonl" in err
    assert run.read_status()["state"] == "failed"


def test_train_refuses_to_overwrite_a_finished_run(finished_run, tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    assert main(["train", str(spec_path), "--run-dir", str(finished_run.path)]) == 2
    assert "already holds a run (done)" in capsys.readouterr().err


def copy_run(finished_run, tmp_path, **status) -> RunDir:
    """A copy of the finished run (adapters included) with `status` changes."""
    run = RunDir(shutil.copytree(finished_run.path, tmp_path / "copy"))
    if status:
        run.update_status(**status)
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_train_run_dir_starts_only_a_queued_run(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    metrics = run.metrics_path.read_text()
    assert main(["train", "--run-dir", str(run.path), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: {run.path} is already done; to train this spec again: "
                                       f"python -m prefixlab train {run.spec_path} --runs-dir {run.path.parent}\n")
    assert run.metrics_path.read_text() == metrics and run.read_status()["state"] == "done"  # untouched

    run.update_status(state="failed", error="ModelLoadError: no model 'nope'")
    assert main(["train", "--run-dir", str(run.path)]) == 2
    assert capsys.readouterr().err == (f"error: {run.path} has failed (ModelLoadError: no model 'nope'); to train "
                                       f"this spec again: python -m prefixlab train {run.spec_path} "
                                       f"--runs-dir {run.path.parent}\n")
    run.update_status(state="cancelled", step=1)
    assert main(["train", "--run-dir", str(run.path)]) == 2
    assert f"{run.path} was cancelled at step 1; to train this spec again" in capsys.readouterr().err


def test_train_run_dir_on_a_running_run_names_its_worker_or_says_it_died(finished_run, tmp_path, capsys):
    # This test process stands in for a live worker.
    run = copy_run(finished_run, tmp_path, state="running", pid=os.getpid(), heartbeat=time.time())
    metrics = run.metrics_path.read_text()
    assert main(["train", "--run-dir", str(run.path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {run.path} is already running in worker process {os.getpid()}; wait for it, or stop it "
        f"(Stop on the page, or kill {os.getpid()}: it saves and ends cancelled)\n")
    gone = dead_pid()
    run.update_status(pid=gone)
    assert main(["train", "--run-dir", str(run.path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {run.path} is marked running but its worker died (process {gone} is gone); "
        f"to train this spec again: python -m prefixlab train {run.spec_path} --runs-dir {run.path.parent}\n")
    # What JobQueue._launch leaves just before its worker starts: only that worker may take it.
    run.update_status(pid=None, heartbeat=time.time())
    assert main(["train", "--run-dir", str(run.path)]) == 2
    assert "is being started by the page's queue; wait for it" in capsys.readouterr().err
    assert run.metrics_path.read_text() == metrics


def test_train_run_dir_starts_the_run_the_queue_marked_running_for_it(tmp_path, monkeypatch):
    queue = JobQueue(tmp_path / "runs")
    run = queue.run_dir(queue.submit(ExperimentSpec.from_dict(tiny_spec_dict())))
    run.update_status(state="running", pid=None, started_at=time.time(), heartbeat=time.time())  # as _launch
    monkeypatch.setenv(QUEUE_LAUNCH_ENV, str(run.path))
    assert main(["train", "--run-dir", str(run.path), "--no-progress"]) == 0
    assert run.read_status()["state"] == "done"


def test_train_spec_into_a_killed_runs_folder_says_the_worker_died(finished_run, tmp_path, capsys):
    gone = dead_pid()
    run = copy_run(finished_run, tmp_path, state="running", pid=gone, heartbeat=time.time())
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    assert main(["train", str(spec_path), "--run-dir", str(run.path)]) == 2
    assert capsys.readouterr().err == (f"error: {run.path} already holds a run (running, but its worker died: "
                                       f"process {gone} is gone); pick a new --run-dir or leave it out\n")
    run.update_status(pid=os.getpid())
    assert main(["train", str(spec_path), "--run-dir", str(run.path)]) == 2
    assert f"already holds a run (running, worker process {os.getpid()})" in capsys.readouterr().err
    run.status_path.write_text("")  # unreadable: the message names the file
    assert main(["train", str(spec_path), "--run-dir", str(run.path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {run.path} already holds a run (failed: {run.status_path} "
                                              "is not valid JSON (Expecting value at line 1 column 1); the run's state "
                                              "is unknown, so it counts as failed)")


def test_double_ctrl_c_fails_the_run_with_a_short_message(tmp_path, capsys, monkeypatch):
    import prefixlab.engine.worker

    def interrupted_twice(job):
        signal.raise_signal(signal.SIGINT)  # the first: stop after this step, saving
        signal.raise_signal(signal.SIGINT)  # the second: stop now

    monkeypatch.setattr(prefixlab.engine.worker.Job, "train", interrupted_twice)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    run = RunDir(tmp_path / "run")
    try:
        code = main(["train", str(spec_path), "--run-dir", str(run.path), "--no-progress"])
    except KeyboardInterrupt:  # raised here it would end the whole pytest session
        pytest.fail("KeyboardInterrupt escaped main(): a traceback for the user")
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"failed: {run.path} (interrupted twice (Ctrl-C); stopped without saving the last steps)")
    status = run.read_status()
    assert status["state"] == "failed"
    assert status["error"] == "interrupted twice (Ctrl-C); stopped without saving the last steps"


def test_generate_from_saved_adapters_matches_the_workers_samples(finished_run, capsys):
    sample = finished_run.read_samples()[0]
    assert main(["generate", "--run-dir", str(finished_run.path), "--prompt", sample["prompt"]]) == 0
    out = capsys.readouterr().out
    # Adapters reloaded from disk (PEFT format) generate what the worker's in-memory ones did.
    for name, text in sample["outputs"].items():
        assert f"{name:>16}: {text}\n" in out, (name, text, out)


def test_page_generation_matches_the_workers_samples(finished_run):
    from prefixlab.ui.generate import generate_all

    sample = finished_run.read_samples()[0]
    seen = []
    rows = generate_all(finished_run.path, sample["prompt"], on_progress=lambda f, t: seen.append(t))
    # The page's "generate with every variant" box shows what the worker wrote for the same prompt.
    assert dict(rows) == sample["outputs"]
    assert [name for name, _ in rows][0] == "base" and len(seen) == 2


def test_page_generation_reads_adapters_the_worker_saved_again(finished_run, tmp_path, monkeypatch):
    """The page keeps the last run's model loaded; a checkpoint saved since (every eval_interval
    steps, and the final one) must replace the cached adapters, without reloading the base."""
    from safetensors.torch import load_file

    from prefixlab.core.model import WEIGHTS_NAME
    from prefixlab.engine.worker import save_adapter
    from prefixlab.ui import generate

    run = RunDir(shutil.copytree(finished_run.path, tmp_path / "run"))
    generate.generate_all(run.path, "name[x]")
    loads = []
    monkeypatch.setattr("prefixlab.engine.zoo.load_base", lambda name: loads.append(name))  # must not be called
    cached = generate._cache["model"]
    variant = "projection"
    with torch.no_grad():  # the worker's next checkpoint: another prefix, saved the worker's way
        cached.prompt_encoder[variant].embedding.weight.mul_(-3.0)
    save_adapter(cached, variant, run.adapter_path(variant))
    saved = load_file(run.adapter_path(variant) / WEIGHTS_NAME)["prompt_embeddings"]
    with torch.no_grad():
        cached.prompt_encoder[variant].embedding.weight.mul_(0.0)  # what the stale cache would hold
    generate.generate_all(run.path, "name[x]")
    reloaded = generate._cache["model"].prompt_encoder[variant].embedding.weight
    assert torch.equal(reloaded, saved) and loads == []


def test_generate_on_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    assert main(["generate", "--run-dir", str(tmp_path), "--prompt", "x"]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} is not a run folder (it has no spec.json); pass one "
                                       "of the folders `python -m prefixlab runs` lists\n")


def test_generate_before_any_checkpoint_says_so(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict()))
    assert main(["generate", "--run-dir", str(run.path), "--prompt", "x"]) == 2
    assert "holds no adapters yet" in capsys.readouterr().err


def test_generate_on_a_run_that_failed_or_died_before_its_first_checkpoint(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict()))
    run.update_status(state="failed", error="ModelLoadError: no model 'nope'")
    assert main(["generate", "--run-dir", str(run.path), "--prompt", "x"]) == 2
    assert capsys.readouterr().err == (
        f"error: {run.path} failed before saving any adapters (ModelLoadError: no model 'nope'); nothing to "
        f"generate with; fix the cause, then, to train this spec again: python -m prefixlab train {run.spec_path} "
        f"--runs-dir {run.path.parent}\n")
    gone = dead_pid()
    run.update_status(state="running", pid=gone, heartbeat=time.time(), error=None)
    assert main(["generate", "--run-dir", str(run.path), "--prompt", "x"]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {run.path} has no adapters: its worker died (process {gone} is gone) before the first checkpoint")


def test_runs_lists_every_run_with_dead_workers_named(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    assert main(["runs", "--runs-dir", str(runs_dir)]) == 0
    assert capsys.readouterr().err == f"no runs: {runs_dir} does not exist (train something, or pass --runs-dir)\n"
    queue = JobQueue(runs_dir)
    ids = [queue.submit(ExperimentSpec.from_dict({**tiny_spec_dict(), "name": name}))
           for name in ("done", "dead", "failed", "queued")]
    started = 1795700000.0  # 2026-11-26 13:33:20 UTC
    queue.run_dir(ids[0]).update_status(state="done", step=2, total_steps=2, started_at=started)
    gone = dead_pid()
    queue.run_dir(ids[1]).update_status(state="running", step=1, total_steps=2, pid=gone, started_at=started,
                                        heartbeat=time.time())
    queue.run_dir(ids[2]).update_status(state="failed", error="DataError: x.jsonl line 3:\nno 'target'")
    assert main(["runs", "--runs-dir", str(runs_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["id", "name", "model", "state", "step", "started (UTC)", "error"]
    rows = {line.split()[0]: re.split(r"\s{2,}", line) for line in lines[1:]}
    assert list(rows) == ids[::-1]  # newest first
    assert rows[ids[3]] == [ids[3], "queued", "tiny-gpt2", "queued", "0/?", "-"]
    assert rows[ids[2]] == [ids[2], "failed", "tiny-gpt2", "failed", "0/?", "-",
                            "DataError: x.jsonl line 3: no 'target'"]
    assert rows[ids[1]] == [ids[1], "dead", "tiny-gpt2", "failed", "1/2", "2026-11-26 13:33:20",
                            f"worker died without reporting: process {gone} is gone (status.json still says running)"]
    assert rows[ids[0]] == [ids[0], "done", "tiny-gpt2", "done", "2/2", "2026-11-26 13:33:20"]
    assert queue.run_dir(ids[1]).read_status()["state"] == "running"  # listing writes nothing


def test_missing_optional_module_is_a_clear_error():
    with pytest.raises(CliError, match="the GPU check is not available .*prefixlab.no_such_module is missing"):
        _import("prefixlab.no_such_module", "main", "the GPU check")
    with pytest.raises(CliError, match="prefixlab.engine.runs has no main"):
        _import("prefixlab.engine.runs", "main", "x")


def test_engine_bench_pieces():
    assert bench_spec("tiny-gpt2", 3, 2, 64, "paired").variant_names == ["no_projection", "projection"]
    single = bench_spec("tiny-gpt2", 3, 2, 64, "projection")
    assert single.variant_names == ["projection"] and single.variants[0].prefix.prefix_projection
    result = measure_one(bench_spec("tiny-gpt2", 2, 2, 64, "paired"))
    assert result["steps"] == 2 and result["variants"] == 2 and result["tokens"] > 0 and result["peak_mb"] > 0
    one = {"tokens": 100, "setup_s": 1.0, "train_s": 1.0, "tokens_per_s": 100.0, "train_cpu_s": 2.0,
           "tokens_per_cpu_s": 50.0, "peak_mb": 10.0}
    both = {"tokens": 200, "setup_s": 1.0, "train_s": 2.0, "tokens_per_s": 100.0, "train_cpu_s": 2.0,
            "tokens_per_cpu_s": 100.0, "peak_mb": 12.0}
    ratios = compare({"paired": both, "no_projection": one, "projection": one})
    assert ratios == {"throughput_ratio": 1.0, "cpu_throughput_ratio": 2.0, "wall_time_ratio": 0.75,
                      "memory_ratio_vs_both": 0.6, "memory_ratio_vs_larger": 1.2}


def test_gpucheck_arguments_pass_through(monkeypatch):
    import prefixlab.tools.gpucheck

    seen = []
    monkeypatch.setattr(prefixlab.tools.gpucheck, "main", lambda argv: seen.append(argv) or 7)
    assert main(["gpucheck", "--out", "results", "--sections", "parity"]) == 7
    assert main(["gpucheck", "--", "--help"]) == 7
    assert seen == [["--out", "results", "--sections", "parity"], ["--help"]]


def test_core_bench_without_peft_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # import peft now fails
    assert main(["bench", "core", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the core benchmark times prefixlab against PEFT, which is not installed")
    assert "pip install -r tests/requirements.txt" in err


def test_train_under_several_processes_needs_a_run_dir(tmp_path, monkeypatch, capsys):
    """Each process of `accelerate launch` would make its own new run id: one folder each."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", str(spec_path), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: under accelerate launch every process must write the same run: pass --run-dir DIR")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("case", ["missing file", "bad line", "too long", "wrong size"])
def test_train_spec_refuses_what_the_worker_would_fail_on_before_making_a_run(tmp_path, capsys, case):
    """A spec whose data, sizes or lengths the worker would reject at setup: exit 2 with the field and
    the message, and no run folder (the page refuses the same specs beside its form)."""
    bad = tmp_path / "task.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n{"source": "c", target}\n')
    document = tiny_spec_dict(**({"source": str(tmp_path / "missing.jsonl")} if case == "missing file" else
                                 {"source": str(bad)} if case == "bad line" else {}))
    if case == "too long":
        document["training"]["max_length"] = 600
    if case == "wrong size":
        document["prefix"]["num_layers"] = 7
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(document))
    runs = tmp_path / "runs"
    assert main(["train", str(spec_path), "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(f" (in {spec_path})"), err
    assert err.startswith({"missing file": "error: data.source: ", "bad line": "error: data.source: ",
                           "too long": "error: training.max_length: 600 tokens after the 4-token prefix",
                           "wrong size": "error: prefix.num_layers: num_layers=7 does not match"}[case]), err
    if case == "bad line":
        assert "line 2" in err
    assert not runs.exists()


def test_a_second_process_refuses_a_finished_run_without_touching_it(finished_run, tmp_path, monkeypatch, capsys):
    """Under accelerate launch, a process other than the first must refuse what the first refuses (a
    finished run's folder) before writing anything: its spec.json stays the finished run's."""
    import prefixlab.engine.worker

    monkeypatch.setattr(prefixlab.engine.worker, "is_main_process", lambda: False)
    spec = tiny_spec_dict()
    spec["name"] = "another"
    spec_path = tmp_path / "another.json"
    spec_path.write_text(json.dumps(spec))
    before = finished_run.spec_path.read_bytes()
    assert main(["train", str(spec_path), "--run-dir", str(finished_run.path)]) == 2
    assert "already holds a run (done)" in capsys.readouterr().err
    assert finished_run.spec_path.read_bytes() == before


def test_train_run_dir_refuses_a_queued_run_another_worker_has_locked(finished_run, tmp_path, capsys):
    """The page's queue launched a worker on this run a moment ago; it holds worker.lock but has
    not yet written `running`. A `train --run-dir` now must not train the run a second time."""
    run = copy_run(finished_run, tmp_path, state="queued")
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom prefixlab.engine.runs import worker_lock\n"
                               "with worker_lock(sys.argv[1]):\n print('held', flush=True)\n sys.stdin.read()",
                               str(run.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        status = run.status_path.read_bytes()
        assert main(["train", "--run-dir", str(run.path)]) == 2
        assert capsys.readouterr().err == (f"error: {run.path} is already being trained by another worker "
                                           "(its worker is starting); wait for it, or stop it (Stop on the page)\n")
        assert run.status_path.read_bytes() == status
        # train SPEC --run-dir: refused before the spec is overwritten
        spec_before = run.spec_path.read_bytes()
        other = tmp_path / "other.json"
        other.write_text(json.dumps(tiny_spec_dict()))
        assert main(["train", str(other), "--run-dir", str(run.path)]) == 2
        assert "is already being trained by another worker" in capsys.readouterr().err
        assert run.spec_path.read_bytes() == spec_before
    finally:
        holder.kill()
        holder.wait()


def test_train_refuses_a_precision_this_machine_cannot_train_in_before_making_a_run(tmp_path, capsys,
                                                                                     monkeypatch):
    """fp16 needs a GPU: refused like any other setup failure, naming the field, with no run folder."""
    from prefixlab.engine import devices

    monkeypatch.setattr(devices, "training_device_type", lambda: "cpu")  # as here; also on a GPU machine
    spec_path = tmp_path / "fp16.json"
    spec_path.write_text(json.dumps({**tiny_spec_dict(), "training": {**tiny_spec_dict()["training"],
                                                                       "precision": "fp16"}}))
    assert main(["train", str(spec_path), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.startswith("error: training.precision: fp16 needs a CUDA or Apple MPS GPU")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_precision_check_never_asks_a_cuda_gpu(monkeypatch):
    """On CUDA the page's process must not open a CUDA context (the GPU is the worker's), so the
    bf16 check is left to the worker there."""
    from prefixlab.engine import checks as preflight
    from prefixlab.engine import devices

    monkeypatch.setattr(devices, "training_device_type", lambda: "cuda")
    monkeypatch.setattr(devices, "cuda_bf16_native", lambda: pytest.fail("preflight asked the GPU"))
    spec = ExperimentSpec.from_dict({**tiny_spec_dict(), "training": {**tiny_spec_dict()["training"],
                                                                      "precision": "bf16"}})
    assert preflight.precision_errors(spec) == {}
