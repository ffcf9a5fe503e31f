"""The paper's encoder-decoder prefixes (Li & Liang 2021, section 4.2; prefix_positions='paper'):
separate prefixes for the encoder's self-attention, the decoder's self-attention and the decoder's
cross-attention, checked from first principles, against PEFT's layout, and through save/load,
generation, the fused pass and gradient checkpointing.

First principles: a prefix equal to the key/values the frozen model computes for a text is that
text, read before the input. With the encoder prefix = the encoder's key/values for S, the
cross-attention prefix = the cross-attention keys/values of S's encoding, and the decoder prefix = the
decoder's key/values for T (reading T with cross-attention to S's encoding), the model on (X, Y) must
give exactly what the plain model gives on source S+X and target T+Y when S attends only to S, and T
only to T and (cross) to S: the real example sees the text's activations, the text never sees the
example. Positions: T5's relative position bias places the prefix as the n positions before the input
in the encoder as in the decoder, which the reference reproduces as it is; BART's encoder adds learned
absolute positions to its input before any attention, so its input keeps positions 0.. with or
without a prefix (as in the paper's code), and the reference gives X those positions too.
"""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from core_helpers import decoder_start, manual_greedy, randomize_prefix
from prefixlab import PrefixTuningConfig, PrefixTuningModel, get_peft_model
from prefixlab.core.config import ConfigError, infer_sizes, prefix_parameter_counts
from prefixlab.core.fused import fusable
from prefixlab.engine.tiny import EOS_ID, tiny_config, tiny_model

ARCHS = ("t5", "bart")
N = 4  # virtual tokens = the length of the texts S and T
RTOL, ATOL = 1e-4, 1e-5  # float32 on the CPU, the same computation in another order


def paper_config(projection: bool = False, **extra) -> PrefixTuningConfig:
    return PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N, prefix_positions="paper",
                              prefix_projection=projection, **extra)


def paper_model(arch: str, projection: bool = False, seed: int = 0, **overrides) -> PrefixTuningModel:
    model = get_peft_model(tiny_model(arch, **overrides), paper_config(projection))
    randomize_prefix(model, seed=seed, std=0.5)
    return model


def attention(base, arch: str) -> dict[str, list]:
    """The attention modules of each position, written out here (not taken from prefixlab)."""
    if arch in ("t5", "mt5"):
        return {"encoder_self_attention": [b.layer[0].SelfAttention for b in base.encoder.block],
                "decoder_self_attention": [b.layer[0].SelfAttention for b in base.decoder.block],
                "decoder_cross_attention": [b.layer[1].EncDecAttention for b in base.decoder.block]}
    return {"encoder_self_attention": [layer.self_attn for layer in base.model.encoder.layers],
            "decoder_self_attention": [layer.self_attn for layer in base.model.decoder.layers],
            "decoder_cross_attention": [layer.encoder_attn for layer in base.model.decoder.layers]}


def projections(module) -> tuple:
    return (module.k, module.v) if hasattr(module, "k") else (module.k_proj, module.v_proj)


def captured_key_values(base, arch: str, source: torch.Tensor, target: torch.Tensor) -> dict[str, list]:
    """Per position and layer (keys, values), each (heads, len, head_dim), that the plain model computes
    reading `source` (1, len) and decoder input `target` (1, len): forward hooks on the key and value
    projections."""
    found: dict[str, list] = {}
    hooks = []
    for position, modules in attention(base, arch).items():
        found[position] = [[None, None] for _ in modules]
        for layer, module in enumerate(modules):
            heads = module.n_heads if hasattr(module, "n_heads") else module.num_heads
            for which, linear in enumerate(projections(module)):
                def keep(mod, args, out, p=position, i=layer, w=which, h=heads):
                    found[p][i][w] = out[0].view(out.shape[1], h, -1).transpose(0, 1)  # (heads, len, head_dim)
                hooks.append(linear.register_forward_hook(keep))
    with torch.no_grad():
        base(input_ids=source, decoder_input_ids=target)
    for hook in hooks:
        hook.remove()
    return found


