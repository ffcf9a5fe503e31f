"""Several adapters' losses from one pass of the frozen base: the variants of an experiment see the
same batch, so their rows are stacked (variant A's rows, then variant B's, each row reading its own
variant's prefix from the cache) and the base runs once over them, forward and backward, instead of
once per variant.

Each variant's loss is computed on its own rows exactly as the base computes it on a batch of its
own (mean cross-entropy over its target tokens), so the sum's gradient with respect to a variant's
prefix parameters is that variant's own gradient: the variants share no trainable parameter and the
base is frozen. An encoder-decoder's encoder reads no prefix in PEFT's layout, so it runs once on the
batch and its output is repeated for each variant's decoder rows; in the paper's layout
(prefix_positions='paper') each variant's encoder reads its own prefix, so the encoder too runs on the
stacked rows, each with its variant's encoder prefix.

`fusable` says why a set of adapters cannot share a pass (their prefixes differ in length, so their
inputs would sit at different positions); the caller then runs one pass per variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .config import TaskType

IGNORE_INDEX = -100


@dataclass
class FusedOutput:
    """PrefixTuningModel.forward(adapter_names=[...]): the sum of the adapters' losses (what backward
    takes) and each adapter's own."""

    loss: torch.Tensor
    losses: list[torch.Tensor]


def fusable(model, adapter_names: list[str]) -> Optional[str]:
    """None when the adapters can share one pass of `model` (a PrefixTuningModel), else why not."""
    configs = [model.peft_config[name] for name in adapter_names]
    lengths = {c.num_virtual_tokens for c in configs}
    if len(lengths) > 1:
        return (f"their prefixes differ in length ({sorted(lengths)} virtual tokens), so their inputs would sit "
                "at different positions")
    if len({c.task_type for c in configs}) > 1:
        return "they differ in task_type"
    if len({c.prefix_positions for c in configs}) > 1:
        return ("they differ in prefix_positions (PEFT's layout and the paper's hand the model different caches); "
                "run them one after another")
    return None


def token_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool, num_items=None) -> torch.Tensor:
    """Mean cross-entropy over the target tokens (labels != -100), as transformers' models compute
    it: a causal LM predicts token t+1 from position t (shifted), a seq2seq decoder its own position.
    logits (batch, seq, vocab), labels (batch, seq). `num_items`: divide the sum by this count
    instead (the target tokens of the whole batch across processes, as transformers'
    num_items_in_batch: every process's share of one mean)."""
    logits = logits.float()
    if causal:  # shift the labels, not the logits: slicing (batch, seq, vocab) would copy all of them
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if num_items is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / num_items


def target_tokens(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """How many tokens a batch's loss is taken over (labels != -100; a causal LM's first never is)."""
    return (labels[:, 1:] if causal else labels).ne(IGNORE_INDEX).sum()


def fused_losses(model, adapter_names: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor, num_items=None) -> list[torch.Tensor]:
    """[loss of each adapter on the batch], from one pass of the base over len(adapter_names) x batch rows.

    input_ids, attention_mask (batch, src_len); labels (batch, tgt_len), -100 where no loss is taken.
    Backward through their sum gives each adapter the gradient of its own loss. `num_items`: see
    token_loss. One adapter is exactly its own plain pass. Raises ValueError when `fusable` refuses
    the adapters.
    """
    why = fusable(model, adapter_names)
    if why:
        raise ValueError(f"adapters {adapter_names} cannot share a pass: {why}")
    from .model import _prepend_ones, build_prefix_cache  # the model imports nothing of this module

    config = model.peft_config[adapter_names[0]]
    n, batch, variants = config.num_virtual_tokens, input_ids.shape[0], len(adapter_names)
    prefixes = [model.prefix_key_values(name) for name in adapter_names]
    if config.is_paper_layout:  # {position: (V*batch, 2L, heads, n, head_dim)}
        kv = {position: _per_row([p[position] for p in prefixes], batch) for position in prefixes[0]}
    else:
        kv = _per_row(prefixes, batch)  # (V*batch, 2L, heads, n, head_dim)
    cache = build_prefix_cache(kv, variants * batch, config, stateless=model._stateless_cache())
    base = model.base_model
    causal = config.task_type == TaskType.CAUSAL_LM
    if config.is_paper_layout:
        decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels)  # labels shifted right
        with model.encoder_prefix_scope(kv, config, variants * batch):
            out = base(input_ids=input_ids.repeat(variants, 1), attention_mask=attention_mask.repeat(variants, 1),
                       decoder_input_ids=decoder_input_ids.repeat(variants, 1), **{model._cache_kwarg: cache})
    elif causal:
        out = base(input_ids=input_ids.repeat(variants, 1),
                   attention_mask=_prepend_ones(attention_mask.repeat(variants, 1), n), **{model._cache_kwarg: cache})
    else:
        from transformers.modeling_outputs import BaseModelOutput

        encoded = base.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)  # once: no prefix there
        decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=labels)  # labels shifted right
        out = base(encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state.repeat(variants, 1, 1)),
                   attention_mask=attention_mask.repeat(variants, 1),
                   decoder_input_ids=decoder_input_ids.repeat(variants, 1), **{model._cache_kwarg: cache})
    return [token_loss(logits, labels, causal, num_items) for logits in out.logits.split(batch)]


def _per_row(prefixes: list[torch.Tensor], batch: int) -> torch.Tensor:
    """Each variant's prefix (2L, heads, n, head_dim) for each of its `batch` rows, variants in order:
    (V*batch, 2L, heads, n, head_dim), expanded (no copy) before the one reshape."""
    kv = torch.stack(prefixes)  # (V, 2L, heads, n, head_dim)
    return kv.unsqueeze(1).expand(-1, batch, *kv.shape[1:]).reshape(len(prefixes) * batch, *kv.shape[1:])
