"""The built-in table-to-text task `e2e-synth`: a deterministic generator in the style of E2E NLG.

Li & Liang (2021, section 5.1) evaluate prefix tuning on the E2E NLG benchmark: a restaurant's
attributes (a "meaning representation") -> a fluent description. This module writes a synthetic
version that needs no download: the same eight attributes and value sets as E2E, sources laid out as
`name[The Eagle] | eatType[coffee shop] | food[French] | ...`, and one sentence per source that
realises exactly those attributes, built from several templates per attribute and per sentence
frame so a model has something to learn beyond copying.

Everything comes from one seeded `random.Random`; no global state, so the same seed gives the same
files in every process. `python -m prefixlab.tools.make_task --out presets/data/e2e_synth` writes the shipped
splits; tests assert the shipped files equal this generator's output.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# Attribute order of the E2E dataset's meaning representations.
ATTRIBUTES = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")

# Value sets of the E2E NLG dataset (Novikova et al., 2017).
NAMES = (
    "Alimentum", "Aromi", "Bibimbap House", "Blue Spice", "Browns Cambridge", "Clowns", "Cocum",
    "Cotto", "Fitzbillies", "Giraffe", "Green Man", "Loch Fyne", "Midsummer House", "Strada",
    "Taste of Cambridge", "The Cambridge Blue", "The Cricketers", "The Dumpling Tree", "The Eagle",
    "The Golden Curry", "The Golden Palace", "The Mill", "The Olive Grove", "The Phoenix",
    "The Plough", "The Punter", "The Rice Boat", "The Twenty Two", "The Vaults", "The Waterman",
    "The Wrestlers", "Travellers Rest Beefeater", "Wildwood", "Zizzi",
)
NEAR = (
    "All Bar One", "Avalon", "Burger King", "Café Adriatic", "Café Brazil", "Café Rouge",
    "Café Sicilia", "Clare Hall", "Crowne Plaza Hotel", "Express by Holiday Inn",
    "Rainbow Vegetarian Café", "Raja Indian Cuisine", "Ranch", "The Bakers", "The Portland Arms",
    "The Sorrento", "Yippee Noodle Bar",
)
VALUES = {
    "eatType": ("coffee shop", "pub", "restaurant"),
    "food": ("Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese"),
    "priceRange": ("cheap", "less than £20", "£20-25", "moderate", "high", "more than £30"),
    "customer rating": ("1 out of 5", "3 out of 5", "5 out of 5", "low", "average", "high"),
    "area": ("city centre", "riverside"),
    "familyFriendly": ("yes", "no"),
}
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}
DEFAULT_SEED = 0
MIN_OPTIONAL, MAX_OPTIONAL = 2, 7  # E2E meaning representations carry 3 to 8 attributes


# ---------------------------------------------------------------------------------------------
# Sources


def sample_attributes(rng: random.Random) -> dict[str, str]:
    """A random meaning representation: always a name, plus 2..7 of the other attributes."""
    optional = [a for a in ATTRIBUTES if a != "name"]
    chosen = set(rng.sample(optional, rng.randint(MIN_OPTIONAL, MAX_OPTIONAL)))
    attrs = {"name": rng.choice(NAMES)}
    for attr in optional:  # keep E2E's attribute order
        if attr not in chosen:
            continue
        attrs[attr] = rng.choice(NEAR) if attr == "near" else rng.choice(VALUES[attr])
    return attrs


def format_source(attrs: dict[str, str]) -> str:
    """`{"name": "The Eagle", "food": "French"}` -> `name[The Eagle] | food[French]`."""
    return " | ".join(f"{key}[{value}]" for key, value in attrs.items())


def parse_source(source: str) -> dict[str, str]:
    """Inverse of `format_source`."""
    attrs = {}
    for part in source.split(" | "):
        key, _, rest = part.partition("[")
        attrs[key] = rest.rstrip("]")
    return attrs


# ---------------------------------------------------------------------------------------------
# Targets: each attribute has a few phrasings; a sentence frame puts them together.


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _food_word(food: str) -> str:
    return "fast food" if food == "Fast food" else food


def _head(rng: random.Random, attrs: dict[str, str], family_adj: str) -> str:
    """The noun phrase for what the place is: eatType, food and maybe a family adjective."""
    eat, food = attrs.get("eatType"), attrs.get("food")
    if eat and food:
        noun = rng.choice([f"{_food_word(food)} {eat}", f"{eat} serving {_food_word(food)} food",
                           f"{eat} that offers {_food_word(food)} food"])
        noun = noun.replace("fast food food", "fast food")
    elif eat:
        noun = eat
    elif food:
        noun = rng.choice([f"place serving {_food_word(food)} food", f"venue offering {_food_word(food)} food",
                           f"{_food_word(food)} place"]).replace("fast food food", "fast food")
    else:
        noun = rng.choice(["place", "venue", "spot"])
    words = f"{family_adj} {noun}" if family_adj else noun
    return f"{_article(words)} {words}"


def _family_adjective(rng: random.Random, value: str) -> str:
    if value == "yes":
        return rng.choice(["family-friendly", "kid-friendly", "child-friendly"])
    return rng.choice(["adults-only", "non-family-friendly"])


def _family_clause(rng: random.Random, value: str) -> str:
    if value == "yes":
        return rng.choice(["it is family-friendly", "it welcomes families", "children are welcome",
                           "it is kid friendly"])
    return rng.choice(["it is not family-friendly", "it does not welcome children",
                       "it is not kid friendly", "children are not allowed"])


def _price_phrase(rng: random.Random, value: str) -> str:
    """A noun phrase to follow "with"."""
    if value in ("cheap", "moderate", "high"):
        return rng.choice([f"{value} prices", f"a {value} price range"])
    if value == "£20-25":
        return rng.choice(["prices of £20-25", "a price range of £20-25"])
    return rng.choice([f"prices {value}", f"a price range of {value}"])


def _rating_phrase(rng: random.Random, value: str) -> str:
    """A noun phrase to follow "with"."""
    if "out of" in value:
        return rng.choice([f"a customer rating of {value}", f"a {value} customer rating",
                           f"a rating of {value} from customers"])
    return rng.choice([f"{_article(value)} {value} customer rating", f"a customer rating that is {value}"])


def _place(rng: random.Random, attrs: dict[str, str]) -> str:
    """Where it is: area and/or a landmark, as one prepositional phrase (may be empty)."""
    parts = []
    if "area" in attrs:
        area = attrs["area"]
        parts.append(rng.choice(["in the city centre", "in the centre of the city"]) if area == "city centre"
                     else rng.choice(["by the riverside", "in the riverside area", "on the riverside"]))
    if "near" in attrs:
        parts.append(rng.choice(["near", "close to", "not far from"]) + " " + attrs["near"])
    if len(parts) == 2 and rng.random() < 0.5:
        parts.reverse()
    return " ".join(parts)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def realise(attrs: dict[str, str], rng: random.Random) -> str:
    """One English sentence that mentions exactly the attributes in `attrs`."""
    family = attrs.get("familyFriendly")
    family_in_head = family is not None and rng.random() < 0.5
    head = _head(rng, attrs, _family_adjective(rng, family) if family_in_head else "")
    place = _place(rng, attrs)
    extras = [_price_phrase(rng, attrs["priceRange"])] if "priceRange" in attrs else []
    if "customer rating" in attrs:
        extras.append(_rating_phrase(rng, attrs["customer rating"]))
    rng.shuffle(extras)
    with_part = f" with {_join(extras)}" if extras else ""
    name = attrs["name"]

    frame = rng.randrange(3)
    if frame == 0 or not place:
        sentence = f"{name} is {head}" + (f" {place}" if place else "") + with_part
    elif frame == 1:
        sentence = f"{place[0].upper()}{place[1:]}, {name} is {head}{with_part}"
    else:
        sentence = f"There is {head} called {name} {place}{with_part}"
    if family is not None and not family_in_head:
        sentence += ", and " + _family_clause(rng, family)
    return sentence + "."


# ---------------------------------------------------------------------------------------------
# Splits and files


def generate_splits(seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """`{"train": [...], "validation": [...], "test": [...]}` of `{"source", "target"}` examples.

    Sources are unique across all splits, so the splits are disjoint.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        examples = []
        while len(examples) < size:
            attrs = sample_attributes(rng)
            source = format_source(attrs)
            if source in seen:
                continue
            seen.add(source)
            examples.append({"source": source, "target": realise(attrs, rng)})
        splits[split] = examples
    return splits


def to_jsonl(examples: list[dict]) -> str:
    """The exact text of a split's file: one JSON object a line, UTF-8 kept readable."""
    return "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)


def write_splits(out_dir: str | Path, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> list[Path]:
    """Write `<out_dir>/<split>.jsonl` for every split; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, examples in generate_splits(seed, sizes).items():
        path = out / f"{split}.jsonl"
        path.write_text(to_jsonl(examples), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prefixlab.tools.make_task", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="presets/data/e2e_synth", help="folder for the split files")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    for split, size in SPLIT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=size, help=f"number of {split} examples")
    args = parser.parse_args(argv)
    sizes = {split: getattr(args, split) for split in SPLIT_SIZES}
    for path in write_splits(args.out, args.seed, sizes):
        print(path)


if __name__ == "__main__":
    main()
