"""FieldSpec -> Gradio component: one control per form key, built from the field's metadata."""

from __future__ import annotations

import gradio as gr

from prefixlab.ui.fields import FieldSpec

# Shown for an optional choice left unset (PrefixTuningConfig.init_weights=None means random init).
NONE_CHOICE = ("(none)", "")


def component_for(field: FieldSpec, choices: tuple = ()) -> gr.components.Component:
    """The control for one field: checkbox, whole-number box, number box, dropdown or text box.

    `choices` are suggestions for free-choice keys (model presets, built-in tasks, file columns):
    the dropdown also takes any typed value, such as a Hub id.
    """
    common = dict(label=field.label, info=field.help or None, elem_id=field.elem_id)
    if field.kind == "bool":
        return gr.Checkbox(value=bool(field.default), **common)
    if field.kind == "int":
        # Inferred sizes are read-only until "override" is ticked (ui/handlers.py toggles this).
        return gr.Number(value=field.default, precision=0, interactive=not field.inferred, **common)
    if field.kind == "float":
        return gr.Number(value=field.default, **common)
    if field.kind == "choice":
        options = [NONE_CHOICE, *field.choices] if field.optional else list(field.choices)
        value = field.default if field.default is not None else ""
        return gr.Dropdown(choices=options, value=value, **common)
    if choices:
        return gr.Dropdown(choices=list(choices), value=field.default, allow_custom_value=True, **common)
    if field.kind == "lines":
        return gr.Textbox(value=field.default or "", lines=3, **common)
    return gr.Textbox(value=field.default if field.default is not None else "", **common)


def to_component_value(field: FieldSpec, value):
    """A spec value as its control shows it: lists one item a line, None choices as ""."""
    if field.kind == "lines" and isinstance(value, list):
        return "\n".join(value)
    if field.kind == "choice" and value is None:
        return ""
    if hasattr(value, "value"):  # enums
        return value.value
    return value
