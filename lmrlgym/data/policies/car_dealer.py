"""Scripted car sellers for ``CarDealer-v0`` (docs/tasks.md §9, "Behaviour policies").

Both sellers read only the dialogue text (the buyer's replies, parsed with the env's own line
reader), never the hidden persona, so they work with any buyer, LM buyers included.

- ``car-seller(q_match, anchor, concession)``: the behaviour policy of the offline dataset. Asks
  what the buyer wants (probability ``q_match``; else proposes a random car at once), proposes a
  car whose brand, type and features each follow the stated wishes with probability ``q_match``,
  opens at ``anchor`` x the budget if the buyer named it, else x a per-type list price, moves a
  fraction ``concession`` toward the buyer's counter each turn and agrees to the counter when the
  gap is under 5 %.
- ``car-seller-expert``: the best scripted seller, the benchmark's upper reference. It exploits
  the rule-based buyer's known structure as far as the text allows: asks for wants and budget,
  offers a fully equipped car of the stated brand and type (all eight features, so the feature
  share is 1), infers the reservation price from the first counter-offer and then holds that
  price until the buyer's counters reach it, settling earlier only to stay inside the shortest
  patience (6 seller lines).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.envs.car_buyer import (
    PATIENCE,
    bare_brand,
    buyer_attributes,
    car_catalogue,
    counter_price,
    feature_phrase,
    join_words,
    money,
    named_brand,
    named_features,
    named_type,
    parse_prices,
)

# List prices by type for opening when the budget is unknown: medians (to $500) of the catalogue
# (lmrlgym/envs/data/car_catalogue.json), fixed here so a catalogue edit cannot move the data.
LIST_PRICE = {
    "sedan": 24000,
    "SUV": 37500,
    "truck": 36000,
    "convertible": 62000,
    "electric": 45000,
    "luxury": 88000,
}
AGREE_GAP = 0.05  # agree to the buyer's counter when the gap is under 5 % of the ask

_GREETINGS = (
    "Hello and welcome! What kind of car are you looking for today, and what is your budget?",
    "Hi there! What are you looking for in a car, and what budget do you have in mind?",
    "Welcome in! Tell me what you need in a car and what price range works for you.",
    "Good to see you! What kind of car would you like, and how much are you hoping to spend?",
    "Hello! Which car are you shopping for today, and what's your budget?",
)
_ASK_MORE = (
    "Got it. What else matters to you in a car?",
    "Thanks. What other features would you like?",
    "Understood. What else are you looking for?",
)
_PROPOSALS = (
    "We have {car}{extras}. It lists at {price}.",
    "I think you'll like {car}{extras}. I can offer it for {price}.",
    "Take a look at {car}{extras}. The price is {price}.",
    "I have {car}{extras} on the lot right now, priced at {price}.",
    "How about {car}{extras}? It comes in at {price}.",
)
_CONCESSIONS = (
    "I can bring it down to {price}.",
    "The best I can do is {price}.",
    "Let's meet at {price}.",
    "I could go as low as {price}.",
    "For you, {price}.",
)
_HOLDS = (
    "It's a great car, and {price} is a fair price.",
    "I really can't go below {price}.",
    "{price} is already a very good price for this car.",
    "This car is worth every cent of {price}.",
    "I'm staying at {price}; it's the right price for this car.",
)
_AGREEMENTS = (
    "Deal, {price} it is.",
    "You got it, {price}.",
    "Agreed, {price}.",
    "It's a deal at {price}.",
    "Alright, {price} works. Deal.",
)
_RESTATE = (
    "It's {price}.",
    "The price is {price}.",
    "I'm asking {price} for it.",
    "It comes to {price}.",
    "You can drive it home for {price}.",
)


def round100(x: float) -> int:
    return int(round(x / 100.0)) * 100


def _pick(rng: np.random.Generator, options: tuple[str, ...], **slots: Any) -> str:
    return options[int(rng.integers(len(options)))].format(**slots)


def last_buyer_line(info: dict[str, Any]) -> str:
    turns = info["turns"]
    return turns[-1].text.strip() if len(turns) > 1 else ""


def describe_car(brand: str, car_type: str, rng: np.random.Generator) -> str:
    """``"a 2024 Toyota Camry sedan"``-style phrase, naming a catalogue model when one fits."""
    year = int(rng.integers(2022, 2025))
    models = [c["model"] for c in car_catalogue() if c["brand"] == brand and c["type"] == car_type]
    model = f" {models[int(rng.integers(len(models)))]}" if models else ""
    if car_type in ("luxury", "electric"):  # adjective types read "a 2023 luxury Lexus ES"
        return f"a {year} {car_type} {brand}{model}"
    if model and named_type(model) == car_type:  # "Mustang Convertible" already says it
        return f"a {year} {brand}{model}"
    return f"a {year} {brand}{model} {car_type}"


def with_features(features: list[str]) -> str:
    if not features:
        return ""
    return " with " + join_words([feature_phrase(f) for f in features])


class _Episode:
    """Per-episode memory of a seller (reset when the env starts a new episode)."""

    def __init__(self) -> None:
        self.phase = "start"
        self.brand: str | None = None
        self.type: str | None = None
        self.features: list[str] = []
        self.budget: int | None = None
        self.price: int | None = None
        self.counters: list[int] = []
        self.questions = 0

    def read_wishes(self, line: str) -> None:
        """Collect what the buyer said it wants (brand, type, features, a named budget)."""
        self.brand = named_brand(line) or self.brand
        self.type = named_type(line) or self.type
        present, _ = named_features(line)
        self.features += [
            f
            for f in buyer_attributes()["DEFAULT_FEATURES"]
            if f in present and f not in self.features
        ]
        prices = parse_prices(line)
        if prices:
            self.budget = prices[-1]


class Seller(BehaviourPolicy):
    """``car-seller(q_match, anchor, concession)``: the default behaviour policy.

    The defaults are calibrated for the paper's success rate of 0.53 (Table 1): on the first
    19,000 episodes (seeds from 1,000,000) they give success 0.526, mean return 0.460, mean
    length 7.5 seller lines (docs/tasks.md §9 expects a mean of about 0.45-0.50).
    """

    policy_name = "car-seller"

    def __init__(self, q_match: float = 0.9, anchor: float = 1.8, concession: float = 0.3):
        for name, value in (("q_match", q_match), ("concession", concession)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if anchor <= 0:
            raise ValueError(f"anchor must be positive, got {anchor}")
        super().__init__(q_match=q_match, anchor=anchor, concession=concession)
        self.q_match, self.anchor, self.concession = q_match, anchor, concession
        self._ep = _Episode()

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        if info["seller_turns"] == 0:
            self._ep = _Episode()
        ep = self._ep
        line = last_buyer_line(info)
        if ep.phase == "start":
            if rng.random() < self.q_match:
                ep.phase = "asked"
                return _pick(rng, _GREETINGS)
            return self._propose(rng)
        if ep.phase == "asked":
            ep.read_wishes(line)
            return self._propose(rng)
        return self._negotiate(line, rng)

    def _follows(self, rng: np.random.Generator) -> bool:
        """Whether the next part of the offer follows the buyer's stated wish."""
        return bool(rng.random() < self.q_match)

    def _propose(self, rng: np.random.Generator) -> str:
        ep, a = self._ep, buyer_attributes()
        brands = [bare_brand(b) for b in a["DEFAULT_BRANDS"]]
        brand = (
            ep.brand if ep.brand and self._follows(rng) else brands[int(rng.integers(len(brands)))]
        )
        types = a["DEFAULT_TYPES"]
        car_type = (
            ep.type if ep.type and self._follows(rng) else types[int(rng.integers(len(types)))]
        )
        all_features = a["DEFAULT_FEATURES"]
        if ep.features:
            chosen = [
                f if self._follows(rng) else all_features[int(rng.integers(len(all_features)))]
                for f in ep.features
            ]
        else:
            n = int(rng.integers(1, 4))
            chosen = [all_features[i] for i in rng.choice(len(all_features), n, replace=False)]
        features = [f for f in all_features if f in chosen]
        base = ep.budget if ep.budget is not None else LIST_PRICE[car_type]
        ep.price = round100(self.anchor * base)
        ep.phase = "negotiating"
        car = describe_car(brand, car_type, rng)
        return _pick(
            rng, _PROPOSALS, car=car, extras=with_features(features), price=money(ep.price)
        )

    def _negotiate(self, line: str, rng: np.random.Generator) -> str:
        ep = self._ep
        assert ep.price is not None
        prices = parse_prices(line)
        if not prices:
            return _pick(rng, _RESTATE, price=money(ep.price))
        counter = prices[-1]
        if ep.price - counter < AGREE_GAP * ep.price:
            return _pick(rng, _AGREEMENTS, price=money(counter))
        ep.price = max(counter, round100(ep.price - self.concession * (ep.price - counter)))
        return _pick(rng, _CONCESSIONS, price=money(ep.price))

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        return {"persona": info["persona"]}


