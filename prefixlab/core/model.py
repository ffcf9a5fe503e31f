"""PrefixTuningModel: a frozen transformers model plus named prefixes fed as its key/value cache.

Prefix tuning (Li & Liang 2021, section 4.2) prepends trainable key/value vectors to every attention
layer. transformers models accept past key/values as a Cache object, so the prefix becomes a
pre-filled DynamicCache (decoder-only) or EncoderDecoderCache (seq2seq decoders; the encoder gets no
prefix, as in PEFT). Layout, parameter names, counts and saved files are PEFT's.

Unlike PEFT, the prefix (and the projection MLP) runs once per forward on num_virtual_tokens rows
and is broadcast to the batch as a view, and `generate` computes it once per call and passes it in
the cache, which also works on transformers versions that renamed `past_key_values` to `cache`.

Two of the paper's methods PEFT lacks are here too (core/paper.py): prefix_positions='paper' gives an
encoder-decoder's encoder self-attention, decoder self-attention and decoder cross-attention a prefix
each (saved in prefixlab's own tensors, which PEFT cannot load), and `init_prefix_from_text` starts a
prefix as the activations of real words (prefix_tuning_init='TEXT').
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import tempfile
import warnings
from typing import Any, Iterator, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from .config import (
    CONFIG_NAME,
    ENCODER_SIZE_FIELDS,
    INIT_FIELDS,
    LEGACY_WEIGHTS_NAME,
    PAPER_SAVED_KEYS,
    WEIGHTS_NAME,
    AdapterFileError,
    ConfigError,
    PrefixTuningConfig,
    TaskType,
    infer_sizes,
    read_config_file,
)
from .encoder import SAVED_KEY, PaperPrefixEncoder, PrefixEncoder
from .hub import adapter_folder, load_options
from .paper import AttentionHooks, EncoderPrefix, check_model, text_key_values, text_sequence

_AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")  # device types torch.autocast accepts


# ---------------------------------------------------------------------------------------------
# Prefix tensor -> cache layout


def layer_rows(config: PrefixTuningConfig) -> list[tuple[int, int]]:
    """For each layer, which of the prefix's 2*num_layers rows are its key and its value.

    Decoder-only: layer i uses rows (2i, 2i+1). Seq2seq: PEFT duplicates the rows, splits them in
    groups of four (self key, self value, cross key, cross value) and then discards the cross part,
    so layer i uses rows (4i mod 2L, 4i+1 mod 2L). We reproduce that so PEFT's adapters give the
    same logits here. With an even number of layers, layers L/2..L-1 reuse the rows of layers
    0..L/2-1 and half of the rows are never used (no gradient), in PEFT as here.
    """
    rows = 2 * config.num_layers
    stride = 2 * config.num_transformer_submodules
    return [((stride * i) % rows, (stride * i + 1) % rows) for i in range(config.num_layers)]


def prefix_key_values(states: torch.Tensor, config: PrefixTuningConfig) -> torch.Tensor:
    """(n, num_layers*2*token_dim) -> (num_layers*2, kv_heads, n, head_dim), a view."""
    n, heads = config.num_virtual_tokens, config.num_attention_heads
    kv = states.view(n, config.num_layers * 2, heads, config.token_dim // heads)  # (n, 2L, heads, head_dim)
    return kv.permute(1, 2, 0, 3)  # (2L, heads, n, head_dim)


class PrefixCache(DynamicCache):
    """The prefix as a cache that every layer reads and no forward changes: `update` returns
    [prefix; new keys] without storing them. A training forward never reuses what a cache stores, and
    gradient checkpointing runs each layer twice (forward, then again in backward): a cache that
    stores would hand the replay the prefix plus the first pass's keys (why transformers drops the
    cache under checkpointing, and PEFT's prefix with it: huggingface/peft#869)."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


class _PassThroughCache(DynamicCache):
    """An encoder-decoder's cross-attention under a PrefixCache: computed from the encoder output on
    every call, nothing stored."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return key_states, value_states


class _NeverUpdated(dict):
    """EncoderDecoderCache.is_updated for _PassThroughCache: cross-attention is never cached."""

    def __setitem__(self, key, value) -> None:
        pass

    def get(self, key, default=None):
        return False


def prefix_layers(kv: torch.Tensor, rows: int, config: PrefixTuningConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the (key, value) of `rows` batch rows: kv (2L, heads, n, head_dim) is one prefix
    broadcast to every row (expand, no copy); kv (rows, 2L, heads, n, head_dim) gives each row its own
    (the fused pass of several variants)."""
    layers = []
    for key_row, value_row in layer_rows(config):
        if kv.dim() == 4:
            key = kv[key_row].unsqueeze(0).expand(rows, -1, -1, -1)  # (rows, heads, n, head_dim)
            value = kv[value_row].unsqueeze(0).expand(rows, -1, -1, -1)
        else:
            key, value = kv[:, key_row], kv[:, value_row]  # (rows, heads, n, head_dim)
        layers.append((key, value))
    return layers


