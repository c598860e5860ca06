"""Core types: turns, episodes, the ``TextEnv`` base class and the ``Policy`` protocol.

Every task env subclasses :class:`TextEnv` and implements three small hooks
(``_reset``, ``_step``, ``context_turns``); the base class owns what is common to all tasks
(docs/tasks.md §1): action normalisation, the turn history in ``info["turns"]``, seeding,
the common ``info`` keys and the step-after-end ``RuntimeError``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

EPISODE_FORMAT = "lmrlgym.episode/1"
# Observations and actions can be any unicode text; this charset is only used to *sample*
# strings (e.g. by Gymnasium's checker). `contains` accepts every str, see `AnyText`.
_SAMPLE_CHARSET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.?!'-\n"


class Turn(NamedTuple):
    """One utterance of an episode. A tuple, so ``text, is_action = turn[:2]`` works too."""

    text: str
    is_action: bool
    reward: float = 0.0


@dataclasses.dataclass
class Episode:
    """One episode as stored in a dataset (docs/tasks.md §11.1)."""

    task: str
    turns: list[Turn]
    terminated: bool
    truncated: bool
    success: bool
    seed: int | None = None
    policy: str = ""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    reset_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ret(self) -> float:
        """Undiscounted return: the sum of the action turns' rewards."""
        return float(sum(t.reward for t in self.turns))

    @property
    def n_actions(self) -> int:
        return sum(1 for t in self.turns if t.is_action)

    @property
    def actions(self) -> list[str]:
        return [t.text for t in self.turns if t.is_action]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EPISODE_FORMAT,
            "task": self.task,
            "env_kwargs": self.env_kwargs,
            "seed": self.seed,
            "reset_options": self.reset_options,
            "policy": self.policy,
            "turns": [
                {"text": t.text, "is_action": t.is_action, "reward": float(t.reward)}
                for t in self.turns
            ],
            "terminated": self.terminated,
            "truncated": self.truncated,
            "return": self.ret,
            "success": self.success,
            "meta": self.meta,
        }


#: Characters of an action an env keeps (the rest is dropped before parsing), so an echoed action
#: cannot grow an observation without bound. Envs may lower it; each card states its value.
MAX_ACTION_CHARS = 1000
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate (a code point UTF-8 cannot encode) replaced by U+FFFD."""
    if text.isascii():  # the common case, answered without encoding
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text


def normalize_action(action: str, max_chars: int | None = None) -> str:
    """Keep at most ``max_chars`` characters, cut at the first newline, replace lone surrogates
    (U+FFFD), strip trailing whitespace, end with exactly one newline."""
    # Capping first is the same as capping the first line, and never copies a huge string.
    line = action[:max_chars].split("\n", 1)[0]
    return clean_text(line).rstrip() + "\n"


class AnyText(spaces.Text):
    """A Text space that contains every ``str`` (of any length and charset).

    Gymnasium's ``Text`` only admits strings over its sample charset; our envs accept any action
    string (illegal ones are penalised, not rejected) and emit arbitrary unicode observations.
    """

    def contains(self, x: Any) -> bool:
        return isinstance(x, str)


class EpisodeView:
    """``turns`` and ``done`` of the episode an env is playing, shared by :class:`TextEnv` and
    the env server's client (:class:`lmrlgym.remote.RemoteEnv`), which keep ``_turns`` and
    ``_done`` up to date."""

    _turns: list[Turn]
    _done: bool

    @property
    def turns(self) -> list[Turn]:
        """The episode's turns so far (a copy)."""
        return list(self._turns)

    @property
    def done(self) -> bool:
        """Whether the episode has ended (True before the first reset)."""
        return self._done


