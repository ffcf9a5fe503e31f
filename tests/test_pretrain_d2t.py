"""The shipped offline base `tiny-llama-d2t` (a tiny Llama pretrained on data-to-text in invented
domains, with its own BPE tokenizer) and the script that makes it (prefixlab.tools.pretrain_d2t)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from prefixlab.core.config import TaskType
from prefixlab.engine import zoo
from prefixlab.engine.data import encode_examples, encode_prompts
from prefixlab.engine.metrics import slot_counts
from prefixlab.tools import make_domains, make_task, pretrain_d2t

NAME = "tiny-llama-d2t"
FOLDER = zoo.SHIPPED_MODELS[NAME]
REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "presets" / "offline-d2t.json"
# A tiny run of the script: seconds, yet every part of it (corpus, tokenizer, batches, decay, saving) runs.
QUICK = ["--examples", "300", "--tokenizer-examples", "200", "--vocab-size", "400", "--steps", "3",
         "--batch-size", "4", "--warmup-steps", "1", "--hidden-size", "32", "--layers", "1", "--head-dim", "16",
         "--log-interval", "1"]


@pytest.fixture(scope="module")
def shipped():
    return zoo.load_base(NAME)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Two runs of the same quick command into two folders."""
    root = tmp_path_factory.mktemp("d2t")
    return [pretrain_d2t.run(pretrain_d2t.parse_args(["--out", str(root / name), *QUICK]), log=lambda _: None)
            for name in ("a", "b")]


# ---------------------------------------------------------------------------------------------
# The script


def test_a_value_is_the_same_ids_in_a_table_and_in_a_sentence(shipped):
    """Copying a value is emitting the ids it has in the table: brackets and bars are spaced out, and
    every word, the first of a value too, carries its leading space."""
    _, tokenizer, _ = shipped
    tokens = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for value in ("The Golden Curry", "Café Rouge", "less than £20", "Brelquoth Vane"):
        table = tokens(f"name[{value}] | near[{value}]")
        sentence = tokens(f"There is {value} by the river.")
        ids = tokens(value)
        assert table == tokens("name [") + ids + tokens("] | near [") + ids + tokens("]")
        assert sentence[2: 2 + len(ids)] == ids
    text = "The Eagle is a  pub,\n near Café Rouge."
    assert tokenizer.decode(tokens(text)) == "The Eagle is a pub, near Café Rouge."  # whitespace runs: one space
    # A generated sentence (the ids after "... =>") reads without the space its first word's id carries.
    prompt, whole = tokens("name[The Eagle] =>"), tokens("name[The Eagle] => The Eagle is a pub.")
    assert whole[:len(prompt)] == prompt and tokenizer.decode(whole[len(prompt):]) == "The Eagle is a pub."
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1)


def test_a_quick_run_is_deterministic_and_saves_float16_with_its_tokenizer(quick_runs):
    first, second = quick_runs
    for name in ("model.safetensors", "tokenizer.json", "losses.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    decoder = lambda folder: json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["decoder"]  # noqa: E731
    assert decoder(first) == decoder(REPO / "presets/models" / NAME)  # the shipped file decodes as the script's
    assert {t.dtype for t in load_file(first / "model.safetensors").values()} == {torch.float16}
    model = LlamaForCausalLM.from_pretrained(first, dtype=torch.float32)
    assert model.config.tie_word_embeddings and model.config.vocab_size == 400
    losses = json.loads((first / "losses.json").read_text())
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    card = (first / "README.md").read_text(encoding="utf-8")
    assert card.startswith("# a\n") and f"--out {first} {' '.join(QUICK)}" in card


def test_batches_learn_only_the_sentences():
    """Prompt ids and padding are -100 in the labels; each example is whole and on its own row."""
    pairs = [([5, 6, 7], [8, 0]), ([9], [10, 11, 0])]
    batch = pretrain_d2t.collate(pairs, pad=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 0], [9, 10, 11, 0, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 0], [-100, 10, 11, 0, -100]]


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"steps must be a positive integer, got 0"):
        pretrain_d2t.D2TArgs(out=str(tmp_path), steps=0)
    with pytest.raises(ValueError, match=r"hidden_size \(100\) must be a multiple of head_dim \(32\)"):
        pretrain_d2t.D2TArgs(out=str(tmp_path), hidden_size=100)
    with pytest.raises(ValueError, match=r"save_dtype must be float16 or float32, got 'int8'"):
        pretrain_d2t.D2TArgs(out=str(tmp_path), save_dtype="int8")
    assert pretrain_d2t.main(["--out", str(tmp_path), "--batch-size", "-1"]) == 2


# ---------------------------------------------------------------------------------------------
# The shipped model


