"""PrefixTuningConfig: PEFT's fields, defaults, help texts and adapter_config.json layout.

The dataclasses mirror `peft.PromptLearningConfig` / `peft.PrefixTuningConfig` field for field, so
that a PEFT-written adapter_config.json loads here and ours loads in PEFT. Unlike PEFT, values are
validated in `__post_init__` and every error names the field, the value and what to do.

Sizes that come from the model (INFERRED_FIELDS) stay None until `infer_sizes` fills them from a
`transformers.PretrainedConfig`, by the rules of PEFT's `_prepare_prompt_learning_config` except where
those do not fit an encoder-decoder model's decoder (see `infer_sizes`).

Two of the paper's methods that PEFT lacks are prefixlab-only fields (PREFIXLAB_FIELDS), in `to_dict`
and adapter_config.json only when set, so a default config and its file are PEFT's key for key:
`prefix_positions="paper"` (section 4.2: encoder-decoder models get a prefix in the encoder's
self-attention, the decoder's self-attention and the decoder's cross-attention; the encoder's sizes
are ENCODER_SIZE_FIELDS) and `prefix_tuning_init="TEXT"` (section 7.3: the prefix starts as the
activations of real words). core/paper.py implements both.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"  # PEFT with safe_serialization=False
SAVED_KEY = "prompt_embeddings"  # PEFT's single key in adapter_model.safetensors
INFERRED_FIELDS = ("num_layers", "token_dim", "num_attention_heads", "num_transformer_submodules")
# The encoder's attention sizes, filled from the model for prefix_positions="paper" only (the
# encoder's self-attention prefix); None otherwise.
ENCODER_SIZE_FIELDS = ("num_encoder_layers", "encoder_token_dim", "num_encoder_attention_heads")
# Where an encoder-decoder model reads a prefix with prefix_positions="paper", in the order the
# saved file and the parameter accounting list them. Each has its own PrefixEncoder.
PAPER_POSITIONS = ("encoder_self_attention", "decoder_self_attention", "decoder_cross_attention")
PAPER_SAVED_KEYS = {position: f"paper_prompt_embeddings.{position}" for position in PAPER_POSITIONS}
# Architectures whose attention modules core/paper.py reaches (tests/test_paper_seq2seq.py).
PAPER_MODEL_TYPES = ("t5", "mt5", "bart")
# How a training run's prefix started: recorded in the spec, not in the saved adapter, whose weights
# replace the initial prefix (so a text-initialised default adapter still loads in PEFT unwarned).
INIT_FIELDS = ("prefix_tuning_init", "prefix_tuning_init_text", "tokenizer_name_or_path")
PREFIXLAB_FIELDS = ("prefix_positions", *ENCODER_SIZE_FIELDS, *INIT_FIELDS)  # none of them in PEFT's config


class ConfigError(ValueError):
    """A PrefixTuningConfig value that is wrong, or does not fit the model. `.field` is the
    PrefixTuningConfig field it is about, so callers put the message beside that field without
    reading the text; the message names the field, the value and what to do."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class AdapterFileError(ValueError):
    """An adapter directory is missing a file, or a file in it is unreadable or does not fit."""


class TaskType(str, enum.Enum):
    """The tasks prefix tuning supports here (PEFT's names and values)."""

    CAUSAL_LM = "CAUSAL_LM"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"


class PeftType(str, enum.Enum):
    PREFIX_TUNING = "PREFIX_TUNING"


def _fail(name: str, value: Any, fix: str) -> None:
    raise ConfigError(name, f"{name}={value!r} is invalid: {fix}")


