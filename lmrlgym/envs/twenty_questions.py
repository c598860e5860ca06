"""Twenty Questions: find the hidden object with yes/no questions (``TwentyQuestions-v0``).

Description
-----------
The env thinks of one of 158 everyday objects (17 categories: sports equipment, animals, fruits,
vehicles, ...). The agent asks yes/no questions and must name the object within 20 questions.
Tests strategic questioning under partial observability, in natural language (docs/tasks.md §7).

Observation
-----------
The whole transcript. The first env text is ``Questions:\\n``; every answer is ``Yes.\\n``,
``No.\\n`` or ``I don't know.\\n``::

    Questions:
    Is it an animal?
    No.
    Is it used in sports?
    Yes.
    Is it a basketball?
    Yes.

Action
------
One question, any text; nothing is illegal. Questions are read by the rules below (the oracle).

- A guess is ``<prefix> [article] <object name>`` after normalisation (lower case, accents and
  punctuation removed). Prefixes: "is it", "is this", "is that", "is the object", "is your
  object", "is the thing", "are they", "are these", "could it be", "it is", "my guess is",
  "i guess", or none (a bare name); articles: a, an, the, some. The name must be the whole rest
  of the question and may be any variant of any object, singular or plural ("is it a computer
  monitor" names Monitor). The hidden object: ``Yes.``; another object: ``No.``. An unknown noun
  ("is it a zebra?") is no guess.
- Otherwise the oracle looks for attribute phrases (several per attribute: "alive", "a living
  thing", "living") in the knowledge base ``lmrlgym/envs/data/twenty_questions_kb.json``. Exactly
  one attribute found: ``Yes.``/``No.`` from the KB (a ``not`` right before the phrase, or an
  opposite phrasing such as "small" for "bigger than a breadbox", flips it). No attribute, several
  ("is it a fruit or a vegetable?") or an open question ("what color is it?"): ``I don't know.``

Before parsing, an action is cut to its first 1,000 characters and lone surrogates become U+FFFD
(the stored action too), so the transcript holds at most 20 questions of 1,001 characters.

Rewards
-------
-1 per question, except 0 for the correct guess. Solving on question k gives -(k - 1); failing
gives -20. Return range [-20, 0].

Episode End
-----------
Correct guess: ``terminated``. The 20th question without one: ``truncated``.

Arguments
---------
``oracle``: ``"kb"`` (default; ``"rules"`` is a synonym), a chat partner object with
``complete(messages) -> str`` (``lmrlgym.partners.ChatPartner``), or a partner spec string for
``lmrlgym.partners.make_partner`` (``"openai:<base_url>/<model>"``, ``"hf:<path>"``). An LM oracle
gets the prompt ``Answer truthfully with yes or no.\\nObject: <names>\\nQuestion: <q>\\nAnswer:``;
a reply starting with "yes" gives ``Yes.``, "no" ``No.``, anything else ``I don't know.``.
Guesses are still judged by the rule above. The env is then nondeterministic unless the partner
says it is deterministic (``partner.deterministic``).
Reset options: ``{"item": "<name>"}`` (any variant, case-insensitive, singular or plural) or
``{"index": i}`` (0-157, file order); default uniform over the 158 objects.
Extra info keys: ``item`` (canonical name), ``is_guess``, ``answer_source`` (``kb``, ``guess``,
``unknown``, ``lm``; None after reset).

Differences from LMRL-Gym
-------------------------
1. A hand-written knowledge base replaces the fine-tuned FLAN-T5-XL oracle (the checkpoint cannot
   be downloaded; a KB is deterministic and testable). Its conventions (tomato is a vegetable,
   bananas grow on trees, "football" is the American one, a scooter is a kick scooter, ...) are
   listed in the KB's ``conventions`` block.
2. Unmappable questions get ``I don't know.``; the original forced ``Yes.``/``No.`` (unclear ->
   ``No.``): a confident wrong answer is worse than an honest one.
3. Guesses are detected by templates and name matching, not NLTK part-of-speech tags (no tagger
   download, no dependence on a tagger version).
4. KB categories follow common sense rather than the file's grouping (toothbrush, toothpaste and
   key are not office supplies).

References
----------
Abdulhai et al., "LMRL Gym: Benchmarks for Multi-Turn Reinforcement Learning with Language
Models" (2023); original code ``llm_rl_scripts/twenty_questions/env`` (MIT). Object list:
``DEFAULT_OBJECT_DICT`` of the original ``data.py``.

Version History
---------------
v0: initial release (docs/tasks.md §7).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources
from typing import Any, NamedTuple

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.envs import qa

MAX_QUESTIONS = 20
FIRST_TEXT = "Questions:\n"
YES, NO, UNKNOWN = "Yes.\n", "No.\n", "I don't know.\n"
KB_FILE = "data/twenty_questions_kb.json"
GUESS_PREFIXES = (
    "is it", "is this", "is that", "is the object", "is your object", "is the thing",
    "are they", "are these", "could it be", "it is", "my guess is", "i guess", "",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Attribute:
    """A yes/no property, with the canonical question and the phrases that name it."""

    key: str
    question: str
    core: bool  # one of the general attributes docs/tasks.md §7 lists (the others are details)
    phrases: tuple[str, ...]  # a leading "!" marks an opposite phrasing ("small")


@dataclasses.dataclass(frozen=True)
class Item:
    """One secret object: canonical name, accepted variants, the file's category, its Yes set."""

    index: int
    name: str
    names: tuple[str, ...]
    category: str
    yes: frozenset[str]


