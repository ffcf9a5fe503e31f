"""The form: what each control is (FieldSpec), and the one mapping between widget values and a spec.

The fields are not written out by hand. `form_fields()` lists every form key with its type, default
and help, generated from the spec's dataclasses (PrefixTuningConfig's user-facing fields, then the
model / data / training / generation sections), so a field added to a config shows up on the page
with no UI change (STYLE.md 2, 12). `page_fields()` adds what only the page needs: a control kind,
a DOM id, the inferred size fields (num_layers, token_dim, ...), which the spec leaves to the
model but the page shows read-only with the values inferred for the chosen model, and the bounds
this machine puts on a value (training.num_processes: one process per GPU, read-only without
several GPUs).

`spec_from_form` reshapes the form's dotted keys into the spec's JSON document and hands it to
`ExperimentSpec.from_dict`, where every value is coerced and checked (once); `form_from_spec` is its
inverse. Pure: no Gradio.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
import warnings
from dataclasses import dataclass

from prefixlab.core.config import ENCODER_SIZE_FIELDS, INFERRED_FIELDS, PrefixTuningConfig
from prefixlab.engine.spec import (
    DEFAULT_PREFIX,
    DEFAULT_VARIANTS,
    FINE_TUNE,
    SECTIONS,
    STANDARD_VARIANTS,
    ExperimentSpec,
    SpecError,
    type_name,
    unwrap_optional,
)

# `experiment.variants`: which of the standard variants to train (the paper's pair by default).
VARIANT_CHOICES = (*STANDARD_VARIANTS, FINE_TUNE)  # the prefix variants, then the paper's baseline
# PrefixTuningConfig fields the form never shows: set by the library, derived from the model
# (INFERRED_FIELDS, task_type) or chosen per variant (prefix_projection).
HIDDEN_PREFIX_FIELDS = frozenset(
    {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
     "modules_to_save", "auto_mapping", "peft_version", "prefix_projection", "tokenizer_name_or_path",
     *INFERRED_FIELDS, *ENCODER_SIZE_FIELDS}
)

# Keys whose control is a dropdown that also takes typed values (a Hub id, a file path, a column).
FREE_CHOICE_KEYS = frozenset({"model.name", "data.source", "data.source_column", "data.target_column"})
# Listed by form_fields() but not a choice anyone makes on the page: PEFT fills in its
# own version when it saves an adapter.
PAGE_HIDDEN_KEYS = frozenset({"prefix.peft_version"})
# The form's namespace in the page's registry (ui/registry.py): a field's component is "form.<key>".
FORM = "form"
# The form's sections, in page order, with their headings.
SECTION_TITLES = {
    "experiment": "Experiment", "prefix": "Prefix tuning (PrefixTuningConfig)", "model": "Model",
    "data": "Task", "training": "Training", "generation": "Generation",
}


@dataclass(frozen=True)
class FieldSpec:
    """How one form key appears on the page."""

    key: str  # dotted form key, e.g. "prefix.num_virtual_tokens" (CONTRACTS.md: spec_from_form)
    kind: str  # "bool", "int", "float", "str", "choice", "multi" (several choices) or "lines" (one item a line)
    default: typing.Any
    help: str
    optional: bool = False  # an empty box means None
    choices: tuple = ()
    inferred: bool = False  # filled from the model unless the user ticks "override"
    # Bounded by this machine (machine_bounds): the largest value it takes, and why.
    maximum: int | None = None
    bound: str = ""
    # Read-only: the machine allows one value only (training.num_processes without several GPUs); a
    # wrong value from a preset or a run makes it editable until fixed (form.error_update).
    locked: bool = False

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    @property
    def label(self) -> str:
        """The field's own name (searchable, matches the JSON and the Python API)."""
        return self.name

    @property
    def id(self) -> str:
        """The control's id in the page's registry: "form.prefix.num_virtual_tokens"."""
        return f"{FORM}.{self.key}"

    @property
    def elem_id(self) -> str:
        """Stable DOM id for tests: "prefix.num_virtual_tokens" -> "f-prefix-num_virtual_tokens"."""
        return "f-" + self.key.replace(".", "-")


def _kind(meta: dict) -> str:
    if meta["type"] == "multi" or (meta["type"] == "list[str]" and meta.get("choices")):
        return "multi"  # several of the choices (a list field with choices: training.report_to)
    if meta.get("choices") and meta["key"] not in FREE_CHOICE_KEYS:
        return "choice"
    return {"bool": "bool", "int": "int", "float": "float", "list[str]": "lines"}.get(meta["type"], "str")


