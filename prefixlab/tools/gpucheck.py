"""`python -m prefixlab gpucheck --out DIR`: what the CPU test suite cannot check, in one command.

On a CUDA machine five sections run in order, each recording its numbers, or its error, in
DIR/results.json (one failing section does not stop the others), within a time budget that keeps
the whole check under 6 minutes on one GPU; then DIR/results.md is written and printed.

  1. parity      tiny gpt2/llama/t5/bart x prefix_projection: prefixlab vs PEFT logits on the
                 device in fp32, under bf16 autocast and with bf16 weights; greedy generation (fp32)
                 vs greedy decoding by recomputation with PEFT's forward
  2. e2e         presets/offline-tiny.json trained by the worker in a subprocess, both variants:
                 state done, losses fall, adapters saved fp32, peak GPU memory, memory released
  3. throughput  a random GPT-2-medium-shaped model (the paper's size): training-step tokens/s and
                 peak memory, prefixlab vs PEFT interleaved, both variants, batch 8 and 32
  4. generation  greedy latency of the base model alone vs the same model with a prefixlab prefix
  5. paired      both variants' training step fused vs one pass per variant vs two PEFT models, what
                 stacking alone saves, and gradient checkpointing's peak memory at 4x the sequence
                 length (bench paired)

Nothing is downloaded. Without CUDA it says so and exits with status 2, having imported only torch.
`--device cpu` is for the tests only: it runs the same code with tiny sizes and marks the results
as a test run. docs/gpu.md describes every check and the layout of results.json.

The file reads top to bottom: sizes and the section context; device and memory probes; the
arithmetic; the five sections; running them within the budget; results.md and results.json; the
command line. The arithmetic and the results files are pure (tests/test_gpucheck.py checks them on
a CPU); the sections run there too, at tiny sizes, with `--device cpu`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from prefixlab.engine.devices import cuda_bf16_native, release_gpu_memory
from prefixlab.tools.bench import (
    BenchArgs,
    build_base,
    make_batch,
    peft_model,
    prefixlab_model,
    synchronize,
    time_interleaved,
    training_step,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFLINE_PRESET = REPO_ROOT / "presets" / "offline-tiny.json"
DEFAULT_OUT = "gpucheck-results"
DEFAULT_BUDGET_S = 330.0  # leaves ~30 s of the 6 minutes for interpreter and CUDA start-up
NO_CUDA_EXIT = 2
OK, FAILED, ERROR, SKIPPED = "ok", "failed", "error", "skipped"
IMPLS = ("prefixlab", "peft")
MiB = 2**20

# Parity tolerances. fp32: the two implementations run the same kernels on the same numbers, only the
# prefix is built differently, so they agree to float rounding. bf16: both round differently from an
# fp32 reference; ours must not be meaningfully worse than PEFT's.
FP32_ATOL = 1e-4
BF16_FACTOR = 1.5
BF16_EPS = 1e-3
PARITY_VIRTUAL_TOKENS = 5
PARITY_GENERATE_STEPS = 6
EOS_ID = 1  # prefixlab.engine.tiny's (ByT5's) eos id
PARITY_ARCHS = {"gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM", "bart": "SEQ_2_SEQ_LM"}


# ---------------------------------------------------------------------------------------------
# Sizes and the context a section runs in
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckSizes:
    """Sizes for sections 3 and 4: the model and timing repeats as the core benchmark's BenchArgs
    (prefixlab/tools/bench.py), plus the batch sizes and generation lengths this check sweeps."""

    model: BenchArgs
    batch_sizes: tuple[int, ...] = (8, 32)
    gen_batch_sizes: tuple[int, ...] = (1, 8)
    gen_prompt_len: int = 32
    gen_new_tokens: int = 32
    gen_repeats: int = 5  # timed generate calls per contender (interleaved)


def paper_sizes(device: str) -> CheckSizes:
    """GPT-2 medium (355M parameters, the paper's size), seq 128, 10 virtual tokens; 15 timed steps
    per implementation after 3 warm-up steps."""
    model = BenchArgs(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257, seq_len=128, num_virtual_tokens=10,
                      repeats=15, warmup=3, device=device, peak_memory=False)
    return CheckSizes(model)


def tiny_sizes(device: str) -> CheckSizes:
    """The same code at tiny sizes (seconds on a CPU): for tests, never a result."""
    return CheckSizes(BenchArgs.quick(device=device, repeats=2, peak_memory=False), batch_sizes=(2, 4),
                      gen_batch_sizes=(1, 2), gen_prompt_len=8, gen_new_tokens=4, gen_repeats=2)


@dataclass
class CheckContext:
    """What every section gets: where to run, how big, where to write, and when to stop."""

    device: str
    sizes: CheckSizes
    out_dir: Path
    deadline: float  # time.monotonic() by which the section must have stopped starting new work
    spec_path: Path = OFFLINE_PRESET

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


# ---------------------------------------------------------------------------------------------
# Device and memory probes
# ---------------------------------------------------------------------------------------------


def no_cuda_message() -> str:
    return (
        "no CUDA device: gpucheck measures the GPU path (parity with PEFT on CUDA in fp32/bf16, the offline "
        "preset trained on the GPU, GPT-2-medium throughput and memory vs PEFT, generation latency, fused vs separate variants and "
        "checkpointing's memory) and needs "
        f"a visible NVIDIA GPU and a CUDA build of torch; here torch {torch.__version__} reports "
        f"torch.cuda.is_available() == False (built with CUDA {torch.version.cuda}). See docs/gpu.md for what to "
        "install. Everything else is covered by the CPU test suite: python -m pytest -q"
    )


def autocast_dtype(device: str) -> torch.dtype:
    """bf16 where the device supports it natively (Ampere and newer, CPU), else fp16 (what the worker picks)."""
    if torch.device(device).type == "cuda" and not cuda_bf16_native():
        return torch.float16
    return torch.bfloat16


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float16", "fp16")


def require_peft():
    """PEFT, the reference; a section that needs it fails with the install command when it is missing."""
    try:
        import peft
    except ImportError as err:
        raise RuntimeError("peft is not installed; this section compares with it: "
                           "pip install -r tests/requirements.txt") from err
    return peft


def device_used_bytes(device: str) -> Optional[int]:
    """Device-wide used memory (all processes, cudaMemGetInfo), or None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return total - free


class DeviceMemoryPoller:
    """Samples device-wide used memory in a thread while another process (the worker) runs:
    torch.cuda.max_memory_allocated only sees this process. `peak_above_baseline` is the worker's
    footprint including its CUDA context; `released()` checks it is all given back after exit."""

    SLACK_BYTES = 64 * 2**20  # allocator noise of other processes on a shared GPU

    def __init__(self, device: str, interval_s: float = 0.05):
        self.device, self.interval_s = device, interval_s
        self.baseline = device_used_bytes(device)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, device_used_bytes(self.device))

    def __enter__(self) -> "DeviceMemoryPoller":
        if self.baseline is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def peak_above_baseline(self) -> Optional[int]:
        return None if self.baseline is None else self.peak - self.baseline

    def released(self, wait_s: float = 10.0) -> Optional[bool]:
        """True once used memory is back within SLACK_BYTES of the baseline (None off CUDA)."""
        if self.baseline is None:
            return None
        end = time.monotonic() + wait_s
        while device_used_bytes(self.device) > self.baseline + self.SLACK_BYTES:
            if time.monotonic() > end:
                return False
            time.sleep(0.2)
        return True


