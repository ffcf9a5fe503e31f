"""Invented data-to-text domains, the pretraining corpus of the offline base `tiny-llama-d2t`.

Li & Liang (2021) prefix-tune GPT-2, which already writes English and copies names from its
context; the prefix only has to steer that competence to E2E's restaurant tables. This module makes
the miniature of that competence without a download: ten invented domains (books, cars, films,
parks, gadgets, animals, trains, concerts, football clubs, flats to let), each with its own
attributes and value sets, written as tables in e2e-synth's layout, `key[value] | key[value] | ...`,
each with one English sentence that realises exactly those attributes. A model pretrained on them
learns to turn a table it has never seen into a sentence: copy the subject and the values (names are
drawn from large combinatorial pools, so they must be copied, not memorised), say a key's words
("top speed[180 km/h]" -> "a top speed of 180 km/h"), turn true/false attributes into phrases
("dogFriendly[true]" -> "dogs are welcome").

It never sees the restaurant domain: none of e2e-synth's attributes (name, eatType, food,
priceRange, customer rating, area, familyFriendly, near) is a key here, and none of their values,
restaurant names or landmarks, nor the words family, child, kid, restaurant, food, name, near or
area, occurs anywhere in the corpus (tests/test_make_task.py checks every example of the default
corpus). So a prefix still has to teach it the restaurant schema, what `familyFriendly[no]` means,
and the task's sentence style.

Everything comes from one seeded `random.Random` (no global state): the same seed gives the same
examples in every process. `python -m prefixlab.tools.pretrain_d2t` generates the
corpus in memory; `python -m prefixlab.tools.make_domains --out DIR` writes it as JSONL to look at.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SEED = 0
DEFAULT_EXAMPLES = 100_000
MIN_OPTIONAL = 1  # attributes besides the subject: 1 .. all of a domain's
# How often a name is an invented word rather than one of the pools below, and a category value
# (a genre, a fuel, ...) an invented word instead of its pool's: a model that guesses likely pool
# items learns to ignore the table (measured: a first corpus drawn from the pools alone gave a model
# that wrote fluent sentences about other things); invented words can only be copied.
INVENTED_NAME = 0.7
INVENTED_VALUE = 0.3


# ---------------------------------------------------------------------------------------------
# Value pools: large combinations, so that names must be copied from the table, never memorised.

FIRST = ("Mara", "Tobias", "Ines", "Oskar", "Leona", "Felix", "Amara", "Jonas", "Priya", "Mateo", "Zoë", "Henrik",
         "Yusuf", "Clara", "Dmitri", "Elif", "Rowan", "Nadia", "Bruno", "Saoirse", "Kenji", "Lotte", "Tariq", "Agnes",
         "Emil", "Renée", "Hamid", "Ysolde", "Marek", "Ottilie", "José", "Freya")
LAST = ("Quill", "Hartley", "Okafor", "Lindqvist", "Varga", "Moreau", "Castellano", "Brennan", "Ashworth",
        "Nakamura", "Petrov", "Whitcombe", "Delacroix", "Osei", "Fairbanks", "Kowalski", "Brontë", "Halloran",
        "Strand", "Mbeki", "Thornbury", "Ruiz", "Pemberton", "Ilves", "Sandoval", "Crowther", "Abernathy", "Nyström")
ADJ = ("Silver", "Hidden", "Broken", "Quiet", "Scarlet", "Hollow", "Distant", "Crooked", "Velvet", "Amber",
       "Frozen", "Wandering", "Last", "Paper", "Iron", "Sleeping", "Painted", "Northern", "Bitter", "Lantern",
       "Copper", "Restless", "Salt", "Winter", "Burning", "Glass")
NOUN = ("Orchard", "Compass", "Harbour", "Lighthouse", "Archive", "Meadow", "Signal", "Staircase", "Kingdom",
        "Telegram", "Voyage", "Garden", "Citadel", "Mirror", "Observatory", "Canal", "Sparrow", "Tide", "Carousel",
        "Monastery", "Engine", "Labyrinth", "Violin", "Frontier", "Quarry", "Pilgrim")
PLACE = ("Ashford", "Dunmore", "Kelvedon", "Marlow", "Penrith", "Oakhaven", "Rydal", "Stowe", "Tarnby", "Wexcombe",
         "Halbury", "Glenmere", "Brightwell", "Carrow", "Elmstead", "Fenwick", "Hollins", "Larkfield", "Norbury",
         "Quenby", "Redmarsh", "Saltby", "Thornhill", "Upwey", "Vexley", "Wyndham", "Île Verte", "Ørsted")
LANDMARK_KIND = ("Station", "Cathedral", "Town Hall", "Library", "Market Hall", "Bridge", "Museum", "Clock Tower",
                 "Gallery", "Observatory", "Theatre", "Corn Exchange", "Lido", "Castle", "Old Mint")
MAKER = ("Orvano", "Veltra", "Kestrel", "Nordhaus", "Pyxis", "Solenne", "Trident", "Halcyon", "Zephra", "Brixton",
         "Lumeo", "Argent", "Corvid", "Meridian", "Tavora", "Ecliptic")
CODE = ("GX", "S", "300", "Pro", "Eco", "Sport", "Max", "Lite", "One", "Neo", "X2", "Air", "7", "Plus", "Edge", "Duo")
ANIMAL = ("Hare", "Tree Frog", "Heron", "Gecko", "Marten", "Salamander", "Kingfisher", "Tortoise", "Moth",
          "Shrew", "Plover", "Viper", "Newt", "Lynx", "Bat", "Beetle", "Otter", "Wren", "Iguana", "Tern")
ANIMAL_ADJ = ("Spotted", "Marsh", "Golden", "Dwarf", "Striped", "Alpine", "Ghost", "Crested", "Pygmy", "Desert",
              "Ringed", "Dusky", "Sand", "Long-tailed", "Banded", "Cliff", "Mossy", "Lesser", "Giant", "Painted")
CLUB_SUFFIX = ("Rovers", "United", "Athletic", "Wanderers", "Albion", "Harriers", "Rangers", "Celtic", "Borough",
               "Dynamo", "Olympic", "Argyle")
STREET = ("Row", "Lane", "Terrace", "Crescent", "Mews", "Road", "Gardens", "Walk", "Parade", "Yard")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


# Invented words: syllables of onsets, vowels and codas (a few accented letters too, so that copying
# a name like "Café Rouge" means copying two-byte characters it has seen before).
ONSETS = ("b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pr", "qu", "r",
          "s", "sh", "st", "t", "tr", "v", "w", "z", "", "", "")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "i", "a", "ai", "ou", "ea", "ie", "y", "e", "a", "o", "u", "é")
CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk", "x", "lt")


def _reserved() -> frozenset[str]:
    """Every word of e2e-synth's attributes, values, names and landmarks, and the words that say
    familyFriendly: an invented word is never one of them."""
    from prefixlab.tools import make_task

    phrases = [*make_task.ATTRIBUTES, *make_task.NAMES, *make_task.NEAR,
               *(v for values in make_task.VALUES.values() for v in values),
               "family", "families", "child", "children", "kid", "kids", "restaurant", "food", "name", "near", "area"]
    return frozenset(word for phrase in phrases for word in phrase.lower().split())


RESERVED = _reserved()


def word(rng: random.Random, capital: bool = True) -> str:
    """An invented word of 2 or 3 syllables ("Brelquoth", "dröma"), never one of RESERVED."""
    while True:
        text = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(2, 3)))
        if text not in RESERVED and len(text) > 2:
            return text.capitalize() if capital else text


def _either(rng: random.Random, pool: tuple[str, ...], invented: float = INVENTED_NAME) -> str:
    """An invented word (probability `invented`) or a pool item."""
    return word(rng) if rng.random() < invented else rng.choice(pool)


def person(rng: random.Random) -> str:
    return f"{_either(rng, FIRST)} {_either(rng, LAST)}"


def title(rng: random.Random) -> str:
    pattern = rng.randrange(4)
    if pattern == 0:
        return f"The {_either(rng, ADJ)} {_either(rng, NOUN)}"
    if pattern == 1:
        return f"{_either(rng, NOUN)} of {place(rng)}"
    if pattern == 2:
        return f"{_either(rng, ADJ)} {_either(rng, NOUN)}"
    return f"The {_either(rng, NOUN)} and the {_either(rng, NOUN)}"


def place(rng: random.Random) -> str:
    return _either(rng, PLACE)


def maker(rng: random.Random) -> str:
    return _either(rng, MAKER)


def landmark(rng: random.Random) -> str:
    return f"{place(rng)} {rng.choice(LANDMARK_KIND)}"


def model_code(rng: random.Random) -> str:
    return f"{maker(rng)} {rng.choice(CODE)}" + (f" {rng.randint(2, 9)}" if rng.random() < 0.4 else "")


def _duration(hours: int, minutes: int) -> str:
    return f"{hours} hour{'s' * (hours > 1)} {minutes} minutes"


def pounds(rng: random.Random, low: int, high: int, step: int = 1) -> str:
    return f"£{rng.randrange(low, high + 1, step):,}"


# ---------------------------------------------------------------------------------------------
# Realisation: a subject, a head noun phrase, "with" phrases, place phrases and clauses, put
# together by a few sentence frames (shared by every domain, like English itself).


def article(words: str) -> str:
    return "an" if words[:1].lower() in "aeiou" else "a"


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class Parts:
    """The pieces of one sentence about `subject`."""

    subject: str
    noun: str  # the head noun ("paperback", "hatchback"), may carry words after it ("thriller directed by X")
    adjectives: list[str]
    withs: list[str]  # noun phrases after "with"
    places: list[str]  # prepositional phrases ("in the old town", "next to Marlow Station")
    clauses: list[str]  # full clauses ("it is waterproof"), joined with ", and"

    def sentence(self, rng: random.Random) -> str:
        rng.shuffle(self.withs)
        if len(self.places) == 2 and rng.random() < 0.5:
            self.places.reverse()
        words = " ".join([*self.adjectives, self.noun])
        head = f"{article(words)} {words}"
        place = " ".join(self.places)
        with_part = f" with {join(self.withs)}" if self.withs else ""
        frame = rng.randrange(4)  # 3: the place last, after a comma
        if frame == 0 or not place:
            text = f"{self.subject} is {head}" + (f" {place}" if place else "") + with_part
        elif frame == 1:
            text = f"{place[0].upper()}{place[1:]}, {self.subject} is {head}{with_part}"
        elif frame == 2:
            text = f"There is {head} called {self.subject} {place}{with_part}"
        else:
            text = f"{self.subject} is {head}{with_part}, {place}"
        for clause in self.clauses:
            text += rng.choice([", and ", "; "]) + clause
        return text[0].upper() + text[1:] + "."


def _flag(rng: random.Random, value: str, yes: list[str], no: list[str]) -> str:
    return rng.choice(yes if value == "true" else no)


# Each domain: (subject key, its value, the optional attributes in table order with their value
# samplers) and a realiser from the chosen attributes to Parts.
Sampler = Callable[[random.Random], str]


@dataclass(frozen=True)
class Domain:
    name: str
    subject: str
    make_subject: Sampler
    attributes: tuple[tuple[str, Sampler], ...]
    realise: Callable[[dict[str, str], random.Random], Parts]


def _choice(*values: str) -> Sampler:
    """A category: one of `values`, or (INVENTED_VALUE of the time) an invented lower-case word."""
    return lambda rng: word(rng, capital=False) if rng.random() < INVENTED_VALUE else rng.choice(values)


def _flag_values() -> Sampler:
    return lambda rng: rng.choice(("true", "false"))


def _book(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["title"], a.get("format", rng.choice(["book", "title", "novel"])), [], [], [], [])
    if "genre" in a:
        if rng.random() < 0.6:
            p.adjectives.append(a["genre"])
        else:
            p.noun += f" in the {a['genre']} genre"
    if "illustrated" in a:
        if rng.random() < 0.5:
            p.adjectives.insert(0, "illustrated" if a["illustrated"] == "true" else "text-only")
        else:
            p.clauses.append(_flag(rng, a["illustrated"], ["it is illustrated", "it has pictures throughout"],
                                   ["it is not illustrated", "it has not got any pictures"]))
    if "author" in a:
        p.noun += rng.choice([" by ", " written by "]) + a["author"]
    if "pages" in a:
        p.withs.append(rng.choice([f"{a['pages']} pages", f"a length of {a['pages']} pages"]))
    if "published" in a:
        p.clauses.append(rng.choice([f"it was published in {a['published']}",
                                     f"it first appeared in {a['published']}"]))
    if "publisher" in a:
        p.places.append(f"from {a['publisher']}")
    return p


def _car(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["model"], a.get("bodyType", rng.choice(["car", "vehicle"])), [], [], [], [])
    if "colour" in a:
        p.adjectives.append(a["colour"])
    if "fuel" in a:
        if rng.random() < 0.5:
            p.adjectives.append(a["fuel"])
        else:
            p.clauses.append(rng.choice([f"it runs on {a['fuel']} power", f"its fuel type is {a['fuel']}"]))
    if "maker" in a:
        p.noun += rng.choice([" made by ", " built by ", " from "]) + a["maker"]
    if "top speed" in a:
        p.withs.append(rng.choice([f"a top speed of {a['top speed']}", f"a {a['top speed']} top speed"]))
    if "seats" in a:
        p.withs.append(rng.choice([f"{a['seats']} seats", f"seating for {a['seats']}"]))
    if "automatic" in a:
        p.clauses.append(_flag(rng, a["automatic"], ["it has an automatic gearbox", "it is an automatic"],
                               ["it has a manual gearbox", "it is not an automatic"]))
    return p


def _film(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["film"], a.get("genre", rng.choice(["film", "movie"])), [], [], [], [])
    if "language" in a:
        if rng.random() < 0.6:
            p.adjectives.append(a["language"])
        else:
            p.noun += f" in {a['language']}"
    if "director" in a:
        p.noun += rng.choice([" directed by ", " by "]) + a["director"]
    if "runtime" in a:
        p.withs.append(rng.choice([f"a running time of {a['runtime']}", f"a runtime of {a['runtime']}"]))
    if "user score" in a:
        p.withs.append(rng.choice([f"a user score of {a['user score']}", f"a {a['user score']} user score",
                                   f"a score of {a['user score']} from viewers"]))
    if "subtitles" in a:
        p.clauses.append(_flag(rng, a["subtitles"], ["it has subtitles", "it comes with subtitles"],
                               ["it has not got subtitles", "it comes without subtitles"]))
    return p


def _park(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["park"], a.get("parkType", rng.choice(["park", "green space", "open space"])), [], [], [], [])
    if "dogFriendly" in a:
        if rng.random() < 0.5:
            p.adjectives.append(rng.choice(["dog-friendly"]) if a["dogFriendly"] == "true" else "dog-free")
        else:
            p.clauses.append(_flag(rng, a["dogFriendly"], ["dogs are welcome", "it is dog-friendly",
                                                           "it welcomes dogs"],
                                   ["dogs are not allowed", "it is not dog-friendly", "it does not allow dogs"]))
    places = []
    if "district" in a:
        places.append(rng.choice([f"in the {a['district']}", f"in the {a['district']} district"]))
    if "nextTo" in a:
        places.append(rng.choice(["next to", "beside", "a short walk from"]) + " " + a["nextTo"])
    p.places = places
    if "entry" in a:
        p.withs.append("free entry" if a["entry"] == "free" else
                       rng.choice([f"an entry fee of {a['entry']}", f"tickets at {a['entry']}"]))
    if "size" in a:
        p.withs.append(rng.choice([f"{a['size']} of grounds", f"a size of {a['size']}"]))
    return p


def _gadget(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["device"], a.get("deviceType", "device"), [], [], [], [])
    if "waterproof" in a:
        if rng.random() < 0.5:
            p.adjectives.append("waterproof" if a["waterproof"] == "true" else "non-waterproof")
        else:
            p.clauses.append(_flag(rng, a["waterproof"], ["it is waterproof", "it can go under water"],
                                   ["it is not waterproof", "it must be kept dry"]))
    if "brand" in a:
        p.noun += rng.choice([" made by ", " from "]) + a["brand"]
    if "screen" in a:
        p.withs.append(rng.choice([f"a {a['screen']} screen", f"a screen of {a['screen']}"]))
    if "battery" in a:
        p.withs.append(f"a {a['battery']} battery")
    if "storage" in a:
        p.withs.append(rng.choice([f"{a['storage']} of storage", f"{a['storage']} storage"]))
    if "price" in a:
        p.clauses.append(rng.choice([f"it costs {a['price']}", f"it sells for {a['price']}"]))
    return p


def _animal(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["species"], a.get("class", "animal"), [], [], [], [])
    if "status" in a:
        p.adjectives.append(a["status"])
    if "nocturnal" in a:
        if rng.random() < 0.5:
            p.adjectives.insert(0, "nocturnal" if a["nocturnal"] == "true" else "day-active")
        else:
            p.clauses.append(_flag(rng, a["nocturnal"], ["it is active at night", "it is nocturnal"],
                                   ["it is active by day", "it is not nocturnal"]))
    if "habitat" in a:
        p.places.append(rng.choice([f"that lives in {a['habitat']}", f"found in {a['habitat']}"]))
    if "lifespan" in a:
        p.withs.append(rng.choice([f"a lifespan of {a['lifespan']}", f"a {a['lifespan']} lifespan"]))
    if "diet" in a:
        p.clauses.append(rng.choice([f"it eats {a['diet']}", f"it feeds on {a['diet']}"]))
    return p


def _train(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["train"], a.get("trainType", "train"), [], [], [], [])
    if "operator" in a:
        p.noun += rng.choice([" run by ", " operated by "]) + a["operator"]
    if "from" in a:
        p.places.append(f"from {a['from']}")
    if "to" in a:
        p.places.append(f"to {a['to']}")
    if p.places and p.places[0].startswith("to") and rng.random() < 0.7:
        p.places.reverse()
    if "departs" in a:
        p.clauses.append(rng.choice([f"it leaves at {a['departs']}", f"it departs at {a['departs']}"]))
    if "duration" in a:
        p.withs.append(rng.choice([f"a journey time of {a['duration']}", f"a {a['duration']} journey"]))
    if "wifi" in a:
        p.clauses.append(_flag(rng, a["wifi"], ["it has free wifi", "wifi is available on board"],
                               ["wifi is not available", "it has not got wifi"]))
    return p


def _concert(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["event"], a.get("eventType", "event"), [], [], [], [])
    if "genre" in a:
        p.adjectives.append(a["genre"])
    if "seated" in a:
        if rng.random() < 0.5:
            p.adjectives.insert(0, "seated" if a["seated"] == "true" else "standing-only")
        else:
            p.clauses.append(_flag(rng, a["seated"], ["every ticket has a seat", "it is seated"],
                                   ["it is standing only", "it is not seated"]))
    if "performer" in a:
        p.noun += rng.choice([" featuring ", " starring "]) + a["performer"]
    if "venue" in a:
        p.places.append(f"at {a['venue']}")
    if "date" in a:
        p.places.append(f"on {a['date']}")
    if "ticket price" in a:
        p.withs.append(rng.choice([f"a ticket price of {a['ticket price']}", f"tickets at {a['ticket price']}"]))
    return p


def _club(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["club"], rng.choice(["football club", "club", "side"]), [], [], [], [])
    if "league" in a:
        p.noun += rng.choice([" playing in the ", " in the "]) + a["league"]
    if "ground" in a:
        p.places.append(rng.choice([f"based at {a['ground']}", f"at {a['ground']}"]))
    if "colours" in a:
        p.withs.append(rng.choice([f"{a['colours']} shirts", f"a {a['colours']} kit"]))
    if "manager" in a:
        p.clauses.append(rng.choice([f"it is managed by {a['manager']}", f"its manager is {a['manager']}"]))
    if "founded" in a:
        p.clauses.append(rng.choice([f"it was founded in {a['founded']}", f"it dates from {a['founded']}"]))
    return p


def _flat(a: dict[str, str], rng: random.Random) -> Parts:
    p = Parts(a["property"], a.get("propertyType", "home"), [], [], [], [])
    if "furnished" in a:
        if rng.random() < 0.5:
            p.adjectives.append("furnished" if a["furnished"] == "true" else "unfurnished")
        else:
            p.clauses.append(_flag(rng, a["furnished"], ["it comes furnished", "it is let furnished"],
                                   ["it comes unfurnished", "it is not furnished"]))
    if "district" in a:
        p.places.append(f"in {a['district']}")
    if "closeTo" in a:
        p.places.append(rng.choice(["close to", "a short walk from", "by"]) + " " + a["closeTo"])
    if "bedrooms" in a:
        p.withs.append(f"{a['bedrooms']} bedrooms" if a["bedrooms"] != "1" else "1 bedroom")
    if "rent" in a:
        p.withs.append(rng.choice([f"a rent of {a['rent']}", f"rent at {a['rent']}"]))
    if "petsAllowed" in a:
        p.clauses.append(_flag(rng, a["petsAllowed"], ["pets are allowed", "it welcomes pets"],
                               ["pets are not allowed", "it does not allow pets"]))
    return p


GENRES = ("mystery", "science fiction", "romance", "fantasy", "horror", "poetry", "crime", "travel writing")
DOMAINS: tuple[Domain, ...] = (
    Domain("books", "title", title, (
        ("author", person), ("genre", _choice(*GENRES)),
        ("format", _choice("paperback", "hardback", "audiobook", "ebook", "graphic novel")),
        ("pages", lambda rng: str(rng.randint(90, 900))), ("published", lambda rng: str(rng.randint(1850, 2024))),
        ("publisher", lambda rng: f"{place(rng)} Press"), ("illustrated", _flag_values())), _book),
    Domain("cars", "model", model_code, (
        ("maker", maker), ("bodyType", _choice("hatchback", "estate", "convertible", "saloon", "pickup",
                                                          "minivan", "coupé")),
        ("fuel", _choice("diesel", "petrol", "electric", "hybrid")),
        ("colour", _choice("silver", "red", "dark green", "white", "black", "navy blue")),
        ("top speed", lambda rng: f"{rng.randrange(110, 260, 5)} km/h"), ("seats", lambda rng: str(rng.randint(2, 8))),
        ("automatic", _flag_values())), _car),
    Domain("films", "film", title, (
        ("director", person), ("genre", _choice("thriller", "comedy", "documentary", "western", "musical", "drama",
                                                "animation")),
        ("language", _choice("Spanish", "German", "Korean", "Swedish", "Polish", "Danish", "Greek", "Turkish")),
        ("runtime", lambda rng: f"{rng.randint(70, 190)} minutes"),
        ("user score", lambda rng: f"{rng.randint(2, 10)} out of 10"), ("subtitles", _flag_values())), _film),
    Domain("parks", "park", lambda rng: f"{place(rng)} {rng.choice(['Park', 'Gardens', 'Common', 'Green'])}", (
        ("parkType", _choice("nature reserve", "botanical garden", "country park", "sculpture garden", "town park",
                             "arboretum")),
        ("district", _choice("old town", "harbour quarter", "north side", "university quarter", "west end",
                             "station quarter")),
        ("entry", lambda rng: "free" if rng.random() < 0.3 else f"£{rng.randint(2, 12)}"),
        ("size", lambda rng: f"{rng.randint(3, 400)} hectares"), ("dogFriendly", _flag_values()),
        ("nextTo", landmark)), _park),
    Domain("gadgets", "device", model_code, (
        ("brand", maker), ("deviceType", _choice("phone", "tablet", "smartwatch", "e-reader", "laptop",
                                                            "camera")),
        ("screen", lambda rng: f"{rng.choice(['5.8', '6.1', '6.7', '8', '10.2', '13.3', '15.6'])} inch"),
        ("battery", lambda rng: f"{rng.randrange(1000, 9000, 250)} mAh"),
        ("storage", lambda rng: f"{rng.choice([32, 64, 128, 256, 512])} GB"),
        ("price", lambda rng: rng.choice([pounds(rng, 49, 1899), f"€{rng.randint(49, 1999)}",
                                          f"${rng.randint(49, 1999)}"])),
        ("waterproof", _flag_values())), _gadget),
    Domain("animals", "species", lambda rng: f"{_either(rng, ANIMAL_ADJ, 0.5)} {_either(rng, ANIMAL, 0.5)}", (
        ("class", _choice("mammal", "bird", "reptile", "amphibian", "fish", "insect")),
        ("status", _choice("endangered", "vulnerable", "common", "rare", "protected")),
        ("habitat", _choice("deserts", "rainforests", "wetlands", "grasslands", "mountain streams", "coral reefs",
                            "pine forests", "salt marshes")),
        ("lifespan", lambda rng: f"{rng.randint(1, 60)} years"),
        ("diet", _choice("seeds", "insects", "small fish", "leaves", "fruit", "snails", "grasses")),
        ("nocturnal", _flag_values())), _animal),
    Domain("trains", "train", lambda rng: rng.choice([f"The {_either(rng, ADJ)} {_either(rng, NOUN)}",
                                                      f"{place(rng)} Flyer", f"Service {rng.randint(100, 999)}"]), (
        ("trainType", _choice("sleeper", "express", "stopping service", "commuter train", "night train",
                              "heritage railway")),
        ("operator", lambda rng: f"{maker(rng)} Rail"), ("from", lambda rng: place(rng)),
        ("to", lambda rng: place(rng)), ("departs", lambda rng: f"{rng.randint(5, 23):02d}:{rng.randrange(0, 60, 5):02d}"),
        ("duration", lambda rng: _duration(rng.randint(1, 9), rng.randrange(5, 60, 5))),
        ("wifi", _flag_values())), _train),
    Domain("concerts", "event", lambda rng: f"{place(rng)} {rng.choice(['Festival', 'Live', 'Sessions', 'Weekender'])}", (
        ("eventType", _choice("festival", "concert", "recital", "gig", "open-air show")),
        ("genre", _choice("jazz", "folk", "rock", "classical", "hip hop", "electronic", "blues")),
        ("performer", lambda rng: rng.choice([person(rng), f"the {_either(rng, ADJ)} {_either(rng, NOUN)}s"])),
        ("venue", lambda rng: f"{place(rng)} {rng.choice(['Hall', 'Arena', 'Playhouse', 'Pavilion'])}"),
        ("date", lambda rng: f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"),
        ("ticket price", lambda rng: pounds(rng, 5, 120)), ("seated", _flag_values())), _concert),
    Domain("clubs", "club", lambda rng: f"{place(rng)} {rng.choice(CLUB_SUFFIX)}", (
        ("league", _choice("Premier Division", "Second League", "Northern League", "Southern Combination",
                           "County League")),
        ("ground", lambda rng: f"{place(rng)} {rng.choice(['Stadium', 'Park', 'Lane', 'Road'])}"),
        ("founded", lambda rng: str(rng.randint(1860, 2010))),
        ("colours", _choice("red and white", "sky blue", "amber and black", "green", "claret and blue", "orange")),
        ("manager", person)), _club),
    Domain("flats", "property", lambda rng: f"{rng.randint(1, 120)} {place(rng)} {rng.choice(STREET)}", (
        ("propertyType", _choice("flat", "cottage", "bungalow", "studio", "townhouse", "loft")),
        ("bedrooms", lambda rng: str(rng.randint(1, 5))),
        ("rent", lambda rng: f"{pounds(rng, 450, 3200, 25)} a month"),
        ("district", lambda rng: place(rng)), ("closeTo", landmark),
        ("furnished", _flag_values()), ("petsAllowed", _flag_values())), _flat),
)


def sample(domain: Domain, rng: random.Random) -> dict[str, str]:
    """A random table of `domain`: its subject, then 1..all of its other attributes, in its order."""
    keys = [key for key, _ in domain.attributes]
    chosen = set(rng.sample(keys, rng.randint(MIN_OPTIONAL, len(keys))))
    table = {domain.subject: domain.make_subject(rng)}
    for key, make in domain.attributes:
        if key in chosen:
            table[key] = make(rng)
    return table


def format_source(table: dict[str, str]) -> str:
    """e2e-synth's layout: `title[The Glass Orchard] | author[Mara Quill]`."""
    return " | ".join(f"{key}[{value}]" for key, value in table.items())


def generate(num_examples: int = DEFAULT_EXAMPLES, seed: int = DEFAULT_SEED) -> list[dict]:
    """`num_examples` examples `{"domain", "source", "target"}`, domains in turn-taking random order."""
    rng = random.Random(seed)
    examples = []
    for _ in range(num_examples):
        domain = rng.choice(DOMAINS)
        table = sample(domain, rng)
        examples.append({"domain": domain.name, "source": format_source(table),
                         "target": domain.realise(table, rng).sentence(rng)})
    return examples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prefixlab.tools.make_domains",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write train.jsonl into (for reading; pretraining "
                                                     "generates the corpus itself)")
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in generate(args.examples, args.seed)),
                    encoding="utf-8")
    print(path)


if __name__ == "__main__":
    main()
