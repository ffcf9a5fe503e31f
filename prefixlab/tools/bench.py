"""Benchmarks: `python -m prefixlab bench [core|paired|engine|startup|page|all] [--quick] [--json PATH]`.

    core     one prefix-tuning training step of prefixlab vs PEFT vs the floor, and memory
    paired   both variants' step fused vs one pass each vs two PEFT models, what stacking alone
             saves, and gradient checkpointing's memory
    engine   one paired lockstep run against two separate single-variant runs
    startup  cold starts of the everyday commands, as subprocesses, against their budgets
    page     the page's timer tick with 20 viewers of one training run: p50 / p95 / max latency

Timings are reported, never asserted: medians and ratios measured in the same invocation, with
the contenders interleaved so that drift in machine speed hits all of them alike.

    python -m prefixlab.tools.bench core --quick --repeats 2 --no-peak-memory   # every section's own options
    python -m prefixlab.tools.bench engine --model gpt2 --steps 50 --batch-size 8
    python -m prefixlab.tools.bench startup --repeats 5 --only runs,inspect
    python -m prefixlab.tools.bench page --viewers 20 --seconds 20
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer around a step measures the step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: int,
                     device: torch.device) -> dict[str, dict[str, list[float]]]:
    """Seconds per step for each contender, measured round-robin with a rotating order.

    Returns {name: {"wall": [...], "cpu": [...]}}. "cpu" is this process's CPU time (all threads):
    on a shared CPU machine it is far less disturbed by other processes than wall time. On CUDA
    only wall time (with synchronisation) means anything.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    synchronize(device)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            steps[name]()
            synchronize(device)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


# =============================================================================================
# core: one training step (forward + backward + AdamW) of prefixlab, PEFT and the floor
# =============================================================================================
#
# On a GPT-2-small-sized random model, batch 8 x 128 tokens, 10 virtual tokens (--quick: a tiny
# model, seconds). The contenders share one frozen base model. The floor is the same model fed a
# prefix that is a plain leaf tensor of key/values per layer (no encoder, no wrapper): no
# prefix-tuning step can beat it. Memory: the projection and no-projection variants held as two
# adapters on one base (prefixlab) versus two PEFT models (two loaded bases, PEFT's usual way),
# each measured in a fresh process that builds the setup and runs one training step per variant:
# on CUDA torch.cuda.max_memory_allocated, on CPU the peak resident set size (VmHWM, reset before
# the setup) above the process's size after imports.


@dataclass
class BenchArgs:
    n_embd: int = 768  # GPT-2 small
    n_layer: int = 12
    n_head: int = 12
    vocab_size: int = 50257
    batch_size: int = 8
    seq_len: int = 128
    num_virtual_tokens: int = 10
    repeats: int = 7
    warmup: int = 1
    device: str = "auto"
    peak_memory: bool = True
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "BenchArgs":
        sizes = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=384, batch_size=2, seq_len=16,
                     num_virtual_tokens=4, repeats=3, warmup=1)
        return cls(**{**sizes, **overrides})

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def core_args(ns: argparse.Namespace) -> BenchArgs:
    overrides = {k: v for k, v in {
        "repeats": ns.repeats, "warmup": ns.warmup, "device": ns.device, "batch_size": ns.batch_size,
        "seq_len": ns.seq_len, "num_virtual_tokens": ns.num_virtual_tokens}.items() if v is not None}
    if ns.no_peak_memory:
        overrides["peak_memory"] = False
    return BenchArgs.quick(**overrides) if ns.quick else BenchArgs(**overrides)


def build_base(args: BenchArgs):
    """A GPT-2 with random weights (no download), built directly on the device (no host copy of a
    355M-parameter model to initialise and move), in eval mode so that steps are deterministic."""
    from transformers import GPT2Config, GPT2LMHeadModel

    last_id = args.vocab_size - 1  # GPT-2's <|endoftext|> is its last id
    config = GPT2Config(n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head, vocab_size=args.vocab_size,
                        n_positions=max(1024, args.seq_len + args.num_virtual_tokens), bos_token_id=last_id,
                        eos_token_id=last_id, loss_type="ForCausalLM")
    device = args.resolved_device()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(args.seed)
        return GPT2LMHeadModel(config).eval()


def make_batch(args: BenchArgs) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen)
    ids = ids.to(args.resolved_device())
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def training_step(model: Callable, params: list[torch.Tensor], batch: dict) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    return step


def _prefix_config(library, args: BenchArgs, projection: bool):
    return library.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.num_virtual_tokens,
                                      prefix_projection=projection)


def prefixlab_model(base, args: BenchArgs, projection: bool):
    import prefixlab

    return prefixlab.get_peft_model(base, _prefix_config(prefixlab, args, projection))


def peft_model(base, args: BenchArgs, projection: bool):
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(base, _prefix_config(peft, args, projection))


