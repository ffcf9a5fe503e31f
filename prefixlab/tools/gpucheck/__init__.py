"""`python -m prefixlab gpucheck --out DIR`: what the CPU test suite cannot check, in one command.

On a CUDA machine four sections run in order, each recording its numbers, or its error, in
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

Nothing is downloaded. Without CUDA it says so and exits with status 2. `--device cpu` is for the
tests only: it runs the same code with tiny sizes and marks the results as a test run.

Layout: common.py (sizes, the section context, device and memory probes), parity.py (section 1),
e2e.py (section 2), speed.py (sections 3 and 4), runner.py (the sections in order within the
budget), report.py (arithmetic, results.md and results.json, no device), cli.py (arguments, main).
Every name is re-exported here; a test that monkeypatches one must patch the module that reads it,
e.g. `prefixlab.tools.gpucheck.common.device_used_bytes`.
"""

from __future__ import annotations

from prefixlab.tools.bench import BenchArgs, build_base, make_batch, time_interleaved
from prefixlab.tools.gpucheck.cli import main, parse_args, parse_sections, positive_seconds
from prefixlab.tools.gpucheck.common import (
    DEFAULT_BUDGET_S,
    DEFAULT_OUT,
    NO_CUDA_EXIT,
    OFFLINE_PRESET,
    REPO_ROOT,
    CheckContext,
    CheckSizes,
    DeviceMemoryPoller,
    autocast_dtype,
    device_used_bytes,
    no_cuda_message,
    paper_sizes,
    release_memory,
    require_peft,
    step_peak_bytes,
    tiny_sizes,
    wall_seconds,
)
from prefixlab.tools.gpucheck.e2e import check_run_dir, run_e2e, saved_adapter_dtype, train_command, variant_report
from prefixlab.tools.gpucheck.parity import (
    BF16_EPS,
    BF16_FACTOR,
    EOS_ID,
    FP32_ATOL,
    PARITY_ARCHS,
    PARITY_GENERATE_STEPS,
    PARITY_VIRTUAL_TOKENS,
    copy_prefix,
    exact_fp32_matmuls,
    greedy_by_recompute,
    max_abs_err,
    parity_batch,
    parity_case,
    run_parity,
    wrap_pair,
)
from prefixlab.tools.gpucheck.report import (
    ERROR,
    FAILED,
    IMPLS,
    OK,
    SKIPPED,
    median,
    overall_status,
    render_markdown,
    throughput_ratios,
    timing_summary,
    write_results,
)
from prefixlab.tools.gpucheck.runner import SECTIONS, environment, run_check, run_section
from prefixlab.tools.gpucheck.speed import (
    autocast_forward,
    generation_call,
    medium_model,
    model_bytes,
    run_generation,
    run_throughput,
    throughput_case,
    wrap_prefix,
)

__all__ = [
    "BF16_EPS", "BF16_FACTOR", "DEFAULT_BUDGET_S", "DEFAULT_OUT", "EOS_ID", "ERROR", "FAILED", "FP32_ATOL", "IMPLS",
    "NO_CUDA_EXIT", "OFFLINE_PRESET", "OK", "PARITY_ARCHS", "PARITY_GENERATE_STEPS", "PARITY_VIRTUAL_TOKENS",
    "REPO_ROOT", "SECTIONS", "SKIPPED", "BenchArgs", "CheckContext", "CheckSizes", "DeviceMemoryPoller",
    "autocast_dtype", "autocast_forward", "build_base", "check_run_dir", "copy_prefix", "device_used_bytes",
    "environment", "exact_fp32_matmuls", "generation_call", "greedy_by_recompute", "main", "make_batch",
    "max_abs_err", "median", "medium_model", "model_bytes", "no_cuda_message", "overall_status", "paper_sizes",
    "parity_batch", "parity_case", "parse_args", "parse_sections", "positive_seconds", "release_memory",
    "render_markdown", "require_peft", "run_check", "run_e2e", "run_generation", "run_parity", "run_section",
    "run_throughput", "saved_adapter_dtype", "step_peak_bytes", "throughput_case", "throughput_ratios",
    "time_interleaved", "timing_summary", "tiny_sizes", "train_command", "variant_report", "wall_seconds",
    "wrap_pair", "wrap_prefix", "write_results",
]