def _check_positive_int(name: str, value: Any, *, optional: bool = True) -> None:
    """bool is an int subclass; True must not pass for a size."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, f"{name} must be a whole number (int) of at least 1, e.g. {name}=20")
    if value < 1:
        _fail(name, value, f"{name} must be at least 1")


def _coerce_task_type(value: Any) -> Optional[TaskType]:
    if value is None or isinstance(value, TaskType):
        return value
    try:
        return TaskType(str(getattr(value, "value", value)))
    except ValueError:
        _fail("task_type", value, "prefix tuning here supports task_type='CAUSAL_LM' (decoder-only models) "
              "or task_type='SEQ_2_SEQ_LM' (encoder-decoder models)")


@dataclass
class PromptLearningConfig:
    """Fields shared by prompt-learning methods (PEFT's PeftConfigMixin + PeftConfig + PromptLearningConfig)."""

    task_type: Optional[Union[str, TaskType]] = field(default=None, metadata={"help": "Task type"})
    peft_type: Optional[Union[str, PeftType]] = field(default=None, metadata={"help": "Peft type"})
    auto_mapping: Optional[dict] = field(
        default=None, metadata={"help": "An auto mapping dict to help retrieve the base model class if needed."}
    )
    peft_version: Optional[str] = field(default=None, metadata={"help": "PEFT version, leave empty to auto-fill."})
    base_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "The name of the base model to use."}
    )
    revision: Optional[str] = field(default=None, metadata={"help": "The specific base model version to use."})
    inference_mode: bool = field(default=False, metadata={"help": "Whether to use inference mode"})
    num_virtual_tokens: int = field(default=None, metadata={"help": "Number of virtual tokens"})
    token_dim: int = field(
        default=None, metadata={"help": "The hidden embedding dimension of the base transformer model"}
    )
    num_transformer_submodules: Optional[int] = field(
        default=None, metadata={"help": "Number of transformer submodules"}
    )
    num_attention_heads: Optional[int] = field(default=None, metadata={"help": "Number of attention heads"})
    num_layers: Optional[int] = field(default=None, metadata={"help": "Number of transformer layers"})
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "List of extra modules to be set as trainable and saved in the final checkpoint. "
            "For example, in Sequence Classification or Token Classification tasks, "
            "the final layer `classifier/score` are randomly initialized and as such need to be trainable and saved. "
            "The module(s) will be fully fine-tuned."
        },
    )

    def __post_init__(self) -> None:
        self.task_type = _coerce_task_type(self.task_type)
        for name in ("num_virtual_tokens", "token_dim", "num_attention_heads", "num_layers"):
            _check_positive_int(name, getattr(self, name))
        if self.num_transformer_submodules not in (None, 1, 2):
            _fail("num_transformer_submodules", self.num_transformer_submodules,
                  "use 1 for decoder-only models, 2 for encoder-decoder models, or leave it None to infer it")
        if self.token_dim is not None and self.num_attention_heads is not None:
            if self.token_dim % self.num_attention_heads:
                _fail("token_dim", self.token_dim,
                      f"token_dim must be divisible by num_attention_heads={self.num_attention_heads} "
                      "(token_dim = heads * head_dim); fix one of them or leave both None to infer them")
        if not isinstance(self.inference_mode, bool):
            _fail("inference_mode", self.inference_mode, "inference_mode must be True or False")
        if self.modules_to_save:
            _fail("modules_to_save", self.modules_to_save,
                  "prefix tuning for CAUSAL_LM / SEQ_2_SEQ_LM trains only the prefix; leave modules_to_save None")

    @property
    def is_prompt_learning(self) -> bool:
        return True

    def to_dict(self) -> dict:
        """All fields as a dict (enums stay enums, as PEFT's `asdict`)."""
        return dataclasses.asdict(self)

    def to_json_dict(self) -> dict:
        """All fields with plain JSON values: enums become their string values."""
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PromptLearningConfig":
        """Build from a dict as in adapter_config.json. Keys this class lacks (other PEFT versions'
        fields) are dropped with a warning, as PEFT does."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown keys {unknown} (written by another PEFT version?)")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save_pretrained(self, save_directory: str) -> str:
        """Write `<save_directory>/adapter_config.json` the way PEFT does (indent 2, sorted keys)."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is a file; pass a directory path")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w") as f:
            f.write(json.dumps(self.to_json_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def from_pretrained(cls, directory: str) -> "PromptLearningConfig":
        """Read `<directory>/adapter_config.json` (ours or PEFT's)."""
        return cls.from_dict(read_config_file(directory))


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """
    This is the configuration class to store the configuration of a [`PrefixEncoder`].

    Args:
        init_weights (`Optional[str]`): If not set, weights are initialized at random, if set to "zero"
            the weights are initialized so that the activations will be a no-op (zero).
        encoder_hidden_size (`int`): The hidden size of the prompt encoder.
        prefix_projection (`bool`): Whether to project the prefix embeddings.
    """

    init_weights: Literal["zero"] | None = field(
        default=None,
        metadata={
            "help": 'If not set, weights are initialized at random, if set to "zero" the '
            "weights are initialized so that the activations will be a no-op (zero)."
        },
    )
    encoder_hidden_size: int = field(
        default=None,
        metadata={"help": "The hidden size of the encoder"},
    )
    prefix_projection: bool = field(
        default=False,
        metadata={"help": "Whether to project the prefix tokens"},
    )
    # --- prefixlab only: written to adapter_config.json only when set (PREFIXLAB_FIELDS) ---
    prefix_positions: Optional[Literal["paper"]] = field(
        default=None,
        metadata={
            "help": "Encoder-decoder models only. None (PEFT's layout): the prefix reaches the decoder's "
            "self-attention only, and the adapter loads in PEFT. 'paper' (Li & Liang 2021, section 4.2): separate "
            "prefixes for the encoder's self-attention, the decoder's self-attention and the decoder's "
            "cross-attention (T5, mT5, flan-T5, BART), saved in a format only prefixlab loads. Decoder-only models "
            "have one position, the same in both."
        },
    )
    num_encoder_layers: Optional[int] = field(
        default=None,
        metadata={"help": "prefix_positions='paper': number of the model's encoder layers (inferred from the model)"},
    )
    encoder_token_dim: Optional[int] = field(
        default=None,
        metadata={"help": "prefix_positions='paper': width of one token's key in the model's encoder "
                          "self-attention, heads * head_dim (inferred from the model)"},
    )
    num_encoder_attention_heads: Optional[int] = field(
        default=None,
        metadata={"help": "prefix_positions='paper': the model's encoder attention heads (inferred from the model)"},
    )
    prefix_tuning_init: Optional[Literal["TEXT"]] = field(
        default=None,
        metadata={
            "help": "How the prefix starts. None: at random (see init_weights). 'TEXT' (Li & Liang 2021, section "
            "7.3): as the key/values the frozen model computes for prefix_tuning_init_text, real words such as "
            "'table-to-text:', which helps most with little data; with prefix_projection the MLP's output layer "
            "is solved so that the prefix it produces is exactly those."
        },
    )
    prefix_tuning_init_text: Optional[str] = field(
        default=None,
        metadata={
            "help": "prefix_tuning_init='TEXT': the text whose activations start the prefix, e.g. 'table-to-text:'. "
            "Its tokens are repeated or cut to num_virtual_tokens (the paper uses as many virtual tokens as the "
            "text has)."
        },
    )
    tokenizer_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "prefix_tuning_init='TEXT': the tokenizer (Hub id or folder) for prefix_tuning_init_text; "
            "leave empty when a tokenizer is passed to init_prefix_from_text, as the lab's trainer does."
        },
    )

    def __post_init__(self) -> None:
        if self.peft_type not in (None, PeftType.PREFIX_TUNING, "PREFIX_TUNING"):
            _fail("peft_type", self.peft_type, "this is a prefix-tuning config; peft_type must be 'PREFIX_TUNING' "
                  "(load other PEFT methods with peft itself)")
        super().__post_init__()
        self.peft_type = PeftType.PREFIX_TUNING
        _check_positive_int("encoder_hidden_size", self.encoder_hidden_size)
        if not isinstance(self.prefix_projection, bool):
            _fail("prefix_projection", self.prefix_projection, "prefix_projection must be True or False")
        if self.init_weights not in (None, "zero"):
            _fail("init_weights", self.init_weights, "use None (random init) or 'zero'")
        self._check_prefixlab_fields()

    def _check_prefixlab_fields(self) -> None:
        if self.prefix_positions not in (None, "paper"):
            _fail("prefix_positions", self.prefix_positions,
                  "use None (PEFT's layout: the decoder's self-attention only) or 'paper' (encoder self-attention, "
                  "decoder self-attention and decoder cross-attention, Li & Liang 2021 section 4.2)")
        for name in ENCODER_SIZE_FIELDS:
            _check_positive_int(name, getattr(self, name))
        if self.encoder_token_dim is not None and self.num_encoder_attention_heads is not None:
            if self.encoder_token_dim % self.num_encoder_attention_heads:
                _fail("encoder_token_dim", self.encoder_token_dim,
                      f"encoder_token_dim must be divisible by num_encoder_attention_heads="
                      f"{self.num_encoder_attention_heads} (heads * head_dim); fix one of them or leave both None "
                      "to infer them")
        init = getattr(self.prefix_tuning_init, "value", self.prefix_tuning_init)  # PEFT's PromptTuningInit too
        if init not in (None, "TEXT", "RANDOM"):
            _fail("prefix_tuning_init", init, "use None (random, see init_weights) or 'TEXT' (the activations of "
                  "prefix_tuning_init_text)")
        self.prefix_tuning_init = None if init == "RANDOM" else init  # PEFT's name for random init
        for name in ("prefix_tuning_init_text", "tokenizer_name_or_path"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                _fail(name, value, f"{name} must be text or None")
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)  # an empty form box
        if self.prefix_tuning_init == "TEXT":
            if self.prefix_tuning_init_text is None:
                _fail("prefix_tuning_init_text", None, "prefix_tuning_init='TEXT' starts the prefix from the "
                      "activations of this text; give the text, e.g. prefix_tuning_init_text='table-to-text:', or "
                      "set prefix_tuning_init=None")
            if self.init_weights == "zero":
                _fail("prefix_tuning_init", "TEXT", "init_weights='zero' starts the prefix at zero and "
                      "prefix_tuning_init='TEXT' from a text's activations; choose one (set init_weights=None or "
                      "prefix_tuning_init=None)")
        else:
            unused = [name for name in ("prefix_tuning_init_text", "tokenizer_name_or_path") if getattr(self, name)]
            if unused:
                warnings.warn(f"{', '.join(unused)} set but prefix_tuning_init=None: the prefix starts at random and "
                              f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} ignored; set "
                              "prefix_tuning_init='TEXT' to start it from the text", stacklevel=4)

    @property
    def is_paper_layout(self) -> bool:
        """Prefixes in the encoder, decoder and cross-attention (prefix_positions='paper')."""
        return self.prefix_positions == "paper"

    @property
    def is_filled(self) -> bool:
        needed = INFERRED_FIELDS + (ENCODER_SIZE_FIELDS if self.is_paper_layout else ())
        return all(getattr(self, name) is not None for name in needed) and self.encoder_hidden_size is not None

    def to_dict(self) -> dict:
        """PEFT's fields, plus the prefixlab-only fields that are set: a config PEFT can express gives
        PEFT's dict, and its adapter_config.json PEFT's keys (PEFT warns about keys it does not know).
        The unset ones are None, which `from_dict` restores."""
        data = super().to_dict()
        for name in PREFIXLAB_FIELDS:
            if data[name] is None:
                del data[name]
        return data


