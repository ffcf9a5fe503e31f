"""The engine under a hostile user and injected faults: each test is one case of the hardening issue
(a garbled status.json beside a queued run, a kill mid-checkpoint, a read-only or full runs folder,
unbounded inputs, a queued run whose spec is bad, a Hub dataset offline, the JSON error wording).
Every process a test starts is ended by that test."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from prefixlab import PrefixTuningModel, get_peft_model
from prefixlab.cli import main
from prefixlab.engine import limits
from prefixlab.engine.data import DataError, load_task, read_records
from prefixlab.engine.runs import DONE, FAILED, QUEUED, JobQueue, RunDir
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.engine.tiny import tiny_model, tiny_tokenizer

from core_helpers import ours_config, randomize_prefix
from test_cli import tiny_spec_dict


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")


# ---------------------------------------------------------------------------------------------
# 1. One job at a time, whatever status.json says

# The stand-in worker of tests/test_runs.py, holding its run's worker.lock as the real one does.
LOCKING_WORKER = textwrap.dedent("""
    import fcntl, json, os, signal, sys, time
    run = sys.argv[sys.argv.index("--run-dir") + 1]
    lock = os.open(os.path.join(run, "worker.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    status_path = os.path.join(run, "status.json")
    def update(**changes):
        try:
            with open(status_path) as f:
                status = json.load(f)
        except ValueError:  # garbled by someone else: the worker owns the file and rewrites it
            status = {}
        status.update(changes, updated_at=time.time(), heartbeat=time.time())
        with open(status_path + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(status_path + ".tmp", status_path)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    update(state="running", pid=os.getpid())
    while not stop and not os.path.exists(os.path.join(run, "release")):
        if not os.path.isdir(run):  # the test's tmp dir is gone: never outlive the test session
            sys.exit(1)
        time.sleep(0.02)
    update(state="cancelled" if stop else "done", finished_at=time.time())
""")


@pytest.fixture
def locking_queue(tmp_path):
    script = tmp_path / "locking_worker.py"
    script.write_text(LOCKING_WORKER)
    queue = JobQueue(tmp_path / "runs", worker_command=[sys.executable, str(script)])
    yield queue
    for proc in queue._children.values():  # no worker outlives the test, whichever assertion failed
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_garbage_in_a_running_run_s_status_json_never_starts_a_second_worker(locking_queue):
    """The probe: with A training and B queued, `echo 'garbage{{{' > A/status.json` a few times made
    A read as failed and the queue started B beside it. The held worker.lock says A is training."""
    queue = locking_queue
    a, b = queue.submit(ExperimentSpec(name="a")), queue.submit(ExperimentSpec(name="b"))
    assert queue.poll() == a
    run_a = queue.run_dir(a)
    wait_for(lambda: run_a.read_status().get("pid"), what="A's worker pid")
    for _ in range(5):
        run_a.status_path.write_text("garbage{{{\n")
        assert run_a.read_status()["state"] == FAILED  # what status.json alone says
        assert queue.poll() is None
        assert queue.run_dir(b).read_status()["state"] == QUEUED
    assert len([p for p in queue._children.values() if p.poll() is None]) == 1
    # Another app's queue on the same folder (no child of its own) also goes by the lock.
    other = JobQueue(queue.runs_dir, worker_command=queue.worker_command)
    assert other.poll() is None and queue.run_dir(b).read_status()["state"] == QUEUED
    run_a.path.joinpath("release").touch()
    wait_for(lambda: queue._children[a].poll() is not None, what="A's worker to exit")
    wait_for(lambda: queue.poll() == b, what="B to start once A's worker is gone")
    queue.run_dir(b).path.joinpath("release").touch()
    wait_for(lambda: queue.run_dir(b).read_status()["state"] == DONE, what="B done")


# ---------------------------------------------------------------------------------------------
# 2. A checkpoint killed at any moment


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (no except/finally of the code under test
    catches a BaseException it does not know)."""


def _two_variant_model(seed: int):
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False), adapter_name="no_projection")
    model.add_adapter("projection", ours_config("gpt2", True))
    randomize_prefix(model, "no_projection", seed=seed)
    randomize_prefix(model, "projection", seed=seed + 1)
    return model


def _readable(folder: Path) -> torch.Tensor:
    """The stored prefix of the adapter in `folder`, loaded as any reader loads it."""
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), str(folder))
    return loaded.get_prompt_embedding_to_save("default")