class TextEnv(EpisodeView, gym.Env[str, str]):
    """Base class of every lmrlgym env: Gymnasium semantics, text in and text out.

    Subclasses implement:

    - ``_reset(rng, options) -> (text, info)``: start an episode; ``text`` is the first env text.
    - ``_step(action) -> (text, reward, terminated, truncated, info)``: ``action`` is already
      normalised (one line of at most ``max_action_chars`` characters, lone surrogates
      replaced, ending in ``"\\n"``); return the stored form of the action (canonical
      spelling when recognised) in ``info["action"]`` if it differs, plus ``illegal``/``success``.
    - ``context_turns(turns) -> list[Turn]`` (static/pure): the turns the policy sees next.
    """

    metadata = {"render_modes": ["ansi"]}
    #: Whether a partner or opponent samples (set per instance by envs with LM partners).
    deterministic: bool = True
    #: (min, max) of the per-episode return, checked by `check_env`.
    return_range: tuple[float, float] = (-float("inf"), float("inf"))
    #: Whether ``info["action_set"]`` carries :meth:`action_set` (envs whose sets are small).
    action_set_in_info: bool = False
    #: Characters of an action kept before parsing and storing (see :func:`normalize_action`).
    max_action_chars: int = MAX_ACTION_CHARS
    #: For people playing the task (``lmrlgym play``): its rules, action format and examples.
    play_help: str = ""
    #: ``info`` keys holding the hidden state that ``lmrlgym play`` reveals when an episode ends.
    play_reveal: tuple[str, ...] = ()

    def __init__(self, render_mode: str | None = None, max_obs_length: int = 1_000_000):
        self.render_mode = render_mode
        self.observation_space = AnyText(max_length=max_obs_length, charset=_SAMPLE_CHARSET)
        self.action_space = AnyText(max_length=64, charset=_SAMPLE_CHARSET)
        self.reward_range = self.return_range
        self._turns: list[Turn] = []
        self._normalized: dict[str, str] = {}  # short action -> normalize_action(action)
        self._done = True
        self._episode_seed: int | None = None
        self._success = False

    # --- hooks for subclasses -------------------------------------------------------------
    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        raise NotImplementedError

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        raise NotImplementedError

    @staticmethod
    def context_turns(turns: Sequence[Turn]) -> list[Turn]:
        """Turns the policy conditions on next; the default is the whole transcript."""
        return list(turns)

    def action_set(self) -> tuple[str, ...] | None:
        """The actions the env accepts as legal in the current state, spelled as it stores
        them, without the trailing newline; None where the task cannot list them (free text).
        Envs that know their legal actions override it (each card says what the set holds).
        """
        return None

    @classmethod
    def evaluation_resets(cls, n_episodes: int, **env_kwargs: Any) -> list[tuple[int, dict]]:
        """The task's evaluation protocol: ``(seed, reset options)`` of each episode.

        Default: seeds ``0 .. n-1`` with no options. Tasks override it (Maze cycles the 25
        start cells, 20Q every object equally often, Endgames the fixed test positions).
        """
        return [(i, {}) for i in range(n_episodes)]

    # --- Gymnasium API --------------------------------------------------------------------
    @classmethod
    def window(cls, turns: Sequence[Turn]) -> str:
        """The observation text for a history: the concatenation of ``context_turns``."""
        return "".join(t.text for t in cls.context_turns(turns))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode. ``seed=None`` draws the episode seed from the env's seed stream."""
        # Gymnasium's `np_random` is the seed stream: reseeded by an explicit seed (so
        # `reset(seed=s); reset()` replays), drawn from OS entropy if never seeded.
        super().reset(seed=seed)
        episode_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31))
        self._episode_seed = episode_seed
        rng = np.random.default_rng(episode_seed)
        text, extra = self._reset(rng, dict(options or {}))
        self._turns = [Turn(_check_env_text(text), False, 0.0)]
        self._done = False
        self._success = False
        info = self._info(extra, illegal=False)
        return self.window(self._turns), info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Apply one agent action (any string; illegal ones are penalised, never raised)."""
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        normalized = self._normalize(action)
        text, reward, terminated, truncated, extra = self._step(normalized)
        reward = float(reward)
        if not (text.isascii() and text[-1:] == "\n" and text[-2:-1] != "\n"):
            text = _check_env_text(text)  # the fast test above passes exactly what this returns
        turns = self._turns
        turns.append(_new_turn(Turn, (extra.pop("action", normalized), True, reward)))
        turns.append(_new_turn(Turn, (text, False, 0.0)))
        if extra.pop("success", False):
            self._success = True
        terminated, truncated = bool(terminated), bool(truncated)
        self._done = terminated or truncated
        info = self._info(extra, illegal=bool(extra.pop("illegal", False)))
        return self.window(turns), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return "".join(("> " if t.is_action else "") + t.text for t in self._turns)
        return None

    # --- helpers ------------------------------------------------------------------------------
    def _normalize(self, action: str) -> str:
        """:func:`normalize_action`, remembered for short actions: a policy repeats its few
        spellings (Maze's four moves) and the env's step then skips the string work."""
        if len(action) > _MEMO_CHARS:
            return normalize_action(action, self.max_action_chars)
        normalized = self._normalized.get(action)
        if normalized is None:
            if len(self._normalized) >= _MEMO_SIZE:
                self._normalized.clear()
            normalized = self._normalized[action] = normalize_action(action, self.max_action_chars)
        return normalized

    def _info(self, extra: dict[str, Any], *, illegal: bool) -> dict[str, Any]:
        """``info``: the env's own keys (``extra``, a fresh dict from each ``_reset``/``_step``)
        with the common ones added in place, so a step builds one dict. The common keys are
        the base class's, except ``action_set``, which an env may give itself."""
        extra["turns"] = list(self._turns)
        extra["seed"] = self._episode_seed
        extra["deterministic"] = self.deterministic
        extra["illegal"] = illegal
        extra["success"] = self._success
        if self.action_set_in_info and "action_set" not in extra:
            extra["action_set"] = self.action_set()
        return extra


# Turn(...) without the Python-level __new__ NamedTuple adds (two turns per step).
_new_turn = tuple.__new__
# Actions of at most this many characters are remembered, up to this many per env.
_MEMO_CHARS = 64
_MEMO_SIZE = 4096


def _check_env_text(text: str) -> str:
    # An env text ends with exactly one newline (docs/tasks.md §1); a bug here would silently change
    # what the policy sees, so it fails loudly.
    if not text.endswith("\n") or text.endswith("\n\n"):
        raise AssertionError(f"env text must end with exactly one newline: {text[-40:]!r}")
    return clean_text(text)  # a partner's reply may carry lone surrogates (e.g. JSON "\\ud800")


@runtime_checkable
class Policy(Protocol):
    """Anything that maps a batch of observations to a batch of actions."""

    def act(self, observations: list[str]) -> list[str]: ...