def set_prefix(model, found: dict[str, list]) -> None:
    """Write captured key/values into the flat prefix of each position: layer i in rows (2i, 2i+1)."""
    encoder = model.prompt_encoder["default"]
    with torch.no_grad():
        for position, layers in found.items():
            weight = encoder[position].embedding.weight
            heads, n, _ = layers[0][0].shape
            rows = weight.view(n, len(layers) * 2, heads, -1)  # (n, 2L, heads, head_dim)
            for i, (key, value) in enumerate(layers):
                rows[:, 2 * i] = key.transpose(0, 1)
                rows[:, 2 * i + 1] = value.transpose(0, 1)


def mask_hooks(base, arch: str, masks: dict[str, torch.Tensor]) -> list:
    """Pre-hooks that replace the attention mask of the positions in `masks` (boolean, True = attend)."""
    hooks = []
    for position, mask in masks.items():
        for module in attention(base, arch)[position]:
            name = "mask" if hasattr(module, "n_heads") else "attention_mask"

            def replace(mod, args, kwargs, m=mask, k=name):
                kwargs[k] = m
                return args, kwargs
            hooks.append(module.register_forward_pre_hook(replace, with_kwargs=True))
    return hooks


def reference(base, arch: str, s: torch.Tensor, x: torch.Tensor, x_mask: torch.Tensor, t: torch.Tensor,
              y: torch.Tensor, paper: bool = True):
    """The plain model on source [S; X] and target [T; Y] (S, T: (1, n); X, x_mask: (batch, len); Y:
    (batch, len)) with S attending only to S, T only to T and (cross-attention) to S, and the example
    attending to all of the text; without `paper` (PEFT's layout: no encoder or cross-attention
    prefix) X and Y's cross-attention do not see S. Returns (encoder output on X, logits on Y)."""
    batch, n, lx, ly = x.shape[0], s.shape[1], x.shape[1], y.shape[1]
    src = torch.cat([s.expand(batch, -1), x], 1)
    tgt = torch.cat([t.expand(batch, -1), y], 1)
    keys = torch.cat([torch.ones(batch, n, dtype=torch.bool), x_mask.bool()], 1)  # (batch, n + lx)
    encoder_mask = keys[:, None, None, :].repeat(1, 1, n + lx, 1)
    encoder_mask[:, :, :n, n:] = False  # S sees only S
    cross_mask = keys[:, None, None, :].repeat(1, 1, n + ly, 1)
    cross_mask[:, :, :n, n:] = False  # T's cross-attention sees only S
    if not paper:
        encoder_mask[:, :, n:, :n] = False
        cross_mask[:, :, n:, :n] = False
    if base.config._attn_implementation == "eager":  # eager attention adds its mask to the scores
        encoder_mask, cross_mask = (torch.zeros(m.shape).masked_fill(~m, torch.finfo(torch.float32).min)
                                    for m in (encoder_mask, cross_mask))
    hooks = mask_hooks(base, arch, {"encoder_self_attention": encoder_mask, "decoder_cross_attention": cross_mask})
    if arch == "bart":  # X keeps positions 0.. as it does with a prefix: S at 0..n-1, X at 0..lx-1
        table = base.model.encoder.embed_positions
        ids = torch.cat([torch.arange(n), torch.arange(lx)]) + table.offset
        hooks.append(table.register_forward_hook(lambda mod, args, out: table.weight[ids].expand_as(out)))
    try:
        with torch.no_grad():
            out = base(input_ids=src, decoder_input_ids=tgt)
    finally:
        for hook in hooks:
            hook.remove()
    return out.encoder_last_hidden_state[:, n:], out.logits[:, n:]


