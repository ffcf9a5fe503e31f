"""PrefixTuningModel against PEFT (the reference) and against first principles for generate.

PEFT 0.21.2's forward is correct on every transformers 5.x and is compared directly. Its generate is
not on transformers 5.24, which renamed forward's `past_key_values` to `cache`: PEFT passes the prefix
as `past_key_values`, generate passes `cache`, and the model's deprecation shim keeps `cache` and drops
the prefix (see test_upstream_peft_generate_...). So our generate is checked against greedy decoding
by full re-computation with PEFT's forward (and with ours), and beam-search scores against
log-probabilities from our forward.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from core_helpers import (
    ARCHS,
    NUM_VIRTUAL_TOKENS,
    copy_prefix,
    decoder_start,
    is_seq2seq,
    manual_greedy,
    ours_config,
    padded_batch,
    peft_pair,
    printed_counts,
    randomize_prefix,
)
from prefixlab import PrefixTuningConfig, PrefixTuningModel, get_peft_model
from prefixlab.core.encoder import PrefixEncoder
from prefixlab.core.model import cache_kwarg_name
from prefixlab.engine.tiny import EOS_ID, tiny_model

PARAMS = [(arch, projection) for arch in ARCHS for projection in (False, True)]


@pytest.mark.parametrize("arch, projection", PARAMS)
def test_parameter_counts_and_printed_line_equal_peft(arch, projection):
    ours, ref = peft_pair(arch, projection)
    assert ours.get_nb_trainable_parameters() == ref.get_nb_trainable_parameters()
    assert printed_counts(ours) == printed_counts(ref)
    assert printed_counts(ours).startswith("trainable params: ")


@pytest.mark.parametrize("arch, projection", PARAMS)
def test_logits_and_loss_equal_peft_on_a_padded_batch(arch, projection):
    ours, ref = peft_pair(arch, projection)
    batch = padded_batch(arch)
    with torch.no_grad():
        got, expected = ours(**batch), ref(**batch)
        base = ours.base_model(**batch)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got.logits, base.logits, atol=1e-3)  # the prefix matters


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("arch, projection", PARAMS)
def test_greedy_generation_equals_decoding_with_peft_forward(arch, projection, use_cache):
    ours, ref = peft_pair(arch, projection)
    prompt = padded_batch(arch)["input_ids"][:1]
    steps = 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = manual_greedy(ref, prompt, steps, decoder_start(ours))  # PEFT forward, no cache
    # use_cache=False: T5 would append each step's whole decoder input to the prefix cache (PEFT too)
    generated = ours.generate(input_ids=prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                              use_cache=use_cache)
    assert torch.equal(generated, expected)
    assert torch.equal(generated, manual_greedy(ours, prompt, steps, decoder_start(ours)))


@pytest.mark.parametrize("arch", ARCHS)
def test_upstream_peft_generate_drops_the_prefix_where_forward_takes_cache(arch):
    """PEFT 0.21.2 + transformers 5.24: PEFT's prepare_inputs_for_generation sets `past_key_values`,
    generate already passes `cache`, and `deprecate_kwarg` keeps `cache` and discards the prefix with
    the warning "Both `past_key_values` and `cache` are set ... ignoring deprecated `past_key_values`".
    PEFT still shifts position_ids by num_virtual_tokens, so decoder-only models generate what the
    base model generates with positions offset by the prefix length and no prefix at all. When
    upstream fixes this, this test fails: then compare our generate with `ref.generate` directly.
    On transformers before 5.24 (forward takes `past_key_values`) PEFT's generate keeps the prefix,
    and there it must generate exactly what ours does."""
    ours, ref = peft_pair(arch, False)
    randomize_prefix(ours, std=4.0)  # a strong prefix, so that dropping it changes the greedy tokens
    copy_prefix(ours, ref)
    prompt = padded_batch(arch)["input_ids"][:1]
    steps = 6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_generated = ref.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                      max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    ours_generated = ours.generate(input_ids=prompt, max_new_tokens=steps, min_new_tokens=steps)
    if cache_kwarg_name(ours.base_model) == "past_key_values":
        assert torch.equal(peft_generated, ours_generated)
        return
    assert any("Both `past_key_values` and `cache` are set" in str(w.message) for w in caught)
    base = tiny_model(arch)
    if is_seq2seq(arch):
        no_prefix = manual_greedy(base, prompt, steps, decoder_start(base))
    else:
        def shifted(input_ids):  # the base model, positions offset by the prefix length, no prefix
            positions = torch.arange(input_ids.shape[1])[None] + NUM_VIRTUAL_TOKENS
            return base(input_ids=input_ids, position_ids=positions)
        no_prefix = manual_greedy(shifted, prompt, steps)
    assert torch.equal(peft_generated, no_prefix)  # the bug: the prefix had no effect
    assert not torch.equal(ours_generated, no_prefix)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padded_batch_generates_what_each_row_generates_alone(arch):
    model = get_peft_model(tiny_model(arch), ours_config(arch, True))
    randomize_prefix(model, std=0.5)
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 300, (length,), generator=gen) for length in (6, 3, 5)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]) for r in rows]).long()
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(model.generate(input_ids=ids, **kwargs), batched)  # mask inferred from pad tokens
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], **kwargs)
        assert torch.equal(batched[i, width:], alone[0, len(row):]), f"row {i}"


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_beam_search_scores_equal_log_probs_from_forward(arch):
    """Every returned beam's score is the sum of its tokens' log-probs under our forward (prefix included)."""
    model = get_peft_model(tiny_model(arch), ours_config(arch, True))
    randomize_prefix(model, std=0.5)
    prompts = padded_batch(arch)["input_ids"][:2]
    out = model.generate(input_ids=prompts, max_new_tokens=4, num_beams=3, num_return_sequences=3,
                         length_penalty=0.0, suppress_tokens=[EOS_ID], early_stopping=True,
                         output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 2 * 3
    sources = prompts.repeat_interleave(3, dim=0)
    with torch.no_grad():
        if is_seq2seq(arch):
            logits = model(input_ids=sources, decoder_input_ids=out.sequences).logits[:, :-1]
            targets = out.sequences[:, 1:]
        else:
            p = prompts.shape[1]
            logits = model(input_ids=out.sequences).logits[:, p - 1:-1]
            targets = out.sequences[:, p:]
    scores = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(scores, out.sequences_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "bart"])
def test_sampling_uses_the_prefix(arch):
    model = get_peft_model(tiny_model(arch), ours_config(arch, False))
    randomize_prefix(model)
    prompts = padded_batch(arch)["input_ids"][:2]
    greedy = model.generate(input_ids=prompts, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    top1 = model.generate(input_ids=prompts, max_new_tokens=5, min_new_tokens=5, do_sample=True, top_k=1,
                          num_return_sequences=2)
    assert torch.equal(top1, greedy.repeat_interleave(2, dim=0))
    torch.manual_seed(0)
    sampled = model.generate(input_ids=prompts, max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert sampled.shape[0] == 6


def _count_prefix_computations(monkeypatch) -> list[int]:
    """Record the number of rows each call of PrefixEncoder.prefix_states computes."""
    rows: list[int] = []
    original = PrefixEncoder.prefix_states

    def counting(self):
        states = original(self)
        rows.append(states.shape[0])
        return states

    monkeypatch.setattr(PrefixEncoder, "prefix_states", counting)
    return rows


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_prefix_is_computed_once_per_forward_on_n_rows(arch, monkeypatch):
    model = get_peft_model(tiny_model(arch), ours_config(arch, True))
    transform_inputs = []
    model.prompt_encoder["default"].transform.register_forward_hook(
        lambda module, args, out: transform_inputs.append(tuple(args[0].shape)))
    rows = _count_prefix_computations(monkeypatch)
    model(**padded_batch(arch))  # batch of 3
    assert rows == [NUM_VIRTUAL_TOKENS]
    assert transform_inputs == [(NUM_VIRTUAL_TOKENS, model.active_peft_config.token_dim)]


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_prefix_is_computed_once_per_generate_call(arch, monkeypatch):
    model = get_peft_model(tiny_model(arch), ours_config(arch, True))
    rows = _count_prefix_computations(monkeypatch)
    model.generate(input_ids=padded_batch(arch)["input_ids"], max_new_tokens=6, num_beams=2)
    assert rows == [NUM_VIRTUAL_TOKENS]


@pytest.mark.parametrize("arch", ARCHS)
def test_only_prefix_parameters_train(arch):
    flat = get_peft_model(tiny_model(arch), ours_config(arch, False))
    assert flat.trainable_parameter_names() == ["prompt_encoder.default.embedding.weight"]
    projected = get_peft_model(tiny_model(arch), ours_config(arch, True))
    assert projected.trainable_parameter_names() == [
        "prompt_encoder.default.embedding.weight",
        "prompt_encoder.default.transform.0.weight",
        "prompt_encoder.default.transform.0.bias",
        "prompt_encoder.default.transform.2.weight",
        "prompt_encoder.default.transform.2.bias",
    ]
    assert not any(p.requires_grad for p in projected.base_model.parameters())


def test_seq2seq_prefix_layout_is_peft_s_and_leaves_rows_unused():
    """PEFT's seq2seq layout (kept for file compatibility): decoder layer i reads rows (4i, 4i+1) mod 2L
    of the prefix, so with 2 layers both layers share rows 0-1 and rows 2-3 get no gradient, in PEFT
    as here. Assert it so that a change upstream is noticed."""
    ours, ref = peft_pair("t5", False)
    batch = padded_batch("t5")
    for model in (ours, ref):
        model(**batch).loss.backward()
        grad = model.prompt_encoder["default"].embedding.weight.grad.view(NUM_VIRTUAL_TOKENS, 4, -1)
        assert grad[:, :2].abs().sum() > 0
        assert grad[:, 2:].abs().sum() == 0
    torch.testing.assert_close(ours.prompt_encoder["default"].embedding.weight.grad,
                               ref.prompt_encoder["default"].embedding.weight.grad, rtol=1e-4, atol=1e-6)


def test_position_ids_are_shifted_by_the_prefix_like_peft():
    ours, ref = peft_pair("gpt2", False)
    ids = padded_batch("gpt2")["input_ids"]
    positions = torch.arange(ids.shape[1])[None].expand_as(ids)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, position_ids=positions).logits,
                                   ref(input_ids=ids, position_ids=positions).logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours(input_ids=ids, position_ids=positions).logits, ours(input_ids=ids).logits)


def test_generate_rejects_a_cache_argument():
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    name = cache_kwarg_name(model.base_model)  # `cache` from transformers 5.24, `past_key_values` before
    with pytest.raises(ValueError, match=f"do not pass {name}= to generate: the prefix is the cache"):
        model.generate(input_ids=torch.tensor([[5, 6]]), max_new_tokens=2, **{name: object()})


def test_wrapper_forwards_base_attributes():
    model = get_peft_model(tiny_model("gpt2"), ours_config("gpt2", False))
    assert isinstance(model, PrefixTuningModel)
    assert model.config is model.base_model.config


def _other_architecture(name: str):
    """Tiny random models of further architectures PEFT can prefix-tune (config class, model class, task)."""
    import transformers as tf

    small = dict(vocab_size=384, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4)
    return {
        "opt": (tf.OPTConfig(vocab_size=384, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                             word_embed_proj_dim=32), tf.OPTForCausalLM, "CAUSAL_LM"),
        "qwen2": (tf.Qwen2Config(hidden_size=32, num_key_value_heads=2, **small), tf.Qwen2ForCausalLM, "CAUSAL_LM"),
        "gpt_neox": (tf.GPTNeoXConfig(hidden_size=32, **small), tf.GPTNeoXForCausalLM, "CAUSAL_LM"),
        "mt5": (tf.MT5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                             decoder_start_token_id=0), tf.MT5ForConditionalGeneration, "SEQ_2_SEQ_LM"),
    }[name]


@pytest.mark.parametrize("name", ["opt", "qwen2", "gpt_neox", "mt5"])
def test_other_architectures_match_peft(name):
    import peft

    config, model_class, task = _other_architecture(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = model_class(config).eval()
    reference_base = model_class(config).eval()
    reference_base.load_state_dict(base.state_dict())
    ours = get_peft_model(base, PrefixTuningConfig(task_type=task, num_virtual_tokens=NUM_VIRTUAL_TOKENS,
                                                   prefix_projection=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(reference_base, peft.PrefixTuningConfig(
            task_type=task, num_virtual_tokens=NUM_VIRTUAL_TOKENS, prefix_projection=True))
    copy_prefix(ours, ref)
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "SEQ_2_SEQ_LM":
        batch["decoder_input_ids"] = ids[:, :3]
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, ref(**batch).logits, rtol=1e-4, atol=1e-5)
    assert printed_counts(ours) == printed_counts(ref)