@dataclasses.dataclass(frozen=True)
class KnowledgeBase:
    attributes: tuple[Attribute, ...]
    items: tuple[Item, ...]
    conventions: dict[str, str]

    @functools.cached_property
    def attribute(self) -> dict[str, Attribute]:
        return {a.key: a for a in self.attributes}

    def answer(self, index: int, key: str) -> bool:
        """The KB's yes/no for object ``index`` and attribute ``key``."""
        return key in self.items[index].yes


@functools.lru_cache(maxsize=1)
def load_kb() -> KnowledgeBase:
    """The shipped knowledge base, validated (a malformed file raises ``ValueError``)."""
    raw = json.loads(resources.files("lmrlgym.envs").joinpath(KB_FILE).read_text("utf-8"))
    return parse_kb(raw)


def parse_kb(raw: dict[str, Any]) -> KnowledgeBase:
    """Build and check a knowledge base from its JSON form; errors name the bad entry."""
    where = "twenty_questions_kb.json"
    attributes = []
    for i, a in enumerate(raw.get("attributes", [])):
        if not (isinstance(a.get("key"), str) and isinstance(a.get("question"), str)):
            raise ValueError(f"{where}: attributes[{i}] needs a str key and question")
        phrases = a.get("phrases")
        if not phrases or not all(isinstance(p, str) and p.strip("!") for p in phrases):
            raise ValueError(f"{where}: attribute {a['key']!r} needs non-empty str phrases")
        attributes.append(Attribute(a["key"], a["question"], bool(a.get("core")), tuple(phrases)))
    keys = {a.key for a in attributes}
    if len(keys) != len(attributes):
        raise ValueError(f"{where}: duplicate attribute keys")
    items = []
    for i, o in enumerate(raw.get("objects", [])):
        if o.get("index") != i or not o.get("names") or o.get("name") != o["names"][0]:
            raise ValueError(f"{where}: objects[{i}] needs index {i} and name == names[0]")
        unknown = set(o.get("yes", [])) - keys
        if unknown:
            raise ValueError(f"{where}: object {o['name']!r} has unknown attributes {unknown}")
        items.append(Item(i, o["name"], tuple(o["names"]), o["category"], frozenset(o["yes"])))
    return KnowledgeBase(tuple(attributes), tuple(items), dict(raw.get("conventions", {})))


class Reading(NamedTuple):
    """What the oracle made of a question."""

    kind: str  # "guess", "attribute" or "unknown"
    item: int | None = None  # guessed object index
    attribute: str | None = None
    flipped: bool = False  # the question asks the opposite of the attribute


@functools.lru_cache(maxsize=1)
def _parser() -> tuple[qa.PhraseMatcher, dict[str, str]]:
    kb = load_kb()
    phrases: dict[str, tuple[str, bool]] = {}
    for a in kb.attributes:
        for p in a.phrases:
            phrases[p.lstrip("!")] = (a.key, p.startswith("!"))
    names = qa.name_table({str(it.index): it.names for it in kb.items})
    return qa.PhraseMatcher(phrases), names