def floor_step(base, args: BenchArgs, batch: dict) -> Callable[[], None]:
    """The frozen model with a prefix that is already key/values: per layer two leaf tensors
    (batch, heads, n, head_dim), handed over in a fresh DynamicCache each step."""
    from transformers import DynamicCache

    from prefixlab.core.model import cache_kwarg_name

    device = args.resolved_device()
    shape = (args.batch_size, args.n_head, args.num_virtual_tokens, args.n_embd // args.n_head)
    leaves = [torch.randn(shape, device=device, requires_grad=True) for _ in range(2 * args.n_layer)]
    for param in base.parameters():
        param.requires_grad_(False)
    mask = torch.cat([batch["attention_mask"].new_ones(args.batch_size, args.num_virtual_tokens),
                      batch["attention_mask"]], dim=1)
    cache_kwarg = cache_kwarg_name(base)  # `cache` from transformers 5.24, `past_key_values` before

    def forward(input_ids, attention_mask, labels):
        cache = DynamicCache([(leaves[2 * i], leaves[2 * i + 1]) for i in range(args.n_layer)])
        return base(input_ids=input_ids, attention_mask=mask, labels=labels, **{cache_kwarg: cache})

    return training_step(forward, leaves, batch)


def prefix_path_step(model, batch_size: int) -> Callable[[], None]:
    """Only the prefix's share of a step: build the cache for the batch, backward through it.

    Works for our wrapper and PEFT's (both have get_prompt(batch_size) -> DynamicCache); the sum of
    the cache tensors stands in for the attention layers that consume them.
    """
    def step() -> None:
        cache = model.get_prompt(batch_size)
        sum(layer.keys.sum() + layer.values.sum() for layer in cache.layers).backward()

    return step


def probe_peak_memory(setup: str, args: BenchArgs) -> dict:
    """Build `setup`, run one training step per variant, return its peak memory (MiB).

    Meaningful in a fresh process (see measure_peak_memory): on CPU the peak RSS is for the process.
    """
    import peft  # noqa: F401  (imports count in the baseline, not in the setup)

    import prefixlab

    device = args.resolved_device()
    batch = make_batch(args)
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0). ru_maxrss cannot be
    # used: a spawned child inherits its parent's ru_maxrss across fork and exec.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = _status_mib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if setup == "prefixlab_two_adapters_one_base":
        model = prefixlab.get_peft_model(build_base(args), _prefix_config(prefixlab, args, False), "no_projection")
        model.add_adapter("projection", _prefix_config(prefixlab, args, True))
        for name in ("no_projection", "projection"):
            model.set_adapter(name)
            training_step(model, list(model.prompt_encoder[name].parameters()), batch)()
    elif setup == "peft_two_models":
        models = [peft_model(build_base(args), args, projection) for projection in (False, True)]
        for model in models:
            training_step(model, list(model.prompt_encoder.parameters()), batch)()
    else:
        raise ValueError(f"setup={setup!r}: use 'prefixlab_two_adapters_one_base' or 'peft_two_models'")
    synchronize(device)
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20, "measure": "cuda_max_allocated"}
    return {"peak_mib": _status_mib("VmHWM") - baseline, "measure": "cpu_peak_rss_above_baseline"}


def _probe_in_child(setup: str, args_dict: dict, queue) -> None:
    warnings.simplefilter("ignore")
    queue.put(probe_peak_memory(setup, BenchArgs(**args_dict)))


def measure_peak_memory(args: BenchArgs) -> dict[str, dict]:
    context = multiprocessing.get_context("spawn")
    results = {}
    for setup in ("prefixlab_two_adapters_one_base", "peft_two_models"):
        queue = context.Queue()
        process = context.Process(target=_probe_in_child, args=(setup, asdict(args), queue))
        process.start()
        results[setup] = queue.get(timeout=1800)
        process.join()
    return results


