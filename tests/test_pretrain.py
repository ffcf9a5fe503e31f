"""The shipped pretrained offline base `tiny-gpt2-e2e` and the script that makes it (prefixlab.tools.pretrain)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from prefixlab.engine import zoo
from prefixlab.tools import pretrain
from prefixlab.core.config import TaskType
from prefixlab.engine.data import BUILTIN_TASKS, read_examples
from prefixlab.engine.tiny import EOS_ID, tiny_model

NAME = "tiny-gpt2-e2e"
FOLDER = zoo.SHIPPED_MODELS[NAME]
TASK = BUILTIN_TASKS["e2e-synth"]
REPO = Path(__file__).resolve().parents[1]
# A tiny run of the script: seconds, yet every part of it (packing, warm-up, decay, saving) runs.
QUICK = ["--stages", "16x2,48x2", "--batch-size", "2", "--warmup-steps", "2", "--n-embd", "32", "--n-layer", "1",
         "--n-head", "2", "--n-positions", "64", "--log-interval", "2"]


@pytest.fixture(scope="module")
def shipped():
    return zoo.load_base(NAME)


def _targets(split: str) -> list[str]:
    return [example["target"] for example in read_examples(TASK / f"{split}.jsonl")]


@pytest.fixture(scope="module")
def validation_blocks() -> torch.Tensor:
    """Held-out validation targets, each followed by eos, packed into (8, 512) blocks as in pretraining."""
    sentences = pretrain.encode_targets(_targets("validation"))
    return pretrain.packed_blocks(sentences, 512, torch.Generator().manual_seed(0))[:8]


def _token_losses(model, blocks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of each next token: (batch, block) ids -> (batch, block - 1) losses."""
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1]  # (batch, block - 1, vocab)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), blocks[:, 1:], reduction="none")


def _unigram_entropy(targets: list[str]) -> float:
    """Entropy (nats) of the byte distribution of the train targets: the loss of a context-free model."""
    counts = Counter(byte for text in targets for byte in text.encode("utf-8"))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


# ---------------------------------------------------------------------------------------------
# The shipped model


