"""PrefixTuningModel: a frozen transformers model plus named prefixes fed as its key/value cache.

Prefix tuning (Li & Liang 2021, section 4.2) prepends trainable key/value vectors to every attention
layer. transformers models accept past key/values as a Cache object, so the prefix becomes a
pre-filled DynamicCache (decoder-only) or EncoderDecoderCache (seq2seq decoders; the encoder gets no
prefix, as in PEFT). Layout, parameter names, counts and saved files are PEFT's.

Unlike PEFT, the prefix (and the projection MLP) runs once per forward on num_virtual_tokens rows
and is broadcast to the batch as a view, and `generate` computes it once per call and passes it in
the cache, which also works on transformers versions that renamed `past_key_values` to `cache`.
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
    LEGACY_WEIGHTS_NAME,
    WEIGHTS_NAME,
    AdapterFileError,
    PrefixTuningConfig,
    TaskType,
    infer_sizes,
    read_config_file,
)
from .encoder import SAVED_KEY, PrefixEncoder
from .hub import adapter_folder, load_options

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


def build_prefix_cache(kv: torch.Tensor, batch_size: int, config: PrefixTuningConfig, stateless: bool = False):
    """A fresh cache holding the prefix for `batch_size` rows (caches are mutated by each forward).

    kv: (2L, heads, n, head_dim), or one per row (batch_size, 2L, heads, n, head_dim). Each row is
    broadcast with expand (no copy of our own; the cache makes the one copy it needs when it
    concatenates new tokens). `stateless`: a PrefixCache, which no forward changes (training with
    gradient checkpointing).
    """
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


def _checkpointed(forward):
    """`forward`, recomputed in backward instead of keeping its activations (torch.utils.checkpoint,
    non-reentrant, RNG state kept so dropout repeats), whenever gradients are being recorded."""
    from torch.utils.checkpoint import checkpoint

    def wrapped(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
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
    (ModuleDict {name: PrefixEncoder}), active_adapter.
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
        """Add a new prefix (not made active, as in PEFT). The config is copied and its sizes filled."""
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter_name={adapter_name!r} already exists; pick another name or delete_adapter it")
        filled = infer_sizes(as_prefix_tuning_config(config), self.base_model.config)
        encoder = PrefixEncoder(filled).to(self._encoder_device())
        try:  # the module name first: a name ModuleDict refuses must leave no half-added adapter
            self.prompt_encoder[adapter_name] = encoder
        except (KeyError, TypeError) as e:
            fix = ("it is the name of a torch.nn.ModuleDict attribute; rename it" if hasattr(self.prompt_encoder,
                   str(adapter_name)) else "use letters, digits, '_' or '-'")
            raise ValueError(f"adapter_name={adapter_name!r} cannot name an adapter ({e.args[0]}); {fix}") from None
        self.peft_config[adapter_name] = filled

    def set_adapter(self, adapter_name: str) -> None:
        self._check_adapter(adapter_name)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_adapter(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(f"cannot delete {adapter_name!r}: it is the only adapter")
        del self.peft_config[adapter_name]
        del self.prompt_encoder[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.peft_config))

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
            layer.forward = _checkpointed(layer.forward)
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

    def prefix_key_values(self, adapter_name: Optional[str] = None) -> torch.Tensor:
        """The adapter's prefix once, (num_layers*2, kv_heads, n, head_dim), in the base model's dtype."""
        name = adapter_name or self.active_adapter
        self._check_adapter(name)
        states = self.prompt_encoder[name].prefix_states()  # (n, num_layers*2*token_dim)
        states = states.to(getattr(self.base_model, "dtype", states.dtype))
        return prefix_key_values(states, self.peft_config[name])

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
        **kwargs,
    ):
        """The base model's forward with the prefix in its cache.

        input_ids / attention_mask / labels: (batch, seq), as for the base model (no prefix positions
        in them). For seq2seq, decoder_attention_mask (batch, target_seq) is extended by the prefix.
        Returns the base model's output (logits (batch, seq, vocab), loss when labels are given).
        """
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
        kwargs[self._cache_kwarg] = self.get_prompt(batch_size, name)
        return self.base_model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels, **kwargs
        )

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
        kwargs[self._cache_kwarg] = self.get_prompt(rows, name)
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
        """The projected prefix PEFT saves, (num_virtual_tokens, num_layers*2*token_dim), fp32 on CPU.

        Computed in fp32 even when called under autocast (e.g. from a bf16 training loop): the
        projection MLP would otherwise run in half precision and only its output be upcast.
        """
        self._check_adapter(adapter_name)
        encoder = self.prompt_encoder[adapter_name]
        device_type = encoder.embedding.weight.device.type
        no_autocast = (torch.autocast(device_type, enabled=False) if device_type in _AUTOCAST_DEVICES
                       else contextlib.nullcontext())
        with torch.no_grad(), no_autocast:
            return encoder.prefix_states().detach().float().cpu().contiguous()

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
        tensors = {SAVED_KEY: self.get_prompt_embedding_to_save(adapter_name)}
        if safe_serialization:
            save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            torch.save(tensors, os.path.join(out_dir, LEGACY_WEIGHTS_NAME))
        from .card import base_model_name

        # A saved adapter holds only the projected prefix, hence inference_mode=True (as PEFT writes).
        config = dataclasses.replace(self.peft_config[adapter_name], inference_mode=True,
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
            del self.peft_config[adapter_name]
            del self.prompt_encoder[adapter_name]
            raise
        if not is_trainable:
            self.eval()

    def _load_weights(self, model_id: str, adapter_name: str, read_on: torch.device) -> None:
        tensor = _read_prompt_embeddings(model_id, read_on)
        encoder = self.prompt_encoder[adapter_name]
        if tuple(tensor.shape) != tuple(encoder.embedding.weight.shape):
            raise AdapterFileError(
                f"{model_id}: {SAVED_KEY} has shape {tuple(tensor.shape)} but this base model needs "
                f"{tuple(encoder.embedding.weight.shape)} (num_virtual_tokens, num_layers*2*token_dim); the adapter "
                "was saved for a different base model"
            )
        encoder.load_prompt_embeddings(tensor)


_IGNORED_SAVE_KWARGS = frozenset({"state_dict", "save_embedding_layers"})
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


def _read_prompt_embeddings(model_id: str, device: torch.device = torch.device("cpu")) -> torch.Tensor:
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
    if SAVED_KEY not in state:
        raise AdapterFileError(f"{path}: no {SAVED_KEY!r} tensor (found {sorted(state)}); not a prefix-tuning adapter")
    return state[SAVED_KEY]


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