def read_config_file(directory: str) -> dict:
    """The JSON object in `<directory>/adapter_config.json`, with clear errors for missing/corrupt files."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise AdapterFileError(
            f"{path}: file not found. An adapter directory needs {CONFIG_NAME} and adapter_model.safetensors, "
            "as written by save_pretrained; check the path"
        )
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise AdapterFileError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "re-save the adapter with save_pretrained"
        ) from err
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path}: expected a JSON object, got {type(data).__name__}; re-save the adapter")
    return data


# ---------------------------------------------------------------------------------------------
# Sizes from the model's config (no weights needed)

_LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
# Encoder-decoder models: the prefix feeds the decoder's self-attention, while num_hidden_layers and
# num_attention_heads are the encoder's (T5 num_layers, BART encoder_layers / encoder_attention_heads).
_DECODER_LAYER_KEYS = ("num_decoder_layers", "decoder_layers")  # T5 family, ProphetNet; BART family
_DECODER_HEAD_KEYS = ("decoder_attention_heads", "num_decoder_attention_heads")  # BART family; ProphetNet
_ENCODER_HEAD_KEYS = ("encoder_attention_heads", "num_heads", "num_attention_heads", "n_head")  # BART; T5; others


def _model_config_dict(model_config) -> dict:
    """The text part of the model config as a dict (VLMs keep the language model in text_config)."""
    data = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    return data.get("text_config") or data


def _first_key(data: dict, keys: tuple[str, ...]):
    return next((data[k] for k in keys if data.get(k) is not None), None)


def _model_num_layers(model_config, data: dict, is_seq2seq: bool = False) -> tuple[Optional[int], str]:
    """The layer count the prefix needs, and what gives it (for messages): the decoder's for seq2seq."""
    name = type(model_config).__name__
    key = next((k for k in _DECODER_LAYER_KEYS if data.get(k) is not None), None) if is_seq2seq else None
    if key is not None:
        return data[key], f"{name}.{key}, the decoder's layer count,"
    # The attribute first: transformers maps num_hidden_layers to n_layer / encoder_layers, and the dict
    # entry was removed in transformers#41250 (same order as PEFT).
    value = getattr(model_config, "num_hidden_layers", None)
    return (value if value is not None else _first_key(data, _LAYER_KEYS)), name


