"""Two methods of the paper (Li & Liang 2021) that PEFT's prefix tuning lacks.

1. Encoder-decoder prefixes (section 4.2, prefix_positions='paper'): an encoder-decoder model gets a
   prefix before its source and one before its target, z = [PREFIX; x; PREFIX'; y], so the encoder's
   self-attention, the decoder's self-attention and the decoder's cross-attention each read a prefix
   of their own (the paper's BART code: `encoder`, `self` and `encoder_decoder` past key/values, each
   from its own embedding and MLP).
   The decoder's two come in through the cache the decoder is handed (core/model.py builds it:
   self-attention rows, and a cross-attention cache pre-filled with the prefix, to which the first
   decoder step appends the encoder output's keys). The encoder cannot be reached that way:
   transformers' T5 encoder drops any cache it is given and BART's takes none. So `AttentionHooks`
   puts forward pre-hooks on the attention modules themselves: during a call of the wrapper, each
   encoder self-attention module is handed a `PrefixCache` holding the encoder prefix as its cache
   argument (the module then computes [prefix; keys] and, for T5, its relative position bias with the
   prefix as the n positions before the input, exactly as the decoder does with its cache), and its
   attention mask, and that of each decoder cross-attention module, gets n columns in front that
   every position attends to. Outside a call (disable_adapter, the base model used alone, PEFT's
   layout) the hooks change nothing. Attention implementations 'eager' and 'sdpa' take such masks;
   'flash_attention_2' and 'flex_attention' are refused.

2. Real-word initialisation (section 7.3, prefix_tuning_init='TEXT'): in low-data settings, starting
   the prefix from the activations the model computes for real words ("summarize",
   "table-to-text:") rather than at random improves generation markedly.
   `text_key_values` runs the frozen model once on the text and returns the key/values every
   attention computed for it; core/model.py (`init_prefix_from_text`) writes them into the adapter's
   own layout. For an encoder-decoder model the text is a small example of its own, placed before the
   real one: the encoder reads the text, the decoder reads the text with cross-attention to that
   encoding, and the real example attends to those activations (tests/test_init_text.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
from typing import Any, Iterator, Optional

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from .config import ConfigError

SUPPORTED_ATTENTION = ("eager", "sdpa")  # implementations whose masks are tensors we can extend


# ---------------------------------------------------------------------------------------------
# The encoder's and the cross-attention's prefix, through hooks on the attention modules


def attention_modules(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the encoder's self-attention modules, the decoder's cross-attention modules), layer by layer,
    of a T5-family (T5, mT5, flan-T5) or BART model."""
    encoder, decoder = model.get_encoder(), model.get_decoder()
    if hasattr(encoder, "block"):  # T5Stack: each T5Block is [self-attention, (cross-attention,) feed-forward]
        return ([block.layer[0].SelfAttention for block in encoder.block],
                [block.layer[1].EncDecAttention for block in decoder.block])
    if hasattr(encoder, "layers") and all(hasattr(layer, "encoder_attn") for layer in decoder.layers):  # BART
        return [layer.self_attn for layer in encoder.layers], [layer.encoder_attn for layer in decoder.layers]
    raise ConfigError("prefix_positions", f"prefix_positions='paper' cannot find the encoder's attention layers of "
                                          f"{type(model).__name__}; it supports T5, mT5, flan-T5 and BART, use "
                                          "prefix_positions=None (PEFT's layout) for this model")


def check_model(model: nn.Module, num_encoder_layers: int) -> None:
    """Raise ConfigError (prefix_positions) when the paper's layout cannot run on `model`."""
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation not in SUPPORTED_ATTENTION:
        raise ConfigError("prefix_positions", f"prefix_positions='paper' extends the attention masks of the encoder "
                                              f"and of the cross-attention, which attn_implementation="
                                              f"{implementation!r} does not take as tensors; load the model with "
                                              "attn_implementation='sdpa' (or 'eager'), or use prefix_positions=None")
    encoder_layers, _ = attention_modules(model)
    if len(encoder_layers) != num_encoder_layers:
        raise ConfigError("num_encoder_layers", f"num_encoder_layers={num_encoder_layers} does not match the model's "
                                                f"{len(encoder_layers)} encoder layers; leave it None to infer it")


