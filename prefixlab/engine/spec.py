"""ExperimentSpec: one JSON document that says everything a training run needs.

model + variants (a name and a PrefixTuningConfig each) + data + training + generation. The same
objects drive the worker, the CLI, the presets and the page; `spec_from_form` is the one place form
values (flat dict, dotted keys) become a spec, and `ExperimentSpec.to_form` is its inverse.

Every validation error is a `SpecError` whose `.field` is the dotted key ("training.max_steps"),
so the page can put the message beside that field.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefixlab.core.config import INFERRED_FIELDS, PrefixTuningConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("greedy", "sampling", "beam")
# `experiment.variants` form choices: the paired comparison, or one side of it alone.
VARIANT_CHOICES = ("both", "no_projection", "projection")
DEFAULT_VARIANT_NAMES = ("no_projection", "projection")
# The default spec's shared prefix: the paper's table-to-text prefix length (Li & Liang 2021, sec. 5).
DEFAULT_PREFIX = {"num_virtual_tokens": 10}
# PrefixTuningConfig fields the form never shows: set by the library, derived from the model
# (INFERRED_FIELDS, task_type) or chosen per variant (prefix_projection).
_HIDDEN_PREFIX_FIELDS = frozenset(
    {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
     "modules_to_save", "auto_mapping", "peft_version", "prefix_projection", *INFERRED_FIELDS}
)


class SpecError(ValueError):
    """A bad experiment spec value. `.field` is the dotted key, `.message` the text for the form."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# ---------------------------------------------------------------------------------------------
# The sections. Each validates itself in __post_init__ and names fields with its section prefix.
# ---------------------------------------------------------------------------------------------


def _positive(section: str, obj: Any, name: str, minimum: float = 1, hint: str = "") -> None:
    value = getattr(obj, name)
    if value is not None and value < minimum:
        raise SpecError(f"{section}.{name}", f"must be >= {minimum}, got {value!r}{hint}")


@dataclass
class ModelSpec:
    name: str = field(
        default="tiny-gpt2",
        metadata={"help": "Base model: an offline preset (tiny-gpt2, tiny-llama, tiny-t5, tiny-gpt2-e2e), a Hub "
                          "model id such as gpt2 or t5-small, or a local folder."},
    )

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise SpecError("model.name", f"must name a model, got {self.name!r}; try tiny-gpt2")