def _model_token_dim(data: dict, heads: Optional[int]) -> tuple[Optional[int], str]:
    """The width of one token's key (or value) over all heads, and what gives it (for messages).

    T5-family configs give the per-head size d_kv, and num_heads * d_kv need not be d_model
    (flan-t5-small: 6 * 64 = 384, d_model 512); elsewhere the hidden size is split over the heads
    (grouped-query attention: see `_model_kv_heads_and_head_dim`).
    """
    if data.get("d_kv") is not None and heads is not None:
        return heads * data["d_kv"], "num_heads*d_kv"
    return _first_key(data, _HIDDEN_KEYS), "its hidden size"


def _model_kv_heads_and_head_dim(data: dict, token_dim: int, heads: int) -> Optional[tuple[int, int]]:
    """(num_key_value_heads, head_dim) for grouped-query-attention configs (PEFT #1901), else None."""
    if "num_key_value_heads" not in data:
        return None
    kv_heads = data["num_key_value_heads"] or heads
    head_dim = data.get("head_dim") or token_dim // heads
    return kv_heads, head_dim


def _missing(field_name: str, keys: tuple[str, ...], model_config) -> ConfigError:
    return ConfigError(field_name, 
        f"{field_name}=None cannot be inferred: the model config ({type(model_config).__name__}) has none of "
        f"{', '.join(keys)}; set {field_name} in PrefixTuningConfig"
    )


