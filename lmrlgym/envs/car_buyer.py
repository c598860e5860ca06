"""The Car Dealer buyer (``CarDealer-v0``; its behaviour is specified in the env card).

Its data files, the persona, the reader of a seller line, the negotiation rules, the decision
marker of a final line, and the buyers: the default rule-based one and one played by a chat
model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import numpy as np

UNCOMMUNICATIVE_MAX_WORDS = 6
# Seller lines a buyer of each personality sits through before walking out (docs/tasks.md §9).
PATIENCE: dict[str, int] = {
    "talkative": 14,
    "polite": 12,
    "respectful": 12,
    "sarcastic": 10,
    "uncommunicative": 9,
    "rude": 8,
    "angry": 7,
    "insulting": 7,
    "toxic": 6,
    "abusive": 6,
}
REVEALERS = frozenset({"polite", "respectful", "talkative"})
# Types that read as adjectives ("a luxury Audi"); the others are nouns ("an Audi SUV").
_ADJECTIVE_TYPES = frozenset({"luxury", "electric"})
# How each feature reads in a sentence ("with heated seats and a sunroof").
_FEATURE_PHRASES = {
    "backup camera": "a backup camera",
    "navigation system": "a navigation system",
    "sunroof": "a sunroof",
}
Dialogue = list[tuple[str, str]]  # (role "seller" | "buyer", line without the newline)


# --- data files --------------------------------------------------------------------------------
def _load_json(name: str) -> Any:
    return json.loads(resources.files("lmrlgym.envs").joinpath(f"data/{name}").read_text("utf-8"))


@functools.cache
def buyer_attributes() -> dict[str, list]:
    """Persona lists of the original env: personalities, brands, types, features, budgets."""
    return _load_json("car_dealer_buyer_attributes.json")["env_buyer_attributes"]


@functools.cache
def buyer_templates() -> dict[str, dict[str, list[str]]]:
    return _load_json("car_dealer_buyer_templates.json")["personalities"]


@functools.cache
def car_catalogue() -> list[dict[str, Any]]:
    return _load_json("car_catalogue.json")["cars"]


def bare_brand(brand: str) -> str:
    """``"an Audi"`` -> ``"Audi"``."""
    return re.sub(r"^an?\s+", "", brand)


def with_article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


# --- persona -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Persona:
    """The buyer's hidden persona; ``brand`` keeps its article (``"a Toyota"``)."""

    personality: str
    brand: str
    type: str
    features: tuple[str, ...]
    budget: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "personality": self.personality,
            "brand": self.brand,
            "type": self.type,
            "features": list(self.features),
            "budget": self.budget,
        }


def draw_persona(rng: np.random.Generator) -> Persona:
    """Draw in the order of docs/tasks.md §9: personality, brand, type, k in 1-4, k features, budget."""
    a = buyer_attributes()
    personality = a["DEFAULT_PERSONALITIES"][rng.integers(len(a["DEFAULT_PERSONALITIES"]))]
    brand = a["DEFAULT_BRANDS"][rng.integers(len(a["DEFAULT_BRANDS"]))]
    car_type = a["DEFAULT_TYPES"][rng.integers(len(a["DEFAULT_TYPES"]))]
    k = int(rng.integers(1, 5))
    picked = sorted(rng.choice(len(a["DEFAULT_FEATURES"]), size=k, replace=False))
    features = tuple(a["DEFAULT_FEATURES"][i] for i in picked)
    budget = int(a["DEFAULT_BUDGETS"][rng.integers(len(a["DEFAULT_BUDGETS"]))])
    return Persona(personality, brand, car_type, features, budget)


