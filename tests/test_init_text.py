"""Real-word initialisation (Li & Liang 2021, section 7.3; prefix_tuning_init='TEXT'): the prefix starts
as the key/values the frozen model computes for a text, so at step 0 the model reads the text before
its input.

What holds, asserted here:
- decoder-only (GPT-2, Llama with grouped-query attention), with and without the projection MLP: the
  initial prefix equals the model's key/values for the text, and the output on any input equals the
  plain model's on the text followed by that input;
- encoder-decoder, paper layout: the same with the text read as a small example of its own (source =
  decoder input = the text; the text attends only to itself, the real example to all of it), for T5
  and BART;
- encoder-decoder, PEFT's layout: the prefix reaches the decoder's self-attention only, so the example
  reads the text's decoder activations but its cross-attention sees only its own source; exact when
  the decoder has an odd number of layers. With an even number PEFT's layout makes the upper half of
  the layers read the lower half's rows, which hold the lower layers' activations: those layers
  cannot read the text's own.
"""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from safetensors import safe_open
from transformers import ByT5Tokenizer

from prefixlab import PrefixTuningConfig, PrefixTuningModel, get_peft_model
from prefixlab.core.config import ConfigError
from prefixlab.core.model import layer_rows
from prefixlab.engine.tiny import tiny_model
from test_paper_seq2seq import captured_key_values, max_abs, reference, set_prefix

TEXT = "table-to-text:"
RTOL, ATOL = 1e-4, 1e-5


def causal_config(n: int, projection: bool = False, **extra) -> PrefixTuningConfig:
    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, prefix_projection=projection,
                              prefix_tuning_init="TEXT", prefix_tuning_init_text=TEXT, **extra)


def model_key_values(base, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values), each (heads, len, head_dim), from the plain model's own cache."""
    with torch.no_grad():
        out = base(input_ids=tokens[None], use_cache=True)
    cache = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5.24
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]


def flat_rows(prefix: torch.Tensor, config) -> torch.Tensor:
    """(n, num_layers*2*token_dim) -> (2L, heads, n, head_dim)."""
    heads = config.num_attention_heads
    return prefix.view(config.num_virtual_tokens, 2 * config.num_layers, heads, -1).permute(1, 2, 0, 3)


