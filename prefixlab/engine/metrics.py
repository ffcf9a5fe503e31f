"""Task metrics for generated text: BLEU, chrF, ROUGE-L and, for attribute tables, slot accuracy.

`score(predictions, references, sources)` gives `{"bleu": ..., "chrf": ..., "rouge_l": ...,
"slot_accuracy": ...}`, every value on 0-100:

- **bleu**, **chrf**: sacrebleu's corpus BLEU and chrF with sacrebleu's defaults (BLEU: 13a
  tokenisation, up to 4-grams, exponential smoothing; chrF: character 6-grams, beta 2), as
  `sacrebleu.corpus_bleu` / `corpus_chrf` report them.
- **rouge_l**: rouge-score's ROUGE-L F-measure (its default tokeniser: lower case, letters and digits
  only; no stemming) of each prediction against its reference (the best one when there are several),
  averaged over examples, times 100.
- **slot_accuracy**: for sources written as attribute tables, `key[value] | key[value] | ...`
  (e2e-synth's and E2E's meaning representations), the percentage of the tables' `key[value]`
  pairs that the predictions realise, summed over all pairs of all examples (a micro average), the
  semantic measure of the E2E challenge. See `realised` for exactly when a pair counts.

A reference may be one string or a list of alternatives (several references per example, as in
E2E): BLEU and chrF use them all (sacrebleu's multi-reference mode), ROUGE-L the best-matching one.

Metrics that do not apply are left out, never reported as 0: slot accuracy without sources, or when
no source holds a `key[value]` pair. The result (a `Scores`, a plain dict of floats) says why in
`.absent`. sacrebleu and rouge-score are imported on first use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

METRICS = ("bleu", "chrf", "rouge_l", "slot_accuracy")
DEFAULT = METRICS

# ---------------------------------------------------------------------------------------------
# Slot accuracy

# One `key[value]` pair of a table; keys may hold spaces ("customer rating"), values anything but "]".
_PAIR = re.compile(r"\s*([^\[\]|]+?)\s*\[([^\[\]]*)\]\s*")

# Values that are not realised by copying them: each (key, value) lists the phrases that realise
# it, in normalised form (see `normalise`: lower case, hyphens as spaces, "n't" as " not"). Every
# phrasing the built-in task's generator (prefixlab.tools.make_task) writes is accepted; a test
# checks that every reference of every split scores 100.
FAMILY_YES = ("family friendly", "kid friendly", "child friendly", "children friendly", "welcomes families",
              "welcomes children", "welcomes kids", "families are welcome", "children are welcome",
              "kids are welcome", "suitable for families", "suitable for children", "good for families")
FAMILY_NO = ("not family friendly", "non family friendly", "adults only", "adult only", "not kid friendly",
             "not child friendly", "not children friendly", "not welcome families", "not welcome children",
             "not welcome kids", "children are not allowed", "kids are not allowed", "children are not welcome",
             "families are not welcome", "kids are not welcome", "not suitable for families",
             "not suitable for children", "no children", "no kids")
# Yes/no attributes: key -> (phrases that say yes, phrases that say no). A "no" phrase may contain a
# "yes" phrase ("not family friendly"), so the yes phrases are looked for once the no phrases are cut
# out; a prediction that says both ("a family-friendly pub ... not family-friendly") realises neither.
POLAR: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {"familyfriendly": (FAMILY_YES, FAMILY_NO)}
REALISATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("area", "city centre"): ("city centre", "city center", "centre of the city", "center of the city"),
    ("area", "riverside"): ("riverside", "river side"),
}
# Keys whose values must sit in the same phrase as the key's own noun, because the bare word is
# ambiguous: "high" is both a price range and a customer rating, so "high prices and a low customer
# rating" realises priceRange[high] but not customer rating[high]. Phrases are the prediction split
# at commas, full stops, semicolons, " and " and " with ".
ANCHORS: dict[str, tuple[str, ...]] = {
    "pricerange": ("price", "prices", "priced", "pricing"),
    "customer rating": ("rating", "ratings", "rated"),
}
_PHRASE_BREAK = re.compile(r"[,.;:!?]| and | with ")


def normalise(text: str) -> str:
    """Lower case, "n't" as " not", hyphens and every run of whitespace as one space, trimmed."""
    text = text.lower().replace("n't", " not").replace("-", " ")
    return " ".join(text.split())


def parse_table(source: str) -> list[tuple[str, str]]:
    """`name[The Eagle] | food[Fast food]` -> [("name", "The Eagle"), ("food", "Fast food")].

    Parts of the source that are not `key[value]` pairs are ignored; a source with none gives [].
    """
    pairs = []
    for part in source.split("|"):
        match = _PAIR.fullmatch(part)
        if match and match.group(2).strip():
            pairs.append((match.group(1), match.group(2)))
    return pairs


def _contains(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words: not inside a longer word ("pub" is not in "public")."""
    return re.search(rf"(?<![^\W_]){re.escape(phrase)}(?![^\W_])", text) is not None


def _says(text: str, phrases: Sequence[str], unless: Sequence[str] = ()) -> bool:
    """One of `phrases` occurs in `text` once every phrase of `unless` has been cut out (so the "family
    friendly" inside "not family friendly" does not count as a yes)."""
    for phrase in sorted(unless, key=len, reverse=True):
        text = re.sub(rf"(?<![^\W_]){re.escape(phrase)}(?![^\W_])", " | ", text)
    return any(_contains(text, phrase) for phrase in phrases)


