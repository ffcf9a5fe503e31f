"""Where each form field goes on the page: the essentials, always open, and each section's "more"
part, a collapsed accordion. Pure: no Gradio (ui/panels.py builds the controls from this).

Only the essentials are placed by hand (ESSENTIAL_ROWS: the choices a researcher makes for every
run). Every other field, including one added to a config tomorrow, lands in its section's "more"
part with no change here, packed into rows by the kind of control (short numbers three to a row,
checkboxes together, long text alone), in the order the spec's dataclasses declare them.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefixlab.ui.fields import SECTION_TITLES, FieldSpec, fields_by_section

# The essentials, row by row (data.source's row also holds the task upload; training.max_length's
# row is followed by what the task's data will do at that length).
ESSENTIAL_ROWS: tuple[tuple[str, ...], ...] = (
    ("model.name", "data.source"),
    ("experiment.variants",),
    ("prefix.num_virtual_tokens", "prefix.encoder_hidden_size"),
    ("training.learning_rate", "training.max_steps", "training.max_length"),
)
ESSENTIALS = frozenset(key for row in ESSENTIAL_ROWS for key in row)
# Kinds of control that share a row three at a time (narrow), and those that get one to themselves.
NARROW = frozenset({"int", "float", "bool", "choice"})
WIDE = frozenset({"lines", "multi"})
PER_ROW = 3
# The "more" parts' headings: the section's title, and what is in it.
MORE_TITLES = {
    "experiment": "Experiment: name and description",
    "prefix": "Prefix tuning: initialisation, positions, inferred sizes",
    "model": "Model: more",
    "data": "Task: upload, columns, separator, example caps",
    "training": "Training: batch, schedule, evaluation, precision",
    "generation": "Generation: strategy and prompts",
}


@dataclass(frozen=True)
class FormLayout:
    """The essentials' rows of field keys, and per section its "more" rows (sections in page order;
    one with no field left out of the essentials has no "more" part)."""

    essentials: tuple[tuple[str, ...], ...]
    more: dict[str, tuple[tuple[str, ...], ...]]

    def section_of_more(self, key: str) -> str | None:
        """The section whose collapsed "more" part holds `key`, or None (an essential, or unknown)."""
        for section, rows in self.more.items():
            if any(key in row for row in rows):
                return section
        return None


def pack(fields: list[FieldSpec]) -> tuple[tuple[str, ...], ...]:
    """Field keys in rows: runs of narrow controls PER_ROW at a time, other controls one a row;
    the inferred sizes (read from the model) share rows of their own."""
    rows: list[tuple[str, ...]] = []
    run: list[str] = []
    inferred = [f.key for f in fields if f.inferred]
    for f in (f for f in fields if not f.inferred):
        if f.kind in NARROW or (f.kind == "str" and len(f.help) < 90 and not f.choices):
            run.append(f.key)
            if len(run) == PER_ROW:
                rows.append(tuple(run))
                run = []
        else:
            if run:
                rows.append(tuple(run))
                run = []
            rows.append((f.key,))
    if run:
        rows.append(tuple(run))
    rows += [tuple(inferred[i:i + 2]) for i in range(0, len(inferred), 2)]
    return tuple(rows)


def form_layout(fields: list[FieldSpec]) -> FormLayout:
    """The page's form: ESSENTIAL_ROWS (those of its keys the fields have), then every other field in
    its section's "more" part."""
    keys = {f.key for f in fields}
    essentials = tuple(row for row in (tuple(k for k in row if k in keys) for row in ESSENTIAL_ROWS) if row)
    more = {}
    for section, section_fields in fields_by_section(fields).items():
        rest = [f for f in section_fields if f.key not in ESSENTIALS]
        if rest:
            more[section] = pack(rest)
    return FormLayout(essentials, more)


def more_title(section: str) -> str:
    return MORE_TITLES.get(section, f"{SECTION_TITLES.get(section, section)}: more")
