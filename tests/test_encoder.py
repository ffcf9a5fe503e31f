"""PrefixEncoder: shapes, names, initialisation and outputs equal to PEFT's PrefixEncoder."""

from __future__ import annotations

import peft
import pytest
import torch

from prefixlab import PrefixEncoder, PrefixTuningConfig
from prefixlab.core.encoder import prefix_parameter_counts


def _config(projection: bool, **extra) -> PrefixTuningConfig:
    sizes = dict(task_type="CAUSAL_LM", num_virtual_tokens=6, num_layers=3, token_dim=16, num_attention_heads=4)
    return PrefixTuningConfig(prefix_projection=projection, **{**sizes, **extra})


def test_flat_encoder_shape_and_names():
    encoder = PrefixEncoder(_config(False))
    assert {n: tuple(p.shape) for n, p in encoder.named_parameters()} == {"embedding.weight": (6, 3 * 2 * 16)}
    assert encoder.prefix_states().shape == (6, 96)


def test_projection_encoder_shape_and_names():
    encoder = PrefixEncoder(_config(True, encoder_hidden_size=10))
    assert {n: tuple(p.shape) for n, p in encoder.named_parameters()} == {
        "embedding.weight": (6, 16),
        "transform.0.weight": (10, 16),
        "transform.0.bias": (10,),
        "transform.2.weight": (96, 10),
        "transform.2.bias": (96,),
    }
    assert isinstance(encoder.transform[1], torch.nn.Tanh)


def test_encoder_hidden_size_none_falls_back_to_token_dim():
    encoder = PrefixEncoder(_config(True))
    assert encoder.transform[0].out_features == 16


def test_inference_mode_keeps_only_the_projected_prefix_as_peft():
    encoder = PrefixEncoder(_config(True, inference_mode=True))
    assert [n for n, _ in encoder.named_parameters()] == ["embedding.weight"]
    assert encoder.embedding.weight.shape == (6, 96)


@pytest.mark.parametrize("projection", [False, True])
def test_zero_init_gives_a_zero_prefix(projection):
    encoder = PrefixEncoder(_config(projection, init_weights="zero"))
    assert torch.count_nonzero(encoder.prefix_states()) == 0
    assert torch.count_nonzero(PrefixEncoder(_config(projection)).prefix_states()) > 0


@pytest.mark.parametrize("projection", [False, True])
def test_outputs_equal_peft_prefix_encoder(projection, seed):
    ours = PrefixEncoder(_config(projection, encoder_hidden_size=12))
    theirs = peft.PrefixEncoder(peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=6, num_layers=3, token_dim=16, num_attention_heads=4,
        encoder_hidden_size=12, prefix_projection=projection))
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict(ours.state_dict())
    indices = torch.arange(6).expand(2, 6)  # (batch, n), PEFT's input
    expected = theirs(indices)  # (batch, n, num_layers*2*token_dim)
    torch.testing.assert_close(ours(indices), expected)
    torch.testing.assert_close(ours.prefix_states(), expected[0])


@pytest.mark.parametrize("projection", [False, True])
def test_counts_equal_the_built_encoder(projection):
    config = _config(projection, encoder_hidden_size=12)
    counts = prefix_parameter_counts(config)
    encoder = PrefixEncoder(config)
    assert counts["trainable"] == sum(p.numel() for p in encoder.parameters())
    assert counts["stored"] == encoder.prefix_states().numel() == 6 * 96


def test_encoder_needs_sizes():
    with pytest.raises(ValueError, match=r"num_layers=None: .*get_peft_model"):
        PrefixEncoder(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=8))


def test_load_prompt_embeddings_checks_shape_and_projection():
    flat = PrefixEncoder(_config(False))
    values = torch.randn(6, 96)
    flat.load_prompt_embeddings(values)
    assert torch.equal(flat.prefix_states(), values)
    with pytest.raises(ValueError, match=r"shape \(6, 48\).*expects \(6, 96\)"):
        flat.load_prompt_embeddings(torch.randn(6, 48))
    with pytest.raises(ValueError, match="prefix_projection=True.*is_trainable=False"):
        PrefixEncoder(_config(True)).load_prompt_embeddings(values)