def require_peft() -> None:
    """The reference is a test dependency: without it, say what to install before building anything."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError("the core benchmark times prefixlab against PEFT, which is not installed: "
                         "pip install -r tests/requirements.txt (PEFT 0.21.2); `bench engine` needs no PEFT"
                         ) from None


def run_core_bench(args: BenchArgs) -> dict:
    """Run the benchmark; returns medians (s), ratios and memory (MiB). Prints nothing."""
    require_peft()
    device = args.resolved_device()
    base = build_base(args)
    batch = make_batch(args)
    steps = {"floor": floor_step(base, args, batch)}
    for projection in (False, True):
        suffix = "projection" if projection else "no_projection"
        for library, wrap in (("prefixlab", prefixlab_model), ("peft", peft_model)):
            model = wrap(base, args, projection)
            steps[f"{library}/{suffix}"] = training_step(model, list(model.prompt_encoder.parameters()), batch)
    times = time_interleaved(steps, args.repeats, args.warmup, device)
    clocks = ("wall",) if device.type == "cuda" else ("wall", "cpu")
    medians = {clock: {name: statistics.median(t[clock]) for name, t in times.items()} for clock in clocks}
    # On a shared machine other processes only ever add time, so the fastest repeat is the least
    # disturbed estimate of a step (timeit's rule); the median is reported beside it.
    minima = {clock: {name: min(t[clock]) for name, t in times.items()} for clock in clocks}
    prefix_steps = {}
    for projection in (False, True):
        suffix = "projection" if projection else "no_projection"
        for library, wrap in (("prefixlab", prefixlab_model), ("peft", peft_model)):
            prefix_steps[f"{library}/{suffix}"] = prefix_path_step(wrap(base, args, projection), args.batch_size)
    prefix_times = time_interleaved(prefix_steps, max(4 * args.repeats, 20), args.warmup, device)
    memory = {"weights_held_mib": _weights_held(args)}
    if args.peak_memory:
        memory["peak"] = measure_peak_memory(args)
        memory["peak_ratio_prefixlab/peft"] = (memory["peak"]["prefixlab_two_adapters_one_base"]["peak_mib"]
                                               / memory["peak"]["peft_two_models"]["peak_mib"])
    return {
        "args": asdict(args),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "times_s": times,
        "median_s": medians,
        "min_s": minima,
        "ratios": {clock: _ratios(medians[clock]) for clock in clocks},
        "ratios_of_min": {clock: _ratios(minima[clock]) for clock in clocks},
        "prefix_path_min_s": {name: min(t["wall"]) for name, t in prefix_times.items()},
        "targets": {"prefixlab/peft": "<= 1.0", "prefixlab/floor": "<= 1.10"},
        "memory": memory,
    }


def _ratios(medians: dict[str, float]) -> dict[str, float]:
    ratios = {}
    for suffix in ("no_projection", "projection"):
        ratios[f"prefixlab/peft {suffix}"] = medians[f"prefixlab/{suffix}"] / medians[f"peft/{suffix}"]
        ratios[f"prefixlab/floor {suffix}"] = medians[f"prefixlab/{suffix}"] / medians["floor"]
    return ratios


def _weights_held(args: BenchArgs) -> dict[str, float]:
    """Parameter+buffer memory of the two setups (deterministic, no process needed)."""
    import prefixlab

    args = BenchArgs(**{**asdict(args), "device": "meta"})
    with torch.device("meta"):  # sizes without memory: the prefixes are made on the meta device too
        ours = prefixlab_model(build_base(args), args, False)
        ours.add_adapter("projection", _prefix_config(prefixlab, args, True))
        theirs = [peft_model(build_base(args), args, projection) for projection in (False, True)]
    return {"prefixlab_two_adapters_one_base": _bytes_mib([ours]), "peft_two_models": _bytes_mib(theirs)}


def _bytes_mib(modules: list[torch.nn.Module]) -> float:
    """Bytes of the distinct parameters and buffers the modules hold (a shared base counted once;
    by object identity, which works for meta tensors)."""
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


def format_core_report(result: dict) -> str:
    args = result["args"]
    lines = [
        f"prefix-tuning training step (forward + backward + AdamW), GPT-2 {args['n_layer']} layers x {args['n_embd']}"
        f", batch {args['batch_size']} x {args['seq_len']} tokens, {args['num_virtual_tokens']} virtual tokens, "
        f"device {result['device']}, {args['repeats']} interleaved repeats",
    ]
    for clock, medians in result["median_s"].items():
        label = "wall time" if clock == "wall" else "process CPU time (all threads)"
        lines.append(f" {label}:{'median':>22} {'fastest':>12}")
        minima = result.get("min_s", {}).get(clock, {})
        for name, median in medians.items():
            fastest = f"{minima[name] * 1000:10.2f} ms" if name in minima else ""
            lines.append(f"  {name:<26} {median * 1000:10.2f} ms {fastest}")
        for name, ratio in result["ratios"][clock].items():
            target = "1.00" if "peft" in name else "1.10"
            of_min = result.get("ratios_of_min", {}).get(clock, {}).get(name)
            fastest = f"{of_min:10.3f}" if of_min is not None else ""
            lines.append(f"  ratio {name:<30} {ratio:6.3f} {fastest}  (target <= {target})")
    if "prefix_path_min_s" in result:
        path = result["prefix_path_min_s"]
        lines.append(" the prefix's share alone (cache for the batch + backward through it, fastest of many):")
        for suffix in ("no_projection", "projection"):
            ours, theirs = path[f"prefixlab/{suffix}"], path[f"peft/{suffix}"]
            lines.append(f"  {suffix:<14} prefixlab {ours * 1000:9.2f} ms  PEFT {theirs * 1000:9.2f} ms"
                         f"  ratio {ours / theirs:6.3f}")
    held = result["memory"]["weights_held_mib"]
    lines.append("memory, projection + no-projection variants:")
    lines.append(f"  weights held: prefixlab two adapters on one base {held['prefixlab_two_adapters_one_base']:.1f} MiB"
                 f", two PEFT models {held['peft_two_models']:.1f} MiB")
    if "peak" in result["memory"]:
        peak = result["memory"]["peak"]
        ours, theirs = peak["prefixlab_two_adapters_one_base"], peak["peft_two_models"]
        lines.append(f"  peak ({ours['measure']}): prefixlab {ours['peak_mib']:.1f} MiB, PEFT {theirs['peak_mib']:.1f} MiB"
                     f", ratio {result['memory']['peak_ratio_prefixlab/peft']:.3f}")
    return "\n".join(lines)


# =============================================================================================
# paired: one experiment step (both variants) fused vs one pass per variant vs two PEFT models,
# and gradient checkpointing's peak memory at 4x the sequence length
# =============================================================================================
#
# The lab always trains its variants on the same batches. Fused (training.fused, core/fused.py):
# both variants' rows in one pass of the frozen base. Sequential: one pass per variant on the same
# wrapper (what training.fused=false does). PEFT: two PeftModels on the shared base, one step each
# (how one would compare the variants with PEFT). Same GPT-2-small shape, batch and prefix as core.
# Checkpointing: one variant's training step at seq_len x 4, peak memory with and without
# model.gradient_checkpointing_enable(), each in a fresh process (CUDA max allocated, or the CPU's
# peak resident set above the process after imports).


def _paired_steps(base, args: BenchArgs, batch: dict) -> dict[str, Callable[[], None]]:
    steps = {**_our_paired_steps(base, args, batch), **_stacking_bound_steps(base, args, batch, 2)}
    try:
        import peft  # noqa: F401
    except ImportError:
        return steps  # the PEFT contender needs tests/requirements.txt
    theirs = [peft_model(base, args, projection) for projection in (False, True)]
    peft_steps = [training_step(m, list(m.prompt_encoder.parameters()), batch) for m in theirs]
    steps["peft_two_models"] = lambda: [step() for step in peft_steps]
    return steps


def _our_paired_steps(base, args: BenchArgs, batch: dict) -> dict[str, Callable[[], None]]:
    """{"fused": step, "sequential": step}: both variants as two adapters on `base`, each step
    training both (forward, backward, AdamW)."""
    import prefixlab

    names = ("no_projection", "projection")
    ours = prefixlab.get_peft_model(base, _prefix_config(prefixlab, args, False), names[0])
    ours.add_adapter(names[1], _prefix_config(prefixlab, args, True))
    optimizers = {n: torch.optim.AdamW(list(ours.prompt_encoder[n].parameters()), lr=1e-4) for n in names}

    def fused() -> None:
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        ours(adapter_names=list(names), **batch).loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()

    def sequential() -> None:
        for name in names:
            optimizers[name].zero_grad(set_to_none=True)
            ours.set_adapter(name)
            ours(**batch).loss.backward()
            optimizers[name].step()

    return {"fused": fused, "sequential": sequential}


def _stacking_bound_steps(base, args: BenchArgs, batch: dict, variants: int) -> dict[str, Callable[[], None]]:
    """What stacking itself saves on this device at this shape, the mark a fused pass can approach:
    the frozen base alone, its prefix already leaf key/values (the floor of `core`), over the
    variants' rows stacked in one pass against one pass per variant. No wrapper, no prefix encoder:
    the base's cost at `variants` x the batch against `variants` times its cost at the batch."""
    stacked_args = replace(args, batch_size=args.batch_size * variants)
    stacked = floor_step(base, stacked_args, {k: v.repeat(variants, 1) for k, v in batch.items()})
    separate = [floor_step(base, args, batch) for _ in range(variants)]
    return {"base_stacked": stacked, "base_separate": lambda: [step() for step in separate]}