@pytest.mark.parametrize("kill_at", range(1, 7))
def test_a_checkpoint_killed_between_any_two_file_operations_leaves_every_variant_readable(
        tmp_path, monkeypatch, kill_at):
    """Kill the worker at its `kill_at`-th rename/replace of the second checkpoint: adapters/<v> itself
    still holds a whole adapter (the last checkpoint's or the new one's), for every variant. (The old
    scheme renamed adapters/<v> away, then the new folder in: killed between the two, no adapters/<v>.)"""
    from prefixlab.engine.worker import save_adapter

    run = RunDir(tmp_path / "run")
    first, second = _two_variant_model(1), _two_variant_model(10)
    for name in ("no_projection", "projection"):
        save_adapter(first, name, run.adapter_path(name))
    old = {n: first.get_prompt_embedding_to_save(n) for n in ("no_projection", "projection")}
    new = {n: second.get_prompt_embedding_to_save(n) for n in ("no_projection", "projection")}
    calls = []

    def counted(real):
        def op(*args, **kwargs):
            calls.append(args)
            if len(calls) == kill_at:
                raise Killed
            return real(*args, **kwargs)
        return op

    monkeypatch.setattr(os, "replace", counted(os.replace))
    monkeypatch.setattr(os, "rename", counted(os.rename))
    try:
        for name in ("no_projection", "projection"):
            save_adapter(second, name, run.adapter_path(name))
    except Killed:
        pass
    monkeypatch.undo()
    if len(calls) < kill_at:
        pytest.skip(f"the checkpoint makes only {len(calls)} renames")
    for name in ("no_projection", "projection"):
        stored = _readable(run.adapter_path(name))  # the folder itself, no repair
        assert torch.equal(stored, old[name]) or torch.equal(stored, new[name]), name
    assert run.trained_variants() == ["no_projection", "projection"]
    for name in ("no_projection", "projection"):  # the next checkpoint completes over what was left
        save_adapter(second, name, run.adapter_path(name))
        assert torch.equal(_readable(run.adapter_path(name)), new[name])
    assert sorted(p.name for p in run.adapters_path.iterdir()) == ["no_projection", "projection"]


def _strand(run: RunDir, variant: str, newer_model=None) -> None:
    """What the old save_adapter left when killed between its two renames: adapters/<v> renamed to
    .<v>.old, the new checkpoint complete in .<v>.tmp, no adapters/<v>."""
    target = run.adapter_path(variant)
    old = target.with_name(f".{variant}.old")
    os.rename(target, old)
    tmp = target.with_name(f".{variant}.tmp")
    if newer_model is None:
        shutil.copytree(old, tmp)
    else:
        newer_model.save_adapter_files(variant, str(tmp))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from prefixlab.engine.worker import run_worker

    run = RunDir(tmp_path_factory.mktemp("hardening") / "run")
    run.write_spec(ExperimentSpec.from_dict(tiny_spec_dict()))
    assert run_worker(run.path, progress=False) == DONE
    return run


