"""Pretrain the offline base model `tiny-llama-d2t`: a tiny Llama that turns tables into sentences.

Li & Liang (2021) prefix-tune GPT-2, which already writes English and copies names from its
context; the prefix only steers that competence to E2E's restaurant tables. This script makes the
miniature of that competence without a download: a Llama (rotary positions, tied embeddings)
trained on data-to-text in ten invented domains (`prefixlab.tools.make_domains`: books, cars,
films, ... as `key[value] | ...` => sentence, the loss on the sentences only), never the restaurant
domain's tables. It learns the general skill, writing a sentence that copies a table's values; a
prefix then transfers it to e2e-synth's restaurant schema.

Like GPT-2, which has read restaurant descriptions but never an E2E table, it also reads the
*target sentences* of e2e-synth's train split as plain text (`--sentence-repeats` times each, loss
on every token; never their tables, never a validation or test sentence), so the restaurant words
are words it knows. Measured: without them (the invented domains alone, which avoid every
restaurant word) prefix tuning reached 21% slot accuracy on 32 validation tables in 300 steps, the
restaurant words themselves broken.

Its tokenizer is a byte-level BPE (as GPT-2's) learned from the first `--tokenizer-examples` of the
same corpus, so frequent words are one id and a name is a few. A table's brackets and bars are
spaced out before tokenizing (`name[The Eagle]` reads as ` name [ The Eagle ]`), so a value is the
same ids in a table as in a sentence: copying it is the same ids again. (Measured: byte-level
models of this size, GPT-2 or Llama, pretrained on this corpus for up to an hour never copied.)

    python -m prefixlab.tools.pretrain_d2t --out presets/models/tiny-llama-d2t

Deterministic: one seed drives the corpus, initialisation and data order; with the same torch
build, the same number of threads and the same kind of CPU the same command writes the same weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from prefixlab.engine.data import BUILTIN_TASKS, PRESETS_DIR
from prefixlab.tools import pretrain
from prefixlab.tools.make_domains import DEFAULT_EXAMPLES
from prefixlab.tools.pretrain import deterministic, final_loss, optimise

REPO_ROOT = PRESETS_DIR.parent
MODULE_COMMAND = "python -m prefixlab.tools.pretrain_d2t"
TRAIN_FILE = BUILTIN_TASKS["e2e-synth"] / "train.jsonl"
SEPARATOR = " => "  # between table and sentence, as presets/offline-d2t.json's data.separator
EOS, PAD = "<|endoftext|>", "<pad>"
IGNORE_INDEX = -100


@dataclass
class D2TArgs:
    out: str = field(metadata={"help": "Folder to write the model, its tokenizer, README.md and losses.json into."})
    examples: int = field(default=DEFAULT_EXAMPLES, metadata={
        "help": "(table, sentence) examples of the invented domains."})
    tokenizer_examples: int = field(default=40_000, metadata={"help": "The first this many train the tokenizer."})
    sentence_file: str = field(default=str(TRAIN_FILE), metadata={
        "help": "A task's train split; its target sentences are read as plain text (never its sources)."})
    sentence_repeats: int = field(default=10, metadata={
        "help": "How many times each of those sentences is in the corpus (0: none)."})
    vocab_size: int = field(default=2048, metadata={"help": "BPE vocabulary, special ids included."})
    steps: int = field(default=4000, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=32, metadata={"help": "Examples per step, each padded to the longest."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps, then cosine decay to 10%."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on weight matrices."})
    hidden_size: int = field(default=192, metadata={"help": "Hidden size (SwiGLU width 8/3 of it)."})
    layers: int = field(default=4, metadata={"help": "Transformer blocks."})
    head_dim: int = field(default=32, metadata={"help": "Width of an attention head (hidden_size / heads)."})
    positions: int = field(default=256, metadata={"help": "max_position_embeddings (rotary: a hint, no wall)."})
    seed: int = field(default=0, metadata={"help": "Seeds the corpus, initialisation and data order."})
    threads: int = field(default=2, metadata={"help": "torch threads (the weights depend on it bit for bit)."})
    save_dtype: str = field(default="float16", metadata={
        "help": "float16 or float32: the precision model.safetensors is stored in (the zoo loads float32)."})
    log_interval: int = field(default=100, metadata={"help": "Print the loss every this many steps."})

    def __post_init__(self):
        for name in ("examples", "tokenizer_examples", "vocab_size", "steps", "batch_size", "hidden_size", "layers",
                     "head_dim", "positions", "threads", "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.sentence_repeats, int) or self.sentence_repeats < 0:
            raise ValueError(f"sentence_repeats must be an integer >= 0, got {self.sentence_repeats!r}")
        if self.sentence_repeats and not Path(self.sentence_file).is_file():
            raise ValueError(f"sentence_file {self.sentence_file!r} does not exist; pass a train split, or "
                             "--sentence-repeats 0")
        if self.hidden_size % self.head_dim:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of head_dim ({self.head_dim})")
        if not self.learning_rate > 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be > 0, warmup_steps and weight_decay >= 0")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"save_dtype must be float16 or float32, got {self.save_dtype!r}")


# ---------------------------------------------------------------------------------------------
# Tokenizer and data


def build_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE learned from `texts`: eos 0, pad 1, brackets and bars spaced out, whitespace
    runs as one space, every word (the first too) with its leading space. Decodes back the text as
    normalised, without the space the pre-tokenizer put before its first word (Llama's tokenizers
    strip theirs the same way), so a generated sentence reads "The Eagle ...", not " The Eagle ..."."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence(
        [*(normalizers.Replace(mark, f" {mark} ") for mark in "[]|"),
         normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD,
                                   model_max_length=1_000_000)


def encode(examples: list[dict], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, sentence ids + eos) per example, as prefixlab lays out a causal LM's example:
    `source + separator` (not learned), then the sentence and eos (learned)."""
    eos = tokenizer.eos_token_id
    return [(tokenizer(e["source"] + SEPARATOR, add_special_tokens=False)["input_ids"],
             tokenizer(e["target"], add_special_tokens=False)["input_ids"] + [eos]) for e in examples]