def override_persona(persona: Persona, override: Any) -> Persona:
    """Apply the ``persona`` reset option, validating every field against the attribute lists."""
    if not isinstance(override, dict):
        raise ValueError(f"reset option 'persona' must be a dict, got {type(override).__name__}")
    a = buyer_attributes()
    fields = {"personality", "brand", "type", "features", "budget"}
    unknown = set(override) - fields
    if unknown:
        raise ValueError(f"persona: unknown field(s) {sorted(unknown)}; valid: {sorted(fields)}")
    changes: dict[str, Any] = {}

    def pick(field: str, value: Any, valid: Sequence[Any]) -> Any:
        if value not in valid:
            raise ValueError(f"persona.{field}={value!r} is not one of {list(valid)}")
        return value

    if "personality" in override:
        changes["personality"] = pick(
            "personality", override["personality"], a["DEFAULT_PERSONALITIES"]
        )
    if "brand" in override:
        by_name = {bare_brand(b): b for b in a["DEFAULT_BRANDS"]}
        value = override["brand"]
        value = by_name.get(value, value) if isinstance(value, str) else value
        changes["brand"] = pick("brand", value, a["DEFAULT_BRANDS"])
    if "type" in override:
        changes["type"] = pick("type", override["type"], a["DEFAULT_TYPES"])
    if "features" in override:
        feats = override["features"]
        if isinstance(feats, str) or not isinstance(feats, (list, tuple)) or not feats:
            raise ValueError(f"persona.features must be a non-empty list, got {feats!r}")
        for f in feats:
            pick("features", f, a["DEFAULT_FEATURES"])
        if len(set(feats)) != len(feats):
            raise ValueError(f"persona.features has duplicates: {feats!r}")
        changes["features"] = tuple(f for f in a["DEFAULT_FEATURES"] if f in feats)
    if "budget" in override:
        changes["budget"] = int(pick("budget", override["budget"], a["DEFAULT_BUDGETS"]))
    return dataclasses.replace(persona, **changes)


def money(amount: int) -> str:
    """``30000`` -> ``"$30,000"``."""
    return f"${amount:,}"


def car_phrase(brand: str, car_type: str) -> str:
    """``("a Toyota", "sedan")`` -> ``"a Toyota sedan"``; ``("an Audi", "luxury")`` -> ``"a luxury Audi"``."""
    if car_type in _ADJECTIVE_TYPES:
        return f"{with_article(car_type)} {bare_brand(brand)}"
    return f"{brand} {car_type}"


