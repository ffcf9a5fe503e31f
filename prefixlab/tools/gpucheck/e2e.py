"""Section 2: the offline preset end to end, in a worker subprocess, and checks on its run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from prefixlab.tools.gpucheck.common import REPO_ROOT, CheckContext, DeviceMemoryPoller
from prefixlab.tools.gpucheck.report import FAILED, OK


def train_command(spec_path: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "prefixlab", "train", str(spec_path), "--run-dir", str(run_dir)]


def run_e2e(ctx: CheckContext) -> dict:
    """Section 2: train the preset exactly as the page's queue would, then check its run directory."""
    from prefixlab.engine.runs import RunDir

    run_dir = ctx.out_dir / "e2e-run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun into the same --out starts over
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if torch.device(ctx.device).type == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"  # the CPU test run, also on a machine that has a GPU
    timeout = max(1.0, ctx.time_left())
    with DeviceMemoryPoller(ctx.device) as memory:
        try:
            proc = subprocess.run(train_command(ctx.spec_path, run_dir), cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            status = json.dumps({k: v for k, v in RunDir(run_dir).read_status().items()
                                 if k in ("state", "step", "total_steps", "error")})
            raise RuntimeError(f"the worker did not finish within this section's {timeout:.0f} s (status {status}); "
                               f"its log is {run_dir / 'log.txt'}; rerun with a larger --budget-s") from None
    if not (run_dir / "spec.json").is_file():
        raise RuntimeError(f"the worker wrote no run directory (exit status {proc.returncode}): "
                           + " / ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:]))
    result = check_run_dir(run_dir, ctx.device)
    result.update(returncode=proc.returncode, device_peak_above_baseline_bytes=memory.peak_above_baseline,
                  memory_released=memory.released())
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        result["problems"].insert(0, f"worker exited with status {proc.returncode}: " + " / ".join(tail))
    if result["memory_released"] is False:
        result["problems"].append("device memory did not return to its baseline after the worker exited")
    result["status"] = FAILED if result["problems"] else OK
    return result


def check_run_dir(run_dir: Path, device: str) -> dict:
    """What a finished worker left in `run_dir`, against what the GPU path promises: state done on the
    requested device with the precision `auto` picks there, every variant's loss falling, adapters
    saved in fp32 whatever the training precision."""
    from prefixlab.engine.runs import RunDir
    from prefixlab.engine.devices import mixed_precision_for

    run = RunDir(run_dir)
    status, summary = run.read_status(), run.read_summary() or {}
    spec = run.read_spec()
    problems = [] if status.get("state") == "done" else [f"state is {status.get('state')!r}, not 'done' "
                                                         f"(error: {status.get('error')})"]
    expected_precision = mixed_precision_for(spec.training.precision, torch.device(device).type)
    if summary.get("mixed_precision") != expected_precision:
        problems.append(f"mixed precision {summary.get('mixed_precision')!r}, expected {expected_precision!r}")
    if not str(summary.get("device", "")).startswith(torch.device(device).type):
        problems.append(f"trained on {summary.get('device')!r}, expected {device}")
    variants = {name: variant_report(run, name, summary) for name in spec.variant_names}
    for name, v in variants.items():
        problems += [f"{name}: {p}" for p in v.pop("problems")]
    return {"problems": problems, "state": status.get("state"), "device": summary.get("device"),
            "mixed_precision": summary.get("mixed_precision"), "wall_time_s": summary.get("wall_time_s"),
            "worker_peak_gpu_bytes": summary.get("peak_gpu_memory_bytes"), "variants": variants}


def variant_report(run, name: str, summary: dict) -> dict:
    """First and last logged training loss, throughput, and the saved adapter's dtype for one variant."""
    losses = [m["loss"] for m in run.read_metrics() if m.get("variant") == name and "loss" in m]
    dtype = saved_adapter_dtype(run.adapter_path(name))
    problems = []
    if len(losses) < 2 or not losses[-1] < losses[0]:
        problems.append(f"training loss did not fall (logged: {losses})")
    if dtype != "float32":
        problems.append(f"adapter saved as {dtype}, expected float32 (PEFT's format)")
    return {"first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "tokens_per_s": (summary.get("variants", {}).get(name) or {}).get("tokens_per_s"),
            "adapter_dtype": dtype, "problems": problems}


def saved_adapter_dtype(adapter_dir: Path) -> Optional[str]:
    """dtype of `prompt_embeddings` in adapter_dir/adapter_model.safetensors, or None if missing."""
    from safetensors import safe_open

    from prefixlab.core.encoder import SAVED_KEY
    from prefixlab.core.model import WEIGHTS_NAME

    path = Path(adapter_dir) / WEIGHTS_NAME
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return str(f.get_tensor(SAVED_KEY).dtype).removeprefix("torch.")