def prepend_attended(mask: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """An attention mask (batch, 1 or heads, queries, keys) with n key columns in front that every
    query attends to: True in a boolean mask (True = attend), 0 in an additive float mask. None
    (attend to everything) stays None."""
    if mask is None or n == 0:
        return mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise ValueError(f"prefix_positions='paper' needs 4-d attention mask tensors (attn_implementation 'eager' or "
                         f"'sdpa'), got {type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}")
    front = (mask.new_ones if mask.dtype == torch.bool else mask.new_zeros)(*mask.shape[:-1], n)
    return torch.cat([front, mask], dim=-1)  # (batch, heads, queries, n + keys)


@dataclasses.dataclass
class EncoderPrefix:
    """What the hooks add during one call of the wrapped model.

    cache: handed to every encoder self-attention module as its cache (a PrefixCache with the encoder
    prefix, or an empty DynamicCache that records the encoder's key/values); None: none.
    n: the prefix length that the encoder self-attention and decoder cross-attention masks make room for.
    """

    cache: Any
    n: int


class AttentionHooks:
    """Forward pre-hooks on a model's encoder self-attention and decoder cross-attention modules that
    apply `current` (an EncoderPrefix) while it is set, and nothing otherwise.

    `using(prefix)` sets it for a block of code. Gradient checkpointing replays layers after that
    block has ended, so core/model.py's checkpointed layers capture `current` when they first run and
    set it again around the replay.
    """

    def __init__(self) -> None:
        self.current: Optional[EncoderPrefix] = None
        self._handles: list = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: nn.Module) -> None:
        if self.attached:
            return
        encoder_layers, cross_layers = attention_modules(model)
        for module in encoder_layers:
            self._handles.append(module.register_forward_pre_hook(
                functools.partial(self._encoder_hook, _argument(module, "cache", "past_key_values"),
                                  _argument(module, "mask", "attention_mask")), with_kwargs=True))
        for module in cross_layers:
            self._handles.append(module.register_forward_pre_hook(
                functools.partial(self._cross_hook, _argument(module, "mask", "attention_mask")), with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def using(self, prefix: Optional[EncoderPrefix]) -> Iterator[None]:
        previous, self.current = self.current, prefix
        try:
            yield
        finally:
            self.current = previous

    def _encoder_hook(self, cache_name: str, mask_name: str, module, args, kwargs):
        prefix = self.current
        if prefix is None:
            return None
        if prefix.cache is not None:
            kwargs[cache_name] = prefix.cache
        kwargs[mask_name] = prepend_attended(kwargs.get(mask_name), prefix.n)
        return args, kwargs

    def _cross_hook(self, mask_name: str, module, args, kwargs):
        prefix = self.current
        if prefix is None or not prefix.n:
            return None
        kwargs[mask_name] = prepend_attended(kwargs.get(mask_name), prefix.n)
        return args, kwargs


def _argument(module: nn.Module, *names: str) -> str:
    """The first of `names` that the module's forward takes by name (transformers renamed
    past_key_values to cache in 5.24)."""
    params = inspect.signature(module.forward).parameters
    for name in names:
        if name in params:
            return name
    raise ValueError(f"{type(module).__name__}.forward takes none of {names}; prefix_positions='paper' cannot reach it")


# ---------------------------------------------------------------------------------------------
# Real-word initialisation: the key/values the frozen model computes for a text


def text_sequence(token_ids: torch.Tensor, n: int) -> torch.Tensor:
    """The n tokens whose activations start an n-token prefix: the text's tokens, repeated until there
    are n and cut at n (PEFT's rule for prompt tuning's TEXT init). The paper makes the prefix as long
    as the text (its code sets preseqlen to the text's length), where this changes nothing; for
    another length the prefix is still the activations of one real token sequence, so at step 0 the
    model reads exactly what it would read after that sequence (repeating key/values of one run of the
    text instead would put copies at positions and contexts no real sequence has)."""
    reps = math.ceil(n / token_ids.numel())
    return token_ids.repeat(reps)[:n]


LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (1, heads, n, head_dim)


@torch.no_grad()
def text_key_values(model: nn.Module, tokens: torch.Tensor, cache_kwarg: str,
                    hooks: Optional[AttentionHooks] = None) -> dict[str, LayerKV]:
    """The key/values every attention of the frozen `model` computes for `tokens` (n,), run in eval mode
    (no dropout), once.

    Decoder-only: {"self_attention": ...}, the model reading the tokens. Encoder-decoder: the model
    reading the tokens as source and as decoder input: {"decoder_self_attention": ...,
    "decoder_cross_attention": ... (the cross-attention keys of the tokens' encoding)}, and with
    attached `hooks`, "encoder_self_attention" too.
    """
    ids = tokens.view(1, -1).to(_device(model))
    training = model.training
    model.eval()
    try:
        if not getattr(model.config, "is_encoder_decoder", False):
            cache = DynamicCache()
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{cache_kwarg: cache})
            return {"self_attention": _layers(cache)}
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        encoder_cache = DynamicCache() if hooks is not None and hooks.attached else None
        with (hooks.using(EncoderPrefix(cache=encoder_cache, n=0)) if encoder_cache is not None
              else contextlib.nullcontext()):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids,
                  decoder_attention_mask=torch.ones_like(ids), use_cache=True, **{cache_kwarg: cache})
        out = {"decoder_self_attention": _layers(cache.self_attention_cache),
               "decoder_cross_attention": _layers(cache.cross_attention_cache)}
        if encoder_cache is not None:
            out["encoder_self_attention"] = _layers(encoder_cache)
        return out
    finally:
        model.train(training)


def _layers(cache) -> LayerKV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
