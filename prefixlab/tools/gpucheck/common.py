"""What every GPU-check section shares: sizes, the context a section runs in, and device/memory probes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from prefixlab.tools.bench import BenchArgs, _sync
from prefixlab.engine.devices import cuda_bf16_native, release_gpu_memory

REPO_ROOT = Path(__file__).resolve().parents[3]
OFFLINE_PRESET = REPO_ROOT / "presets" / "offline-tiny.json"
DEFAULT_OUT = "gpucheck-results"
DEFAULT_BUDGET_S = 330.0  # leaves ~30 s of the 6 minutes for interpreter and CUDA start-up
NO_CUDA_EXIT = 2


@dataclass(frozen=True)
class CheckSizes:
    """Sizes for sections 3 and 4: the model and timing repeats as the core benchmark's BenchArgs
    (prefixlab/bench.py), plus the batch sizes and generation lengths this check sweeps."""

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
# Device helpers
# ---------------------------------------------------------------------------------------------


def no_cuda_message() -> str:
    return (
        "no CUDA device: gpucheck measures the GPU path (parity with PEFT on CUDA in fp32/bf16, the offline "
        "preset trained on the GPU, GPT-2-medium throughput and memory vs PEFT, generation latency) and needs "
        f"a visible NVIDIA GPU and a CUDA build of torch; here torch {torch.__version__} reports "
        f"torch.cuda.is_available() == False (built with CUDA {torch.version.cuda}). See docs/gpu.md for what to "
        "install. Everything else is covered by the CPU test suite: python -m pytest -q"
    )


def autocast_dtype(device: str) -> torch.dtype:
    """bf16 where the device supports it natively (Ampere and newer, CPU), else fp16 (what the worker picks)."""
    if torch.device(device).type == "cuda" and not cuda_bf16_native():
        return torch.float16
    return torch.bfloat16


# Between sections: drop what the previous one left, so the next one's peak memory is its own.
release_memory = release_gpu_memory


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


def wall_seconds(times: dict[str, dict[str, list[float]]]) -> dict[str, list[float]]:
    """bench.time_interleaved's {name: {"wall": [...], "cpu": [...]}} -> {name: wall seconds}: on a GPU
    only synchronised wall time measures the work (CPU time is the launching thread's)."""
    return {name: t["wall"] for name, t in times.items()}


def step_peak_bytes(step: Callable[[], object], device: str) -> Optional[int]:
    """Peak memory one call of `step` allocates above what is resident when it starts (None off CUDA):
    activations, gradients and the prefix's working memory, not the shared frozen model."""
    if torch.device(device).type != "cuda":
        return None
    _sync(torch.device(device))
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    _sync(torch.device(device))
    return torch.cuda.max_memory_allocated(device) - start



def require_peft():
    """PEFT, the reference; a section that needs it fails with the install command when it is missing."""
    try:
        import peft
    except ImportError as err:
        raise RuntimeError("peft is not installed; this section compares with it: "
                           "pip install -r tests/requirements.txt") from err
    return peft


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float16", "fp16")
