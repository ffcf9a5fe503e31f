"""The built-in table-to-text task and its generator, prefixlab.tools.make_task: deterministic, shipped
as generated, disjoint, faithful. Also the invented domains that pretrain tiny-llama-d2t
(prefixlab.tools.make_domains): deterministic, faithful, and free of the restaurant domain."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefixlab.tools import make_domains, make_task

SHIPPED = Path(__file__).resolve().parents[1] / "presets" / "data" / "e2e_synth"


@pytest.fixture(scope="module")
def splits():
    return make_task.generate_splits()


def test_shipped_files_equal_the_generators_output(splits):
    for split, examples in splits.items():
        assert (SHIPPED / f"{split}.jsonl").read_text(encoding="utf-8") == make_task.to_jsonl(examples), split


def test_split_sizes_meet_the_issue(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "validation": 200, "test": 200}


def test_splits_are_disjoint(splits):
    sources = {split: {ex["source"] for ex in examples} for split, examples in splits.items()}
    assert len(sources["train"]) == 2000  # no duplicates inside a split either
    assert not sources["train"] & sources["validation"]
    assert not sources["train"] & sources["test"]
    assert not sources["validation"] & sources["test"]


def test_same_seed_same_data_other_seed_other_data():
    sizes = {"train": 50, "validation": 5, "test": 5}
    assert make_task.generate_splits(3, sizes) == make_task.generate_splits(3, sizes)
    assert make_task.generate_splits(3, sizes) != make_task.generate_splits(4, sizes)


def test_generator_leaves_global_random_state_alone():
    random.seed(7)
    expected = random.random()
    random.seed(7)
    make_task.generate_splits(1, {"train": 20})
    assert random.random() == expected


# How each attribute value must show up in the sentence (E2E's "fast food" is lower case).
def _mentions(key: str, value: str, target: str) -> bool:
    if key == "familyFriendly":
        positive = ("family-friendly", "kid-friendly", "child-friendly", "welcomes families",
                    "children are welcome", "kid friendly")
        negative = ("not family-friendly", "non-family-friendly", "adults-only", "not welcome children",
                    "not kid friendly", "not allowed")
        said_no = any(p in target for p in negative)
        return said_no if value == "no" else (not said_no and any(p in target for p in positive))
    if key == "food":
        return value.lower() in target.lower()
    if key == "area":
        return ("riverside" in target) if value == "riverside" else ("centre" in target)
    return value in target


def test_every_target_realises_its_attributes(splits):
    for examples in splits.values():
        for ex in examples:
            attrs = make_task.parse_source(ex["source"])
            assert list(attrs)[0] == "name" and ex["target"].startswith(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
            assert attrs["name"] in ex["target"], ex
            for key, value in attrs.items():
                assert _mentions(key, value, ex["target"]), (key, value, ex)
            # No unrequested attribute sneaks in.
            if "area" not in attrs:
                assert "riverside" not in ex["target"] and "city" not in ex["target"], ex
            if "familyFriendly" not in attrs:
                assert "famil" not in ex["target"] and "child" not in ex["target"], ex


def test_source_layout_round_trips(splits):
    ex = splits["train"][0]
    attrs = make_task.parse_source(ex["source"])
    assert make_task.format_source(attrs) == ex["source"]
    assert set(attrs) <= set(make_task.ATTRIBUTES) and 3 <= len(attrs) <= 8
    assert make_task.format_source({"name": "The Eagle", "food": "French"}) == "name[The Eagle] | food[French]"


def test_targets_vary(splits):
    """Several templates: the opening words of targets are not all the same frame."""
    openings = {ex["target"].split(" ")[0] for ex in splits["train"]}
    frames = {"There": 0, "is": 0}
    for ex in splits["train"]:
        if ex["target"].startswith("There is"):
            frames["There"] += 1
        elif f"{make_task.parse_source(ex['source'])['name']} is" in ex["target"]:
            frames["is"] += 1
    assert len(openings) > 20 and min(frames.values()) > 200


def test_cli_writes_the_files(tmp_path):
    out = tmp_path / "e2e"
    subprocess.run([sys.executable, "-m", "prefixlab.tools.make_task", "--out", str(out), "--train", "30",
                    "--validation", "4", "--test", "4", "--seed", "5"], check=True,
                   cwd=Path(__file__).resolve().parents[1], capture_output=True)
    expected = make_task.generate_splits(5, {"train": 30, "validation": 4, "test": 4})
    for split, examples in expected.items():
        lines = (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == examples


# ---------------------------------------------------------------------------------------------
# The invented domains that pretrain tiny-llama-d2t (prefixlab.tools.make_domains)


@pytest.fixture(scope="module")
def domain_corpus():
    """The default corpus, exactly as `pretrain_d2t` generates it."""
    return make_domains.generate()


def test_domains_never_show_the_restaurant_domain(domain_corpus):
    """No e2e-synth attribute is a key; no restaurant value, restaurant name or landmark, nor the words
    that say familyFriendly, occurs anywhere (whole words, any case): a prefix must teach all of them."""
    keys = {key for d in make_domains.DOMAINS for key in [d.subject, *(k for k, _ in d.attributes)]}
    assert not {k.lower() for k in keys} & {a.lower() for a in make_task.ATTRIBUTES}
    banned = {*make_task.ATTRIBUTES, *make_task.NAMES, *make_task.NEAR,
              *(v for values in make_task.VALUES.values() for v in values),
              "family", "families", "child", "children", "kid", "kids", "restaurant", "food", "name", "near", "area",
              "centre", "rating", "out of 5"}

    def words(text: str) -> str:  # " w1 w2 ... ": lower case, split at anything but letters, digits and £
        return " " + " ".join(re.split(r"[^\w£]+|_", text.lower())) + " "

    text = words("\n".join(f"{e['source']} {e['target']}" for e in domain_corpus))
    for phrase in banned:  # a plain substring search each, between word breaks
        at = text.find(words(phrase))
        assert at < 0, (phrase, text[max(0, at - 60): at + 60])
    assert len(domain_corpus) == make_domains.DEFAULT_EXAMPLES
    assert {e["domain"] for e in domain_corpus} == {d.name for d in make_domains.DOMAINS}


def test_domain_sentences_realise_their_tables(domain_corpus):
    """Every value but true/false is copied into the sentence verbatim, the subject first or after
    "called"; true/false flags become phrases."""
    for example in domain_corpus[:5000]:
        table = make_task.parse_source(example["source"])
        target = example["target"]
        subject = next(iter(table.values()))
        assert target.startswith((subject, "There is")) or f", {subject} is" in target, example
        for key, value in table.items():
            if value not in ("true", "false"):
                assert value in target, (key, value, example)
        assert "true" not in target and "false" not in target, example


def test_domains_are_deterministic_and_leave_global_random_alone():
    random.seed(7)
    expected = random.random()
    random.seed(7)
    assert make_domains.generate(50, seed=3) == make_domains.generate(50, seed=3)
    assert make_domains.generate(50, seed=3) != make_domains.generate(50, seed=4)
    assert random.random() == expected


def test_domains_cli_writes_the_corpus(tmp_path, capsys):
    make_domains.main(["--out", str(tmp_path), "--examples", "20", "--seed", "2"])
    lines = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == make_domains.generate(20, seed=2)
    assert capsys.readouterr().out.strip() == str(tmp_path / "train.jsonl")
