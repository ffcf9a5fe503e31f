"""ui/fields.py and ui/form.py: dataclass fields -> form fields -> Gradio controls."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import gradio as gr

from prefixlab.core.config import INFERRED_FIELDS, PrefixTuningConfig
from prefixlab.ui import fields as ui_fields
from prefixlab.ui.form import NONE_CHOICE, component_for, to_component_value
from prefixlab.ui.layout import PER_ROW, form_layout


def _by_key():
    return {f.key: f for f in ui_fields.page_fields()}


def test_every_user_facing_prefix_field_is_on_the_form_with_its_help():
    by_key = _by_key()
    # The encoder's sizes are filled from the model (paper mode), the tokenizer is the model's.
    hidden = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
              "modules_to_save", "auto_mapping", "peft_version", "prefix_projection", "tokenizer_name_or_path",
              "num_encoder_layers", "encoder_token_dim", "num_encoder_attention_heads"}
    for f in dataclasses.fields(PrefixTuningConfig):
        key = f"prefix.{f.name}"
        if f.name in hidden:
            assert key not in by_key, key
            continue
        assert key in by_key, f"{key} missing from the page"
        assert f.metadata["help"] in by_key[key].help
    # prefix_projection is chosen through the variants (off / on / both side by side).
    assert by_key["experiment.variants"].choices == ("no_projection", "projection", "fine_tune")
    assert by_key["experiment.variants"].kind == "multi"
    assert isinstance(component_for(by_key["experiment.variants"]), gr.CheckboxGroup)


def test_inferred_fields_are_flagged_optional_ints_and_read_only():
    by_key = _by_key()
    for name in INFERRED_FIELDS:
        spec = by_key[f"prefix.{name}"]
        assert spec.inferred and spec.kind == "int" and spec.optional and spec.default is None
        box = component_for(spec, value=12)
        # A text box, not a number box: an empty browser number box reads as 0.
        assert isinstance(box, gr.Textbox) and box.interactive is False and box.value == "12"
        assert component_for(spec).value == ""
    assert not by_key["prefix.num_virtual_tokens"].inferred


def test_control_kinds_follow_the_field_types():
    by_key = _by_key()
    kinds = {k: by_key[k].kind for k in ("prefix.num_virtual_tokens", "training.learning_rate",
                                         "training.precision", "generation.prompts", "data.separator",
                                         "prefix.init_weights", "model.name")}
    assert kinds == {"prefix.num_virtual_tokens": "int", "training.learning_rate": "float",
                     "training.precision": "choice", "generation.prompts": "lines", "data.separator": "str",
                     "prefix.init_weights": "choice", "model.name": "str"}
    assert isinstance(component_for(by_key["training.learning_rate"]), gr.Number)
    precision = component_for(by_key["training.precision"])
    assert isinstance(precision, gr.Dropdown) and precision.value == "auto"
    # An optional choice offers "(none)" for None; PrefixTuningConfig.init_weights=None is random init.
    init = component_for(by_key["prefix.init_weights"])
    assert init.choices[0] == NONE_CHOICE and init.value == ""
    model = component_for(by_key["model.name"], ("tiny-gpt2", "gpt2"))
    assert isinstance(model, gr.Dropdown) and model.allow_custom_value
    assert isinstance(component_for(by_key["generation.prompts"]), gr.Textbox)
    assert component_for(by_key["prefix.num_virtual_tokens"]).elem_id == "f-prefix-num_virtual_tokens"
    # Optional numbers (default None) are text boxes too, so empty stays empty.
    assert by_key["prefix.encoder_hidden_size"].optional
    assert isinstance(component_for(by_key["training.max_steps"]), gr.Textbox)
    assert isinstance(component_for(by_key["training.batch_size"]), gr.Number)


def test_a_field_added_to_the_config_appears_with_no_ui_change(monkeypatch):
    @dataclass
    class ExtendedConfig(PrefixTuningConfig):
        prefix_dropout: float = field(default=0.1, metadata={"help": "Dropout on the prefix"})

    monkeypatch.setattr(ui_fields, "PrefixTuningConfig", ExtendedConfig)
    added = _by_key()["prefix.prefix_dropout"]
    assert (added.kind, added.default, added.help) == ("float", 0.1, "Dropout on the prefix")
    box = component_for(added)
    assert isinstance(box, gr.Number) and box.value == 0.1 and box.info == "Dropout on the prefix"
    # It lands in the prefix section's collapsed "more" part: the essentials are placed by hand only.
    layout = form_layout(ui_fields.page_fields())
    assert layout.section_of_more("prefix.prefix_dropout") == "prefix"
    assert "prefix.prefix_dropout" not in {key for row in layout.essentials for key in row}


def test_every_field_is_placed_once_new_training_fields_in_training_s_more_part(monkeypatch):
    from prefixlab.engine import spec as engine_spec

    @dataclass
    class ExtendedTraining(engine_spec.TrainingSpec):
        label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing."})
        compile_model: bool = field(default=False, metadata={"help": "torch.compile the base."})

    monkeypatch.setitem(ui_fields.SECTIONS, "training", ExtendedTraining)
    fields = ui_fields.page_fields()
    layout = form_layout(fields)
    placed = [key for rows in (layout.essentials, *layout.more.values()) for row in rows for key in row]
    assert sorted(placed) == sorted(f.key for f in fields)  # each exactly once
    assert layout.section_of_more("training.label_smoothing") == "training"
    assert layout.section_of_more("training.compile_model") == "training"
    assert layout.section_of_more("training.max_steps") is None  # an essential
    # Rows: at most three narrow controls, a multi-line one alone.
    assert all(len(row) <= PER_ROW for rows in layout.more.values() for row in rows)
    assert ("generation.prompts",) in layout.more["generation"]


def test_page_order_puts_inferred_sizes_after_the_prefix_fields():
    keys = [f.key for f in ui_fields.page_fields()]
    sections = list(dict.fromkeys(k.split(".")[0] for k in keys))
    assert sections == ["experiment", "prefix", "model", "data", "training", "generation"]
    prefix_keys = [k for k in keys if k.startswith("prefix.")]
    assert prefix_keys[-len(INFERRED_FIELDS):] == [f"prefix.{n}" for n in INFERRED_FIELDS]


def test_component_values_from_spec_values():
    by_key = _by_key()
    assert to_component_value(by_key["generation.prompts"], ["a", "b"]) == "a\nb"
    assert to_component_value(by_key["prefix.init_weights"], None) == ""
    assert to_component_value(by_key["training.batch_size"], 8) == 8
    assert to_component_value(by_key["training.max_steps"], 60) == "60"
    assert to_component_value(by_key["training.max_steps"], None) == ""
