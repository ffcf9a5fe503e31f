"""Running the sections in order within the time budget; an exception or a late start is a result."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch

from prefixlab.engine.devices import cuda_bf16_native
from prefixlab.tools.gpucheck.common import OFFLINE_PRESET, REPO_ROOT, CheckContext, CheckSizes, release_memory
from prefixlab.tools.gpucheck.e2e import run_e2e
from prefixlab.tools.gpucheck.parity import run_parity
from prefixlab.tools.gpucheck.report import ERROR, SKIPPED, overall_status
from prefixlab.tools.gpucheck.speed import run_generation, run_throughput


# name -> (function, share of the budget it may use before the next section starts)
SECTIONS: dict[str, tuple[Callable[[CheckContext], dict], float]] = {
    "parity": (run_parity, 0.15),  # expected on an H100: ~15 s
    "e2e": (run_e2e, 0.35),  # ~40 s: interpreter start, 40 steps x 2 variants, evals, samples
    "throughput": (run_throughput, 0.25),  # ~20 s
    "generation": (run_generation, 0.25),  # ~30 s: 24 generate calls of 32 tokens, eager decoding
}


def run_section(name: str, ctx: CheckContext, section_budget_s: float, hard_deadline: float) -> dict:
    """Run one section; an exception becomes {"status": "error", ...} instead of ending the check."""
    fn = SECTIONS[name][0]
    if hard_deadline - time.monotonic() <= 0:
        return {"status": SKIPPED, "reason": "the time budget was used up by earlier sections"}
    ctx.deadline = min(time.monotonic() + section_budget_s, hard_deadline)
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            # Deprecation noise from PEFT on transformers 5.x would bury the report; results carry the facts.
            warnings.simplefilter("ignore")
            result = fn(ctx)
    except Exception as err:  # noqa: BLE001 - a failing section is a result, not the end of the check
        result = {"status": ERROR, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    finally:
        release_memory()
    result["seconds"] = time.monotonic() - start
    return result


def environment(device: str) -> tuple[dict, dict]:
    """(device facts, library versions) for the results header."""
    import accelerate
    import transformers

    import prefixlab

    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                "prefixlab": prefixlab.__version__, "peft": _peft_version(), "commit": _git_commit()}
    if torch.device(device).type != "cuda":
        return {"name": f"{device} (test run)"}, versions
    props = torch.cuda.get_device_properties(device)
    facts = {"name": props.name, "capability": f"{props.major}.{props.minor}",
             "memory_gib": round(props.total_memory / 2**30, 1), "bf16": cuda_bf16_native()}
    return facts, versions


def _peft_version() -> Optional[str]:
    try:
        import peft
    except ImportError:
        return None  # the parity and throughput sections then report "pip install -r tests/requirements.txt"
    return peft.__version__


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_check(out_dir: Path, device: str, sections: list[str], budget_s: float, sizes: CheckSizes,
              spec_path: Path = OFFLINE_PRESET) -> dict:
    """Every requested section in order; returns the results dict that results.json holds."""
    start = time.monotonic()
    hard_deadline = start + budget_s
    device_facts, versions = environment(device)
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device_facts,
               "versions": versions, "budget_s": budget_s, "test_run": torch.device(device).type != "cuda",
               "sections": {}}
    if versions["peft"] is None:
        print("peft is not installed; the parity and throughput sections need it: "
              "pip install -r tests/requirements.txt", file=sys.stderr)
    ctx = CheckContext(device=device, sizes=sizes, out_dir=out_dir, deadline=hard_deadline, spec_path=spec_path)
    for name in sections:
        print(f"gpucheck: {name} ...", file=sys.stderr, flush=True)
        results["sections"][name] = run_section(name, ctx, SECTIONS[name][1] * budget_s, hard_deadline)
        print(f"gpucheck: {name} {results['sections'][name]['status']}", file=sys.stderr, flush=True)
    results["wall_s"] = time.monotonic() - start
    results["status"] = overall_status(results)
    return results
