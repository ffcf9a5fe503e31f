"""Model presets, loading from presets and folders, parameter counts, and fast clear failures."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, PreTrainedTokenizerFast, T5Config, ViTConfig

from prefixlab.core import hub
from prefixlab.engine import zoo
from prefixlab.core.config import TaskType
from prefixlab.engine.tiny import tiny_model, tiny_tokenizer

HUB_PRESETS = {
    "distilgpt2": TaskType.CAUSAL_LM, "gpt2": TaskType.CAUSAL_LM, "gpt2-medium": TaskType.CAUSAL_LM,
    "facebook/opt-125m": TaskType.CAUSAL_LM, "EleutherAI/pythia-160m": TaskType.CAUSAL_LM,
    "HuggingFaceTB/SmolLM2-135M": TaskType.CAUSAL_LM, "Qwen/Qwen2.5-0.5B": TaskType.CAUSAL_LM,
    "t5-small": TaskType.SEQ_2_SEQ_LM, "google/flan-t5-small": TaskType.SEQ_2_SEQ_LM,
    "facebook/bart-base": TaskType.SEQ_2_SEQ_LM,
}
OFFLINE = {"tiny-gpt2": ("gpt2", TaskType.CAUSAL_LM), "tiny-llama": ("llama", TaskType.CAUSAL_LM),
           "tiny-t5": ("t5", TaskType.SEQ_2_SEQ_LM)}
SHIPPED = {"tiny-gpt2-e2e": TaskType.CAUSAL_LM,  # offline, weights in presets/models (tests/test_pretrain.py,
           "tiny-llama-d2t": TaskType.CAUSAL_LM}  # tests/test_pretrain_d2t.py)


def test_presets_cover_the_issue_with_task_types():
    assert {n: p.task_type for n, p in zoo.MODEL_PRESETS.items() if not p.offline} == HUB_PRESETS
    offline = {n: t for n, (_, t) in OFFLINE.items()} | SHIPPED
    assert {n: p.task_type for n, p in zoo.MODEL_PRESETS.items() if p.offline} == offline
    assert all(p.description and p.name == n for n, p in zoo.MODEL_PRESETS.items())
    choices = zoo.describe_presets()
    assert [value for _, value in choices][:5] == list(offline) and len(choices) == 15
    assert choices[7] == (f"gpt2-medium: {zoo.MODEL_PRESETS['gpt2-medium'].description}", "gpt2-medium")
    assert all("no download" in label for label, name in choices if name in offline)


@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_presets_are_the_tiny_models(name):
    arch, task_type = OFFLINE[name]
    model, tokenizer, got_type = zoo.load_base(name)
    assert got_type == task_type and not model.training
    reference = tiny_model(arch)
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id) == (384, 0, 1)
    assert zoo.count_base_parameters(name) == sum(p.numel() for p in model.parameters())
    assert zoo.task_type_for(name) == task_type
    assert zoo.load_model_config(name).to_dict() == reference.config.to_dict()


@pytest.mark.parametrize("name", [*OFFLINE, *SHIPPED])
@pytest.mark.parametrize("prefix", [dict(num_virtual_tokens=5), dict(num_virtual_tokens=3, encoder_hidden_size=24)])
def test_offline_facts_without_transformers_equal_the_real_config(name, prefix):
    """The checks read an offline preset's config values without importing transformers
    (zoo.model_facts): the sizes, positions, task type and parameter count they give are the
    transformers config's and the built model's."""
    from prefixlab.core.config import PrefixTuningConfig, infer_sizes

    facts = zoo.model_facts(name)
    assert isinstance(facts.config, dict)
    config = zoo.load_model_config(name)
    real = config.to_dict()
    for key, value in facts.config.items():  # every value given is the real config's
        if key != "transformers_version":
            assert real[key] == value, key
    assert facts.task_type == zoo.task_type_of_config(config)
    assert facts.position_limit == zoo.position_limit(config)
    ours = infer_sizes(PrefixTuningConfig(**prefix), facts.config, facts.task_type)
    assert ours == infer_sizes(PrefixTuningConfig(**prefix), config, facts.task_type)
    model = zoo.load_base(name)[0]
    assert facts.parameters == sum(p.numel() for p in model.parameters())


def test_offline_presets_have_the_same_weights_in_another_process(tmp_path):
    code = ("import sys, torch; from prefixlab.engine import zoo\n"
            "torch.save({n: zoo.load_base(n)[0].state_dict() for n in sys.argv[2:]}, sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pt"), *OFFLINE], check=True,
                   cwd=Path(__file__).resolve().parents[1], capture_output=True)
    theirs = torch.load(tmp_path / "w.pt")
    for name in OFFLINE:
        ours = zoo.load_base(name)[0].state_dict()
        assert ours.keys() == theirs[name].keys()
        assert all(torch.equal(ours[k], theirs[name][k]) for k in ours), name


def test_dtype_is_applied():
    model, _, _ = zoo.load_base("tiny-llama", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in zoo.load_base("tiny-llama")[0].parameters()} == {torch.float32}


# ---------------------------------------------------------------------------------------------
# Local folders


def test_parameter_counts_from_a_config_alone_match_the_published_sizes(tmp_path):
    """GPT-2 small has 124,439,808 parameters and T5-small 60,506,624; only config.json is there."""
    GPT2Config().save_pretrained(tmp_path / "gpt2")
    T5Config().save_pretrained(tmp_path / "t5")
    assert zoo.count_base_parameters(str(tmp_path / "gpt2")) == 124_439_808
    assert zoo.count_base_parameters(str(tmp_path / "t5")) == 60_506_624
    assert zoo.task_type_for(str(tmp_path / "gpt2")) == TaskType.CAUSAL_LM
    assert zoo.task_type_for(str(tmp_path / "t5")) == TaskType.SEQ_2_SEQ_LM


@pytest.mark.parametrize("arch, task_type", [("gpt2", TaskType.CAUSAL_LM), ("t5", TaskType.SEQ_2_SEQ_LM)])
def test_local_folder_loads_the_saved_model(tmp_path, arch, task_type):
    reference = tiny_model(arch, seed=3)
    reference.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, tokenizer, got_type = zoo.load_base(str(tmp_path))
    assert got_type == task_type and not model.training
    ids = torch.tensor([[5, 6, 7, 1]])
    extra = {"decoder_input_ids": torch.tensor([[0, 9]])} if arch == "t5" else {}
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, **extra).logits, reference(input_ids=ids, **extra).logits)
    assert tokenizer("ab")["input_ids"] == tiny_tokenizer()("ab")["input_ids"]


def test_decoder_only_tokenizer_without_pad_gets_eos(tmp_path):
    tiny_model("gpt2", pad_token_id=None).save_pretrained(tmp_path)  # a config without a pad id, like GPT-2's
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path)
    model, tokenizer, _ = zoo.load_base(str(tmp_path))
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == 1
    assert model.generation_config.pad_token_id == 1


def test_unsupported_model_type_is_named(tmp_path):
    ViTConfig().save_pretrained(tmp_path)
    with pytest.raises(zoo.ModelLoadError, match=r"model type 'vit' is neither a causal LM nor a sequence-to-sequence"):
        zoo.task_type_for(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Failures: fast, one clear message


def test_hub_model_offline_fails_with_one_clear_message():
    assert hub.hub_offline()  # conftest sets HF_HUB_OFFLINE=1
    assert zoo.task_type_for("gpt2") == TaskType.CAUSAL_LM  # presets know their task type offline
    for call in (zoo.load_base, zoo.count_base_parameters, zoo.load_model_config):
        with pytest.raises(zoo.ModelLoadError) as info:
            call("gpt2")
        msg = str(info.value)
        assert msg.startswith("cannot load model 'gpt2' from the Hugging Face Hub")
        assert "HF_HUB_OFFLINE is set and 'gpt2' is not in the local cache" in msg
        assert "misspelt" in msg and "gated or private" in msg
        assert msg.endswith("use an offline preset: tiny-gpt2, tiny-llama, tiny-t5, tiny-gpt2-e2e, tiny-llama-d2t.")
        assert isinstance(info.value, ValueError)


def test_missing_and_empty_local_folders(tmp_path):
    with pytest.raises(zoo.ModelLoadError, match=r"no such folder /nonexistent/model; check the path.*tiny-gpt2"):
        zoo.load_base("/nonexistent/model")
    with pytest.raises(zoo.ModelLoadError, match=r"cannot load model from folder .*A model folder needs config\.json"):
        zoo.load_base(str(tmp_path))


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


def test_reachability_probe_both_ways():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        assert hub.hub_unreachable_reason(f"http://127.0.0.1:{server.server_port}", timeout=5) is None
    finally:
        thread.join(5)
        server.server_close()
    reason = hub.hub_unreachable_reason(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    assert reason is not None and reason.startswith("ConnectError")


def test_unreachable_hub_without_offline_flag_uses_the_cache_only(monkeypatch):
    """No HF_HUB_OFFLINE, but the Hub does not answer: fail at once instead of retrying for minutes."""
    monkeypatch.setattr(hub.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.hub_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(zoo.ModelLoadError) as info:
        zoo.load_base("HuggingFaceTB/SmolLM2-135M")
    msg = str(info.value)
    assert "does not answer (ConnectError" in msg and "is not in the local cache" in msg
    assert "tiny-gpt2, tiny-llama, tiny-t5" in msg
