"""Shared fixtures. Tests never touch the network: models come from prefixlab.engine.tiny."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def seed():
    """Seed torch's global generator so random prefixes and batches repeat run to run."""
    torch.manual_seed(1234)
    return 1234


# ---------------------------------------------------------------------------------------------
# No process outlives the suite: a worker, a page or a lock holder a test started and did not end
# fails the run (after a short grace, and is killed, so nothing is left behind either way).

LEFTOVER_GRACE_S = 2.0
BASETEMP = pytest.StashKey[str]()


def process_table() -> dict[int, tuple[int, str, list[str]]]:
    """pid -> (parent pid, state letter, arguments) of every process in /proc (Linux)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")[:-1]
        except OSError:  # it exited meanwhile
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]  # after "pid (comm) ": comm may hold spaces
        table[int(entry)] = (int(ppid), state, args)
    return table


def mentions(args: list[str], folder: str) -> bool:
    """An argument is `folder` or a path inside it (pytest-1 is not inside pytest-12)."""
    folder = folder.rstrip("/")
    return any(arg.endswith(folder) or folder + "/" in arg for arg in args)


def leftover_processes(root: int, marker: str | None = None) -> dict[int, str]:
    """Living processes (zombies are dead) descended from `root`, or whose command line mentions the
    folder `marker` (pytest's basetemp: a worker detached from its parent): pid -> command line.
    `root`, this process and their ancestors are never counted."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack += children.get(pid, [])
    if marker:
        found |= {pid for pid, (_, _, args) in table.items() if mentions(args, marker)}
    for start in (root, os.getpid()):
        while start in table and start > 1:  # an ancestor may mention the basetemp (pytest --basetemp=...)
            found.discard(start)
            start = table[start][0]
    return {pid: " ".join(table[pid][2]) for pid in sorted(found) if pid in table and table[pid][1] != "Z"}


@pytest.fixture(scope="session", autouse=True)
def _record_basetemp(tmp_path_factory, pytestconfig):
    pytestconfig.stash[BASETEMP] = str(tmp_path_factory.getbasetemp())


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session):
    marker = session.config.stash.get(BASETEMP, None)
    leftovers = leftover_processes(os.getpid(), marker)
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = leftover_processes(os.getpid(), marker)
    if not leftovers:
        return
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # our own child: no zombie either
        except (ProcessLookupError, ChildProcessError):
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(leftovers)} process(es) started by the tests were still running {LEFTOVER_GRACE_S:.0f} s "
             "after the session ended (killed now); end every process a test starts:"]
    lines += [f"  pid {pid}: {cmdline[:300]}" for pid, cmdline in leftovers.items()]
    if reporter is not None:
        reporter.write("\n")
        reporter.write_sep("!", "leftover processes", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines), file=sys.stderr)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