class ExpertSeller(BehaviourPolicy):
    """``car-seller-expert(questions)``: the best scripted seller (see the module docstring).

    The plan, in seller lines: ask for wants and budget. A buyer that names its budget has told
    everything: offer the matching car at the budget (then P = budget) and hold that price while
    the counters rise (0.85, 0.90, 0.95 of P) until the buyer accepts it. The others tell one
    wish per question: after ``questions`` questions, offer a fully equipped car of the stated
    brand (and type, if told) far above any budget, so that the first counter ``c1 = 0.85 P``
    reveals the reservation price P; hold P until the counters reach it. A buyer that hides its
    budget may walk out at the 6th line, so by the 5th line the seller asks at most what the
    buyer's next counter would be (a sure sale) and from the 6th agrees to the latest counter.
    """

    policy_name = "car-seller-expert"

    def __init__(self, questions: int = 1):
        if questions < 1:
            raise ValueError(f"questions must be >= 1, got {questions}")
        super().__init__(questions=questions)
        self.questions = questions
        self._ep = _Episode()

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        turn = info["seller_turns"] + 1  # the seller line about to be said
        if turn == 1:
            self._ep = _Episode()
        ep = self._ep
        line = last_buyer_line(info)
        if ep.phase == "start":
            ep.phase, ep.questions = "asked", 1
            return _pick(rng, _GREETINGS)
        if ep.phase == "asked":
            ep.read_wishes(line)
            if ep.budget is None and ep.questions < self.questions:
                ep.questions += 1
                return _pick(rng, _ASK_MORE)
            return self._propose(rng)
        prices = parse_prices(line)
        if prices:
            ep.counters.append(prices[-1])
        return self._negotiate(turn, rng)

    def _propose(self, rng: np.random.Generator) -> str:
        ep, a = self._ep, buyer_attributes()
        brands = [bare_brand(b) for b in a["DEFAULT_BRANDS"]]
        brand = ep.brand or brands[int(rng.integers(len(brands)))]
        car_type = ep.type or a["DEFAULT_TYPES"][int(rng.integers(len(a["DEFAULT_TYPES"])))]
        features = list(a["DEFAULT_FEATURES"])  # a fully equipped car confirms every wish
        ep.price = ep.budget if ep.budget is not None else 2 * max(a["DEFAULT_BUDGETS"])
        ep.phase = "negotiating"
        car = describe_car(brand, car_type, rng)
        return _pick(
            rng, _PROPOSALS, car=car, extras=with_features(features), price=money(ep.price)
        )

    def _negotiate(self, turn: int, rng: np.random.Generator) -> str:
        ep = self._ep
        assert ep.price is not None
        if not ep.counters:
            return _pick(rng, _RESTATE, price=money(ep.price))
        if ep.budget is None and len(ep.counters) == 1:
            # c1 = floor100(0.85 P), so the smallest multiple of 100 >= c1 / 0.85 is at most P.
            ep.price = int(math.ceil(ep.counters[0] / 0.85 / 100 - 1e-9)) * 100
        if ep.budget is None:
            shortest = min(PATIENCE.values())
            sure = counter_price(ep.price, len(ep.counters) + 1)  # accepted now, never above P
            if turn >= shortest:
                return _pick(rng, _AGREEMENTS, price=money(ep.counters[-1]))
            if turn == shortest - 1 and sure < ep.price:
                return _pick(rng, _CONCESSIONS, price=money(sure))
        return _pick(rng, _HOLDS, price=money(ep.price))

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        return {"persona": info["persona"]}