def realised(key: str, value: str, prediction: str) -> bool:
    """Whether `prediction` realises the table entry `key[value]`.

    The key is compared in lower case ("familyFriendly" -> "familyfriendly"); value and prediction are
    normalised (`normalise`: case, hyphens, whitespace, "n't"), then:

    1. familyFriendly yes / no (POLAR): a phrase of FAMILY_YES / FAMILY_NO occurs as whole words,
       and no phrase of the other list does (the yes phrases inside no phrases, "family friendly"
       in "not family friendly", do not count as a yes);
    2. area city centre / riverside (REALISATIONS): one of its phrases occurs as whole words;
    3. otherwise the value itself occurs as whole words ("Fast food" matches "fast food"; "pub" does
       not match "public"); for priceRange and customer rating (ANCHORS) it must occur in a phrase
       that also holds the key's noun (price/prices/priced/pricing, rating/ratings/rated).
    """
    key_n, value_n, text = " ".join(key.lower().split()), normalise(value), normalise(prediction)
    if key_n in POLAR and value_n in ("yes", "no"):
        yes, no = POLAR[key_n]
        said_no = _says(text, no)
        said_yes = _says(text, yes, unless=no)
        return said_yes and not said_no if value_n == "yes" else said_no and not said_yes
    if (key_n, value_n) in REALISATIONS:
        return _says(text, REALISATIONS[(key_n, value_n)])
    if key_n in ANCHORS:
        return any(_contains(phrase, value_n) and any(_contains(phrase, noun) for noun in ANCHORS[key_n])
                   for phrase in _PHRASE_BREAK.split(f" {text} "))
    return _contains(text, value_n)


def slot_report(prediction: str, source: str) -> list[tuple[str, str, bool]]:
    """(key, value, realised) for every `key[value]` pair of `source` (empty when it has none)."""
    return [(key, value, realised(key, value, prediction)) for key, value in parse_table(source)]


def slot_counts(predictions: Sequence[str], sources: Sequence[str]) -> tuple[int, int]:
    """(pairs realised, pairs) over all examples."""
    hits = total = 0
    for prediction, source in zip(predictions, sources, strict=True):
        report = slot_report(prediction, source)
        hits += sum(ok for _, _, ok in report)
        total += len(report)
    return hits, total


def slot_accuracy_by_key(predictions: Sequence[str], sources: Sequence[str]) -> dict[str, float]:
    """{key: percentage of that key's pairs realised} over all examples, keys in order of appearance."""
    counts: dict[str, list[int]] = {}
    for prediction, source in zip(predictions, sources, strict=True):
        for key, _, ok in slot_report(prediction, source):
            hit_total = counts.setdefault(key, [0, 0])
            hit_total[0] += ok
            hit_total[1] += 1
    return {key: 100.0 * hits / total for key, (hits, total) in counts.items()}


# ---------------------------------------------------------------------------------------------
# The scores


class Scores(dict):
    """{metric: value on 0-100}, a plain dict (JSON-ready); `.absent` maps each requested metric that
    does not apply to why."""

    def __init__(self, values: dict[str, float], absent: dict[str, str] | None = None):
        super().__init__(values)
        self.absent = dict(absent or {})


def check_metrics(metrics) -> tuple[str, ...]:
    """The metric names, checked: ValueError naming any unknown (or empty) one and listing METRICS."""
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not names:
        raise ValueError(f"no metric asked for; choose from {', '.join(METRICS)}")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                         f"the known ones are {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def _reference_lists(references: Sequence) -> list[list[str]]:
    """Each example's references as a non-empty list of strings."""
    lists = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}]: expected a string or a non-empty list of strings, got {ref!r}")
        lists.append(refs)
    return lists


def _streams(refs: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position, None where an example has fewer."""
    width = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(width)]


def bleu(predictions: Sequence[str], references: Sequence) -> float:
    """sacrebleu's corpus BLEU (defaults), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), _streams(_reference_lists(references))).score)


def chrf(predictions: Sequence[str], references: Sequence) -> float:
    """sacrebleu's corpus chrF (defaults), 0-100."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), _streams(_reference_lists(references))).score)


def rouge_l(predictions: Sequence[str], references: Sequence) -> float:
    """Mean over examples of rouge-score's ROUGE-L F-measure (best reference), 0-100."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = _reference_lists(references)
    values = [scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(predictions, refs, strict=True)]
    return 100.0 * sum(values) / len(values)


def score(predictions: Sequence[str], references: Sequence, sources: Sequence[str] | None = None,
          metrics=DEFAULT) -> Scores:
    """{metric: value on 0-100} of `predictions` against `references` (a string or a list of
    alternatives per example); `sources` (the tables) are needed for slot accuracy.

    ValueError for an unknown metric name, no predictions, or lists of different lengths. A metric
    that does not apply is left out and explained in the result's `.absent`.
    """
    names = check_metrics(metrics)
    predictions = list(predictions)
    if not predictions:
        raise ValueError("no predictions to score")
    lengths = {"predictions": len(predictions), "references": len(references)}
    if sources is not None:
        lengths["sources"] = len(sources)
    if len(set(lengths.values())) > 1:
        raise ValueError("predictions, references and sources must be as long as each other, got "
                         + ", ".join(f"{n} {k}" for k, n in lengths.items()))
    values, absent = {}, {}
    for name in names:
        if name == "slot_accuracy":
            if sources is None:
                absent[name] = "no sources given: slot accuracy needs the tables the predictions were made from"
                continue
            hits, total = slot_counts(predictions, sources)
            if total == 0:
                absent[name] = "no source holds a key[value] pair, so there are no slots to realise"
                continue
            values[name] = 100.0 * hits / total
        else:
            values[name] = {"bleu": bleu, "chrf": chrf, "rouge_l": rouge_l}[name](predictions, references)
    return Scores(values, absent)