def field_from_metadata(meta: dict) -> FieldSpec:
    """form_fields() entry -> FieldSpec."""
    default = meta["default"]
    if meta["type"] == "list[str]" and isinstance(default, list) and _kind(meta) == "lines":
        default = "\n".join(default)
    # A field whose default is None (num_virtual_tokens, encoder_hidden_size) can be left empty on
    # the page; spec_from_form then says what is missing or fills it in (encoder_hidden_size).
    optional = bool(meta.get("optional")) or meta["default"] is None
    return FieldSpec(key=meta["key"], kind=_kind(meta), default=default, help=meta.get("help", ""),
                     optional=optional, choices=tuple(meta.get("choices") or ()))


def inferred_fields() -> list[FieldSpec]:
    """The PrefixTuningConfig size fields filled from the model (config.INFERRED_FIELDS), as int boxes."""
    by_name = {f.name: f for f in dataclasses.fields(PrefixTuningConfig)}
    return [FieldSpec(key=f"prefix.{name}", kind="int", default=None, optional=True, inferred=True,
                      help=str(by_name[name].metadata.get("help", "")) + " (inferred from the model)")
            for name in INFERRED_FIELDS if name in by_name]


def page_fields(gpus: int | None = None) -> list[FieldSpec]:
    """Every control of the form, in page order: experiment, prefix (+ inferred sizes), model, ...,
    bounded by this machine (machine_bounds; `gpus`: its CUDA GPUs, default gpu_count())."""
    fields = [field_from_metadata(m) for m in form_fields() if m["key"] not in PAGE_HIDDEN_KEYS]
    last_prefix = max(i for i, f in enumerate(fields) if f.section == "prefix")
    return machine_bounds(fields[: last_prefix + 1] + inferred_fields() + fields[last_prefix + 1:],
                          gpu_count() if gpus is None else gpus)


# The field whose values this machine bounds: training.num_processes starts one process per GPU.
PROCESSES_KEY = "training.num_processes"


def gpu_count() -> int:
    """This machine's CUDA GPUs (torch.cuda.device_count(): 0 without CUDA)."""
    import torch

    return torch.cuda.device_count()


def machine_bounds(fields: list[FieldSpec], gpus: int) -> list[FieldSpec]:
    """`fields` with training.num_processes bounded by the machine's `gpus`: at most one process per
    GPU, and read-only where there is at most one GPU (its help says why). The worker could start
    several processes on a CPU (over gloo), but on the page that only splits one machine's cores."""
    out = []
    for f in fields:
        if f.key == PROCESSES_KEY:
            if gpus <= 1:
                have = "one GPU" if gpus == 1 else "no GPU"
                bound = f"this machine has {have} (torch.cuda.device_count() = {gpus}), so runs train in one process"
                f = dataclasses.replace(f, maximum=1, bound=bound, locked=True,
                                        help=f"{f.help} Read-only here: {bound}.")
            else:
                bound = f"this machine has {gpus} GPUs, one process each"
                f = dataclasses.replace(f, maximum=gpus, bound=bound, help=f"{f.help} Here: 1 to {gpus} ({bound}).")
        out.append(f)
    return out


def fields_by_section(fields: list[FieldSpec]) -> dict[str, list[FieldSpec]]:
    out: dict[str, list[FieldSpec]] = {s: [] for s in SECTION_TITLES}
    for f in fields:
        out.setdefault(f.section, []).append(f)
    return out


# ---------------------------------------------------------------------------------------------
# Form metadata from the dataclasses
# ---------------------------------------------------------------------------------------------


def _field_info(key: str, f: dataclasses.Field, type_: typing.Any) -> dict:
    base, optional = unwrap_optional(type_)
    optional = optional or f.default is None
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    if isinstance(default, enum.Enum):
        default = default.value
    choices = f.metadata.get("choices")
    if choices is None and typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
    return {"key": key, "type": type_name(base), "optional": optional, "default": default,
            "help": f.metadata.get("help", ""), "choices": tuple(choices) if choices else None}


def prefix_form_fields() -> list[dict]:
    """Form metadata for the user-editable PrefixTuningConfig fields (keys `prefix.<field>`)."""
    hints = typing.get_type_hints(PrefixTuningConfig)
    out = [_field_info(f"prefix.{f.name}", f, hints[f.name]) for f in dataclasses.fields(PrefixTuningConfig)
           if f.name not in HIDDEN_PREFIX_FIELDS]
    for info in out:  # the form starts from the default spec's prefix, not PEFT's empty one
        name = info["key"].split(".", 1)[1]
        if name in DEFAULT_PREFIX:
            info["default"], info["optional"] = DEFAULT_PREFIX[name], False
    return out


