"""Pretrain the offline base model `tiny-gpt2-e2e`: a tiny GPT-2 that writes restaurant sentences.

Li & Liang (2021, section 5) prefix-tune a *pretrained* LM: the frozen model already writes fluent
text, and the prefix only has to steer it to the table. The other offline presets have random
weights, so a prefix cannot make them write words. This script builds the miniature analogue
without a download: a GPT-2 with ByT5's byte tokenizer, trained as a plain language model on the
*target sentences* of e2e-synth's train split only. It never sees a source table, so it writes
restaurant sentences but cannot follow an attribute table: that is what the prefix has to learn.
Validation and test targets stay unseen, so they measure how well it learned the domain.

    python -m prefixlab.tools.pretrain --out presets/models/tiny-gpt2-e2e

Deterministic: one seed drives initialisation, shuffling and dropout, and torch runs on one thread,
so the same torch build on the same kind of CPU regenerates bit-identical weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import transformers
from transformers import GPT2LMHeadModel

from prefixlab.engine.data import BUILTIN_TASKS, FILE_SUFFIXES, PRESETS_DIR, read_examples
from prefixlab.engine.tiny import EOS_ID, tiny_config, tiny_tokenizer

TRAIN_FILE = BUILTIN_TASKS["e2e-synth"] / "train.jsonl"
REPO_ROOT = PRESETS_DIR.parent
MODULE_COMMAND = "python -m prefixlab.tools.pretrain"


@dataclass
class PretrainArgs:
    out: str = field(metadata={"help": "Folder to write config.json, model.safetensors and README.md into."})
    train_file: str = field(default=str(TRAIN_FILE), metadata={
        "help": "A task's train split (train.jsonl/.json/.csv); only its target column is read."})
    stages: str = field(default="128x1500,256x1000,512x1500", metadata={
        "help": "Block length x steps, stage after stage (sequence-length warm-up): a byte LM's learning is limited "
                "by steps, not tokens (it sits on the bigram plateau, about 2 nats, for a while), so it learns "
                "words fastest on cheap short blocks; the longer stages teach the later positions and long "
                "contexts that prefix tuning needs (prefix + table + sentence reach 430 tokens)."})
    batch_size: int = field(default=1, metadata={"help": "Blocks per step (small: steps, not tokens, limit learning)."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps, then cosine decay to 10%."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    dropout: float = field(default=0.0, metadata={
        "help": "GPT-2's residual, embedding and attention dropout, stored in config.json (so prefix tuning "
                "sees it too). 0: a few epochs of this data do not overfit a model this small."})
    seed: int = field(default=0, metadata={"help": "Seeds initialisation, shuffling and dropout."})
    n_embd: int = field(default=128, metadata={"help": "Hidden size."})
    n_layer: int = field(default=4, metadata={"help": "Transformer blocks."})
    n_head: int = field(default=4, metadata={"help": "Attention heads."})
    n_positions: int = field(default=512, metadata={
        "help": "Longest sequence, prefix included: e2e-synth's source + separator + target reach 420 bytes."})
    log_interval: int = field(default=25, metadata={"help": "Print the loss every this many steps."})

    @property
    def stage_list(self) -> list[tuple[int, int]]:
        """`stages` as [(block_length, steps), ...]; ValueError naming the stage if one is malformed."""
        result = []
        for stage in self.stages.split(","):
            try:
                block, steps = (int(x) for x in stage.strip().split("x"))
            except ValueError:
                block = steps = 0
            if block < 2 or steps < 1:
                raise ValueError(f"stages: {stage.strip()!r} is not BLOCKxSTEPS with a block length of at least 2 "
                                 f"and at least one step; write e.g. 128x1500,512x1500")
            result.append((block, steps))
        return result

    @property
    def steps(self) -> int:
        return sum(steps for _, steps in self.stage_list)

    def __post_init__(self):
        for name in ("batch_size", "n_embd", "n_layer", "n_head", "n_positions",
                     "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                             "pick sizes like 128 and 4")
        longest = max(block for block, _ in self.stage_list)
        if longest > self.n_positions:
            raise ValueError(f"stages: block length {longest} exceeds n_positions ({self.n_positions}); shorten it "
                             "or raise n_positions")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(f"warmup_steps and weight_decay must be >= 0, got {self.warmup_steps!r} and "
                             f"{self.weight_decay!r}")
        check_train_split(self.train_file)


def check_train_split(path: str | Path) -> Path:
    """The path, if it names a train split file; else ValueError.

    Validation and test targets must stay unseen (they measure the pretrained model, and the
    prefix-tuning runs evaluate on them), and sources never enter pretraining at all.
    """
    path = Path(path)
    if path.stem != "train" or path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"train_file {str(path)!r}: pretraining reads only a task's train split, a file named "
                         f"train{'/train'.join(FILE_SUFFIXES)}; validation and test sentences must stay held out. "
                         f"Pass e.g. {TRAIN_FILE}")
    if not path.is_file():
        raise ValueError(f"train_file {str(path)!r} does not exist; pass e.g. {TRAIN_FILE}")
    return path


# ---------------------------------------------------------------------------------------------
# Data: packed target sentences


def read_targets(path: str | Path) -> list[str]:
    """The target column of a train split; its source column is ignored."""
    return [example["target"] for example in read_examples(check_train_split(path))]


def encode_targets(targets: list[str]) -> list[list[int]]:
    """Byte ids of each sentence followed by eos, the end a prefix-tuned model must also learn to write."""
    tokenizer = tiny_tokenizer()
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) + [EOS_ID] for t in targets]


def packed_blocks(sentences: list[list[int]], block_size: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch: sentences in a fresh seeded order, joined back to back, cut into blocks.

    The stream starts with eos, so every sentence follows an eos as it does after training data.
    Returns (num_blocks, block_size); the last partial block is dropped.
    """
    order = torch.randperm(len(sentences), generator=generator).tolist()
    stream = [EOS_ID] + [token for i in order for token in sentences[i]]
    num_blocks = len(stream) // block_size
    return torch.tensor(stream[: num_blocks * block_size]).view(num_blocks, block_size)  # (blocks, block)