def test_shipped_model_is_float16_on_disk_and_float32_through_the_zoo(shipped):
    model, tokenizer, task_type = shipped
    assert task_type == TaskType.CAUSAL_LM and not model.training and zoo.MODEL_PRESETS[NAME].offline
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    stored = load_file(FOLDER / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    state = model.state_dict()
    assert all(torch.equal(state[k].half(), v) for k, v in stored.items())
    params = sum(p.numel() for p in model.parameters())
    assert zoo.count_base_parameters(NAME) == params
    assert f"{params / 1e6:.1f}M parameters" in zoo.MODEL_PRESETS[NAME].description
    assert (FOLDER / "model.safetensors").stat().st_size < 5_000_000
    assert len(tokenizer) == model.config.vocab_size == pretrain_d2t.D2TArgs(out="x").vocab_size
    assert zoo.own_tokenizer(NAME) and not zoo.own_tokenizer("tiny-gpt2-e2e")


def test_a_missing_tokenizer_file_is_named_with_the_command(monkeypatch, tmp_path):
    """Without its tokenizer the model would read ByT5's ids: refused, naming the file and the command."""
    folder = tmp_path / NAME
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (folder / name).write_bytes((FOLDER / name).read_bytes())
    monkeypatch.setitem(zoo.SHIPPED_MODELS, NAME, folder)
    with pytest.raises(zoo.ModelLoadError, match=r"offline preset 'tiny-llama-d2t': tokenizer\.json is missing "
                       r"from .*; restore them from git or regenerate them with "
                       r"`python -m prefixlab\.tools\.pretrain_d2t --out presets/models/tiny-llama-d2t`"):
        zoo.load_base(NAME)


def test_shipped_card_states_the_command_that_made_it():
    card = (FOLDER / "README.md").read_text(encoding="utf-8")
    args = pretrain_d2t.parse_args(["--out", "presets/models/tiny-llama-d2t"])
    assert card.startswith(f"# {NAME}\n") and f"    {pretrain_d2t.command_line(args)}\n" in card
    assert pretrain_d2t.command_line(args) == zoo._REGENERATE[NAME]  # the defaults are the shipped recipe
    losses = json.loads((FOLDER / "losses.json").read_text())
    assert len(losses) == args.steps
    assert f"(mean of the last 20 steps): {pretrain_d2t.final_loss(losses):.4f}" in card


def _greedy(model, tokenizer, sources: list[str], max_new_tokens: int = 80) -> list[str]:
    encoded = encode_prompts(sources, tokenizer, TaskType.CAUSAL_LM, pretrain_d2t.SEPARATOR, max_length=256)
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return [tokenizer.decode(o[encoded["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]


def test_shipped_model_copies_the_values_of_tables_it_never_saw(shipped):
    """The skill it was pretrained for, on tables of its domains from another seed: greedy sentences
    that realise most values (names invented, so copied, not remembered)."""
    model, tokenizer, _ = shipped
    examples = make_domains.generate(16, seed=12345)
    texts = _greedy(model, tokenizer, [e["source"] for e in examples])
    values = [(v, t) for e, t in zip(examples, texts) for v in make_task.parse_source(e["source"]).values()
              if v not in ("true", "false")]
    copied = sum(v in t for v, t in values) / len(values)
    assert copied >= 0.75, (copied, texts)


def test_restaurant_tables_are_new_to_the_shipped_model(shipped):
    """Before any prefix it realises few of e2e-synth's values: the restaurant schema is the prefix's
    to teach (the preset's base row)."""
    model, tokenizer, _ = shipped
    examples = [json.loads(line) for line in (REPO / "presets/data/e2e_synth/validation.jsonl").open()][:16]
    texts = _greedy(model, tokenizer, [e["source"] for e in examples])
    hits, total = slot_counts(texts, [e["source"] for e in examples])
    assert hits / total < 0.3, texts


def test_preset_trains_the_shipped_model_on_the_restaurant_task():
    from prefixlab.engine.spec import ExperimentSpec

    spec = ExperimentSpec.load(PRESET)
    raw = json.loads(PRESET.read_text(encoding="utf-8"))
    assert raw["_command"] == "python -m prefixlab train presets/offline-d2t.json"
    assert spec.model.name == NAME and spec.data.source == "e2e-synth" and spec.generation.strategy == "beam"
    assert spec.data.separator == pretrain_d2t.SEPARATOR
    assert spec.variant_names == ["no_projection", "projection"]
    assert "slot accuracy" in spec.description and "evaluate" in spec.description
    # Every train example fits max_length whole (none truncated), with the longest test sentence's room.
    _, tokenizer, task_type = zoo.load_base(NAME)
    rows = [json.loads(line) for split in ("train", "test")
            for line in (REPO / f"presets/data/e2e_synth/{split}.jsonl").open()]
    encoded = encode_examples(rows, tokenizer, task_type, max_length=10_000, separator=spec.data.separator)
    longest = max(len(f["input_ids"]) for f in encoded.features)
    assert longest <= spec.training.max_length
    target_ids = max(len(tokenizer(r["target"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert spec.generation.max_new_tokens > target_ids
