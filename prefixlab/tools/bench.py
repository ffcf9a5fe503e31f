"""Core benchmark: one prefix-tuning training step of prefixlab vs PEFT vs the floor, and memory.

    python -m prefixlab.tools.bench            # GPT-2-small-sized random model, batch 8 x 128 tokens, 10 virtual tokens
    python -m prefixlab.tools.bench --quick    # a tiny model, seconds; for tests of the output structure

A step is forward + backward + AdamW. The contenders run interleaved (round-robin, rotating order)
on one shared frozen base model, so drift in machine speed hits all of them alike; medians and
ratios are reported, never asserted. The floor is the same frozen model fed a prefix that is a
plain leaf tensor of key/values per layer (no encoder, no wrapper): no prefix-tuning step can beat it.

Memory: the projection and no-projection variants held as two adapters on one base (prefixlab)
versus two PEFT models (two loaded bases, PEFT's usual way), each measured in a fresh process that
builds the setup and runs one training step per variant: on CUDA torch.cuda.max_memory_allocated,
on CPU the peak resident set size (VmHWM, reset before the setup) above the process's size after imports.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel


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
    json_path: Optional[str] = None

    @classmethod
    def quick(cls, **overrides) -> "BenchArgs":
        sizes = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=384, batch_size=2, seq_len=16,
                     num_virtual_tokens=4, repeats=3, warmup=1)
        return cls(**{**sizes, **overrides})

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def parse_args(argv: Optional[list[str]] = None) -> BenchArgs:
    parser = argparse.ArgumentParser(prog="python -m prefixlab.tools.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and batch: seconds, for tests")
    parser.add_argument("--repeats", type=int, help="timed steps per contender (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed steps per contender first")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--num-virtual-tokens", type=int)
    parser.add_argument("--no-peak-memory", action="store_true", help="skip the per-process peak memory probes")
    parser.add_argument("--json", dest="json_path", help="also write the full result (every timing) to this file")
    ns = parser.parse_args(argv)
    overrides = {k: v for k, v in {
        "repeats": ns.repeats, "warmup": ns.warmup, "device": ns.device, "batch_size": ns.batch_size,
        "seq_len": ns.seq_len, "num_virtual_tokens": ns.num_virtual_tokens}.items() if v is not None}
    if ns.no_peak_memory:
        overrides["peak_memory"] = False
    if ns.json_path:
        overrides["json_path"] = ns.json_path
    return BenchArgs.quick(**overrides) if ns.quick else BenchArgs(**overrides)


# ---------------------------------------------------------------------------------------------
# Setups


def build_base(args: BenchArgs) -> GPT2LMHeadModel:
    """A GPT-2 with random weights (no download), eval mode so that steps are deterministic."""
    last_id = args.vocab_size - 1  # GPT-2's <|endoftext|> is its last id
    config = GPT2Config(n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head, vocab_size=args.vocab_size,
                        n_positions=max(1024, args.seq_len + args.num_virtual_tokens), bos_token_id=last_id,
                        eos_token_id=last_id, loss_type="ForCausalLM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GPT2LMHeadModel(config)
    return model.to(args.resolved_device()).eval()


def make_batch(args: BenchArgs) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen)
    ids = ids.to(args.resolved_device())
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _training_step(model: Callable, params: list[torch.Tensor], batch: dict) -> Callable[[], None]:
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


def prefixlab_step(base, args: BenchArgs, projection: bool, batch: dict) -> Callable[[], None]:
    model = prefixlab_model(base, args, projection)
    return _training_step(model, list(model.prompt_encoder.parameters()), batch)


def peft_step(base, args: BenchArgs, projection: bool, batch: dict) -> Callable[[], None]:
    model = peft_model(base, args, projection)
    return _training_step(model, list(model.prompt_encoder.parameters()), batch)


def floor_step(base, args: BenchArgs, batch: dict) -> Callable[[], None]:
    """The frozen model with a prefix that is already key/values: per layer two leaf tensors
    (batch, heads, n, head_dim), handed over in a fresh DynamicCache each step."""
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

    return _training_step(forward, leaves, batch)


def prefix_path_step(model, batch_size: int) -> Callable[[], None]:
    """Only the prefix's share of a step: build the cache for the batch, backward through it.

    Works for our wrapper and PEFT's (both have get_prompt(batch_size) -> DynamicCache); the sum of
    the cache tensors stands in for the attention layers that consume them.
    """
    def step() -> None:
        cache = model.get_prompt(batch_size)
        sum(layer.keys.sum() + layer.values.sum() for layer in cache.layers).backward()

    return step


# ---------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
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
    _sync(device)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            steps[name]()
            _sync(device)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


# ---------------------------------------------------------------------------------------------
# Memory


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0). ru_maxrss cannot be
    # used: a spawned child inherits its parent's ru_maxrss across fork and exec.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def probe_peak_memory(setup: str, args: BenchArgs) -> dict:
    """Build `setup`, run one training step per variant, return its peak memory (MiB).

    Meaningful in a fresh process (see measure_peak_memory): on CPU the peak RSS is for the process.
    """
    import peft  # noqa: F401  (imports count in the baseline, not in the setup)

    import prefixlab

    device = args.resolved_device()
    batch = make_batch(args)
    _reset_peak_rss()
    baseline = _status_mib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if setup == "prefixlab_two_adapters_one_base":
        model = prefixlab.get_peft_model(build_base(args), _prefix_config(prefixlab, args, False), "no_projection")
        model.add_adapter("projection", _prefix_config(prefixlab, args, True))
        for name in ("no_projection", "projection"):
            model.set_adapter(name)
            _training_step(model, list(model.prompt_encoder[name].parameters()), batch)()
    elif setup == "peft_two_models":
        for step in [peft_step(build_base(args), args, projection, batch) for projection in (False, True)]:
            step()
    else:
        raise ValueError(f"setup={setup!r}: use 'prefixlab_two_adapters_one_base' or 'peft_two_models'")
    _sync(device)
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


# ---------------------------------------------------------------------------------------------


def require_peft() -> None:
    """The reference is a test dependency: without it, say what to install before building anything."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError("the core benchmark times prefixlab against PEFT, which is not installed: "
                         "pip install -r tests/requirements.txt (PEFT 0.21.2); `bench engine` needs no PEFT"
                         ) from None