def example(seed: int = 0) -> dict[str, torch.Tensor]:
    """Texts S and T (1, N), and a right-padded example: X (2, 6) with its mask, Y (2, 3)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(3, 300, (2, 6), generator=gen)
    x_mask = torch.ones_like(x)
    x_mask[1, 4:] = 0
    return {"s": torch.randint(3, 300, (1, N), generator=gen), "t": torch.randint(3, 300, (1, N), generator=gen),
            "x": x, "x_mask": x_mask, "y": torch.randint(3, 300, (2, 3), generator=gen)}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------
# First principles


@pytest.mark.parametrize("arch", ARCHS)
def test_prefixes_equal_to_a_texts_key_values_read_that_text_before_the_input(arch):
    e = example()
    model = paper_model(arch)
    set_prefix(model, captured_key_values(model.base_model, arch, e["s"], e["t"]))
    with torch.no_grad():
        got = model(input_ids=e["x"], attention_mask=e["x_mask"], decoder_input_ids=e["y"])
    encoded, logits = reference(model.base_model, arch, e["s"], e["x"], e["x_mask"], e["t"], e["y"])
    torch.testing.assert_close(got.encoder_last_hidden_state, encoded, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got.logits, logits, rtol=RTOL, atol=ATOL)
    with torch.no_grad():
        plain = model.base_model(input_ids=e["x"], attention_mask=e["x_mask"], decoder_input_ids=e["y"])
    assert max_abs(plain.encoder_last_hidden_state, encoded) > 1e-2  # the encoder prefix carries S
    assert max_abs(plain.logits, logits) > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_each_position_reaches_its_own_attention(arch):
    """Changing one position's prefix changes what that attention (and only what follows it) computes:
    the encoder prefix changes the encoder output, the two decoder prefixes only the logits."""
    model, e = paper_model(arch), example()
    batch = {"input_ids": e["x"], "attention_mask": e["x_mask"], "decoder_input_ids": e["y"]}
    with torch.no_grad():
        before = model(**batch)
        for position in ("encoder_self_attention", "decoder_self_attention", "decoder_cross_attention"):
            weight = model.prompt_encoder["default"][position].embedding.weight
            weight.add_(1.0)
            after = model(**batch)
            weight.sub_(1.0)
            changed_encoder = max_abs(after.encoder_last_hidden_state, before.encoder_last_hidden_state) > 1e-4
            assert changed_encoder == (position == "encoder_self_attention"), position
            assert max_abs(after.logits, before.logits) > 1e-4, position


@pytest.mark.parametrize("arch", ARCHS)
def test_every_prefix_row_trains_unlike_peft_s_layout(arch):
    """PEFT's layout: decoder layer i reads rows (4i mod 2L, 4i+1 mod 2L), so with the tiny models' two
    decoder layers rows 2-3 get no gradient. The paper's: every row of all three positions has one."""
    e = example()
    batch = {"input_ids": e["x"], "attention_mask": e["x_mask"], "labels": e["y"]}
    peft_layout = get_peft_model(tiny_model(arch), PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N))
    peft_layout(**batch).loss.backward()
    rows = peft_layout.prompt_encoder["default"].embedding.weight.grad.view(N, 4, -1).abs().sum(-1)  # (n, 2L)
    assert (rows[:, :2] > 0).all() and (rows[:, 2:] == 0).all()
    model = paper_model(arch)
    model(**batch).loss.backward()
    for position, part in model.prompt_encoder["default"].items():
        per_row = part.embedding.weight.grad.view(N, 4, -1).abs().sum(-1)  # (n, 2L): 2 layers everywhere
        assert (per_row > 0).all(), position


