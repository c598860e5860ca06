"""Scripted behaviour policies that generate the offline datasets (one module per task).

A behaviour policy may read the env's privileged state (the true maze position, the hidden
word, the buyer's persona), so it is called with the env, unlike the text-only ``Policy``
protocol of ``lmrlgym.core``. Policies are named by a spec string such as
``"maze-mixture(p_solver=0.15)"``: the name plus keyword settings, which is also what the
dataset manifest and every episode record store.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import re
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv


class BehaviourPolicy:
    """Base class: override ``act``; the other hooks have neutral defaults."""

    #: Registered name (without settings), e.g. "maze-mixture".
    policy_name: str = ""

    def __init__(self, **settings: Any):
        self.settings = settings

    @property
    def name(self) -> str:
        """Spec string with the settings, e.g. ``maze-mixture(p_solver=0.15)``."""
        if not self.settings:
            return self.policy_name
        args = ",".join(f"{k}={v!r}" for k, v in sorted(self.settings.items()))
        return f"{self.policy_name}({args})"

    def reset_options(self, env: TextEnv, rng: np.random.Generator) -> dict[str, Any]:
        """Options for ``env.reset`` (e.g. a start cell); drawn from the policy's generator."""
        return {}

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        raise NotImplementedError

    def cut(self, env: TextEnv, info: dict[str, Any]) -> str | None:
        """A reason to end the recorded trajectory now (stored as ``truncated``), or None."""
        return None

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        """Facts not in the text, stored in the record's ``meta`` (hidden word, persona, ...)."""
        return {}

    def manifest_extra(self) -> dict[str, Any]:
        """Extra manifest fields (e.g. engine version); must be deterministic."""
        return {}

    def close(self) -> None:
        """Release resources (engine processes)."""


# name -> (entry point "module:Class", tasks it supports). Imported lazily so that a missing
# optional dependency only matters for the tasks that need it.
POLICIES: dict[str, tuple[str, tuple[str, ...]]] = {}
# task id -> default behaviour policy spec (docs/tasks.md, "Behaviour policies for offline data").
DEFAULT_POLICY: dict[str, str] = {}
# task id -> the best scripted policy (optimal where known): the benchmark's upper reference.
OPTIMAL_POLICY: dict[str, str] = {}


def register_policy(name: str, entry_point: str, tasks: tuple[str, ...]) -> None:
    POLICIES[name] = (entry_point, tasks)


def parse_policy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name(a=1,b='x')"`` -> ``("name", {"a": 1, "b": "x"})``; raises ``ValueError``."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_\-]+)\s*(?:\((.*)\))?\s*", spec, flags=re.S)
    if not m:
        raise ValueError(f"bad policy spec {spec!r}; expected NAME or NAME(key=value,...)")
    name, args = m.group(1), m.group(2)
    settings: dict[str, Any] = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
            assert isinstance(call, ast.Call) and not call.args
            settings = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (SyntaxError, ValueError, AssertionError):
            raise ValueError(f"bad policy settings in {spec!r}; use key=value pairs") from None
    return name, settings


def make_policy(spec: str, task: str | None = None) -> BehaviourPolicy:
    """Build a behaviour policy from its spec string, checking that it fits ``task``."""
    name, settings = parse_policy_spec(spec)
    if name not in POLICIES:
        # With a task, only its policies are suggested (the others would be refused anyway).
        valid = [n for n, (_, tasks) in POLICIES.items() if task is None or task in tasks]
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = f" for {task}" if task is not None else ""
        raise ValueError(f"unknown policy {name!r}.{hint} Valid policies{where}: "
                         f"{', '.join(valid) or 'none'}")
    entry_point, tasks = POLICIES[name]
    if task is not None and task not in tasks:
        raise ValueError(f"policy {name!r} is for {', '.join(tasks)}, not {task!r}")
    module_name, _, attr = entry_point.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    try:
        return cls(**settings)
    except TypeError as e:
        raise ValueError(f"bad settings for policy {name!r}: {e}") from None


def default_policy(task: str) -> str:
    try:
        return DEFAULT_POLICY[task]
    except KeyError:
        raise ValueError(f"no default behaviour policy for {task!r}") from None


