"""Helpers shared by the prefix-tuning core tests (test_config, test_encoder, test_model_parity, ...)."""

from __future__ import annotations

import contextlib
import io
import warnings

import torch

import prefixlab
from prefixlab.tools.gpucheck import copy_prefix  # noqa: F401 (shared with the GPU check)
from prefixlab.tools.gpucheck import greedy_by_recompute as manual_greedy  # noqa: F401 (re-exported for the tests)
from prefixlab.engine.tiny import tiny_model

ARCH_TASK = {"gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM", "bart": "SEQ_2_SEQ_LM"}
ARCHS = tuple(ARCH_TASK)
NUM_VIRTUAL_TOKENS = 5


def is_seq2seq(arch: str) -> bool:
    return ARCH_TASK[arch] == "SEQ_2_SEQ_LM"


def ours_config(arch: str, projection: bool, **extra) -> prefixlab.PrefixTuningConfig:
    return prefixlab.PrefixTuningConfig(
        task_type=ARCH_TASK[arch], num_virtual_tokens=NUM_VIRTUAL_TOKENS, prefix_projection=projection, **extra
    )


def peft_config(arch: str, projection: bool, **extra):
    import peft

    return peft.PrefixTuningConfig(
        task_type=ARCH_TASK[arch], num_virtual_tokens=NUM_VIRTUAL_TOKENS, prefix_projection=projection, **extra
    )


def randomize_prefix(model, adapter: str = "default", seed: int = 0, std: float = 1.0) -> None:
    """Large random prefix weights, so that a dropped prefix changes the logits visibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.prompt_encoder[adapter].parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)


def peft_pair(arch: str, projection: bool):
    """(ours, peft) wrappers of two identical tiny bases, with identical random prefixes."""
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(tiny_model(arch), peft_config(arch, projection))
    ours = prefixlab.get_peft_model(tiny_model(arch), ours_config(arch, projection))
    randomize_prefix(ours)
    copy_prefix(ours, ref)
    return ours, ref


def padded_batch(arch: str, seed: int = 0) -> dict:
    """A batch of 3 with padding (right-padded, as for training) and labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if is_seq2seq(arch):
        batch["decoder_input_ids"] = torch.randint(3, 300, (3, 4), generator=gen)
        batch["labels"] = torch.randint(3, 300, (3, 4), generator=gen)
    else:
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch


def printed_counts(model) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.print_trainable_parameters()
    return out.getvalue()


def decoder_start(model) -> int | None:
    return getattr(model.config, "decoder_start_token_id", None) if model.config.is_encoder_decoder else None