# ---------------------------------------------------------------------------------------------
# Accounting, files, PEFT


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_counts_equal_the_built_model_and_the_saved_file(arch, projection, tmp_path):
    # Encoder and decoder of different sizes, so that every size of the formula is exercised.
    overrides = ({"num_layers": 3, "num_decoder_layers": 2, "d_kv": 8} if arch == "t5"
                 else {"encoder_layers": 3, "decoder_layers": 2, "encoder_attention_heads": 2})
    model = get_peft_model(tiny_model(arch, **overrides), paper_config(projection, encoder_hidden_size=12))
    config = model.active_peft_config
    counts = prefix_parameter_counts(config)
    assert counts["trainable"] == sum(p.numel() for p in model.prompt_encoder.parameters())
    assert counts["trainable"] == model.get_nb_trainable_parameters()[0]
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert counts["stored"] == sum(t.numel() for t in saved.values())
    enc_width = config.num_encoder_layers * 2 * config.encoder_token_dim
    dec_width = config.num_layers * 2 * config.token_dim
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        "paper_prompt_embeddings.encoder_self_attention": (N, enc_width),
        "paper_prompt_embeddings.decoder_self_attention": (N, dec_width),
        "paper_prompt_embeddings.decoder_cross_attention": (N, dec_width)}
    assert (config.num_encoder_layers, config.num_layers) == (3, 2)
    assert (config.num_encoder_attention_heads, config.num_attention_heads) == ((2, 4) if arch == "bart" else (4, 4))
    assert "encoder_self_attention: " in counts["formula"] and "decoder_cross_attention: " in counts["formula"]


@pytest.mark.parametrize("arch, projection", [("t5", False), ("bart", True)])
def test_save_and_load_give_identical_logits(arch, projection, tmp_path):
    model = paper_model(arch, projection)
    e = example()
    batch = {"input_ids": e["x"], "attention_mask": e["x_mask"], "decoder_input_ids": e["y"]}
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["prefix_positions"] == "paper" and config["num_encoder_layers"] == 2
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata()["prefixlab.prefix_positions"] == "paper"
    loaded = PrefixTuningModel.from_pretrained(tiny_model(arch), tmp_path)
    assert loaded.active_peft_config.is_paper_layout
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    if not projection:  # a flat paper adapter loads for further training
        trainable = PrefixTuningModel.from_pretrained(tiny_model(arch), tmp_path, is_trainable=True)
        assert len(trainable.trainable_parameter_names()) == 3


def test_peft_cannot_load_a_paper_adapter(tmp_path):
    """PEFT first warns that it ignores the layout's keys, then fails with its own KeyError: the file
    has no 'prompt_embeddings' tensor, only prefixlab's 'paper_prompt_embeddings.*'."""
    paper_model("t5").save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"Unexpected keyword arguments .*'prefix_positions'"):
        with pytest.raises(KeyError, match="prompt_embeddings"):
            peft.PeftModel.from_pretrained(tiny_model("t5"), str(tmp_path))


def test_the_default_layout_still_saves_peft_s_file_and_loads_in_peft_without_a_warning(tmp_path):
    model = get_peft_model(tiny_model("bart"), PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    reference = json.loads(json.dumps(peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N)
                                      .to_dict()))
    assert set(saved) == set(reference)
    assert list(load_file(tmp_path / "adapter_model.safetensors")) == ["prompt_embeddings"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft.PeftModel.from_pretrained(tiny_model("bart"), str(tmp_path))
    # PEFT's warning about keys it does not know is a UserWarning; transformers' deprecation notes that
    # PEFT itself triggers are FutureWarnings.
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


def test_a_file_and_config_of_different_layouts_are_refused(tmp_path):
    from prefixlab.core.config import AdapterFileError

    paper_model("t5").save_pretrained(tmp_path / "paper")
    default = get_peft_model(tiny_model("t5"), PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N))
    default.save_pretrained(tmp_path / "default")
    config = json.loads((tmp_path / "paper" / "adapter_config.json").read_text())
    (tmp_path / "paper" / "adapter_config.json").write_text(json.dumps({**config, "prefix_positions": None}))
    with pytest.raises(AdapterFileError, match=r"no 'prompt_embeddings' tensor.*prefix_positions='paper'"):
        PrefixTuningModel.from_pretrained(tiny_model("t5"), tmp_path / "paper")
    config = json.loads((tmp_path / "default" / "adapter_config.json").read_text())
    (tmp_path / "default" / "adapter_config.json").write_text(json.dumps({**config, "prefix_positions": "paper"}))
    with pytest.raises(AdapterFileError, match=r"no 'paper_prompt_embeddings.* one tensor per position"):
        PrefixTuningModel.from_pretrained(tiny_model("t5"), tmp_path / "default")


