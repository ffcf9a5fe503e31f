"""Form field descriptions (pure, no Gradio): what each control on the form is.

The fields are not written out by hand. `prefixlab.engine.spec.form_fields()` lists every form key
with its type, default and help, generated from the dataclasses (PrefixTuningConfig's user-facing
fields, then the model / data / training / generation sections), so a field added to a config
shows up on the page with no UI change (STYLE.md 2, 12). This module adds what only the page needs:
a control kind, a DOM id, and the inferred size fields (num_layers, token_dim, ...), which the spec
leaves to the model but the page shows read-only with the values inferred for the chosen model.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from prefixlab.core.config import INFERRED_FIELDS, PrefixTuningConfig
from prefixlab.engine.spec import form_fields

# Keys whose control is a dropdown that also takes typed values (a Hub id, a file path, a column).
FREE_CHOICE_KEYS = frozenset({"model.name", "data.source", "data.source_column", "data.target_column"})
# Listed by experiment.form_fields() but not a choice anyone makes on the page: PEFT fills in its
# own version when it saves an adapter.
PAGE_HIDDEN_KEYS = frozenset({"prefix.peft_version"})
# The form's sections, in page order, with their headings.
SECTION_TITLES = {
    "experiment": "Experiment", "prefix": "Prefix tuning (PrefixTuningConfig)", "model": "Model",
    "data": "Task", "training": "Training", "generation": "Generation",
}


@dataclass(frozen=True)
class FieldSpec:
    """How one form key appears on the page."""

    key: str  # dotted form key, e.g. "prefix.num_virtual_tokens" (CONTRACTS.md: spec_from_form)
    kind: str  # "bool", "int", "float", "str", "choice" or "lines" (list[str], one item a line)
    default: typing.Any
    help: str
    optional: bool = False  # an empty box means None
    choices: tuple = ()
    inferred: bool = False  # filled from the model unless the user ticks "override"

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
    def elem_id(self) -> str:
        """Stable DOM id for tests: "prefix.num_virtual_tokens" -> "f-prefix-num_virtual_tokens"."""
        return "f-" + self.key.replace(".", "-")


def _kind(meta: dict) -> str:
    if meta.get("choices") and meta["key"] not in FREE_CHOICE_KEYS:
        return "choice"
    return {"bool": "bool", "int": "int", "float": "float", "list[str]": "lines"}.get(meta["type"], "str")


def field_from_metadata(meta: dict) -> FieldSpec:
    """experiment.form_fields() entry -> FieldSpec."""
    default = meta["default"]
    if meta["type"] == "list[str]" and isinstance(default, list):
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


def page_fields() -> list[FieldSpec]:
    """Every control of the form, in page order: experiment, prefix (+ inferred sizes), model, ..."""
    fields = [field_from_metadata(m) for m in form_fields() if m["key"] not in PAGE_HIDDEN_KEYS]
    last_prefix = max(i for i, f in enumerate(fields) if f.section == "prefix")
    return fields[: last_prefix + 1] + inferred_fields() + fields[last_prefix + 1:]


def fields_by_section(fields: list[FieldSpec]) -> dict[str, list[FieldSpec]]:
    out: dict[str, list[FieldSpec]] = {s: [] for s in SECTION_TITLES}
    for f in fields:
        out.setdefault(f.section, []).append(f)
    return out
