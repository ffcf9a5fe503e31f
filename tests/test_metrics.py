"""Task metrics (prefixlab.engine.metrics): BLEU and chrF equal sacrebleu's own numbers, ROUGE-L a
hand-checked value, slot accuracy hand-computed cases, and every phrasing of the built-in task."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from prefixlab.engine import metrics
from prefixlab.engine.data import BUILTIN_TASKS
from prefixlab.engine.metrics import METRICS, realised, score, slot_accuracy_by_key, slot_counts, slot_report

PREDICTIONS = ["The Eagle is a cheap pub near Burger King.", "Zizzi is a family-friendly coffee shop.",
               "It is in the riverside area."]
REFERENCES = ["The Eagle is a pub near Burger King with cheap prices.", "Zizzi is a coffee shop for families.",
              "Aromi is by the riverside."]


def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    result = score(PREDICTIONS, REFERENCES, metrics=["bleu", "chrf"])
    assert result == {"bleu": pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score),
                      "chrf": pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)}
    assert 0 < result["bleu"] < 100 and 0 < result["chrf"] < 100
    assert score(REFERENCES, REFERENCES, metrics=["bleu", "chrf"]) == {"bleu": pytest.approx(100),
                                                                       "chrf": pytest.approx(100)}


def test_several_references_per_example():
    """A list of alternatives per example: sacrebleu's multi-reference streams (None where an example
    has fewer), ROUGE-L against the best one."""
    refs = [[REFERENCES[0], "The Eagle is a cheap pub near Burger King."], [REFERENCES[1]], REFERENCES[2]]
    streams = [REFERENCES, ["The Eagle is a cheap pub near Burger King.", None, None]]
    result = score(PREDICTIONS, refs, metrics=["bleu", "chrf", "rouge_l"])
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, streams).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, streams).score)
    single = score(PREDICTIONS, REFERENCES, metrics=["rouge_l"])["rouge_l"]
    assert result["rouge_l"] > single  # the first example now matches one reference exactly


def test_rouge_l_by_hand():
    # "the cat sat on the mat" vs "the cat is on the mat": LCS "the cat on the mat" = 5 of 6 words each
    # way, so precision = recall = F = 5/6; the second pair shares nothing.
    result = score(["the cat sat on the mat", "dogs bark"], ["The cat is on the mat.", "birds sing"],
                   metrics="rouge_l")
    assert result == {"rouge_l": pytest.approx(100 * (5 / 6 + 0) / 2)}


TABLE = "name[The Eagle] | eatType[pub] | food[Fast food] | priceRange[high] | customer rating[low] | " \
        "area[city centre] | familyFriendly[yes] | near[Burger King]"


@pytest.mark.parametrize("prediction, realised_keys", [
    ("The Eagle is a family-friendly fast food pub in the city centre near Burger King with high prices and "
     "a low customer rating.", "all"),
    ("", "none"),
    ("Zizzi is a coffee shop.", "none"),
    ("THE   EAGLE is a pub in the centre of the city.", {"name", "eatType", "area"}),  # case, whitespace
    ("The Eagle is a Fast Food public house; children are welcome.", {"name", "food", "familyFriendly"}),
    # "high" and "low" in the wrong attribute's phrase do not count
    ("The Eagle has low prices and a high customer rating, and it is kid friendly.", {"name", "familyFriendly"}),
    ("The Eagle is not family-friendly.", {"name"}),
])
def test_slot_report_on_crafted_outputs(prediction, realised_keys):
    report = slot_report(prediction, TABLE)
    assert [(k, v) for k, v, _ in report] == [
        ("name", "The Eagle"), ("eatType", "pub"), ("food", "Fast food"), ("priceRange", "high"),
        ("customer rating", "low"), ("area", "city centre"), ("familyFriendly", "yes"), ("near", "Burger King")]
    expected = {k for k, _, _ in report} if realised_keys == "all" else set() if realised_keys == "none" \
        else realised_keys
    assert {k for k, _, ok in report if ok} == expected


@pytest.mark.parametrize("text, yes, no", [
    ("a family-friendly pub", True, False),
    ("a family friendly pub", True, False),
    ("a kid-friendly pub", True, False),
    ("it welcomes families", True, False),
    ("children are welcome", True, False),
    ("an adults-only pub", False, True),
    ("a non-family-friendly pub", False, True),
    ("it is not family-friendly", False, True),
    ("It isn't kid friendly", False, True),
    ("it does not welcome children", False, True),
    ("children are not allowed", False, True),
    ("a family-friendly pub, and it is not family-friendly", False, False),  # says both: neither counts
    ("a pub", False, False),
])
def test_family_friendly_phrasings(text, yes, no):
    assert (realised("familyFriendly", "yes", text), realised("familyFriendly", "no", text)) == (yes, no)


def test_values_are_matched_as_whole_words():
    assert not realised("eatType", "pub", "a public house")
    assert realised("eatType", "pub", "a pub.")
    assert not realised("priceRange", "less than £20", "with prices less than £200")
    assert realised("priceRange", "£20-25", "with a price range of £20-25")
    assert realised("customer rating", "5 out of 5", "rated 5 out of 5")
    assert not realised("customer rating", "5 out of 5", "with 5 out of 5")  # no rating word in that phrase


def test_slot_accuracy_is_a_micro_average_over_all_pairs():
    sources = ["name[A] | eatType[pub]", "name[B] | eatType[pub] | food[French] | area[riverside]"]
    predictions = ["A is a pub.", "B is by the riverside."]  # 2 of 2, then 2 of 4: 4 of 6 pairs
    assert slot_counts(predictions, sources) == (4, 6)
    assert score(predictions, ["x", "y"], sources, metrics=["slot_accuracy"]) == {
        "slot_accuracy": pytest.approx(100 * 4 / 6)}  # not the mean of 100% and 50%
    assert slot_accuracy_by_key(predictions, sources) == {"name": 100.0, "eatType": 50.0, "food": 0.0,
                                                          "area": 100.0}


def test_every_reference_of_the_builtin_task_realises_all_its_slots():
    """The measure accepts every phrasing e2e-synth's generator writes: its references score 100."""
    for split in ("train", "validation", "test"):
        lines = (BUILTIN_TASKS["e2e-synth"] / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        examples = [json.loads(line) for line in lines]
        hits, total = slot_counts([e["target"] for e in examples], [e["source"] for e in examples])
        assert hits == total > 1000, split


def test_slot_accuracy_is_absent_without_tables():
    result = score(["a b"], ["a b"], ["just some text"])
    assert set(result) == {"bleu", "chrf", "rouge_l"}
    assert "no source holds a key[value] pair" in result.absent["slot_accuracy"]
    result = score(["a b"], ["a b"])
    assert "slot_accuracy" not in result and "no sources given" in result.absent["slot_accuracy"]
    assert json.loads(json.dumps(result)) == dict(result)  # a plain dict of floats


@pytest.mark.parametrize("bad, named", [(["bleu", "meteor"], "'meteor'"), ("BLEU", "'BLEU'"), ([""], "''"),
                                        (["rouge", "cider"], "'rouge', 'cider'")])
def test_unknown_metric_names_are_refused_with_the_known_ones(bad, named):
    with pytest.raises(ValueError, match="unknown metric") as err:
        score(["a"], ["a"], metrics=bad)
    assert named in str(err.value) and ", ".join(METRICS) in str(err.value)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no metric asked for"):
        score(["a"], ["a"], metrics=[])
    with pytest.raises(ValueError, match="no predictions"):
        score([], [])
    with pytest.raises(ValueError, match="2 predictions, 1 references"):
        score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"references\[0\]"):
        score(["a"], [[]])
