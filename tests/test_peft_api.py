"""PEFT's PeftModel surface beyond forward/generate/save/load: disable_adapter, get_base_model,
active_adapters, eval mode on load, token_type_ids, save_pretrained's keywords, push_to_hub and
adapters fetched from the Hub. PEFT is the oracle wherever it runs offline."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import huggingface_hub
import peft
import pytest
import torch

from core_helpers import ours_config, padded_batch, peft_pair, randomize_prefix
from prefixlab import PrefixTuningModel, get_peft_model
from prefixlab.core.config import AdapterFileError
from prefixlab.engine.tiny import tiny_model


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _peft_load(path, arch="gpt2", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(tiny_model(arch), str(path), **kwargs)


@pytest.fixture
def saved(tmp_path):
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", True)).eval()
    randomize_prefix(ours)
    ours.save_pretrained(tmp_path / "adapter")
    return ours, tmp_path / "adapter"


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_disable_adapter_gives_the_base_model_as_peft_does(arch):
    ours, ref = peft_pair(arch, projection=True)
    ours.eval(), ref.eval()
    batch = padded_batch(arch)
    with_prefix = _logits(ours, batch)
    with ours.disable_adapter(), ref.disable_adapter():
        base = _logits(ours, batch)
        torch.testing.assert_close(base, _logits(ref, batch), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(base, _logits(ours.get_base_model(), batch), rtol=0, atol=0)
        with ours.disable_adapter():  # nested: still off after the inner block
            pass
        torch.testing.assert_close(_logits(ours, batch), base, rtol=0, atol=0)
    assert not torch.allclose(base, with_prefix, atol=1e-3)  # the prefix matters, so the test could fail
    torch.testing.assert_close(_logits(ours, batch), with_prefix, rtol=0, atol=0)  # back on after the block


def test_disable_adapter_also_switches_generate_off():
    ours, _ = peft_pair("gpt2", projection=False)
    prompt = torch.tensor([[5, 6, 7, 8]])
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                  output_scores=True)
    with ours.disable_adapter():
        off = ours.generate(input_ids=prompt, **kwargs)
    base = ours.get_base_model().generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert torch.equal(off.sequences, base.sequences)
    torch.testing.assert_close(torch.stack(off.scores), torch.stack(base.scores), rtol=0, atol=0)
    on = ours.generate(input_ids=prompt, **kwargs)
    assert not torch.allclose(torch.stack(on.scores), torch.stack(off.scores), atol=1e-3)


def test_active_adapters_and_get_base_model_are_peft_s():
    ours, ref = peft_pair("gpt2", projection=False)
    assert ours.active_adapters == ref.active_adapters == ["default"]
    ours.add_adapter("other", ours_config("gpt2", False))
    ours.set_adapter("other")
    assert ours.active_adapters == ["other"]
    assert type(ours.get_base_model()) is type(ref.get_base_model())
    assert ours.get_base_model() is ours.base_model


def test_loading_for_inference_switches_dropout_off_as_peft_does(saved):
    _, path = saved
    base = tiny_model("gpt2").train()
    assert base.config.resid_pdrop > 0  # dropout is there to switch off
    ours, ref = PrefixTuningModel.from_pretrained(base, path), _peft_load(path)
    assert ours.training is ref.training is False
    batch = padded_batch("gpt2")
    torch.testing.assert_close(_logits(ours, batch), _logits(ours, batch), rtol=0, atol=0)
    ours = get_peft_model(tiny_model("gpt2").train(), ours_config("gpt2", False))
    ours.load_adapter(path, "loaded")
    assert not ours.training and not ours.get_base_model().training


def test_loading_for_training_leaves_the_mode_alone(tmp_path):
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    ours.save_pretrained(tmp_path)
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2").train(), tmp_path, is_trainable=True)
    assert loaded.training


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_token_type_ids_are_dropped_with_peft_s_warning(arch):
    ours, ref = peft_pair(arch, projection=False)
    ours.eval(), ref.eval()
    batch = padded_batch(arch)
    typed = {**batch, "token_type_ids": torch.ones_like(batch["input_ids"])}
    with pytest.warns(UserWarning, match="Token type ids are not supported"):
        ours_typed = _logits(ours, typed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_typed = _logits(ref, typed)
    torch.testing.assert_close(ours_typed, ref_typed, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_typed, _logits(ours, batch), rtol=0, atol=0)
    # With the adapter disabled, forward is the base model's own, token_type_ids included (PEFT swaps
    # in the base forward): on GPT-2, which adds them to its input embeddings, that shows.
    with ours.disable_adapter(), ref.disable_adapter():
        torch.testing.assert_close(_logits(ours, typed), _logits(ref, typed), rtol=1e-4, atol=1e-5)
        if arch == "gpt2":
            assert not torch.allclose(_logits(ours, typed), _logits(ours, batch), atol=1e-3)


def test_generate_drops_token_type_ids_too():
    ours, _ = peft_pair("gpt2", projection=False)
    prompt = torch.tensor([[5, 6, 7, 8]])
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    with pytest.warns(UserWarning, match="Token type ids are not supported"):
        typed = ours.generate(input_ids=prompt, token_type_ids=torch.ones_like(prompt), **kwargs)
    torch.testing.assert_close(torch.stack(typed.scores), torch.stack(ours.generate(input_ids=prompt, **kwargs).scores),
                               rtol=0, atol=0)


def test_save_pretrained_keywords(saved, tmp_path):
    ours, _ = saved
    batch = padded_batch("gpt2")
    ours.save_pretrained(tmp_path / "bin", safe_serialization=False, state_dict=ours.state_dict(),
                         save_embedding_layers="auto")
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["README.md", "adapter_config.json", "adapter_model.bin"]
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), tmp_path / "bin")
    torch.testing.assert_close(_logits(loaded, batch), _logits(ours, batch), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_logits(_peft_load(tmp_path / "bin").eval(), batch), _logits(ours, batch),
                               rtol=1e-4, atol=1e-5)
    ours.save_pretrained(tmp_path / "not-main", is_main_process=False)
    assert not (tmp_path / "not-main").exists()
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['safe_serialisation'\]"):
        ours.save_pretrained(tmp_path / "typo", safe_serialisation=False)
    assert not (tmp_path / "typo").exists()


class FakeHub:
    """huggingface_hub.HfApi's create_repo/upload_folder, keeping a copy of what was uploaded."""

    def __init__(self, store: Path):
        self.store, self.calls = store, []

    def __call__(self, token=None):
        self.calls.append(("HfApi", token))
        return self

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        full = repo_id if "/" in repo_id else f"me/{repo_id}"  # the Hub puts a bare name under the user
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{full}")

    def upload_folder(self, repo_id, folder_path, commit_message, revision=None, create_pr=False):
        self.calls.append(("upload_folder", repo_id, commit_message, revision, create_pr))
        shutil.copytree(folder_path, self.store / repo_id)
        return "commit-info"