def build_prefix_cache(kv, batch_size: int, config: PrefixTuningConfig, stateless: bool = False):
    """A fresh cache holding the prefix for `batch_size` rows (caches are mutated by each forward).

    kv: (2L, heads, n, head_dim), or one per row (batch_size, 2L, heads, n, head_dim). Each row is
    broadcast with expand (no copy of our own; the cache makes the one copy it needs when it
    concatenates new tokens). `stateless`: a PrefixCache, which no forward changes (training with
    gradient checkpointing). In the paper's layout kv is {position: such a tensor} and the decoder's
    cache is returned (the encoder's prefix goes through `encoder_prefix`).
    """
    if config.is_paper_layout:
        return _paper_decoder_cache(kv, batch_size, stateless)
    layers = prefix_layers(kv, batch_size, config)
    cache_class = PrefixCache if stateless else DynamicCache
    if config.num_transformer_submodules == 2:
        # Cross-attention starts empty: the decoder computes it from the (un-prefixed) encoder output.
        if stateless:
            cache = EncoderDecoderCache(cache_class(layers), _PassThroughCache())
            cache.is_updated = _NeverUpdated()
            return cache
        return EncoderDecoderCache(DynamicCache(layers), DynamicCache())
    return cache_class(layers)


def _paper_decoder_cache(kv: dict, batch_size: int, stateless: bool) -> EncoderDecoderCache:
    """The decoder's cache in the paper's layout: its self-attention prefix, and its cross-attention
    prefix, to which the first decoder step appends the encoder output's keys and values (later
    generation steps reuse the stored [prefix; encoder]). Layer i reads rows (2i, 2i+1) of each."""
    self_layers, cross_layers = (_own_rows(kv[position], batch_size)
                                 for position in ("decoder_self_attention", "decoder_cross_attention"))
    if stateless:  # nothing stored: checkpointed layers replay with the same prefix
        cache = EncoderDecoderCache(PrefixCache(self_layers), PrefixCache(cross_layers))
        cache.is_updated = _NeverUpdated()
    else:
        cache = EncoderDecoderCache(DynamicCache(self_layers), DynamicCache(cross_layers))
        # A pre-filled cross-attention cache reads as already computed; it is the prefix alone.
        cache.is_updated = dict.fromkeys(range(len(cross_layers)), False)
    return cache


def _own_rows(kv: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Layer i's (key, value) = rows (2i, 2i+1) of kv (2L, heads, n, head_dim), broadcast to
    `batch_size` rows, or of kv (batch_size, 2L, heads, n, head_dim), one per row."""
    if kv.dim() == 4:
        kv = kv.unsqueeze(0).expand(batch_size, *kv.shape)  # (batch, 2L, heads, n, head_dim)
    return [(kv[:, 2 * i], kv[:, 2 * i + 1]) for i in range(kv.shape[1] // 2)]


def encoder_prefix(kv: dict, batch_size: int, n: int) -> EncoderPrefix:
    """What the attention hooks hand the encoder in the paper's layout for `batch_size` rows: its
    prefix in a PrefixCache (the encoder runs once per call; nothing may be stored), and n."""
    return EncoderPrefix(cache=PrefixCache(_own_rows(kv["encoder_self_attention"], batch_size)), n=n)


def cache_kwarg_name(model: nn.Module) -> str:
    """transformers 5.24 renamed forward's `past_key_values` to `cache`; use whichever exists."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise ValueError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; prefix tuning needs a model "
        "that accepts past key/values"
    )


def _batch_size(input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor]) -> int:
    if input_ids is not None:
        return input_ids.shape[0]
    if inputs_embeds is not None:
        return inputs_embeds.shape[0]
    raise ValueError("forward needs input_ids or inputs_embeds to know the batch size")


def _prepend_ones(mask: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """(batch, seq) -> (batch, n + seq): the prefix is always attended to."""
    if mask is None:
        return None
    return torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)