def test_a_checkpoint_stranded_by_the_old_scheme_is_found_by_every_reader(trained_run, tmp_path, capsys):
    run = RunDir(shutil.copytree(trained_run.path, tmp_path / "run"))
    newer = _two_variant_model(20)
    _strand(run, "projection", newer_model=newer)
    assert not run.adapter_path("projection").exists()
    # The CLI's generate lists every variant (it listed base and no_projection only).
    assert main(["generate", "--run-dir", str(run.path), "--prompt", "name[Aromi]"]) == 0
    out = capsys.readouterr().out
    assert "      projection: " in out and "   no_projection: " in out
    # ... and repaired the folder: the newer copy (.tmp) became adapters/projection, the rest is gone.
    assert sorted(p.name for p in run.adapters_path.iterdir()) == ["no_projection", "projection"]
    assert torch.equal(_readable(run.adapter_path("projection")), newer.get_prompt_embedding_to_save("projection"))
    assert run.trained_variants() == ["no_projection", "projection"]


def test_a_stranded_checkpoint_is_read_in_place_while_a_worker_holds_the_run(trained_run, tmp_path):
    """A worker holds the run (it may be mid-save): a reader changes nothing, and reads the copy."""
    from prefixlab.engine.runs import worker_lock

    run = RunDir(shutil.copytree(trained_run.path, tmp_path / "run"))
    _strand(run, "projection")
    os.rename(run.adapters_path / ".projection.tmp", run.adapters_path / "gone")  # only .old this time
    shutil.rmtree(run.adapters_path / "gone")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()",
         str(run.path / "worker.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run.trained_variants() == ["no_projection", "projection"]
        assert run.adapter_dir("projection") == run.adapters_path / ".projection.old"
        assert not run.adapter_path("projection").exists()  # left for the worker's next checkpoint
    finally:
        holder.kill()
        holder.wait()
    with worker_lock(run.path):  # the worker itself (or, once it is gone, any reader) repairs it
        pass
    assert run.adapter_dir("projection") == run.adapter_path("projection")
    assert sorted(p.name for p in run.adapters_path.iterdir()) == ["no_projection", "projection"]


# ---------------------------------------------------------------------------------------------
# 3. Read-only, missing or full runs folder


def _enospc(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_train_into_a_full_runs_folder_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys, monkeypatch):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()

    def full(path, obj):
        raise _enospc(path)

    monkeypatch.setattr("prefixlab.engine.runs.atomic_write_json", full)
    assert main(["train", str(spec_path), "--runs-dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no space left on device writing ")
    assert "spec.json: free space on that disk" in err and "Traceback" not in err
    assert list(runs_dir.iterdir()) == []  # no empty run folder left behind
    assert main(["train", str(spec_path), "--run-dir", str(tmp_path / "new" / "run")]) == 2
    assert not (tmp_path / "new").exists()  # --run-dir's folders, made for the run, are gone too
    capsys.readouterr()


def test_train_into_a_read_only_runs_folder_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec_dict()))
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    real = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.parent == runs_dir:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["train", str(spec_path), "--runs-dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: read-only file system writing {runs_dir}/")
    assert "use a folder you can write to (--runs-dir DIR)" in err
    assert list(runs_dir.iterdir()) == []


def test_submit_to_a_full_runs_folder_raises_naming_it_and_leaves_no_run_folder(tmp_path, monkeypatch):
    from prefixlab.engine import runs

    queue = JobQueue(tmp_path / "runs")
    real = runs.atomic_write_json

    def full_at_status(path, obj):
        if Path(path).name == "status.json":
            raise _enospc(path)
        return real(path, obj)

    monkeypatch.setattr(runs, "atomic_write_json", full_at_status)
    with pytest.raises(OSError) as caught:
        queue.submit(ExperimentSpec())
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value).startswith(f"cannot queue the run in {queue.runs_dir}: no space left on device")
    assert list(queue.runs_dir.iterdir()) == []


