"""FieldSpec -> Gradio component: one control per form key, built from the field's metadata."""

from __future__ import annotations

import gradio as gr

from prefixlab.ui.fields import FieldSpec
from prefixlab.ui.values import field_info

# The class a field's block has while its value is wrong (ui/app.py's CSS colours its message).
ERROR_CLASS = "field-error"


def error_classes(error: str | None) -> list[str]:
    return [ERROR_CLASS] if error else []


def error_update(field: FieldSpec, error: str | None, **changes) -> dict:
    """The update that puts `error` beside the field, under its label, in place of its help (or
    takes it away: error None), with any other `changes` (interactive=...). A locked field (one
    value on this machine) is editable while it is wrong, so a preset's or a run's value can be fixed."""
    if field.locked:
        changes.setdefault("interactive", bool(error))
    return gr.update(info=field_info(field.help, error) or None, elem_classes=error_classes(error), **changes)

# Shown for an optional choice left unset (PrefixTuningConfig.init_weights=None means random init).
NONE_CHOICE = ("(none)", "")


def clamped_slider(minimum: float, maximum: float, **options) -> gr.Slider:
    """A gr.Slider whose typed value outside [minimum, maximum] reaches the handlers clamped into
    it: Gradio's own raises an error toast on every event that reads it (the run chart's timer:
    every second), and the chart stopped until the box was fixed. The browser clamps the box itself
    when it loses focus.

    The slider's own `preprocess` is replaced on the instance: a subclass would be a new Gradio
    component, whose class Gradio describes in a .pyi file it writes beside this module."""
    slider = gr.Slider(minimum, maximum, **options)

    def preprocess(payload) -> float:
        try:
            value = float(payload)
        except (TypeError, ValueError):
            value = float(slider.value if slider.value is not None else minimum)
        if value != value:  # NaN
            value = float(minimum)
        return min(max(value, minimum), maximum)

    slider.preprocess = preprocess
    return slider


def component_for(field: FieldSpec, choices: tuple = (), value=None, error: str | None = None,
                  label: str | None = None, **layout) -> gr.components.Component:
    """The control for one field: checkbox, number box, text box or dropdown, showing `value`
    (the field's default when None), with its help under its label, or `error` while its value is
    wrong (error_update), labelled `label` (default: the field's name). `layout`: Gradio's scale /
    min_width.

    Numbers that may be empty (optional, or inferred from the model) are text boxes: a browser
    number box shows an empty value as 0, which would then be sent as 0. `choices` are suggestions
    for free-choice keys (model presets, built-in tasks, file columns): the dropdown also takes any
    typed value, such as a Hub id.
    """
    value = field.default if value is None else value
    common = dict(label=label or field.label, info=field_info(field.help, error) or None, elem_id=field.elem_id,
                  elem_classes=error_classes(error), **layout)
    if field.locked and not error:  # one value on this machine (its help says why)
        common["interactive"] = False
    if field.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if field.kind in ("int", "float") and (field.optional or field.inferred):
        # Inferred sizes are read-only until "override" is ticked (ui/handlers.py toggles this).
        return gr.Textbox(value="" if value is None else str(value), interactive=not field.inferred,
                          placeholder="from the model" if field.inferred else "empty: not set", **common)
    if field.kind == "int":
        # No precision=0: Gradio would round 2.5 to 2 before any check. values.collect_form turns
        # 3.0 into 3 and gives 2.5 to the spec check, which names it ("must be a whole number").
        return gr.Number(value=value, step=1, **common)
    if field.kind == "float":
        return gr.Number(value=value, **common)
    if field.kind == "multi":
        return gr.CheckboxGroup(choices=list(field.choices), value=list(value or []), **common)
    if field.kind == "choice":
        options = [NONE_CHOICE, *field.choices] if field.optional else list(field.choices)
        return gr.Dropdown(choices=options, value=value if value is not None else "", **common)
    if choices:
        # Choices are names or (label, name) pairs; the current value is offered even if not listed.
        names = {c[1] if isinstance(c, tuple) else c for c in choices}
        options = list(choices) + ([] if value in names or value is None else [value])
        return gr.Dropdown(choices=options, value=value, allow_custom_value=True, **common)
    if field.kind == "lines":
        return gr.Textbox(value=value or "", lines=3, **common)
    return gr.Textbox(value=value if value is not None else "", **common)


def to_component_value(field: FieldSpec, value):
    """A spec value as its control shows it: lists one item a line, None as "" in text boxes."""
    if hasattr(value, "value"):  # enums
        value = value.value
    if field.kind == "lines" and isinstance(value, list):
        return "\n".join(value)
    if field.kind == "choice" and value is None:
        return ""
    if field.kind in ("int", "float") and (field.optional or field.inferred):
        return "" if value is None else str(value)
    return value
