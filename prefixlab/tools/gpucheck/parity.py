"""Section 1: parity with PEFT on the device, logits in fp32 and low precision, and greedy generation."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Optional

import torch

from prefixlab.tools.gpucheck.common import CheckContext, autocast_dtype, dtype_name, require_peft
from prefixlab.tools.gpucheck.report import FAILED, OK

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


def _prefix_configs(task_type: str, projection: bool, **extra):
    """The same prefix as a prefixlab config and as a PEFT config."""
    peft = require_peft()

    import prefixlab

    kwargs = dict(task_type=task_type, num_virtual_tokens=PARITY_VIRTUAL_TOKENS, prefix_projection=projection, **extra)
    return prefixlab.PrefixTuningConfig(**kwargs), peft.PrefixTuningConfig(**kwargs)


def wrap_pair(base_ours, base_peft, task_type: str, projection: bool, source=None):
    """(prefixlab, PEFT) wrappers with identical prefixes: random N(0, 1) (large, so that a dropped or
    misplaced prefix shows in the logits), or copied from `source` (a prefixlab wrapper)."""
    import prefixlab

    peft = require_peft()

    ours_cfg, peft_cfg = _prefix_configs(task_type, projection)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(base_peft, peft_cfg)
    ours = prefixlab.get_peft_model(base_ours, ours_cfg)
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
    with exact_fp32_matmuls():
        return _run_parity(ctx)


def _run_parity(ctx: CheckContext) -> dict:
    rows, generation, problems = [], [], []
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