def run_paired_bench(args: BenchArgs, checkpoint_factor: int = 4) -> dict:
    """Paired-step times (fused, sequential, two PEFT models) and checkpointing's memory. Prints nothing."""
    device = args.resolved_device()
    base = build_base(args)
    batch = make_batch(args)
    times = time_interleaved(_paired_steps(base, args, batch), args.repeats, args.warmup, device)
    medians = {name: statistics.median(t["wall"]) for name, t in times.items()}
    minima = {name: min(t["wall"]) for name, t in times.items()}
    ratios = {"fused/sequential": minima["fused"] / minima["sequential"],
              "base_stacked/base_separate": minima["base_stacked"] / minima["base_separate"]}
    if "peft_two_models" in minima:
        ratios["fused/peft_two_models"] = minima["fused"] / minima["peft_two_models"]
    paired = {mode: _step_memory(mode, args) for mode in ("fused", "sequential")}
    long = replace(args, seq_len=args.seq_len * checkpoint_factor)
    memory = {mode: _step_memory(mode, long) for mode in ("plain", "checkpointing")}
    return {"args": asdict(args), "device": str(device), "median_s": medians, "min_s": minima, "ratios": ratios,
            "targets": {"fused/sequential": "<= 0.9 (CPU, batch 8 x 128, GPT-2 small)",
                        "checkpointing/plain": "<= 0.5 at 4x the sequence length"},
            "paired_memory": {**paired, "ratio": paired["fused"]["peak_mib"] / paired["sequential"]["peak_mib"]},
            "checkpointing": {"seq_len": long.seq_len, **memory,
                              "ratio": memory["checkpointing"]["peak_mib"] / memory["plain"]["peak_mib"]}}


def _step_memory(mode: str, args: BenchArgs) -> dict:
    """_step_memory_probe where its peak is the step's own: on CUDA in this process (the allocator
    counts the step's allocations, and a fresh process would pay CUDA's start-up for each probe),
    on a CPU in a fresh process (resident memory counts everything the process ever touched)."""
    if args.resolved_device().type != "cuda":
        return _in_child(_step_memory_probe, mode, asdict(args))
    try:
        return _step_memory_probe(mode, args)
    finally:
        gc.collect()  # the probe's base and batch, before the next probe builds its own
        torch.cuda.empty_cache()


def _step_memory_probe(mode: str, args: BenchArgs) -> dict:
    """Peak memory above the built model of one step: "plain" / "checkpointing", one variant's
    training step without or with gradient checkpointing; "fused" / "sequential", both variants'
    paired step in one pass or one pass each."""
    import prefixlab

    if mode not in ("plain", "checkpointing", "fused", "sequential"):
        raise ValueError(f"mode={mode!r}: use 'plain', 'checkpointing', 'fused' or 'sequential'")
    device = args.resolved_device()
    base = build_base(args)
    batch = make_batch(args)
    if mode in ("fused", "sequential"):
        step = _our_paired_steps(base, args, batch)[mode]
    else:
        model = prefixlab.get_peft_model(base, _prefix_config(prefixlab, args, False))
        model.train()
        if mode == "checkpointing":
            model.gradient_checkpointing_enable()
        step = training_step(model, list(model.prompt_encoder.parameters()), batch)
    synchronize(device)
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := current RSS
        f.write("5")
    baseline = _status_mib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    if device.type == "cuda":
        return {"peak_mib": (torch.cuda.max_memory_allocated(device) - start) / 2**20,
                "measure": "cuda_max_allocated_above_the_model"}
    return {"peak_mib": _status_mib("VmHWM") - baseline, "measure": "cpu_peak_rss_above_the_model"}


def _child(function, mode: str, args_dict: dict, queue) -> None:
    warnings.simplefilter("ignore")
    queue.put(function(mode, BenchArgs(**args_dict)))


def _in_child(function, mode: str, args_dict: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, mode, args_dict, queue))
    process.start()
    result = queue.get(timeout=1800)
    process.join()
    return result


def format_paired_report(result: dict) -> str:
    args, ckpt = result["args"], result["checkpointing"]
    lines = [f"paired experiment step (both variants: forward + backward + AdamW each), GPT-2 {args['n_layer']} layers"
             f" x {args['n_embd']}, batch {args['batch_size']} x {args['seq_len']} tokens, "
             f"{args['num_virtual_tokens']} virtual tokens, device {result['device']}, {args['repeats']} interleaved "
             f"repeats{'':>4}median      fastest"]
    for name, median in result["median_s"].items():
        lines.append(f"  {name:<22} {median * 1000:10.2f} ms {result['min_s'][name] * 1000:10.2f} ms")
    for name, ratio in result["ratios"].items():
        lines.append(f"  ratio {name:<28} {ratio:6.3f} (fastest repeats)")
    lines.append("  (base_stacked/base_separate: the frozen base alone over both variants' rows in one pass against one"
                 " pass each: what stacking itself saves on this device at this shape, the mark fused/sequential"
                 " can approach)")
    paired = result["paired_memory"]
    lines.append(f"paired step's peak memory ({paired['fused']['measure']}): fused {paired['fused']['peak_mib']:.1f} MiB,"
                 f" sequential {paired['sequential']['peak_mib']:.1f} MiB, ratio {paired['ratio']:.3f}")
    lines.append(f"gradient checkpointing, one variant's step at {ckpt['seq_len']} tokens ({ckpt['plain']['measure']}):"
                 f" plain {ckpt['plain']['peak_mib']:.1f} MiB, checkpointing {ckpt['checkpointing']['peak_mib']:.1f} MiB"
                 f", ratio {ckpt['ratio']:.3f} (target <= 0.5)")
    return "\n".join(lines)


# =============================================================================================
# engine: the paired lockstep experiment against two separate single-variant runs
# =============================================================================================
#
# Each configuration runs in a fresh subprocess (`bench engine --one CONFIG`) so its peak memory
# is its own: CUDA's max_memory_allocated on a GPU, else the process's peak resident set (which on
# CPU includes the Python + torch runtime, the same for every configuration).

ENGINE_CONFIGS = ("paired", "no_projection", "projection")


def bench_spec(model: str, steps: int, batch_size: int, max_length: int, variants: str):
    """A spec with logging/eval pushed to the end so the loop measures training steps only."""
    from prefixlab.engine.spec import ExperimentSpec

    return ExperimentSpec.from_dict({
        "name": f"bench-{variants}", "model": {"name": model},
        "prefix": {"num_virtual_tokens": 10, "encoder_hidden_size": 512},
        "variants": None if variants == "paired" else [
            {"name": variants, "prefix": {"prefix_projection": variants == "projection"}}],
        "data": {"source": "e2e-synth", "max_train_examples": steps * batch_size, "max_eval_examples": batch_size},
        "training": {"learning_rate": 1e-3, "max_steps": steps, "batch_size": batch_size,
                     "max_length": max_length, "eval_interval": steps, "log_interval": steps},
    })


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report its
    # parent's peak if that were larger.
    return _status_mib("VmHWM")