def _mismatch(field_name: str, value: Any, expected: Any, source: str) -> ConfigError:
    return ConfigError(field_name, 
        f"{field_name}={value!r} does not match the model ({source} gives {expected!r}); "
        f"set {field_name}={expected!r} or leave it None to infer it"
    )


def infer_sizes(config: PrefixTuningConfig, model_config, task_type=None) -> PrefixTuningConfig:
    """A copy of `config` with None sizes filled from `model_config` (a transformers PretrainedConfig),
    and its task_type from `task_type` when the config has none.

    PEFT's `_prepare_prompt_learning_config` rules: layers from num_hidden_layers / num_layers /
    n_layer; token_dim from hidden_size / n_embd / d_model; heads from num_attention_heads / n_head /
    num_heads / encoder_attention_heads; for grouped-query attention the prefix holds key/value heads,
    so token_dim = num_key_value_heads * head_dim and num_attention_heads = num_key_value_heads;
    encoder_hidden_size falls back to token_dim. Unlike PEFT (whose sizes for these fail in the model's
    forward), an encoder-decoder model's prefix feeds its decoder, so layers come from
    num_decoder_layers / decoder_layers and heads from decoder_attention_heads /
    num_decoder_attention_heads first; and T5-family configs give token_dim = num_heads * d_kv.
    Explicit values that do not fit the model raise, except PEFT's own num_layers (the encoder's count)
    on a model whose decoder has fewer layers, which works (the extra layers go unused), so PEFT's
    adapters for it load.
    """
    if config.num_virtual_tokens is None:
        _fail("num_virtual_tokens", None, "set num_virtual_tokens to the prefix length, e.g. 20")
    given_task = config.task_type if config.task_type is not None else _coerce_task_type(task_type)
    if given_task is None:
        _fail("task_type", None, "set task_type='CAUSAL_LM' or 'SEQ_2_SEQ_LM'")
    data = _model_config_dict(model_config)
    is_seq2seq = bool(data.get("is_encoder_decoder"))
    expected_task = TaskType.SEQ_2_SEQ_LM if is_seq2seq else TaskType.CAUSAL_LM
    if given_task != expected_task:
        _fail("task_type", given_task.value,
              f"the model ({type(model_config).__name__}) is {'an encoder-decoder' if is_seq2seq else 'a decoder-only'}"
              f" model; use task_type='{expected_task.value}'")

    num_layers = _num_layers(config.num_layers, model_config, data, is_seq2seq)
    head_keys = (_DECODER_HEAD_KEYS if is_seq2seq else ()) + _HEAD_KEYS
    heads = _first_key(data, head_keys)
    hidden, hidden_source = _model_token_dim(data, heads)
    token_dim, num_heads = config.token_dim, config.num_attention_heads
    if token_dim is None and hidden is None:
        raise _missing("token_dim", _HIDDEN_KEYS, model_config)
    if num_heads is None and heads is None:
        raise _missing("num_attention_heads", head_keys, model_config)
    token_dim = hidden if token_dim is None else token_dim
    num_heads = heads if num_heads is None else num_heads
    kv = _model_kv_heads_and_head_dim(data, token_dim, num_heads)
    allowed_dims = {hidden} | ({kv[0] * kv[1]} if kv else set())
    allowed_heads = {heads} | ({kv[0]} if kv else set())
    if hidden is not None and token_dim not in allowed_dims:
        raise _mismatch("token_dim", token_dim, hidden, hidden_source)
    if heads is not None and num_heads not in allowed_heads:
        raise _mismatch("num_attention_heads", num_heads, heads, "its attention head count")
    if kv is not None:
        # Grouped-query attention: the prefix holds key/value heads (PEFT #1901), whatever was set.
        num_heads, token_dim = kv[0], kv[0] * kv[1]
    if token_dim % num_heads:
        _fail("token_dim", token_dim, f"token_dim must be divisible by num_attention_heads={num_heads}")
    submodules = 2 if is_seq2seq else 1
    if config.num_transformer_submodules not in (None, submodules):
        raise _mismatch("num_transformer_submodules", config.num_transformer_submodules, submodules,
                        "its encoder-decoder layout")
    positions, encoder_sizes = _paper_layout(config, model_config, data, is_seq2seq)
    return dataclasses.replace(
        config,
        task_type=given_task,
        num_layers=num_layers,
        token_dim=token_dim,
        num_attention_heads=num_heads,
        num_transformer_submodules=submodules,
        encoder_hidden_size=config.encoder_hidden_size or token_dim,
        prefix_positions=positions,
        **encoder_sizes,
    )


