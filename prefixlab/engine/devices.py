"""Where a worker trains and in which precision: CUDA, else Apple MPS, else CPU (accelerate's order),
with bf16 autocast where the device computes it natively, fp16 with a gradient scaler on GPUs that
do not, fp32 on request or on CPU; and the accelerator and GPU memory bookkeeping around a job.

`select_mixed_precision` is the policy as a pure function (tested as a table); the rest asks torch
about this machine.
"""

from __future__ import annotations

import gc
import os

import torch

from prefixlab.engine.spec import TrainingSpec

# Oldest torch that accelerate accepts for each mixed precision on Apple MPS (bf16 autocast; fp16
# needs its GradScaler, which accelerate allows on MPS from torch 2.8).
MPS_BF16_MIN_TORCH = (2, 6)
MPS_FP16_MIN_TORCH = (2, 8)


def select_mixed_precision(precision: str, device_type: str, bf16_native: bool,
                           torch_version: tuple[int, int]) -> str:
    """accelerate's mixed_precision ("bf16", "fp16" or "no") for a spec precision on a device; pure.

    device_type: "cuda", "mps" or "cpu", the device accelerate will train on. bf16_native: the
    device computes bfloat16 natively (CUDA compute capability 8.0+, MPS on macOS 14+; CPUs do).
    auto: bf16 where native, else fp16 with a gradient scaler on a GPU, fp32 ("no") on CPU. An
    explicit choice the device cannot do raises ValueError naming training.precision and the fix.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"training.precision: must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp32":
        return "no"
    if device_type == "cuda":
        if precision == "bf16" and not bf16_native:
            raise ValueError("training.precision: bf16 needs a GPU with native bfloat16 (compute capability 8.0 or "
                             "newer: A100, RTX 30xx, H100, ...) and this one has none; use auto (fp16 with a "
                             "gradient scaler) or fp32")
        return "fp16" if precision == "fp16" or not bf16_native else "bf16"
    if device_type == "mps":
        bf16_ok = bf16_native and torch_version >= MPS_BF16_MIN_TORCH
        fp16_ok = torch_version >= MPS_FP16_MIN_TORCH
        if precision == "auto":
            return "bf16" if bf16_ok else "fp16" if fp16_ok else "no"
        if precision == "bf16" and not bf16_ok:
            raise ValueError("training.precision: bf16 on Apple MPS needs macOS 14 or newer and torch "
                             f"{'.'.join(map(str, MPS_BF16_MIN_TORCH))} or newer; use auto or fp32")
        if precision == "fp16" and not fp16_ok:
            raise ValueError("training.precision: fp16 on Apple MPS needs torch "
                             f"{'.'.join(map(str, MPS_FP16_MIN_TORCH))} or newer (for its gradient scaler); "
                             "use auto or fp32")
        return precision
    if precision == "fp16":
        raise ValueError("training.precision: fp16 needs a CUDA or Apple MPS GPU and none is available; "
                         "use auto or fp32 (bf16 also works on CPU)")
    return "bf16" if precision == "bf16" else "no"


def training_device_type() -> str:
    """The device type accelerate trains on: CUDA, else Apple MPS, else CPU (ACCELERATE_USE_CPU forces CPU)."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if _mps_available() else "cpu"


def cuda_bf16_native() -> bool:
    """Compute capability 8.0+ (or ROCm). torch.cuda.is_bf16_supported() alone also says True on
    older GPUs that only emulate bf16 (T4, V100), where fp16 is the fast half precision."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch without the argument
        return torch.cuda.is_bf16_supported()


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def mixed_precision_for(precision: str, device_type: str | None = None) -> str:
    """accelerate's mixed_precision for a spec precision on this machine: auto is bf16 on GPUs
    with native bf16, fp16 (with a gradient scaler) on other CUDA GPUs, the same on Apple MPS where
    this torch supports it, fp32 on CPU. See select_mixed_precision. device_type: the device to
    answer for ("cuda", "mps", "cpu"; default: the one a worker started now would train on)."""
    device_type = device_type or training_device_type()
    if device_type == "cuda":
        bf16_native = cuda_bf16_native()
    elif device_type == "mps":
        from accelerate.utils import is_bf16_available

        bf16_native = is_bf16_available()  # macOS 14 or newer
    else:
        bf16_native = True
    return select_mixed_precision(precision, device_type, bf16_native, _torch_version())


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def stale_accelerate_state(state: dict, mixed_precision: str, device_type: str, world_size: int) -> bool:
    """Whether accelerate's process-wide state (AcceleratorState._shared_state) must be reset before
    an Accelerator for this job: accelerate refuses a second Accelerator with another precision or
    device in one process. A worker process runs one job, but tests, benchmarks and notebooks run
    several. Never under a launcher (world_size > 1): the process group lives in that state."""
    if not state or world_size > 1:
        return False
    device = state.get("device")
    return state.get("_mixed_precision") != mixed_precision or (device is not None and device.type != device_type)


def make_accelerator(training: TrainingSpec):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    mixed_precision = mixed_precision_for(training.precision)
    device_type = training_device_type()
    if stale_accelerate_state(AcceleratorState._shared_state, mixed_precision, device_type,
                              int(os.environ.get("WORLD_SIZE", "1"))):
        AcceleratorState._reset_state(reset_partial_state=True)
    # Under DDP, a variant that is not in a forward (one pass per variant) leaves its prefix without gradient.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True on a CPU: without it, processes started by `accelerate launch` on a machine with no GPU
    # each train alone (DistributedType.NO) instead of together over gloo (MULTI_CPU).
    return Accelerator(mixed_precision=mixed_precision, cpu=device_type == "cpu",
                       gradient_accumulation_steps=training.gradient_accumulation_steps,
                       kwargs_handlers=[ddp])


def peak_gpu_memory(device: torch.device) -> int | None:
    """Bytes torch allocated at the peak on a CUDA device during this process; None elsewhere."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def release_gpu_memory() -> None:
    """Collect what the finished job referenced and return torch's cached GPU memory. A worker
    process frees everything when it exits; this matters when run_worker runs inside another
    process (tests, the engine benchmark, the GPU check)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
