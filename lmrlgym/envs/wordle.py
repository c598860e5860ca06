"""Wordle: guess a hidden five-letter word in at most six attempts (``Wordle-v0``).

Description
-----------
Each guess gets one mark per letter: green (right place), yellow (in the word elsewhere) or
black (not in the word, or no copy of it left). Tests strategic information gathering under
partial observability (docs/tasks.md §4).

Observation
-----------
The whole transcript. The first env text is ``Wordle:\\n``; after a valid guess the five marks
separated by spaces (``b y b b g\\n``); after an invalid guess the empty line ``\\n``. Marks follow
the standard two-pass rule: every exact match is green; then, left to right, a letter is yellow
if the hidden word still has an unused copy of it (using it up), else black.

Action
------
Letters separated by spaces (``s o l a r\\n``). Parsing lower-cases and removes all whitespace,
so ``solar``, ``SOLAR`` and ``s o l a r`` are the same guess; five letters a-z are stored spaced
and lower-case, anything else as normalised. A guess is valid when it is five letters a-z in
the allowed-guess list; an invalid guess uses an attempt. ``env.action_set()`` holds every
allowed guess, spaced and sorted (built once per word list; not in ``info``: 431 to 12,972
words).

Before parsing, an action is cut to its first 1,000 characters and lone surrogates become U+FFFD
(the stored action too), so the transcript holds at most six actions of 1,001 characters.

Rewards
-------
-1 per valid attempt that does not solve, 0 for the solving guess, ``invalid_reward`` (default
-1) for an invalid guess. Solving on attempt k returns -(k - 1); failing returns -6 by default.

Episode End
-----------
Solved, or the sixth attempt used: ``terminated`` (Wordle has no truncation).

Arguments
---------
``answers``: ``"official_400"`` (default: the benchmark's 431-word list), ``"official"`` (the
2,315 answers), a path, or a list of words. ``guesses``: ``None`` (allowed list = answers),
``"official_guess"`` (12,972 words), a path or a list; answers are always allowed guesses.
``hidden_word``: ``"sample"`` (default: drawn at reset), ``"resample"`` (the original mechanics,
below) or a specific answer. ``invalid_reward``: reward of an invalid guess.
Reset options: ``{"word": w}`` (an answer) or ``{"index": i}`` (the i-th answer, file order).
Extra info keys: ``hidden_word``, ``valid`` (this step's guess; None at reset), ``attempts``,
``consistent`` (number of answers still consistent with the feedback), ``illegal_reason`` (after
an invalid guess: why, in words).

``hidden_word="resample"`` keeps, per letter and position, one of {ruled out, possible,
confirmed}. On a valid guess a target is drawn uniformly from the consistent answers, the
knowledge is updated against it, and each position prints ``g`` if its letter is confirmed
there, ``b`` if the letter is ruled out everywhere, else ``y`` (no duplicate counting). The guess
solves when it is the only consistent answer left. ``info["hidden_word"]`` is the last target.

Differences from LMRL-Gym
-------------------------
1. A real hidden word is fixed at reset, with correct repeated-letter feedback; the original
   redrew the target after every guess (kept as ``hidden_word="resample"``).
2. Selectable 2,315-answer and 12,972-guess lists.
3. ``invalid_reward`` is an explicit kwarg, default -1 (the original used -1 in BC evaluation and
   -10 in its RL training envs).
4. Guesses are lower-cased before validation.

References
----------
Abdulhai et al., "LMRL Gym" (2023), original code ``llm_rl_scripts/wordle/env`` (MIT); word lists
in ``lmrlgym/envs/data/wordle/``.

Version History
---------------
v0: initial release (docs/tasks.md §4).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv

WORD_LENGTH = 5
MAX_ATTEMPTS = 6
FIRST_TEXT = "Wordle:\n"
INVALID_TEXT = "\n"
BLACK, YELLOW, GREEN = 0, 1, 2
MARKS = "byg"  # indexed by BLACK, YELLOW, GREEN
_EAGER_MATRIX = 1000  # answer lists up to this size precompute all feedback codes
SOLVED_CODE = sum(GREEN * 3**i for i in range(WORD_LENGTH))
WORD_LISTS = {
    "official_400": "wordle_official_400.txt",  # 431 words: the LMRL-Gym benchmark list
    "official": "wordle_official.txt",  # 2,315 answers
    "official_guess": "wordle_official_guess.txt",  # 12,972 allowed guesses
}


# --- pure rules ------------------------------------------------------------------------------
def parse_guess(action: str) -> str:
    """Lower-case with all whitespace removed: ``'S o L a r'`` -> ``'solar'``."""
    return "".join(action.split()).lower()


def is_five_letters(word: str) -> bool:
    return len(word) == WORD_LENGTH and word.isascii() and word.isalpha()


def spaced(word: str) -> str:
    return " ".join(word)


def feedback_marks(guess: str, answer: str) -> list[int]:
    """The standard two-pass rule: greens first, then yellows left to right while copies last."""
    marks = [GREEN if g == a else BLACK for g, a in zip(guess, answer, strict=True)]
    unused: dict[str, int] = {}
    for a, m in zip(answer, marks, strict=True):
        if m != GREEN:
            unused[a] = unused.get(a, 0) + 1
    for i, g in enumerate(guess):
        if marks[i] != GREEN and unused.get(g, 0) > 0:
            marks[i] = YELLOW
            unused[g] -= 1
    return marks


def feedback_text(guess: str, answer: str) -> str:
    """``feedback_text('speed', 'abide')`` -> ``'b b y b y'`` (no newline)."""
    return " ".join(MARKS[m] for m in feedback_marks(guess, answer))


def marks_code(marks: Sequence[int]) -> int:
    """Marks as one base-3 number (position i has weight 3**i), so patterns fit in a uint8."""
    return sum(m * 3**i for i, m in enumerate(marks))


CODE_TEXT: tuple[str, ...] = tuple(
    " ".join(MARKS[(code // 3**i) % 3] for i in range(WORD_LENGTH)) + "\n"
    for code in range(3**WORD_LENGTH)
)


def feedback_codes(guesses: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Vectorised ``marks_code(feedback_marks(g, a))``: (G, 5) x (N, 5) letter codes -> (G, N).

    The same two-pass rule as :func:`feedback_marks`: a letter at position i is yellow when the
    copies of it outside the answer's green positions outnumber its yellows at positions < i.
    """
    g = guesses[:, None, :]  # (G, 1, 5)
    a = answers[None, :, :]  # (1, N, 5)
    green = g == a  # (G, N, 5)
    codes = np.zeros(green.shape[:2], dtype=np.int16)  # (G, N)
    yellow = np.zeros_like(green)
    for i in range(WORD_LENGTH):
        letter = g[:, :, i : i + 1]  # (G, 1, 1)
        available = ((a == letter) & ~green).sum(axis=2)  # (G, N) unused copies in the answer
        earlier = (guesses[:, None, :i] == letter) & yellow[:, :, :i]  # (G, N, i)
        yellow[:, :, i] = ~green[:, :, i] & (available > earlier.sum(axis=2))
        codes += (GREEN * green[:, :, i] + YELLOW * yellow[:, :, i]) * 3**i
    return codes.astype(np.uint8)


