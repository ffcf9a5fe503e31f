"""PrefixTuningConfig: PEFT's fields and file layout, validation messages, size inference."""

from __future__ import annotations

import dataclasses
import json
import warnings

import peft
import pytest
from transformers import PretrainedConfig

from core_helpers import ARCHS, ours_config, peft_config
from prefixlab import PeftType, PrefixTuningConfig, TaskType, get_peft_model
from prefixlab.core.config import INFERRED_FIELDS, PREFIXLAB_FIELDS, ConfigError, infer_sizes, kv_layout
from prefixlab.core.encoder import prefix_parameter_counts
from prefixlab.engine.tiny import tiny_config, tiny_model


def test_fields_defaults_and_help_equal_peft():
    """PEFT's fields first, in PEFT's order, then prefixlab's own (PREFIXLAB_FIELDS), all unset (None)
    by default, so that a default config is PEFT's."""
    ours = {f.name: f for f in dataclasses.fields(PrefixTuningConfig)}
    theirs = {f.name: f for f in dataclasses.fields(peft.PrefixTuningConfig)}
    assert list(ours) == list(theirs) + list(PREFIXLAB_FIELDS)
    assert all(ours[name].default is None and ours[name].metadata["help"] for name in PREFIXLAB_FIELDS)
    for name, field in theirs.items():
        assert ours[name].default == field.default, name
        assert ours[name].metadata.get("help") == field.metadata.get("help"), name


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", TaskType.CAUSAL_LM, peft.TaskType.CAUSAL_LM])
def test_task_type_accepts_strings_and_enums(task_type):
    config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4)
    assert config.task_type is TaskType.CAUSAL_LM
    assert config.peft_type is PeftType.PREFIX_TUNING


def test_to_dict_matches_peft_apart_from_version():
    ours = PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=20, encoder_hidden_size=32,
                              prefix_projection=True).to_json_dict()
    theirs = json.loads(json.dumps(peft.PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=20, encoder_hidden_size=32, prefix_projection=True).to_dict()))
    assert ours.pop("peft_version") is None and theirs.pop("peft_version")
    assert ours == theirs


def test_config_file_round_trips_with_peft(tmp_path):
    ours = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=7, prefix_projection=True,
                              encoder_hidden_size=16, init_weights="zero")
    ours.save_pretrained(tmp_path / "ours")
    loaded_in_peft = peft.PeftConfig.from_pretrained(str(tmp_path / "ours"))
    assert isinstance(loaded_in_peft, peft.PrefixTuningConfig)
    assert (loaded_in_peft.num_virtual_tokens, loaded_in_peft.encoder_hidden_size, loaded_in_peft.init_weights) == (
        7, 16, "zero")
    peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, num_layers=4).save_pretrained(
        str(tmp_path / "peft"))
    loaded = PrefixTuningConfig.from_pretrained(tmp_path / "peft")
    assert (loaded.task_type, loaded.num_virtual_tokens, loaded.num_layers) == (TaskType.SEQ_2_SEQ_LM, 3, 4)
    assert loaded.peft_version == peft.__version__  # kept from the file


def test_unknown_keys_from_newer_versions_are_dropped_with_a_warning():
    with pytest.warns(UserWarning, match="future_field"):
        config = PrefixTuningConfig.from_dict({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2,
                                               "future_field": 1})
    assert config.num_virtual_tokens == 2


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"num_virtual_tokens": 0}, r"num_virtual_tokens=0 .*at least 1"),
        ({"num_virtual_tokens": -3}, r"num_virtual_tokens=-3 .*at least 1"),
        ({"num_virtual_tokens": 2.5}, r"num_virtual_tokens=2\.5 .*whole number"),
        ({"num_virtual_tokens": "20"}, r"num_virtual_tokens='20' .*whole number"),
        ({"num_virtual_tokens": True}, r"num_virtual_tokens=True .*whole number"),
        ({"task_type": "SEQ_CLS"}, r"task_type='SEQ_CLS' .*'CAUSAL_LM'.*'SEQ_2_SEQ_LM'"),
        ({"task_type": "causal"}, r"task_type='causal' .*'CAUSAL_LM'"),
        ({"token_dim": 30, "num_attention_heads": 4}, r"token_dim=30 .*divisible by num_attention_heads=4"),
        ({"encoder_hidden_size": 0}, r"encoder_hidden_size=0 .*at least 1"),
        ({"encoder_hidden_size": -1, "prefix_projection": True}, r"encoder_hidden_size=-1 .*at least 1"),
        ({"init_weights": "gaussian"}, r"init_weights='gaussian' .*None .*'zero'"),
        ({"prefix_projection": "yes"}, r"prefix_projection='yes' .*True or False"),
        ({"num_layers": 0}, r"num_layers=0 .*at least 1"),
        ({"num_transformer_submodules": 3}, r"num_transformer_submodules=3 .*1 .*2"),
        ({"peft_type": "LORA"}, r"peft_type='LORA' .*PREFIX_TUNING"),
    ],
)
def test_bad_values_raise_naming_field_value_and_fix(kwargs, pattern):
    base = {"task_type": "CAUSAL_LM", "num_virtual_tokens": 4}
    with pytest.raises(ValueError, match=pattern):
        PrefixTuningConfig(**{**base, **kwargs})