def _paper_layout(config: PrefixTuningConfig, model_config, data: dict, is_seq2seq: bool) -> tuple[Optional[str], dict]:
    """(prefix_positions, the encoder's sizes) for `infer_sizes`.

    A decoder-only model has one position, its self-attention, where PEFT's layout already is the
    paper's: prefix_positions='paper' is then dropped with a warning. For an encoder-decoder model in
    the paper's layout the encoder's sizes are filled (T5: num_layers, num_heads * d_kv; BART:
    encoder_layers, encoder_attention_heads, d_model); given ones are checked in either layout.
    """
    given = {name: getattr(config, name) for name in ENCODER_SIZE_FIELDS}
    if not is_seq2seq:
        for name, value in given.items():
            if value is not None:
                _fail(name, value, f"the model ({type(model_config).__name__}) is decoder-only and has no encoder; "
                      f"leave {name} None")
        if config.is_paper_layout:
            warnings.warn(f"prefix_positions='paper' is for encoder-decoder models; {type(model_config).__name__} is "
                          "decoder-only, where the paper's prefix (every layer's self-attention) is PEFT's layout, "
                          "so it is used", stacklevel=3)
        return None, given
    layers = getattr(model_config, "num_hidden_layers", None) or _first_key(data, _LAYER_KEYS)  # the encoder's
    heads = _first_key(data, _ENCODER_HEAD_KEYS)
    dim, dim_source = _model_token_dim(data, heads)
    source = type(model_config).__name__
    model_values = {  # field: (the model's value, the keys that give it, what gives it)
        "num_encoder_layers": (layers, _LAYER_KEYS, f"{source}, the encoder's layer count,"),
        "num_encoder_attention_heads": (heads, _ENCODER_HEAD_KEYS, f"{source}, the encoder's heads,"),
        "encoder_token_dim": (dim, _HIDDEN_KEYS, f"{source}'s encoder ({dim_source})"),
    }
    if not config.is_paper_layout:  # PEFT's layout has no encoder prefix: given sizes are checked, none filled
        for name, value in given.items():
            if value is not None:
                _fill_or_check(name, value, model_values[name][0], model_values[name][1], model_config,
                               model_values[name][2])
        return None, given
    filled = {name: _fill_or_check(name, given[name], value, keys, model_config, what)
              for name, (value, keys, what) in model_values.items()}
    model_type = data.get("model_type")
    if model_type not in PAPER_MODEL_TYPES:
        _fail("prefix_positions", "paper", f"the paper's encoder-decoder layout is built for T5, mT5, flan-T5 and "
              f"BART (model_type {', '.join(PAPER_MODEL_TYPES)}), not model_type={model_type!r}; use "
              "prefix_positions=None (PEFT's layout)")
    return "paper", filled