def letter_codes(words: Sequence[str]) -> np.ndarray:
    """(N, 5) uint8 array of letters as 0..25."""
    if not words:
        return np.zeros((0, WORD_LENGTH), dtype=np.uint8)
    return (np.frombuffer("".join(words).encode(), dtype=np.uint8) - ord("a")).reshape(
        len(words), WORD_LENGTH
    )


# --- vocabulary -------------------------------------------------------------------------------
def read_word_list(source: str | os.PathLike | Sequence[str], what: str) -> tuple[str, ...]:
    """A word list from a name in ``WORD_LISTS``, a path or a sequence of words (validated)."""
    if isinstance(source, (str, os.PathLike)):
        if str(source) in WORD_LISTS:
            files = resources.files("lmrlgym.envs").joinpath("data/wordle")
            text = files.joinpath(WORD_LISTS[str(source)]).read_text()
        elif os.path.exists(source):
            with open(source, encoding="utf-8") as f:
                text = f.read()
        else:
            raise ValueError(
                f"{what}={source!r} is neither a list name ({', '.join(WORD_LISTS)}) nor a file"
            )
        words = [w.strip().lower() for w in text.splitlines() if w.strip()]
    else:
        words = [str(w).strip().lower() for w in source]
    bad = [w for w in words if not is_five_letters(w)]
    if bad:
        raise ValueError(f"{what}: {len(bad)} entries are not five letters a-z, e.g. {bad[:3]}")
    if not words:
        raise ValueError(f"{what}: the word list is empty")
    return tuple(dict.fromkeys(words))  # drop repeats, keep file order (the `index` option)