def test_the_queue_thread_says_why_it_cannot_poll_once_not_every_second(tmp_path, monkeypatch, capsys):
    queue = JobQueue(tmp_path / "runs")
    failure = [PermissionError(errno.EACCES, "Permission denied", str(queue.runs_dir / ".queue.lock"))]

    def poll():
        if failure:
            raise failure[0]
        return None

    monkeypatch.setattr(queue, "poll", poll)
    queue.start_background(interval=0.01)
    try:
        time.sleep(0.3)  # some 30 failing polls
        failure[0] = OSError(errno.EIO, "Input/output error", str(queue.runs_dir / "x" / "status.json"))
        time.sleep(0.2)
        failure.clear()
        time.sleep(0.2)
    finally:
        queue.stop_background()
        queue._thread.join(2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert lines[0] == (f"prefixlab queue: cannot poll {queue.runs_dir}: permission denied reading or writing "
                        f"{queue.runs_dir}/.queue.lock: use a folder you can write to (--runs-dir DIR) or change its "
                        "permissions (retrying; said again only if the cause changes)")
    assert "Input/output error" in lines[1]
    assert lines[2] == f"prefixlab queue: polling {queue.runs_dir} works again"


def test_a_worker_that_fills_the_disk_mid_run_records_failed_with_the_cause(tmp_path, monkeypatch):
    """From step 3 no file can be created or grow (metrics.jsonl, log.txt, a temp status.json): the
    worker still records `failed` and why, overwriting status.json in place."""
    from prefixlab.engine import loggers, runs, worker

    full = []
    real_after_step, real_append = worker.Job._after_step, worker.append_jsonl

    def after_step(self, epoch):
        if self.step == 3:
            full.append(True)
        return real_after_step(self, epoch)

    def append(path, obj):
        if full:
            raise _enospc(path)
        return real_append(path, obj)

    def no_temp(path):
        if full:
            raise _enospc(path.parent / f".{path.name}.tmp")
        return real_create_temp(path)

    def no_log(self, message):
        if full:
            raise _enospc(self.log_path)
        return real_log(self, message)

    real_create_temp, real_log = runs._create_temp, RunDir.log
    monkeypatch.setattr(worker.Job, "_after_step", after_step)
    monkeypatch.setattr(worker, "append_jsonl", append)  # samples.jsonl
    monkeypatch.setattr(loggers, "append_jsonl", append)  # metrics.jsonl
    monkeypatch.setattr(runs, "_create_temp", no_temp)
    monkeypatch.setattr(RunDir, "log", no_log)
    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict({**tiny_spec_dict(), "training": {
        **tiny_spec_dict()["training"], "max_steps": 4, "eval_interval": 2}}))
    assert worker.run_worker(run.path, progress=False) == FAILED
    status = json.loads(run.status_path.read_text())
    assert status["state"] == FAILED and status["finished_at"]
    assert status["error"].startswith(f"no space left on device writing {run.metrics_path}: free space on that disk")
    assert not list(run.path.glob(".status.json.*"))  # no temp file left
    assert run.trained_variants() == ["no_projection", "projection"]  # the step-2 checkpoint is kept


# ---------------------------------------------------------------------------------------------
# 4. Unbounded inputs


def test_a_task_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    path.write_text('{"source": "a", "target": "b"}\n' * 100)  # 3,100 bytes, a good file
    monkeypatch.setattr(limits, "MAX_TASK_FILE_BYTES", 1000)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda file, *a, **k: opened.append(file) or real_open(file, *a, **k))
    with pytest.raises(DataError) as caught:
        load_task(str(path))
    assert str(caught.value) == (f"{path}: the file is 3,100 bytes, over the limit of 1,000 bytes for a task file "
                                 "(MAX_TASK_FILE_BYTES in prefixlab/engine/limits.py); use a smaller file (fewer "
                                 "examples, or shorter ones)")
    assert str(path) not in map(str, opened)