def read_question(question: str) -> Reading:
    """Map a question to a guess, one attribute (maybe flipped), or nothing (pure function)."""
    norm = qa.normalize(question)
    matcher, names = _parser()
    guessed = qa.match_guess(norm, GUESS_PREFIXES, names)
    if guessed is not None:
        return Reading("guess", item=int(guessed))
    if not norm or qa.is_wh_question(norm):
        return Reading("unknown")  # an open question has no yes/no answer
    found = {(m.label[0], m.label[1] != m.negated) for m in matcher.find(norm)}
    if len(found) != 1:
        return Reading("unknown")
    ((key, flipped),) = found
    return Reading("attribute", attribute=key, flipped=flipped)


def kb_answer(question: str, index: int) -> tuple[str, str]:
    """The scripted oracle: ``(answer text, answer source)`` for object ``index``."""
    reading = read_question(question)
    if reading.kind == "guess":
        return (YES if reading.item == index else NO), "guess"
    if reading.kind == "attribute":
        assert reading.attribute is not None
        value = load_kb().answer(index, reading.attribute) != reading.flipped
        return (YES if value else NO), "kb"
    return UNKNOWN, "unknown"


def lm_prompt(item: Item, question: str) -> list[dict[str, str]]:
    """The LM oracle's prompt (docs/tasks.md §7), as one user message."""
    text = (
        "Answer truthfully with yes or no.\n"
        f"Object: {', '.join(item.names)}\nQuestion: {question}\nAnswer:"
    )
    return [{"role": "user", "content": text}]


def parse_lm_answer(reply: str) -> str:
    """``Yes.``/``No.`` when the reply starts with yes/no, else ``I don't know.``."""
    words = qa.normalize(qa.first_line(reply)).split()
    if words and words[0] == "yes":
        return YES
    if words and words[0] == "no":
        return NO
    return UNKNOWN


def find_item(name: str) -> int:
    """Index of the object named ``name`` (any variant, case-insensitive, singular or plural)."""
    _, names = _parser()
    found = names.get(qa.normalize(name))
    if found is None:
        raise ValueError(f"unknown Twenty Questions object {name!r}")
    return int(found)


class TwentyQuestionsEnv(TextEnv):
    """Twenty Questions with a knowledge-base oracle (see the module docstring)."""

    return_range = (-float(MAX_QUESTIONS), 0.0)
    play_help = (
        "I am thinking of an everyday object (one of 158: animals, fruits, vehicles, tools,\n"
        "sports equipment, ...). Ask yes/no questions: each answer is Yes., No. or I don't know.\n"
        "(the answer to open questions such as \"what color is it?\"). Name the object to win,\n"
        "within 20 questions.\n"
        "Action: one question. Examples: Is it alive?  Is it bigger than a breadbox?\n"
        "Is it a basketball?\n"
        "Rewards: -1 per question, 0 for the question that names the object."
    )
    play_reveal = ("item",)

    def __init__(self, oracle: Any = "kb", render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.kb = load_kb()
        self.partner = qa.resolve_partner(oracle, "oracle")
        if self.partner is not None:
            self.deterministic = bool(getattr(self.partner, "deterministic", False))
        self._item = 0
        self._asked = 0

    @property
    def item(self) -> Item:
        """The hidden object (privileged state, for scripted policies and tests)."""
        return self.kb.items[self._item]

    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        self._item = self._choose_item(rng, options)
        self._asked = 0
        return FIRST_TEXT, {"item": self.item.name, "is_guess": False, "answer_source": None}

    def _choose_item(self, rng: np.random.Generator, options: dict[str, Any]) -> int:
        return qa.choose_index(options, "item", len(self.kb.items), find_item, rng)

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self._asked += 1
        question = action.strip()
        reading = read_question(question)
        if reading.kind == "guess" or self.partner is None:
            answer, source = kb_answer(question, self._item)
        else:
            reply = self.partner.complete(lm_prompt(self.item, question))  # type: ignore[attr-defined]
            answer, source = parse_lm_answer(reply), "lm"
        solved = reading.kind == "guess" and reading.item == self._item
        truncated = not solved and self._asked >= MAX_QUESTIONS
        info = {
            "item": self.item.name,
            "is_guess": reading.kind == "guess",
            "answer_source": source,
            "success": solved,
            "illegal": False,
        }
        return answer, (0.0 if solved else -1.0), solved, truncated, info

    @classmethod
    def evaluation_resets(cls, n_episodes: int, **env_kwargs: Any) -> list[tuple[int, dict]]:
        """docs/tasks.md §7: one episode per object, ``index = seed % 158``, seeds ``0 .. n-1``."""
        n_items = len(load_kb().items)
        return [(i, {"index": i % n_items}) for i in range(n_episodes)]
