"""Tiny random-weight models that need no download.

Tests and the offline presets build models from transformers' config classes with a fixed seed, so
every process gets bit-identical weights for the same (arch, seed, sizes): an adapter trained in a
worker process loads onto the same base in the page's process or in a test. The tokenizer is
ByT5's, which is defined in code (bytes + 3 special ids + 125 sentinels = 384 ids) and needs no
files.
"""

from __future__ import annotations

VOCAB_SIZE = 384  # len(ByT5Tokenizer())
PAD_ID, EOS_ID = 0, 1  # ByT5's ids
TINY_ARCHS = ("gpt2", "llama", "t5", "bart")
_COMMON = dict(vocab_size=VOCAB_SIZE, pad_token_id=PAD_ID, eos_token_id=EOS_ID)
# Each architecture's config values, as plain data: the checks read sizes from them without
# importing transformers (tests/test_zoo.py checks they equal the built configs).
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=EOS_ID),
    # Grouped-query attention (8 query heads, 2 key/value heads) and an explicit head_dim that
    # differs from hidden_size // num_attention_heads, the two layouts prefix code gets wrong.
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                  bos_token_id=EOS_ID),
    "t5": dict(model_type="t5", is_encoder_decoder=True, d_model=64, d_kv=16, d_ff=128, num_layers=2,
               num_decoder_layers=2, num_heads=4, decoder_start_token_id=PAD_ID),
    "bart": dict(model_type="bart", is_encoder_decoder=True, d_model=64, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 max_position_embeddings=512, bos_token_id=EOS_ID, decoder_start_token_id=EOS_ID,
                 forced_eos_token_id=None),
}
# Parameters of each tiny model (tied embeddings once), for the parameter table without building the
# model; tests/test_zoo.py counts the real models.
TINY_PARAMETERS = {"gpt2": 157_440, "llama": 139_584, "t5": 189_440, "bart": 258_048}


def tiny_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def _classes(arch: str):
    """(config class, model class) of a tiny architecture."""
    import transformers

    names = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "llama": ("LlamaConfig", "LlamaForCausalLM"),
             "t5": ("T5Config", "T5ForConditionalGeneration"),
             "bart": ("BartConfig", "BartForConditionalGeneration")}
    if arch not in names:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    return tuple(getattr(transformers, name) for name in names[arch])


def tiny_config_values(arch: str) -> dict:
    """The config of a tiny model of `arch` as plain values (model_type included)."""
    if arch not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    return {**TINY_CONFIGS[arch], **_COMMON}


def tiny_config(arch: str, **overrides):
    """A config for a tiny model of `arch` with ByT5's vocabulary and special ids."""
    config_class, _ = _classes(arch)
    values = {k: v for k, v in tiny_config_values(arch).items() if k not in ("model_type", "is_encoder_decoder")}
    cfg = config_class(**values)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(arch: str, seed: int = 0, **overrides):
    """A tiny model in eval mode whose weights depend only on (arch, seed, overrides)."""
    import torch

    config = tiny_config(arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _classes(arch)[1](config)
    return model.eval()
