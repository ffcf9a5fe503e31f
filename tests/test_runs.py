"""The run directory's file primitives and the job queue, with a stand-in worker process.

The stand-in speaks the worker's side of the contract (status.json with its pid; a final state on
SIGTERM or when released) in plain Python, so these tests exercise the queue's process handling in
a fraction of a second per run. tests/test_worker_e2e.py does the same with the real worker.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import textwrap
import time
from pathlib import Path

import pytest

from prefixlab.views import tables as compare
from prefixlab.engine.spec import ExperimentSpec, SpecError
from prefixlab.engine.runs import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUE_LAUNCH_ENV,
    QUEUED,
    RUNNING,
    JobQueue,
    RunBusy,
    RunDir,
    RunFileError,
    RunFileUnreadable,
    append_jsonl,
    atomic_write_json,
    read_jsonl,
    why_worker_dead,
    worker_lock,
    worker_lock_held,
)

FAKE_WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    run = sys.argv[sys.argv.index("--run-dir") + 1]
    status_path = os.path.join(run, "status.json")
    def update(**changes):
        with open(status_path) as f:
            status = json.load(f)
        status.update(changes, updated_at=time.time(), heartbeat=time.time())
        with open(status_path + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(status_path + ".tmp", status_path)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    update(state="running", pid=os.getpid())
    while not stop and not os.path.exists(os.path.join(run, "release")) \
            and not os.path.exists(os.path.join(run, "cancel")):
        if not os.path.isdir(run):  # the test's tmp dir is gone: never outlive the test session
            sys.exit(1)
        time.sleep(0.02)
    cancelled = stop or os.path.exists(os.path.join(run, "cancel"))
    update(state="cancelled" if cancelled else "done", finished_at=time.time())
""")


@pytest.fixture
def queue(tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return JobQueue(tmp_path / "runs", worker_command=[sys.executable, str(script)])


def spec(name="exp") -> ExperimentSpec:
    return ExperimentSpec(name=name)


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def worker_pid(queue, run_id):
    run = queue.run_dir(run_id)
    wait_for(lambda: run.read_status().get("pid"))
    return run.read_status()["pid"]


# ---------------------------------------------------------------------------------------------
# File primitives


def test_atomic_write_json_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "status.json"
    atomic_write_json(path, {"state": "queued"})
    atomic_write_json(path, {"state": "running", "step": 3})
    assert json.loads(path.read_text()) == {"state": "running", "step": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_read_jsonl_skips_a_half_written_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": 2.0})
    append_jsonl(path, {"step": 2, "loss": float("nan")})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a writer caught mid-line
    records = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["loss"] != records[1]["loss"]  # NaN survives the round trip
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_atomic_write_json_respects_the_umask_like_open(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "status.json", {"state": "queued"})
        with open(tmp_path / "log.txt", "w"):
            pass
    finally:
        os.umask(old)
    assert oct((tmp_path / "status.json").stat().st_mode & 0o777) == oct(0o640)
    assert (tmp_path / "status.json").stat().st_mode == (tmp_path / "log.txt").stat().st_mode


def test_read_jsonl_skips_bad_complete_lines_with_a_warning_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})
    with open(path, "ab") as f:
        f.write(b'{"step": 2, "lo\n')  # torn by a killed writer, then appended after
        f.write(b"[1, 2]\n")
        f.write(b'{"step": "\xff"}\n')
    append_jsonl(path, {"step": 5})
    with open(path, "a") as f:
        f.write('{"step": 6')  # the torn last line: skipped silently, as before
    with pytest.warns(UserWarning) as caught:
        records = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 5]
    assert [str(w.message) for w in caught] == [
        f"{path} line 2 is not valid JSON (Unterminated string starting at column 13); skipped it",
        f"{path} line 3 is a JSON list, not an object; skipped it",
        f"{path} line 4 is not UTF-8 text (byte 0xff at position 10); skipped it",
    ]