@dataclasses.dataclass(eq=False)
class Vocabulary:
    """Answers (ordered), allowed guesses, and the feedback code of every answer pair."""

    answers: tuple[str, ...]
    allowed: frozenset[str]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.answers)}
        self.letters = letter_codes(self.answers)  # (N, 5)
        self._rows: dict[str, np.ndarray] = {}

    @functools.cached_property
    def guess_actions(self) -> tuple[str, ...]:
        """Every allowed guess as the env stores it (``"s o l a r"``), sorted; built once."""
        return tuple(spaced(w) for w in sorted(self.allowed))

    @functools.cached_property
    def matrix(self) -> np.ndarray:
        """(N, N) uint8: ``matrix[i, j]`` = code of guessing answer i when answer j is hidden."""
        return feedback_codes(self.letters, self.letters)

    def row(self, guess: str) -> np.ndarray:
        """(N,) feedback codes of ``guess`` against every answer."""
        i = self.index.get(guess)
        # Small lists build the whole matrix at once (0.1 s for 431 words); large ones (2,315
        # answers: about a second) compute rows on demand unless a policy built the matrix.
        if i is not None and (len(self.answers) <= _EAGER_MATRIX or "matrix" in self.__dict__):
            return self.matrix[i]
        row = self._rows.get(guess)
        if row is None:
            row = self._rows[guess] = feedback_codes(letter_codes([guess]), self.letters)[0]
        return row


def _list_key(source: Any) -> Any:
    return tuple(source) if isinstance(source, (list, tuple)) else source


@functools.lru_cache(maxsize=8)
def _cached_vocabulary(answers: Any, guesses: Any) -> Vocabulary:
    answer_words = read_word_list(answers, "answers")
    allowed = set(answer_words)
    if guesses is not None:
        allowed.update(read_word_list(guesses, "guesses"))
    return Vocabulary(answer_words, frozenset(allowed))


def load_vocabulary(
    answers: str | os.PathLike | Sequence[str] = "official_400",
    guesses: str | os.PathLike | Sequence[str] | None = None,
) -> Vocabulary:
    """The vocabulary for the env's kwargs, built once per process per list pair."""
    return _cached_vocabulary(_list_key(answers), _list_key(guesses))


