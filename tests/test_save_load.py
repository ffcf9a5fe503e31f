"""Adapters on disk: PEFT's files both ways, several adapters, and clear errors for bad directories."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from safetensors.torch import load_file

from core_helpers import ARCHS, ours_config, padded_batch, peft_pair, randomize_prefix
from prefixlab import PrefixTuningModel, get_peft_model
from prefixlab.core.config import AdapterFileError
from prefixlab.engine.tiny import tiny_model

PARAMS = [(arch, projection) for arch in ARCHS for projection in (False, True)]


def _logits(model, arch):
    with torch.no_grad():
        return model(**padded_batch(arch)).logits


@pytest.mark.parametrize("arch, projection", PARAMS)
def test_saved_by_prefixlab_loads_in_peft_with_the_same_logits(arch, projection, tmp_path):
    ours = get_peft_model(tiny_model(arch), ours_config(arch, projection))
    randomize_prefix(ours)
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    config = ours.active_peft_config
    assert list(tensors) == ["prompt_embeddings"]
    assert tensors["prompt_embeddings"].shape == (config.num_virtual_tokens, config.num_layers * 2 * config.token_dim)
    assert tensors["prompt_embeddings"].dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(tiny_model(arch), str(tmp_path))
    torch.testing.assert_close(_logits(loaded, arch), _logits(ours, arch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, projection", PARAMS)
def test_saved_by_peft_loads_in_prefixlab_with_the_same_logits(arch, projection, tmp_path):
    ours, ref = peft_pair(arch, projection)
    ref.save_pretrained(str(tmp_path))
    loaded = PrefixTuningModel.from_pretrained(tiny_model(arch), str(tmp_path))
    torch.testing.assert_close(_logits(loaded, arch), _logits(ref, arch), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_loaded = peft.PeftModel.from_pretrained(tiny_model(arch), str(tmp_path))
    assert loaded.get_nb_trainable_parameters() == peft_loaded.get_nb_trainable_parameters()


def test_round_trip_keeps_config_and_generations(tmp_path):
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", True, encoder_hidden_size=24))
    randomize_prefix(ours)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["inference_mode"] is True and saved["peft_type"] == "PREFIX_TUNING"
    assert saved["encoder_hidden_size"] == 24 and saved["prefix_projection"] is True
    assert ours.active_peft_config.inference_mode is False  # saving does not change the live config
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), tmp_path)
    prompt = padded_batch("gpt2")["input_ids"][:1]
    assert torch.equal(loaded.generate(input_ids=prompt, max_new_tokens=5),
                       ours.generate(input_ids=prompt, max_new_tokens=5))


def test_several_adapters_save_in_peft_layout_and_load_by_name(tmp_path):
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False), adapter_name="default")
    model.add_adapter("projection", ours_config("gpt2", True))
    randomize_prefix(model, "default", seed=1)
    randomize_prefix(model, "projection", seed=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    assert (tmp_path / "projection" / "adapter_model.safetensors").exists()
    other = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), tmp_path)
    other.load_adapter(tmp_path / "projection", "projection")
    for name in ("default", "projection"):
        model.set_adapter(name)
        other.set_adapter(name)
        torch.testing.assert_close(_logits(other, "gpt2"), _logits(model, "gpt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_peft = peft.PeftModel.from_pretrained(tiny_model("gpt2"), str(tmp_path / "projection"))
    torch.testing.assert_close(_logits(in_peft, "gpt2"), _logits(model, "gpt2"), rtol=1e-4, atol=1e-5)


def test_flat_adapter_can_be_loaded_for_further_training(tmp_path):
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    randomize_prefix(model)
    model.save_pretrained(tmp_path)
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), tmp_path, is_trainable=True)
    assert loaded.active_peft_config.inference_mode is False
    assert loaded.trainable_parameter_names() == ["prompt_encoder.default.embedding.weight"]


@pytest.fixture
def saved(tmp_path):
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", True))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_missing_directory_or_files_are_reported(saved, tmp_path):
    with pytest.raises(AdapterFileError, match=r"nowhere/adapter_config\.json: file not found"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), str(tmp_path / "nowhere"))
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors: file not found"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), saved)


def test_corrupt_files_are_reported(saved):
    (saved / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors: cannot read the weights"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), saved)
    (saved / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING",\n "num_virtual_tokens": }')
    with pytest.raises(AdapterFileError, match=r"adapter_config\.json: not valid JSON \(line 2"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), saved)


def test_bad_values_in_the_config_file_are_reported(saved):
    data = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**data, "num_virtual_tokens": 0}))
    with pytest.raises(AdapterFileError, match=r"adapter_config\.json: num_virtual_tokens=0"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), saved)
    (saved / "adapter_config.json").write_text(json.dumps({**data, "peft_type": "LORA"}))
    with pytest.raises(AdapterFileError, match=r"peft_type='LORA' is not a prefix-tuning adapter"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), saved)


def test_adapter_for_a_different_base_model_shape_is_refused(saved):
    with pytest.raises(AdapterFileError, match=r"different base model shape: num_layers=2 does not match.*3"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2", n_layer=3), saved)
    with pytest.raises(AdapterFileError, match=r"different base model shape: token_dim=64 does not match.*128"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2", n_embd=128), saved)


def test_weights_of_the_wrong_shape_are_refused(saved):
    data = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**data, "num_virtual_tokens": 7}))
    with pytest.raises(AdapterFileError, match=r"prompt_embeddings has shape \(5, 256\).*needs \(7, 256\)"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), saved)


def test_projection_adapter_cannot_resume_training(saved):
    with pytest.raises(AdapterFileError, match=r"prefix_projection=True.*is_trainable=False"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), saved, is_trainable=True)


def test_failed_load_adapter_leaves_no_half_adapter(saved, tmp_path):
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterFileError):
        model.load_adapter(saved, "broken")
    assert list(model.peft_config) == ["default"] and list(model.prompt_encoder) == ["default"]
