"""Base models: presets of small Hub models, any Hub id or local folder, and tiny offline models.

`load_base(name)` gives `(model, tokenizer, task_type)`. The offline presets `tiny-gpt2`,
`tiny-llama` and `tiny-t5` are built by prefixlab.engine.tiny from config classes with seeded random
weights and ByT5's file-free tokenizer, so they need no download and are identical in every
process. The offline preset `tiny-gpt2-e2e` is a slightly larger tiny GPT-2 whose weights ship in
presets/models/ (made by prefixlab.tools.pretrain from e2e-synth's train targets), so prefix tuning it
gives readable sentences; `tiny-llama-d2t` (made by prefixlab.tools.pretrain_d2t from invented
data-to-text domains) ships its own BPE tokenizer beside its weights and copies table values into
its sentences. Anything else is a local folder or a Hub id; AutoModelForCausalLM or
AutoModelForSeq2SeqLM is chosen from its config, and trust_remote_code stays off.

A model that cannot be fetched fails fast with one `ModelLoadError`: before touching the Hub we
check in a few seconds that it answers at all (huggingface_hub otherwise retries a dead connection
for half a minute per file, minutes when packets are dropped); when it does not, only the local
cache is tried.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefixlab.core.config import TaskType
from prefixlab.core.hub import cache_only, hub_offline, local_folder
from prefixlab.engine.data import PRESETS_DIR
from prefixlab.engine.tiny import TINY_PARAMETERS, tiny_config, tiny_config_values, tiny_model, tiny_tokenizer

# torch and transformers are imported where a model or a transformers config is built: the page's
# parameter table and `python -m prefixlab inspect` of an offline preset need neither (ModelFacts).



class ModelLoadError(ValueError):
    """A base model that cannot be loaded; the message says why and what to use instead."""


@dataclass(frozen=True)
class ModelPreset:
    name: str
    task_type: TaskType
    description: str
    offline: bool = False


_CAUSAL, _SEQ2SEQ = TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM
_TINY_ARCH = {"tiny-gpt2": "gpt2", "tiny-llama": "llama", "tiny-t5": "t5"}
MODELS_DIR = PRESETS_DIR / "models"
# Offline presets with shipped weights: name -> folder written by save_pretrained, and the command that
# regenerates it. Those in OWN_TOKENIZER carry their own tokenizer files; the others use tiny_tokenizer().
SHIPPED_MODELS = {"tiny-gpt2-e2e": MODELS_DIR / "tiny-gpt2-e2e", "tiny-llama-d2t": MODELS_DIR / "tiny-llama-d2t"}
OWN_TOKENIZER = frozenset({"tiny-llama-d2t"})
_REGENERATE = {"tiny-gpt2-e2e": "python -m prefixlab.tools.pretrain --out presets/models/tiny-gpt2-e2e",
               "tiny-llama-d2t": "python -m prefixlab.tools.pretrain_d2t --out presets/models/tiny-llama-d2t"}
MODEL_PRESETS: dict[str, ModelPreset] = {p.name: p for p in (
    ModelPreset("tiny-gpt2", _CAUSAL, "Tiny GPT-2 (2 layers, width 64), random weights, byte tokenizer; "
                                      "no download", True),
    ModelPreset("tiny-llama", _CAUSAL, "Tiny Llama with grouped-query attention (8 query / 2 key-value heads), random "
                                       "weights; no download", True),
    ModelPreset("tiny-t5", _SEQ2SEQ, "Tiny T5 encoder-decoder, random weights, byte tokenizer; no download", True),
    ModelPreset("tiny-gpt2-e2e", _CAUSAL, "Tiny GPT-2 (4 layers, width 128, 0.9M parameters) pretrained on the "
                                          "e2e-synth train split's target sentences only (never its tables): it "
                                          "writes restaurant sentences, the prefix must teach it to follow the "
                                          "table; byte tokenizer; no download", True),
    ModelPreset("tiny-llama-d2t", _CAUSAL, "Tiny Llama (4 layers, width 192, 2.2M parameters) pretrained on "
                                           "data-to-text in ten invented domains (never restaurants): it copies a "
                                           "table's values into a sentence, the prefix must teach it the restaurant "
                                           "schema; its own BPE tokenizer; no download", True),
    ModelPreset("distilgpt2", _CAUSAL, "DistilGPT-2, 82M parameters: 6-layer distilled GPT-2, the quickest real model"),
    ModelPreset("gpt2", _CAUSAL, "GPT-2 small, 124M parameters"),
    ModelPreset("gpt2-medium", _CAUSAL, "GPT-2 medium, 355M parameters: Li & Liang's table-to-text model"),
    ModelPreset("facebook/opt-125m", _CAUSAL, "OPT-125M (Meta), 125M parameters"),
    ModelPreset("EleutherAI/pythia-160m", _CAUSAL, "Pythia-160M (GPT-NeoX architecture), 162M parameters"),
    ModelPreset("HuggingFaceTB/SmolLM2-135M", _CAUSAL, "SmolLM2-135M: Llama architecture with grouped-query attention"),
    ModelPreset("Qwen/Qwen2.5-0.5B", _CAUSAL, "Qwen2.5-0.5B, 494M parameters: grouped-query attention, "
                                              "151k vocabulary"),
    ModelPreset("t5-small", _SEQ2SEQ, "T5-small encoder-decoder, 60M parameters"),
    ModelPreset("google/flan-t5-small", _SEQ2SEQ, "Flan-T5-small, 77M parameters: instruction-tuned T5"),
    ModelPreset("facebook/bart-base", _SEQ2SEQ, "BART-base encoder-decoder, 140M parameters (Li & Liang summarise "
                                                "with BART-large)"),
)}
OFFLINE_PRESETS = tuple(name for name, preset in MODEL_PRESETS.items() if preset.offline)


def describe_presets() -> list[tuple[str, str]]:
    """`(label, name)` pairs for a dropdown, offline presets first: label = "name: description"."""
    return [(f"{p.name}: {p.description}", p.name) for p in MODEL_PRESETS.values()]


def _error_message(name: str, err: Exception, why_cache_only: str | None) -> str:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = ", ".join(OFFLINE_PRESETS)
    folder = local_folder(name)
    if folder is not None:
        if not folder.is_dir():
            return f"cannot load model {name!r}: no such folder {folder}; check the path, or use a Hub id or an " \
                   f"offline preset ({offline})"
        return (f"cannot load model from folder {folder}: {detail}. A model folder needs config.json, the weights "
                f"and the tokenizer files, as written by save_pretrained(); offline presets: {offline}")
    # The Hub answered the reachability probe unless why_cache_only says otherwise: then the network is fine.
    cause = f"{why_cache_only} and {name!r} is not in the local cache; " if why_cache_only else ""
    return (f"cannot load model {name!r} from the Hugging Face Hub ({type(err).__name__}: {detail}). Likely "
            f"causes: {cause}the name is misspelt (Hub ids look like 'gpt2' or 'facebook/opt-125m', and a local "
            f"folder must exist); or the repository is gated or private (accept its terms on huggingface.co and "
            f"log in with `hf auth login`). Without network, use an offline preset: {offline}.")


def _fetch(name: str, load):
    """Run `load(local_files_only)` and turn any failure into one ModelLoadError."""
    local_only, why = cache_only(name)
    try:
        return load(local_only)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - OSError, HTTP errors, ValueError: all mean "cannot load"
        raise ModelLoadError(_error_message(name, err, why)) from err


# ---------------------------------------------------------------------------------------------
# Configs, task types, parameter counts


def shipped_folder(name: str) -> Path:
    """The folder of an offline preset with shipped weights; ModelLoadError if it is missing."""
    folder = SHIPPED_MODELS[name]
    files = ("config.json", "model.safetensors") + (("tokenizer.json", "tokenizer_config.json")
                                                    if name in OWN_TOKENIZER else ())
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ModelLoadError(f"offline preset {name!r}: {', '.join(missing)} {verb} missing from {folder}; "
                             f"restore them from git or regenerate them with `{_REGENERATE[name]}`")
    return folder


def load_model_config(name: str):
    """The model's transformers config (no weights): tiny presets built in code, others via AutoConfig."""
    from transformers import AutoConfig

    if name in _TINY_ARCH:
        return tiny_config(_TINY_ARCH[name])
    if name in SHIPPED_MODELS:
        return AutoConfig.from_pretrained(shipped_folder(name), local_files_only=True)
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"model name must be a preset, Hub id or folder, got {name!r}; "
                             f"presets: {', '.join(MODEL_PRESETS)}")
    return _fetch(name, lambda local_only: AutoConfig.from_pretrained(
        name, trust_remote_code=False, local_files_only=local_only))