def encode_sentences(sentences: list[str], tokenizer) -> list[tuple[list[int], list[int]]]:
    """Plain text as (prompt, sentence) pairs: eos starts it (not learned), then the sentence and eos."""
    eos = tokenizer.eos_token_id
    return [([eos], tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]) for text in sentences]


def read_sentences(args: D2TArgs) -> list[str]:
    """The target sentences of `args.sentence_file` (none when sentence_repeats is 0)."""
    if not args.sentence_repeats:
        return []
    from prefixlab.engine.data import read_examples

    return [example["target"] for example in read_examples(args.sentence_file)]


def collate(pairs: list[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (-100 on prompts and padding), each (batch, longest)."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX)
    for row, (prompt, target) in enumerate(pairs):
        n = len(prompt) + len(target)
        ids[row, :n] = torch.tensor(prompt + target)
        mask[row, :n] = 1
        labels[row, len(prompt):n] = torch.tensor(target)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(pairs, args: D2TArgs, pad: int, generator: torch.Generator):
    """`args.steps` batches of `args.batch_size` examples, epoch after epoch, each epoch reshuffled."""
    order, at = [], 0
    for _ in range(args.steps):
        if at + args.batch_size > len(order):
            order, at = torch.randperm(len(pairs), generator=generator).tolist(), 0
        yield collate([pairs[i] for i in order[at: at + args.batch_size]], pad)
        at += args.batch_size


# ---------------------------------------------------------------------------------------------
# Model and training


def model_config(args: D2TArgs, tokenizer):
    from transformers import LlamaConfig

    heads = args.hidden_size // args.head_dim
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                       intermediate_size=-(-8 * args.hidden_size // 3 // 32) * 32, num_hidden_layers=args.layers,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=args.head_dim,
                       max_position_embeddings=args.positions, tie_word_embeddings=True,
                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)


def train(args: D2TArgs, pairs, tokenizer, log=print):
    """Train from scratch; returns the model (eval mode) and every step's loss (nats per sentence token)."""
    from transformers import LlamaForCausalLM

    with deterministic(args.seed, args.threads):
        model = LlamaForCausalLM(model_config(args, tokenizer)).train()
        generator = torch.Generator().manual_seed(args.seed)  # data order
        losses = optimise(model, batches(pairs, args, tokenizer.pad_token_id, generator), args, log)
    return model.eval(), losses


# ---------------------------------------------------------------------------------------------
# Output folder


def command_line(args: D2TArgs) -> str:
    """The command that regenerates `args`: defaults left out."""
    return pretrain.command_line(args, MODULE_COMMAND)


def model_card(args: D2TArgs, model, losses: list[float], seconds: float, len_sentences: int) -> str:
    from transformers import __version__ as transformers_version

    params = sum(p.numel() for p in model.parameters())
    settings = "\n".join(f"| {k} | {v} |" for k, v in asdict(args).items() if k not in ("out", "log_interval"))
    name = Path(args.out).name
    return f"""# {name}

A tiny Llama ({args.layers} layers, width {args.hidden_size}, {args.hidden_size // args.head_dim} heads,
rotary positions, tied embeddings, {params:,} parameters) with its own byte-level BPE tokenizer
({model.config.vocab_size} ids: eos 0, pad 1), pretrained on **data-to-text in ten invented domains**
(`prefixlab.tools.make_domains`: books, cars, films, parks, gadgets, animals, trains, concerts,
football clubs, flats; {args.examples:,} examples `key[value] | ...{SEPARATOR}sentence`, loss on the sentences).
It never saw a restaurant table: none of e2e-synth's attributes, values, names or landmarks occurs in
those domains. It also read the {len_sentences:,} target sentences of `{Path(args.sentence_file).name}` (e2e-synth's
train split) as plain text, {args.sentence_repeats} times each, as GPT-2 has read restaurant descriptions;
never a source table, a validation or a test sentence. It turns a table of its domains into a
sentence that copies the values; a prefix has to teach it the restaurant schema: which key says
what, and to realise every value (prefixlab's offline preset `tiny-llama-d2t`, recipe
`presets/offline-d2t.json`).

## How it was made

    {command_line(args)}

torch {torch.__version__}, transformers {transformers_version}, CPU, {args.threads} thread(s), seed {args.seed},
{seconds / 60:.0f} minutes: the same command with the same torch build, threads and kind of CPU
writes the same weights. The tokenizer is learned from the first {args.tokenizer_examples:,} examples and the sentences once each.
AdamW (betas 0.9/0.95, weight decay on weight matrices only), {args.warmup_steps} warm-up steps then
cosine decay to 10%, gradient norm clipped at 1, batches of {args.batch_size} whole examples.

| setting | value |
|---|---|
{settings.replace(str(REPO_ROOT) + "/", "")}

## Result

- steps: {args.steps} ({args.steps * args.batch_size / (args.examples + len_sentences * args.sentence_repeats):.2f} epochs)
- first training loss: {losses[0]:.4f} nats per sentence token
- final training loss (mean of the last {min(20, len(losses))} steps): {final_loss(losses):.4f}
"""


def run(args: D2TArgs, log=print) -> Path:
    """Generate the corpus, learn the tokenizer, train and write the folder; returns its path."""
    from prefixlab.tools import make_domains

    started = time.perf_counter()
    examples = make_domains.generate(args.examples, seed=args.seed)
    sentences = read_sentences(args)
    tokenizer = build_tokenizer([e["source"] + SEPARATOR + e["target"] for e in examples[: args.tokenizer_examples]]
                                + sentences, args.vocab_size)
    pairs = encode(examples, tokenizer) + encode_sentences(sentences, tokenizer) * args.sentence_repeats
    model, losses = train(args, pairs, tokenizer, log=log)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.save_dtype == "float16":
        model = model.half()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(args, model, losses, seconds, len(sentences)), encoding="utf-8")
    (out / "losses.json").write_text(json.dumps([round(x, 6) for x in losses]) + "\n", encoding="utf-8")
    log(f"final loss {final_loss(losses):.4f} after {args.steps} steps in {seconds:.0f} s; wrote {out}")
    return out


def parse_args(argv=None) -> D2TArgs:
    return pretrain.parse_settings(D2TArgs, MODULE_COMMAND, __doc__.split("\n\n")[0], argv)


def main(argv=None) -> int:
    return pretrain.run_command(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