@pytest.mark.parametrize(
    "kwargs, field, pattern",
    [
        ({"prefix_positions": "decoder"}, "prefix_positions",
         r"prefix_positions='decoder' is invalid: use None \(PEFT's layout.*\) or 'paper'"),
        ({"prefix_positions": True}, "prefix_positions", r"prefix_positions=True is invalid: use None"),
        ({"num_encoder_layers": 0}, "num_encoder_layers", r"num_encoder_layers=0 is invalid: .*at least 1"),
        ({"encoder_token_dim": "64"}, "encoder_token_dim", r"encoder_token_dim='64' is invalid: .*whole number"),
        ({"num_encoder_attention_heads": 2.0}, "num_encoder_attention_heads",
         r"num_encoder_attention_heads=2\.0 is invalid: .*whole number"),
        ({"encoder_token_dim": 30, "num_encoder_attention_heads": 4}, "encoder_token_dim",
         r"encoder_token_dim=30 .*divisible by num_encoder_attention_heads=4"),
        ({"prefix_tuning_init": "WORDS"}, "prefix_tuning_init",
         r"prefix_tuning_init='WORDS' is invalid: use None \(random, see init_weights\) or 'TEXT'"),
        ({"prefix_tuning_init": "TEXT"}, "prefix_tuning_init_text",
         r"prefix_tuning_init_text=None is invalid: prefix_tuning_init='TEXT' "
         r".*prefix_tuning_init_text='table-to-text:'"),
        ({"prefix_tuning_init": "TEXT", "prefix_tuning_init_text": "  "}, "prefix_tuning_init_text",
         r"prefix_tuning_init_text=None is invalid"),
        ({"prefix_tuning_init": "TEXT", "prefix_tuning_init_text": "x", "init_weights": "zero"}, "prefix_tuning_init",
         r"prefix_tuning_init='TEXT' is invalid: init_weights='zero' .*choose one"),
        ({"prefix_tuning_init": "TEXT", "prefix_tuning_init_text": 5}, "prefix_tuning_init_text",
         r"prefix_tuning_init_text=5 is invalid: .*text or None"),
        ({"tokenizer_name_or_path": ["gpt2"]}, "tokenizer_name_or_path",
         r"tokenizer_name_or_path=\['gpt2'\] is invalid: .*text or None"),
    ],
)
def test_bad_prefixlab_values_name_field_value_and_fix(kwargs, field, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, **kwargs)
    assert info.value.field == field


def test_prefixlab_values_are_normalised_and_unused_ones_warned_about():
    empty = PrefixTuningConfig(num_virtual_tokens=4, prefix_tuning_init_text="", tokenizer_name_or_path=" ")
    assert (empty.prefix_tuning_init_text, empty.tokenizer_name_or_path) == (None, None)  # empty form boxes
    assert PrefixTuningConfig(num_virtual_tokens=4, prefix_tuning_init="RANDOM").prefix_tuning_init is None
    text = PrefixTuningConfig(num_virtual_tokens=4, prefix_tuning_init=peft.PromptTuningInit.TEXT,
                              prefix_tuning_init_text="summarize")  # PEFT's prompt-tuning enum
    assert text.prefix_tuning_init == "TEXT"
    with pytest.warns(UserWarning, match=r"prefix_tuning_init_text set but prefix_tuning_init=None: .*ignored"):
        PrefixTuningConfig(num_virtual_tokens=4, prefix_tuning_init_text="summarize")


