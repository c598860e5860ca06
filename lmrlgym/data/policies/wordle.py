"""Scripted Wordle behaviour policies (docs/tasks.md §4, "Behaviour policies for offline data").

They read the env's set of answers consistent with the feedback so far (which a player could
work out from the transcript; the env keeps it so policies need not recompute it).

- ``wordle-mixture(p_smart)``: the default dataset. With probability ``p_smart`` a uniform
  answer consistent with the feedback so far, else a uniform answer. ``p_smart = 1/3``
  reproduces the paper's data (success 0.70, mean return about -4.1).
- ``wordle-greedy``: among the consistent answers, the one whose feedback pattern over them has
  the highest entropy (ties alphabetical). The benchmark's upper reference (paper: -1.94).
- ``wordle-random``: a uniform allowed guess.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.envs.wordle import Vocabulary, WordleEnv, spaced

N_PATTERNS = 3**5
_TIE_TOLERANCE = 1e-9  # entropies equal up to float rounding count as ties


def _wordle_env(env: TextEnv) -> WordleEnv:
    if not isinstance(env, WordleEnv):
        raise TypeError(f"wordle policies need a WordleEnv, got {type(env).__name__}")
    return env


def pattern_entropies(vocab: Vocabulary, candidates: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the feedback pattern of guessing each candidate, over the candidates."""
    n = len(candidates)
    codes = vocab.matrix[np.ix_(candidates, candidates)].astype(np.int64)  # (n, n)
    # One bincount for all rows: offset row k's patterns by k * N_PATTERNS.
    offsets = (np.arange(n, dtype=np.int64) * N_PATTERNS)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=n * N_PATTERNS)
    counts = counts.reshape(n, N_PATTERNS).astype(np.float64)  # (n, 243)
    p = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


def greedy_guess(vocab: Vocabulary, candidates: np.ndarray) -> str:
    """The max-entropy consistent answer; ties go to the alphabetically first word."""
    if len(candidates) == 1:
        return vocab.answers[int(candidates[0])]
    entropy = pattern_entropies(vocab, candidates)
    best = np.flatnonzero(entropy >= entropy.max() - _TIE_TOLERANCE)
    return min(vocab.answers[int(candidates[i])] for i in best)


class WordleMixture(BehaviourPolicy):
    policy_name = "wordle-mixture"

    def __init__(self, p_smart: float = 1 / 3):
        if not 0.0 <= p_smart <= 1.0:
            raise ValueError(f"p_smart must be in [0, 1], got {p_smart!r}")
        super().__init__(p_smart=float(p_smart))
        self.p_smart = float(p_smart)

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        wordle = _wordle_env(env)
        answers = wordle.vocab.answers
        if rng.random() < self.p_smart:
            candidates = np.flatnonzero(wordle.consistent_mask)
            word = answers[int(candidates[int(rng.integers(len(candidates)))])]
        else:
            word = answers[int(rng.integers(len(answers)))]
        return spaced(word) + "\n"

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        return {"hidden_word": info["hidden_word"]}


class WordleGreedy(BehaviourPolicy):
    policy_name = "wordle-greedy"

    def __init__(self) -> None:
        super().__init__()
        # The policy is a deterministic function of the consistent set, so each decision is
        # computed once per vocabulary (the whole tree has at most one node per answer).
        self._cache: dict[tuple[Vocabulary, bytes], str] = {}

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        wordle = _wordle_env(env)
        key = (wordle.vocab, np.packbits(wordle.consistent_mask).tobytes())
        word = self._cache.get(key)
        if word is None:
            word = greedy_guess(wordle.vocab, np.flatnonzero(wordle.consistent_mask))
            self._cache[key] = word
        return spaced(word) + "\n"

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        return {"hidden_word": info["hidden_word"]}


class WordleRandom(BehaviourPolicy):
    policy_name = "wordle-random"

    def __init__(self) -> None:
        super().__init__()
        self._sorted: dict[Vocabulary, list[str]] = {}

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        vocab = _wordle_env(env).vocab
        words = self._sorted.get(vocab)
        if words is None:
            # Sorted, so the choice does not depend on set iteration order.
            words = self._sorted[vocab] = sorted(vocab.allowed)
        return spaced(words[int(rng.integers(len(words)))]) + "\n"