def test_push_to_hub_uploads_the_adapter_only_and_it_loads_back(saved, tmp_path, monkeypatch):
    ours, _ = saved
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    assert ours.push_to_hub("prefix", private=True, token="t") == "commit-info"
    assert hub.calls == [("HfApi", "t"), ("create_repo", "prefix", True, True),
                         ("upload_folder", "me/prefix", "Upload prefix-tuning adapter", None, False)]
    uploaded = tmp_path / "hub" / "me" / "prefix"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (uploaded / "adapter_model.safetensors").stat().st_size < 100_000  # no base weights
    assert 'PeftModel.from_pretrained(base, "me/prefix")' in (uploaded / "README.md").read_text()  # the card names it
    batch = padded_batch("gpt2")
    torch.testing.assert_close(_logits(_peft_load(uploaded).eval(), batch), _logits(ours, batch),
                               rtol=1e-4, atol=1e-5)


def test_from_pretrained_fetches_a_hub_adapter_with_subfolder(saved, tmp_path, monkeypatch):
    ours, path = saved
    repo = tmp_path / "snapshot"
    shutil.copytree(path, repo / "sub")
    calls = []

    def snapshot_download(repo_id, allow_patterns, local_files_only, **kwargs):
        calls.append((repo_id, sorted(allow_patterns), local_files_only, kwargs))
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr("prefixlab.core.hub.cache_only", lambda name: (False, None))
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), "me/prefix", subfolder="sub", revision="v1")
    assert calls == [("me/prefix", ["sub/adapter_config.json", "sub/adapter_model.bin",
                                    "sub/adapter_model.safetensors"], False, {"revision": "v1"})]
    batch = padded_batch("gpt2")
    torch.testing.assert_close(_logits(loaded, batch), _logits(ours, batch), rtol=1e-5, atol=1e-6)
    loaded.load_adapter(str(repo), "local", subfolder="sub")  # a local folder with a subfolder: no Hub
    assert len(calls) == 1
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), "me/prefix", revison="v1")