def step_peak_bytes(step: Callable[[], object], device: str) -> Optional[int]:
    """Peak memory one call of `step` allocates above what is resident when it starts (None off CUDA):
    activations, gradients and the prefix's working memory, not the shared frozen model."""
    if torch.device(device).type != "cuda":
        return None
    synchronize(torch.device(device))
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    synchronize(torch.device(device))
    return torch.cuda.max_memory_allocated(device) - start


def under_autocast(fn: Callable, device_type: str, dtype: torch.dtype) -> Callable:
    """`fn` called under torch.autocast: a forward (backward and the optimizer step stay outside, as the
    worker's accelerate does, torch.autocast's documented use) or a generate."""
    def call(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return fn(*args, **kwargs)
    return call


def wall_seconds(times: dict[str, dict[str, list[float]]]) -> dict[str, list[float]]:
    """bench.time_interleaved's {name: {"wall": [...], "cpu": [...]}} -> {name: wall seconds}: on a GPU
    only synchronised wall time measures the work (CPU time is the launching thread's)."""
    return {name: t["wall"] for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# Arithmetic (pure)
# ---------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median of timings; an empty list means the timing loop never ran, which is an error."""
    values = list(values)
    if not values:
        raise ValueError("median of no values: the timing loop recorded nothing; raise --budget-s or check the "
                         "section's error")
    return float(statistics.median(values))


def tokens_per_second(tokens: int, seconds: float) -> float:
    """Throughput of one step that processed `tokens` tokens in `seconds` (batch * seq_len, no padding)."""
    if tokens <= 0:
        raise ValueError(f"tokens={tokens}: a training step processes at least one token")
    if not seconds > 0:
        raise ValueError(f"seconds={seconds}: a timed step must take a positive time; time it with the device "
                         "synchronised")
    return tokens / seconds


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def timing_summary(step_seconds: list[float], tokens_per_step: int, peak_bytes: Optional[int]) -> dict:
    """One implementation's numbers for one (variant, batch size): the median step and its tokens/s."""
    step = median(step_seconds)
    return {"steps": len(step_seconds), "median_step_s": step,
            "tokens_per_s": tokens_per_second(tokens_per_step, step), "step_peak_bytes": peak_bytes}


def throughput_ratios(row: dict) -> dict:
    """prefixlab over PEFT: speedup (tokens/s) and memory (a step's peak above the resident model)."""
    ours, theirs = row.get("prefixlab") or {}, row.get("peft") or {}
    return {"speedup": ratio(ours.get("tokens_per_s"), theirs.get("tokens_per_s")),
            "memory_ratio": ratio(ours.get("step_peak_bytes"), theirs.get("step_peak_bytes"))}


def overall_status(results: dict) -> str:
    """ok only when every section that was asked for ran and passed."""
    sections = results.get("sections", {})
    if sections and all(s.get("status") == OK for s in sections.values()):
        return OK
    return FAILED


# ---------------------------------------------------------------------------------------------
# Section 1: parity with PEFT on the device
# ---------------------------------------------------------------------------------------------


def wrap_pair(base_ours, base_peft, task_type: str, projection: bool, source=None):
    """(prefixlab, PEFT) wrappers with identical prefixes: random N(0, 1) (large, so that a dropped or
    misplaced prefix shows in the logits), or copied from `source` (a prefixlab wrapper)."""
    import prefixlab

    peft = require_peft()
    kwargs = dict(task_type=task_type, num_virtual_tokens=PARITY_VIRTUAL_TOKENS, prefix_projection=projection)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(base_peft, peft.PrefixTuningConfig(**kwargs))
    ours = prefixlab.get_peft_model(base_ours, prefixlab.PrefixTuningConfig(**kwargs))
    with torch.no_grad():
        if source is None:
            gen = torch.Generator().manual_seed(0)
            for param in ours.prompt_encoder["default"].parameters():
                param.copy_(torch.randn(param.shape, generator=gen))
        else:
            copy_prefix(source, ours)
    copy_prefix(ours, ref)
    return ours, ref


def copy_prefix(src, dst, adapter: str = "default") -> None:
    """Copy prompt-encoder weights by name (prefixlab's and PEFT's names are the same)."""
    dst_params = dict(dst.prompt_encoder[adapter].named_parameters())
    with torch.no_grad():
        for name, param in src.prompt_encoder[adapter].named_parameters():
            dst_params[name].copy_(param)


def parity_batch(task_type: str, device: str) -> dict:
    """A batch of 3 right-padded rows (as in training) with labels; (3, 7) inputs, (3, 4) targets."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if task_type == "SEQ_2_SEQ_LM":
        batch["decoder_input_ids"] = torch.randint(3, 300, (3, 4), generator=gen)
        batch["labels"] = torch.randint(3, 300, (3, 4), generator=gen)
    else:
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def greedy_by_recompute(forward, input_ids: torch.Tensor, steps: int,
                        decoder_start: Optional[int] = None) -> torch.Tensor:
    """Greedy decoding by full recomputation (no cache), EOS banned, from `forward(**inputs) -> logits`.

    PEFT's own generate cannot be the reference: with transformers 5.24 it passes the prefix as
    `past_key_values`, which the model drops in favour of `cache` (tests/test_model_parity.py,
    test_upstream_peft_generate_drops_the_prefix_where_forward_takes_cache). input_ids (batch,
    prompt); returns the prompt plus `steps` tokens (decoder-only) or the decoder start plus `steps`
    tokens (seq2seq).
    """
    def next_token(logits):  # (batch, seq, vocab) -> (batch, 1)
        return logits[:, -1].float().index_fill(-1, torch.tensor([EOS_ID], device=logits.device),
                                                float("-inf")).argmax(-1, keepdim=True)

    if decoder_start is not None:
        dec = torch.full((input_ids.shape[0], 1), decoder_start, device=input_ids.device)
        for _ in range(steps):
            dec = torch.cat([dec, next_token(forward(input_ids=input_ids, decoder_input_ids=dec).logits)], 1)
        return dec
    ids = input_ids
    for _ in range(steps):
        ids = torch.cat([ids, next_token(forward(input_ids=ids).logits)], 1)
    return ids


def max_abs_err(got: torch.Tensor, reference: torch.Tensor) -> float:
    return (got.float() - reference.float()).abs().max().item()


def parity_case(arch: str, projection: bool, ctx: CheckContext) -> tuple[list[dict], dict]:
    """One (arch, projection): rows for fp32, bf16 autocast and bf16 weights, and the generation check."""
    from prefixlab.engine.tiny import tiny_model

    task_type, device, low = PARITY_ARCHS[arch], ctx.device, autocast_dtype(ctx.device)
    # Bases go to the device before wrapping: the prefix must be created where the model lives.
    ours, ref = wrap_pair(tiny_model(arch).to(device), tiny_model(arch).to(device), task_type, projection)
    encoder_device = next(ours.prompt_encoder.parameters()).device
    batch = parity_batch(task_type, device)
    row = dict(arch=arch, prefix_projection=projection)
    with torch.no_grad():
        reference = ours(**batch).logits  # prefixlab fp32 (batch, seq, vocab): the low-precision rows' reference
        err_fp32 = max_abs_err(ref(**batch).logits, reference)
        prefix_effect = max_abs_err(ours.base_model(**batch).logits, reference)
        with torch.autocast(ctx.device_type, dtype=low):
            auto = max_abs_err(ours(**batch).logits, reference), max_abs_err(ref(**batch).logits, reference)
    # fp32: prefixlab's logits are the reference, so only PEFT's distance from them is an error.
    rows = [dict(row, mode="fp32", err_prefixlab=None, err_peft=err_fp32, prefix_effect=prefix_effect,
                 encoder_device=str(encoder_device),
                 ok=err_fp32 <= FP32_ATOL and prefix_effect > 100 * FP32_ATOL
                 and encoder_device.type == ctx.device_type),
            _low_precision_row(row, f"{dtype_name(low)} autocast", *auto)]
    # Weights in the low dtype, converted before wrapping as load_base(dtype=...) gives them.
    ours_low, ref_low = wrap_pair(tiny_model(arch).to(device, low), tiny_model(arch).to(device, low), task_type,
                                  projection, source=ours)
    with torch.no_grad():
        errors = max_abs_err(ours_low(**batch).logits, reference), max_abs_err(ref_low(**batch).logits, reference)
    rows.append(_low_precision_row(row, f"{dtype_name(low)} weights", *errors))
    start = ours.config.decoder_start_token_id if ours.config.is_encoder_decoder else None
    prompt = batch["input_ids"][:1]  # (1, 7)
    expected = greedy_by_recompute(ref, prompt, PARITY_GENERATE_STEPS, start)
    got = ours.generate(input_ids=prompt, max_new_tokens=PARITY_GENERATE_STEPS, min_new_tokens=PARITY_GENERATE_STEPS,
                        do_sample=False)
    return rows, dict(row, equal=bool(torch.equal(got, expected)))


def _low_precision_row(row: dict, mode: str, err_ours: float, err_peft: float) -> dict:
    ok = math.isfinite(err_ours) and err_ours <= BF16_FACTOR * err_peft + BF16_EPS
    return dict(row, mode=mode, err_prefixlab=err_ours, err_peft=err_peft, ok=ok)


@contextlib.contextmanager
def exact_fp32_matmuls():
    """fp32 parity means fp32: TF32 (if something enabled it) rounds differently for prefixlab's (n, d)
    and PEFT's (batch*n, d) prefix matmuls and would blow the 1e-4 tolerance."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def run_parity(ctx: CheckContext) -> dict:
    """Section 1 over every tiny architecture x prefix_projection."""
    rows, generation, problems = [], [], []
    with exact_fp32_matmuls():
        for arch in PARITY_ARCHS:
            for projection in (False, True):
                if ctx.time_left() <= 0:
                    problems.append(f"time budget ran out before {arch} projection={projection}")
                    break
                case_rows, case_gen = parity_case(arch, projection, ctx)
                rows += case_rows
                generation.append(case_gen)
    problems += [f"{r['arch']} projection={r['prefix_projection']} {r['mode']}: logits outside tolerance"
                 for r in rows if not r["ok"]]
    problems += [f"{g['arch']} projection={g['prefix_projection']}: greedy generation differs"
                 for g in generation if not g["equal"]]
    return {"status": FAILED if problems else OK, "problems": problems, "rows": rows, "generation": generation,
            "tolerance": {"fp32_atol": FP32_ATOL, "bf16_factor": BF16_FACTOR, "bf16_eps": BF16_EPS}}


# ---------------------------------------------------------------------------------------------
# Section 2: the offline preset end to end, in a worker subprocess
# ---------------------------------------------------------------------------------------------


def run_e2e(ctx: CheckContext) -> dict:
    """Section 2: train the preset exactly as the page's queue would, then check its run directory."""
    from prefixlab.engine.runs import RunDir

    run_dir = ctx.out_dir / "e2e-run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun into the same --out starts over
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if ctx.device_type == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"  # the CPU test run, also on a machine that has a GPU
    command = [sys.executable, "-m", "prefixlab", "train", str(ctx.spec_path), "--run-dir", str(run_dir)]
    timeout = max(1.0, ctx.time_left())
    with DeviceMemoryPoller(ctx.device) as memory:
        try:
            proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            status = json.dumps({k: v for k, v in RunDir(run_dir).read_status().items()
                                 if k in ("state", "step", "total_steps", "error")})
            raise RuntimeError(f"the worker did not finish within this section's {timeout:.0f} s (status {status}); "
                               f"its log is {run_dir / 'log.txt'}; rerun with a larger --budget-s") from None
    tail = " / ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
    if not (run_dir / "spec.json").is_file():
        raise RuntimeError(f"the worker wrote no run directory (exit status {proc.returncode}): {tail}")
    result = check_run_dir(run_dir, ctx.device)
    result.update(returncode=proc.returncode, device_peak_above_baseline_bytes=memory.peak_above_baseline,
                  memory_released=memory.released())
    if proc.returncode != 0:
        result["problems"].insert(0, f"worker exited with status {proc.returncode}: {tail}")
    if result["memory_released"] is False:
        result["problems"].append("device memory did not return to its baseline after the worker exited")
    result["status"] = FAILED if result["problems"] else OK
    return result


def check_run_dir(run_dir: Path, device: str) -> dict:
    """What a finished worker left in `run_dir`, against what the GPU path promises: state done on the
    requested device with the precision `auto` picks there, every variant's loss falling, adapters
    saved in fp32 whatever the training precision."""
    from prefixlab.engine.devices import mixed_precision_for
    from prefixlab.engine.runs import RunDir

    run = RunDir(run_dir)
    status, summary, spec = run.read_status(), run.read_summary() or {}, run.read_spec()
    device_type = torch.device(device).type
    problems = [] if status.get("state") == "done" else [f"state is {status.get('state')!r}, not 'done' "
                                                         f"(error: {status.get('error')})"]
    expected_precision = mixed_precision_for(spec.training.precision, device_type)
    if summary.get("mixed_precision") != expected_precision:
        problems.append(f"mixed precision {summary.get('mixed_precision')!r}, expected {expected_precision!r}")
    if not str(summary.get("device", "")).startswith(device_type):
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


# ---------------------------------------------------------------------------------------------
# Sections 3 and 4 on a GPT-2-medium-shaped model: training throughput and memory, generation latency
# ---------------------------------------------------------------------------------------------


def throughput_case(base, projection: bool, batch_size: int, ctx: CheckContext) -> dict:
    """prefixlab vs PEFT on one shared frozen base, the same batch, interleaved: one row of section 3.

    Neither library changes the base's modules for prefix tuning, so sharing it is fair and the
    resident model is the same for both; each step's peak above it is that implementation's own.
    """
    require_peft()
    args = replace(ctx.sizes.model, batch_size=batch_size)
    batch = make_batch(args)  # (batch, seq) random ids, labels = ids, no padding
    steps = {}
    for name, wrap in zip(IMPLS, (prefixlab_model, peft_model)):
        model = wrap(base, args, projection)
        forward = under_autocast(model, ctx.device_type, autocast_dtype(ctx.device))
        steps[name] = training_step(forward, [p for p in model.parameters() if p.requires_grad], batch)
    seconds = wall_seconds(time_interleaved(steps, args.repeats, args.warmup, torch.device(ctx.device)))
    tokens = batch_size * args.seq_len
    row = {"prefix_projection": projection, "batch_size": batch_size, "tokens_per_step": tokens}
    row.update({name: timing_summary(seconds[name], tokens, step_peak_bytes(steps[name], ctx.device))
                for name in IMPLS})
    row.update(throughput_ratios(row))
    return row


def run_throughput(ctx: CheckContext) -> dict:
    """Section 3: every (prefix_projection, batch size), as far as the time budget allows."""
    args = ctx.sizes.model
    base = build_base(args)  # eval mode: no dropout, so repeated steps do the same work
    rows, problems = [], []
    for projection in (False, True):
        for batch_size in ctx.sizes.batch_sizes:
            if ctx.time_left() <= 0:
                problems.append(f"time budget ran out before projection={projection} batch={batch_size}")
                continue
            rows.append(throughput_case(base, projection, batch_size, ctx))
            release_gpu_memory()
    shape = {k: getattr(args, k) for k in ("n_embd", "n_layer", "n_head", "vocab_size", "seq_len",
                                           "num_virtual_tokens", "warmup", "repeats")}
    return {"status": FAILED if problems else OK, "problems": problems, "rows": rows, "shape": shape,
            "autocast_dtype": dtype_name(autocast_dtype(ctx.device)),
            "resident_model_bytes": sum(p.numel() * p.element_size() for p in base.parameters())}


def run_generation(ctx: CheckContext) -> dict:
    """Section 4: greedy latency of the bare base model vs the same base with a prefixlab prefix."""
    sizes, args = ctx.sizes, ctx.sizes.model
    base = build_base(args)
    wrapped = prefixlab_model(base, args, projection=True).eval()
    dtype = autocast_dtype(ctx.device)
    rows, problems = [], []
    for batch_size in sizes.gen_batch_sizes:
        if ctx.time_left() <= 0:
            problems.append(f"time budget ran out before batch={batch_size}")
            continue
        gen = torch.Generator().manual_seed(batch_size)
        ids = torch.randint(0, args.vocab_size, (batch_size, sizes.gen_prompt_len), generator=gen).to(ctx.device)
        # min_new_tokens: a random model may emit EOS early; both contenders must do the same work.
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=sizes.gen_new_tokens,
                      min_new_tokens=sizes.gen_new_tokens, do_sample=False, pad_token_id=base.config.eos_token_id)
        calls = {name: functools.partial(under_autocast(model.generate, ctx.device_type, dtype), **kwargs)
                 for name, model in (("base", base), ("prefix", wrapped))}
        seconds = wall_seconds(time_interleaved(calls, sizes.gen_repeats, 1, torch.device(ctx.device)))
        rows.append({"batch_size": batch_size, "base_ms": 1000 * median(seconds["base"]),
                     "prefix_ms": 1000 * median(seconds["prefix"]), "calls": len(seconds["base"])})
    return {"status": FAILED if problems else OK, "problems": problems, "rows": rows,
            "new_tokens": sizes.gen_new_tokens, "prompt_len": sizes.gen_prompt_len, "autocast_dtype": dtype_name(dtype)}


def run_paired(ctx: CheckContext) -> dict:
    """Section 5: the lab's paired step (both variants) fused vs one pass per variant vs two PEFT
    models, and gradient checkpointing's peak memory at 4x the sequence length (bench paired)."""
    from prefixlab.tools.bench import run_paired_bench

    rows, problems = [], []
    for batch_size in ctx.sizes.batch_sizes:
        if ctx.time_left() <= 0:
            problems.append(f"time budget ran out before batch={batch_size}")
            continue
        result = run_paired_bench(replace(ctx.sizes.model, batch_size=batch_size, device=ctx.device))
        rows.append({"batch_size": batch_size, "ms": {k: 1000 * v for k, v in result["min_s"].items()},
                     "ratios": result["ratios"], "paired_memory": result["paired_memory"],
                     "checkpointing": result["checkpointing"]})
        release_gpu_memory()
    return {"status": FAILED if problems else OK, "problems": problems, "rows": rows}


# ---------------------------------------------------------------------------------------------
# Running the sections in order within the time budget; an exception or a late start is a result
# ---------------------------------------------------------------------------------------------


# name -> (function, share of the budget it may use before the next section starts)
SECTIONS: dict[str, tuple[Callable[[CheckContext], dict], float]] = {
    "parity": (run_parity, 0.15),  # expected on an H100: ~15 s
    "e2e": (run_e2e, 0.30),  # ~40 s: interpreter start, 40 steps x 2 variants, evals, samples
    "throughput": (run_throughput, 0.20),  # ~20 s
    "generation": (run_generation, 0.20),  # ~30 s: 24 generate calls of 32 tokens, eager decoding
    "paired": (run_paired, 0.15),  # ~30 s: five contenders per batch size, four memory probes (in process)
}
SECTION_TITLES = {
    "parity": "1. Parity with PEFT on the device",
    "e2e": "2. Offline preset end to end",
    "throughput": "3. Training throughput and memory (GPT-2-medium shape, random weights)",
    "generation": "4. Generation latency (greedy)",
    "paired": "5. Both variants' step: fused vs one pass each vs two PEFT models; checkpointing memory",
}


def run_section(name: str, ctx: CheckContext, section_budget_s: float, hard_deadline: float) -> dict:
    """Run one section; an exception becomes {"status": "error", ...} instead of ending the check."""
    if hard_deadline - time.monotonic() <= 0:
        return {"status": SKIPPED, "reason": "the time budget was used up by earlier sections"}
    ctx.deadline = min(time.monotonic() + section_budget_s, hard_deadline)
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            # Deprecation noise from PEFT on transformers 5.x would bury the report; results carry the facts.
            warnings.simplefilter("ignore")
            result = SECTIONS[name][0](ctx)
    except Exception as err:  # noqa: BLE001 - a failing section is a result, not the end of the check
        result = {"status": ERROR, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    finally:
        release_gpu_memory()  # so the next section's peak memory is its own
    result["seconds"] = time.monotonic() - start
    return result


def installed_version(package: str) -> Optional[str]:
    """The installed distribution's version, read without importing it (importing PEFT takes seconds)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> tuple[dict, dict]:
    """(device facts, library versions) for the results header."""
    import prefixlab

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    # peft None: the parity and throughput sections then report "pip install -r tests/requirements.txt".
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                **{name: installed_version(name) for name in ("transformers", "accelerate")},
                "prefixlab": prefixlab.__version__, "peft": installed_version("peft"), "commit": commit}
    if torch.device(device).type != "cuda":
        return {"name": f"{device} (test run)"}, versions
    props = torch.cuda.get_device_properties(device)
    facts = {"name": props.name, "capability": f"{props.major}.{props.minor}",
             "memory_gib": round(props.total_memory / 2**30, 1), "bf16": cuda_bf16_native()}
    return facts, versions


def run_check(out_dir: Path, device: str, sections: list[str], budget_s: float, sizes: CheckSizes) -> dict:
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
    ctx = CheckContext(device=device, sizes=sizes, out_dir=out_dir, deadline=hard_deadline)
    for name in sections:
        print(f"gpucheck: {name} ...", file=sys.stderr, flush=True)
        results["sections"][name] = run_section(name, ctx, SECTIONS[name][1] * budget_s, hard_deadline)
        print(f"gpucheck: {name} {results['sections'][name]['status']}", file=sys.stderr, flush=True)
    results["wall_s"] = time.monotonic() - start
    results["status"] = overall_status(results)
    return results


# ---------------------------------------------------------------------------------------------
# results.md and results.json: pure, from the results dict (every ratio derived from raw numbers)
# ---------------------------------------------------------------------------------------------


def fmt_number(value: Optional[float], spec: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def fmt_mib(nbytes: Optional[float]) -> str:
    return fmt_number(None if nbytes is None else nbytes / MiB, ",.0f", " MiB")


def fmt_ratio(value: Optional[float]) -> str:
    return fmt_number(value, ".2f", "x")


def fmt_err(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def render_markdown(results: dict) -> str:
    """The short report: a header (date, device, versions, status) and one table per section."""
    device, versions = results.get("device", {}), results.get("versions", {})
    lines = [f"# prefixlab GPU check, {results.get('date', '?')}, {device.get('name', '?')}", ""]
    if results.get("test_run"):
        lines += ["**Test run on a non-CUDA device with tiny sizes: these numbers are not a GPU result.**", ""]
    lines.append("- status: " + overall_status(results) + f" (wall {fmt_number(results.get('wall_s'), '.0f', ' s')}"
                 + f", budget {fmt_number(results.get('budget_s'), '.0f', ' s')})")
    facts = [f"{k} {v}" for k, v in device.items() if k != "name"]
    if facts:
        lines.append("- device: " + ", ".join(facts))
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    renderers = {"parity": _parity_md, "e2e": _e2e_md, "throughput": _throughput_md, "generation": _generation_md,
                 "paired": _paired_md}
    for name, section in results.get("sections", {}).items():
        lines += ["", f"## {SECTION_TITLES[name]}: {section.get('status', '?')}"
                  + (f" ({section['seconds']:.1f} s)" if section.get("seconds") is not None else ""), ""]
        if section.get("status") in (ERROR, SKIPPED):
            lines.append(f"{section['status']}: {section.get('error') or section.get('reason') or 'no message'}")
            continue
        lines += renderers[name](section)
        lines += [f"- problem: {problem}" for problem in section.get("problems", [])]
    return "\n".join(lines) + "\n"


def _paired_md(section: dict) -> list[str]:
    rows = []
    for r in section.get("rows", []):
        ms, ratios, ckpt = r["ms"], r["ratios"], r["checkpointing"]
        rows.append([r["batch_size"], fmt_number(ms.get("fused"), ".1f"), fmt_number(ms.get("sequential"), ".1f"),
                     fmt_number(ms.get("peft_two_models"), ".1f"), fmt_number(ratios.get("fused/sequential"), ".3f"),
                     fmt_number(ratios.get("fused/peft_two_models"), ".3f"),
                     fmt_number(ratios.get("base_stacked/base_separate"), ".3f"),
                     fmt_number(r.get("paired_memory", {}).get("ratio"), ".3f"), fmt_number(ckpt.get("ratio"), ".3f")])
    return ["Fastest of the interleaved repeats, ms per paired step; stacking alone: the frozen base over both "
            "variants' rows in one pass / one pass each (what fusing can approach); peak memory of the paired step "
            "fused / one pass each; checkpointing: one variant's peak memory with / without it at 4x the sequence "
            "length.", ""] + table(
        ["batch", "fused ms", "one pass each ms", "two PEFT models ms", "fused / one pass each",
         "fused / PEFT", "stacking alone", "fused / one pass each memory", "checkpointing / plain memory"], rows)


def _parity_md(section: dict) -> list[str]:
    tol = section.get("tolerance", {})
    lines = [f"Max |logits - prefixlab's fp32 logits| on a padded batch. fp32: PEFT within {tol.get('fp32_atol')}. "
             f"Low precision: prefixlab's error <= {tol.get('bf16_factor')} x PEFT's error + {tol.get('bf16_eps')}.",
             ""]
    rows = [[r["arch"], r["prefix_projection"], r["mode"], fmt_err(r.get("err_prefixlab")), fmt_err(r.get("err_peft")),
             "yes" if r.get("ok") else "**NO**"] for r in section.get("rows", [])]
    lines += table(["arch", "projection", "mode", "max err prefixlab", "max err PEFT", "ok"], rows)
    gen = section.get("generation", [])
    if gen:
        same = sum(1 for g in gen if g.get("equal"))
        lines += ["", f"Greedy generation (fp32) equal to decoding with PEFT's forward: {same}/{len(gen)}"
                  + "".join(f"; differs: {g['arch']} projection={g['prefix_projection']}" for g in gen
                            if not g.get("equal"))]
    return lines


def _e2e_md(section: dict) -> list[str]:
    released = section.get("memory_released")
    lines = [f"- run: state {section.get('state')}, device {section.get('device')}, mixed precision "
             f"{section.get('mixed_precision')}, wall {fmt_number(section.get('wall_time_s'), '.1f', ' s')}",
             f"- peak GPU memory: worker {fmt_mib(section.get('worker_peak_gpu_bytes'))}, device-wide while it ran "
             f"{fmt_mib(section.get('device_peak_above_baseline_bytes'))} above the idle baseline; released after "
             f"exit: {'n/a' if released is None else ('yes' if released else '**NO**')}", ""]
    rows = [[name, fmt_number(v.get("first_loss"), ".3f"), fmt_number(v.get("last_loss"), ".3f"),
             fmt_number(v.get("tokens_per_s")), v.get("adapter_dtype", "n/a")]
            for name, v in section.get("variants", {}).items()]
    return lines + table(["variant", "first loss", "last loss", "tokens/s", "saved adapter dtype"], rows)


def _throughput_md(section: dict) -> list[str]:
    shape = section.get("shape", {})
    lines = [f"Random GPT-2 (n_embd {shape.get('n_embd')}, n_layer {shape.get('n_layer')}, n_head "
             f"{shape.get('n_head')}, vocab {shape.get('vocab_size')}), seq {shape.get('seq_len')}, "
             f"{shape.get('num_virtual_tokens')} virtual tokens, {section.get('autocast_dtype')} autocast, "
             f"AdamW; median of {shape.get('repeats')} interleaved steps each. Memory: a step's peak above what "
             f"is resident (the shared base model is {fmt_mib(section.get('resident_model_bytes'))}).", ""]
    rows = []
    for r in section.get("rows", []):
        ours, theirs, derived = r.get("prefixlab", {}), r.get("peft", {}), throughput_ratios(r)
        rows.append([r["prefix_projection"], r["batch_size"], fmt_number(ours.get("tokens_per_s")),
                     fmt_number(theirs.get("tokens_per_s")), fmt_ratio(derived["speedup"]),
                     fmt_mib(ours.get("step_peak_bytes")), fmt_mib(theirs.get("step_peak_bytes")),
                     fmt_ratio(derived["memory_ratio"])])
    return lines + table(["projection", "batch", "prefixlab tok/s", "PEFT tok/s", "speedup", "prefixlab step peak",
                          "PEFT step peak", "memory ratio"], rows)


def _generation_md(section: dict) -> list[str]:
    lines = [f"{section.get('new_tokens')} new tokens after a {section.get('prompt_len')}-token prompt, "
             f"{section.get('autocast_dtype')} autocast, median of interleaved calls.", ""]
    rows = [[r["batch_size"], fmt_number(r.get("base_ms"), ".1f"), fmt_number(r.get("prefix_ms"), ".1f"),
             fmt_ratio(ratio(r.get("prefix_ms"), r.get("base_ms")))] for r in section.get("rows", [])]
    return lines + table(["batch", "base model ms", "with prefix ms", "prefix / base"], rows)


def write_results(out_dir: Path, results: dict) -> str:
    """DIR/results.json (atomic) and DIR/results.md; returns the markdown."""
    from prefixlab.engine.runs import atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", json.loads(json.dumps(results, default=str)))
    markdown = render_markdown(results)
    (out_dir / "results.md").write_text(markdown, encoding="utf-8")
    return markdown


# ---------------------------------------------------------------------------------------------
# The command line: python -m prefixlab gpucheck [--out DIR] [--sections ...] [--budget-s S]
# ---------------------------------------------------------------------------------------------


def parse_sections(text: str) -> list[str]:
    """"e2e,parity" -> the named sections, in the check's fixed order."""
    names = {s.strip() for s in text.split(",") if s.strip()}
    unknown = sorted(names - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or [text]}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in names]


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--budget-s {text!r}: give a positive number of seconds, e.g. 330")
    return value


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m prefixlab gpucheck",
                                     description="Check the GPU path and write DIR/results.json and DIR/results.md.")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help="folder for results.json, results.md and e2e-run/ (default: %(default)s)")
    parser.add_argument("--sections", type=parse_sections, default=list(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all, in that order)")
    parser.add_argument("--budget-s", type=positive_seconds, default=DEFAULT_BUDGET_S,
                        help="seconds all sections together may take (default %(default)s: under 6 minutes)")
    # For the CPU tests only: runs the same code with tiny sizes; results are marked as a test run.
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """0: every section passed; 1: a section failed, errored or was skipped; 2: no CUDA device."""
    args = parse_args(argv)
    is_cuda = torch.device(args.device).type == "cuda"
    if is_cuda and not torch.cuda.is_available():
        print(no_cuda_message(), file=sys.stderr)
        return NO_CUDA_EXIT
    from transformers.utils import logging as transformers_logging

    sizes = paper_sizes(args.device) if is_cuda else tiny_sizes(args.device)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # config warnings about random models are not findings
    try:
        results = run_check(args.out, args.device, args.sections, args.budget_s, sizes)
    finally:
        transformers_logging.set_verbosity(verbosity)
    print(write_results(args.out, results))
    return 0 if results["status"] == OK else 1


if __name__ == "__main__":
    sys.exit(main())
