"""Real multi-process training: `python -m prefixlab train` with training.num_processes 2 runs the
worker in two processes under `accelerate launch` (gloo on the CPU) and trains exactly as one process
with the same global batch; only the first process writes the run folder; a SIGTERM to the launcher
ends every process with a cancelled run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefixlab.engine.runs import CANCELLED, DONE, RunDir

REPO = Path(__file__).resolve().parents[1]


def spec(tmp_path: Path, name: str, **training) -> Path:
    """The shipped tiny-gpt2-e2e (no dropout, so two ways of running draw nothing differently), 16
    training and 8 validation examples: whole batches for one process of 8 or two of 4."""
    document = {"name": name, "model": {"name": "tiny-gpt2-e2e"},
                "prefix": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
                "data": {"source": "e2e-synth", "max_train_examples": 16, "max_eval_examples": 8},
                "training": {"learning_rate": 0.05, "max_steps": 2, "batch_size": 8, "max_length": 64,
                             "eval_interval": 2, "log_interval": 1, "seed": 7, **training},
                "generation": {"num_prompts": 1, "max_new_tokens": 2}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def train(spec_path: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefixlab", "train", str(spec_path), "--run-dir", str(run_dir),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    one = train(spec(tmp_path, "one"), tmp_path / "one")
    two = train(spec(tmp_path, "two", batch_size=4, num_processes=2), tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    assert "starting 2 processes" in two.stderr and two.stderr.count("done: ") == 1
    runs = RunDir(tmp_path / "one"), RunDir(tmp_path / "two")
    assert [r.read_status()["state"] for r in runs] == [DONE, DONE]
    lines = [[(m["variant"], m["step"], m.get("loss", m.get("eval_loss")), m.get("lr")) for m in r.read_metrics()]
             for r in runs]
    assert [m[:2] for m in lines[1]] == [m[:2] for m in lines[0]]  # one writer: no line twice
    assert [m[3] for m in lines[1]] == [m[3] for m in lines[0]]  # the same learning rate at every step
    assert [m[2] for m in lines[1]] == pytest.approx([m[2] for m in lines[0]], rel=1e-5)
    log = runs[1].log_path.read_text()
    assert log.count("wrote 1 sample(s)") == 1 and "2 batches per epoch" in log
    for name in ("no_projection", "projection"):
        a, b = (load_file(r.adapter_path(name) / "adapter_model.safetensors")["prompt_embeddings"] for r in runs)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def _descendants(pid: int) -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                children.add(int(entry.name))
    return children | {d for c in children for d in _descendants(c)}


@pytest.mark.slow
def test_a_sigterm_to_the_launcher_ends_every_process_with_a_cancelled_run(tmp_path):
    from prefixlab.engine.runs import atomic_write_json, launch_command, new_status

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    document = json.loads(spec(tmp_path, "long", batch_size=4, num_processes=2, max_steps=400,
                               eval_interval=400, log_interval=1).read_text())
    (run.path / "spec.json").write_text(json.dumps(document))
    atomic_write_json(run.status_path, new_status())
    launcher = subprocess.Popen([*launch_command(2), "--run-dir", str(run.path), "--no-progress"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while (run.read_status().get("step") or 0) < 1:
            assert time.time() < deadline and launcher.poll() is None, run.log_path.read_text()[-2000:]
            time.sleep(0.2)
        ranks = _descendants(launcher.pid)
        assert len([p for p in ranks if "prefixlab" in Path(f"/proc/{p}/cmdline").read_text()]) >= 2
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
        status = run.read_status()
        assert status["state"] == CANCELLED, status
        assert 1 <= status["step"] < 400
        assert all(not Path(f"/proc/{p}").exists() for p in ranks)
        assert (run.adapter_path("projection") / "adapter_model.safetensors").exists()  # saved on the way out
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def test_the_queue_starts_a_run_of_several_processes_under_the_launcher(tmp_path, monkeypatch):
    """The page's queue reads training.num_processes from the run's spec and starts accelerate's
    launcher (one process: the plain worker)."""
    from prefixlab.engine import runs
    from prefixlab.engine.spec import ExperimentSpec

    started = []

    class Recorded:
        def __init__(self, args, **kwargs):
            started.append(args)
            self.pid, self.returncode = 0, 0

        def poll(self):
            return 0

    monkeypatch.setattr(runs.subprocess, "Popen", Recorded)
    queue = runs.JobQueue(tmp_path / "runs")
    for processes in (1, 2):
        run_id = queue.submit(ExperimentSpec.from_dict({"training": {"num_processes": processes}}))
        queue._launch(queue.run_dir(run_id))
    one, two = started
    assert one[:4] == [sys.executable, "-m", "prefixlab", "train"]
    assert two[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and two[two.index("--num_processes") + 1] == "2"
    assert two[-4:-2] == ["prefixlab", "train"] and two[-2] == "--run-dir"