def measure_one(spec) -> dict:
    """Set up and train `spec` in this process; tokens/s over the training loop, setup time, peak memory."""
    from prefixlab.engine.runs import RunDir
    from prefixlab.engine.worker import Job

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        run.write_spec(spec)
        job = Job(spec, run, threading.Event())
        start = time.perf_counter()
        job.setup()
        setup_s = time.perf_counter() - start
        cpu_start = time.process_time()  # CPU seconds: steadier than wall time on a shared machine
        job.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start - setup_s
        train_cpu_s = time.process_time() - cpu_start
        tokens = sum(v.total_tokens + v.tokens for v in job.variants)
    return {"variants": len(spec.variants), "steps": job.step, "tokens": tokens, "setup_s": setup_s,
            "train_s": train_s, "tokens_per_s": tokens / train_s, "train_cpu_s": train_cpu_s,
            "tokens_per_cpu_s": tokens / train_cpu_s, "peak_mb": _peak_memory_mb(),
            "device": str(job.accelerator.device)}


def _measure_in_child(config: str, model: str, steps: int, batch_size: int, max_length: int) -> dict:
    cmd = [sys.executable, "-m", "prefixlab.tools.bench", "engine", "--one", config, "--model", model,
           "--steps", str(steps), "--batch-size", str(batch_size), "--max-length", str(max_length)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"bench configuration {config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(results: dict[str, dict]) -> dict:
    """Ratios paired / separate. Time: paired wall time against the two runs one after the other.
    Memory: paired peak against the two runs side by side (sum), and against the larger one."""
    paired, a, b = results["paired"], results["no_projection"], results["projection"]
    separate_tokens = a["tokens"] + b["tokens"]
    separate_train_s = a["train_s"] + b["train_s"]
    return {
        "throughput_ratio": paired["tokens_per_s"] / (separate_tokens / separate_train_s),
        "cpu_throughput_ratio": paired["tokens_per_cpu_s"] / (separate_tokens / (a["train_cpu_s"] + b["train_cpu_s"])),
        "wall_time_ratio": (paired["setup_s"] + paired["train_s"]) / (
            a["setup_s"] + a["train_s"] + b["setup_s"] + b["train_s"]),
        "memory_ratio_vs_both": paired["peak_mb"] / (a["peak_mb"] + b["peak_mb"]),
        "memory_ratio_vs_larger": paired["peak_mb"] / max(a["peak_mb"], b["peak_mb"]),
    }


def run_engine_bench(quick: bool = False, model: str = "tiny-gpt2", steps: int | None = None,
                     batch_size: int = 8, max_length: int = 128, repeats: int = 3) -> dict:
    """The three configurations, `repeats` rounds alternating the order (ABC, CBA, ...) so a slow
    spell of a shared machine does not land on one configuration; each one's fastest round is kept
    (peak memory is the same in every round). Returns {"settings", "results", "ratios"}; prints nothing."""
    steps = steps or (10 if quick else 40)
    repeats = 1 if quick else repeats
    best: dict[str, dict] = {}
    for round_ in range(repeats):
        for config in ENGINE_CONFIGS if round_ % 2 == 0 else reversed(ENGINE_CONFIGS):
            result = _measure_in_child(config, model, steps, batch_size, max_length)
            if config not in best or result["train_s"] < best[config]["train_s"]:
                best[config] = result
    results = {c: best[c] for c in ENGINE_CONFIGS}
    settings = {"model": model, "steps": steps, "batch_size": batch_size, "max_length": max_length,
                "repeats": repeats}
    return {"settings": settings, "results": results, "ratios": compare(results)}


def format_engine_report(result: dict) -> str:
    s, results, ratios = result["settings"], result["results"], result["ratios"]
    device = results["paired"]["device"]
    memory = "CUDA max allocated" if device.startswith("cuda") else "peak RSS incl. runtime"
    lines = [f"engine bench: {s['model']}, {s['steps']} steps, batch {s['batch_size']}, max_length "
             f"{s['max_length']}, device {device}, best of {s['repeats']} round(s)",
             f"{'configuration':<24}{'tokens/s':>10}{'tok/CPU-s':>11}{'setup s':>9}{'train s':>9}{'peak MiB':>10}"]
    for config, r in results.items():
        label = "paired (both, lockstep)" if config == "paired" else f"separate: {config}"
        lines.append(f"{label:<24}{r['tokens_per_s']:>10.0f}{r['tokens_per_cpu_s']:>11.0f}{r['setup_s']:>9.2f}"
                     f"{r['train_s']:>9.2f}{r['peak_mb']:>10.1f}")
    lines += [f"throughput paired / separate:           {ratios['throughput_ratio']:.2f}x "
              f"(per CPU-second: {ratios['cpu_throughput_ratio']:.2f}x)",
              f"wall time paired / two runs in turn:     {ratios['wall_time_ratio']:.2f}x",
              f"peak memory paired / two runs at once:   {ratios['memory_ratio_vs_both']:.2f}x ({memory})",
              f"peak memory paired / larger single run:  {ratios['memory_ratio_vs_larger']:.2f}x"]
    return "\n".join(lines)


# =============================================================================================
# startup: cold starts of the everyday commands, each a fresh subprocess
# =============================================================================================
#
# What a person waits for before a command answers: the interpreter, the imports, reading the
# run or spec, and for the page until it prints its URL. Everything it needs (a runs folder with
# one finished run of the shipped tiny-gpt2-e2e, trained for 4 steps) is made once in a temporary
# folder, removed afterwards; every command runs in its own process group, ended when it is done.


@dataclass(frozen=True)
class StartupCommand:
    name: str
    argv: tuple[str, ...]  # after the interpreter; {runs}, {run}, {port}, {empty} are filled in
    budget_s: float
    ready: Optional[str] = None  # a server: the output that means it is up; it is then terminated


STARTUP_COMMANDS = (
    StartupCommand("runs", ("-m", "prefixlab", "runs", "--runs-dir", "{runs}"), 1.5),
    StartupCommand("inspect", ("-m", "prefixlab", "inspect", "presets/offline-tiny.json"), 1.5),
    StartupCommand("generate", ("-m", "prefixlab", "generate", "--run-dir", "{run}", "--prompt",
                                "name[Aromi] | food[Thai]", "--max-new-tokens", "20"), 5.0),
    StartupCommand("app", ("app.py", "--port", "{port}", "--runs-dir", "{empty}"), 10.0,
                   ready="prefixlab running at"),
)
SHOWN_AS = {"runs": "RUNS", "run": "RUNS/startup", "port": "PORT", "empty": "EMPTY"}  # in the table
STARTUP_TIMEOUT_S = 300.0


def startup_spec() -> dict:
    """presets/offline-pretrained.json cut to a 4-step run that still saves both adapters."""
    spec = json.loads((REPO_ROOT / "presets" / "offline-pretrained.json").read_text(encoding="utf-8"))
    spec.pop("_command", None)
    spec["name"] = "startup-bench"
    spec["training"].update(max_steps=4, eval_interval=4, warmup_steps=0, metric_examples=0)
    spec["generation"].update(num_prompts=1, max_new_tokens=20)
    return spec


def shown(command: StartupCommand) -> str:
    """The command as the table shows it, its temporary paths named."""
    return shlex.join(["python", *(a.format(**SHOWN_AS) for a in command.argv)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(pgid, sig)


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group (the page exits cleanly on it), then SIGKILL whatever is
    left of the group (it outlives its leader while a child of the leader lives)."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def time_startup(argv: Sequence[str], ready: Optional[str] = None, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
    """Seconds from starting `argv` (in the repository root) to its exit, or, with `ready`, to the
    first output line that contains it. A failure, or no `ready` line, raises with the output's tail."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []
    watchdog = threading.Timer(timeout_s, _signal_group, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if ready is not None and ready in line:
                return time.perf_counter() - start
        if proc.wait() == 0 and ready is None:
            return time.perf_counter() - start
    finally:
        watchdog.cancel()
        _end_group(proc)
    what = f"exited with status {proc.returncode}" if ready is None else f"never printed {ready!r}"
    tail = "".join(lines[-10:]).strip()
    raise RuntimeError(f"startup bench: `{shlex.join(argv)}` {what} (limit {timeout_s:.0f} s):\n{tail}")


def _prepare_startup(tmp: Path) -> dict[str, str]:
    """A runs folder holding one finished 4-step run of tiny-gpt2-e2e, and an empty one for the page."""
    (tmp / "spec.json").write_text(json.dumps(startup_spec(), indent=1), encoding="utf-8")
    paths = {"runs": str(tmp / "runs"), "run": str(tmp / "runs" / "startup"), "empty": str(tmp / "empty")}
    time_startup([sys.executable, "-m", "prefixlab", "train", str(tmp / "spec.json"), "--run-dir", paths["run"],
                  "--no-progress"])
    return paths


def run_startup_bench(repeats: int = 3, only: Optional[Sequence[str]] = None,
                      commands: Sequence[StartupCommand] = STARTUP_COMMANDS) -> dict:
    """The median cold start of each command over `repeats` rounds (one command after another in
    each round), against its budget. Returns {"repeats", "python", "rows": [...]}; prints nothing."""
    chosen = [c for c in commands if only is None or c.name in only]
    unknown = sorted(set(only or ()) - {c.name for c in commands})
    if unknown or not chosen:
        raise ValueError(f"startup bench: unknown command(s) {unknown}; choose from "
                         f"{', '.join(c.name for c in commands)}")
    seconds: dict[str, list[float]] = {c.name: [] for c in chosen}
    with tempfile.TemporaryDirectory(prefix="prefixlab-startup-") as tmp:
        needs_run = any("{run" in a for c in chosen for a in c.argv)
        paths = _prepare_startup(Path(tmp)) if needs_run else {"empty": str(Path(tmp) / "empty")}
        for _ in range(repeats):
            for command in chosen:
                argv = [sys.executable, *(a.format(**paths, port=free_port()) for a in command.argv)]
                seconds[command.name].append(time_startup(argv, command.ready))
    rows = []
    for command in chosen:
        median = statistics.median(seconds[command.name])
        rows.append({"name": command.name, "command": shown(command), "seconds": seconds[command.name],
                     "median_s": median, "budget_s": command.budget_s, "ratio": median / command.budget_s,
                     "until": command.ready})
    return {"repeats": repeats, "python": platform.python_version(), "cpus": os.cpu_count(), "rows": rows}


def format_startup_table(result: dict) -> str:
    rows = result["rows"]
    commands = [r["command"] + (" (until it prints its URL)" if r["until"] else "") for r in rows]
    width = max(len("command"), *(len(c) for c in commands))
    lines = [f"startup: cold start of each command as a subprocess, median of {result['repeats']} run(s) "
             f"(python {result['python']}, {result['cpus']} CPUs)",
             f"{'command':<{width}}  {'median s':>8}  {'budget s':>8}  {'ratio':>6}"]
    for command, r in zip(commands, rows):
        lines.append(f"{command:<{width}}  {r['median_s']:>8.2f}  {r['budget_s']:>8.2f}  {r['ratio']:>5.2f}x")
    lines.append("RUNS: a runs folder holding one finished 4-step run of tiny-gpt2-e2e (RUNS/startup); EMPTY: an "
                 "empty runs folder; PORT: a free port")
    return "\n".join(lines)


# =============================================================================================
# page: the run panels' timer with many viewers of one training run
# =============================================================================================
#
# `python app.py` on a free port over a runs folder holding a finished run and a running one
# (fake files: a thread of this process plays the worker, logging a step of both variants every
# second and beating, so the running run's chart changes every second as a real run's does).
# PAGE_VIEWERS clients, each its own browser session (a session hash: the page keeps what it last
# drew per session), open the page (its load event) and then call the timer's tick about once a
# second through Gradio's queue API, as the browser does; the latency of each call is from joining
# the queue to its result. Timings are reported, never asserted.

PAGE_VIEWERS = 20
PAGE_SECONDS = 20.0
PAGE_READY = "prefixlab running at"


def _fake_spec(name: str) -> dict:
    return {"name": name, "model": {"name": "tiny-gpt2"}, "prefix": {"num_virtual_tokens": 5, "encoder_hidden_size": 64},
            "data": {"source": "e2e-synth"}, "training": {"max_steps": 4000, "eval_interval": 100, "log_interval": 2}}


def _metrics_lines(step: int, time_s: float) -> list[dict]:
    lines = []
    for k, variant in enumerate(("no_projection", "projection")):
        loss = 3.0 / (1 + step / 200) + 0.3 * k + 0.05 * ((step * 7919) % 13) / 13
        lines.append({"variant": variant, "step": step, "epoch": step / 500, "loss": loss, "lr": 1e-3,
                      "tokens_per_s": 4000.0 + step % 50, "time": time_s})
        if step % 100 == 0:
            lines.append({"variant": variant, "step": step, "eval_loss": loss + 0.2, "time": time_s})
    return lines


def write_fake_runs(runs: Path, logged: int = 300) -> tuple[str, str]:
    """A finished run (`logged` logged steps of both variants, samples, summary) and a running one
    (a third of them so far, its status beating with this process's pid). -> (finished id, running id)."""
    from prefixlab.engine.runs import RunDir, append_jsonl, atomic_write_json

    now = time.time()
    ids = ("20260101-000000000-bench-finished", "20260101-000100000-bench-running")
    for run_id, steps, done in ((ids[0], logged, True), (ids[1], logged // 3, False)):
        run = RunDir(runs / run_id)
        run.path.mkdir(parents=True)
        atomic_write_json(run.spec_path, _fake_spec(run_id.split("-", 2)[2]))
        for step in range(2, 2 * steps + 1, 2):
            for line in _metrics_lines(step, now - 600 + step):
                append_jsonl(run.metrics_path, line)
        status = {"state": "done" if done else "running", "step": 2 * steps, "total_steps": 4000, "started_at": now - 600,
                  "updated_at": now, "finished_at": now if done else None, "pid": None if done else os.getpid(),
                  "error": None, "heartbeat": now}
        atomic_write_json(run.status_path, status)
        if done:
            for i in range(3):
                append_jsonl(run.samples_path, {"prompt": f"name[Place {i}] | food[Thai]", "reference": f"Place {i} serves Thai food.",
                                                "outputs": {"base": "x" * 40, "no_projection": "Place serves food.",
                                                            "projection": f"Place {i} serves Thai food."}})
            variants = {v: {"trainable": 2560 + 4000 * k, "stored": 2560, "total": 100_000 + 4000 * k, "formula": "n*out",
                            "final_train_loss": 1.0 + k, "final_eval_loss": 1.2 + k, "tokens_per_s": 4000.0}
                        for k, v in enumerate(("no_projection", "projection"))}
            atomic_write_json(run.summary_path, {"variants": variants, "steps": 2 * steps, "total_steps": 2 * steps,
                                                 "wall_time_s": 600.0})
    return ids


class _FakeWorker(threading.Thread):
    """Plays the running run's worker: a logged step of both variants and a heartbeat every `interval` s."""

    def __init__(self, run_path: Path, interval: float = 1.0):
        super().__init__(name="bench-page-worker", daemon=True)
        self.run_path, self.interval, self.stop = run_path, interval, threading.Event()

    def run(self) -> None:
        from prefixlab.engine.runs import RunDir, append_jsonl

        run = RunDir(self.run_path)
        step = run.read_status()["step"]
        while not self.stop.wait(self.interval):
            step += 2
            for line in _metrics_lines(step, time.time()):
                append_jsonl(run.metrics_path, line)
            run.update_status(step=step, heartbeat=time.time())


def _queue_call(client, fn_index: int, data: list, session: str, trigger_id: Optional[int] = None) -> dict:
    """One event through Gradio's queue, as the browser sends it: join, then read the session's
    event stream until the result. -> the process_completed message."""
    joined = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                          "trigger_id": trigger_id, "event_data": None})
    joined.raise_for_status()
    event_id = joined.json().get("event_id")
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed" and message.get("event_id", event_id) == event_id:
                if not message.get("success"):
                    raise RuntimeError(f"page bench: event {fn_index} failed: {message.get('output')}")
                return message
    raise RuntimeError(f"page bench: the event stream ended without event {fn_index}'s result")


def _page_events(config: dict) -> dict:
    """From the page's /config: the fn index and trigger of the page load that selects a run and of
    the timer's tick, and the tick's inputs as elem_ids (None for the page's state)."""
    components = {c["id"]: c for c in config["components"]}
    found = {}
    for dep in config["dependencies"]:
        targets = [tuple(t) for t in dep["targets"]]
        elem_ids = [components[i]["props"].get("elem_id") for i in dep["inputs"]]
        if any(components.get(t[0], {}).get("type") == "timer" and t[1] == "tick" for t in targets):
            found["tick"] = (dep["id"], targets[0][0], elem_ids)
        outputs = {components[i]["props"].get("elem_id") for i in dep["outputs"]}
        if targets and targets[0][1] == "load" and "run-select" in outputs:
            found["load"] = (dep["id"], None, elem_ids)
    if set(found) != {"tick", "load"}:
        raise RuntimeError(f"page bench: the page has no timer tick or run-selecting load event (found {sorted(found)})")
    return found


def _viewer(base_url: str, events: dict, run_id: str, until: float, interval: float, start_delay: float,
            latencies: list[float], errors: list[str]) -> None:
    """One browser session: open the page, then tick about once a second until `until`."""
    import secrets

    import httpx

    session = secrets.token_hex(6)
    inputs = {"run-select": run_id, "overlay-select": "", "smoothing": 0.6, "log-scale": False, "adapter-select": None}
    try:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            load_fn, _, load_inputs = events["load"]
            _queue_call(client, load_fn, [inputs.get(e) for e in load_inputs], session)
            tick_fn, timer, tick_inputs = events["tick"]
            data = [inputs.get(e) for e in tick_inputs]
            time.sleep(start_delay)
            next_at = time.monotonic()
            while time.monotonic() < until:
                started = time.perf_counter()
                _queue_call(client, tick_fn, data, session, trigger_id=timer)
                latencies.append(time.perf_counter() - started)
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
    except Exception as err:  # noqa: BLE001 - reported with the numbers
        errors.append(f"{type(err).__name__}: {err}")


def _start_page(runs: Path, log_path: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free port over `runs`, in its own process group; -> (process, URL)."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs)], cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + timeout_s
    while PAGE_READY not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_page(proc)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"page bench: `python app.py` never printed {PAGE_READY!r}:\n{tail}")
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def _stop_page(proc: subprocess.Popen) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_page_bench(viewers: int = PAGE_VIEWERS, seconds: float = PAGE_SECONDS, interval: float = 1.0) -> dict:
    """Tick latency of `viewers` sessions watching one running run for `seconds`. Returns
    {"viewers", "seconds", "interval_s", "calls", "p50_s", "p95_s", "max_s", "mean_s", "errors", ...};
    prints nothing. The page and the fake worker are stopped, and the folder removed, afterwards."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="prefixlab-page-bench-") as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        _, running = write_fake_runs(runs)
        worker = _FakeWorker(runs / running, interval)
        proc, url = _start_page(runs, Path(tmp) / "app.log")
        try:
            events = _page_events(httpx.get(f"{url}/config", timeout=60).json())
            worker.start()
            latencies: list[float] = []
            errors: list[str] = []
            until = time.monotonic() + seconds
            threads = [threading.Thread(target=_viewer, args=(url, events, running, until, interval,
                                                              interval * i / viewers, latencies, errors), daemon=True)
                       for i in range(viewers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(seconds + 300)
        finally:
            worker.stop.set()
            _stop_page(proc)
            worker.join(5)
    if not latencies:
        raise RuntimeError(f"page bench: no tick completed; {errors[:3]}")
    return {"viewers": viewers, "seconds": seconds, "interval_s": interval, "calls": len(latencies),
            "p50_s": statistics.median(latencies), "p95_s": _percentile(latencies, 0.95), "max_s": max(latencies),
            "mean_s": statistics.fmean(latencies), "errors": errors, "python": platform.python_version(),
            "cpus": os.cpu_count()}


def format_page_report(result: dict) -> str:
    lines = [f"page: {result['viewers']} viewers of one running run, each ticking every {result['interval_s']:g} s for "
             f"{result['seconds']:g} s through the queue API (python {result['python']}, {result['cpus']} CPUs)",
             f"tick latency: p50 {result['p50_s']:.3f} s, p95 {result['p95_s']:.3f} s, max {result['max_s']:.3f} s "
             f"over {result['calls']} calls"]
    if result["errors"]:
        lines.append(f"{len(result['errors'])} viewer(s) stopped on an error; the first: {result['errors'][0]}")
    return "\n".join(lines)


# =============================================================================================
# The command line
# =============================================================================================

BENCHES = ("core", "paired", "engine", "startup", "page")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="small sizes and one round: seconds, not minutes")
    common.add_argument("--json", dest="json_path", metavar="PATH",
                        help="also write every number measured to this file")
    parser = argparse.ArgumentParser(prog="python -m prefixlab.tools.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)

    p = sub.add_parser("core", parents=[common], help="a training step of prefixlab vs PEFT vs the floor")
    p.add_argument("--repeats", type=int, help="timed steps per contender (median reported)")
    p.add_argument("--warmup", type=int, help="untimed steps per contender first")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--num-virtual-tokens", type=int)
    p.add_argument("--no-peak-memory", action="store_true", help="skip the per-process peak memory probes")

    p = sub.add_parser("paired", parents=[common], help="both variants' step: fused vs one pass each vs two "
                                                        "PEFT models; checkpointing's memory")
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--num-virtual-tokens", type=int)
    p.add_argument("--no-peak-memory", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("engine", parents=[common], help="paired lockstep run vs two separate runs")
    p.add_argument("--one", choices=ENGINE_CONFIGS, help=argparse.SUPPRESS)  # a child measuring one configuration
    p.add_argument("--model", default="tiny-gpt2")
    p.add_argument("--steps", type=int, help="training steps (default: 40; --quick: 10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="rounds; each configuration's fastest is kept")

    p = sub.add_parser("startup", parents=[common], help="cold starts of runs, inspect, generate and the page")
    p.add_argument("--repeats", type=int, help="runs of each command (default: 3; --quick: 1)")
    p.add_argument("--only", type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
                   help=f"comma-separated subset of {','.join(c.name for c in STARTUP_COMMANDS)}")

    p = sub.add_parser("page", parents=[common], help="tick latency of the page with many viewers of one run")
    p.add_argument("--viewers", type=int, help=f"concurrent browser sessions (default: {PAGE_VIEWERS}; --quick: 4)")
    p.add_argument("--seconds", type=float, help=f"how long they watch (default: {PAGE_SECONDS:g}; --quick: 5)")

    sub.add_parser("all", parents=[common], help="core, paired, engine, startup and page, in that order")
    return parser


def run_bench(which: str, ns: argparse.Namespace) -> tuple[dict, str]:
    """One benchmark with its options: (every number, the printed report)."""
    if which == "core":
        result = run_core_bench(core_args(ns))
        return result, format_core_report(result)
    if which == "paired":
        result = run_paired_bench(core_args(ns))
        return result, format_paired_report(result)
    if which == "engine":
        result = run_engine_bench(ns.quick, ns.model, ns.steps, ns.batch_size, ns.max_length, ns.repeats)
        return result, format_engine_report(result)
    if which == "page":
        result = run_page_bench(ns.viewers or (4 if ns.quick else PAGE_VIEWERS),
                                ns.seconds or (5.0 if ns.quick else PAGE_SECONDS))
        return result, format_page_report(result)
    result = run_startup_bench(ns.repeats or (1 if ns.quick else 3), ns.only)
    return result, format_startup_table(result)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the chosen benchmarks, printing each report as it finishes; --json PATH gets
    {benchmark: every number}. A missing PEFT (core) raises ValueError with what to install."""
    ns = build_parser().parse_args(argv)
    if ns.which == "engine" and ns.one:
        print(json.dumps(measure_one(bench_spec(ns.model, ns.steps or 40, ns.batch_size, ns.max_length, ns.one))))
        return 0
    results = {}
    for which in BENCHES if ns.which == "all" else (ns.which,):
        # `all` runs each benchmark with its defaults (and --quick).
        options = ns if ns.which != "all" else build_parser().parse_args([which] + (["--quick"] if ns.quick else []))
        results[which], report = run_bench(which, options)
        print(report, flush=True)
    if ns.json_path:
        Path(ns.json_path).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:
        sys.exit(f"error: {err}")