# --- the table (one block per task; entry points are the per-task modules) -----------------
_MAZE = ("Maze-FO-v0", "Maze-PO-v0")
register_policy("maze-mixture", "lmrlgym.data.policies.maze:MazeMixture", _MAZE)
register_policy("maze-optimal", "lmrlgym.data.policies.maze:MazeOptimal", _MAZE)
register_policy("maze-random", "lmrlgym.data.policies.maze:MazeRandom", _MAZE)
register_policy("maze-submaze", "lmrlgym.data.policies.maze:MazeSubmaze", _MAZE)
register_policy("maze-belief", "lmrlgym.data.policies.maze:MazeBelief", _MAZE)
DEFAULT_POLICY.update({t: "maze-submaze" for t in _MAZE})
# FO reveals the cell, so the shortest path is optimal (-6.84); PO's optimum uses only the
# history (-7.24, docs/tasks.md §2), which the privileged shortest path would overstate.
OPTIMAL_POLICY.update({"Maze-FO-v0": "maze-optimal", "Maze-PO-v0": "maze-belief"})

register_policy("wordle-mixture", "lmrlgym.data.policies.wordle:WordleMixture", ("Wordle-v0",))
register_policy("wordle-greedy", "lmrlgym.data.policies.wordle:WordleGreedy", ("Wordle-v0",))
register_policy("wordle-random", "lmrlgym.data.policies.wordle:WordleRandom", ("Wordle-v0",))
DEFAULT_POLICY["Wordle-v0"] = "wordle-mixture"
OPTIMAL_POLICY["Wordle-v0"] = "wordle-greedy"

register_policy("textnav-half-expert", "lmrlgym.data.policies.textnav:HalfExpert",
                ("TextNav-FO-v0", "TextNav-PO-v0"))
DEFAULT_POLICY.update({t: "textnav-half-expert" for t in ("TextNav-FO-v0", "TextNav-PO-v0")})
register_policy("textnav-walkthrough", "lmrlgym.data.policies.textnav:Walkthrough",
                ("TextNav-FO-v0", "TextNav-PO-v0"))
OPTIMAL_POLICY.update({t: "textnav-walkthrough" for t in ("TextNav-FO-v0", "TextNav-PO-v0")})

register_policy("chess-stockfish", "lmrlgym.data.policies.chess:ChessStockfish", ("Chess-v0",))
DEFAULT_POLICY["Chess-v0"] = "chess-stockfish"
register_policy("endgame-epsilon", "lmrlgym.data.policies.chess:EndgameEpsilon", ("Endgames-v0",))
DEFAULT_POLICY["Endgames-v0"] = "endgame-epsilon"
# The strongest scripted players: full-strength Stockfish, 20k nodes per move, no random moves.
OPTIMAL_POLICY["Chess-v0"] = "chess-stockfish(strength='nodes:20000',epsilon=0.0)"
OPTIMAL_POLICY["Endgames-v0"] = "endgame-epsilon(epsilon_dist=0.0,strength='nodes:20000')"

register_policy("twentyq-splitter", "lmrlgym.data.policies.twenty_questions:Splitter",
                ("TwentyQuestions-v0",))
DEFAULT_POLICY["TwentyQuestions-v0"] = "twentyq-splitter"
# Always the most even split, guessing once at most 4 objects remain (the best guess_at: -6.95
# on the 158 objects, vs -6.97 for 3 and -6.98 for 5).
OPTIMAL_POLICY["TwentyQuestions-v0"] = "twentyq-splitter(p_info=1.0,guess_at=4)"
register_policy("guesscity-asker", "lmrlgym.data.policies.guess_city:Asker", ("GuessCity-v0",))
DEFAULT_POLICY["GuessCity-v0"] = "guesscity-asker"
# Always the most informative question, guessing as soon as one candidate remains.
OPTIMAL_POLICY["GuessCity-v0"] = "guesscity-asker(p_info=1.0,p_early=1.0)"

register_policy("car-seller", "lmrlgym.data.policies.car_dealer:Seller", ("CarDealer-v0",))
DEFAULT_POLICY["CarDealer-v0"] = "car-seller"
register_policy("car-seller-expert", "lmrlgym.data.policies.car_dealer:ExpertSeller",
                ("CarDealer-v0",))
OPTIMAL_POLICY["CarDealer-v0"] = "car-seller-expert"