def test_prefixlab_fields_reach_to_dict_and_adapter_config_json_only_when_set(tmp_path):
    plain = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    assert not set(PREFIXLAB_FIELDS) & set(plain.to_dict())
    paper = PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prefix_positions="paper",
                               num_encoder_layers=2)
    paper.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {k: saved[k] for k in PREFIXLAB_FIELDS if k in saved} == {"prefix_positions": "paper",
                                                                      "num_encoder_layers": 2}
    assert PrefixTuningConfig.from_pretrained(tmp_path) == paper


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("projection", [False, True])
def test_infer_sizes_equals_peft_and_the_real_model(arch, projection):
    model_config = tiny_config(arch)
    filled = infer_sizes(ours_config(arch, projection), model_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = peft.get_peft_model(tiny_model(arch), peft_config(arch, projection)).peft_config["default"]
    for name in (*INFERRED_FIELDS, "encoder_hidden_size"):
        assert getattr(filled, name) == getattr(reference, name), name
    wrapped = get_peft_model(tiny_model(arch), ours_config(arch, projection))
    counts = prefix_parameter_counts(filled)
    trainable, _ = wrapped.get_nb_trainable_parameters()
    assert counts["trainable"] == trainable
    assert counts["stored"] == wrapped.get_prompt_embedding_to_save("default").numel()
    assert f"num_layers*2*token_dim = {filled.num_layers}*2*{filled.token_dim}" in counts["formula"]


def test_infer_sizes_grouped_query_attention_uses_key_value_heads():
    filled = infer_sizes(ours_config("llama", False), tiny_config("llama"))
    # 8 query heads, 2 key/value heads, explicit head_dim 16 (not 64 // 8)
    assert (filled.num_attention_heads, filled.token_dim) == (2, 32)
    assert kv_layout(ours_config("llama", False), tiny_config("llama")) == (2, 2, 16)


def test_infer_sizes_leaves_the_input_config_untouched():
    config = ours_config("gpt2", False)
    infer_sizes(config, tiny_config("gpt2"))
    assert all(getattr(config, name) is None for name in INFERRED_FIELDS)


class _OpaqueConfig(PretrainedConfig):
    model_type = "opaque"


@pytest.mark.parametrize(
    "explicit, pattern",
    [
        ({}, r"num_layers=None cannot be inferred.*set num_layers"),
        ({"num_layers": 2}, r"token_dim=None cannot be inferred.*set token_dim"),
        ({"num_layers": 2, "token_dim": 8}, r"num_attention_heads=None cannot be inferred.*set num_attention_heads"),
    ],
)
def test_model_without_size_fields_asks_for_them(explicit, pattern):
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, **explicit)
    with pytest.raises(ValueError, match=pattern):
        infer_sizes(config, _OpaqueConfig())


def test_model_without_size_fields_works_when_sizes_are_given():
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, num_layers=2, token_dim=8,
                                num_attention_heads=2)
    assert kv_layout(infer_sizes(config, _OpaqueConfig())) == (2, 2, 4)


@pytest.mark.parametrize(
    "arch, explicit, pattern",
    [
        ("gpt2", {"num_layers": 3}, r"num_layers=3 does not match the model .*2.*set num_layers=2"),
        ("gpt2", {"token_dim": 128}, r"token_dim=128 does not match the model .*64"),
        ("gpt2", {"num_attention_heads": 8}, r"num_attention_heads=8 does not match the model .*4"),
        ("t5", {"num_transformer_submodules": 1}, r"num_transformer_submodules=1 does not match the model .*2"),
        ("gpt2", {"task_type": "SEQ_2_SEQ_LM"}, r"task_type='SEQ_2_SEQ_LM' .*decoder-only.*'CAUSAL_LM'"),
        ("bart", {"task_type": "CAUSAL_LM"}, r"task_type='CAUSAL_LM' .*encoder-decoder.*'SEQ_2_SEQ_LM'"),
    ],
)
def test_sizes_that_do_not_match_the_model_raise(arch, explicit, pattern):
    config = dataclasses.replace(ours_config(arch, False), **explicit)
    with pytest.raises(ValueError, match=pattern):
        get_peft_model(tiny_model(arch), config)


def test_missing_prefix_length_and_task_type_are_reported_when_applied():
    with pytest.raises(ValueError, match=r"num_virtual_tokens=None .*prefix length"):
        infer_sizes(PrefixTuningConfig(task_type="CAUSAL_LM"), tiny_config("gpt2"))
    with pytest.raises(ValueError, match=r"task_type=None .*'CAUSAL_LM'"):
        infer_sizes(PrefixTuningConfig(num_virtual_tokens=3), tiny_config("gpt2"))


def test_explicit_sizes_that_match_are_accepted_like_peft():
    # A PEFT user writes the hidden size for a GQA model; PEFT (and we) turn it into the key/value layout.
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=64, num_attention_heads=8,
                                num_layers=2)
    filled = infer_sizes(config, tiny_config("llama"))
    assert (filled.token_dim, filled.num_attention_heads) == (32, 2)


def test_errors_carry_the_field_they_are_about():
    """Callers put a message beside its field from `.field`, never by reading the text."""
    from transformers import GPT2Config

    from prefixlab.core.config import ConfigError, infer_sizes

    with pytest.raises(ConfigError) as info:
        PrefixTuningConfig(num_virtual_tokens=0)
    assert info.value.field == "num_virtual_tokens" and str(info.value).startswith("num_virtual_tokens=0")
    with pytest.raises(ConfigError) as info:
        PrefixTuningConfig(num_virtual_tokens=4, init_weights="ones")
    assert info.value.field == "init_weights"
    gpt2 = GPT2Config(n_layer=2, n_embd=64, n_head=4)
    with pytest.raises(ConfigError) as info:
        infer_sizes(PrefixTuningConfig(num_virtual_tokens=4, num_layers=3, task_type="CAUSAL_LM"), gpt2)
    assert info.value.field == "num_layers"
    with pytest.raises(ConfigError) as info:
        infer_sizes(PrefixTuningConfig(num_virtual_tokens=4), gpt2, task_type="SEQ_2_SEQ_LM")
    assert info.value.field == "task_type"
    filled = infer_sizes(PrefixTuningConfig(num_virtual_tokens=4), gpt2, task_type="CAUSAL_LM")
    assert filled.task_type == "CAUSAL_LM" and filled.num_layers == 2
