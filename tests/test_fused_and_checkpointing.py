"""One pass of the frozen base for every variant (core/fused.py), and gradient checkpointing that
keeps the prefix (PrefixTuningModel.gradient_checkpointing_enable): both must give exactly the losses
and gradients of the plain, separate passes, for causal and seq2seq models, both prefix variants and
padded batches."""

from __future__ import annotations

import pytest
import torch

from core_helpers import ARCH_TASK, ARCHS, is_seq2seq
from prefixlab import PrefixTuningConfig, get_peft_model
from prefixlab.core.fused import fused_losses, fusable
from prefixlab.engine.tiny import tiny_model

NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, dropout_rate=0.0, dropout=0.0,
                  attention_dropout=0.0, activation_dropout=0.0)


def paired_model(arch: str, checkpointing: bool = False, seed: int = 0):
    """Variants "plain" (no projection) and "mlp" (projection) on one tiny base, random prefixes."""
    task = ARCH_TASK[arch]
    torch.manual_seed(seed)
    model = get_peft_model(tiny_model(arch, **NO_DROPOUT), PrefixTuningConfig(task_type=task, num_virtual_tokens=4),
                           adapter_name="plain")
    model.add_adapter("mlp", PrefixTuningConfig(task_type=task, num_virtual_tokens=4, prefix_projection=True,
                                                encoder_hidden_size=16))
    with torch.no_grad():  # large prefixes, so a dropped or misplaced prefix shows in the losses
        for param in model.prompt_encoder.parameters():
            param.normal_(0, 1.0)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model


def padded(arch: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    if is_seq2seq(arch):
        labels = torch.randint(3, 300, (3, 5), generator=gen)
        labels[2, 3:] = -100
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def separate(model, batch) -> tuple[list[torch.Tensor], dict]:
    """Each variant's loss from its own pass (model.forward), and every prefix gradient."""
    model.zero_grad(set_to_none=True)
    losses = []
    for name in ("plain", "mlp"):
        model.set_adapter(name)
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
    return losses, prefix_grads(model)


def fused(model, batch) -> tuple[list[torch.Tensor], dict]:
    """Both variants' losses from one fused pass (fused_losses), and every prefix gradient."""
    model.zero_grad(set_to_none=True)
    losses = fused_losses(model, ["plain", "mlp"], **batch)
    sum(losses).backward()
    return [loss.detach() for loss in losses], prefix_grads(model)


def prefix_grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def linear_calls(model, batch) -> int:
    """How many times the base's leaf modules (linear layers, norms, ...) run in one forward and
    backward of each variant."""
    calls = []
    hooks = [m.register_forward_hook(lambda *args: calls.append(1)) for m in model.base_model.modules()
             if not list(m.children())]
    separate(model, batch)
    for hook in hooks:
        hook.remove()
    return len(calls)


def assert_same(expected, got) -> None:
    (losses_a, grads_a), (losses_b, grads_b) = expected, got
    torch.testing.assert_close(torch.stack(losses_b), torch.stack(losses_a), rtol=1e-6, atol=1e-6)
    assert set(grads_a) == set(grads_b) and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_fused_pass_gives_each_variant_its_own_loss_and_gradients(arch):
    model, batch = paired_model(arch), padded(arch)
    expected = separate(model, batch)
    losses, grads = fused(model, batch)
    assert_same(expected, (losses, grads))
    assert losses[0].item() != pytest.approx(losses[1].item())  # two different prefixes, two losses


def test_prefixes_of_different_lengths_do_not_share_a_pass():
    model = paired_model("gpt2")
    model.add_adapter("long", PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
    assert fusable(model, ["plain", "mlp"]) is None
    assert "differ in length ([4, 6] virtual tokens)" in fusable(model, ["plain", "long"])
    with pytest.raises(ValueError, match="cannot share a pass"):
        fused_losses(model, ["plain", "long"], **padded("gpt2"))


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointing_keeps_the_prefix_and_gives_exact_gradients(arch):
    batch = padded(arch)
    expected = separate(paired_model(arch), batch)
    model = paired_model(arch, checkpointing=True)
    assert_same(expected, separate(model, batch))
    # Every block ran again in backward (its linear layers were called again): the memory traded away.
    assert linear_calls(model, batch) > linear_calls(paired_model(arch), batch)
    # And the fused pass under checkpointing.
    assert_same(expected, fused(model, batch))


def test_a_base_with_transformers_checkpointing_is_taken_over():
    """transformers' own checkpointing drops the cache and with it the prefix (PEFT #869): ours
    replaces it, so the prefix still trains; generation is unaffected; disable restores the blocks."""
    base = tiny_model("gpt2", **NO_DROPOUT)
    base.gradient_checkpointing_enable()
    model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert model.is_gradient_checkpointing and not base.is_gradient_checkpointing
    model.train()
    batch = padded("gpt2")
    model(**batch).loss.backward()
    assert model.prompt_encoder["default"].embedding.weight.grad.abs().sum() > 0
    model.eval()
    out = model.generate(input_ids=batch["input_ids"][:1, :3], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing and all("forward" not in vars(m) for m in base.modules())