@dataclass
class DataSpec:
    source: str = field(
        default="e2e-synth",
        metadata={"help": "Task data: the built-in task e2e-synth, a local .jsonl/.csv file, or a "
                          "Hub dataset id (e2e_nlg, GEM/web_nlg, EdinburghNLP/xsum, ...)."},
    )
    source_column: str = field(default="source", metadata={"help": "Column holding the input text."})
    target_column: str = field(default="target", metadata={"help": "Column holding the output text."})
    hub_config: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name, if the dataset has several."}
    )
    separator: str = field(
        default=" => ",
        metadata={"help": "Text between source and target for causal LMs (seq2seq models ignore it)."},
    )
    max_train_examples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples (empty: all)."}
    )
    max_eval_examples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation examples (empty: all)."}
    )

    def __post_init__(self):
        for name in ("source", "source_column", "target_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise SpecError(f"data.{name}", f"must not be empty, got {getattr(self, name)!r}")
        _positive("data", self, "max_train_examples", hint="; leave empty to use every example")
        _positive("data", self, "max_eval_examples", hint="; leave empty to use every example")


@dataclass
class TrainingSpec:
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    num_epochs: float = field(default=5.0, metadata={"help": "Passes over the training data."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=5, metadata={"help": "Examples per forward pass."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Forward passes per optimizer step (effective batch = batch x this)."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps, then linear decay to 0."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_length: int = field(
        default=256, metadata={"help": "Truncate each tokenised example to this many tokens."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for prefix initialisation and batch order."})
    eval_interval: int = field(
        default=100, metadata={"help": "Validation loss and adapter checkpoint every N optimizer steps."}
    )
    log_interval: int = field(default=10, metadata={"help": "Train loss, lr and tokens/s every N steps."})
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU), "
                          "fp32, bf16 or fp16.", "choices": PRECISIONS},
    )

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise SpecError("training.learning_rate",
                            f"must be > 0, got {self.learning_rate!r}; the paper uses 5e-5 to 8e-5")
        if not self.num_epochs > 0:
            raise SpecError("training.num_epochs", f"must be > 0, got {self.num_epochs!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_length",
                     "eval_interval", "log_interval"):
            _positive("training", self, name)
        _positive("training", self, "warmup_steps", minimum=0)
        if self.weight_decay < 0:
            raise SpecError("training.weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.seed < 2**32:  # numpy's and accelerate's set_seed take no other
            raise SpecError("training.seed", f"must be between 0 and {2**32 - 1}, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise SpecError("training.precision",
                            f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_steps is not None and self.eval_interval > self.max_steps:
            raise SpecError("training.eval_interval",
                            f"{self.eval_interval} is more than training.max_steps={self.max_steps}, so "
                            "the run would never evaluate; set it to at most max_steps")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise SpecError("training.warmup_steps",
                            f"{self.warmup_steps} is more than training.max_steps={self.max_steps}; "
                            "use fewer warmup steps")


@dataclass
class GenerationSpec:
    max_new_tokens: int = field(default=60, metadata={"help": "Tokens to generate per prompt."})
    strategy: str = field(
        default="greedy",
        metadata={"help": "greedy, sampling (temperature/top_p) or beam (num_beams).",
                  "choices": STRATEGIES},
    )
    num_beams: int = field(default=5, metadata={"help": "Beams for beam search (>= 2)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass."})
    prompts: list[str] = field(
        default_factory=list,
        metadata={"help": "Sources to generate from, one per line (empty: the first test examples)."},
    )
    num_prompts: int = field(
        default=5, metadata={"help": "Test examples to use when no prompts are given."}
    )

    def __post_init__(self):
        _positive("generation", self, "max_new_tokens")
        _positive("generation", self, "num_prompts")
        if self.strategy not in STRATEGIES:
            raise SpecError("generation.strategy",
                            f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "beam" and self.num_beams < 2:
            raise SpecError("generation.num_beams",
                            f"beam search needs at least 2 beams, got {self.num_beams!r}; "
                            "raise it or choose strategy greedy")
        if self.strategy == "sampling" and not self.temperature > 0:
            raise SpecError("generation.temperature", f"must be > 0 for sampling, got {self.temperature!r}")
        if self.strategy == "sampling" and not 0 < self.top_p <= 1:
            raise SpecError("generation.top_p", f"must be in (0, 1] for sampling, got {self.top_p!r}")
        if not isinstance(self.prompts, list) or not all(isinstance(p, str) for p in self.prompts):
            raise SpecError("generation.prompts", f"must be a list of strings, got {self.prompts!r}")
        if any(not p.strip() for p in self.prompts):
            raise SpecError("generation.prompts", "contains an empty prompt; remove blank entries")


@dataclass
class VariantSpec:
    name: str = field(metadata={"help": "Variant name: a folder under adapters/ and a curve label."})
    prefix: PrefixTuningConfig = field(metadata={"help": "This variant's prefix-tuning configuration."})


SECTIONS: dict[str, type] = {
    "model": ModelSpec, "data": DataSpec, "training": TrainingSpec, "generation": GenerationSpec,
}


@dataclass
class ExperimentSpec:
    name: str = field(default="experiment", metadata={"help": "A short name for the run."})
    model: ModelSpec = field(default_factory=ModelSpec)
    variants: list[VariantSpec] = field(default_factory=list)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    description: str = field(default="", metadata={"help": "Free text; presets say how to run them."})

    def __post_init__(self):
        if not self.variants:
            self.variants = default_variants(PrefixTuningConfig(**DEFAULT_PREFIX))
        self.validate()

    def validate(self) -> None:
        """Checks across sections; each section already validated its own fields."""
        if not isinstance(self.name, str):
            raise SpecError("experiment.name", f"must be text, got {self.name!r}")
        if not self.name.strip():
            raise SpecError("experiment.name", f"must not be empty, got {self.name!r}")
        names = [v.name for v in self.variants]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not re.fullmatch(r"[\w-]+", name):  # a folder and a module name
                raise SpecError(f"variants[{i}].name",
                                f"{name!r} cannot name a variant; use letters, digits, _ and -")
            if name == "base":
                raise SpecError(f"variants[{i}].name", "'base' is the name of the untuned model; rename it")
            if _module_dict_attribute(name):
                raise SpecError(f"variants[{i}].name", f"{name!r} is the name of a torch.nn.ModuleDict attribute, "
                                                       "which cannot name an adapter; rename it")
        for i, v in enumerate(self.variants):
            where = "prefix" if _is_form_shaped(self.variants) else f"variants[{i}].prefix"
            if v.prefix.num_virtual_tokens is None:
                raise SpecError(f"{where}.num_virtual_tokens",
                                "is empty; set the prefix length, e.g. 10 (the paper's table-to-text value)")
            if v.prefix.inference_mode:
                raise SpecError(f"{where}.inference_mode",
                                "is true, which freezes the prefix and drops the projection MLP (PEFT's mode "
                                "for loading a saved adapter); a spec trains, so remove it or set it false")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SpecError("variants", f"names must be unique, {duplicates} repeat; rename one")

    # --- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        out = {"name": self.name, "description": self.description, "model": dataclasses.asdict(self.model)}
        out["variants"] = [{"name": v.name, "prefix": v.prefix.to_json_dict()} for v in self.variants]
        for section in ("data", "training", "generation"):
            out[section] = dataclasses.asdict(getattr(self, section))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentSpec:
        """Build from a JSON object. Keys starting with "_" are comments (presets use `_command`).

        Variants: either a full list of {"name", "prefix"}, or a top-level "prefix" shared by all
        variants (each variant's "prefix" then only overrides it); no "variants" means the default
        pair no_projection / projection.
        """
        if not isinstance(d, dict):
            raise SpecError("experiment", f"must be a JSON object, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        known = {"name", "description", "prefix", "variants", *SECTIONS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown key(s) {unknown}; allowed: {sorted(known)}")
        sections = {name: _section_from_dict(name, d.get(name, {})) for name in SECTIONS}
        shared = d.get("prefix", {})
        if not isinstance(shared, dict):
            raise SpecError("prefix", f"must be a JSON object, got {shared!r}")
        variants = _variants_from_dict(shared, d.get("variants"))
        return cls(name=d.get("name", "experiment"), description=d.get("description", ""),
                   variants=variants, **sections)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ExperimentSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError("experiment", f"not valid JSON ({err.msg} at line {err.lineno}, "
                                          f"column {err.colno}); fix the file") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentSpec:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SpecError("experiment", f"cannot read spec file {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise SpecError("experiment", f"cannot read spec file {path}: not UTF-8 text (byte "
                                          f"0x{err.object[err.start]:02x} at position {err.start}); save it as UTF-8") from None
        try:
            return cls.from_json(text)
        except SpecError as err:
            raise SpecError(err.field, f"{err.message} (in {path})") from None

    # --- form -----------------------------------------------------------------------------------

    def to_form(self) -> dict:
        """Flat dotted-key values, the inverse of `spec_from_form`.

        Raises SpecError when the variants are not the form's shape (the same config except for
        prefix_projection, named as the default pair or one of it): such specs are edited as JSON.
        """
        shared = self.variants[0].prefix.to_json_dict()
        values = {"experiment.name": self.name, "experiment.description": self.description,
                  "experiment.variants": _variant_choice(self.variants)}
        for f in prefix_form_fields():
            values[f["key"]] = shared.get(f["key"].split(".", 1)[1])
        for section in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                values[f"{section}.{key}"] = value
        return values

    # --- derived --------------------------------------------------------------------------------

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]


def _module_dict_attribute(name: str) -> bool:
    """Whether a prefix named `name` would clash with an attribute of the ModuleDict holding them."""
    import torch

    return hasattr(torch.nn.ModuleDict(), name)


def position_errors(spec: ExperimentSpec, limit: int | None) -> dict[str, str]:
    """{field: message} for lengths that would run past a model with `limit` positions
    (zoo.position_limit; None: no limit). The prefix takes the first positions, so a training example
    gets `limit - num_virtual_tokens`, and so do the new tokens after a one-token prompt (the last new
    token is never fed back; the real prompts are checked where they are known:
    train.check_generation_room)."""
    if limit is None:
        return {}
    longest = max(range(len(spec.variants)), key=lambda i: spec.variants[i].prefix.num_virtual_tokens)
    prefix = spec.variants[longest].prefix.num_virtual_tokens
    model = spec.model.name
    errors = {}
    if prefix + 1 > limit:
        where = "prefix" if _is_form_shaped(spec.variants) else f"variants[{longest}].prefix"
        errors[f"{where}.num_virtual_tokens"] = (
            f"{prefix} virtual tokens leave no room in {model}'s {limit} positions; use at most {limit - 1}")
        return errors
    if spec.training.max_length + prefix > limit:
        errors["training.max_length"] = (
            f"{spec.training.max_length} tokens after the {prefix}-token prefix run past {model}'s {limit} "
            f"positions; set it to at most {limit - prefix}")
    room = generation_room(limit, prefix, prompt_len=1, causal=True)  # the least any prompt leaves
    if spec.generation.max_new_tokens > room:
        errors["generation.max_new_tokens"] = (
            f"{spec.generation.max_new_tokens} new tokens after the {prefix}-token prefix and a prompt run past "
            f"{model}'s {limit} positions; set it to at most {room}")
    return errors


def generation_room(limit: int, prefix: int, prompt_len: int, causal: bool) -> int:
    """How many new tokens fit a model with `limit` positions after a `prefix`-token prefix and a
    `prompt_len`-token prompt. The last new token is never fed back, so a causal LM uses prefix +
    prompt + new - 1 positions, a seq2seq decoder prefix + new (its start token, then all new tokens
    but the last; the prompt goes to the encoder)."""
    return limit - prefix - (prompt_len - 1 if causal else 0)


def default_variants(prefix: PrefixTuningConfig, choice: str = "both") -> list[VariantSpec]:
    """The paper's comparison: the same config without and with the reparameterisation MLP."""
    projection = {"no_projection": [False], "projection": [True], "both": [False, True]}[choice]
    return [VariantSpec(DEFAULT_VARIANT_NAMES[int(p)], _replace_prefix(prefix, prefix_projection=p))
            for p in projection]


def _replace_prefix(prefix: PrefixTuningConfig, **changes) -> PrefixTuningConfig:
    return _prefix_from_dict({**prefix.to_json_dict(), **changes}, "prefix")


def _variant_choice(variants: list[VariantSpec]) -> str:
    """Which `experiment.variants` choice produces these variants, or SpecError."""
    names = tuple(v.name for v in variants)
    for choice in VARIANT_CHOICES:
        expected = default_variants(variants[0].prefix, choice)
        if names == tuple(v.name for v in expected) and all(
            v.prefix.to_json_dict() == e.prefix.to_json_dict() for v, e in zip(variants, expected)
        ):
            return choice
    raise SpecError("variants", f"variants {list(names)} are not the form's no_projection/projection "
                                "pair; edit this experiment as JSON instead")


def _is_form_shaped(variants: list[VariantSpec]) -> bool:
    try:
        _variant_choice(variants)
    except SpecError:
        return False
    return True


def _section_from_dict(section: str, d: Any):
    cls = SECTIONS[section]
    if not isinstance(d, dict):
        raise SpecError(section, f"must be a JSON object, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise SpecError(f"{section}.{unknown[0]}",
                        f"unknown field; {section} has {', '.join(sorted(names))}")
    types_ = _field_types(cls)
    values = {k: _coerce(f"{section}.{k}", v, *types_[k]) for k, v in d.items()}
    return cls(**values)


def _variants_from_dict(shared: dict, variants: Any) -> list[VariantSpec]:
    if variants is None:
        return default_variants(_prefix_from_dict(shared, "prefix"))
    if not isinstance(variants, list) or not variants:
        raise SpecError("variants", f"must be a non-empty list of {{name, prefix}}, got {variants!r}")
    out = []
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or "name" not in v:
            raise SpecError(f"variants[{i}]", f"must be an object with a name and a prefix, got {v!r}")
        unknown = sorted(k for k in v if k not in ("name", "prefix") and not k.startswith("_"))
        if unknown:
            raise SpecError(f"variants[{i}].{unknown[0]}",
                            "unknown key; a variant has only a name and a prefix (keys starting with _ are comments)")
        overrides = v.get("prefix", {})
        if not isinstance(overrides, dict):
            raise SpecError(f"variants[{i}].prefix", f"must be a JSON object, got {overrides!r}")
        out.append(VariantSpec(v["name"], _prefix_from_dict({**shared, **overrides}, f"variants[{i}].prefix")))
    return out


def _prefix_from_dict(d: dict, where: str) -> PrefixTuningConfig:
    """PrefixTuningConfig.from_dict with its ValueError turned into a SpecError on the field."""
    names = prefix_field_names()
    unknown = sorted(set(d) - names)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}", f"unknown PrefixTuningConfig field; "
                                                  f"it has {', '.join(sorted(names))}")
    types_ = _field_types(PrefixTuningConfig)
    d = {k: _coerce(f"{where}.{k}", v, *types_[k]) for k, v in d.items()}
    try:
        return PrefixTuningConfig.from_dict(d)
    except (ValueError, TypeError) as err:
        field_name = getattr(err, "field", None) or _field_named_in(str(err), names)
        raise SpecError(f"{where}.{field_name}" if field_name else where, str(err)) from None


def _field_named_in(message: str, names: set[str]) -> str | None:
    """The longest PrefixTuningConfig field name a core error message mentions (longest first, so
    `num_virtual_tokens` wins over a shorter name it contains)."""
    for name in sorted(names, key=len, reverse=True):
        if name in message:
            return name
    return None


def prefix_field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(PrefixTuningConfig)}


# ---------------------------------------------------------------------------------------------
# Form values <-> spec
# ---------------------------------------------------------------------------------------------


def _field_info(key: str, f: dataclasses.Field, type_: Any) -> dict:
    base, optional = _unwrap_optional(type_)
    optional = optional or f.default is None
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    if isinstance(default, enum.Enum):
        default = default.value
    choices = f.metadata.get("choices")
    if choices is None and typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
    return {"key": key, "type": _type_name(base), "optional": optional, "default": default,
            "help": f.metadata.get("help", ""), "choices": tuple(choices) if choices else None}


def prefix_form_fields() -> list[dict]:
    """Form metadata for the user-editable PrefixTuningConfig fields (keys `prefix.<field>`)."""
    hints = typing.get_type_hints(PrefixTuningConfig)
    out = [_field_info(f"prefix.{f.name}", f, hints[f.name]) for f in dataclasses.fields(PrefixTuningConfig)
           if f.name not in _HIDDEN_PREFIX_FIELDS]
    for info in out:  # the form starts from the default spec's prefix, not PEFT's empty one
        name = info["key"].split(".", 1)[1]
        if name in DEFAULT_PREFIX:
            info["default"], info["optional"] = DEFAULT_PREFIX[name], False
    return out


def form_fields() -> list[dict]:
    """Form metadata for every form key: {"key", "type", "optional", "default", "help", "choices"}.

    `type` is one of int, float, bool, str, list[str] (a multi-line text box, one item a line).
    Order: experiment, prefix, model, data, training, generation.
    """
    out = [
        {"key": "experiment.name", "type": "str", "optional": False, "default": "experiment",
         "help": "A short name for the run.", "choices": None},
        {"key": "experiment.description", "type": "str", "optional": False, "default": "",
         "help": "Free text kept with the run and in a saved preset; presets say how to run them.",
         "choices": None},
        {"key": "experiment.variants", "type": "str", "optional": False, "default": "both",
         "help": "Train both variants side by side (the paper's comparison) or only one.",
         "choices": VARIANT_CHOICES},
    ]
    out += prefix_form_fields()
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out += [_field_info(f"{section}.{f.name}", f, hints[f.name]) for f in dataclasses.fields(cls)]
    return out


def spec_from_form(values: dict) -> ExperimentSpec:
    """The one function that turns form values (dotted keys, widget types) into a spec.

    Missing keys take their defaults. Strings from text boxes are coerced ("8" -> 8, "" -> None for
    optional fields, one prompt a line for lists). Raises SpecError naming the dotted key.
    """
    grouped: dict[str, dict] = {"experiment": {}, "prefix": {}, **{s: {} for s in SECTIONS}}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in grouped or not name:
            raise SpecError(key, f"unknown form field; expected one of {sorted(grouped)} + '.<field>'")
        grouped[section][name] = value
    experiment = grouped.pop("experiment")
    choice = experiment.pop("variants", "both")
    if choice not in VARIANT_CHOICES:
        raise SpecError("experiment.variants", f"must be one of {', '.join(VARIANT_CHOICES)}, got {choice!r}")
    if experiment.keys() - {"name", "description"}:
        raise SpecError(f"experiment.{sorted(experiment.keys() - {'name', 'description'})[0]}", "unknown form field")
    prefix_values = grouped.pop("prefix")
    if prefix_values.pop("prefix_projection", None) is not None:
        # The variants choice sets prefix_projection; a stray form value is ignored, not an error.
        warnings.warn("prefix.prefix_projection is set by experiment.variants; ignoring the form value")
    # Missing keys take the default spec's values; a cleared box ("") means "not set".
    prefix_values = {k: v for k, v in {**DEFAULT_PREFIX, **prefix_values}.items() if not (v is None or v == "")}
    prefix = _prefix_from_dict(prefix_values, "prefix")
    sections = {s: _section_from_dict(s, v) for s, v in grouped.items()}
    return ExperimentSpec(name=_coerce("experiment.name", experiment.get("name", "experiment"), str),
                          description=_coerce("experiment.description", experiment.get("description") or "", str),
                          variants=default_variants(prefix, choice), **sections)


# ---------------------------------------------------------------------------------------------
# Coercion of JSON / widget values to a field's annotated type
# ---------------------------------------------------------------------------------------------


def _unwrap_optional(type_: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / Optional[X]; other unions keep their first member."""
    origin = typing.get_origin(type_)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(type_) if a is not type(None)]
        optional = len(args) < len(typing.get_args(type_))
        return (args[0] if args else Any), optional
    return type_, False


def _type_name(type_: Any) -> str:
    if typing.get_origin(type_) is list:
        return "list[str]"
    if typing.get_origin(type_) is typing.Literal or (isinstance(type_, type) and issubclass(type_, enum.Enum)):
        return "str"
    return getattr(type_, "__name__", "str")


def _field_types(cls) -> dict[str, tuple[Any, bool]]:
    """{field: (annotation, nullable)}; PEFT writes `token_dim: int = None`, so a None default makes
    a field nullable as much as an Optional annotation does."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is None) for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, type_: Any, nullable: bool = False) -> Any:
    """Turn a JSON or widget value into `type_`, or raise SpecError naming `key` and the value."""
    base, optional = _unwrap_optional(type_)
    optional = optional or nullable
    if typing.get_origin(base) is list and value in (None, ""):
        return []  # an empty multi-line box: no items
    if value is None or (value == "" and base is not str):
        if optional or base is Any:
            return None
        raise SpecError(key, f"is required, got {value!r}; enter a value")
    if base is bool:
        return _to_bool(key, value)
    if base is int:
        return _to_int(key, value)
    if base is float:
        return _to_float(key, value)
    if base is str and not isinstance(value, str):
        raise SpecError(key, f"must be text, got {value!r}")
    if typing.get_origin(base) is list:
        return _to_str_list(key, value)
    return value


def _to_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise SpecError(key, f"must be true or false, got {value!r}")


def _to_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise SpecError(key, f"must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(key, f"must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise SpecError(key, f"must be a whole number, got {value!r}; round it")
    return int(number)


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpecError(key, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SpecError(key, f"must be a number such as 5e-5, got {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise SpecError(key, f"must be a finite number, got {value!r}")
    return number


def _to_str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):  # a multi-line text box: one item a line, blank lines dropped
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, list):
        return value
    raise SpecError(key, f"must be a list of strings or text with one item a line, got {value!r}")
