"""Behaviour policies for Chess-v0 and Endgames-v0: Stockfish as White, with random moves mixed in.

``chess-stockfish(strength, epsilon)`` (docs/tasks.md §5) and ``endgame-epsilon(epsilon_dist,
strength)`` (docs/tasks.md §6) share one player: per game it draws an engine strength and an ε; each
White move is then a uniform legal move with probability ε, else the engine's move. The paper
varied White's Elo over 800-1600; Stockfish cannot play below Elo 1350, so weaker play comes
from ε instead, and the default strengths are node budgets, which keep White deterministic
(the only randomness is the policy's own generator and the opponent).

Settings (literals in the policy spec):

- ``strength``: ``"nodes:<N>"``, ``"elo:<E>"`` or ``"skill:<0-20>"``; a range ``"nodes:50-400"``
  draws an integer uniformly per game; a list draws one entry per game.
- ``epsilon`` / ``epsilon_dist``: a probability, or ``(lo, hi)`` drawn uniformly per game.

Each episode's ``meta`` records the drawn ``strength`` and ``epsilon`` (for filtering) and, for
endgames, the position type. The manifest records the engine's name and options.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.envs._stockfish import EngineError, Stockfish, Strength, parse_strength

# Chosen to land near the paper's Table 1 against the engine's own Elo-1350 pick (100 ms), the
# default opponent when chosen.
# Measured (scripts/compute_constants.py, first episodes from seed 1,000,000): Chess, 150 games:
# success 0.633, return 0.267 +- 0.079, length 44.8 (paper 0.60 / 0.21 / 46.7); epsilon (0, 0.2)
# gave 0.73 / 0.49 and (0, 0.3) 0.52 / 0.07 (200 games each). Endgames, 300 games: success and
# return 0.570 +- 0.029, length 17.8, 64 % engine moves (paper 0.59 / 0.586 / 11.9, 38 %).
CHESS_STRENGTH = "nodes:500-5000"
CHESS_EPSILON = (0.0, 0.25)
ENDGAME_STRENGTH = "nodes:2000"
ENDGAME_EPSILON = (0.1, 0.6)
#: Search budget of elo/skill strengths; the weakened move is picked by depth 1 + level anyway.
WEAKENED_NODES = 20_000


def parse_strength_choice(value: str | list | tuple) -> list[tuple[str, int, int]]:
    """``"nodes:50-400"`` / ``["elo:1400", "skill:3"]`` -> ``[(kind, lo, hi), ...]``."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError("strength list is empty")
    out = []
    for item in items:
        m = re.fullmatch(r"(elo|skill|nodes):(\d+)(?:-(\d+))?", str(item).strip())
        if not m:
            raise ValueError(
                f"bad strength {item!r}; expected nodes:<N>, elo:<E> or skill:<0-20>, "
                "optionally a range such as nodes:50-400"
            )
        lo = int(m.group(2))
        hi = int(m.group(3) or lo)
        if hi < lo:
            raise ValueError(f"bad strength range {item!r}: {hi} < {lo}")
        parse_strength(f"{m.group(1)}:{lo}")  # validates kind-specific bounds
        parse_strength(f"{m.group(1)}:{hi}")
        out.append((m.group(1), lo, hi))
    return out


def parse_epsilon(value: float | list | tuple) -> tuple[float, float]:
    """A probability ``p`` -> ``(p, p)``; ``(lo, hi)`` -> itself, checked to lie in [0, 1]."""
    lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if not 0.0 <= float(lo) <= float(hi) <= 1.0:
        raise ValueError(f"epsilon must be p or (lo, hi) with 0 <= lo <= hi <= 1, got {value!r}")
    return float(lo), float(hi)


class _StockfishPlayer(BehaviourPolicy):
    """Stockfish as White with an ε share of uniform random moves, both drawn per game."""

    def __init__(self, strength: Any, epsilon: Any, epsilon_key: str):
        super().__init__(strength=strength, **{epsilon_key: epsilon})
        self._strengths = parse_strength_choice(strength)
        self._epsilon = parse_epsilon(epsilon)
        self._engine: Stockfish | None = None
        self._game: dict[str, Any] = {}

    def _stockfish(self) -> Stockfish:
        if self._engine is None:
            self._engine = Stockfish()
        return self._engine

    def reset_options(self, env: TextEnv, rng: np.random.Generator) -> dict[str, Any]:
        # Called once per episode before env.reset: the per-game draws happen here.
        kind, lo, hi = self._strengths[int(rng.integers(len(self._strengths)))]
        value = int(rng.integers(lo, hi + 1))
        lo_eps, hi_eps = self._epsilon
        self._game = {
            "strength": parse_strength(f"{kind}:{value}", default_nodes=WEAKENED_NODES),
            "epsilon": float(rng.uniform(lo_eps, hi_eps)) if hi_eps > lo_eps else lo_eps,
            "engine_moves": 0,
            "random_moves": 0,
        }
        if self._engine is not None:  # a new engine starts fresh; epsilon=1 never starts one
            self._engine.new_game()
        return {}

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        board = env.board  # type: ignore[attr-defined]
        if rng.random() < self._game["epsilon"]:
            moves = list(board.legal_moves)
            move = moves[int(rng.integers(len(moves)))]
            self._game["random_moves"] += 1
        else:
            strength: Strength = self._game["strength"]
            try:
                move = self._stockfish().play(board, strength)
            except EngineError:
                # The engine died or hung and was discarded: one retry on a fresh process, so a
                # crash costs one search, not the shard (a second failure propagates).
                move = self._stockfish().play(board, strength)
            self._game["engine_moves"] += 1
        return " ".join(board.san(move))

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        meta = {
            "strength": str(self._game["strength"]),
            "epsilon": round(self._game["epsilon"], 6),
            "engine_moves": self._game["engine_moves"],
            "random_moves": self._game["random_moves"],
            "outcome": info.get("outcome"),
            # The opponent the game was played against: datasets from before the seeded
            # default (stockfish-elo-seeded:1350) have no such key.
            "opponent": getattr(env, "opponent", None),
        }
        if info.get("engine_error"):
            meta["engine_error"] = info["engine_error"]
        if "position_type" in info:
            meta["position_type"] = info["position_type"]
        return meta

    def manifest_extra(self) -> dict[str, Any]:
        engine = self._stockfish()
        return {
            "engine": engine.name,
            "engine_options": {"Threads": 1, "Hash": 16},
            "weakened_strength_limit": f"nodes={WEAKENED_NODES}",
        }

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


class ChessStockfish(_StockfishPlayer):
    """``chess-stockfish(strength, epsilon)``: full games (docs/tasks.md §5)."""

    policy_name = "chess-stockfish"

    def __init__(self, strength: Any = CHESS_STRENGTH, epsilon: Any = CHESS_EPSILON):
        super().__init__(strength, epsilon, "epsilon")


class EndgameEpsilon(_StockfishPlayer):
    """``endgame-epsilon(epsilon_dist, strength)``: endgames (docs/tasks.md §6)."""

    policy_name = "endgame-epsilon"

    def __init__(self, epsilon_dist: Any = ENDGAME_EPSILON, strength: Any = ENDGAME_STRENGTH):
        super().__init__(strength, epsilon_dist, "epsilon_dist")