def batches(sentences: list[list[int]], block_size: int, batch_size: int, generator: torch.Generator):
    """Endless (batch_size, block_size) batches, epoch after epoch, each epoch reshuffled."""
    while True:
        blocks = packed_blocks(sentences, block_size, generator)
        for start in range(0, len(blocks) - batch_size + 1, batch_size):
            yield blocks[start: start + batch_size]  # (batch, block)


def schedule(sentences: list[list[int]], args: PretrainArgs, generator: torch.Generator):
    """`args.steps` batches: each stage's steps of (batch_size, its block length), in order."""
    for block_size, steps in args.stage_list:
        stage = batches(sentences, block_size, args.batch_size, generator)
        for _ in range(steps):
            yield next(stage)


# ---------------------------------------------------------------------------------------------
# Model and optimisation


def model_config(args: PretrainArgs):
    """tiny-gpt2's config (ByT5 vocabulary and special ids) at the sizes in `args`."""
    return tiny_config("gpt2", n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                       n_positions=args.n_positions, resid_pdrop=args.dropout, embd_pdrop=args.dropout,
                       attn_pdrop=args.dropout)


def learning_rate_at(step: int, args) -> float:
    """Linear warm-up to the peak, then cosine decay to 10% of it at the last step."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def decayed_parameter_names(model: torch.nn.Module) -> set[str]:
    """Weight matrices get weight decay; biases, layer norms and embeddings do not (as in nanoGPT)."""
    embeddings = ("wte", "wpe", "embed_tokens")  # GPT-2's token and position tables, Llama's token table
    return {name for name, p in model.named_parameters() if p.dim() == 2 and not any(e in name for e in embeddings)}


def make_optimizer(model: torch.nn.Module, args) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95) at args.learning_rate, weight decay args.weight_decay on weight matrices only."""
    decayed = decayed_parameter_names(model)
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decayed], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))


@contextlib.contextmanager
def deterministic(seed: int, threads: int):
    """Inside: `threads` intra-op threads (a fixed count: the same reduction order, hence the same
    weights, every run) and torch's RNG seeded with `seed` (initialisation, dropout); the caller's
    thread count and RNG are restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous)


def optimise(model: torch.nn.Module, batches, args, log) -> list[float]:
    """Train `model` on `batches` (keyword arguments of its forward, labels included), one AdamW step
    each (make_optimizer, learning_rate_at, gradients clipped to norm 1); every step's loss."""
    optimizer = make_optimizer(model, args)
    losses = []
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, args)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % args.log_interval == 0 or step + 1 == args.steps:
            log(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}  lr {learning_rate_at(step, args):.2e}")
    return losses


def train(args: PretrainArgs, sentences: list[list[int]], log=print) -> tuple[GPT2LMHeadModel, list[float]]:
    """Train from scratch on encoded sentences; returns the model (eval mode) and every step's loss (nats/token)."""
    with deterministic(args.seed, threads=1):
        generator = torch.Generator().manual_seed(args.seed)  # data order
        model = GPT2LMHeadModel(model_config(args)).train()
        batches = ({"input_ids": batch, "labels": batch} for batch in schedule(sentences, args, generator))
        losses = optimise(model, batches, args, log)
    return model.eval(), losses


# ---------------------------------------------------------------------------------------------
# Output folder


def final_loss(losses: list[float], window: int = 20) -> float:
    """Mean training loss of the last `window` steps (one step's loss is noisy)."""
    tail = losses[-window:]
    return sum(tail) / len(tail)