def test_shipped_weights_load_through_the_zoo_and_equal_a_hand_built_model(shipped):
    model, tokenizer, task_type = shipped
    assert task_type == TaskType.CAUSAL_LM and not model.training and zoo.MODEL_PRESETS[NAME].offline
    assert (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id) == (384, 0, 1)
    config = GPT2Config.from_json_file(FOLDER / "config.json")
    defaults = pretrain.PretrainArgs(out="unused")
    assert (config.n_embd, config.n_layer, config.n_head, config.n_positions, config.vocab_size) == (
        defaults.n_embd, defaults.n_layer, defaults.n_head, defaults.n_positions, 384)
    by_hand = GPT2LMHeadModel(config).eval()
    missing, unexpected = by_hand.load_state_dict(load_file(FOLDER / "model.safetensors"), strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}  # tied to transformer.wte, stored once
    assert by_hand.lm_head.weight.data_ptr() == by_hand.transformer.wte.weight.data_ptr()
    ids = torch.tensor([[EOS_ID, *tokenizer("The Eagle is a pub", add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, by_hand(input_ids=ids).logits)
    params = sum(p.numel() for p in model.parameters())
    assert zoo.count_base_parameters(NAME) == params
    assert (FOLDER / "model.safetensors").stat().st_size < 4_000_000 and params * 4 < 4_000_000


def test_shipped_model_learned_the_domain_from_train_targets_only(shipped, validation_blocks):
    """Held-out validation targets: the pretrained model's loss is far below the random tiny-gpt2's
    (about ln 384 = 5.95 nats) and well below the best context-free byte model's (the unigram
    entropy of the train targets, about 3.1 nats): it learned words and phrases, not letter counts."""
    train = _targets("train")
    assert not set(_targets("validation")) & set(train)  # really held out
    ours = _token_losses(shipped[0], validation_blocks).mean().item()
    random_base = _token_losses(tiny_model("gpt2"), validation_blocks).mean().item()
    unigram = _unigram_entropy(train)
    assert random_base > 5.0 and 2.5 < unigram < 3.5
    assert ours < random_base - 4.0, (ours, random_base)
    assert ours < unigram - 2.0, (ours, unigram)


def test_later_positions_and_long_contexts_were_trained(shipped, validation_blocks):
    """Prefix tuning puts the sentence after the prefix and the table, at positions ~150-430: validation
    targets packed into 512-token blocks are predicted about as well late in a block as early on."""
    losses = _token_losses(shipped[0], validation_blocks)  # (8, 511)
    early, late = losses[:, :128].mean().item(), losses[:, 256:].mean().item()
    assert late < 1.0 and late < early + 0.3, (early, late)


def test_greedy_generation_writes_words_of_the_domain(shipped):
    model, tokenizer, _ = shipped
    prompt = "The Eagle is"
    ids = torch.tensor([[EOS_ID, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=60,
                             do_sample=False, pad_token_id=0)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.strip(), repr(text)
    letters_and_spaces = sum(c.isascii() and (c.isalpha() or c == " ") for c in text)
    assert letters_and_spaces >= 0.85 * len(text), repr(text)
    words = re.findall(r"[A-Za-z]+", text)
    vocabulary = {w for t in _targets("train") for w in re.findall(r"[A-Za-z]+", t)}
    assert len(words) >= 5 and sum(w in vocabulary for w in words) >= 0.9 * len(words), repr(text)


def test_model_card_states_how_it_was_made():
    card = (FOLDER / "README.md").read_text(encoding="utf-8")
    losses = json.loads((FOLDER / "losses.json").read_text())
    assert "python -m prefixlab.tools.pretrain --out presets/models/tiny-gpt2-e2e" in card
    assert re.search(r"torch \d+\.\d+\.\d+\S*, transformers \d+\.\d+\.\d+, CPU, one thread, seed 0", card)
    assert f"- steps: {len(losses)} " in card
    assert f"final training loss (mean of the last 20 steps): {pretrain.final_loss(losses):.4f}" in card
    assert "train.jsonl" in card and "validation" in card


def test_missing_shipped_folder_says_how_to_regenerate(monkeypatch, tmp_path):
    monkeypatch.setitem(zoo.SHIPPED_MODELS, NAME, tmp_path / "gone")
    for call in (zoo.load_base, zoo.load_model_config):
        with pytest.raises(zoo.ModelLoadError, match=r"offline preset 'tiny-gpt2-e2e': config\.json, "
                           r"model\.safetensors are missing from .*gone; restore them from git or regenerate "
                           r"them with `python -m prefixlab\.tools\.pretrain --out presets/models/tiny-gpt2-e2e`"):
            call(NAME)


# ---------------------------------------------------------------------------------------------
# The script


@pytest.fixture(scope="module")
def small_train(tmp_path_factory) -> Path:
    """The first 100 lines of e2e-synth's train split, as a train split of its own: quick runs."""
    path = tmp_path_factory.mktemp("task") / "train.jsonl"
    path.write_text("".join((TASK / "train.jsonl").read_text(encoding="utf-8").splitlines(True)[:100]),
                    encoding="utf-8")
    return path


def _quick_args(out: Path, train: Path, *extra: str) -> pretrain.PretrainArgs:
    return pretrain.parse_args(["--out", str(out), "--train-file", str(train), *QUICK, *extra])


def test_pretraining_is_deterministic_across_runs_and_processes(tmp_path, small_train):
    torch.manual_seed(7)
    before = torch.rand(1)
    threads = torch.get_num_threads()
    first = pretrain.run(_quick_args(tmp_path / "a", small_train), log=lambda _: None)
    second = pretrain.run(_quick_args(tmp_path / "b", small_train), log=lambda _: None)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(1), before) and torch.get_num_threads() == threads  # caller's state untouched
    subprocess.run([sys.executable, "-m", "prefixlab.tools.pretrain", "--out", str(tmp_path / "c"), "--train-file",
                    str(small_train), *QUICK], check=True, cwd=REPO, capture_output=True)
    weights = [(d / "model.safetensors").read_bytes() for d in (first, second, tmp_path / "c")]
    assert weights[0] == weights[1] == weights[2]
    card_c = (tmp_path / "c" / "README.md").read_text().replace(str(tmp_path / "c"), str(first))
    assert (first / "README.md").read_text() == card_c  # the card differs only in --out
    other_seed = pretrain.run(_quick_args(tmp_path / "d", small_train, "--seed", "1"), log=lambda _: None)
    assert (other_seed / "model.safetensors").read_bytes() != weights[0]
    reloaded = GPT2LMHeadModel.from_pretrained(first)
    assert (reloaded.config.n_embd, reloaded.config.n_layer, reloaded.config.n_positions) == (32, 1, 64)
    losses = json.loads((first / "losses.json").read_text())
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


def test_training_lowers_the_loss_on_the_packed_targets(small_train):
    args = _quick_args(Path("unused"), small_train, "--stages", "48x30", "--learning-rate", "0.01", "--warmup-steps", "5")
    sentences = pretrain.encode_targets(pretrain.read_targets(args.train_file))
    _, losses = pretrain.train(args, sentences, log=lambda _: None)
    assert losses[0] > 5.0 and pretrain.final_loss(losses, window=5) < losses[0] - 1.5, losses


def test_only_targets_of_the_train_split_are_read(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"source": "SECRET TABLE", "target": "Zizzi is a pub."}) + "\n")
    assert pretrain.read_targets(data) == ["Zizzi is a pub."]
    assert pretrain.encode_targets(["ab"]) == [[ord("a") + 3, ord("b") + 3, EOS_ID]]  # ByT5: byte + 3
    blocks = pretrain.packed_blocks([[10, 11, EOS_ID], [20, EOS_ID]], 3, torch.Generator().manual_seed(0))
    assert blocks.shape == (2, 3) and blocks[0, 0].item() == EOS_ID
    assert sorted(blocks.flatten().tolist()) == sorted([EOS_ID, 10, 11, EOS_ID, 20, EOS_ID])


@pytest.mark.parametrize("split", ["validation", "test"])
def test_refuses_validation_and_test_splits(tmp_path, split, capsys):
    path = TASK / f"{split}.jsonl"
    message = rf"train_file '.*{split}\.jsonl': pretraining reads only a task's train split"
    with pytest.raises(ValueError, match=message):
        pretrain.PretrainArgs(out=str(tmp_path), train_file=str(path))
    with pytest.raises(ValueError, match=message):
        pretrain.read_targets(path)
    assert pretrain.main(["--out", str(tmp_path / "x"), "--train-file", str(path)]) == 2
    assert "pretraining reads only a task's train split" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"n_embd \(100\) must be divisible by n_head \(3\)"):
        pretrain.PretrainArgs(out=str(tmp_path), n_embd=100, n_head=3)
    with pytest.raises(ValueError, match=r"stages: block length 600 exceeds n_positions \(512\)"):
        pretrain.PretrainArgs(out=str(tmp_path), stages="128x10,600x10")
    for bad in ("128x0", "128-10", "x"):
        with pytest.raises(ValueError, match=rf"stages: '{bad}' is not BLOCKxSTEPS"):
            pretrain.PretrainArgs(out=str(tmp_path), stages=f"64x5,{bad}")
    assert pretrain.PretrainArgs(out=str(tmp_path), stages="64x5, 128x7").steps == 12
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        pretrain.PretrainArgs(out=str(tmp_path), batch_size=0)
    with pytest.raises(ValueError, match=r"train_file '.*nowhere/train\.jsonl' does not exist"):
        pretrain.PretrainArgs(out=str(tmp_path), train_file=str(tmp_path / "nowhere" / "train.jsonl"))