def _default_attention_mask(input_ids: torch.Tensor, generation_config) -> torch.Tensor:
    """transformers' rule when no mask is given: pad tokens are masked, unless pad is also EOS."""
    pad = getattr(generation_config, "pad_token_id", None)
    eos = getattr(generation_config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    if pad is not None and pad not in eos_ids and bool((input_ids == pad).any()):
        return input_ids.ne(pad).long()
    return torch.ones_like(input_ids)


def _generation_expand_size(model: nn.Module, kwargs: dict) -> int:
    """Rows per prompt in generate: max(num_beams, num_return_sequences), as transformers expands."""
    generation_config = kwargs.get("generation_config") or getattr(model, "generation_config", None)

    def setting(name: str) -> int:
        value = kwargs.get(name)
        if value is None and generation_config is not None:
            value = getattr(generation_config, name, None)
        return value or 1

    return max(setting("num_beams"), setting("num_return_sequences"))


# ---------------------------------------------------------------------------------------------


def _uses_activation_checkpointing(model: nn.Module) -> bool:
    # transformers 5.x renamed is_gradient_checkpointing (deprecated, warns) to is_activation_checkpointing.
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def _checkpointable_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks transformers itself would checkpoint (GradientCheckpointingLayer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _checkpointed(forward, hooks: AttentionHooks):
    """`forward`, recomputed in backward instead of keeping its activations (torch.utils.checkpoint,
    non-reentrant, RNG state kept so dropout repeats), whenever gradients are being recorded. The
    replay runs after the call has ended, so the encoder prefix the attention hooks apply during the
    call (the paper's layout) is captured now and set again around the replay."""
    from torch.utils.checkpoint import checkpoint

    def wrapped(*args, **kwargs):
        if torch.is_grad_enabled():
            current = hooks.current

            def run(*a, **k):
                with hooks.using(current):
                    return forward(*a, **k)

            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    wrapped.__wrapped__ = forward
    return wrapped


def _drop_token_type_ids(kwargs: dict) -> None:
    """PEFT drops token_type_ids for prompt learning, with this warning; so do we, so that the same
    call gives the same logits (GPT-2, say, would add them to its input embeddings)."""
    if kwargs.get("token_type_ids") is not None:
        warnings.warn("Token type ids are not supported for parameter efficient tuning. Ignoring token type ids",
                      stacklevel=3)
    kwargs.pop("token_type_ids", None)


def freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


class PrefixTuningModel(nn.Module):
    """A frozen base model with one or more named prefixes; one is active at a time.

    Attributes: base_model, peft_config {name: filled PrefixTuningConfig}, prompt_encoder
    (ModuleDict {name: PrefixEncoder, or PaperPrefixEncoder for prefix_positions='paper'}),
    active_adapter.
    """

    def __init__(self, model: nn.Module, config: PrefixTuningConfig, adapter_name: str = "default"):
        super().__init__()
        # transformers' own checkpointing drops the cache, and with it the prefix (PEFT #869): ours
        # takes over, with a cache the replay can read again.
        take_over = _uses_activation_checkpointing(model)
        if take_over:
            model.gradient_checkpointing_disable()
        self.base_model = model
        self.peft_config: dict[str, PrefixTuningConfig] = {}
        self.prompt_encoder = nn.ModuleDict()
        self.active_adapter = adapter_name
        self._adapters_disabled = False
        self._cache_kwarg = cache_kwarg_name(model)
        self._checkpointing = False
        # The paper's layout reaches the encoder through hooks on its attention modules (core/paper.py),
        # attached while an adapter in that layout exists.
        self._hooks = AttentionHooks()
        self._awaiting_text: set[str] = set()  # prefix_tuning_init='TEXT' adapters not yet initialised
        freeze(model)
        self.add_adapter(adapter_name, config)
        if take_over:
            self.gradient_checkpointing_enable()

    def __getattr__(self, name: str) -> Any:
        """Unknown attributes (config, generation_config, device, ...) come from the base model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- adapters ----------------------------------------------------------------------------

    def add_adapter(self, adapter_name: str, config: PrefixTuningConfig) -> None:
        """Add a new prefix (not made active, as in PEFT). The config is copied and its sizes filled.

        prefix_tuning_init='TEXT' (and not inference_mode): with tokenizer_name_or_path the prefix
        starts from the text at once (PEFT's prompt tuning loads its tokenizer the same way); without
        it, `init_prefix_from_text` must be called before the adapter runs (until then its forward
        raises, so that it never trains from a random start by mistake).
        """
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter_name={adapter_name!r} already exists; pick another name or delete_adapter it")
        filled = infer_sizes(as_prefix_tuning_config(config), self.base_model.config)
        if filled.is_paper_layout:
            check_model(self.base_model, filled.num_encoder_layers)
            encoder = PaperPrefixEncoder(filled).to(self._encoder_device())
        else:
            encoder = PrefixEncoder(filled).to(self._encoder_device())
        try:  # the module name first: a name ModuleDict refuses must leave no half-added adapter
            self.prompt_encoder[adapter_name] = encoder
        except (KeyError, TypeError) as e:
            fix = ("it is the name of a torch.nn.ModuleDict attribute; rename it" if hasattr(self.prompt_encoder,
                   str(adapter_name)) else "use letters, digits, '_' or '-'")
            raise ValueError(f"adapter_name={adapter_name!r} cannot name an adapter ({e.args[0]}); {fix}") from None
        self.peft_config[adapter_name] = filled
        if filled.is_paper_layout:
            self._hooks.attach(self.base_model)
        if filled.prefix_tuning_init == "TEXT" and not filled.inference_mode:
            self._awaiting_text.add(adapter_name)
            if filled.tokenizer_name_or_path:
                from transformers import AutoTokenizer

                self.init_prefix_from_text(adapter_name,
                                           tokenizer=AutoTokenizer.from_pretrained(filled.tokenizer_name_or_path))

    def set_adapter(self, adapter_name: str) -> None:
        self._check_adapter(adapter_name)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_adapter(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(f"cannot delete {adapter_name!r}: it is the only adapter")
        self._remove_adapter(adapter_name)
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.peft_config))

    def _remove_adapter(self, adapter_name: str) -> None:
        del self.peft_config[adapter_name]
        del self.prompt_encoder[adapter_name]
        self._awaiting_text.discard(adapter_name)
        if not any(c.is_paper_layout for c in self.peft_config.values()):
            self._hooks.detach()

    @property
    def active_peft_config(self) -> PrefixTuningConfig:
        return self.peft_config[self.active_adapter]

    @property
    def active_adapters(self) -> list[str]:
        """[active_adapter] (PEFT's list form; one prefix is active at a time)."""
        return [self.active_adapter]

    def get_base_model(self) -> nn.Module:
        """The wrapped transformers model (frozen), as PEFT returns it."""
        return self.base_model

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block, forward and generate are the base model's own, with no prefix (PEFT's
        context manager, e.g. for a reference model's outputs)."""
        was_disabled = self._adapters_disabled
        self._adapters_disabled = True
        try:
            yield
        finally:
            self._adapters_disabled = was_disabled

    def _check_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter_name={adapter_name!r} not found; adapters: {sorted(self.peft_config)}")

    def _encoder_device(self) -> torch.device:
        param = next(self.base_model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _is_seq2seq(self, adapter_name: str) -> bool:
        return self.peft_config[adapter_name].task_type == TaskType.SEQ_2_SEQ_LM

    # -- gradient checkpointing ----------------------------------------------------------------

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Recompute each transformer block in backward instead of keeping its activations (memory
        for time), with exact gradients: the prefix reaches the replay through a PrefixCache, which
        no forward changes. transformers' and PEFT's checkpointing drop the prefix instead (PEFT
        #869). `gradient_checkpointing_kwargs` is accepted for transformers' signature; only
        non-reentrant checkpointing is used."""
        del gradient_checkpointing_kwargs
        if self._checkpointing:
            return
        layers = _checkpointable_layers(self.base_model)
        if not layers:
            raise ValueError(f"{type(self.base_model).__name__} has no transformers GradientCheckpointingLayer "
                             "blocks to checkpoint; train without gradient checkpointing")
        for layer in layers:
            layer.forward = _checkpointed(layer.forward, self._hooks)
        self._checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for layer in _checkpointable_layers(self.base_model):
            if "forward" in vars(layer) and hasattr(layer.forward, "__wrapped__"):
                del layer.forward  # back to the class's forward
        self._checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._checkpointing

    def _stateless_cache(self) -> bool:
        """A PrefixCache for this forward: checkpointing replays the layers while gradients flow."""
        return self._checkpointing and self.training and torch.is_grad_enabled()

    # -- the prefix --------------------------------------------------------------------------

    def prefix_key_values(self, adapter_name: Optional[str] = None):
        """The adapter's prefix once, (num_layers*2, kv_heads, n, head_dim), in the base model's dtype.
        In the paper's layout {position: that}, each position with its own sizes."""
        name = adapter_name or self.active_adapter
        self._check_adapter(name)
        if name in self._awaiting_text:
            config = self.peft_config[name]
            raise ValueError(
                f"adapter {name!r} has prefix_tuning_init='TEXT' but its prefix has not been set from "
                f"{config.prefix_tuning_init_text!r} yet: call init_prefix_from_text({name!r}, tokenizer=...) (or pass "
                "token_ids), or set tokenizer_name_or_path in its config")
        encoder = self.prompt_encoder[name]
        dtype = getattr(self.base_model, "dtype", None)
        if isinstance(encoder, PaperPrefixEncoder):
            return {position: prefix_key_values(states.to(dtype or states.dtype), encoder.position_configs[position])
                    for position, states in encoder.position_states().items()}
        states = encoder.prefix_states()  # (n, num_layers*2*token_dim)
        states = states.to(dtype or states.dtype)
        return prefix_key_values(states, self.peft_config[name])

    def encoder_prefix_scope(self, kv, config: PrefixTuningConfig, batch_size: int):
        """A context in which the encoder (and the cross-attention masks) read the adapter's encoder
        prefix, `kv` from `prefix_key_values` for `batch_size` encoder rows; nothing outside the
        paper's layout."""
        if not config.is_paper_layout:
            return contextlib.nullcontext()
        return self._hooks.using(encoder_prefix(kv, batch_size, config.num_virtual_tokens))

    # -- real-word initialisation (Li & Liang 2021, section 7.3) ---------------------------------

    @property
    def adapters_awaiting_text_init(self) -> list[str]:
        """Adapters with prefix_tuning_init='TEXT' whose prefix `init_prefix_from_text` has not set yet
        (their forward raises until it has)."""
        return [name for name in self.peft_config if name in self._awaiting_text]

    def init_prefix_from_text(self, adapter_name: Optional[str] = None, token_ids=None, *, tokenizer=None,
                              text: Optional[str] = None) -> dict:
        """Set the adapter's prefix to the activations the frozen base model computes for a text
        (section 7.3: real words such as "table-to-text:" are a much better start than random values
        when data is scarce).

        token_ids (a list or tensor of the text's ids), or a `tokenizer` with which `text` (default:
        the config's prefix_tuning_init_text) is encoded without special tokens. The ids are repeated or
        cut to num_virtual_tokens (`paper.text_sequence`; the paper makes the prefix as long as the
        text) and the model runs once on them, in eval mode. The prefix becomes their key/values in the
        adapter's layout: rows (2i, 2i+1) of a decoder-only model's layer i; PEFT's rows of an
        encoder-decoder's decoder self-attention (where two layers share rows, PEFT's layout with an
        even layer count, the lower layer's); in the paper's layout all three positions, from the model
        reading the text as source and as decoder input. With prefix_projection the MLP's output layer
        is solved so the prefix it produces equals them (PrefixEncoder.set_prefix_states).

        Returns {"text_tokens", "virtual_tokens", "tokens" (the ids used), "max_abs_error" (of the
        prefix against the activations: 0 without projection)}. A text encoded here is recorded in the
        adapter's config (prefix_tuning_init='TEXT'); token ids alone leave the config as it is.
        """
        name = adapter_name or self.active_adapter
        self._check_adapter(name)
        config = self.peft_config[name]
        text = text if text is not None else config.prefix_tuning_init_text
        tokens = self._init_tokens(token_ids, tokenizer, text)
        sequence = text_sequence(tokens, config.num_virtual_tokens)
        activations = text_key_values(self.base_model, sequence, self._cache_kwarg,
                                      self._hooks if config.is_paper_layout else None)
        encoder = self.prompt_encoder[name]
        if isinstance(encoder, PaperPrefixEncoder):
            errors = [part.set_prefix_states(_flat_states(activations[position], encoder.position_configs[position]))
                      for position, part in encoder.items()]
        else:
            layers = activations["decoder_self_attention" if config.is_paper_layout or self._is_seq2seq(name)
                                 else "self_attention"]
            errors = [encoder.set_prefix_states(_flat_states(layers, config, encoder.prefix_states().detach()))]
        self._awaiting_text.discard(name)
        if token_ids is None:  # the prefix is this text's: say so in the config (the saved file's metadata)
            self.peft_config[name] = dataclasses.replace(config, prefix_tuning_init="TEXT",
                                                         prefix_tuning_init_text=text)
        return {"text_tokens": tokens.numel(), "virtual_tokens": config.num_virtual_tokens,
                "tokens": sequence.tolist(), "max_abs_error": max(errors)}

    def _init_tokens(self, token_ids, tokenizer, text: Optional[str]) -> torch.Tensor:
        """The text's token ids as a 1-d tensor, checked."""
        if token_ids is None:
            if tokenizer is None:
                raise ValueError("init_prefix_from_text needs token_ids, or a tokenizer to encode the text with")
            if text is None or not text.strip():
                raise ConfigError("prefix_tuning_init_text", f"prefix_tuning_init_text={text!r} is invalid: give the "
                                  "text whose activations start the prefix, e.g. 'table-to-text:'")
            token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if tokens.numel() == 0:
            raise ConfigError("prefix_tuning_init_text", f"prefix_tuning_init_text={text!r} is invalid: it has no "
                              "tokens; give a text with at least one word")
        vocab = self.base_model.get_input_embeddings().num_embeddings
        if bool((tokens < 0).any()) or bool((tokens >= vocab).any()):
            raise ValueError(f"token_ids {tokens.tolist()} are not all in [0, {vocab}), the base model's vocabulary; "
                             "encode the text with the base model's tokenizer")
        return tokens

    def get_prompt(self, batch_size: int, adapter_name: Optional[str] = None):
        """A fresh prefix cache for `batch_size` rows (PEFT's name)."""
        name = adapter_name or self.active_adapter
        return build_prefix_cache(self.prefix_key_values(name), batch_size, self.peft_config[name],
                                  stateless=self._stateless_cache())

    # -- forward and generate ----------------------------------------------------------------

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        adapter_name: Optional[str] = None,
        adapter_names: Optional[list[str]] = None,
        num_items_in_batch=None,
        **kwargs,
    ):
        """The base model's forward with the prefix in its cache.

        `adapter_names` (prefixlab's): every named adapter's loss on the batch from one pass of the
        base (core/fused.py); returns FusedOutput(loss=their sum, losses=[each]). Through forward, a
        distributed wrapper (DDP) sees the pass and synchronises every adapter's gradients.
        `num_items_in_batch`: with adapter_names, divide each loss's sum by it (fused.token_loss).

        input_ids / attention_mask / labels: (batch, seq), as for the base model (no prefix positions
        in them). For seq2seq, decoder_attention_mask (batch, target_seq) is extended by the prefix.
        In the paper's layout the encoder reads its prefix while it runs inside this call: given
        encoder_outputs were computed without it.
        Returns the base model's output (logits (batch, seq, vocab), loss when labels are given).
        """
        if adapter_names is not None:
            from .fused import FusedOutput, fused_losses

            losses = fused_losses(self, list(adapter_names), input_ids, attention_mask, labels, num_items_in_batch)
            return FusedOutput(loss=torch.stack(losses).sum(), losses=losses)
        if num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch  # transformers' own, for the base's loss
        if self._adapters_disabled:  # the base model's own forward, token_type_ids included (PEFT)
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   labels=labels, **kwargs)
        _drop_token_type_ids(kwargs)
        name = adapter_name or self.active_adapter
        self._check_adapter(name)
        config = self.peft_config[name]
        n = config.num_virtual_tokens
        batch_size = _batch_size(input_ids, inputs_embeds)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + n  # positions continue after the prefix (PEFT)
        if self._is_seq2seq(name):
            kwargs["decoder_attention_mask"] = _prepend_ones(kwargs.get("decoder_attention_mask"), n)
        else:
            attention_mask = _prepend_ones(attention_mask, n)
        kv = self.prefix_key_values(name)
        kwargs[self._cache_kwarg] = build_prefix_cache(kv, batch_size, config, stateless=self._stateless_cache())
        with self.encoder_prefix_scope(kv, config, batch_size):
            return self.base_model(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels,
                **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        adapter_name: Optional[str] = None,
        **kwargs,
    ) -> torch.Tensor:
        """The base model's `generate` with the prefix computed once and handed over as a pre-filled cache.

        input_ids (batch, prompt_len); decoder-only batches must be left-padded. Without
        attention_mask, pad tokens are masked as transformers does. Greedy, sampling and beam search work (the cache is made for batch*max(num_beams,
        num_return_sequences) rows). Returns the base model's output (sequences (rows, total_len)).
        """
        if input_ids is None:
            raise ValueError("generate needs input_ids (batch, prompt_len)")
        if self._adapters_disabled:
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        _drop_token_type_ids(kwargs)
        name = adapter_name or self.active_adapter
        self._check_adapter(name)
        n = self.peft_config[name].num_virtual_tokens
        if kwargs.get(self._cache_kwarg) is not None:
            raise ValueError(f"do not pass {self._cache_kwarg}= to generate: the prefix is the cache")
        if attention_mask is None:
            attention_mask = _default_attention_mask(input_ids, kwargs.get("generation_config") or
                                                     getattr(self.base_model, "generation_config", None))
        rows = input_ids.shape[0] * _generation_expand_size(self.base_model, kwargs)
        # Without use_cache each step feeds the whole input again, yet the attention layers still append
        # it to the prefix cache they are handed, so the prefix would grow by the input every step (PEFT
        # has the same bug). Decoding with the cache gives the tokens step-by-step recomputation gives.
        config = kwargs.get("generation_config") or getattr(self.base_model, "generation_config", None)
        if kwargs.get("use_cache", getattr(config, "use_cache", True)) is False:
            kwargs["use_cache"] = True
        if self._is_seq2seq(name):
            kwargs["decoder_attention_mask"] = _prepend_ones(kwargs.get("decoder_attention_mask"), n)
        else:
            attention_mask = _prepend_ones(attention_mask, n)
        kv, config = self.prefix_key_values(name), self.peft_config[name]
        kwargs[self._cache_kwarg] = build_prefix_cache(kv, rows, config)
        # The encoder runs once, on the prompts before they are expanded to beams / return sequences.
        with self.encoder_prefix_scope(kv, config, input_ids.shape[0]):
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # -- parameters --------------------------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) over every parameter of the wrapper: base model and all adapters (PEFT's count)."""
        trainable, total = 0, 0
        for param in self.parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def trainable_parameter_names(self, adapter_name: Optional[str] = None) -> list[str]:
        """Names of the parameters that train (of one adapter if named): only prompt_encoder.* ones."""
        prefix = f"prompt_encoder.{adapter_name}." if adapter_name else ""
        return [n for n, p in self.named_parameters() if p.requires_grad and n.startswith(prefix)]

    # -- save and load -----------------------------------------------------------------------

    def get_prompt_embedding_to_save(self, adapter_name: str) -> torch.Tensor:
        """The projected prefix PEFT saves, (num_virtual_tokens, num_layers*2*token_dim), fp32 on CPU
        (in the paper's layout its three positions side by side).

        Computed in fp32 even when called under autocast (e.g. from a bf16 training loop): the
        projection MLP would otherwise run in half precision and only its output be upcast.
        """
        with self._full_precision(adapter_name):
            return self.prompt_encoder[adapter_name].prefix_states().detach().float().cpu().contiguous()

    def adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """What adapter_model.safetensors holds: PEFT's {"prompt_embeddings": (n, num_layers*2*token_dim)},
        or in the paper's layout one tensor per position, {"paper_prompt_embeddings.<position>": (n,
        that position's num_layers*2*token_dim)}: keys PEFT does not read (loading one in PEFT fails
        with its KeyError 'prompt_embeddings'). fp32 on CPU."""
        encoder = self.prompt_encoder[adapter_name]
        if not isinstance(encoder, PaperPrefixEncoder):
            return {SAVED_KEY: self.get_prompt_embedding_to_save(adapter_name)}
        with self._full_precision(adapter_name):
            return {PAPER_SAVED_KEYS[position]: states.detach().float().cpu().contiguous()
                    for position, states in encoder.position_states().items()}

    @contextlib.contextmanager
    def _full_precision(self, adapter_name: str) -> Iterator[None]:
        """No gradients and no autocast on the adapter's device."""
        self._check_adapter(adapter_name)
        device_type = next(self.prompt_encoder[adapter_name].parameters()).device.type
        no_autocast = (torch.autocast(device_type, enabled=False) if device_type in _AUTOCAST_DEVICES
                       else contextlib.nullcontext())
        with torch.no_grad(), no_autocast:
            yield

    def save_pretrained(self, save_directory: str, safe_serialization: bool = True,
                        selected_adapters: Optional[list[str]] = None, is_main_process: bool = True,
                        **kwargs) -> None:
        """PEFT's layout: "default" in save_directory, any other adapter in save_directory/<name>.

        safe_serialization=False writes adapter_model.bin (torch.save) instead of .safetensors;
        is_main_process=False writes nothing (the other processes of a distributed run). Other PEFT
        keywords that mean nothing for a prefix (state_dict, save_embedding_layers) are accepted and
        ignored, as PEFT does for prompt learning; unknown ones raise TypeError.
        """
        unknown = sorted(set(kwargs) - _IGNORED_SAVE_KWARGS)
        if unknown:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {unknown}")
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is a file; pass a directory path")
        names = selected_adapters or list(self.peft_config)
        for name in names:
            self._check_adapter(name)
        if not is_main_process:
            return
        folders = {name: "." if name == "default" else name for name in names}
        for name, folder in folders.items():
            self.save_adapter_files(name, os.path.join(save_directory, folder), safe_serialization)
        from .card import write_model_card  # PEFT writes a README.md model card beside the adapters

        write_model_card(self, save_directory, folders)

    def save_adapter_files(self, adapter_name: str, out_dir: str, safe_serialization: bool = True) -> None:
        """One adapter's adapter_config.json and weights, in `out_dir` itself whatever its name (no
        model card; save_pretrained puts adapters other than "default" in subfolders)."""
        os.makedirs(out_dir, exist_ok=True)
        tensors = self.adapter_tensors(adapter_name)
        filled = self.peft_config[adapter_name]
        if safe_serialization:
            save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata=_weights_metadata(filled))
        else:
            torch.save(tensors, os.path.join(out_dir, LEGACY_WEIGHTS_NAME))
        from .card import base_model_name

        # A saved adapter holds only the projected prefix, hence inference_mode=True (as PEFT writes).
        # How the prefix started (INIT_FIELDS) is replaced by the saved prefix: it is kept in the
        # weights file's metadata, not in adapter_config.json, which PEFT would warn about.
        # PEFT's layout has no encoder prefix, so no encoder sizes either.
        cleared = dict.fromkeys(INIT_FIELDS + (() if filled.is_paper_layout else ENCODER_SIZE_FIELDS))
        config = dataclasses.replace(filled, inference_mode=True, **cleared,
                                     base_model_name_or_path=base_model_name(self, adapter_name) or None)
        config.save_pretrained(out_dir)

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: str = "Upload prefix-tuning adapter", revision: Optional[str] = None,
                    create_pr: bool = False, selected_adapters: Optional[list[str]] = None,
                    safe_serialization: bool = True):
        """Upload the adapter files (what save_pretrained writes, nothing of the base model) to the
        Hub repository `repo_id`, creating it if needed; returns huggingface_hub's CommitInfo.
        Load it back with from_pretrained(base, repo_id) here or in PEFT."""
        from huggingface_hub import HfApi

        from .card import name_location

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="prefixlab-push-") as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, selected_adapters=selected_adapters)
            # A bare name ("my-prefix") becomes the user's "alice/my-prefix": upload where it was made.
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            name_location(folder, repo_id)  # the card's loading code names this repository
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                     revision=revision, create_pr=create_pr)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, model_id: str, adapter_name: str = "default", is_trainable: bool = False,
        config: Optional[PrefixTuningConfig] = None, **kwargs,
    ) -> "PrefixTuningModel":
        """Wrap `model` with the adapter saved by prefixlab or PEFT in folder `model_id`, or in the
        Hub repository `model_id`. `config` replaces the folder's adapter_config.json. Without
        is_trainable the model is put in eval mode (dropout off), as PEFT does. kwargs: the Hub's
        subfolder, revision, token, cache_dir, and PEFT's loading keywords (`load_options`)."""
        read_on, hub_kwargs = load_options(**kwargs)
        folder = adapter_folder(model_id, **hub_kwargs)
        wrapped = cls(model, _adapter_config(folder, is_trainable, model.config, config), adapter_name)
        wrapped._load_weights(folder, adapter_name, read_on)
        if not is_trainable:
            wrapped.eval()
        return wrapped

    def load_adapter(self, model_id: str, adapter_name: str, is_trainable: bool = False,
                     config: Optional[PrefixTuningConfig] = None, **kwargs) -> None:
        """Add the adapter saved in folder or Hub repository `model_id` under `adapter_name` (not made
        active); without is_trainable the model is put in eval mode, as PEFT does. kwargs as in
        from_pretrained."""
        read_on, hub_kwargs = load_options(**kwargs)
        folder = adapter_folder(model_id, **hub_kwargs)
        self.add_adapter(adapter_name, _adapter_config(folder, is_trainable, self.base_model.config, config))
        try:
            self._load_weights(folder, adapter_name, read_on)
        except Exception:
            self._remove_adapter(adapter_name)
            raise
        if not is_trainable:
            self.eval()

    def _load_weights(self, model_id: str, adapter_name: str, read_on: torch.device) -> None:
        path, state = _read_weights(model_id, read_on)
        encoder = self.prompt_encoder[adapter_name]
        paper = isinstance(encoder, PaperPrefixEncoder)
        expected = ({PAPER_SAVED_KEYS[position]: part for position, part in encoder.items()} if paper
                    else {SAVED_KEY: encoder})
        missing = sorted(set(expected) - set(state))
        if missing:
            raise AdapterFileError(f"{path}: no {missing[0]!r} tensor (found {sorted(state)}); " + (
                "the adapter_config.json says prefix_positions='paper', whose file holds one tensor per position"
                if paper else "saved with prefix_positions='paper'? its adapter_config.json should say so"
                if any(key in state for key in PAPER_SAVED_KEYS.values()) else "not a prefix-tuning adapter"))
        for key, part in expected.items():
            tensor = state[key]
            if tuple(tensor.shape) != tuple(part.embedding.weight.shape):
                raise AdapterFileError(
                    f"{model_id}: {key} has shape {tuple(tensor.shape)} but this base model needs "
                    f"{tuple(part.embedding.weight.shape)} (num_virtual_tokens, num_layers*2*token_dim); the adapter "
                    "was saved for a different base model"
                )
        for key, part in expected.items():
            part.load_prompt_embeddings(state[key])
        self._awaiting_text.discard(adapter_name)  # the saved prefix replaces any initial one


