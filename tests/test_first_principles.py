"""Prefix tuning from first principles, without peft.

If the prefix is set to the key/values the frozen model computes for a real token sequence S, the
model continuing with X must give exactly the logits of running S followed by X with no prefix
(Li & Liang 2021, section 4.2: the prefix acts as if it were the activations of virtual tokens).
"""

from __future__ import annotations

import pytest
import torch

from prefixlab import PrefixTuningConfig, get_peft_model
from prefixlab.core.model import layer_rows
from prefixlab.engine.tiny import tiny_model


def _kv_of(model, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (key, value), each (1, kv_heads, len(tokens), head_dim), from the model's own cache."""
    with torch.no_grad():
        out = model(input_ids=tokens, use_cache=True)
    cache = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5.24
    return [(layer.keys, layer.values) for layer in cache.layers]


def _set_prefix_to(wrapped, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write per-layer key/values into the flat prefix (n, num_layers*2*token_dim)."""
    config = wrapped.active_peft_config
    n, heads = config.num_virtual_tokens, config.num_attention_heads
    weight = wrapped.prompt_encoder["default"].embedding.weight
    rows = weight.detach().view(n, config.num_layers * 2, heads, config.token_dim // heads).clone()
    for (key_row, value_row), (key, value) in zip(layer_rows(config), kv):
        rows[:, key_row] = key[0].permute(1, 0, 2)  # (heads, n, head_dim) -> (n, heads, head_dim)
        rows[:, value_row] = value[0].permute(1, 0, 2)
    with torch.no_grad():
        weight.copy_(rows.view(n, -1))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prefix_equal_to_real_key_values_continues_the_sequence(arch):
    gen = torch.Generator().manual_seed(7)
    s_tokens = torch.randint(3, 300, (1, 6), generator=gen)
    x_tokens = torch.randint(3, 300, (2, 5), generator=gen)
    base = tiny_model(arch)
    with torch.no_grad():
        full = base(input_ids=torch.cat([s_tokens.expand(2, -1), x_tokens], 1)).logits[:, 6:]
    kv = _kv_of(base, s_tokens)
    wrapped = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
    _set_prefix_to(wrapped, kv)
    with torch.no_grad():
        got = wrapped(input_ids=x_tokens, attention_mask=torch.ones_like(x_tokens)).logits
        alone = base(input_ids=x_tokens).logits
    torch.testing.assert_close(got, full, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone, full, atol=1e-3)  # X alone is different: the prefix carries S


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_with_real_key_values_continues_like_the_full_prompt(arch):
    """Greedy generate from X with the prefix = kv(S) equals greedy generate from S+X without a prefix."""
    gen = torch.Generator().manual_seed(11)
    s_tokens = torch.randint(3, 300, (1, 4), generator=gen)
    x_tokens = torch.randint(3, 300, (1, 3), generator=gen)
    base = tiny_model(arch)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    full = base.generate(input_ids=torch.cat([s_tokens, x_tokens], 1), **kwargs)[:, 4:]
    wrapped = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    _set_prefix_to(wrapped, _kv_of(base, s_tokens))
    assert torch.equal(wrapped.generate(input_ids=x_tokens, **kwargs), full)
