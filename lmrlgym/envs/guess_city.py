"""Guess My City: find the hidden city with open and yes/no questions (``GuessCity-v0``).

Description
-----------
Like Twenty Questions, but the hidden item is one of 100 large cities and the agent may also ask
open questions ("Which language do people speak there?"). Tests questioning with complex
language (docs/tasks.md §8).

Observation
-----------
The whole transcript. The first env text is ``Questions:\\n``; each answer is one line::

    Questions:
    Which continent is your city on?
    It is in Asia.
    Is it in the southern hemisphere?
    Yes. It lies just south of the equator.
    Is it the capital of its country?
    Yes. It is the national capital.
    Is the city you are from Jakarta?
    Yes.

Action
------
One question, any text; nothing is illegal.

- A question naming the hidden city or one of its aliases anywhere (whole word, case- and
  accent-insensitive) is a correct guess: ``Yes.``. A guess-form question ("is it X", "is your
  city X", "are you from X", "is the city you are from X", a bare "X", ...) naming another listed
  city: ``No.``. Other mentions of other cities go to the parser.
- The parser maps the question to one field of the knowledge base
  ``lmrlgym/envs/data/guess_city_kb.json`` with phrase tables (continent, region, hemisphere,
  coast, river, capital, population, largest city, language, climate, altitude, food, landmark,
  a distinctive fact, country). Open questions get a one-sentence answer from that field; yes/no
  questions get ``Yes.``/``No.`` plus a short related fact where the field allows
  (``No. It is in Asia.``); yes/no questions about the country ("Are you from Indonesia?") get a
  bare ``Yes.``/``No.``. Unmapped or compound questions get ``I don't know.``.
- No answer names the city, an alias or the country (tested for every city and template).

Before parsing, an action is cut to its first 1,000 characters and lone surrogates become U+FFFD
(the stored action too), so the transcript holds at most 20 questions of 1,001 characters.

Rewards
-------
-1 per question, except 0 for the correct guess. Return range [-20, 0].

Episode End
-----------
Correct guess: ``terminated``. The 20th question without one: ``truncated``.

Arguments
---------
``oracle``: ``"kb"`` (default; ``"rules"`` is a synonym), a chat partner object with
``complete(messages) -> str``, or a partner spec string for ``lmrlgym.partners.make_partner``. An
LM oracle is told the city and country and asked for a one-sentence truthful answer naming
neither; a reply that names the city, an alias or the country is replaced by ``I don't know.``
with ``info["redacted"] = True``. Guesses are still judged by the rule above.
Reset options: ``{"city": "<name or alias>"}`` or ``{"index": i}`` (0-99, the file's rank order,
Seoul first); default uniform over the 100 cities.
Extra info keys: ``city``, ``country``, ``is_guess``, ``answer_source`` (``kb``, ``guess``,
``unknown``, ``lm``; None after reset), ``redacted``.

Differences from LMRL-Gym
-------------------------
1. A correct guess ends the episode; the original's check compared characters of the city string
   with question words and never succeeded, so every episode ran 20 questions.
2. Seoul is included (100 cities); the original skipped the first data line.
3. Open answers reach the agent, from a hand-written knowledge base; the original's FLAN-T5-XL
   output was cut to ``Yes.``/``No.`` and its checkpoint is unavailable.
4. Aliases are used (the original loaded them but never used them), plus old and corrected
   spellings (Kinshasa, Daegu, Havana, Incheon, Saigon, New Delhi, Bengaluru, ...).
5. Names keep their capitalisation (the original lower-cased everything).
6. ``I don't know.`` for unmapped questions, as in Twenty Questions.

References
----------
Abdulhai et al., "LMRL Gym: Benchmarks for Multi-Turn Reinforcement Learning with Language
Models" (2023); original code ``llm_rl_scripts/guess_city/env`` (MIT), city list
``global_cities.txt``.

Version History
---------------
v0: initial release (docs/tasks.md §8).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from importlib import resources
from typing import Any, NamedTuple

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.envs import qa

MAX_QUESTIONS = 20
FIRST_TEXT = "Questions:\n"
YES, NO, UNKNOWN = "Yes.\n", "No.\n", "I don't know.\n"
KB_FILE = "data/guess_city_kb.json"
GUESS_PREFIXES = (
    "is it", "is it in", "is your city", "is the city", "is your city in", "are you from",
    "are you in", "is the city you are from", "is the city you come from", "do you live in",
    "do you come from", "do you come from the city of", "is it the city of", "could it be",
    "my guess is", "i guess", "i think it is", "",
)  # fmt: skip
YES_NO_OPENERS = frozenset(
    "is are does do can could would was were has have will did isnt arent doesnt dont "
    "should might must".split()
)


@dataclasses.dataclass(frozen=True)
class City:
    """One hidden city and its facts (see the KB file's ``conventions`` block)."""

    index: int
    name: str
    aliases: tuple[str, ...]
    country: str
    population: int
    population_band: str
    lat: float
    lon: float
    continents: tuple[str, ...]
    region: str
    coast: str | None
    water: str | None
    river: str | None
    capital: bool
    regional_capital: str | None
    largest_in_country: bool
    languages: tuple[str, ...]
    climate: str
    climate_description: str
    snow: bool
    high_altitude: bool
    landmark: str
    food: str
    fact: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclasses.dataclass(frozen=True)
class CityKB:
    cities: tuple[City, ...]
    countries: dict[str, tuple[str, ...]]  # country -> other names (listed countries)
    other_countries: tuple[str, ...]  # countries without a listed city


_FIELDS = [f.name for f in dataclasses.fields(City)]


@functools.lru_cache(maxsize=1)
def load_kb() -> CityKB:
    """The shipped knowledge base, validated (a malformed file raises ``ValueError``)."""
    raw = json.loads(resources.files("lmrlgym.envs").joinpath(KB_FILE).read_text("utf-8"))
    return parse_kb(raw)


def parse_kb(raw: dict[str, Any]) -> CityKB:
    """Build and check the city KB from its JSON form; errors name the bad record."""
    cities = []
    for i, rec in enumerate(raw.get("cities", [])):
        missing = [f for f in _FIELDS if f not in rec]
        if missing or rec["index"] != i:
            raise ValueError(f"guess_city_kb.json: cities[{i}] is missing {missing} or has a bad index")
        values = {f: tuple(rec[f]) if isinstance(rec[f], list) else rec[f] for f in _FIELDS}
        cities.append(City(**values))
    countries = {k: tuple(v) for k, v in raw.get("countries", {}).items()}
    unknown = {c.country for c in cities} - set(countries)
    if unknown:
        raise ValueError(f"guess_city_kb.json: countries table lacks {sorted(unknown)}")
    return CityKB(tuple(cities), countries, tuple(raw.get("other_countries", [])))


# --- the question parser ------------------------------------------------------------------
# Field phrases: (field, value). A value of None asks about the field in general.
_CONTINENTS = {
    "Asia": ("asia", "asian"),
    "Europe": ("europe", "european"),
    "Africa": ("africa", "african"),
    "North America": ("north america", "north american"),
    "South America": ("south america", "south american"),
    "Oceania": ("oceania", "australasia"),
}
# Region names a question may use -> the KB regions they include. Overlapping groups are fine:
# they answer "is it in ...?" questions; the city's own region is the KB's `region` field.
_REGION_GROUPS = {
    "east asia": ("East Asia",),
    "far east": ("East Asia", "Southeast Asia"),
    "southeast asia": ("Southeast Asia",),
    "south asia": ("South Asia",),
    "indian subcontinent": ("South Asia",),
    "central asia": ("Central Asia",),
    "western asia": ("Western Asia",),
    "middle east": ("Western Asia", "North Africa/Egypt"),
    "eastern europe": ("Eastern Europe", "Central Europe/Budapest"),
    "western europe": ("Western Europe", "Central Europe/Berlin"),
    "central europe": ("Central Europe",),
    "southern europe": ("Southern Europe",),
    "northern europe": ("Northern Europe",),
    "north africa": ("North Africa",),
    "west africa": ("West Africa",),
    "east africa": ("East Africa",),
    "central africa": ("Central Africa",),
    "southern africa": ("Southern Africa",),
    "sub saharan africa": ("West Africa", "East Africa", "Central Africa", "Southern Africa"),
    "latin america": ("Latin America", "South America", "Caribbean"),
    "central america": ("Central America",),
    "caribbean": ("Caribbean",),
    "scandinavia": ("Scandinavia",),
}
_LANGUAGES = {
    "english": ("English",), "spanish": ("Spanish",), "portuguese": ("Portuguese",),
    "french": ("French",), "arabic": ("Arabic",), "chinese": ("Mandarin", "Cantonese", "Shanghainese"),
    "mandarin": ("Mandarin",), "cantonese": ("Cantonese",), "shanghainese": ("Shanghainese",),
    "japanese": ("Japanese",), "korean": ("Korean",), "hindi": ("Hindi",), "urdu": ("Urdu",),
    "bengali": ("Bengali",), "bangla": ("Bengali",), "tamil": ("Tamil",), "telugu": ("Telugu",),
    "kannada": ("Kannada",), "marathi": ("Marathi",), "gujarati": ("Gujarati",),
    "punjabi": ("Punjabi",), "sindhi": ("Sindhi",), "indonesian": ("Indonesian",),
    "bahasa": ("Indonesian", "Malay"), "javanese": ("Javanese",), "sundanese": ("Sundanese",),
    "malay": ("Malay",), "thai": ("Thai",), "vietnamese": ("Vietnamese",), "burmese": ("Burmese",),
    "russian": ("Russian",), "ukrainian": ("Ukrainian",), "turkish": ("Turkish",),
    "persian": ("Persian",), "farsi": ("Persian",), "kurdish": ("Kurdish",), "german": ("German",),
    "italian": ("Italian",), "romanian": ("Romanian",), "hungarian": ("Hungarian",),
    "uzbek": ("Uzbek",), "filipino": ("Filipino",), "tagalog": ("Filipino",),
    "amharic": ("Amharic",), "lingala": ("Lingala",), "berber": ("Berber",),
    "hokkien": ("Taiwanese Hokkien",), "taiwanese": ("Taiwanese Hokkien",),
    "swahili": ("Swahili",), "dutch": ("Dutch",), "polish": ("Polish",), "greek": ("Greek",),
}  # fmt: skip


def _field_phrases() -> dict[str, tuple[str, Any]]:
    """Phrase -> ``(field, value)`` of the parser (built by :func:`_tables`, once)."""
    phrases: dict[str, tuple[str, Any]] = {}

    def add(field: str, value: Any, *words: str) -> None:
        for p in words:
            phrases[p] = (field, value)

    add("continent", None, "continent", "which continent", "what continent")
    for name, words in _CONTINENTS.items():
        add("continent", name, *words)
    for group in _REGION_GROUPS:
        add("region", group, group)
    add("region", None, "region", "part of the world", "where", "located", "location",
        "whereabouts", "what area", "which area")
    add("hemisphere", None, "hemisphere", "hemispheres", "equator")
    add("hemisphere", "northern", "northern hemisphere", "north of the equator", "northern half")
    add("hemisphere", "southern", "southern hemisphere", "south of the equator", "southern half",
        "below the equator")
    add("hemisphere", "eastern", "eastern hemisphere")
    add("hemisphere", "western", "western hemisphere")
    add("coast", None, "coast", "coastal", "sea", "ocean", "beach", "beaches", "port", "seaport",
        "harbour", "harbor", "seaside", "by the sea", "near the sea", "near the ocean",
        "on the water", "body of water", "waterfront", "shore", "bay", "landlocked", "inland")
    add("coast", "lake", "lake", "lakeside", "great lakes", "on a lake")
    add("river", None, "river", "on a river", "river flow", "riverside", "river run")
    add("capital", None, "capital", "capital city", "seat of government", "national capital",
        "government", "parliament")
    add("population", None, "population", "how many people", "people live", "inhabitants",
        "how big", "how large", "populous", "million", "millions", "residents", "big city",
        "large city", "size", "crowded", "megacity")
    add("largest", None, "largest city", "biggest city", "most populous city", "largest in",
        "biggest in", "most populous in", "the largest", "the biggest")
    add("language", None, "language", "languages", "speak", "spoken", "tongue", "dialect")
    for word in _LANGUAGES:
        add("language", word, word)
    add("climate", None, "climate", "weather", "temperature", "season", "seasons", "rain", "rainy",
        "humid", "monsoon", "sunny", "typhoon", "hurricane")
    add("climate", "hot", "hot", "warm", "heat", "hottest")
    add("climate", "cold", "cold", "cool", "chilly", "freezing", "cold winters")
    add("climate", "snow", "snow", "snowy", "snows", "snowfall")
    add("climate", "tropical", "tropical", "tropics")
    add("climate", "dry", "desert", "dry", "arid")
    add("altitude", None, "altitude", "elevation", "high up", "mountains", "mountainous",
        "above sea level", "highlands", "plateau", "high altitude")
    add("food", None, "food", "foods", "dish", "dishes", "cuisine", "eat", "meal", "delicacy",
        "specialty", "speciality", "drink", "snack")
    add("landmark", None, "landmark", "landmarks", "famous for", "known for", "monument",
        "attraction", "attractions", "tourist", "tourists", "sights", "sightseeing", "building",
        "buildings", "famous", "visit", "see there")
    add("fact", None, "tell me about", "interesting", "fact", "facts", "history", "historical",
        "hint", "clue", "special about", "describe", "unique", "something about")
    add("country", None, "country", "nation", "which country", "what country")
    return phrases


# Weak phrases only count when nothing more specific was asked ("Where is it, on the coast?").
_WEAK = {("region", None), ("country", None), ("landmark", None), ("fact", None)}
_LATITUDE_WORDS = ((10.0, "just"), (23.5, "in the tropics,"), (40.0, "well"), (90.0, "far"))


class Reading(NamedTuple):
    """What the oracle made of a question."""

    kind: str  # "guess", "field" or "unknown"
    city: int | None = None  # named city (guesses)
    field: str | None = None
    value: Any = None
    yes_no: bool = False


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[qa.PhraseMatcher, dict[str, int], list[tuple[int, tuple[str, ...]]]]:
    kb = load_kb()
    phrases = _field_phrases()
    for country, others in kb.countries.items():
        for name in (country, *others):
            phrases[name] = ("country", country)
    for name in kb.other_countries:
        phrases.setdefault(name, ("country", name))
    city_names: dict[str, int] = {}
    for c in kb.cities:
        for n in c.names:
            city_names.setdefault(qa.normalize(n), c.index)
    mention = [(c.index, tuple(qa.normalize(n) for n in c.names)) for c in kb.cities]
    return qa.PhraseMatcher(phrases), city_names, mention


def named_cities(norm: str) -> list[int]:
    """Indices of the listed cities a normalised question names (whole words)."""
    _, _, mention = _tables()
    return [i for i, names in mention if qa.mentions(norm, names)]


def read_question(question: str, hidden: int) -> Reading:
    """Map a question to a guess, one KB field (with a value), or nothing (pure function)."""
    norm = qa.normalize(question)
    matcher, city_names, _ = _tables()
    if hidden in named_cities(norm):
        return Reading("guess", city=hidden)
    guessed = qa.match_guess(norm, GUESS_PREFIXES, city_names)
    if guessed is not None:
        return Reading("guess", city=guessed)
    if not norm:
        return Reading("unknown")
    labels = {m.label for m in matcher.find(norm)}
    strong = labels - _WEAK
    if strong:
        labels = strong
    if any(label[0] == "food" for label in labels):
        labels = {label for label in labels if label[0] == "food"}  # "what food is it famous for"
    fields = {field for field, _ in labels}
    if len(fields) != 1:
        return Reading("unknown")
    (field,) = fields
    values = {v for _, v in labels if v is not None}
    if len(values) > 1:
        return Reading("unknown")  # "is it in Asia or Europe?"
    yes_no = norm.split()[0] in YES_NO_OPENERS
    return Reading("field", field=field, value=next(iter(values), None), yes_no=yes_no)


def kb_answer(question: str, index: int) -> tuple[str, str]:
    """The scripted oracle: ``(answer text, answer source)`` for city ``index``."""
    reading = read_question(question, index)
    if reading.kind == "guess":
        return (YES if reading.city == index else NO), "guess"
    if reading.kind == "unknown":
        return UNKNOWN, "unknown"
    city = load_kb().cities[index]
    assert reading.field is not None
    answer = _ANSWERS[reading.field](city, reading.value, reading.yes_no, qa.normalize(question))
    return answer + "\n", "kb"


# --- answers: one small pure function per field ---------------------------------------------
def _yes_no(value: bool, fact: str = "") -> str:
    return ("Yes." if value else "No.") + (f" {fact}" if fact else "")


def _region_name(region: str) -> str:
    return f"the {region}" if region in ("Caribbean", "Middle East") else region


def _continent(city: City, value: Any, yes_no: bool, norm: str) -> str:
    where = (
        f"It lies in both {city.continents[0]} and {city.continents[1]}."
        if len(city.continents) > 1
        else f"It is in {city.continents[0]}."
    )
    if value is None:
        return where
    return "Yes." if value in city.continents else f"No. {where}"


def in_region(city: City, group: str) -> bool:
    """Whether a city belongs to a named region group ("middle east", "latin america", ...)."""
    for member in _REGION_GROUPS[group]:
        region, _, only = member.partition("/")
        if city.region == region and (not only or only in (city.country, city.name)):
            return True
    return False


def _region(city: City, value: Any, yes_no: bool, norm: str) -> str:
    where = f"It is in {_region_name(city.region)}."
    if value is None:
        return where
    return "Yes." if in_region(city, value) else f"No. {where}"


def latitude_phrase(lat: float) -> str:
    """``It lies just south of the equator.`` and the like, from the latitude."""
    side = "north" if lat >= 0 else "south"
    word = next(w for limit, w in _LATITUDE_WORDS if abs(lat) < limit)
    return f"It lies {word} {side} of the equator."


def _hemisphere(city: City, value: Any, yes_no: bool, norm: str) -> str:
    ns = "northern" if city.lat >= 0 else "southern"
    ew = "eastern" if city.lon >= 0 else "western"
    if value is None:
        return f"It is in the {ns} and {ew} hemispheres. {latitude_phrase(city.lat)}"
    if value in ("northern", "southern"):
        return _yes_no(value == ns, latitude_phrase(city.lat))
    return _yes_no(value == ew, f"It is in the {ew} hemisphere.")


def _coast(city: City, value: Any, yes_no: bool, norm: str) -> str:
    if city.coast is None:
        fact = "It is inland."
    elif city.coast == "lake":
        fact = f"It lies on {city.water}, not on the sea."
    else:
        fact = f"It lies on {city.water}."
    asks_inland = "inland" in norm.split() or "landlocked" in norm.split()
    if value == "lake":
        is_true = city.coast == "lake"
        fact = f"It lies on {city.water}." if is_true else fact
    elif asks_inland:
        is_true = city.coast in (None, "lake")
    else:
        is_true = city.coast not in (None, "lake")
    return _yes_no(is_true, fact) if yes_no else fact


def _river(city: City, value: Any, yes_no: bool, norm: str) -> str:
    fact = f"It lies on {city.river}." if city.river else "No major river flows through it."
    if not yes_no:
        return fact
    return _yes_no(city.river is not None, fact if city.river else "")


def _capital(city: City, value: Any, yes_no: bool, norm: str) -> str:
    if city.capital:
        fact = "It is the national capital."
    elif city.regional_capital:
        fact = f"It is not the national capital, but it is the capital of its {city.regional_capital}."
    else:
        fact = "It is not the national capital."
    return _yes_no(city.capital, fact) if yes_no else fact


_NUMBER = re.compile(
    r"\b(more than|over|above|at least|bigger than|larger than|less than|under|below|fewer than|smaller than)"
    r" (\d+(?: \d+)?)( million)?\b"
)


def _population(city: City, value: Any, yes_no: bool, norm: str) -> str:
    fact = f"It has {city.population_band} people."
    m = _NUMBER.search(norm)
    if m:
        number = float(m.group(2).replace(" ", "."))  # "2.5" arrives as "2 5"
        threshold = number * 1e6 if (m.group(3) or number < 1000) else number
        more = m.group(1) in ("more than", "over", "above", "at least", "bigger than", "larger than")
        is_true = city.population > threshold if more else city.population < threshold
        return _yes_no(is_true, fact)
    return _yes_no(True, fact) if yes_no else fact  # every listed city is big


def _largest(city: City, value: Any, yes_no: bool, norm: str) -> str:
    is_largest = city.largest_in_country
    fact = f"It is {'' if is_largest else 'not '}the largest city in its country."
    return _yes_no(is_largest, fact) if yes_no else fact


def _join(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _language(city: City, value: Any, yes_no: bool, norm: str) -> str:
    fact = f"Most people speak {_join(city.languages)}."
    if value is None:
        return fact
    spoken = any(lang in city.languages for lang in _LANGUAGES[value])
    return _yes_no(spoken, fact)


_HOT = ("tropical", "hot desert")
_DRY = ("hot desert", "mild desert", "semi-arid")


def _climate(city: City, value: Any, yes_no: bool, norm: str) -> str:
    if value is None:
        return f"Its climate is {city.climate}: {city.climate_description}."
    # Yes/no answers name the climate type only; the description answers open questions.
    fact = f"Its climate is {city.climate}."
    hot = city.climate.startswith(_HOT)
    if value == "hot":
        if hot:
            return _yes_no(True, fact)
        summer_only = city.climate not in ("oceanic", "subtropical highland", "mild desert", "temperate")
        return f"Only in summer. {fact}" if summer_only else _yes_no(False, fact)
    if value == "cold":
        if city.snow:
            return f"Yes, in winter. {fact}"
        return _yes_no(False, fact) if hot else f"Not very. {fact}"
    if value == "snow":
        return "Yes. It snows in most winters." if city.snow else "No. It rarely or never snows."
    if value == "tropical":
        return _yes_no(city.climate.startswith("tropical"), fact)
    return _yes_no(city.climate.startswith(_DRY), fact)  # "dry"


def _altitude(city: City, value: Any, yes_no: bool, norm: str) -> str:
    if city.high_altitude:
        fact = "It lies high up, more than 1,400 metres above sea level."
    else:
        fact = "It is not at high altitude."
    return _yes_no(city.high_altitude, fact) if yes_no else fact


def _food(city: City, value: Any, yes_no: bool, norm: str) -> str:
    return f"Local favourites include {city.food}."


def _landmark(city: City, value: Any, yes_no: bool, norm: str) -> str:
    return f"It is known for {city.landmark}."


def _fact(city: City, value: Any, yes_no: bool, norm: str) -> str:
    return city.fact


def _country(city: City, value: Any, yes_no: bool, norm: str) -> str:
    if value is None:
        return f"I can't name the country, but it is in {_region_name(city.region)}."
    return "Yes." if value == city.country else "No."  # bare, by the card's rule


_ANSWERS = {
    "continent": _continent, "region": _region, "hemisphere": _hemisphere, "coast": _coast,
    "river": _river, "capital": _capital, "population": _population, "largest": _largest,
    "language": _language, "climate": _climate, "altitude": _altitude, "food": _food,
    "landmark": _landmark, "fact": _fact, "country": _country,
}  # fmt: skip


# --- the LM oracle ---------------------------------------------------------------------------
def lm_prompt(city: City, question: str) -> list[dict[str, str]]:
    """The LM oracle's prompt: the secret, the rule not to name it, the question."""
    text = (
        f"You are thinking of the city {city.name}, {city.country}. Answer the question "
        "truthfully in one sentence. Do not name the city or its country.\n"
        f"Question: {question}\nAnswer:"
    )
    return [{"role": "user", "content": text}]


def forbidden_names(city: City) -> tuple[str, ...]:
    """Names no answer may contain: the city, its aliases, its country and the country's names."""
    others = load_kb().countries.get(city.country, ())
    # "America" alone is also part of continent names ("North America"), so it cannot be banned.
    return (*city.names, city.country, *(n for n in others if n != "America"))


def parse_lm_answer(reply: str, city: City) -> tuple[str, bool]:
    """``(answer text, redacted)``: the reply's first line, or ``I don't know.`` if it leaks."""
    line = qa.first_line(reply)
    if not line:
        return UNKNOWN, False
    if qa.mentions(qa.normalize(line), [qa.normalize(n) for n in forbidden_names(city)]):
        return UNKNOWN, True
    return line + "\n", False


def find_city(name: str) -> int:
    """Index of the city named ``name`` (its name or an alias, case- and accent-insensitive)."""
    _, city_names, _ = _tables()
    found = city_names.get(qa.normalize(name))
    if found is None:
        raise ValueError(f"unknown Guess My City city {name!r}")
    return found


class GuessCityEnv(TextEnv):
    """Guess My City with a knowledge-base oracle (see the module docstring)."""

    return_range = (-float(MAX_QUESTIONS), 0.0)
    play_help = (
        "I am from one of 100 large cities. Ask open or yes/no questions (continent, language,\n"
        "climate, food, landmarks, ...); answers never name the city or its country. Name the\n"
        "city to win, within 20 questions.\n"
        "Action: one question. Examples: Which continent is your city on?\n"
        "What do people eat there?  Is it the capital of its country?  Is it Jakarta?\n"
        "Rewards: -1 per question, 0 for the question that names the city."
    )
    play_reveal = ("city", "country")

    def __init__(self, oracle: Any = "kb", render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.kb = load_kb()
        self.partner = qa.resolve_partner(oracle, "oracle")
        if self.partner is not None:
            self.deterministic = bool(getattr(self.partner, "deterministic", False))
        self._city = 0
        self._asked = 0

    @property
    def city(self) -> City:
        """The hidden city (privileged state, for scripted policies and tests)."""
        return self.kb.cities[self._city]

    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        self._city = self._choose_city(rng, options)
        self._asked = 0
        return FIRST_TEXT, {**self._city_info(), "is_guess": False, "answer_source": None,
                            "redacted": False}

    def _city_info(self) -> dict[str, Any]:
        return {"city": self.city.name, "country": self.city.country}

    def _choose_city(self, rng: np.random.Generator, options: dict[str, Any]) -> int:
        return qa.choose_index(options, "city", len(self.kb.cities), find_city, rng)

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self._asked += 1
        question = action.strip()
        reading = read_question(question, self._city)
        redacted = False
        if reading.kind == "guess" or self.partner is None:
            answer, source = kb_answer(question, self._city)
        else:
            reply = self.partner.complete(lm_prompt(self.city, question))  # type: ignore[attr-defined]
            (answer, redacted), source = parse_lm_answer(reply, self.city), "lm"
        solved = reading.kind == "guess" and reading.city == self._city
        truncated = not solved and self._asked >= MAX_QUESTIONS
        info = {
            **self._city_info(),
            "is_guess": reading.kind == "guess",
            "answer_source": source,
            "redacted": redacted,
            "success": solved,
            "illegal": False,
        }
        return answer, (0.0 if solved else -1.0), solved, truncated, info

    @classmethod
    def evaluation_resets(cls, n_episodes: int, **env_kwargs: Any) -> list[tuple[int, dict]]:
        """docs/tasks.md §8: one episode per city, ``index = seed % 100``, seeds ``0 .. n-1``."""
        n_cities = len(load_kb().cities)
        return [(i, {"index": i % n_cities}) for i in range(n_episodes)]
