"""The suite's own leftover-process check (tests/conftest.py): what it counts as still running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import leftover_processes, mentions

SLEEP = "import time; time.sleep(60)"


def test_it_finds_a_child_and_its_child_and_nothing_once_they_are_reaped(tmp_path):
    marker = str(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                              f"{SLEEP!r}]); print(sys.argv)", marker], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while len(leftover_processes(child.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the grandchild has started
        found = leftover_processes(os.getpid())
        grandchild = next(iter(leftover_processes(child.pid)))
        assert child.pid in found and grandchild in found
        assert found[child.pid].startswith(sys.executable) and found[child.pid].endswith(marker)
        assert list(leftover_processes(os.getpid(), marker)) == sorted([child.pid, grandchild])
    finally:
        os.kill(grandchild, signal.SIGKILL)
        child.wait()  # it ends with its grandchild (the child of a child is reaped by its parent)
    assert child.pid not in leftover_processes(os.getpid(), marker)
    assert grandchild not in leftover_processes(os.getpid(), marker)


def test_a_zombie_is_not_running_and_the_session_itself_is_never_counted(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", SLEEP])
    child.kill()
    deadline = time.monotonic() + 10
    while child.pid in leftover_processes(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.pid not in leftover_processes(os.getpid())  # killed, not yet reaped: a zombie
    child.wait()
    # This process and its ancestors mention their own command lines; none of them is a leftover.
    with open("/proc/self/cmdline", "rb") as f:
        own_argument = f.read().split(b"\0")[0].decode()
    assert os.getpid() not in leftover_processes(os.getpid(), own_argument)
    assert os.getppid() not in leftover_processes(os.getpid(), own_argument)


def test_a_detached_process_is_found_by_the_folder_its_command_line_names(tmp_path):
    """A worker started in a new session whose parent exited is no descendant any more (init adopts
    it); the folder in its command line still gives it away."""
    marker = str(tmp_path / "run")
    # Its output goes nowhere: a pipe it inherited would keep `run` waiting for it.
    starter = subprocess.run([sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, "
                              f"'-c', {SLEEP!r}, sys.argv[1]], start_new_session=True, stdout=subprocess.DEVNULL, "
                              "stderr=subprocess.DEVNULL).pid)", marker], capture_output=True, text=True, check=True)
    orphan = int(starter.stdout)
    try:
        assert orphan not in leftover_processes(os.getpid())
        assert orphan in leftover_processes(os.getpid(), marker)
        assert orphan in leftover_processes(os.getpid(), str(tmp_path))  # a folder above it
        assert orphan not in leftover_processes(os.getpid(), marker[:-1])  # .../ru is not .../run
    finally:
        os.kill(orphan, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while orphan in leftover_processes(os.getpid(), marker) and time.monotonic() < deadline:
        time.sleep(0.02)  # its new parent reaps it
    assert orphan not in leftover_processes(os.getpid(), marker)


def test_mentions_is_by_path_not_by_prefix():
    assert mentions(["python", "/tmp/pytest-1/test_x0/fake_worker.py"], "/tmp/pytest-1")
    assert mentions(["pytest", "--basetemp=/tmp/pytest-1"], "/tmp/pytest-1/")
    assert not mentions(["python", "/tmp/pytest-12/test_x0/fake_worker.py"], "/tmp/pytest-1")
