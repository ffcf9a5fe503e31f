"""ExperimentSpec: JSON round trips, form values <-> spec, presets, and every bad value's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefixlab import PrefixTuningConfig
from prefixlab.engine.spec import ExperimentSpec, SpecError, TrainingSpec
from prefixlab.ui.fields import form_fields, form_from_spec, prefix_form_fields, spec_from_form

PRESETS = sorted((Path(__file__).resolve().parent.parent / "presets").glob("*.json"))


def test_default_spec_is_the_paired_projection_comparison():
    spec = ExperimentSpec()
    assert spec.variant_names == ["no_projection", "projection"]
    assert [v.prefix.prefix_projection for v in spec.variants] == [False, True]
    shared = [{k: v for k, v in var.prefix.to_json_dict().items() if k != "prefix_projection"}
              for var in spec.variants]
    assert shared[0] == shared[1]  # the variants differ only in prefix_projection
    assert isinstance(spec.variants[0].prefix, PrefixTuningConfig)


def test_json_round_trip_keeps_every_field():
    assert spec_from_form({"generation.prompts": ""}).generation.prompts == []
    spec = spec_from_form({"prefix.num_virtual_tokens": "7", "prefix.encoder_hidden_size": "32",
                           "training.max_steps": "20", "training.eval_interval": "5",
                           "generation.prompts": "name[A] | food[B]\n\nname[C]"})
    again = ExperimentSpec.from_json(spec.to_json())
    assert again.to_dict() == spec.to_dict()
    assert again.generation.prompts == ["name[A] | food[B]", "name[C]"]
    assert again.variants[1].prefix.encoder_hidden_size == 32


def test_form_round_trip_and_coercion():
    values = form_from_spec(ExperimentSpec())[0]
    values.update({"training.batch_size": "8", "training.learning_rate": "0.01", "training.max_steps": "",
                   "prefix.num_virtual_tokens": 12.0, "experiment.variants": "projection",
                   "data.max_train_examples": "", "prefix.encoder_hidden_size": ""})
    spec = spec_from_form(values)
    assert spec.training.batch_size == 8 and spec.training.learning_rate == 0.01
    assert spec.training.max_steps is None and spec.data.max_train_examples is None
    assert spec.variant_names == ["projection"] and spec.variants[0].prefix.num_virtual_tokens == 12
    assert spec_from_form(form_from_spec(spec)[0]).to_dict() == spec.to_dict()


def test_a_preset_keeps_its_description_through_the_form():
    preset = ExperimentSpec.load(next(p for p in PRESETS if p.stem == "offline-tiny"))
    assert preset.description  # presets say what they do and how to run them
    # Load a preset on the page, save it back: the description is a form field, not lost.
    assert spec_from_form(form_from_spec(preset)[0]).description == preset.description


def test_form_fields_cover_every_form_key_with_help():
    fields = {f["key"]: f for f in form_fields()}
    assert set(fields) == set(form_from_spec(ExperimentSpec())[0])
    assert all(f["help"] for f in fields.values())
    assert fields["training.precision"]["choices"] == ("auto", "fp32", "bf16", "fp16")
    assert fields["generation.strategy"]["choices"] == ("greedy", "sampling", "beam")
    assert fields["training.max_steps"]["optional"] and fields["training.max_steps"]["type"] == "int"
    # The user edits the prefix length and MLP width; sizes come from the model, projection from variants.
    assert {f["key"] for f in prefix_form_fields()} == {
        "prefix.num_virtual_tokens", "prefix.encoder_hidden_size", "prefix.init_weights", "prefix.prefix_positions",
        "prefix.prefix_tuning_init", "prefix.prefix_tuning_init_text"}


@pytest.mark.parametrize(
    "values, field, words",
    [
        ({"training.learning_rate": "-1"}, "training.learning_rate", ["must be > 0", "-1.0"]),
        ({"training.learning_rate": "fast"}, "training.learning_rate", ["must be a number", "'fast'"]),
        ({"training.batch_size": "0"}, "training.batch_size", ["must be >= 1", "0"]),
        ({"training.batch_size": "2.5"}, "training.batch_size", ["whole number", "'2.5'"]),
        ({"training.batch_size": ""}, "training.batch_size", ["is required"]),
        ({"training.precision": "fp8"}, "training.precision", ["auto, fp32, bf16, fp16", "'fp8'"]),
        ({"training.max_steps": "10", "training.eval_interval": "50"}, "training.eval_interval",
         ["50 is more than training.max_steps=10", "at most max_steps"]),
        ({"training.max_steps": "10", "training.eval_interval": "5", "training.warmup_steps": "20"}, "training.warmup_steps",
         ["more than training.max_steps=10"]),
        ({"training.num_epochs": "0"}, "training.num_epochs", ["must be > 0"]),
        ({"training.gradient_accumulation_steps": "0"}, "training.gradient_accumulation_steps", ["must be >= 1"]),
        ({"generation.strategy": "beam", "generation.num_beams": "1"}, "generation.num_beams",
         ["at least 2 beams", "1"]),
        ({"generation.strategy": "topk"}, "generation.strategy", ["greedy, sampling, beam", "'topk'"]),
        ({"generation.strategy": "sampling", "generation.top_p": "1.5"}, "generation.top_p", ["(0, 1]"]),
        ({"model.name": " "}, "model.name", ["must name a model"]),
        ({"data.source": ""}, "data.source", ["must not be empty"]),
        ({"data.max_train_examples": "0"}, "data.max_train_examples", ["must be >= 1", "leave empty"]),
        ({"prefix.num_virtual_tokens": "0"}, "prefix.num_virtual_tokens", ["num_virtual_tokens=0", "at least 1"]),
        ({"prefix.num_virtual_tokens": ""}, "prefix.num_virtual_tokens", ["is empty", "prefix length"]),
        ({"prefix.encoder_hidden_size": "-3"}, "prefix.encoder_hidden_size", ["encoder_hidden_size=-3"]),
        ({"prefix.init_weights": "ones"}, "prefix.init_weights", ["init_weights='ones'", "'zero'"]),
        ({"experiment.variants": "three"}, "experiment.variants", ["one or more of no_projection, projection", "'three'"]),
        ({"experiment.variants": []}, "experiment.variants", ["choose at least one variant"]),
        ({"training.sed": "1"}, "training.sed", ["unknown field", "seed"]),
        ({"nonsense": 1}, "nonsense", ["unknown form field"]),
    ],
)
def test_bad_form_values_name_the_field(values, field, words):
    with pytest.raises(SpecError) as info:
        spec_from_form(values)
    assert info.value.field == field
    for word in words:
        assert word in str(info.value), str(info.value)


def test_stray_prefix_projection_form_value_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="experiment.variants"):
        spec = spec_from_form({"prefix.prefix_projection": True, "experiment.variants": "no_projection"})
    assert spec.variants[0].prefix.prefix_projection is False


@pytest.mark.parametrize(
    "document, field, words",
    [
        ({"model": {"name": "tiny-gpt2"}, "trainig": {}}, "trainig", ["unknown key", "training"]),
        ({"training": {"batch_size": 0}}, "training.batch_size", ["must be >= 1"]),
        ({"training": []}, "training", ["must be a JSON object"]),
        ({"variants": []}, "variants", ["non-empty list"]),
        ({"variants": [{"prefix": {}}]}, "variants[0]", ["name and a prefix"]),
        ({"variants": [{"name": "a", "prefix": {"num_virtual_tokens": 4}},
                       {"name": "a", "prefix": {"num_virtual_tokens": 8}}]}, "variants", ["unique", "'a'"]),
        ({"variants": [{"name": "base", "prefix": {"num_virtual_tokens": 4}}]}, "variants[0].name", ["'base'"]),
        ({"variants": [{"name": "../x", "prefix": {"num_virtual_tokens": 4}}]}, "variants[0].name",
         ["'../x' cannot name a variant", "letters, digits, _ and -"]),
        ({"name": 5}, "experiment.name", ["must be text, got 5"]),
        ({"variants": [{"name": "a", "prefix": {"num_virtual_tokens": 4}, "extra": 1}]}, "variants[0].extra",
         ["unknown key", "a name and a prefix"]),
        ({"variants": [{"name": "update", "prefix": {"num_virtual_tokens": 4}}]}, "variants[0].name",
         ["'update' is the name of a torch.nn.ModuleDict attribute", "rename it"]),
        ({"variants": [{"name": "a.b", "prefix": {"num_virtual_tokens": 4}}]}, "variants[0].name",
         ["'a.b' cannot name a variant"]),  # a folder, not a module name: add_adapter would refuse it
        ({"variants": [{"name": "a", "prefix": {"num_virtual_tokens": 4, "inference_mode": True}}]},
         "variants[0].prefix.inference_mode", ["freezes the prefix", "set it false"]),
        ({"training": {"seed": -1}}, "training.seed", ["between 0 and 4294967295", "-1"]),
        ({"training": {"seed": 2**32}}, "training.seed", ["between 0 and 4294967295", "4294967296"]),
        ({"variants": [{"name": "a", "prefix": {"num_virtual_tokens": 4, "prefix_lenght": 3}}]},
         "variants[0].prefix.prefix_lenght", ["unknown PrefixTuningConfig field"]),
        ({"prefix": {"num_virtual_tokens": 4, "task_type": "CLASSIFY"}}, "prefix.task_type",
         ["task_type='CLASSIFY'", "CAUSAL_LM"]),
    ],
)
def test_bad_json_documents_name_the_field(document, field, words):
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(document)
    assert info.value.field == field
    for word in words:
        assert word in str(info.value), str(info.value)


def test_shared_prefix_with_variant_overrides_and_comment_keys():
    spec = ExperimentSpec.from_dict({
        "_command": "python -m prefixlab train this.json",
        "prefix": {"num_virtual_tokens": 5, "encoder_hidden_size": 16},
        "variants": [{"name": "short", "prefix": {}}, {"name": "long", "prefix": {"num_virtual_tokens": 20}}],
    })
    assert [(v.name, v.prefix.num_virtual_tokens, v.prefix.encoder_hidden_size) for v in spec.variants] == [
        ("short", 5, 16), ("long", 20, 16)]
    with pytest.raises(SpecError, match="edit this experiment as JSON") as info:
        form_from_spec(spec)  # not the form's shape: the page must not silently drop a variant
    assert info.value.field == "experiment.variants"


def test_spec_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": {"batch_size": 4,}}')
    with pytest.raises(SpecError, match=r"not valid JSON .* line 1.*bad\.json"):
        ExperimentSpec.load(bad)
    with pytest.raises(SpecError, match="cannot read spec file .*missing.json"):
        ExperimentSpec.load(tmp_path / "missing.json")


def test_training_spec_validates_in_post_init():
    with pytest.raises(SpecError, match="training.log_interval: must be >= 1, got 0"):
        TrainingSpec(log_interval=0)


def test_there_are_offline_and_paper_presets():
    names = {p.stem for p in PRESETS}
    assert {"offline-tiny", "gpt2-e2e", "gpt2-medium-e2e"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_is_a_valid_spec_that_says_how_to_run_it(path):
    document = json.loads(path.read_text())
    spec = ExperimentSpec.from_dict(document)
    assert f"python -m prefixlab train presets/{path.name}" in document["_command"]
    assert spec.variant_names == ["no_projection", "projection"]
    if path.stem.startswith("gpt2"):  # the paper's table-to-text setting (Li & Liang 2021, sec. 5)
        prefix = spec.variants[1].prefix
        assert prefix.num_virtual_tokens == 10 and prefix.encoder_hidden_size == 512
        assert 5e-5 <= spec.training.learning_rate <= 8e-5
        assert spec.data.source == "e2e-synth"


def test_every_problem_in_a_document_is_named_at_once():
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict({"model": {"name": " "}, "prefix": {"num_virtual_tokens": 0},
                                  "training": {"batch_size": "many", "learning_rate": -1, "sed": 1},
                                  "generation": {"strategy": "topk"}})
    assert set(info.value.errors) == {"model.name", "prefix.num_virtual_tokens", "training.batch_size",
                                      "training.learning_rate", "training.sed", "generation.strategy"}
    assert info.value.field == "model.name"  # the first one found, for callers that show one
    assert "'many'" in info.value.errors["training.batch_size"]
    with pytest.raises(SpecError) as info:
        spec_from_form({"training.batch_size": "0", "generation.num_prompts": "0", "experiment.variants": []})
    assert set(info.value.errors) == {"training.batch_size", "generation.num_prompts", "experiment.variants"}


def test_variants_are_stored_as_chosen():
    spec = ExperimentSpec.from_dict({"prefix": {"num_virtual_tokens": 6}, "variants": ["projection"]})
    assert spec.to_dict()["variants"] == ["projection"]
    assert spec.to_dict()["prefix"] == {"num_virtual_tokens": 6}
    assert form_from_spec(spec)[0]["experiment.variants"] == ["projection"]
    again = ExperimentSpec.from_json(spec.to_json())
    assert again.to_dict() == spec.to_dict() and again.variants[0].prefix.prefix_projection
    custom = ExperimentSpec.from_dict({"prefix": {"num_virtual_tokens": 6},
                                       "variants": ["no_projection", {"name": "wide", "prefix": {"num_virtual_tokens": 20}}]})
    assert custom.to_dict()["variants"] == ["no_projection", {"name": "wide", "prefix": {"num_virtual_tokens": 20}}]
    assert [v.prefix.num_virtual_tokens for v in custom.variants] == [6, 20]
    # A variant's own value is named where it is set, a shared one on the shared prefix.
    assert custom.prefix_key(1, "num_virtual_tokens") == "variants[1].prefix.num_virtual_tokens"
    assert custom.prefix_key(1, "encoder_hidden_size") == "prefix.encoder_hidden_size"
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict({"variants": ["projection", "lora"]})
    assert info.value.field == "variants[1]" and "not a standard variant" in info.value.message


COMPARISONS = sorted((Path(__file__).resolve().parent.parent / "presets" / "compare").glob("*.json"))


@pytest.mark.parametrize("path", COMPARISONS, ids=lambda p: p.stem)
def test_every_comparison_preset_passes_the_checks_and_says_how_to_run_it(path):
    """presets/compare/: the paper's methods side by side in one run (custom variants, CLI only)."""
    from prefixlab.engine import checks

    document = json.loads(path.read_text())
    assert document["_command"] == f"python -m prefixlab train presets/compare/{path.name}"
    spec = ExperimentSpec.from_dict(document)
    assert not checks.check(spec).errors
    assert len(spec.variant_names) >= 2
