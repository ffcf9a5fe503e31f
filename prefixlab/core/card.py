"""The model card (README.md) that save_pretrained writes next to the adapters, as PEFT does.

Its metadata is what the Hugging Face Hub reads: `library_name: peft` and `base_model` link the
adapter to its base model's page, `pipeline_tag` picks the inference widget. Its text says what
each adapter is and how to load it. A README.md already in the folder keeps its text; only the
metadata is brought up to date (PEFT's behaviour too).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PreTrainedModel

from .config import TaskType, prefix_parameter_counts

TAGS = ("prefix-tuning", "prefixlab")
PLACEHOLDER = "PATH_OR_REPO_ID"  # where the card's loading code names the folder or Hub repository
HUB, FOLDER, PRESET = "hub", "folder", "preset"


@dataclass(frozen=True)
class BaseModel:
    """How a card names the base model, in words that mean the same on any machine: `name` is a Hub
    id (kind "hub"), the name of the local folder it was loaded from (kind "folder": the path is
    this machine's), or a prefixlab offline preset (kind "preset", loaded by prefixlab's
    zoo.load_base); name "" when unknown (a model built from a config)."""

    name: str = ""
    kind: str = ""


def describe_base(model, adapter_name: str) -> BaseModel:
    """The base of `model`, from the id or folder it was loaded from (base_model_name)."""
    where = base_model_name(model, adapter_name)
    if not where:
        return BaseModel()
    if hub_model_id(where):
        return BaseModel(where, HUB)
    return BaseModel(os.path.basename(os.path.normpath(where)) or where, FOLDER)


def write_model_card(model, folder: str, adapters: dict[str, str], training: str = "",
                     base: BaseModel | None = None) -> str:
    """Create or update `folder`/README.md for `adapters` (adapter name -> its folder relative to
    `folder`, "." for `folder` itself) of PrefixTuningModel `model`; returns the file's path.
    `training`: Markdown appended to a new card (how the adapter was trained). `base`: how to name
    the base model (default: describe_base)."""
    path = os.path.join(folder, "README.md")
    base = base or describe_base(model, next(iter(adapters)))
    on_hub = base.kind == HUB
    if os.path.exists(path):
        try:
            card = ModelCard.load(path)
        except Exception as err:  # noqa: BLE001 - bad YAML, bad encoding: the user's file, keep it as it is
            why = " ".join(str(err).split())
            warnings.warn(f"{path} is not a model card huggingface_hub can read ({type(err).__name__}: {why}); "
                          "left as it is, without the adapter's metadata", stacklevel=3)
            return path
    else:
        text = card_text(model, adapters, base, on_hub) + (f"\n{training.strip()}\n" if training.strip() else "")
        card = ModelCard(f"---\n{ModelCardData().to_yaml()}\n---\n\n{text}")
    data = card.data
    paper = any(model.peft_config[name].is_paper_layout for name in adapters)
    data.library_name = None if paper else "peft"  # PEFT cannot load the paper's seq2seq layout
    tags = set(data.tags or []) | set(TAGS)
    if isinstance(model.get_base_model(), PreTrainedModel):
        tags.add("transformers")
    if on_hub:  # the Hub refuses a push whose base_model is not a model id (a local folder)
        data.base_model = base.name
        tags.add(f"base_model:adapter:{base.name}")
    data.tags = sorted(tags)
    if not data.pipeline_tag and model.peft_config[next(iter(adapters))].task_type == TaskType.CAUSAL_LM:
        data.pipeline_tag = "text-generation"
    card.save(path)
    return path


def name_location(folder: str, location: str) -> None:
    """Put `location` (the Hub repository it is uploaded to) in the loading code of `folder`'s card."""
    path = os.path.join(folder, "README.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(json.dumps(PLACEHOLDER), json.dumps(location)))


def hub_model_id(name: str) -> bool:
    """Whether `name` reads as a Hugging Face Hub model id rather than a local folder."""
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def base_model_name(model, adapter_name: str) -> str:
    """The Hub id or folder the base model was loaded from ('' for one built from a config)."""
    return model.peft_config[adapter_name].base_model_name_or_path or model.get_base_model().__dict__.get(
        "name_or_path") or ""


def _base_lines(base: BaseModel, auto: str, tokenizer: bool) -> tuple[list[str], list[str]]:
    """(imports, statements) that load the base model (and its tokenizer) as `base` (`tokenizer`)."""
    q = json.dumps  # a JSON string is a Python string literal
    if base.kind == PRESET:
        return (["from prefixlab.engine.zoo import load_base"],
                [f"base, tokenizer, _ = load_base({q(base.name)})  # prefixlab's offline preset"])
    name = base.name or "BASE_MODEL"
    note = "  # a local folder where it was trained: give its path" if base.kind == FOLDER else ""
    imports = [f"from transformers import {auto}" + (", AutoTokenizer" if tokenizer else "")]
    lines = [f"base = {auto}.from_pretrained({q(name)}){note}"]
    if tokenizer:
        lines.append(f"tokenizer = AutoTokenizer.from_pretrained({q(name)})")
    return imports, lines


def _adapter_lines(adapters: dict[str, str], cls: str) -> list[str]:
    """`model = <cls>.from_pretrained(base, PLACEHOLDER, ...)` and a load_adapter line per further adapter."""
    first, q = next(iter(adapters)), json.dumps
    code = [f"model = {cls}.from_pretrained(base, {q(PLACEHOLDER)}"
            + ("" if adapters[first] == "." else f", subfolder={q(adapters[first])}")
            + ("" if first == "default" else f", adapter_name={q(first)}") + ")"]
    for name, where in list(adapters.items())[1:]:
        code.append(f"model.load_adapter({q(PLACEHOLDER)}, {q(name)}"
                    + ("" if where == "." else f", subfolder={q(where)}") + f")  # then model.set_adapter({q(name)})")
    return code


def card_text(model, adapters: dict[str, str], base: BaseModel, on_hub: bool) -> str:
    """The card's Markdown: a table of the adapters, the code that loads them in PEFT, and the code
    that generates with them (prefixlab's: PEFT's generate drops the prefix on current transformers)."""
    first = next(iter(adapters))
    seq2seq = model.peft_config[first].task_type == TaskType.SEQ_2_SEQ_LM
    auto = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
    rows, notes = [], []
    for name, where in adapters.items():
        cfg = model.peft_config[name]
        stored = prefix_parameter_counts(cfg)["stored"]
        how = (f"the projection MLP (hidden size {cfg.encoder_hidden_size}); the prefix it produces is stored"
               if cfg.prefix_projection else "the prefix trained directly")
        rows.append(f"| `{name}` | `{where}` | {cfg.num_virtual_tokens} | {cfg.num_layers} | {stored:,} | {how} |")
        if cfg.prefix_tuning_init == "TEXT":
            notes.append(f"`{name}`'s prefix started from the activations of {json.dumps(cfg.prefix_tuning_init_text)} "
                         "(Li & Liang 2021, section 7.3).")
    paper = [name for name in adapters if model.peft_config[name].is_paper_layout]
    kind = {HUB: "", FOLDER: " (a local folder)", PRESET: " (a prefixlab offline preset)"}.get(base.kind, "")
    named = f"`{base.name}`{kind}" if base.name else "a base model"
    imports, load = _base_lines(base, auto, tokenizer=False)
    peft_code = [*imports, "from peft import PeftModel", "", *load, *_adapter_lines(adapters, "PeftModel")]
    imports, load = _base_lines(base, auto, tokenizer=True)
    ours_code = [*imports, "from prefixlab import PrefixTuningModel", "", *load,
                 *_adapter_lines(adapters, "PrefixTuningModel"), "",
                 'inputs = tokenizer(["PROMPT"], return_tensors="pt")',
                 "output = model.generate(**inputs, max_new_tokens=40)",
                 "print(tokenizer.decode(output[0], skip_special_tokens=True))"]
    where = {FOLDER: " and the base model's folder in place of its name",
             "": " and the base model it was trained on in place of `BASE_MODEL`"}.get(base.kind, "")
    preset = (" The preset's weights ship with prefixlab: run this in a prefixlab checkout (or after "
              "`pip install -e .` there).") if base.kind == PRESET else ""
    generate_section = [
        "## Generate", "",
        "PEFT's model scores text with the prefix (its forward, as above), but PEFT 0.21's `generate` loses the "
        "prefix with transformers 5.24 and later (it hands the model the prefix as the deprecated "
        "`past_key_values` beside the new `cache`, and the model keeps `cache`): it generates what the base "
        "model alone would. prefixlab's `PrefixTuningModel` (from the prefixlab checkout; `pip install -e .` "
        "there) loads the adapter with the same call and generates with the prefix on every version of "
        "transformers:", "",
        "```python", *ours_code, "```", ""]
    if paper:  # PEFT's files cannot hold it: prefixlab's code only
        intro = (f"Adapters {', '.join(f'`{n}`' for n in paper)} hold prefixes for the encoder's self-attention, the "
                 "decoder's self-attention and the decoder's cross-attention (Li & Liang 2021, section 4.2), "
                 "stored as `paper_prompt_embeddings.<position>`. PEFT cannot load them (PEFT's prefix reaches the "
                 "decoder's self-attention only, and it fails on these files with KeyError 'prompt_embeddings'); "
                 f"load them with prefixlab, with this folder or Hub repository in place of `{PLACEHOLDER}`{where}:")
        loading = [intro + preset, "", "```python", *ours_code, "```", ""]
    else:
        loading = [f"Load it with PEFT, with this folder or Hub repository in place of `{PLACEHOLDER}`{where}"
                   + " (prefixlab's `PrefixTuningModel` takes the same calls):" + preset, "",
                   "```python", *peft_code, "```", ""]
    return "\n".join([
        f"# Prefix-tuning adapter for {named}", "",
        "Prefix tuning ([Li & Liang 2021](https://arxiv.org/abs/2101.00190)) of "
        + (f"the frozen {named}" if base.name else "a frozen base model")
        + ": the model reads a trained key/value prefix at every layer. Saved by prefixlab"
        + (" (the paper's encoder-decoder layout)." if paper else " in PEFT's format."), "",
        "| adapter | folder | virtual tokens | layers | stored parameters | trained with |",
        "|---|---|---|---|---|---|", *rows, "", *([" ".join(notes), ""] if notes else []),
        *loading,
        *([] if paper else generate_section)])