def test_a_hub_adapter_that_cannot_be_fetched_says_why_and_what_to_do(monkeypatch):
    def snapshot_download(repo_id, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr("prefixlab.core.hub.cache_only", lambda name: (True, "HF_HUB_OFFLINE is set"))
    with pytest.raises(AdapterFileError) as err:
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), "me/missing")
    assert str(err.value) == (
        "adapter 'me/missing' is not a local folder and could not be fetched from the Hugging Face Hub "
        "(LocalEntryNotFoundError: Cannot find the requested files in the disk cache); HF_HUB_OFFLINE is set "
        "and it is not in the local cache. Pass the folder save_pretrained wrote (a relative one as ./name), or "
        "check the repo id, its access rights and your network")


def test_from_pretrained_with_a_config_object_uses_it_instead_of_the_file(saved):
    ours, path = saved
    (path / "adapter_config.json").unlink()
    config = ours_config("gpt2", True)
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), path, config=config)
    batch = padded_batch("gpt2")
    torch.testing.assert_close(_logits(loaded, batch), _logits(ours, batch), rtol=1e-5, atol=1e-6)
    assert loaded.active_peft_config.inference_mode and config.inference_mode is False  # not mutated


PEFT_LOAD_KEYWORDS = dict(torch_device="cpu", autocast_adapter_dtype=False, ephemeral_gpu_offload=False,
                          low_cpu_mem_usage=True)


def test_peft_s_loading_keywords_run_unchanged_with_peft_s_result(saved):
    ours, path = saved
    batch = padded_batch("gpt2")
    ref = _peft_load(path, **PEFT_LOAD_KEYWORDS).eval()  # the same call, in PEFT
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), path, **PEFT_LOAD_KEYWORDS)
    torch.testing.assert_close(_logits(loaded, batch), _logits(ref, batch), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_logits(loaded, batch), _logits(ours, batch), rtol=1e-5, atol=1e-6)
    ref.load_adapter(str(path), "again", **PEFT_LOAD_KEYWORDS)
    loaded.load_adapter(path, "again", **PEFT_LOAD_KEYWORDS)
    loaded.set_adapter("again"), ref.set_adapter("again")
    torch.testing.assert_close(_logits(loaded, batch), _logits(ref, batch), rtol=1e-4, atol=1e-5)


def test_torch_device_is_where_the_file_is_read_and_the_prefix_stays_with_the_model(saved, monkeypatch):
    from prefixlab.core import model as model_module

    _, path = saved
    reads, real = [], model_module.load_file
    monkeypatch.setattr(model_module, "load_file", lambda file, device: reads.append(device) or real(file, device=device))
    loaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), path, torch_device=torch.device("cpu"))
    assert reads == ["cpu"]
    assert {p.device for p in loaded.prompt_encoder.parameters()} == {loaded.device}


def test_bad_loading_keywords_are_named_and_add_nothing(saved):
    _, path = saved
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    with pytest.raises(ValueError, match=r"torch_device='gpu0' cannot be used here \(Invalid device string"):
        ours.load_adapter(path, "bad", torch_device="gpu0")
    with pytest.raises(ValueError, match=r"torch_device='cuda:99' cannot be used here .*leave it None"):
        PrefixTuningModel.from_pretrained(tiny_model("gpt2"), path, torch_device="cuda:99")  # no machine has it
    with pytest.raises(ValueError, match="key_mapping=.* no layer keys"):
        ours.load_adapter(path, "bad", key_mapping={"prompt": "x"})
    with pytest.raises(ValueError):  # PEFT refuses a key_mapping for a prefix adapter too
        _peft_load(path, key_mapping={"prompt": "x"})
    assert list(ours.peft_config) == ["default"] and list(ours.prompt_encoder) == ["default"]
