"""The real worker in subprocesses: the paired experiment end to end, SIGKILL and SIGTERM mid-run.

Everything runs offline on the tiny GPT-2 preset and the built-in e2e-synth task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import torch

from prefixlab import PrefixTuningModel
from prefixlab.engine.spec import ExperimentSpec
from prefixlab.engine.runs import CANCELLED, DONE, FAILED, RUNNING, JobQueue, RunDir
from prefixlab.engine.tiny import tiny_model, tiny_tokenizer

VARIANTS = ("no_projection", "projection")
# The tiny base has random weights, so a prefix can only reshape its output distribution; from
# ln(384) = 5.95 nats, 30 steps at this learning rate take validation loss down by 0.2-0.3.
MIN_EVAL_LOSS_DROP = 0.15


def spec_dict(**training) -> dict:
    return {
        "name": "e2e", "model": {"name": "tiny-gpt2"},
        "prefix": {"num_virtual_tokens": 6, "encoder_hidden_size": 32},
        "data": {"source": "e2e-synth", "max_train_examples": 64, "max_eval_examples": 8},
        "training": {"learning_rate": 0.2, "max_steps": 30, "batch_size": 4, "max_length": 128,
                     "eval_interval": 15, "log_interval": 5, "seed": 3, **training},
        "generation": {"num_prompts": 2, "max_new_tokens": 8},
    }


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def logits_of(model, text="name[Aromi] | food[Thai] => ") -> torch.Tensor:
    ids = tiny_tokenizer()(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits


def assert_loads_in_peft_with_our_logits(adapter_dir) -> torch.Tensor:
    """An adapter folder trained on offline tiny-gpt2 (= tiny_model("gpt2")): PEFT loads it and gives
    prefixlab's logits, which differ from the bare base's. Returns those logits."""
    import peft

    ours = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), str(adapter_dir)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(tiny_model("gpt2"), str(adapter_dir)).eval()
    expected = logits_of(ours)
    torch.testing.assert_close(logits_of(theirs), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, logits_of(tiny_model("gpt2")), atol=1e-3), "the prefix changes nothing"
    return expected


def test_paired_experiment_end_to_end_in_a_subprocess(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec_dict()))
    run = RunDir(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "prefixlab", "train", str(spec_path), "--run-dir", str(run.path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.read_status()["state"] == DONE
    assert run.read_spec().to_dict() == ExperimentSpec.from_dict(spec_dict()).to_dict()

    metrics = run.read_metrics()
    for name in VARIANTS:
        evals = [m["eval_loss"] for m in metrics if m["variant"] == name and "eval_loss" in m]
        train = [m["loss"] for m in metrics if m["variant"] == name and "loss" in m]
        assert len(evals) == 3 and len(train) == 6  # steps 0/15/30; every 5 steps
        assert evals[0] - evals[-1] >= MIN_EVAL_LOSS_DROP, (name, evals)
        assert train[-1] < train[0], (name, train)

    for name in VARIANTS:
        assert_loads_in_peft_with_our_logits(run.adapter_path(name))

    samples = run.read_samples()
    assert len(samples) == 2  # one line per prompt
    for line in samples:
        assert line["prompt"].startswith("name[") and line["reference"]
        assert set(line["outputs"]) == {"base", *VARIANTS}
        assert all(isinstance(text, str) for text in line["outputs"].values())
    summary = run.read_summary()
    assert set(summary["variants"]) == set(VARIANTS) and summary["steps"] == 30
    assert "finished: done at step 30" in run.log_tail()


def test_sigkill_then_next_queued_run_then_sigterm(tmp_path):
    queue = JobQueue(tmp_path / "runs")
    long_run = dict(max_steps=500, eval_interval=2, log_interval=1, max_length=64, batch_size=2)
    killed = queue.submit(ExperimentSpec.from_dict({**spec_dict(**long_run), "name": "killed"}))
    stopped = queue.submit(ExperimentSpec.from_dict({**spec_dict(**long_run), "name": "stopped"}))
    assert queue.poll() == killed
    first, second = queue.run_dir(killed), queue.run_dir(stopped)

    # SIGKILL after the step-2 checkpoint: no chance to report, so the queue must notice.
    wait_for(lambda: (first.adapter_path("projection") / "adapter_model.safetensors").exists(),
             what="first checkpoint")
    os.kill(first.read_status()["pid"], signal.SIGKILL)
    wait_for(lambda: queue.poll() == stopped, what="next queued run starting")
    status = first.read_status()
    assert status["state"] == FAILED
    assert status["error"] == "worker died without reporting: killed by signal SIGKILL"
    assert any("eval_loss" in m for m in first.read_metrics())  # what was written stays readable
    for name in VARIANTS:
        assert_loads_in_peft_with_our_logits(first.adapter_path(name))

    # SIGTERM (the page's Stop) mid-run: finish the step, save, write samples, state cancelled.
    wait_for(lambda: any("loss" in m for m in second.read_metrics()), what="second run training")
    queue.cancel(stopped)
    wait_for(lambda: second.read_status().get("state") != RUNNING, what="worker to stop")
    status = second.read_status()
    assert status["state"] == CANCELLED and 0 < status["step"] < 500 and status["error"] is None
    for name in VARIANTS:
        assert_loads_in_peft_with_our_logits(second.adapter_path(name))
    assert len(second.read_samples()) == 2
    assert queue.poll() is None and queue.active_run() is None
