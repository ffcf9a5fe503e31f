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


def test_set_prefix_states_copies_a_flat_prefix_and_solves_the_projection_s_output_layer():
    target = torch.randn(6, 96, generator=torch.Generator().manual_seed(1)) * 3
    flat = PrefixEncoder(_config(False))
    assert flat.set_prefix_states(target) == 0.0 and torch.equal(flat.prefix_states(), target)
    projected = PrefixEncoder(_config(True, encoder_hidden_size=12))
    embedding, first = projected.embedding.weight.clone(), projected.transform[0].weight.clone()
    error = projected.set_prefix_states(target)
    torch.testing.assert_close(projected.prefix_states().detach(), target, rtol=1e-5, atol=1e-5)
    assert error < 1e-5
    # Only the output layer changes: the embedding and the first layer keep their random values.
    assert torch.equal(projected.embedding.weight, embedding) and torch.equal(projected.transform[0].weight, first)


def test_set_prefix_states_is_a_best_fit_when_no_mlp_can_be_exact():
    """Two equal embedding rows give equal MLP outputs, so two different target rows cannot both be
    met: the least-squares fit is returned with its error (each gets the mean of the two)."""
    projected = PrefixEncoder(_config(True, encoder_hidden_size=12))
    with torch.no_grad():
        projected.embedding.weight[1] = projected.embedding.weight[0]
    target = torch.randn(6, 96, generator=torch.Generator().manual_seed(2))
    error = projected.set_prefix_states(target)
    assert error > 0.1
    torch.testing.assert_close(projected.prefix_states()[0].detach(), (target[0] + target[1]) / 2, rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match=r"prefix states of shape \(6, 95\) do not fit this encoder \(6, 96\)"):
        projected.set_prefix_states(torch.zeros(6, 95))


@pytest.mark.parametrize("projection", [False, True])
def test_paper_encoder_has_a_prefix_encoder_per_position(projection):
    from prefixlab.core.encoder import PaperPrefixEncoder

    config = PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=6, num_layers=3, token_dim=16,
                                num_attention_heads=4, num_transformer_submodules=2, prefix_positions="paper",
                                num_encoder_layers=2, encoder_token_dim=8, num_encoder_attention_heads=2,
                                encoder_hidden_size=10, prefix_projection=projection)
    encoder = PaperPrefixEncoder(config)
    widths = {"encoder_self_attention": 2 * 2 * 8, "decoder_self_attention": 3 * 2 * 16,
              "decoder_cross_attention": 3 * 2 * 16}
    assert {p: tuple(s.shape) for p, s in encoder.position_states().items()} == {p: (6, w) for p, w in widths.items()}
    assert encoder.prefix_states().shape == (6, sum(widths.values()))
    names = [n for n, _ in encoder.named_parameters()]
    assert names[0] == "encoder_self_attention.embedding.weight" and len(names) == (15 if projection else 3)
    counts = prefix_parameter_counts(config)
    assert counts["trainable"] == sum(p.numel() for p in encoder.parameters())
    assert counts["stored"] == encoder.prefix_states().numel()