def _num_layers(value: Optional[int], model_config, data: dict, is_seq2seq: bool) -> int:
    model_value, source = _model_num_layers(model_config, data, is_seq2seq)
    peft_value, _ = _model_num_layers(model_config, data)  # the encoder's count for seq2seq
    if value is not None and model_value is not None and peft_value is not None and model_value < value == peft_value:
        return value  # PEFT's value: a cache with more layers than the decoder reads, laid out as PEFT does
    keys = (_DECODER_LAYER_KEYS if is_seq2seq else ()) + _LAYER_KEYS
    return _fill_or_check("num_layers", value, model_value, keys, model_config, source)


def _fill_or_check(name: str, value: Optional[int], model_value: Optional[int], keys, model_config,
                   source: Optional[str] = None) -> int:
    if value is None:
        if model_value is None:
            raise _missing(name, keys, model_config)
        return model_value
    if model_value is not None and value != model_value:
        raise _mismatch(name, value, model_value, source or type(model_config).__name__)
    return value


def kv_layout(config: PrefixTuningConfig, model_config=None) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim) of the prefix cache; fills the config first if needed."""
    if not config.is_filled:
        if model_config is None:
            raise ValueError("kv_layout needs model_config when the config's sizes are not filled in")
        config = infer_sizes(config, model_config)
    return config.num_layers, config.num_attention_heads, config.token_dim // config.num_attention_heads


# ---------------------------------------------------------------------------------------------
# Parameter accounting (plain arithmetic on a filled config; the PrefixEncoder builds these tensors)


def prefix_width(config: PrefixTuningConfig) -> int:
    """Width of one virtual token's prefix: a key and a value vector for every layer."""
    return config.num_layers * 2 * config.token_dim