def form_fields() -> list[dict]:
    """Form metadata for every form key: {"key", "type", "optional", "default", "help", "choices"}.

    `type` is one of int, float, bool, str, list[str] (a multi-line text box, one item a line) or
    multi (several of `choices`). Order: experiment, prefix, model, data, training, generation.
    """
    out = [
        {"key": "experiment.name", "type": "str", "optional": False, "default": "experiment",
         "help": "A short name for the run.", "choices": None},
        {"key": "experiment.description", "type": "str", "optional": False, "default": "",
         "help": "Free text kept with the run and in a saved preset; presets say how to run them.",
         "choices": None},
        {"key": "experiment.variants", "type": "multi", "optional": False, "default": list(DEFAULT_VARIANTS),
         "help": "The variants to train side by side on the same batches: the prefix trained directly "
                 "(no_projection) and through the reparameterisation MLP (projection), the paper's comparison; "
                 "fine_tune adds full fine-tuning of a copy of the base, the baseline the paper measures against.",
         "choices": VARIANT_CHOICES},
    ]
    out += prefix_form_fields()
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out += [_field_info(f"{section}.{f.name}", f, hints[f.name]) for f in dataclasses.fields(cls)]
    return out


# ---------------------------------------------------------------------------------------------
# Form values <-> spec
# ---------------------------------------------------------------------------------------------


def _form_key(spec_key: str) -> str:
    """The form key a spec error is about: the variants' problems are the variants choice's."""
    return "experiment.variants" if spec_key.startswith("variants") else spec_key


def spec_from_form(values: dict) -> ExperimentSpec:
    """The one function that turns form values (dotted keys, widget values) into a spec.

    Missing keys take their defaults; a cleared box (None or "") means "not set". The values are
    reshaped into the spec's JSON document and coerced and checked there, once. Raises SpecError
    naming every bad form key.
    """
    document: dict = {"prefix": {}, "variants": list(DEFAULT_VARIANTS), **{s: {} for s in SECTIONS}}
    errors: dict[str, str] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section == "experiment" and name in ("name", "description"):
            document[name] = value if value is not None else ""
        elif section == "experiment" and name == "variants":
            chosen = [value] if isinstance(value, str) else list(value or [])
            unknown = [v for v in chosen if v not in VARIANT_CHOICES]
            if unknown or not chosen:
                errors[key] = (f"must be one or more of {', '.join(VARIANT_CHOICES)}, got {value!r}" if unknown else
                               f"choose at least one variant to train ({', '.join(VARIANT_CHOICES)})")
            else:
                document["variants"] = [v for v in VARIANT_CHOICES if v in chosen]  # the page's order
        elif section in document and section != "variants" and name:
            document[section][name] = value
        else:
            errors[key] = f"unknown form field; expected experiment, prefix or {', '.join(SECTIONS)} + '.<field>'"
    if document["prefix"].pop("prefix_projection", None) is not None:
        # The variants choice sets prefix_projection; a stray form value is ignored, not an error.
        warnings.warn("prefix.prefix_projection is set by experiment.variants; ignoring the form value")
    document["prefix"] = {k: v for k, v in {**DEFAULT_PREFIX, **document["prefix"]}.items() if v not in (None, "")}
    try:
        spec = ExperimentSpec.from_dict(document)
    except SpecError as err:
        for key, message in err.errors.items():
            errors.setdefault(_form_key(key), message)
        raise SpecError(errors) from None
    if errors:
        raise SpecError(errors)
    return spec


def form_from_spec(spec: ExperimentSpec) -> tuple[dict, bool]:
    """(form values, override): the inverse of `spec_from_form`, plus whether the spec pins any
    inferred size (the page then unlocks those fields). Raises SpecError on experiment.variants when
    a variant is not one of the form's standard ones: such specs are edited as JSON."""
    custom = [v.name for v in spec.variants if not v.standard]
    if custom:
        raise SpecError("experiment.variants", f"variants {custom} are not the form's standard variants "
                                               f"({', '.join(VARIANT_CHOICES)}); edit this experiment as JSON instead")
    shared = spec.prefix.to_json_dict()
    values = {"experiment.name": spec.name, "experiment.description": spec.description,
              "experiment.variants": spec.variant_names}
    for f in prefix_form_fields():
        values[f["key"]] = shared.get(f["key"].split(".", 1)[1])
    for section in SECTIONS:
        for key, value in dataclasses.asdict(getattr(spec, section)).items():
            values[f"{section}.{key}"] = value
    pinned = {f"prefix.{n}": shared[n] for n in INFERRED_FIELDS if shared.get(n) is not None}
    values.update(pinned)
    return values, bool(pinned)
