"""Behaviour policy for Guess My City (docs/tasks.md §8): ``guesscity-asker(p_info, guess_turn, p_early)``.

The asker keeps the cities consistent with every answer so far (it asks the knowledge-base
oracle what each candidate would have answered, so its bookkeeping is exact). It asks open or
yes/no questions from a varied bank: with probability ``p_info`` the most informative one (the
question whose answers split the candidates into the most even groups, by entropy), else a random
one. Some bank questions cannot be mapped by the oracle and get ``I don't know.``.

It guesses a random remaining candidate ("Is the city you are from <city>?") at question
``guess_turn`` (default 20, like the original's forced final guess), or earlier with probability
``p_early`` per question once a single candidate remains; a wrong guess removes that candidate.

``guesscity-asker(p_info=1, p_early=1)`` is the project's best scripted asker
(``OPTIMAL_POLICY``). The defaults are calibrated to the paper's dataset statistics (success
0.53, mean return -18.8; see ``DEFAULTS``).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import numpy as np

from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.envs.guess_city import _LANGUAGES, MAX_QUESTIONS, kb_answer, load_kb

# Calibrated against the paper (success 0.53, mean return -18.8): the first 10,000 episodes
# (seeds from 1,000,000) give success 0.530, mean return -18.87, mean length 19.4.
DEFAULTS = {"p_info": 0.003, "guess_turn": 20, "p_early": 0.03}

# Questions asked at random: coarse facts shared by many cities (continent, region, hemisphere,
# capital, size, country), open or yes/no.
_COMMON = (
    "Which continent is your city on?", "What continent is it in?",
    "What part of the world is it in?", "Where is your city?", "What country is it in?",
    "Is it near the equator?", "How many people live there?", "How big is the city?",
    "Is it the capital of its country?", "Is it a capital city?",
    "Is it the largest city in its country?", "Is it the biggest city in the country?",
    "Is it high above sea level?", "Is it in the mountains?",
)
# Questions whose answers nearly name the city; only asked as the most informative question.
_SPECIFIC = (
    "Is it on the coast?", "Is your city by the sea?", "Is it a port city?", "Is it on a lake?",
    "Which sea or ocean is it on?", "Is there a river in your city?",
    "Which river runs through it?", "What language do most people speak there?",
    "What languages are spoken there?", "What is the climate like?", "What is the weather like?",
    "Is it hot there?", "Is it cold in winter?", "Does it snow there?",
    "Is the climate tropical?", "Is it in a desert?", "What food is it known for?",
    "What is a famous local dish?", "What landmark is it famous for?", "What is it known for?",
    "Tell me an interesting fact about it.", "Can you give me a hint?",
)
_UNMAPPABLE = (
    "Have you been there?", "Would I like it?", "Is it old?", "Is it expensive to live there?",
    "Is it safe?", "Is it a nice city?", "Is it in Asia or Europe?", "Do you like it?",
    "Is it a good place for a holiday?", "Is the nightlife good?",
    "Would my parents know it?", "Is it modern?", "Is it clean?", "Is it friendly?",
    "Is it a rich city?", "Is it on my bucket list?",
)


@functools.lru_cache(maxsize=1)
def question_bank() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(random pool, full bank).

    The random pool holds coarse questions (continent, region, hemisphere, capital, size and
    "is your city in <country>?") and a few the oracle cannot map; the full bank adds questions
    whose answers nearly name the city (coast, river, language, climate, food, landmark, ...).
    Random questions come from the pool, informative ones from the full bank: a random asker
    that also asked about food would identify almost every city, far above the paper's 0.53.
    """
    kb = load_kb()
    pool = list(_COMMON)
    for continent in ("Asia", "Europe", "Africa", "North America", "South America", "Oceania"):
        pool.append(f"Is it in {continent}?")
    for region in ("East Asia", "Southeast Asia", "South Asia", "the Middle East", "Eastern Europe",
                   "Western Europe", "Latin America", "North Africa"):
        pool.append(f"Is it in {region}?")
    pool += ["Is it in the northern hemisphere?", "Is it in the southern hemisphere?",
             "Is it in the eastern hemisphere?", "Is it in the western hemisphere?"]
    for n in (2, 3, 5, 8):
        pool.append(f"Does it have more than {n} million people?")
    for country in sorted(kb.countries):
        pool.append(f"Is your city in {country}?")
    # Every third country without a listed city: plausible questions that always get "No.".
    for country in kb.other_countries[::3]:
        pool.append(f"Is your city in {country}?")
    pool += _UNMAPPABLE
    specific = list(_SPECIFIC)
    for word in sorted({w for w in _LANGUAGES if w not in ("bahasa", "bangla", "farsi", "tagalog")}):
        specific.append(f"Do people there speak {word.capitalize()}?")
    return tuple(pool), tuple(pool) + tuple(specific)