def require_filled(config: PrefixTuningConfig) -> None:
    for name in ("num_virtual_tokens", "num_layers", "token_dim"):
        if getattr(config, name) is None:
            raise ValueError(
                f"{name}=None: the PrefixEncoder needs it; set it in PrefixTuningConfig or build the encoder through "
                "get_peft_model, which infers it from the model"
            )


def uses_projection(config: PrefixTuningConfig) -> bool:
    """PEFT keeps the MLP only while training: an adapter loaded for inference stores the projected
    prefix in a flat embedding (the MLP cannot be recovered from it)."""
    return config.prefix_projection and not config.inference_mode


def paper_position_configs(config: PrefixTuningConfig) -> dict[str, PrefixTuningConfig]:
    """prefix_positions='paper': each position's own prefix as a one-position config (PAPER_POSITIONS
    order), whose num_layers / token_dim / num_attention_heads are that attention's: the encoder's for
    its self-attention, the decoder's for its self- and cross-attention (cross-attention keys are the
    decoder's heads over the encoder output). Layer i reads rows (2i, 2i+1) of each, without PEFT's
    seq2seq row sharing (num_transformer_submodules=1 in these configs)."""
    if not config.is_paper_layout:
        raise ValueError("paper_position_configs needs prefix_positions='paper'")
    require_filled(config)
    for name in ENCODER_SIZE_FIELDS:
        if getattr(config, name) is None:
            raise ValueError(f"{name}=None: the encoder's prefix needs it; build the adapter through get_peft_model, "
                             "which infers it from the model")
    one = dict(num_transformer_submodules=1, prefix_positions=None)
    encoder = dataclasses.replace(config, num_layers=config.num_encoder_layers, token_dim=config.encoder_token_dim,
                                  num_attention_heads=config.num_encoder_attention_heads, **one)
    decoder = dataclasses.replace(config, **one)
    return {"encoder_self_attention": encoder, "decoder_self_attention": decoder, "decoder_cross_attention": decoder}


def prefix_parameter_counts(config: PrefixTuningConfig) -> dict:
    """Parameter accounting of one adapter without building it (config must have its sizes filled).

    trainable: what the optimiser updates; stored: what adapter_model.safetensors holds. In the paper's
    layout, the sum over its three positions, each with its own prefix (and MLP, of hidden size
    encoder_hidden_size), as the paper's code builds them.
    """
    require_filled(config)
    if config.is_paper_layout:
        parts = {position: prefix_parameter_counts(c) for position, c in paper_position_configs(config).items()}
        return {"trainable": sum(p["trainable"] for p in parts.values()),
                "stored": sum(p["stored"] for p in parts.values()),
                "formula": " + ".join(f"{position}: {p['formula']}" for position, p in parts.items())}
    n, d, out = config.num_virtual_tokens, config.token_dim, prefix_width(config)
    stored = n * out
    if uses_projection(config):
        h = config.encoder_hidden_size or d
        trainable = n * d + d * h + h + h * out + out
        formula = (f"n*d + d*h + h + h*out + out = {n}*{d} + {d}*{h} + {h} + {h}*{out} + {out}"
                   f" (out = num_layers*2*token_dim = {config.num_layers}*2*{d})")
    else:
        trainable = stored
        formula = f"n*out = {n}*{out} (out = num_layers*2*token_dim = {config.num_layers}*2*{d})"
    return {"trainable": trainable, "stored": stored, "formula": formula}
