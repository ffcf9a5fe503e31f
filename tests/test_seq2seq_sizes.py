"""Prefix sizes of encoder-decoder models whose decoder differs from the encoder or whose attention
width is not d_model, checked against the real model, first principles and PEFT.

The prefix feeds the decoder's self-attention, so its layers and heads are the decoder's (T5
num_decoder_layers, BART decoder_layers / decoder_attention_heads), and T5-family configs give the
per-head size d_kv, whose product with num_heads need not be d_model (google/flan-t5-small: 6 * 64 =
384, d_model 512). PEFT 0.21.2 infers the encoder's counts and d_model and then fails in forward;
given our inferred sizes explicitly (as the adapter_config.json we save holds them) it runs.
"""

from __future__ import annotations

import dataclasses
import warnings

import peft
import pytest
import torch
from transformers import DynamicCache, EncoderDecoderCache, T5Config

from core_helpers import decoder_start, manual_greedy, ours_config, randomize_prefix
from prefixlab import PrefixTuningModel, get_peft_model
from prefixlab.core.config import infer_sizes
from prefixlab.core.model import cache_kwarg_name
from prefixlab.engine.tiny import tiny_config, tiny_model

RTOL, ATOL = 1e-4, 1e-5  # float32 on the CPU; the same computation in another order
# name: (arch, overrides, (num_layers, num_attention_heads, head_dim) the decoder's attention needs)
CASES = {
    # d_kv * num_heads = 32 != d_model = 48; 2 encoder layers, 3 decoder layers
    "t5": ("t5", dict(d_model=48, d_kv=16, num_heads=2, num_layers=2, num_decoder_layers=3), (3, 2, 16)),
    # 3 encoder layers of 4 heads, 2 decoder layers of 2 heads (d_model 64)
    "bart": ("bart", dict(encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=2), (2, 2, 32)),
}


def _wrapped(name: str, projection: bool = False) -> PrefixTuningModel:
    arch, overrides, _ = CASES[name]
    model = get_peft_model(tiny_model(arch, **overrides), ours_config(arch, projection))
    randomize_prefix(model)
    return model


def _batch() -> dict:
    """Right-padded encoder and decoder inputs (2 rows) with masks."""
    gen = torch.Generator().manual_seed(0)
    ids, dec = torch.randint(3, 300, (2, 6), generator=gen), torch.randint(3, 300, (2, 4), generator=gen)
    mask, dec_mask = torch.ones_like(ids), torch.ones_like(dec)
    mask[1, 4:], dec_mask[1, 3:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "decoder_attention_mask": dec_mask}


def test_flan_t5_small_sizes():
    flan = T5Config(d_model=512, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8, d_ff=1024)
    filled = infer_sizes(ours_config("t5", False), flan)
    assert (filled.num_layers, filled.token_dim, filled.num_attention_heads) == (8, 384, 6)
    assert filled.encoder_hidden_size == 384


@pytest.mark.parametrize("name", CASES)
def test_sizes_are_the_decoders(name):
    arch, overrides, (layers, heads, head_dim) = CASES[name]
    filled = infer_sizes(ours_config(arch, True), tiny_config(arch, **overrides))
    assert (filled.num_layers, filled.num_attention_heads, filled.token_dim) == (layers, heads, heads * head_dim)
    assert _wrapped(name).get_prompt_embedding_to_save("default").shape == (5, layers * 2 * heads * head_dim)


@pytest.mark.parametrize(
    "name, explicit, pattern",
    [
        ("t5", {"num_layers": 2}, r"num_layers=2 does not match .*num_decoder_layers.* gives 3.*set num_layers=3"),
        ("t5", {"token_dim": 48}, r"token_dim=48 does not match .*num_heads\*d_kv gives 32.*set token_dim=32"),
        ("bart", {"num_attention_heads": 4}, r"num_attention_heads=4 does not match .*set num_attention_heads=2"),
        ("bart", {"num_layers": 4}, r"num_layers=4 does not match .*decoder_layers.* gives 2.*set num_layers=2"),
    ],
)
def test_explicit_sizes_that_do_not_fit_the_decoder_raise(name, explicit, pattern):
    arch, overrides, (layers, heads, head_dim) = CASES[name]
    model_config = tiny_config(arch, **overrides)
    right = dataclasses.replace(ours_config(arch, False), num_layers=layers, num_attention_heads=heads,
                                token_dim=heads * head_dim)
    assert infer_sizes(right, model_config).num_layers == layers  # the right explicit values pass
    with pytest.raises(ValueError, match=pattern):
        infer_sizes(dataclasses.replace(ours_config(arch, False), **explicit), model_config)