# --- the original's resampling mechanics ------------------------------------------------------
class Knowledge:
    """Per letter and position: ruled out / possible / confirmed (``hidden_word="resample"``)."""

    def __init__(self) -> None:
        self.confirmed = np.full(WORD_LENGTH, -1, dtype=np.int16)  # letter confirmed at i, or -1
        self.ruled_out = np.zeros((26, WORD_LENGTH), dtype=bool)

    def consistent(self, letters: np.ndarray) -> np.ndarray:
        """(N,) bool: which words of ``letters`` (N, 5) fit what is known."""
        ok = np.ones(len(letters), dtype=bool)
        for i in range(WORD_LENGTH):
            if self.confirmed[i] >= 0:
                ok &= letters[:, i] == self.confirmed[i]
            ok &= ~self.ruled_out[letters[:, i], i]
        # Letters known to be in the word (confirmed somewhere, or ruled out somewhere but not
        # everywhere) must appear in it.
        marked = self.ruled_out.any(axis=1)
        marked[self.confirmed[self.confirmed >= 0]] = True
        required = np.flatnonzero(marked & ~self.ruled_out.all(axis=1))
        for letter in required:
            ok &= (letters == letter).any(axis=1)
        return ok

    def update(self, guess: np.ndarray, target: np.ndarray) -> None:
        for i, letter in enumerate(guess):
            if target[i] == letter:
                self.confirmed[i] = letter
            elif (target == letter).any():
                self.ruled_out[letter, i] = True
            else:
                self.ruled_out[letter, :] = True

    def marks_text(self, guess: np.ndarray) -> str:
        marks = [
            "g" if self.confirmed[i] == letter else "b" if self.ruled_out[letter].all() else "y"
            for i, letter in enumerate(guess)
        ]
        return " ".join(marks) + "\n"