def test_a_line_over_the_limit_is_refused_while_reading_without_holding_it(tmp_path, monkeypatch):
    """The probe's 200 MB line took 4 minutes and 6.5 GB; a 20 MB stand-in under a 1,000-character
    limit is refused by its line number while never more than a line's limit is held."""
    path = tmp_path / "long.jsonl"
    with open(path, "w") as f:
        f.write('{"source": "a", "target": "b"}\n')
        f.write('{"source": "' + "x" * 20_000_000 + '", "target": "b"}\n')
    monkeypatch.setattr(limits, "MAX_LINE_CHARS", 1000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            read_records(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (f"{path}, line 2 is longer than 1,000 characters, the limit for one record "
                                 "(MAX_LINE_CHARS in prefixlab/engine/limits.py); shorten its texts or remove it")
    assert peak < 2_000_000, f"held {peak:,} bytes"


def test_a_csv_record_or_json_item_over_the_limit_is_refused_by_where_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_LINE_CHARS", 50)
    csv_path = tmp_path / "t.csv"
    csv_path.write_text('source,target\na,b\n"' + "x\n" * 40 + '",b\n')  # a quoted field over 40 short lines
    with pytest.raises(DataError, match=rf"^{csv_path}, line 3: the record starting here is longer than 50 "):
        read_records(csv_path)
    json_path = tmp_path / "t.json"
    json_path.write_text(json.dumps([{"source": "a", "target": "b"}, {"source": "y" * 60, "target": "b"}]))
    with pytest.raises(DataError, match=rf"^{json_path}, item 2 is longer than 50 characters"):
        read_records(json_path)
    json_path.write_text(json.dumps([{"source": "a" * 20, "target": "b"}] * 5))  # one line, short items: fine
    assert len(read_records(json_path)) == 5


def test_samples_store_each_text_clipped(tmp_path):
    from prefixlab.engine.worker import run_worker

    long_prompt = "name[Aromi] " + "y" * 5000
    document = tiny_spec_dict()
    document["generation"] = {**document["generation"], "prompts": [long_prompt]}
    run = RunDir(tmp_path / "run")
    run.write_spec(ExperimentSpec.from_dict(document))
    assert run_worker(run.path, progress=False) == DONE
    (sample,) = run.read_samples()
    assert sample["prompt"] == limits.clip(long_prompt) and len(sample["prompt"]) < 2100
    assert sample["prompt"].endswith(f"… ({len(long_prompt) - limits.MAX_SAMPLE_CHARS:,} more characters)")
    assert all(len(text) <= len(limits.clip("z" * 10**6)) for text in sample["outputs"].values())


def test_a_typed_prompt_over_the_limit_is_refused_naming_it(trained_run, capsys):
    from prefixlab.engine.generation import generate_outputs

    prompt = "x" * (limits.MAX_PROMPT_CHARS + 1)
    model = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), str(trained_run.adapter_path("projection")),
                                              adapter_name="projection")
    spec = trained_run.read_spec()
    with pytest.raises(ValueError, match=r"^the prompt is 20,001 characters, over the limit of 20,000 "
                                         r"\(MAX_PROMPT_CHARS in prefixlab/engine/limits.py\)"):
        generate_outputs(model, tiny_tokenizer(), "CAUSAL_LM", spec, prompt, ["projection"], "cpu")
    assert main(["generate", "--run-dir", str(trained_run.path), "--prompt", prompt]) == 2
    assert capsys.readouterr().err.startswith("error: the prompt is 20,001 characters, over the limit of 20,000")