def command_line(args, module: str = MODULE_COMMAND) -> str:
    """The command (`module` and flags) that regenerates the settings dataclass `args`: defaults left out."""
    parts = [module]
    for f in fields(args):
        value = getattr(args, f.name)
        if f.name == "out" or value != f.default:
            parts.append(f"--{f.name.replace('_', '-')} {value}")
    return " ".join(parts).replace(str(REPO_ROOT) + "/", "")


def model_card(args: PretrainArgs, model: GPT2LMHeadModel, losses: list[float], num_sentences: int,
               num_tokens: int) -> str:
    """README.md for the output folder: what this model is, how it was made, how to remake it."""
    params = sum(p.numel() for p in model.parameters())
    tokens_seen = args.batch_size * sum(block * steps for block, steps in args.stage_list)
    settings = "\n".join(f"| {k} | {v} |" for k, v in asdict(args).items() if k not in ("out", "log_interval"))
    settings = settings.replace(str(REPO_ROOT) + "/", "")  # the card reads the same on every checkout
    return f"""# tiny-gpt2-e2e

A tiny GPT-2 ({args.n_layer} layers, width {args.n_embd}, {args.n_head} heads, {args.n_positions} positions,
{params:,} parameters, ByT5 byte tokenizer: 384 ids, pad 0, eos 1) pretrained as a plain language model
on the **target sentences** of the built-in `e2e-synth` task's **train split** only
(`{Path(args.train_file).name}`: {num_sentences} sentences, {num_tokens:,} tokens with one eos after each).
It never saw a source table, nor any validation or test sentence. It writes fluent restaurant
descriptions but cannot follow an attribute table: that is what a prefix has to learn
(prefixlab's offline preset `tiny-gpt2-e2e`; load with `prefixlab.engine.zoo.load_base("tiny-gpt2-e2e")`).

## How it was made

    {command_line(args)}

torch {torch.__version__}, transformers {transformers.__version__}, CPU, one thread, seed {args.seed}:
the same command with the same torch build on the same kind of CPU writes bit-identical weights.

Sentences are shuffled each epoch and packed back to back into blocks, so sentences start at every
position. Sequence-length warm-up: {", ".join(f"{s} steps on blocks of {b}" for b, s in args.stage_list)}
tokens ({args.batch_size} block(s) per step): short blocks make cheap steps, and a byte LM's learning is
limited by steps, not tokens; the long blocks teach the later positions and long contexts. AdamW (betas 0.9/0.95, weight decay on weight matrices only),
{args.warmup_steps} warm-up steps then cosine decay to 10%, gradient norm clipped at 1, dropout {args.dropout}.

| setting | value |
|---|---|
{settings}

## Result

- steps: {args.steps} ({tokens_seen:,} tokens, {tokens_seen / num_tokens:.1f} epochs)
- first training loss: {losses[0]:.4f} nats per token
- final training loss (mean of the last {min(20, len(losses))} steps): {final_loss(losses):.4f} nats per token
"""


def save(model: GPT2LMHeadModel, out: str | Path, card: str, losses: list[float]) -> Path:
    """config.json + model.safetensors (+ generation_config.json), the tokenizer's files, README.md, losses."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)  # the folder then also loads as a plain local model folder
    (out / "README.md").write_text(card, encoding="utf-8")
    (out / "losses.json").write_text(json.dumps([round(x, 6) for x in losses]) + "\n", encoding="utf-8")
    return out


def run(args: PretrainArgs, log=print) -> Path:
    """Train and write the folder; returns its path."""
    started = time.perf_counter()
    sentences = encode_targets(read_targets(args.train_file))
    model, losses = train(args, sentences, log=log)
    card = model_card(args, model, losses, len(sentences), sum(map(len, sentences)))
    out = save(model, args.out, card, losses)
    log(f"final loss {final_loss(losses):.4f} after {args.steps} steps in {time.perf_counter() - started:.0f} s; "
        f"wrote {out}")
    return out


def parse_settings(cls, prog: str, description: str, argv=None):
    """A settings dataclass `cls` from the command line: one --flag per field (`out` required), its
    help from the field's metadata; `cls` checks the values (ValueError)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):
        flag = f"--{f.name.replace('_', '-')}"
        if f.name == "out":
            parser.add_argument(flag, required=True, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata["help"])
    return cls(**vars(parser.parse_args(argv)))


def run_command(parse, run_settings, argv=None) -> int:
    """main(): parse the settings, printing a bad one as `error: ...` (exit 2), then run them (0)."""
    try:
        args = parse(argv)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    run_settings(args)
    return 0


def parse_args(argv=None) -> PretrainArgs:
    return parse_settings(PretrainArgs, MODULE_COMMAND, __doc__.split("\n\n")[0], argv)


def main(argv=None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