# --- the env -----------------------------------------------------------------------------------
class WordleEnv(TextEnv):
    """Wordle with a fixed hidden word; see the module docstring for the card."""

    return_range = (-float(MAX_ATTEMPTS), 0.0)
    play_help = (
        "Find the hidden five-letter word in 6 guesses. Each guess is marked letter by letter:\n"
        "g = right letter, right place; y = in the word, elsewhere; b = not in the word (or no\n"
        "copy of it left). Only words in the task's list count (431 common words by default).\n"
        "Action: a five-letter word, spaced or not. Examples: slate, s l a t e\n"
        "Rewards: -1 per guess that does not solve it (an invalid word too: it uses a guess),\n"
        "0 for the solving guess."
    )
    play_reveal = ("hidden_word",)

    def __init__(
        self,
        answers: str | os.PathLike | Sequence[str] = "official_400",
        guesses: str | os.PathLike | Sequence[str] | None = None,
        hidden_word: str = "sample",
        invalid_reward: float = -1.0,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        self.vocab = load_vocabulary(answers, guesses)
        self.invalid_reward = float(invalid_reward)
        worst = MAX_ATTEMPTS * min(-1.0, self.invalid_reward)
        self.return_range = self.reward_range = (
            worst,
            (MAX_ATTEMPTS - 1) * max(0.0, invalid_reward),
        )
        self.resample = hidden_word == "resample"
        self.fixed_word: str | None = None
        if hidden_word not in ("sample", "resample"):
            self.fixed_word = self._answer(hidden_word, "hidden_word")
        self.hidden_word: str | None = None
        self.attempts = 0
        self.consistent_mask = np.ones(len(self.vocab.answers), dtype=bool)
        self._hidden_index = -1
        self._knowledge = Knowledge()
        self._rng = np.random.default_rng(0)

    def _answer(self, word: Any, what: str) -> str:
        w = str(word).strip().lower()
        if w not in self.vocab.index:
            raise ValueError(f"{what}={word!r} is not one of the {len(self.vocab.answers)} answers")
        return w

    @classmethod
    def answer_resets(cls, **env_kwargs: Any) -> list[tuple[int, dict]]:
        """The deterministic evaluation pass: one episode per answer (``index`` 0 .. N-1)."""
        vocab = load_vocabulary(
            env_kwargs.get("answers", "official_400"), env_kwargs.get("guesses")
        )
        return [(i, {"index": i}) for i in range(len(vocab.answers))]

    def action_set(self) -> tuple[str, ...]:
        """The allowed guesses, spaced (cached on the shared vocabulary, not rebuilt per call)."""
        return self.vocab.guess_actions

    def consistent_answers(self) -> list[str]:
        """The answers still consistent with the feedback so far."""
        return [self.vocab.answers[i] for i in np.flatnonzero(self.consistent_mask)]

    def _extra(self, valid: bool | None) -> dict[str, Any]:
        return {
            "hidden_word": self.hidden_word,
            "valid": valid,
            "attempts": self.attempts,
            "consistent": int(np.count_nonzero(self.consistent_mask)),
        }

    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        unknown = set(options) - {"word", "index"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; Wordle accepts word, index")
        if len(options) > 1:
            raise ValueError("reset options 'word' and 'index' are exclusive; pass one")
        if self.resample and options:
            raise ValueError("hidden_word='resample' has no fixed word; drop the reset options")
        self._rng = rng
        self.attempts = 0
        self.consistent_mask = np.ones(len(self.vocab.answers), dtype=bool)
        self._knowledge = Knowledge()
        if self.resample:
            self.hidden_word = None
        elif "word" in options:
            self.hidden_word = self._answer(options["word"], "reset option 'word'")
        elif "index" in options:
            i = options["index"]
            if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.vocab.answers):
                raise ValueError(
                    f"reset option 'index' must be an int in [0, {len(self.vocab.answers)}), "
                    f"got {i!r}"
                )
            self.hidden_word = self.vocab.answers[int(i)]
        elif self.fixed_word is not None:
            self.hidden_word = self.fixed_word
        else:
            self.hidden_word = self.vocab.answers[int(rng.integers(len(self.vocab.answers)))]
        if self.hidden_word is not None:
            self._hidden_index = self.vocab.index[self.hidden_word]
        return FIRST_TEXT, self._extra(None)

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        guess = parse_guess(action)
        five = is_five_letters(guess)
        valid = five and guess in self.vocab.allowed
        self.attempts += 1
        out_of_attempts = self.attempts >= MAX_ATTEMPTS
        if not valid:
            extra = self._extra(False)
            extra["illegal"] = True
            extra["illegal_reason"] = (
                f"{guess!r} is not one of the {len(self.vocab.allowed)} allowed words"
                if five
                else f"a guess is five letters a-z, not {guess!r}"
            )
            if five:
                extra["action"] = spaced(guess) + "\n"
            return INVALID_TEXT, self.invalid_reward, out_of_attempts, False, extra
        if self.resample:
            text, solved = self._resample_feedback(guess)
        else:
            row = self.vocab.row(guess)
            code = int(row[self._hidden_index])
            self.consistent_mask &= row == code
            text, solved = CODE_TEXT[code], code == SOLVED_CODE
        extra = self._extra(True)
        extra["action"] = spaced(guess) + "\n"
        extra["success"] = solved
        return text, 0.0 if solved else -1.0, solved or out_of_attempts, False, extra

    def _resample_feedback(self, guess: str) -> tuple[str, bool]:
        """Draw a target from the consistent answers, learn from it, print the knowledge."""
        candidates = np.flatnonzero(self.consistent_mask)
        target = int(candidates[int(self._rng.integers(len(candidates)))])
        self.hidden_word = self.vocab.answers[target]
        guess_letters = letter_codes([guess])[0]
        self._knowledge.update(guess_letters, self.vocab.letters[target])
        self.consistent_mask = self._knowledge.consistent(self.vocab.letters)
        consistent = np.flatnonzero(self.consistent_mask)
        solved = len(consistent) == 1 and self.vocab.answers[consistent[0]] == guess
        return self._knowledge.marks_text(guess_letters), solved


__all__ = [
    "CODE_TEXT",
    "MAX_ATTEMPTS",
    "Vocabulary",
    "WordleEnv",
    "feedback_codes",
    "feedback_marks",
    "feedback_text",
    "load_vocabulary",
    "marks_code",
    "parse_guess",
]