def test_beams_and_new_tokens_times_beams_are_bounded_naming_the_fields(trained_run, capsys):
    with pytest.raises(SpecError) as caught:
        ExperimentSpec.from_dict({"generation": {"strategy": "beam", "num_beams": 100000}})
    assert caught.value.errors == {"generation.num_beams": "100,000 beams is over the limit of 32 (MAX_BEAMS in "
                                                           "prefixlab/engine/limits.py); use at most 32"}
    with pytest.raises(SpecError) as caught:
        ExperimentSpec.from_dict({"generation": {"strategy": "beam", "num_beams": 32, "max_new_tokens": 2000}})
    assert caught.value.errors == {"generation.max_new_tokens": (
        "generation.max_new_tokens=2,000 x generation.num_beams=32 is 64,000 tokens per prompt, over the limit of "
        "32,768 (MAX_GENERATION_TOKENS in prefixlab/engine/limits.py); lower max_new_tokens to at most 1,024 or "
        "use fewer beams")}
    ExperimentSpec.from_dict({"generation": {"strategy": "beam", "num_beams": 32, "max_new_tokens": 1024}})
    # `generate --max-new-tokens` goes through the same check, before any model is loaded.
    assert main(["generate", "--run-dir", str(trained_run.path), "--prompt", "x", "--max-new-tokens", "40000"]) == 2
    assert capsys.readouterr().err == (
        "error: --max-new-tokens (generation.max_new_tokens): 40,000 new tokens per prompt is over the limit of "
        "32,768 (MAX_GENERATION_TOKENS in prefixlab/engine/limits.py); use at most 32,768\n")


# ---------------------------------------------------------------------------------------------
# 5. A queued run whose spec.json is bad


def test_a_queued_run_with_a_bad_spec_fails_with_the_worker_s_own_words(tmp_path):
    """The real `python -m prefixlab train --run-dir` refuses the spec (exit 2, `error: ...` in
    log.txt); the run's error says so, naming the file, not only "exit code 2"."""
    queue = JobQueue(tmp_path / "runs")
    run = queue.run_dir(queue.submit(ExperimentSpec()))
    run.spec_path.write_text('{"training": {"max_steps": -1}}')  # edited by hand after queueing
    assert queue.poll() == run.run_id
    try:
        wait_for(lambda: queue._children[run.run_id].poll() is not None, timeout=60, what="the worker to exit")
    finally:
        if queue._children[run.run_id].poll() is None:
            queue._children[run.run_id].kill()
    queue.poll()
    status = run.read_status()
    assert status["state"] == FAILED
    assert status["error"] == (f"worker died without reporting: exit code 2; it said: training.max_steps: must be "
                               f">= 1, got -1 (in {run.spec_path})")


# ---------------------------------------------------------------------------------------------
# 6. A Hub dataset that cannot be downloaded


def test_a_hub_dataset_offline_and_not_cached_is_refused_before_queueing(tmp_path, monkeypatch):
    from prefixlab.engine import checks

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = ExperimentSpec.from_dict({"data": {"source": "nobody-xyz/no-such-dataset"}})
    start = time.perf_counter()
    errors = checks.check(spec).errors
    assert time.perf_counter() - start < 3
    assert errors == {"data.source": (
        "the Hub dataset 'nobody-xyz/no-such-dataset' cannot be downloaded (HF_HUB_OFFLINE is set) and is not in the "
        "local Hugging Face cache; use the built-in task 'e2e-synth' or a local .jsonl/.csv file, or connect to the "
        "Hub and unset HF_HUB_OFFLINE")}
    (tmp_path / "datasets" / "nobody-xyz___no-such-dataset").mkdir(parents=True)  # prepared before, offline now
    assert checks.check(spec).errors == {}
    shutil.rmtree(tmp_path / "datasets")
    (tmp_path / "hub" / "datasets--nobody-xyz--no-such-dataset").mkdir(parents=True)  # downloaded files
    assert checks.check(spec).errors == {}


# ---------------------------------------------------------------------------------------------
# 8. The JSON error's wording


def test_a_bad_jsonl_line_s_message_reads_once(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"source": "a", "target": "b"}\n{"source": "a\n')
    with pytest.raises(DataError) as caught:
        read_records(path)
    assert str(caught.value) == (f"{path}, line 2: bad JSON (Unterminated string starting at column 12); each line "
                                 "must be one JSON object like {\"source\": ..., \"target\": ...}")
    path.write_text('{"source": "a", "target" "b"}\n')
    with pytest.raises(DataError, match=r"line 1: bad JSON \(Expecting ':' delimiter at column 26\)"):
        read_records(path)