@functools.lru_cache(maxsize=1)
def answer_table() -> dict[str, tuple[str, ...]]:
    """Each bank question's answer for every city."""
    n = len(load_kb().cities)
    return {q: tuple(kb_answer(q, i)[0] for i in range(n)) for q in question_bank()[1]}


def guess_question(name: str) -> str:
    return f"Is the city you are from {name}?"


def most_informative(candidates: list[int], questions: tuple[str, ...]) -> str:
    """The question whose answers over ``candidates`` have the highest entropy (first on ties)."""
    table = answer_table()
    best, best_h = questions[0], -1.0
    for q in questions:
        counts = Counter(table[q][c] for c in candidates)
        h = -sum(k / len(candidates) * math.log(k / len(candidates)) for k in counts.values())
        if h > best_h + 1e-12:
            best, best_h = q, h
    return best


class Asker(BehaviourPolicy):
    """``guesscity-asker(p_info, guess_turn, p_early)``: see the module docstring."""

    policy_name = "guesscity-asker"

    def __init__(
        self,
        p_info: float = DEFAULTS["p_info"],
        guess_turn: int = DEFAULTS["guess_turn"],
        p_early: float = DEFAULTS["p_early"],
    ):
        for name, p in (("p_info", p_info), ("p_early", p_early)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 1 <= guess_turn <= MAX_QUESTIONS:
            raise ValueError(f"guess_turn must be in 1..{MAX_QUESTIONS}, got {guess_turn}")
        super().__init__(p_info=p_info, guess_turn=guess_turn, p_early=p_early)
        self.p_info, self.guess_turn, self.p_early = float(p_info), int(guess_turn), float(p_early)

    def act(self, env: Any, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        candidates = self.candidates(info)
        question_no = sum(1 for t in info["turns"] if t[1]) + 1
        if question_no >= self.guess_turn or (len(candidates) == 1 and rng.random() < self.p_early):
            pick = candidates[int(rng.integers(len(candidates)))]
            return guess_question(load_kb().cities[pick].name)
        pool, bank = question_bank()
        if rng.random() < self.p_info:
            return most_informative(candidates, bank)
        return pool[int(rng.integers(len(pool)))]

    @staticmethod
    def candidates(info: dict[str, Any]) -> list[int]:
        """Cities consistent with every (question, answer) pair so far (never empty)."""
        table = answer_table()
        turns = info["turns"]
        alive = list(range(len(load_kb().cities)))
        for i in range(1, len(turns) - 1, 2):
            question, answer = turns[i][0].strip(), turns[i + 1][0]
            row = table.get(question)
            if row is None:
                alive = [c for c in alive if kb_answer(question, c)[0] == answer]
            else:
                alive = [c for c in alive if row[c] == answer]
        return alive

    def episode_meta(self, env: Any, info: dict[str, Any]) -> dict[str, Any]:
        return {"city": info["city"], "country": info["country"]}