_IGNORED_SAVE_KWARGS = frozenset({"state_dict", "save_embedding_layers"})


def _flat_states(layers, config: PrefixTuningConfig, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-layer key/values (each (1, heads, n, head_dim)) written into a flat prefix (n,
    num_layers*2*token_dim) at `layer_rows(config)`, over `start` (kept where no layer writes: PEFT's
    unused seq2seq rows). Where two layers share rows (PEFT's seq2seq layout), the lower one's stay."""
    n, heads = config.num_virtual_tokens, config.num_attention_heads
    flat = (start.detach().float().clone() if start is not None
            else torch.zeros(n, config.num_layers * 2 * config.token_dim))
    rows = flat.view(n, config.num_layers * 2, heads, config.token_dim // heads)  # (n, 2L, heads, head_dim)
    written: set[int] = set()
    for (key_row, value_row), (key, value) in zip(layer_rows(config), layers):
        if key_row in written:
            continue
        rows[:, key_row] = key[0].transpose(0, 1).to(rows)  # (heads, n, head_dim) -> (n, heads, head_dim)
        rows[:, value_row] = value[0].transpose(0, 1).to(rows)
        written.update((key_row, value_row))
    return flat
def _adapter_config(model_id: str, is_trainable: bool, model_config,
                    given: Optional[PrefixTuningConfig] = None) -> PrefixTuningConfig:
    """The saved config (or `given` instead), checked against the model it is loaded onto."""
    data = read_config_file(model_id) if given is None else as_prefix_tuning_config(given).to_json_dict()
    if data.get("peft_type") not in (None, "PREFIX_TUNING"):
        raise AdapterFileError(
            f"{os.path.join(model_id, CONFIG_NAME)}: peft_type={data.get('peft_type')!r} is not a prefix-tuning "
            "adapter; load it with peft"
        )
    try:
        config = PrefixTuningConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise AdapterFileError(f"{os.path.join(model_id, CONFIG_NAME)}: {err}") from err
    if is_trainable and config.prefix_projection:
        raise AdapterFileError(
            f"{model_id}: saved with prefix_projection=True, so it holds only the projected prefix, not the MLP; "
            "load it with is_trainable=False, or train a new adapter"
        )
    config = dataclasses.replace(config, inference_mode=not is_trainable)
    try:
        infer_sizes(config, model_config)
    except ValueError as err:
        raise AdapterFileError(f"{model_id}: the adapter was saved for a different base model shape: {err}") from err
    return config


def _weights_metadata(config: PrefixTuningConfig) -> dict[str, str]:
    """The safetensors metadata: PEFT's {"format": "pt"}, and prefixlab's layout and initialisation."""
    metadata = {"format": "pt"}
    if config.is_paper_layout:
        metadata["prefixlab.prefix_positions"] = "paper"
    if config.prefix_tuning_init == "TEXT":
        metadata["prefixlab.prefix_tuning_init"] = "TEXT"
        metadata["prefixlab.prefix_tuning_init_text"] = config.prefix_tuning_init_text
    return metadata


def _read_weights(model_id: str, device: torch.device = torch.device("cpu")) -> tuple[str, dict]:
    """(the file's path, its tensors) of the adapter in folder `model_id`."""
    path = os.path.join(model_id, WEIGHTS_NAME)
    legacy = os.path.join(model_id, LEGACY_WEIGHTS_NAME)
    try:
        if os.path.isfile(path):
            state = load_file(path, device=str(device))
        elif os.path.isfile(legacy):
            path = legacy
            state = torch.load(legacy, map_location=device, weights_only=True)
        else:
            raise AdapterFileError(
                f"{path}: file not found; an adapter directory needs {WEIGHTS_NAME} next to {CONFIG_NAME}, as "
                "written by save_pretrained"
            )
    except (SafetensorError, OSError, RuntimeError) as err:
        raise AdapterFileError(f"{path}: cannot read the weights ({err}); re-save the adapter") from err
    return path, state


def as_prefix_tuning_config(config: Any) -> PrefixTuningConfig:
    """prefixlab's PrefixTuningConfig, or one converted from PEFT's (the same fields); anything else is
    refused with what to pass instead."""
    if isinstance(config, PrefixTuningConfig):
        return config
    peft_type = getattr(config, "peft_type", None)
    kind = f"{type(config).__module__}.{type(config).__qualname__}"
    if getattr(peft_type, "value", peft_type) == "PREFIX_TUNING" and callable(getattr(config, "to_dict", None)):
        return PrefixTuningConfig.from_dict({k: getattr(v, "value", v) for k, v in config.to_dict().items()})
    raise ValueError(f"config must be a PrefixTuningConfig (prefixlab's, or PEFT's to convert), got {kind}"
                     + (f" for {getattr(peft_type, 'value', peft_type)}; prefixlab implements prefix tuning only"
                        if peft_type is not None else ""))


def get_peft_model(model: nn.Module, peft_config: PrefixTuningConfig, adapter_name: str = "default") -> PrefixTuningModel:
    """Freeze `model` and add a prefix described by `peft_config` (PEFT's entry point)."""
    return PrefixTuningModel(model, peft_config, adapter_name)
