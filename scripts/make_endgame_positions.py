"""Regenerate the Endgames-v0 evaluation set (docs/tasks.md §6): 645 "not trivially solvable" positions.

Each type draws random positions from its own generator (``default_rng([seed, k])``, k the type's
index) with the env's sampler, skips duplicates, and asks Stockfish for a fixed search
(``Threads=1``, ``Hash=16``, ``ucinewgame`` before each position, ``go depth 12``). A position is
kept unless the score is a mate for White in fewer than 15 moves (the original's filter), until
the type's quota is met. The file lists the types interleaved (kQK, kRK, kQRK, kRRK, kQK, ...),
so any prefix is balanced. Deterministic for one engine build; writes the JSONL and a manifest.

    python scripts/make_endgame_positions.py            # ~15 min on one core (kQRK: ~10k draws)
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import chess
import chess.engine
import numpy as np

from lmrlgym.envs._stockfish import Stockfish
from lmrlgym.envs.chess import ENDGAME_PIECES, EVAL_SET, position_key, random_endgame

QUOTAS = {"kQK": 161, "kRK": 161, "kQRK": 161, "kRRK": 162}
DEPTH = 12
MIN_MATE = 15  # keep mates in >= 15 moves (and non-mate scores)


def is_trivial(score: chess.engine.PovScore) -> bool:
    """A forced mate for White in fewer than MIN_MATE moves: too easy to evaluate on."""
    mate = score.white().mate()
    return mate is not None and 0 < mate < MIN_MATE


def select(engine: Stockfish, kind: str, k: int, seed: int, quota: int
           ) -> tuple[list[dict], int]:
    rng = np.random.default_rng([seed, k])
    kept: list[dict] = []
    seen: set = set()
    draws = 0
    while len(kept) < quota:
        board = random_endgame(rng, kind)
        draws += 1
        key = position_key(board)
        if key in seen:
            continue
        seen.add(key)
        score = engine.analyse(board, chess.engine.Limit(depth=DEPTH))["score"]
        if not is_trivial(score):
            kept.append({"type": kind, "fen": board.fen(), "stockfish_score": str(score.white())})
    return kept, draws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=EVAL_SET)
    args = ap.parse_args()
    engine = Stockfish()
    per_type, draws = {}, {}
    start = time.time()
    for k, kind in enumerate(ENDGAME_PIECES):
        per_type[kind], draws[kind] = select(engine, kind, k, args.seed, QUOTAS[kind])
        print(f"{kind}: {QUOTAS[kind]} kept of {draws[kind]} draws ({time.time() - start:.0f}s)")
    order = [kind for i in range(max(QUOTAS.values())) for kind in ENDGAME_PIECES
             if i < QUOTAS[kind]]
    iters = {kind: iter(records) for kind, records in per_type.items()}
    records = [{"index": i, **next(iters[kind])} for i, kind in enumerate(order)]
    assert len({r["fen"] for r in records}) == len(records) == sum(QUOTAS.values())
    args.out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    manifest = {
        "file": args.out.name,
        "positions": len(records),
        "seed": args.seed,
        "generator": "lmrlgym.envs.chess.random_endgame with numpy default_rng([seed, type_index])",
        "type_order": list(ENDGAME_PIECES),
        "quotas": QUOTAS,
        "draws": draws,
        "filter": f"drop when Stockfish scores a mate for White in < {MIN_MATE} moves",
        "engine": engine.name,
        "search": {"Threads": 1, "Hash": 16, "ucinewgame": "before each position",
                   "limit": f"depth {DEPTH}"},
        "script": "scripts/make_endgame_positions.py",
        "date": datetime.date.today().isoformat(),
    }
    manifest_path = args.out.with_name(args.out.stem + ".manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    engine.close()
    print(f"wrote {args.out} and {manifest_path} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
