"""Question interpretation shared by the question-asking tasks (Twenty Questions, Guess My City).

The scripted oracles answer from hand-written knowledge bases. This module turns a free-text
question into something a knowledge base can answer, with no model and no network:

- :func:`normalize`: lower case, accents removed, punctuation to spaces, whitespace collapsed.
- :class:`PhraseMatcher`: finds known phrases (attribute or field synonyms) in a normalised
  question, the longest match winning where phrases overlap, and reports a ``not`` right before
  a phrase, so "is it not alive" flips the answer to "is it alive".
- :func:`match_guess`: recognises a guess, ``<prefix> [article] <name>``, against a table of
  names with their singular and plural forms.
- :func:`mentions`: whole-word search for names (guess detection and the no-leak rule of
  Guess My City).

Everything here is a pure function of its inputs, so answers are reproducible and testable.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

T = TypeVar("T")

#: Words that flip the meaning of the phrase right after them ("is it not alive").
NEGATORS = frozenset({"not", "no", "non", "never"})
#: Articles allowed between a guess prefix and the guessed name.
ARTICLES = ("a", "an", "the", "some")
#: Question openers that ask for information rather than yes or no.
WH_WORDS = frozenset({"what", "which", "where", "how", "why", "who", "whom", "whose", "when"})


def normalize(text: str) -> str:
    """Lower case, accents removed, everything but letters and digits to spaces, collapsed."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    # Apostrophes join words ("don't", "xi'an") instead of splitting them.
    plain = re.sub(r"['\u2019`]", "", plain)
    return " ".join(re.sub(r"[^a-z0-9]+", " ", plain).split())


def is_wh_question(norm: str) -> bool:
    """True when a normalised question opens with what/which/where/how/... (an open question)."""
    words = norm.split()
    return bool(words) and words[0] in WH_WORDS


def plural_forms(name: str) -> set[str]:
    """A normalised noun phrase with the singular and plural forms of its last word.

    English plurals are irregular, so this covers the regular cases of the names we ship:
    ``ball/balls``, ``peach/peaches``, ``tomato/tomatoes``, ``strawberry/strawberries``,
    ``knife/knives``, and back from plural to singular.
    """
    norm = normalize(name)
    if not norm:
        return set()
    head, _, last = norm.rpartition(" ")
    prefix = f"{head} " if head else ""
    forms = {last}
    if last.endswith("ies") and len(last) > 4:
        forms.add(last[:-3] + "y")
    elif last.endswith("ves"):
        forms.update({last[:-3] + "f", last[:-3] + "fe"})
    elif last.endswith(("ches", "shes", "xes", "sses", "oes")):
        forms.update({last[:-2], last[:-1]})  # peaches -> peach, shoes -> shoe
    elif last.endswith("s") and not last.endswith("ss") and len(last) > 3:
        forms.add(last[:-1])
    if last.endswith("y") and last[-2:-1] not in "aeiou":
        forms.add(last[:-1] + "ies")
    elif last.endswith(("fe", "f")) and not last.endswith("ff"):
        forms.add((last[:-2] if last.endswith("fe") else last[:-1]) + "ves")
    if last.endswith(("ch", "sh", "x", "ss", "o")):
        forms.add(last + "es")
    if not last.endswith("s"):
        forms.add(last + "s")
    return {prefix + f for f in forms}


class PhraseMatch(NamedTuple):
    """One phrase found in a question: its label, token span and whether it is negated."""

    label: Any
    start: int
    end: int
    negated: bool


class PhraseMatcher(Generic[T]):
    """Finds labelled phrases in normalised text, longest match first.

    A question word matches a phrase word when it is the same word or its regular plural
    (``wheel`` matches "wheels"), so phrase tables need not list every plural. Where two phrases
    overlap, the longer one wins ("garden tool" over "tool"), then the earlier one.
    """

    def __init__(self, phrases: Mapping[str, T]):
        self._by_first: dict[str, list[tuple[tuple[str, ...], T]]] = {}
        for phrase, label in phrases.items():
            words = tuple(normalize(phrase).split())
            if not words:
                raise ValueError(f"empty phrase for {label!r}")
            self._by_first.setdefault(words[0], []).append((words, label))
        for entries in self._by_first.values():
            entries.sort(key=lambda e: -len(e[0]))

    def find(self, norm: str) -> list[PhraseMatch]:
        """All non-overlapping matches in a normalised text, in text order."""
        words = norm.split()
        candidates: list[tuple[int, int, T]] = []
        for i, w in enumerate(words):
            for key in _singulars(w):
                for phrase, label in self._by_first.get(key, ()):
                    if _matches_at(words, i, phrase):
                        candidates.append((i, i + len(phrase), label))
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
        taken = [False] * len(words)
        chosen: list[PhraseMatch] = []
        for start, end, label in candidates:
            if any(taken[start:end]):
                continue
            taken[start:end] = [True] * (end - start)
            negated = start > 0 and words[start - 1] in NEGATORS
            chosen.append(PhraseMatch(label, start, end, negated))
        return sorted(chosen, key=lambda m: m.start)


