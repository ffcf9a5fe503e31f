"""Training through the wrapper: the loss falls, the base never changes, adapters train independently."""

from __future__ import annotations

import pytest
import torch

from core_helpers import ARCHS, ours_config, padded_batch, peft_config
from prefixlab import get_peft_model
from prefixlab.engine.tiny import tiny_model


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_bit_identical(before: dict[str, torch.Tensor], model) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("projection", [False, True])
def test_adamw_lowers_the_loss_and_leaves_the_base_untouched(arch, projection, seed):
    base = tiny_model(arch)
    before = _snapshot(base)
    model = get_peft_model(base, ours_config(arch, projection))  # eval mode: no dropout, deterministic
    batch = padded_batch(arch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Random tiny models start near ln(vocab) and a prefix has little leverage on them: ask for a
    # clear, not a large, drop (the smallest seen is ~0.18 nats, bart without projection).
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(p.grad is None for p in base.parameters())
    _assert_bit_identical(before, base)


def test_two_adapters_on_one_base_step_in_lockstep(seed):
    """The trainer's pattern: forward/backward adapter A, set_adapter(B), forward/backward B, step both."""
    base = tiny_model("gpt2")
    before = _snapshot(base)
    model = get_peft_model(base, ours_config("gpt2", False), adapter_name="no_projection")
    model.add_adapter("projection", ours_config("gpt2", True))
    assert model.active_adapter == "no_projection"  # add_adapter does not switch, as in PEFT
    encoders = model.prompt_encoder
    optimizers = {name: torch.optim.AdamW(encoders[name].parameters(), lr=0.1) for name in encoders}
    batch = padded_batch("gpt2")
    first, last = {}, {}
    for step in range(25):
        for name in ("no_projection", "projection"):
            model.set_adapter(name)
            other = next(n for n in encoders if n != name)
            other_grads = [None if p.grad is None else p.grad.clone() for p in encoders[other].parameters()]
            optimizers[name].zero_grad()
            loss = model(**batch).loss
            loss.backward()
            # the inactive adapter gets no gradient from this backward
            for param, grad in zip(encoders[other].parameters(), other_grads):
                assert (param.grad is None and grad is None) or torch.equal(param.grad, grad)
            optimizers[name].step()
            first.setdefault(name, loss.item())
            last[name] = loss.item()
    for name in encoders:
        assert last[name] < first[name] - 0.1, (name, first[name], last[name])
    _assert_bit_identical(before, base)


def test_backward_reaches_only_the_active_adapter():
    model = get_peft_model(tiny_model("t5"), ours_config("t5", False), adapter_name="a")
    model.add_adapter("b", ours_config("t5", True))
    model.set_adapter("b")
    model(**padded_batch("t5")).loss.backward()
    assert all(p.grad is not None for p in model.prompt_encoder["b"].parameters())
    assert all(p.grad is None for p in model.prompt_encoder["a"].parameters())
    # a per-call adapter_name overrides the active one without switching it
    model(**padded_batch("t5"), adapter_name="a").loss.backward()
    assert model.prompt_encoder["a"].embedding.weight.grad is not None
    assert model.active_adapter == "b"


def test_trainable_names_per_adapter_and_errors():
    model = get_peft_model(tiny_model("llama"), ours_config("llama", False), adapter_name="flat")
    model.add_adapter("mlp", ours_config("llama", True, encoder_hidden_size=8))
    assert model.trainable_parameter_names("flat") == ["prompt_encoder.flat.embedding.weight"]
    assert len(model.trainable_parameter_names("mlp")) == 5
    assert len(model.trainable_parameter_names()) == 6
    with pytest.raises(ValueError, match=r"adapter_name='missing' not found; adapters: \['flat', 'mlp'\]"):
        model.set_adapter("missing")
    with pytest.raises(ValueError, match=r"adapter_name='mlp' already exists"):
        model.add_adapter("mlp", ours_config("llama", True))
    model.set_adapter("mlp")
    model.delete_adapter("mlp")
    assert (model.active_adapter, list(model.prompt_encoder)) == ("flat", ["flat"])
    with pytest.raises(ValueError, match=r"cannot delete 'flat': it is the only adapter"):
        model.delete_adapter("flat")


@pytest.mark.parametrize("name", ["a.b", "", "update", 5])
def test_a_refused_adapter_name_leaves_no_half_added_adapter(name, tmp_path):
    """ModuleDict refuses these names; the error names the adapter, and the model stays whole: it
    saves, and its adapters are still the one it had."""
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    fix = "it is the name of a torch.nn.ModuleDict attribute; rename it" if name == "update" else "use letters, digits"
    with pytest.raises(ValueError, match=rf"adapter_name=.* cannot name an adapter \(.*\); {fix}"):
        model.add_adapter(name, ours_config("gpt2", True))
    assert list(model.peft_config) == list(model.prompt_encoder) == ["default"]
    model.save_pretrained(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_peft_s_config_is_converted_and_other_methods_are_refused():
    """PEFT's PrefixTuningConfig has the same fields: it is accepted as prefixlab's. A LoRA config is
    refused with a message that says prefixlab does prefix tuning only."""
    import peft

    model = get_peft_model(tiny_model("gpt2"), peft_config("gpt2", True))
    ours = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", True))
    converted, native = (m.peft_config["default"].to_dict() for m in (model, ours))
    assert converted.pop("peft_version") == peft.__version__ and native.pop("peft_version") is None
    assert type(model.peft_config["default"]) is type(ours.peft_config["default"]) and converted == native
    with pytest.raises(ValueError, match=r"got peft\..*LoraConfig for LORA; prefixlab implements prefix tuning only"):
        model.add_adapter("lora", peft.LoraConfig(task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match=r"must be a PrefixTuningConfig .*got builtins\.dict$"):
        model.add_adapter("d", {"num_virtual_tokens": 4})


