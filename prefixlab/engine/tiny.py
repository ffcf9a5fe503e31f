"""Tiny random-weight models that need no download.

Tests and the offline presets build models from transformers' config classes with a fixed seed, so
every process gets bit-identical weights for the same (arch, seed, sizes): an adapter trained in a
worker process loads onto the same base in the page's process or in a test. The tokenizer is
ByT5's, which is defined in code (bytes + 3 special ids + 125 sentinels = 384 ids) and needs no
files.
"""

from __future__ import annotations

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    ByT5Tokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB_SIZE = 384  # len(ByT5Tokenizer())
PAD_ID, EOS_ID = 0, 1  # ByT5's ids
TINY_ARCHS = ("gpt2", "llama", "t5", "bart")


def tiny_tokenizer() -> ByT5Tokenizer:
    return ByT5Tokenizer()


def tiny_config(arch: str, **overrides):
    """A config for a tiny model of `arch` with ByT5's vocabulary and special ids."""
    common = dict(vocab_size=VOCAB_SIZE, pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=EOS_ID, **common)
    elif arch == "llama":
        # Grouped-query attention (8 query heads, 2 key/value heads) and an explicit head_dim that
        # differs from hidden_size // num_attention_heads, the two layouts prefix code gets wrong.
        cfg = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=EOS_ID, **common,
        )
    elif arch == "t5":
        cfg = T5Config(
            d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
            decoder_start_token_id=PAD_ID, **common,
        )
    elif arch == "bart":
        cfg = BartConfig(
            d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
            max_position_embeddings=512, bos_token_id=EOS_ID, decoder_start_token_id=EOS_ID,
            forced_eos_token_id=None, **common,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


_MODEL_CLASSES = {
    "gpt2": GPT2LMHeadModel,
    "llama": LlamaForCausalLM,
    "t5": T5ForConditionalGeneration,
    "bart": BartForConditionalGeneration,
}


def tiny_model(arch: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny model in eval mode whose weights depend only on (arch, seed, overrides)."""
    config = tiny_config(arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[arch](config)
    return model.eval()
