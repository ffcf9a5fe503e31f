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

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PreTrainedModel

from .config import TaskType

TAGS = ("prefix-tuning", "prefixlab")
PLACEHOLDER = "PATH_OR_REPO_ID"  # where the card's loading code names the folder or Hub repository


def write_model_card(model, folder: str, adapters: dict[str, str], training: str = "") -> str:
    """Create or update `folder`/README.md for `adapters` (adapter name -> its folder relative to
    `folder`, "." for `folder` itself) of PrefixTuningModel `model`; returns the file's path.
    `training`: Markdown appended to a new card (how the adapter was trained)."""
    path = os.path.join(folder, "README.md")
    base = base_model_name(model, next(iter(adapters)))
    on_hub = hub_model_id(base)
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
    data.library_name = "peft"
    tags = set(data.tags or []) | set(TAGS)
    if isinstance(model.get_base_model(), PreTrainedModel):
        tags.add("transformers")
    if on_hub:  # the Hub refuses a push whose base_model is not a model id (a local folder)
        data.base_model = base
        tags.add(f"base_model:adapter:{base}")
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


def card_text(model, adapters: dict[str, str], base: str, on_hub: bool) -> str:
    """The card's Markdown: a table of the adapters and the code that loads them in PEFT."""
    first, q = next(iter(adapters)), json.dumps  # a JSON string is a Python string literal
    seq2seq = model.peft_config[first].task_type == TaskType.SEQ_2_SEQ_LM
    auto = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
    rows = []
    for name, where in adapters.items():
        cfg = model.peft_config[name]
        stored = cfg.num_virtual_tokens * cfg.num_layers * 2 * cfg.token_dim
        how = (f"the projection MLP (hidden size {cfg.encoder_hidden_size}); the prefix it produces is stored"
               if cfg.prefix_projection else "the prefix trained directly")
        rows.append(f"| `{name}` | `{where}` | {cfg.num_virtual_tokens} | {cfg.num_layers} | {stored:,} | {how} |")
    named = (f"`{base}`" + ("" if on_hub else " (a local folder)")) if base else "a base model"
    code = [f"from transformers import {auto}", "from peft import PeftModel", "",
            f"base = {auto}.from_pretrained({q(base or 'BASE_MODEL')})",
            f"model = PeftModel.from_pretrained(base, {q(PLACEHOLDER)}"
            + ("" if adapters[first] == "." else f", subfolder={q(adapters[first])}")
            + ("" if first == "default" else f", adapter_name={q(first)}") + ")"]
    for name, where in list(adapters.items())[1:]:
        code.append(f"model.load_adapter({q(PLACEHOLDER)}, {q(name)}"
                    + ("" if where == "." else f", subfolder={q(where)}") + f")  # then model.set_adapter({q(name)})")
    return "\n".join([
        f"# Prefix-tuning adapter for {named}", "",
        "Prefix tuning ([Li & Liang 2021](https://arxiv.org/abs/2101.00190)) of "
        + (f"the frozen {named}" if base else "a frozen base model")
        + ": the model reads a trained key/value prefix at every layer. Saved by prefixlab in PEFT's format.", "",
        "| adapter | folder | virtual tokens | layers | stored parameters | trained with |",
        "|---|---|---|---|---|---|", *rows, "",
        f"Load it with PEFT, with this folder or Hub repository in place of `{PLACEHOLDER}`"
        + ("" if base else " and the base model it was trained on in place of `BASE_MODEL`")
        + " (prefixlab's `PrefixTuningModel` takes the same calls):", "",
        "```python", *code, "```", ""])