# ---------------------------------------------------------------------------------------------
# Generation


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_equals_step_by_step_decoding(arch):
    model = paper_model(arch, projection=True)
    model.eval()
    prompt = example()["x"][:1]
    steps = 4
    generated = model.generate(input_ids=prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                               suppress_tokens=[EOS_ID])
    expected = manual_greedy(model, prompt, steps, decoder_start(model))
    assert torch.equal(generated, expected)
    with model.disable_adapter():
        plain = model.generate(input_ids=prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                               suppress_tokens=[EOS_ID])
    assert not torch.equal(plain, generated)  # the prefixes matter


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_scores_equal_log_probs_from_forward(arch):
    model = paper_model(arch)
    e = example()
    prompts, mask = e["x"], e["x_mask"]
    out = model.generate(input_ids=prompts, attention_mask=mask, max_new_tokens=4, num_beams=3,
                         num_return_sequences=3, length_penalty=0.0, suppress_tokens=[EOS_ID], early_stopping=True,
                         output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        logits = model(input_ids=prompts.repeat_interleave(3, 0), attention_mask=mask.repeat_interleave(3, 0),
                       decoder_input_ids=out.sequences).logits[:, :-1]
    scores = logits.log_softmax(-1).gather(-1, out.sequences[:, 1:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(scores, out.sequences_scores, rtol=1e-4, atol=1e-4)


def test_each_prefix_is_computed_once_per_generate_call(monkeypatch):
    from prefixlab.core.encoder import PrefixEncoder

    model = paper_model("bart", projection=True)
    calls = []
    original = PrefixEncoder.prefix_states
    monkeypatch.setattr(PrefixEncoder, "prefix_states", lambda self: calls.append(self) or original(self))
    model.generate(input_ids=example()["x"], max_new_tokens=5, num_beams=2)
    assert sorted(map(id, calls)) == sorted(id(part) for part in model.prompt_encoder["default"].values())


# ---------------------------------------------------------------------------------------------
# The fused pass and gradient checkpointing


def paired_paper_model(arch: str, checkpointing: bool = False):
    from test_fused_and_checkpointing import NO_DROPOUT

    torch.manual_seed(0)
    model = get_peft_model(tiny_model(arch, **NO_DROPOUT), paper_config(), adapter_name="plain")
    model.add_adapter("mlp", paper_config(True, encoder_hidden_size=16))
    with torch.no_grad():
        for param in model.prompt_encoder.parameters():
            param.normal_(0, 1.0)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_pass_and_checkpointing_give_exact_gradients(arch):
    """Each variant's plain forward and backward is the reference. With checkpointing, the encoder's
    layers replay in backward after the call has ended: they must read the same encoder prefix again
    (a replay without it would not even match the recorded shapes). The fused pass runs here under
    checkpointing, so it covers the stateless caches as well as the stacked per-row prefixes."""
    from test_fused_and_checkpointing import assert_same, fused, padded, separate

    batch = padded(arch)
    expected = separate(paired_paper_model(arch), batch)
    model = paired_paper_model(arch, checkpointing=True)
    assert_same(expected, separate(model, batch))
    assert_same(expected, fused(model, batch))


def test_adapters_of_different_layouts_do_not_share_a_pass():
    model = paired_paper_model("t5")
    model.add_adapter("peft", PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N))
    assert fusable(model, ["plain", "mlp"]) is None
    assert "differ in prefix_positions" in fusable(model, ["plain", "peft"])


# ---------------------------------------------------------------------------------------------
# The hooks stay out of everything else


def test_the_base_model_and_peft_s_layout_are_untouched():
    e = example()
    batch = {"input_ids": e["x"], "attention_mask": e["x_mask"], "decoder_input_ids": e["y"]}
    base = tiny_model("t5")
    with torch.no_grad():
        plain = base(**batch).logits
    model = get_peft_model(base, paper_config(), adapter_name="paper")
    randomize_prefix(model, "paper")
    model.add_adapter("peft", PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N))
    randomize_prefix(model, "peft")
    reference = get_peft_model(tiny_model("t5"), PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N))
    reference.prompt_encoder["default"].load_state_dict(model.prompt_encoder["peft"].state_dict())
    with torch.no_grad():
        assert torch.equal(base(**batch).logits, plain)  # the base alone, hooks attached
        with model.disable_adapter():
            assert torch.equal(model(**batch).logits, plain)
        model.set_adapter("peft")
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    model.delete_adapter("paper")
    assert not any(m._forward_pre_hooks for m in base.modules())  # detached with the last paper adapter