def _singulars(word: str) -> tuple[str, ...]:
    # The phrase words a question word can stand for: itself, or itself without a plural ending.
    out = [word]
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and len(word) > 2:
        out.append(word[:-1])
    return tuple(out)


def _matches_at(words: Sequence[str], i: int, phrase: Sequence[str]) -> bool:
    if i + len(phrase) > len(words):
        return False
    return all(w == p or w in (p + "s", p + "es") for w, p in zip(words[i : i + len(phrase)], phrase, strict=True))


def name_table(names: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """``{item: [names]}`` -> ``{normalised form: item}`` over singular and plural forms.

    Raises ``ValueError`` when one form would name two different items, so guesses stay
    unambiguous.
    """
    table: dict[str, str] = {}
    for item, variants in names.items():
        for variant in variants:
            for form in plural_forms(variant):
                if table.setdefault(form, item) != item:
                    raise ValueError(
                        f"name {form!r} is ambiguous: it names both {table[form]!r} and {item!r}"
                    )
    return table


def match_guess(norm: str, prefixes: Sequence[str], names: Mapping[str, str]) -> str | None:
    """The item named by a guess-shaped question, else None.

    A guess is ``<prefix> [article] <name>`` where the name is the whole rest of the question
    (so "is it a computer monitor" names Monitor, and "is it bigger than a car" is no guess).
    ``prefixes`` are normalised; the empty prefix allows a bare name.
    """
    for prefix in sorted(prefixes, key=len, reverse=True):
        if prefix and not (norm == prefix or norm.startswith(prefix + " ")):
            continue
        rest = norm[len(prefix) :].strip()
        for article in ARTICLES:
            if rest.startswith(article + " ") and rest[len(article) + 1 :] in names:
                return names[rest[len(article) + 1 :]]
        if rest in names:
            return names[rest]
    return None


def mentions(norm: str, names: Iterable[str]) -> bool:
    """Whether a normalised text contains any of the normalised ``names`` as whole words."""
    padded = f" {norm} "
    return any(f" {n} " in padded for n in names if n)


def first_line(text: str) -> str:
    """The first non-empty line of a partner's reply, stripped ("" if there is none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def resolve_partner(oracle: object, role: str) -> object | None:
    """The LM partner an env should consult, or None for the built-in knowledge-base oracle.

    ``oracle`` is ``"kb"`` (or its synonym ``"rules"``), an object with a
    ``complete(messages) -> str`` method (see ``lmrlgym.partners.ChatPartner``), or a partner spec
    string such as ``"openai:http://127.0.0.1:8000/v1/my-model"`` or ``"hf:/path/to/model"``.
    """
    if isinstance(oracle, str):
        if oracle in ("kb", "rules"):
            return None
        from lmrlgym.partners import make_partner  # noqa: PLC0415  (heavy, optional imports)

        return make_partner(oracle)
    if callable(getattr(oracle, "complete", None)):
        return oracle
    raise TypeError(
        f"{role} must be 'kb', a partner spec string or an object with a complete(messages) "
        f"method, got {type(oracle).__name__}"
    )


def choose_index(
    options: Mapping[str, Any], name_key: str, n: int, find: Any, rng: Any
) -> int:
    """The secret's index from reset options: ``{name_key: name}`` (resolved by ``find``) or
    ``{"index": i}``; with neither, uniform from ``rng``. Bad options raise ``ValueError``."""
    unknown = set(options) - {name_key, "index"}
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; use '{name_key}' or 'index'")
    if name_key in options and "index" in options:
        raise ValueError(f"pass either reset option '{name_key}' or 'index', not both")
    if name_key in options:
        return int(find(str(options[name_key])))
    if "index" in options:
        index = options["index"]
        if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise ValueError(f"reset option index must be 0..{n - 1}, got {index!r}")
        return int(index)
    return int(rng.integers(n))