def run_core_bench(argv_or_args=None) -> dict:
    """Run the benchmark; returns medians (s), ratios and memory (MiB). Prints nothing."""
    require_peft()
    args = argv_or_args if isinstance(argv_or_args, BenchArgs) else parse_args(argv_or_args)
    device = args.resolved_device()
    base = build_base(args)
    batch = make_batch(args)
    steps = {"floor": floor_step(base, args, batch)}
    for projection in (False, True):
        suffix = "projection" if projection else "no_projection"
        steps[f"prefixlab/{suffix}"] = prefixlab_step(base, args, projection, batch)
        steps[f"peft/{suffix}"] = peft_step(base, args, projection, batch)
    times = time_interleaved(steps, args.repeats, args.warmup, device)
    clocks = ("wall",) if device.type == "cuda" else ("wall", "cpu")
    medians = {clock: {name: statistics.median(t[clock]) for name, t in times.items()} for clock in clocks}
    # On a shared machine other processes only ever add time, so the fastest repeat is the least
    # disturbed estimate of a step (timeit's rule); the median is reported beside it.
    minima = {clock: {name: min(t[clock]) for name, t in times.items()} for clock in clocks}
    ratios = {clock: _ratios(medians[clock]) for clock in clocks}
    ratios_min = {clock: _ratios(minima[clock]) for clock in clocks}
    prefix_steps = {}
    for projection in (False, True):
        suffix = "projection" if projection else "no_projection"
        prefix_steps[f"prefixlab/{suffix}"] = prefix_path_step(prefixlab_model(base, args, projection), args.batch_size)
        prefix_steps[f"peft/{suffix}"] = prefix_path_step(peft_model(base, args, projection), args.batch_size)
    prefix_times = time_interleaved(prefix_steps, max(4 * args.repeats, 20), args.warmup, device)
    prefix_path = {name: min(t["wall"]) for name, t in prefix_times.items()}
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
        "ratios": ratios,
        "ratios_of_min": ratios_min,
        "prefix_path_min_s": prefix_path,
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
    import peft

    import prefixlab

    args = BenchArgs(**{**asdict(args), "device": "meta"})
    with torch.device("meta"):
        ours = prefixlab.get_peft_model(build_base(args), _prefix_config(prefixlab, args, False), "no_projection")
        ours.add_adapter("projection", _prefix_config(prefixlab, args, True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = [peft.get_peft_model(build_base(args), _prefix_config(peft, args, p)) for p in (False, True)]
    return {
        "prefixlab_two_adapters_one_base": _bytes_mib([ours]),
        "peft_two_models": _bytes_mib(theirs),
    }


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


def format_report(result: dict) -> str:
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


def main(argv: Optional[list[str]] = None) -> dict:
    result = run_core_bench(argv)
    print(format_report(result))
    if result["args"]["json_path"]:
        with open(result["args"]["json_path"], "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        sys.exit(f"error: {err}")