def tokens_of(text: str) -> torch.Tensor:
    return torch.tensor(ByT5Tokenizer()(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------------------
# Decoder-only


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_initial_prefix_is_the_texts_key_values_and_step_0_reads_the_text(arch, projection):
    text = tokens_of(TEXT)  # 14 byte tokens, some repeated ('t', '-', 'e', ...)
    n = len(text)
    base = tiny_model(arch)
    model = get_peft_model(base, causal_config(n, projection, encoder_hidden_size=32))
    embedding_before = model.prompt_encoder["default"].embedding.weight.detach().clone()
    report = model.init_prefix_from_text(tokenizer=ByT5Tokenizer())
    assert report["tokens"] == text.tolist() and report["text_tokens"] == report["virtual_tokens"] == n
    config = model.active_peft_config
    prefix = flat_rows(model.prompt_encoder["default"].prefix_states().detach(), config)
    for i, (key, value) in enumerate(model_key_values(base, text)):
        if projection:  # the MLP's output layer is solved: equal up to float32 rounding
            torch.testing.assert_close(prefix[2 * i], key, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(prefix[2 * i + 1], value, rtol=RTOL, atol=ATOL)
        else:
            assert torch.equal(prefix[2 * i], key) and torch.equal(prefix[2 * i + 1], value)
    if projection:  # the embedding keeps its random rows (distinct, so the fit is exact)
        assert torch.equal(model.prompt_encoder["default"].embedding.weight, embedding_before)
        assert report["max_abs_error"] < 1e-4
    else:
        assert report["max_abs_error"] == 0.0
    # Step 0: the model continuing after the prefix is the plain model continuing after the text.
    x = torch.randint(3, 300, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        expected = base(input_ids=torch.cat([text.expand(2, -1), x], 1)).logits[:, n:]
        alone = base(input_ids=x).logits
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    assert max_abs(alone, expected) > 1e-3  # the text matters


@pytest.mark.parametrize("n, expected", [(7, "abcabca"), (2, "ab"), (3, "abc")])
def test_prefixes_longer_or_shorter_than_the_text_repeat_or_cut_it(n, expected):
    """The prefix is the activations of the text's tokens repeated to n and cut at n: a real token
    sequence, so step 0 still reads exactly that sequence."""
    base = tiny_model("gpt2")
    model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))
    report = model.init_prefix_from_text(token_ids=tokens_of("abc").tolist())
    assert report["tokens"] == tokens_of(expected).tolist() and report["text_tokens"] == 3
    x = torch.tensor([[40, 50, 60]])
    with torch.no_grad():
        got = model(input_ids=x).logits
        full = base(input_ids=torch.cat([tokens_of(expected)[None], x], 1)).logits[:, n:]
    torch.testing.assert_close(got, full, rtol=RTOL, atol=ATOL)


def test_an_adapter_waits_for_its_text_and_a_tokenizer_path_initialises_at_once(tmp_path):
    model = get_peft_model(tiny_model("gpt2"), causal_config(4))
    assert model.adapters_awaiting_text_init == ["default"]
    with pytest.raises(ValueError, match=r"prefix_tuning_init='TEXT' but its prefix has not been set from "
                                         r"'table-to-text:' yet: call init_prefix_from_text\('default'"):
        model(input_ids=torch.tensor([[5, 6]]))
    model.init_prefix_from_text("default", tokenizer=ByT5Tokenizer())
    assert model.adapters_awaiting_text_init == []
    model(input_ids=torch.tensor([[5, 6]]))
    # With tokenizer_name_or_path the adapter loads the tokenizer and starts from the text itself.
    ByT5Tokenizer().save_pretrained(tmp_path)
    auto = get_peft_model(tiny_model("gpt2"), causal_config(4, tokenizer_name_or_path=str(tmp_path)))
    assert auto.adapters_awaiting_text_init == []
    assert torch.equal(auto.prompt_encoder["default"].embedding.weight,
                       model.prompt_encoder["default"].embedding.weight)


def test_a_text_initialised_adapter_saves_peft_s_file(tmp_path):
    """How the prefix started is kept in the weights file's metadata, not in adapter_config.json, so
    PEFT loads it without a warning, with the same logits."""
    model = get_peft_model(tiny_model("gpt2"), causal_config(4))
    model.init_prefix_from_text(tokenizer=ByT5Tokenizer())
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert not {"prefix_tuning_init", "prefix_tuning_init_text", "tokenizer_name_or_path"} & set(saved)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata()["prefixlab.prefix_tuning_init_text"] == TEXT
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        in_peft = peft.PeftModel.from_pretrained(tiny_model("gpt2"), str(tmp_path))
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    x = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(in_peft(input_ids=x).logits, model(input_ids=x).logits, rtol=RTOL, atol=ATOL)
    reloaded = PrefixTuningModel.from_pretrained(tiny_model("gpt2"), tmp_path, is_trainable=True)
    assert reloaded.adapters_awaiting_text_init == []


# ---------------------------------------------------------------------------------------------
# Encoder-decoder


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_paper_layout_starts_from_the_text_in_all_three_positions(arch, projection):
    text = tokens_of("summarize")
    n = len(text)
    base = tiny_model(arch)
    model = get_peft_model(base, PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=n, prefix_positions="paper", prefix_projection=projection,
        prefix_tuning_init="TEXT", prefix_tuning_init_text="summarize", encoder_hidden_size=32))
    report = model.init_prefix_from_text(tokenizer=ByT5Tokenizer())
    assert report["max_abs_error"] < 1e-4
    # The initial prefix of every position is what the plain model computes reading the text as source
    # and as decoder input (captured independently, on the key/value projections).
    expected = get_peft_model(tiny_model(arch), PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=n, prefix_positions="paper"))
    set_prefix(expected, captured_key_values(base, arch, text[None], text[None]))
    got_states = model.prompt_encoder["default"].position_states()
    for position, part in expected.prompt_encoder["default"].items():
        torch.testing.assert_close(got_states[position].detach(), part.embedding.weight, rtol=RTOL, atol=ATOL,
                                   msg=position)
    # Step 0: the plain model reading the text as an example of its own before the real one.
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(3, 300, (2, 6), generator=gen), torch.randint(3, 300, (2, 3), generator=gen)
    x_mask = torch.ones_like(x)
    x_mask[1, 4:] = 0
    with torch.no_grad():
        got = model(input_ids=x, attention_mask=x_mask, decoder_input_ids=y)
    encoded, logits = reference(base, arch, text[None], x, x_mask, text[None], y)
    torch.testing.assert_close(got.encoder_last_hidden_state, encoded, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got.logits, logits, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("decoder_layers", [3, 2])
def test_peft_s_layout_starts_from_the_texts_decoder_activations(decoder_layers):
    text = tokens_of("summarize")
    n = len(text)
    base = tiny_model("t5", num_decoder_layers=decoder_layers)
    model = get_peft_model(base, PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=n,
                                                    prefix_tuning_init="TEXT", prefix_tuning_init_text="summarize"))
    model.init_prefix_from_text(tokenizer=ByT5Tokenizer())
    config = model.active_peft_config
    prefix = flat_rows(model.prompt_encoder["default"].embedding.weight.detach(), config)
    decoder = captured_key_values(base, "t5", text[None], text[None])["decoder_self_attention"]
    rows = layer_rows(config)
    owners = {}  # row -> the first (lowest) layer that reads it
    for layer, (key_row, _) in enumerate(rows):
        owners.setdefault(key_row, layer)
    for layer, (key_row, value_row) in enumerate(rows):
        key, value = decoder[owners[key_row]]
        torch.testing.assert_close(prefix[key_row], key, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(prefix[value_row], value, rtol=RTOL, atol=ATOL)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(3, 300, (2, 6), generator=gen), torch.randint(3, 300, (2, 3), generator=gen)
    x_mask = torch.ones_like(x)
    with torch.no_grad():
        got = model(input_ids=x, attention_mask=x_mask, decoder_input_ids=y).logits
    _, logits = reference(base, "t5", text[None], x, x_mask, text[None], y, paper=False)
    if decoder_layers % 2:  # rows 4i mod 2L are all distinct: every layer reads its own activations
        assert len(owners) == decoder_layers
        torch.testing.assert_close(got, logits, rtol=RTOL, atol=ATOL)
    else:  # layer 1 reads layer 0's rows (PEFT's layout), so step 0 is not the text read before the input
        assert owners == {0: 0}
        assert max_abs(got, logits) > 1e-3


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_token_ids_and_texts_are_named():
    model = get_peft_model(tiny_model("gpt2"), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.raises(ValueError, match=r"needs token_ids, or a tokenizer"):
        model.init_prefix_from_text()
    with pytest.raises(ConfigError, match=r"prefix_tuning_init_text=None is invalid: give the text") as info:
        model.init_prefix_from_text(tokenizer=ByT5Tokenizer())
    assert info.value.field == "prefix_tuning_init_text"
    with pytest.raises(ConfigError, match=r"prefix_tuning_init_text=None is invalid: it has no tokens"):
        model.init_prefix_from_text(token_ids=[])
    with pytest.raises(ValueError, match=r"token_ids \[5, 999\] are not all in \[0, 384\)"):
        model.init_prefix_from_text(token_ids=[5, 999])
    # A text given with a tokenizer is recorded in the adapter's config (and so in the saved metadata).
    model.init_prefix_from_text(tokenizer=ByT5Tokenizer(), text="summarize")
    assert (model.active_peft_config.prefix_tuning_init, model.active_peft_config.prefix_tuning_init_text) == (
        "TEXT", "summarize")