def _hand_built_cache(flat: torch.Tensor, sizes: tuple[int, int, int], batch_size: int) -> EncoderDecoderCache:
    """PEFT's recipe written out for (num_layers, heads, head_dim) from the model: the prefix (n,
    2L*heads*head_dim) viewed as 2L rows, repeated (self- and cross-attention halves), taken in groups
    of four of which the first two are decoder layer i's self-attention key and value; the
    cross-attention cache starts empty (the encoder gets no prefix)."""
    layers, heads, head_dim = sizes
    rows = flat.view(flat.shape[0], 2 * layers, heads, head_dim)
    rows = torch.cat([rows, rows], dim=1).permute(1, 2, 0, 3)  # (4L, heads, n, head_dim)
    kv = [(rows[4 * i].expand(batch_size, -1, -1, -1), rows[4 * i + 1].expand(batch_size, -1, -1, -1))
          for i in range(layers)]
    return EncoderDecoderCache(DynamicCache(kv), DynamicCache())


@pytest.mark.parametrize("name", CASES)
def test_logits_equal_the_base_model_with_a_hand_built_prefix_cache(name):
    model = _wrapped(name)
    batch = _batch()
    n = model.active_peft_config.num_virtual_tokens
    flat = model.prompt_encoder["default"].embedding.weight.detach()
    expected_inputs = dict(batch, decoder_attention_mask=torch.cat(
        [torch.ones(2, n, dtype=torch.long), batch["decoder_attention_mask"]], 1))
    expected_inputs[cache_kwarg_name(model.base_model)] = _hand_built_cache(flat, CASES[name][2], 2)
    with torch.no_grad():
        got = model(**batch).logits
        expected = model.base_model(**expected_inputs).logits
        alone = model.base_model(**batch).logits
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    assert not torch.allclose(got, alone, atol=1e-3)  # the prefix matters


@pytest.mark.parametrize("name", CASES)
def test_saved_adapter_loads_in_peft_with_the_same_logits(name, tmp_path):
    arch, overrides, _ = CASES[name]
    model = _wrapped(name, projection=True)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_peft = peft.PeftModel.from_pretrained(tiny_model(arch, **overrides), str(tmp_path))
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(in_peft(**batch).logits, model(**batch).logits, rtol=RTOL, atol=ATOL)
    reloaded = PrefixTuningModel.from_pretrained(tiny_model(arch, **overrides), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", CASES)
def test_generate_equals_step_by_step_greedy_decoding(name):
    model = _wrapped(name)
    prompt = _batch()["input_ids"][:1]
    steps = 4
    generated = model.generate(input_ids=prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert generated.shape == (1, 1 + steps)
    assert torch.equal(generated, manual_greedy(model, prompt, steps, decoder_start(model)))


def test_peft_adapters_with_the_encoders_layer_count_still_load(tmp_path):
    """PEFT infers num_layers from the encoder; where the decoder has fewer layers its cache still
    works (the extra layers go unused), so PEFT's adapters for such a model must keep loading here
    with PEFT's logits, while a new prefix gets the decoder's count (fewer parameters)."""
    overrides = dict(encoder_layers=3, decoder_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(tiny_model("bart", **overrides), peft.PrefixTuningConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5))
    assert ref.peft_config["default"].num_layers == 3
    ref.save_pretrained(str(tmp_path))
    loaded = PrefixTuningModel.from_pretrained(tiny_model("bart", **overrides), str(tmp_path))
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, ref(**batch).logits, rtol=RTOL, atol=ATOL)
    fresh = get_peft_model(tiny_model("bart", **overrides), ours_config("bart", False))
    assert fresh.active_peft_config.num_layers == 2
