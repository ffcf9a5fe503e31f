"""Sections 3 and 4 on a GPT-2-medium-shaped model: training throughput and memory, generation latency."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import torch

from prefixlab.tools.bench import BenchArgs, _prefix_config, _training_step, build_base, make_batch, time_interleaved
from prefixlab.tools.gpucheck.common import (
    CheckContext,
    autocast_dtype,
    dtype_name,
    release_memory,
    require_peft,
    step_peak_bytes,
    wall_seconds,
)
from prefixlab.tools.gpucheck.report import FAILED, IMPLS, OK, median, throughput_ratios, timing_summary


def medium_model(args: BenchArgs):
    """The core benchmark's random GPT-2 (eval mode: no dropout, so repeated steps do the same work),
    constructed directly on the device: no host copy of 355M parameters to initialise and move."""
    torch.manual_seed(args.seed)
    with torch.device(args.resolved_device()):
        return build_base(args)


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def autocast_forward(model, device_type: str, dtype: torch.dtype) -> Callable:
    """model(**batch) under autocast; backward and the optimizer step stay outside, as the worker's
    accelerate does (torch.autocast's documented use)."""
    def forward(**batch):
        with torch.autocast(device_type, dtype=dtype):
            return model(**batch)
    return forward


def wrap_prefix(library, base, args: BenchArgs, projection: bool):
    """`library` (prefixlab or peft) get_peft_model on the shared base, with the core benchmark's config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return library.get_peft_model(base, _prefix_config(library, args, projection))


def throughput_case(base, projection: bool, batch_size: int, ctx: CheckContext) -> dict:
    """prefixlab vs PEFT on one shared frozen base, the same batch, interleaved: one row of section 3.

    Neither library changes the base's modules for prefix tuning, so sharing it is fair and the
    resident model is the same for both; each step's peak above it is that implementation's own.
    """
    import prefixlab

    peft = require_peft()

    args = dataclasses.replace(ctx.sizes.model, batch_size=batch_size)
    batch = make_batch(args)  # (batch, seq) random ids, labels = ids, no padding
    dtype = autocast_dtype(ctx.device)
    steps = {}
    for name, library in zip(IMPLS, (prefixlab, peft)):
        model = wrap_prefix(library, base, args, projection)
        params = [p for p in model.parameters() if p.requires_grad]
        steps[name] = _training_step(autocast_forward(model, ctx.device_type, dtype), params, batch)
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
    base = medium_model(args)
    rows, problems = [], []
    for projection in (False, True):
        for batch_size in ctx.sizes.batch_sizes:
            if ctx.time_left() <= 0:
                problems.append(f"time budget ran out before projection={projection} batch={batch_size}")
                continue
            rows.append(throughput_case(base, projection, batch_size, ctx))
            release_memory()
    shape = {k: getattr(args, k) for k in ("n_embd", "n_layer", "n_head", "vocab_size", "seq_len",
                                           "num_virtual_tokens", "warmup", "repeats")}
    return {"status": FAILED if problems else OK, "problems": problems, "rows": rows, "shape": shape,
            "autocast_dtype": dtype_name(autocast_dtype(ctx.device)), "resident_model_bytes": model_bytes(base)}


def generation_call(model, kwargs: dict, ctx: CheckContext) -> Callable[[], torch.Tensor]:
    def generate() -> torch.Tensor:
        with torch.autocast(ctx.device_type, dtype=autocast_dtype(ctx.device)):
            return model.generate(**kwargs)
    return generate


def run_generation(ctx: CheckContext) -> dict:
    """Section 4: greedy latency of the bare base model vs the same base with a prefixlab prefix."""
    import prefixlab

    sizes, args = ctx.sizes, ctx.sizes.model
    base = medium_model(args)
    wrapped = wrap_prefix(prefixlab, base, args, projection=True).eval()
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
        calls = {"base": generation_call(base, kwargs, ctx), "prefix": generation_call(wrapped, kwargs, ctx)}
        seconds = wall_seconds(time_interleaved(calls, sizes.gen_repeats, 1, torch.device(ctx.device)))
        rows.append({"batch_size": batch_size, "base_ms": 1000 * median(seconds["base"]),
                     "prefix_ms": 1000 * median(seconds["prefix"]), "calls": len(seconds["base"])})
    return {"status": FAILED if problems else OK, "problems": problems, "rows": rows,
            "new_tokens": sizes.gen_new_tokens, "prompt_len": sizes.gen_prompt_len,
            "autocast_dtype": dtype_name(autocast_dtype(ctx.device))}