# ---------------------------------------------------------------------------------------------
# Other models and configs


def test_mt5_and_eager_attention():
    import transformers as tf

    config = tf.MT5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          decoder_start_token_id=0, attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = tf.MT5ForConditionalGeneration(config).eval()
    assert base.config._attn_implementation == "eager"
    model = get_peft_model(base, paper_config())
    e = example()
    found = captured_key_values(base, "mt5", e["s"], e["t"])
    set_prefix(model, found)
    with torch.no_grad():
        got = model(input_ids=e["x"], attention_mask=e["x_mask"], decoder_input_ids=e["y"])
    encoded, logits = reference(base, "mt5", e["s"], e["x"], e["x_mask"], e["t"], e["y"])
    torch.testing.assert_close(got.encoder_last_hidden_state, encoded, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got.logits, logits, rtol=RTOL, atol=ATOL)


def test_a_decoder_only_model_has_one_position_and_keeps_peft_s_layout():
    with pytest.warns(UserWarning, match="prefix_positions='paper' is for encoder-decoder models"):
        filled = infer_sizes(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, prefix_positions="paper"),
                             tiny_config("gpt2"))
    assert filled.prefix_positions is None and filled.num_encoder_layers is None


@pytest.mark.parametrize(
    "arch, kwargs, field, pattern",
    [
        ("t5", {"num_encoder_layers": 3}, "num_encoder_layers",
         r"num_encoder_layers=3 does not match the model \(T5Config, the encoder's layer count, gives 2\).*"
         r"set num_encoder_layers=2"),
        ("bart", {"num_encoder_attention_heads": 8}, "num_encoder_attention_heads",
         r"num_encoder_attention_heads=8 does not match .*gives 4"),
        ("t5", {"encoder_token_dim": 32}, "encoder_token_dim",
         r"encoder_token_dim=32 does not match .*num_heads\*d_kv"),
        ("gpt2", {"num_encoder_layers": 2}, "num_encoder_layers",
         r"num_encoder_layers=2 is invalid: .*decoder-only and has no encoder; leave num_encoder_layers None"),
    ],
)
def test_encoder_sizes_that_do_not_fit_the_model_raise(arch, kwargs, field, pattern):
    task = "CAUSAL_LM" if arch == "gpt2" else "SEQ_2_SEQ_LM"
    config = PrefixTuningConfig(task_type=task, num_virtual_tokens=N,
                                prefix_positions=None if arch == "gpt2" else "paper", **kwargs)
    with pytest.raises(ConfigError, match=pattern) as info:
        infer_sizes(config, tiny_config(arch))
    assert info.value.field == field


def test_unsupported_models_and_attention_are_refused():
    from transformers import MBartConfig

    mbart = MBartConfig(vocab_size=384, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
    with pytest.raises(ConfigError, match=r"prefix_positions='paper' is invalid: .*T5, mT5, flan-T5 and BART.*"
                                          r"model_type='mbart'.*prefix_positions=None") as info:
        infer_sizes(paper_config(), mbart)
    assert info.value.field == "prefix_positions"
    base = tiny_model("bart")
    base.config._attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match=r"attn_implementation='flex_attention'.*'sdpa'") as info:
        get_peft_model(base, paper_config())
    assert info.value.field == "prefix_positions"