# Models that look positions up in a table of fixed size (learned, or fixed sinusoids): a longer
# sequence has no row to look up and fails deep inside the model (IndexError). The prefix occupies
# the first positions (causal LMs; a seq2seq decoder's too). Rotary and relative positions (Llama,
# Qwen, GPT-NeoX, T5) have no such wall.
POSITION_TABLE_KEYS = {
    "gpt2": "n_positions", "gpt_neo": "max_position_embeddings", "opt": "max_position_embeddings",
    "biogpt": "max_position_embeddings", "bart": "max_position_embeddings", "mbart": "max_position_embeddings",
    "marian": "max_position_embeddings", "pegasus": "max_position_embeddings",
    "blenderbot": "max_position_embeddings", "blenderbot-small": "max_position_embeddings",
}


def _value(config, key: str):
    """A config value, from a transformers config or from a dict of its values (ModelFacts)."""
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def position_limit(config) -> int | None:
    """How many positions the model can address (prefix included), or None where it has no table."""
    key = POSITION_TABLE_KEYS.get(_value(config, "model_type"))
    return _value(config, key) if key else None


def task_type_of_config(config) -> TaskType:
    """SEQ_2_SEQ_LM for encoder-decoders, CAUSAL_LM for decoder-only models transformers knows."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = _value(config, "model_type")
    if _value(config, "is_encoder_decoder") or model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return TaskType.SEQ_2_SEQ_LM
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return TaskType.CAUSAL_LM
    raise ModelLoadError(f"model type {model_type!r} is neither a causal LM nor a sequence-to-sequence LM "
                         "in transformers; prefix tuning here needs one of those (e.g. gpt2, llama, t5, bart)")


def task_type_for(name: str) -> TaskType:
    """The task type of a preset, Hub id or folder (reads only the config)."""
    if name in MODEL_PRESETS:
        return MODEL_PRESETS[name].task_type
    return task_type_of_config(load_model_config(name))


def _model_class(task_type: TaskType):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if task_type == TaskType.SEQ_2_SEQ_LM else AutoModelForCausalLM


@functools.lru_cache(maxsize=64)
def count_base_parameters(name: str) -> int:
    """Parameters of the base model, counted on the meta device: no weights are read or allocated.
    The offline presets' counts are known without building anything (ModelFacts).

    Cached per name for the page, which asks again on every form change.

    Tied weights (e.g. GPT-2's input and output embeddings) count once, as in `model.parameters()`.
    """
    if name in _TINY_ARCH:
        return TINY_PARAMETERS[_TINY_ARCH[name]]
    if name in SHIPPED_MODELS:
        return safetensors_parameters(shipped_folder(name) / "model.safetensors")
    import torch

    config = load_model_config(name)
    with torch.device("meta"):
        model = _model_class(task_type_of_config(config)).from_config(config)
    return sum(p.numel() for p in model.parameters())


def safetensors_parameters(path: Path) -> int:
    """The number of values in a .safetensors file, from its JSON header alone (transformers saves a
    tied weight once, so this is the model's parameter count)."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    total = 0
    for key, entry in header.items():
        if key != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
    return total


@dataclass(frozen=True)
class ModelFacts:
    """What the checks need of a base model, without its weights: its config (a transformers config,
    or for the offline presets a dict of the same values, read without importing transformers), its
    task type, the positions it can address, and its parameter count."""

    name: str
    config: Any
    task_type: TaskType
    position_limit: int | None

    @property
    def parameters(self) -> int:
        return count_base_parameters(self.name)


@functools.lru_cache(maxsize=32)
def model_facts(name: str) -> ModelFacts:
    """ModelFacts of a preset, Hub id or folder (cached per name: the page checks on every edit).
    Raises ModelLoadError when the config cannot be read."""
    if name in _TINY_ARCH:
        config = tiny_config_values(_TINY_ARCH[name])
    elif name in SHIPPED_MODELS:
        config = json.loads((shipped_folder(name) / "config.json").read_text(encoding="utf-8"))
    else:
        config = load_model_config(name)
    task_type = MODEL_PRESETS[name].task_type if name in MODEL_PRESETS else task_type_of_config(config)
    return ModelFacts(name, config, task_type, position_limit(config))


# ---------------------------------------------------------------------------------------------
# Loading


def _ensure_pad_token(tokenizer, model, task_type: TaskType) -> None:
    """Decoder-only tokenizers often lack a pad token (GPT-2, OPT's is fine); padding then uses eos.

    Padded positions are masked (attention_mask 0, labels -100), so which id fills them is moot.
    """
    if tokenizer.pad_token is None and task_type == TaskType.CAUSAL_LM and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def own_tokenizer(name: str) -> bool:
    """Whether offline preset `name` ships its own tokenizer files rather than using tiny_tokenizer()."""
    return name in OWN_TOKENIZER


def preset_tokenizer(name: str):
    """The tokenizer of offline preset `name`: its folder's own, or ByT5's file-free one."""
    if not own_tokenizer(name):
        return tiny_tokenizer()
    from transformers import PreTrainedTokenizerFast

    folder = shipped_folder(name)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token=config["eos_token"],
                                   pad_token=config["pad_token"], model_max_length=config["model_max_length"])


def load_base(name: str, *, dtype=None):
    """`(model, tokenizer, task_type)` for an offline preset, Hub id or local folder.

    The model is in eval mode with weights in `dtype` (default float32: the base stays frozen and
    mixed precision is the trainer's autocast). Raises ModelLoadError with one clear message.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    if name in _TINY_ARCH:
        model = tiny_model(_TINY_ARCH[name]).to(dtype)
        return model, tiny_tokenizer(), MODEL_PRESETS[name].task_type
    if name in SHIPPED_MODELS:
        model = AutoModelForCausalLM.from_pretrained(shipped_folder(name), dtype=dtype, local_files_only=True)
        return model.eval(), preset_tokenizer(name), MODEL_PRESETS[name].task_type
    config = load_model_config(name)
    task_type = task_type_of_config(config)
    model = _fetch(name, lambda local_only: _model_class(task_type).from_pretrained(
        name, config=config, dtype=dtype, trust_remote_code=False, local_files_only=local_only))
    tokenizer = _fetch(name, lambda local_only: AutoTokenizer.from_pretrained(
        name, trust_remote_code=False, local_files_only=local_only))
    _ensure_pad_token(tokenizer, model, task_type)
    return model.eval(), tokenizer, task_type