def join_words(items: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def feature_phrase(feature: str) -> str:
    return _FEATURE_PHRASES.get(feature, feature)


def wants_phrase(p: Persona) -> str:
    """``"a Toyota sedan with heated seats and a sunroof"``."""
    return (
        f"{car_phrase(p.brand, p.type)} with {join_words([feature_phrase(f) for f in p.features])}"
    )


def type_item(car_type: str) -> str:
    """One revealed type: ``"a sedan"``, ``"an SUV"``, ``"a luxury car"``."""
    if car_type in _ADJECTIVE_TYPES:
        return f"{with_article(car_type)} car"
    return "an SUV" if car_type == "SUV" else with_article(car_type)


def wish_items(p: Persona) -> list[str]:
    """What a one-item-per-question buyer reveals, in order: brand, type, then each feature."""
    return [p.brand, type_item(p.type)] + [feature_phrase(f) for f in p.features]


def persona_line(p: Persona) -> str:
    """The LM buyer's one-line persona, in the project's wording (docs/tasks.md §9)."""
    return (
        f"Buyer persona: {p.personality}; wants {car_phrase(p.brand, p.type)} with "
        f"{', '.join(p.features)}; budget {money(p.budget)}."
    )


# --- reading a seller line ---------------------------------------------------------------------
_PRICE_RE = re.compile(
    r"(?<![\w.,])(?P<dollar>\$\s?)?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:\s?(?P<k>[kK])\b|\s+(?P<thousand>thousand|grand)\b)?"
)
# A number followed by one of these is a quantity, not a price ("12,000 miles", "0% APR").
_UNIT_RE = re.compile(
    r"\s*(?:%|percent|miles?|mi\b|km|kilomet|mpg|hp\b|horsepower|lbs?\b|pounds|months?|years?|"
    r"seats?\b|seater|doors?\b|cylinders?|liters?|litres?|kwh|kw\b)",
    re.IGNORECASE,
)


def parse_prices(line: str) -> list[int]:
    """Dollar amounts in ``line``, in order (docs/tasks.md §9); the last one is the ask."""
    prices = []
    for m in _PRICE_RE.finditer(line):
        num = m.group("num")
        value = float(num.replace(",", ""))
        thousands = bool(m.group("k") or m.group("thousand"))
        if thousands:
            value *= 1000
        elif not m.group("dollar") and "," not in num and re.fullmatch(r"(19|20)\d\d", num):
            continue  # a model year
        if value < 1000 or not math.isfinite(value) or _UNIT_RE.match(line, m.end()):
            continue
        prices.append(int(round(value)))
    return prices


def _alternatives(words: Sequence[str]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_BRAND_NAMES: dict[str, tuple[str, ...]] = {
    "Volkswagen": ("volkswagen", "vw"),
    "Lexus": ("lexus",),
    "Ford": ("ford",),
    "Mazda": ("mazda",),
    "Hyundai": ("hyundai",),
    "Toyota": ("toyota",),
    "Mercedes-Benz": ("mercedes-benz", "mercedes benz", "mercedes", "benz", "merc"),
    "BMW": ("bmw", "beemer", "bimmer"),
    "Audi": ("audi",),
    "Subaru": ("subaru",),
    "Honda": ("honda",),
    "Porsche": ("porsche",),
    "Tesla": ("tesla",),
}
_TYPE_NAMES: dict[str, tuple[str, ...]] = {
    "luxury": ("luxury",),
    "sedan": ("sedan", "saloon"),
    "convertible": ("convertible", "cabriolet", "cabrio", "roadster"),
    "truck": ("truck", "pickup", "pick-up"),
    "electric": ("electric", "ev", "evs", "battery-electric"),
    "SUV": ("suv", "sport utility", "sport-utility", "crossover"),
}
_FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "backup camera": (
        r"back[- ]?up cam(?:era)?",
        r"rear[- ]?view cam(?:era)?",
        r"rear cam(?:era)?",
        r"reversing cam(?:era)?",
    ),
    "navigation system": (r"navigation(?: system)?", r"nav system", r"gps", r"sat[- ]?nav"),
    "heated seats": (r"heated (?:\w+ )?seat(?:s|ing)", r"seat heaters?"),
    "leather seats": (r"leather(?: \w+)?",),
    "third-row seating": (
        r"third[- ]row(?: seat(?:s|ing))?",
        r"3rd[- ]row(?: seat(?:s|ing))?",
        r"(?:seven|7)[- ]seat(?:s|er)",
    ),
    "blind spot monitoring": (
        r"blind[- ]spot(?: monitor(?:ing)?| detection| warning| assist)?",
        r"bsm",
    ),
    "sunroof": (r"sun ?roof", r"moon ?roof", r"panoramic roof"),
    "Apple CarPlay": (r"(?:apple )?car ?play",),
}


def _word_re(alternatives: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)


# name as written (lower case) -> what it names; one alternation regex per kind, for speed.
_BRAND_LOOKUP = {n: b for b, ns in _BRAND_NAMES.items() for n in ns}
_TYPE_LOOKUP = {n: t for t, ns in _TYPE_NAMES.items() for n in ns}
_BRAND_RE = _word_re(_alternatives([re.escape(n) for n in _BRAND_LOOKUP]))
_TYPE_RE = _word_re(_alternatives([re.escape(n) for n in _TYPE_LOOKUP]))
_FEATURE_RES = {f: _word_re("|".join(ns)) for f, ns in _FEATURE_NAMES.items()}
_NEGATIONS = frozenset({"no", "not", "without", "lacks", "lacking", "never", "none", "minus"})
_CLAUSE_END = re.compile(r"[.,;:!?]")


@functools.cache
def _models() -> tuple[re.Pattern, dict[str, tuple[str, str]]]:
    """Catalogue model names (case-sensitive: ``ES`` the Lexus, not ``es``) -> (brand, type)."""
    lookup = {c["model"]: (c["brand"], c["type"]) for c in car_catalogue()}
    names = _alternatives([re.escape(n) for n in lookup])
    return re.compile(rf"(?<![\w-])(?:{names})(?![\w-])"), lookup


def _last_mention(line: str, regex: re.Pattern, name_of: Any) -> tuple[int, str] | None:
    """(position, name) of the last match of ``regex``; ``name_of`` maps the matched text."""
    last = None
    for m in regex.finditer(line):
        last = (m.start(), name_of(m.group(0)))
    return last


def _last_named(line: str, word_re: re.Pattern, lookup: dict[str, str], field: int) -> str | None:
    """The name mentioned last in ``line``: a word of ``word_re`` (mapped by ``lookup``) or a
    catalogue model (its (brand, type) entry at ``field``)."""
    model_re, models = _models()
    mentions = [
        _last_mention(line, word_re, lambda text: lookup[text.lower()]),
        _last_mention(line, model_re, lambda text: models[text][field]),
    ]
    return max((m for m in mentions if m), default=(0, None))[1]


def named_brand(line: str) -> str | None:
    """The last brand named (by name, short form or catalogue model), bare (``"Toyota"``)."""
    return _last_named(line, _BRAND_RE, _BRAND_LOOKUP, 0)


def named_type(line: str) -> str | None:
    """The last car type named (a catalogue model names its type)."""
    return _last_named(line, _TYPE_RE, _TYPE_LOOKUP, 1)


def is_negated(line: str, start: int) -> bool:
    """A negation among the three words before ``start``, within the same clause."""
    before = _CLAUSE_END.split(line[:start])[-1].lower()
    words = re.findall(r"[\w']+", before)[-3:]
    return any(w in _NEGATIONS or w.endswith("n't") or w == "doesnt" for w in words)


def named_features(line: str) -> tuple[set[str], set[str]]:
    """(features said to be present, features said to be absent)."""
    present, absent = set(), set()
    for f, r in _FEATURE_RES.items():
        for m in r.finditer(line):
            if is_negated(line, m.start()):
                absent.add(f)
                present.discard(f)
            else:
                present.add(f)
                absent.discard(f)
    return present, absent


_WANTS_RE = re.compile(
    r"\bwhat (?:kind|type|sort|style|make|brand|model|features?|options|car|vehicle)s?\b"
    r"|\bwhich (?:brand|make|model|type|kind|features?|options|car|vehicle)s?\b"
    r"|\bwhat (?:are|were) you (?:looking|hoping|shopping|after)\b"
    r"|\bwhat (?:do|would) you (?:want|need|like|prefer)\b"
    r"|\bwhat(?:'s| is| are) your (?:preferences?|needs|requirements|wishes|must[- ]haves?)\b"
    r"|\bany (?:preferences?|particular|specific|must[- ]haves?|features?|brand|requirements)\b"
    r"|\bhow (?:can|may) i help\b|\bwhat can i (?:do|get|find|show)\b"
    r"|\bwhat (?:else|other)\b|\banything else\b"
    r"|\b(?:tell me|let me know) (?:about )?what you\b",
    re.IGNORECASE,
)
_BUDGET_RE = re.compile(
    r"\bbudget|\bprice range\b|\bprice point\b|\bafford\b|\bspend\b"
    r"|\bhow much (?:are|do|can|would|were|could) you\b",
    re.IGNORECASE,
)
_REQUEST_RE = re.compile(r"\?|\b(?:tell me|let me know)\b", re.IGNORECASE)
_AGREE_RE = re.compile(
    r"^\W*deal\b|\b(?:it'?s|that'?s|we have|you have|you've got|we've got) a deal\b|\bagreed\b"
    r"|\byou got it\b|\bit'?s yours\b|\bsold\b|\bi accept\b|\bi can do that\b",
    re.IGNORECASE,
)


def asks_wants(line: str) -> bool:
    return bool(_WANTS_RE.search(line) and _REQUEST_RE.search(line))


def asks_budget(line: str) -> bool:
    return bool(_BUDGET_RE.search(line) and _REQUEST_RE.search(line))


def agrees(line: str) -> bool:
    return bool(_AGREE_RE.search(line))


@dataclasses.dataclass(frozen=True)
class SellerLine:
    """What the rule-based buyer reads from one seller line."""

    prices: tuple[int, ...]
    brand: str | None
    type: str | None
    present: frozenset[str]
    absent: frozenset[str]
    asks_wants: bool
    asks_budget: bool
    agrees: bool

    @property
    def ask(self) -> int | None:
        return self.prices[-1] if self.prices else None


def parse_seller_line(line: str) -> SellerLine:
    present, absent = named_features(line)
    return SellerLine(
        prices=tuple(parse_prices(line)),
        brand=named_brand(line),
        type=named_type(line),
        present=frozenset(present),
        absent=frozenset(absent),
        asks_wants=asks_wants(line),
        asks_budget=asks_budget(line),
        agrees=agrees(line),
    )


# --- negotiation rules -------------------------------------------------------------------------
def floor100(x: float) -> int:
    # The small epsilon keeps exact products such as 30000 * 0.95 from flooring a dollar short.
    return int(np.floor(x / 100 + 1e-9)) * 100


def match_score(p: Persona, brand: str | None, car_type: str | None, present: set[str]) -> float:
    """m = 0.25 [brand] + 0.25 [type] + 0.5 (share of wanted features confirmed present)."""
    share = len(set(p.features) & present) / len(p.features)
    return 0.25 * (brand == bare_brand(p.brand)) + 0.25 * (car_type == p.type) + 0.5 * share


def reservation_price(budget: int, m: float) -> int:
    """P = budget (0.8 + 0.2 m), rounded down to $100: the most this buyer pays for this car."""
    return min(budget, floor100(budget * (0.8 + 0.2 * m)))


def counter_price(reservation: int, k: int) -> int:
    """The k-th counter-offer (k >= 1): 85 %, 90 %, 95 %, then 100 % of P."""
    return floor100(reservation * min(1.0, 0.85 + 0.05 * (k - 1)))


@dataclasses.dataclass
class BuyerState:
    """What the rule-based buyer remembers of the negotiation."""

    brand: str | None = None  # car under discussion: last brand and type named
    type: str | None = None
    features: set[str] = dataclasses.field(default_factory=set)  # confirmed present
    msrp: int | None = None  # first price quoted
    ask: int | None = None  # current ask: the last price quoted
    counters: list[int] = dataclasses.field(default_factory=list)
    revealed: int = 0  # wish items told so far (one-item-per-question buyers)
    seller_turns: int = 0

    def read(self, line: SellerLine) -> None:
        # Naming another brand or type starts talk about another car: its features are unknown.
        if (line.brand and self.brand and line.brand != self.brand) or (
            line.type and self.type and line.type != self.type
        ):
            self.features = set()
        self.brand = line.brand or self.brand
        self.type = line.type or self.type
        self.features = (self.features | line.present) - line.absent
        if line.ask is not None:
            self.msrp = line.ask if self.msrp is None else self.msrp
            self.ask = line.ask


@dataclasses.dataclass(frozen=True)
class Move:
    """The buyer's reply before wording: ``kind`` is accept / reject / answer / counter / neutral."""

    kind: str
    price: int | None = None
    wants: bool = False  # for "answer": which questions it answers
    budget: bool = False


def next_move(p: Persona, s: BuyerState, line: SellerLine) -> Move:
    """The six ordered rules of docs/tasks.md §9 (``s`` already holds this line)."""
    m = match_score(p, s.brand, s.type, s.features)
    reservation = reservation_price(p.budget, m)
    k = len(s.counters)
    willing = counter_price(reservation, max(k, 1))
    if s.ask is not None and s.ask <= willing:
        return Move("accept", s.ask)
    if s.counters and ((line.agrees and not line.prices) or line.ask == s.counters[-1]):
        return Move("accept", s.counters[-1])
    if s.seller_turns >= PATIENCE[p.personality]:
        return Move("reject")
    if line.asks_wants or line.asks_budget:
        return Move("answer", wants=line.asks_wants, budget=line.asks_budget)
    if s.ask is not None:
        nxt = counter_price(reservation, k + 1)
        return Move("accept", s.ask) if nxt >= s.ask else Move("counter", nxt)
    return Move("neutral")


# --- the decision marker -----------------------------------------------------------------------
DECISION_RE = re.compile(
    r"Output:\s*Decision=(Accept|Reject)\s+MSRP=\$([0-9][0-9,]*)(\s+Buy Price=\$([0-9][0-9,]*))?"
)


def decision_marker(accept: bool, msrp: int, buy_price: int | None = None) -> str:
    if accept:
        return f"Output: Decision=Accept MSRP={money(msrp)} Buy Price={money(buy_price or 0)}"
    return f"Output: Decision=Reject MSRP={money(msrp)}"


def read_decision(raw: str, budget: int) -> tuple[str, dict[str, Any] | None, bool]:
    """(the line the seller sees, the decision or None, whether an Accept was overridden).

    The first marker counts; it and everything after it are cut from the seller's view. An Accept
    with no buy price or one above the budget becomes a Reject (a buyer cannot pay more).
    """
    m = DECISION_RE.search(raw)
    if m is None:
        return raw, None, False
    visible = raw[: m.start()].rstrip()
    accept = m.group(1) == "Accept"
    msrp = int(m.group(2).replace(",", ""))
    price = int(m.group(4).replace(",", "")) if m.group(4) else None
    overridden = accept and (price is None or price > budget)
    if overridden or not accept:
        return visible, {"accept": False, "msrp": msrp, "buy_price": None}, overridden
    return visible, {"accept": True, "msrp": msrp, "buy_price": price}, False


# --- buyers ------------------------------------------------------------------------------------
@runtime_checkable
class Buyer(Protocol):
    """The other party: given the persona, answers each seller line with one raw line.

    A final line ends with the decision marker (:func:`decision_marker`); the env parses and
    strips it, so any buyer, scripted or LM, goes through the same decision rules.
    """

    deterministic: bool

    def start(self, persona: Persona, rng: np.random.Generator) -> None: ...

    def reply(self, dialogue: Dialogue) -> str:
        """The buyer's next line; ``dialogue`` ends with the seller's new line."""
        ...


class RuleBuyer:
    """The default buyer: the rules of docs/tasks.md §9 worded with per-personality templates."""

    deterministic = True

    def start(self, persona: Persona, rng: np.random.Generator) -> None:
        self.persona = persona
        self.rng = rng  # the episode generator: template choices replay with the seed
        self.state = BuyerState()

    def reply(self, dialogue: Dialogue) -> str:
        line = parse_seller_line(dialogue[-1][1])
        s = self.state
        s.seller_turns += 1
        s.read(line)
        move = next_move(self.persona, s, line)
        msrp = s.msrp or 0
        if move.kind == "accept":
            return (
                f"{self._say('accept', price=move.price)} {decision_marker(True, msrp, move.price)}"
            )
        if move.kind == "reject":
            return f"{self._say('reject')} {decision_marker(False, msrp)}"
        if move.kind == "counter":
            s.counters.append(move.price)
            return self._say("counter", price=move.price)
        if move.kind == "answer":
            return self._answer(move)
        return self._say("neutral_car" if (s.brand or s.type) else "neutral_none")

    def _answer(self, move: Move) -> str:
        p, s = self.persona, self.state
        parts = []
        if move.wants:
            if p.personality in REVEALERS:
                parts.append(self._say("wants_full", wants=wants_phrase(p)))
            elif s.revealed < len(wish_items(p)):
                parts.append(self._say("wants_item", item=wish_items(p)[s.revealed]))
                s.revealed += 1
            else:
                parts.append(self._say("wants_done", wants=wants_phrase(p)))
        if move.budget:
            kind = "budget_name" if p.personality in REVEALERS else "budget_refuse"
            parts.append(self._say(kind, budget=money(p.budget)))
        text = " ".join(parts)
        # Uncommunicative buyers say at most six words: the budget refusal is dropped first.
        if p.personality == "uncommunicative" and len(text.split()) > UNCOMMUNICATIVE_MAX_WORDS:
            text = parts[0]
        return text

    def _say(self, kind: str, **slots: Any) -> str:
        options = buyer_templates()[self.persona.personality][kind]
        text = options[int(self.rng.integers(len(options)))]
        if "price" in slots and slots["price"] is not None:
            slots["price"] = money(slots["price"])
        return sentence_case(text.format(**slots))


LM_BUYER_INSTRUCTIONS = (
    "You are a customer at a car dealership, talking with a car seller. {persona} Stay in "
    "character and reply with one short line. Never pay more than your budget. When you decide "
    "to buy or to walk away, end your line with "
    "'Output: Decision=Accept MSRP=$<first price quoted> Buy Price=$<agreed price>' or "
    "'Output: Decision=Reject MSRP=$<first price quoted>' ($0 if no price was quoted)."
)


_SPEAKER_TAG = re.compile(r"^\s*(?:buyer|assistant)\s*:\s*", re.IGNORECASE)


class LMBuyer:
    """A buyer played by a chat model: persona and rules in the system message, the seller as
    ``user`` and the buyer as ``assistant``."""

    deterministic = False

    def __init__(self, partner: Any):
        self.partner = partner

    def start(self, persona: Persona, rng: np.random.Generator) -> None:
        self.persona = persona

    def messages(self, dialogue: Dialogue) -> list[dict[str, str]]:
        system = LM_BUYER_INSTRUCTIONS.format(persona=persona_line(self.persona))
        roles = {"seller": "user", "buyer": "assistant"}
        return [{"role": "system", "content": system}] + [
            {"role": roles[who], "content": text} for who, text in dialogue
        ]

    def reply(self, dialogue: Dialogue) -> str:
        # Base models often echo a speaker tag; the transcript itself has none.
        return _SPEAKER_TAG.sub("", self.partner.complete(self.messages(dialogue)))


def make_buyer(buyer: Any) -> Buyer:
    """``"rules"``, a :class:`Buyer`, a ``ChatPartner`` or a partner spec string."""
    if isinstance(buyer, str):
        if buyer == "rules":
            return RuleBuyer()
        from lmrlgym.partners import make_partner

        try:
            return LMBuyer(make_partner(buyer))
        except ValueError as e:
            raise ValueError(f"buyer must be 'rules' or a partner spec: {e}") from None
    if isinstance(buyer, Buyer):
        return buyer
    if callable(getattr(buyer, "complete", None)):
        return LMBuyer(buyer)
    raise TypeError(
        f"buyer must be 'rules', a partner spec, a ChatPartner or a Buyer, got {type(buyer).__name__}"
    )


def sentence_case(text: str) -> str:
    """Capitalise each sentence's first letter (a slot such as "a Mazda" may open a sentence)."""
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def one_line(text: str) -> str:
    """A buyer reply as one line: whitespace runs (newlines included) become single spaces."""
    return " ".join(text.split()) or "..."