def test_a_bad_metrics_line_or_summary_does_not_stop_the_comparison_table(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_spec(spec())
    append_jsonl(run.metrics_path, {"variant": "projection", "step": 1, "loss": 2.0, "time": 1.0})
    with open(run.metrics_path, "a") as f:
        f.write("not json\n")
    append_jsonl(run.metrics_path, {"variant": "projection", "step": 2, "loss": 1.5, "time": 2.0})
    run.summary_path.write_text("{")
    with pytest.warns(UserWarning, match="summary.json is not valid JSON"):
        assert run.read_summary() is None
    with pytest.warns(UserWarning) as caught:
        rows = {r["variant"]: r for r in compare.comparison_table(run.path)}
    assert rows["projection"]["train loss"] == 1.5
    assert any("metrics.jsonl line 2 is not valid JSON" in str(w.message) for w in caught)
    run.spec_path.write_text("{")  # a bad spec.json: the variants come from the metrics
    with pytest.warns(UserWarning) as caught:
        assert [r["variant"] for r in compare.comparison_table(run.path)] == ["projection"]
        assert compare.output_grid(run.path)[0] == ["prompt", "base"]
    assert any(f"{run.spec_path} is not valid JSON" in str(w.message) for w in caught)


def test_bad_spec_json_errors_name_the_file(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.spec_path.write_text("{\n")
    with pytest.raises(RunFileError, match=rf"^{run.spec_path} is not valid JSON \(Expecting property name"):
        run.read_spec()
    run.spec_path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(RunFileError, match=rf"^{run.spec_path} is not UTF-8 text \(byte 0xff at position 10\)"):
        run.read_spec()
    run.spec_path.write_text('{"training": {"max_steps": -1}}')
    with pytest.raises(SpecError, match=rf"training.max_steps: .* \(in {run.spec_path}\)$"):
        run.read_spec()


def test_run_dir_readers_on_a_fresh_run(tmp_path):
    run = RunDir(tmp_path / "r1")
    run.write_spec(spec("fresh"))
    assert run.read_spec().name == "fresh"
    assert run.read_status() == {} and run.read_metrics() == [] and run.read_samples() == []
    assert run.read_summary() is None and run.log_tail() == ""
    for i in range(5):
        run.log(f"line {i}")
    assert run.log_tail(2).splitlines()[-1].endswith("line 4") and len(run.log_tail(2).splitlines()) == 2
    with pytest.raises(FileNotFoundError, match="spec.json does not exist"):
        RunDir(tmp_path / "nothing").read_spec()


# ---------------------------------------------------------------------------------------------
# Queue


def test_submit_writes_spec_and_queued_status(queue):
    run_id = queue.submit(spec("My Paired Run!"))
    run = queue.run_dir(run_id)
    assert run_id.endswith("my-paired-run")
    assert run.read_spec().to_dict() == spec("My Paired Run!").to_dict()
    assert run.read_status()["state"] == QUEUED
    second = queue.submit(spec("My Paired Run!"))
    assert second != run_id and sorted([run_id, second]) == [run_id, second]  # unique and sortable
    assert [i.run_id for i in queue.list_runs()] == [second, run_id]  # newest first


def test_one_job_at_a_time_first_come_first_served(queue):
    first, second = queue.submit(spec("a")), queue.submit(spec("b"))
    assert queue.poll() == first
    pid = worker_pid(queue, first)
    assert queue.poll() is None and queue.active_run() == first
    assert queue.run_dir(second).read_status()["state"] == QUEUED
    (queue.run_dir(first).path / "release").touch()
    wait_for(lambda: queue.run_dir(first).read_status()["state"] == DONE)
    wait_for(lambda: queue.poll() == second)
    assert worker_pid(queue, second) != pid
    (queue.run_dir(second).path / "release").touch()
    wait_for(lambda: queue.run_dir(second).read_status()["state"] == DONE)


def test_cancel_queued_and_running(queue):
    running, queued = queue.submit(spec("a")), queue.submit(spec("b"))
    queue.poll()
    worker_pid(queue, running)
    assert queue.cancel(queued) == CANCELLED
    queue.cancel(running)  # SIGTERM: the worker saves and reports cancelled itself
    wait_for(lambda: queue.run_dir(running).read_status()["state"] == CANCELLED)
    wait_for(lambda: queue.active_run() is None)
    assert queue.poll() is None  # the cancelled queued run never starts
    assert queue.run_dir(queued).read_status()["state"] == CANCELLED
    with pytest.raises(ValueError, match="no run 'nope'"):
        queue.cancel("nope")


def test_killed_child_is_marked_failed_and_next_run_starts(queue):
    doomed, nxt = queue.submit(spec("a")), queue.submit(spec("b"))
    queue.poll()
    os.kill(worker_pid(queue, doomed), signal.SIGKILL)
    wait_for(lambda: queue.poll() == nxt)
    status = queue.run_dir(doomed).read_status()
    assert status["state"] == FAILED
    assert status["error"] == "worker died without reporting: killed by signal SIGKILL"
    assert "worker died without reporting" in queue.run_dir(doomed).log_tail()
    queue.cancel(nxt)
    wait_for(lambda: queue.run_dir(nxt).read_status()["state"] == CANCELLED)


def test_a_worker_dying_during_poll_is_marked_failed_before_the_next_run_starts(queue, monkeypatch):
    """The worker dies after poll's pass over dead workers and before its check for an active run
    (a race the full suite once hit): the next run may start, but only with the dead one marked."""
    doomed, nxt = queue.submit(spec("a")), queue.submit(spec("b"))
    queue.poll()
    pid, first_pass = worker_pid(queue, doomed), queue._mark_dead_workers
    passes = []

    def then_die():
        first_pass()
        if not passes:
            os.kill(pid, signal.SIGKILL)
            queue._children[doomed].wait()
        passes.append(1)

    monkeypatch.setattr(queue, "_mark_dead_workers", then_die)
    assert queue.poll() == nxt
    assert queue.run_dir(doomed).read_status()["state"] == FAILED
    queue.cancel(nxt)
    wait_for(lambda: queue.run_dir(nxt).read_status()["state"] == CANCELLED)


def test_restarted_queue_finds_dead_and_live_workers_on_disk(queue, tmp_path):
    live, dead = queue.submit(spec("live")), queue.submit(spec("dead"))
    queue.poll()
    worker_pid(queue, live)
    # A run left "running" by a worker that no longer exists, as after a crash of app and worker.
    gone = queue.run_dir(dead)
    gone.update_status(state=RUNNING, pid=_dead_pid(), heartbeat=time.time())
    restarted = JobQueue(queue.runs_dir, worker_command=queue.worker_command)
    assert restarted.poll() is None  # the live worker (not its child) still holds the device
    assert gone.read_status()["state"] == FAILED
    assert gone.read_status()["error"].startswith("worker died without reporting: process ")
    assert restarted.active_run() == live
    restarted.cancel(live)
    wait_for(lambda: restarted.run_dir(live).read_status()["state"] == CANCELLED)
    queue.poll()  # reap our child


def test_run_left_starting_by_a_stopped_app_is_marked_failed_once_its_heartbeat_is_stale(tmp_path):
    queue = JobQueue(tmp_path / "runs")
    run = queue.run_dir(queue.submit(spec()))
    run.update_status(state=RUNNING, pid=None, heartbeat=time.time())  # as _launch leaves it
    other = JobQueue(queue.runs_dir, heartbeat_timeout=0.5)
    assert other.poll() is None  # fresh: another app may be starting its worker right now
    assert run.read_status()["state"] == RUNNING
    time.sleep(0.6)
    assert other.poll() is None
    assert run.read_status()["error"] == ("worker died without reporting: the worker never recorded its pid "
                                          "(the app stopped while starting it?)")


def test_two_apps_on_one_runs_folder_run_its_queue_once(queue):
    """A second `python app.py` on the same runs folder: neither queue fails the run the other is
    starting, and no run starts twice or beside another."""
    other = JobQueue(queue.runs_dir, worker_command=queue.worker_command)
    first, second = queue.submit(spec("first")), queue.submit(spec("second"))
    assert queue.poll() == first
    for _ in range(5):  # the other app's timer ticks while the first app's worker starts and runs
        assert other.poll() is None
        assert queue.run_dir(first).read_status()["state"] == RUNNING
    worker_pid(queue, first)
    queue.run_dir(first).path.joinpath("release").touch()
    wait_for(lambda: queue.run_dir(first).read_status()["state"] == DONE)
    assert other.poll() == second  # whichever app polls next starts it
    assert queue.poll() is None
    queue.run_dir(second).path.joinpath("release").touch()
    wait_for(lambda: queue.run_dir(second).read_status()["state"] == DONE)


def test_stale_heartbeat_marks_a_frozen_worker_failed(tmp_path):
    queue = JobQueue(tmp_path / "runs", heartbeat_timeout=5)
    run = queue.run_dir(queue.submit(spec()))
    # This test process stands in for a worker that is alive but frozen.
    run.update_status(state=RUNNING, pid=os.getpid(), heartbeat=time.time() - 60)
    assert queue.poll() is None
    status = run.read_status()
    assert status["state"] == FAILED and "no heartbeat for over 5 s" in status["error"]


def test_a_corrupt_status_json_is_a_failed_run_and_the_queue_goes_on(queue):
    broken, waiting = queue.submit(spec("broken")), queue.submit(spec("waiting"))
    queue.run_dir(broken).status_path.write_text("")  # e.g. a full disk, or a hand edit
    assert queue.active_run() is None
    assert queue.poll() == waiting
    info = {i.run_id: i for i in queue.list_runs()}[broken]
    assert info.state == FAILED and info.name == "broken"
    assert info.error == (f"{queue.run_dir(broken).status_path} is not valid JSON (Expecting value at line 1 "
                          "column 1); the run's state is unknown, so it counts as failed")
    (queue.run_dir(waiting).path / "release").touch()
    wait_for(lambda: queue.run_dir(waiting).read_status()["state"] == DONE)
    queue.run_dir(broken).status_path.write_text("[]")  # valid JSON, not an object
    assert "holds a JSON list, not an object" in queue.run_dir(broken).read_status()["error"]


def test_the_queue_tells_its_worker_which_run_it_marked_running(tmp_path):
    record = "import os, sys; open(sys.argv[-1] + '/env', 'w').write(os.environ.get(sys.argv[1], ''))"
    queue = JobQueue(tmp_path / "runs", worker_command=[sys.executable, "-c", record, QUEUE_LAUNCH_ENV])
    run = queue.run_dir(queue.submit(spec()))
    queue.poll()
    wait_for(lambda: (run.path / "env").exists() and (run.path / "env").read_text())
    assert (run.path / "env").read_text() == str(run.path)


def test_why_worker_dead_from_status_alone():
    now = time.time()
    assert why_worker_dead({"pid": os.getpid(), "heartbeat": now}) is None
    assert why_worker_dead({"pid": _dead_pid(), "heartbeat": now}).startswith("process ")
    assert why_worker_dead({"pid": os.getpid(), "heartbeat": now - 90}) == "no heartbeat for over 60 s"
    starting = {"pid": None, "heartbeat": now}  # as JobQueue._launch leaves it
    assert why_worker_dead(starting, starting_is_alive=True) is None
    assert why_worker_dead(starting).startswith("the worker never recorded its pid")
    assert why_worker_dead({"pid": None, "heartbeat": now - 90}, starting_is_alive=True) is not None


def test_background_thread_starts_queued_runs(queue):
    run_id = queue.submit(spec())
    queue.start_background(interval=0.05)
    try:
        wait_for(lambda: queue.run_dir(run_id).read_status().get("pid"))
        (queue.run_dir(run_id).path / "release").touch()
        wait_for(lambda: queue.run_dir(run_id).read_status()["state"] == DONE)
    finally:
        queue.stop_background()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_status_json_the_system_cannot_read_is_never_taken_for_a_failed_run(queue, monkeypatch):
    """An OS error reading status.json (a stale NFS handle, too many open files) says nothing about the
    run: a read retries, then raises; the queue starts nothing on it, and no status is written from it.
    (Made up as failed, it once let the queue start a second run beside a live one.)"""
    live, waiting = queue.submit(spec("live")), queue.submit(spec("waiting"))
    queue.poll()
    worker_pid(queue, live)
    path, real, failures = queue.run_dir(live).status_path, Path.read_bytes, []

    def flaky(self):
        if self == path and failures:
            failures.pop()
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", flaky)
    failures[:] = [1, 1]  # two failures: the third attempt reads it
    assert queue.run_dir(live).read_status()["state"] == RUNNING
    failures[:] = [1] * 3
    with pytest.raises(RunFileUnreadable, match="Stale file handle"):
        queue.poll()
    failures[:] = [1] * 3
    with pytest.raises(RunFileUnreadable):
        queue.run_dir(live).update_status(step=1)
    monkeypatch.undo()
    assert queue.run_dir(live).read_status()["state"] == RUNNING and queue.active_run() == live
    assert queue.poll() is None and queue.run_dir(waiting).read_status()["state"] == QUEUED
    for run_id in (waiting, live):
        queue.cancel(run_id)
    wait_for(lambda: queue.run_dir(live).read_status()["state"] == CANCELLED)


def test_a_worker_rewrites_a_status_json_whose_content_is_bad():
    """Someone else wrote garbage into a live run's status.json: its worker owns the file and writes
    back everything it has recorded, instead of keeping (or merging into) a made-up failed state."""
    import tempfile
    import threading

    from prefixlab.engine.worker import StatusWriter

    run = RunDir(Path(tempfile.mkdtemp()) / "run")
    run.path.mkdir()
    writer = StatusWriter(run, threading.Event(), enabled=True)
    writer.update(state=RUNNING, pid=os.getpid(), step=2)
    run.status_path.write_text("{not json")
    assert run.read_status()["state"] == FAILED  # what the page shows meanwhile
    writer.update(step=3)
    status = run.read_status()
    assert (status["state"], status["pid"], status["step"]) == (RUNNING, os.getpid(), 3)


def test_a_run_another_worker_took_is_not_failed_when_the_queue_s_worker_refuses_it(tmp_path):
    """`train --run-dir` from a terminal claims a queued run just as the queue starts it: the queue's
    worker refuses (exit 2), and the run, alive in the other worker, is not marked failed."""
    queue = JobQueue(tmp_path / "runs", worker_command=[sys.executable, "-c", "import sys; sys.exit(2)"])
    taken, waiting = queue.submit(spec("taken")), queue.submit(spec("waiting"))
    queue.poll()
    queue._children[taken].wait()  # refused
    queue.run_dir(taken).update_status(pid=os.getpid(), heartbeat=time.time())  # the other worker: us
    assert queue.poll() is None  # the device is still busy with it
    assert queue.run_dir(taken).read_status()["state"] == RUNNING
    assert queue.run_dir(waiting).read_status()["state"] == QUEUED
    stale = {**queue.run_dir(taken).read_status(), "pid": None, "heartbeat": 1.0, "updated_at": 1.0}
    atomic_write_json(queue.run_dir(taken).status_path, stale)  # "us" gone long ago: dead after all
    assert queue.poll() == waiting
    assert queue.run_dir(taken).read_status()["state"] == FAILED


# ---------------------------------------------------------------------------------------------
# One worker per run: worker.lock


HOLD_LOCK = textwrap.dedent("""
    import sys
    from prefixlab.engine.runs import worker_lock
    with worker_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin, or kills us
""")


@pytest.fixture
def hold_lock():
    """hold_lock(run_path) -> a subprocess holding the run's worker lock (another worker)."""
    procs = []

    def start(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_worker_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path, hold_lock):
    run = tmp_path / "run"
    run.mkdir()
    assert not worker_lock_held(run)
    holder = hold_lock(run)
    assert worker_lock_held(run)
    with pytest.raises(RunBusy, match=str(run)):
        with worker_lock(run):
            pass
    holder.kill()  # SIGKILL: no clean-up ran, the kernel drops the lock
    holder.wait()
    assert not worker_lock_held(run)
    with worker_lock(run):
        assert worker_lock_held(run)
        with worker_lock(run):  # re-entrant: the CLI holds it, then run_worker takes it again
            pass
        assert worker_lock_held(run)
    assert not worker_lock_held(run)


def test_run_worker_refuses_a_run_another_worker_holds_and_writes_nothing(tmp_path, hold_lock):
    from prefixlab.engine.worker import run_worker

    run = RunDir(tmp_path / "run")
    run.write_spec(spec())
    atomic_write_json(run.status_path, {"state": QUEUED})
    hold_lock(run.path)
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}
    with pytest.raises(RunBusy):
        run_worker(run.path)
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before


def test_the_queue_leaves_a_queued_run_alone_while_another_worker_holds_it(queue, hold_lock):
    """A CLI `train --run-dir` took the lock but has not yet written `running`: the queue must not
    start the run too, nor cancel it as if it were still waiting, nor start another run beside it
    (one job per device: the CLI's worker is about to train)."""
    claimed, waiting = queue.submit(spec("claimed")), queue.submit(spec("waiting"))
    holder = hold_lock(queue.run_dir(claimed).path)
    assert queue.poll() is None  # neither the claimed run nor the next one
    assert queue.run_dir(waiting).read_status()["state"] == QUEUED
    assert queue.cancel(waiting) == CANCELLED
    assert queue.cancel(claimed) == QUEUED  # a stop request the starting worker finds
    assert queue.run_dir(claimed).cancel_requested()
    assert queue.run_dir(claimed).read_status()["state"] == QUEUED
    holder.kill()
    holder.wait()
    queue.run_dir(claimed).cancel_path.unlink()
    try:
        assert queue.poll() == claimed  # the holder died before starting it: it is queued again
        queue.run_dir(claimed).path.joinpath("release").touch()  # and the worker the queue started finishes
        wait_for(lambda: queue.run_dir(claimed).read_status()["state"] == DONE)
    finally:  # no worker outlives the test, whichever assertion failed
        for proc in queue._children.values():
            if proc.poll() is None:
                proc.terminate()
            proc.wait()


def test_a_queue_worker_that_finds_the_run_locked_does_not_fail_it(tmp_path, hold_lock):
    """The queue marked the run running and launched its worker, but a CLI worker got the lock
    first and has not yet recorded its pid: the queue's worker leaves, and the run is not failed."""
    queue = JobQueue(tmp_path / "runs", worker_command=[sys.executable, "-c", "import sys; sys.exit(2)"])
    run_id = queue.submit(spec("raced"))
    run = queue.run_dir(run_id)
    queue._launch(run)  # as poll does: running, pid None, worker started
    holder = hold_lock(run.path)
    queue._children[run_id].wait()
    assert queue.poll() is None
    assert run.read_status()["state"] == RUNNING
    holder.kill()
    holder.wait()
    assert queue.poll() is None  # lock gone, no pid yet, heartbeat fresh: still counted as starting
    assert run.read_status()["state"] == RUNNING
    atomic_write_json(run.status_path, {**run.read_status(), "heartbeat": 1.0, "updated_at": 1.0})
    queue.poll()  # no pid ever recorded and the heartbeat stale: dead after all
    assert run.read_status()["state"] == FAILED


def test_queues_of_two_apps_take_turns_on_the_runs_folder_lock(queue):
    """While another app's queue is inside poll (holding runs/.queue.lock), this one skips its tick
    rather than deciding from the same `queued` state, and never waits (a stopped app holding the
    lock must not freeze this page's Train and Stop)."""
    run_id = queue.submit(spec())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()",
         str(queue.runs_dir / ".queue.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        polled = []
        thread = threading.Thread(target=lambda: polled.append(queue.poll()), daemon=True)
        thread.start()
        thread.join(5)
        assert polled == [None] and queue.run_dir(run_id).read_status()["state"] == QUEUED  # did not wait
        other = queue.submit(spec("meanwhile"))  # Train still answers
        assert queue.cancel(other) == CANCELLED  # and Stop
    finally:
        holder.kill()
        holder.wait()
    assert queue.poll() == run_id
    queue.run_dir(run_id).path.joinpath("release").touch()
    wait_for(lambda: queue.run_dir(run_id).read_status()["state"] == DONE)


def test_a_locked_run_that_never_records_its_pid_is_failed_once_its_heartbeat_is_stale(tmp_path, hold_lock):
    queue = JobQueue(tmp_path / "runs", heartbeat_timeout=60)
    run_id = queue.submit(spec("hung"))
    run = queue.run_dir(run_id)
    hold_lock(run.path)  # a worker that took the lock, then hung before writing its pid
    atomic_write_json(run.status_path, {**run.read_status(), "state": RUNNING, "pid": None, "heartbeat": 1.0,
                                        "updated_at": 1.0})
    queue.poll()
    assert run.read_status()["state"] == FAILED  # the queue is not blocked forever


def test_the_worker_lock_also_excludes_another_thread_of_the_same_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    errors = []

    def other_thread():
        try:
            with worker_lock(run):
                pass
        except RunBusy as err:
            errors.append(str(err))

    with worker_lock(run):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert errors == [f"{run.resolve()} is being trained by another worker (a thread of this process)"]
    thread = threading.Thread(target=other_thread)  # released: the other thread may take it now
    thread.start()
    thread.join()
    assert len(errors) == 1


def test_finished_workers_are_reaped_not_left_as_zombies(queue):
    run_id = queue.submit(spec())
    queue.poll()
    pid = worker_pid(queue, run_id)
    queue.run_dir(run_id).path.joinpath("release").touch()
    wait_for(lambda: queue.run_dir(run_id).read_status()["state"] == DONE)
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z")  # exited, not yet waited
    queue.poll()
    assert run_id not in queue._children
    assert not Path(f"/proc/{pid}").exists()  # waited for: gone from the process table
