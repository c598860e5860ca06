"""Chess-v0 and Endgames-v0: play White against Stockfish, moves as spaced SAN (docs/tasks.md §5-6).

Description
-----------
``mode="game"`` (Chess-v0): full games from the standard start. ``mode="endgame"``
(Endgames-v0): theoretical wins for White (``kQK``, ``kRK``, ``kQRK``, ``kRRK``: lower case is
Black, upper case White), so games are short and test strategy rather than memorised openings.
The agent is always White; python-chess enforces the rules.

Observation
-----------
The FEN (python-chess ``Board.fen()``) with every character separated by one space, so the
FEN's own spaces become three, then ``"\\n"``. The window is the current position only::

    r n b q k b n r / p p p p p p p p / 8 / 8 / 8 / 8 / P P P P P P P P / R N B Q K B N R   w   K Q k q   -   0   1

Action
------
A move in SAN, spaced (``N f 3``) or not (``Nf3``), or in UCI (``g1f3``, ``e7e8q``). Parsing
removes all whitespace and tries SAN, then UCI. A legal move is stored as spaced SAN
(``g1f3`` -> ``N f 3\\n``). Empty text, null moves (``--``, ``0000``), unparsable text and
illegal moves are illegal. ``env.action_set()`` and ``info["action_set"]`` hold White's legal
moves in spaced SAN (empty once the game is over).

Before parsing, an action is cut to its first 1,000 characters and lone surrogates become U+FFFD
(the stored action too), the observation shows no action.

Rewards
-------
Illegal move: -1, position unchanged (the same FEN is shown again). Legal move: +1 if it
checkmates, 0 if it draws; otherwise the opponent replies: -1 if that checkmates White, else 0.
Draws are the ones python-chess ends automatically (stalemate, insufficient material, 75-move
rule, fivefold repetition); claimable draws do not end the game. Return range [-400, 1].

Episode End
-----------
``terminated`` on checkmate or an automatic draw. ``truncated`` after the 400th agent step
(legal or not), which still gets its normal reward, or when the opponent engine died
mid-game (``info["engine_error"]``; the episode counts as failed, the next reset starts a new
engine).

Arguments
---------
- ``mode``: ``"game"`` or ``"endgame"``.
- ``opponent``: ``"stockfish-elo-seeded:<E>"`` (default Elo 1350: Stockfish 15.1's weakened
  pick with draws from the episode's generator, deterministic; docs/tasks.md §5),
  ``"stockfish-elo:<E>[:<ms>]"`` (``UCI_LimitStrength``, the engine's own clock-seeded pick,
  100 ms per move; nondeterministic), ``"stockfish-nodes:<N>"``
  (full strength, N nodes per move, deterministic) or ``"random"`` (uniform legal move from the
  episode's generator).
- ``types``: endgame types drawn for training positions (default: all four, uniformly).
- ``eval_positions``: a positions file replacing the shipped 645-position evaluation set (JSONL:
  objects with a ``fen`` field, or JSON strings as in the original release).
- ``max_steps``: agent steps before truncation (400).
- Reset options: ``{"fen": ...}`` (a legal position, White to move, game not over) or, for
  endgames, ``{"eval_index": i}``. Extra info keys: ``fen``, ``opponent_move`` (SAN or None),
  ``outcome``, ``winner`` (``"white"``/``"black"``/None), ``engine``, ``position_type``,
  ``illegal_reason`` (after an illegal move: why, in words).

Differences from LMRL-Gym
-------------------------
1. The default opponent is Stockfish's Elo-1350 weakening (Stockfish 15.1's minimum), said
   plainly, with seeded draws so games replay; the original asked for 1200, which the engine
   ignored. Out-of-range Elo raises ``ValueError``.
2. Deterministic opponents (``stockfish-nodes:N``, ``random``) for reproducible tests.
3. The observation ends with ``"\\n"``, as the original's training data did.
4. The cap is 400 agent steps (the original allowed 401).
5. A missing engine gives an install message; a crashed engine ends the episode as failed.
6. Endgames: the evaluation set is regenerated from seed 0 with an exact filter
   (``scripts/make_endgame_positions.py``); training positions are checked against all of it.

References
----------
Abdulhai et al., "LMRL Gym" (2023), §4 Chess and Endgames; python-chess; Stockfish 15.1.

Version History
---------------
v0: initial release (docs/tasks.md §5-6).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv, Turn
from lmrlgym.envs._stockfish import EngineError, Stockfish, Strength, parse_strength

try:
    import chess
except ImportError as e:  # pragma: no cover - exercised only without the extra
    from lmrlgym.registry import DependencyNotInstalled

    raise DependencyNotInstalled('Chess-v0/Endgames-v0 need python-chess: '
                                 'pip install "lmrlgym[chess]"') from e

MAX_STEPS = 400
DEFAULT_OPPONENT = "stockfish-elo-seeded:1350"
#: Endgame type -> White's pieces besides the king (Black has only its king).
ENDGAME_PIECES: dict[str, str] = {"kQK": "Q", "kRK": "R", "kQRK": "QR", "kRRK": "RR"}
EVAL_SET = Path(__file__).resolve().parent / "data" / "endgames_eval_645.jsonl"


# --- text rules -------------------------------------------------------------------------------
def spaced(text: str) -> str:
    """Every character separated by one space (``"Nf3"`` -> ``"N f 3"``)."""
    return " ".join(text)


def observation_text(board: chess.Board) -> str:
    return fen_text(board.fen())


def fen_text(fen: str) -> str:
    """The observation of a position given its FEN."""
    return spaced(fen) + "\n"


def parse_move(board: chess.Board, action: str) -> chess.Move | None:
    """The legal move an action names (SAN, spaced or not, else UCI), or None if illegal."""
    text = "".join(action.split())
    if not text:
        return None
    for parse in (board.parse_san, board.parse_uci):
        try:
            move = parse(text)
        except ValueError:  # python-chess's Invalid/Illegal/AmbiguousMoveError
            continue
        # parse_san/parse_uci accept null moves ("--", "0000"); they are not moves here.
        if move and board.is_legal(move):
            return move
    return None


def legal_sans(board: chess.Board) -> dict[chess.Move, str]:
    """Every legal move's SAN, equal to ``board.san(move)`` for each, computed in one pass: the
    moves that need disambiguating are found by grouping the legal moves (same piece type, same
    target) instead of generating them again for each move."""
    moves = list(board.legal_moves)
    kinds = [board.piece_type_at(m.from_square) for m in moves]
    sources: dict[tuple[int, int], int] = {}  # (piece type, target) -> mask of from-squares
    for m, kind in zip(moves, kinds, strict=True):
        if kind != chess.PAWN:
            key = (kind, m.to_square)
            sources[key] = sources.get(key, 0) | chess.BB_SQUARES[m.from_square]
    out = {}
    for m, kind in zip(moves, kinds, strict=True):
        if board.is_castling(m):
            san = "O-O-O" if chess.square_file(m.to_square) < chess.square_file(m.from_square) else "O-O"
        else:
            capture = board.is_capture(m)
            san = "" if kind == chess.PAWN else chess.piece_symbol(kind).upper()
            others = 0 if kind == chess.PAWN else sources[kind, m.to_square] & ~chess.BB_SQUARES[m.from_square]
            file, rank = chess.square_file(m.from_square), chess.square_rank(m.from_square)
            if others:
                row = bool(others & chess.BB_FILES[file])
                column = bool(others & chess.BB_RANKS[rank]) or not row
                san += (chess.FILE_NAMES[file] if column else "") + (chess.RANK_NAMES[rank] if row else "")
            elif kind == chess.PAWN and capture:
                san += chess.FILE_NAMES[file]
            san += ("x" if capture else "") + chess.SQUARE_NAMES[m.to_square]
            if m.promotion:
                san += "=" + chess.piece_symbol(m.promotion).upper()
        board.push(m)
        if board.is_check():
            san += "#" if board.is_checkmate() else "+"
        board.pop()
        out[m] = san
    return out


def outcome_name(board: chess.Board) -> str | None:
    """How the game ended automatically (claimable draws do not count), or None."""
    return _termination(board.outcome(claim_draw=False))


def winner_name(board: chess.Board) -> str | None:
    return _winner(board.outcome(claim_draw=False))


def _termination(outcome: chess.Outcome | None) -> str | None:
    return None if outcome is None else outcome.termination.name.lower()


def _winner(outcome: chess.Outcome | None) -> str | None:
    if outcome is None or outcome.winner is None:
        return None
    return "white" if outcome.winner == chess.WHITE else "black"


def _is_mate(outcome: chess.Outcome | None) -> bool:
    return outcome is not None and outcome.termination == chess.Termination.CHECKMATE


# --- positions --------------------------------------------------------------------------------
def start_position(fen: str, where: str = "options['fen']") -> chess.Board:
    """A board for a start FEN: legal, White to move and not already over; else ValueError."""
    try:
        board = chess.Board(fen)
    except ValueError as e:
        raise ValueError(f"{where}: invalid FEN {fen!r}: {e}") from None
    if board.turn != chess.WHITE:
        raise ValueError(f"{where}: FEN {fen!r} has Black to move; the agent plays White")
    if not board.is_valid():
        raise ValueError(f"{where}: FEN {fen!r} is not a legal position ({board.status()!r})")
    if board.is_game_over(claim_draw=False):
        raise ValueError(f"{where}: FEN {fen!r} is already over ({outcome_name(board)})")
    return board


def position_key(board: chess.Board) -> tuple[str, bool]:
    """What makes two positions the same for the train/eval split: placement and side to move."""
    return board.board_fen(), board.turn


def position_type(board: chess.Board) -> str | None:
    """``kQK``/``kRK``/``kQRK``/``kRRK`` when the material matches one of them, else None."""
    if board.occupied_co[chess.BLACK] != board.kings & board.occupied_co[chess.BLACK]:
        return None
    white = board.occupied_co[chess.WHITE] & ~board.kings
    pieces = "".join(
        chess.piece_symbol(board.piece_type_at(sq)).upper() for sq in chess.scan_forward(white)
    )
    key = "".join(sorted(pieces, key="QR".find)) if set(pieces) <= {"Q", "R"} else None
    return next((t for t, p in ENDGAME_PIECES.items() if p == key), None)


def random_endgame(rng: np.random.Generator, kind: str) -> chess.Board:
    """A uniformly placed ``kind`` position, White to move, valid, White not in check, not over.

    Rejection sampling: draw distinct squares for (White king, Black king, White pieces) and
    retry until python-chess's ``is_valid()`` holds (so Black is not in check), White is not in
    check and the game is not over (docs/tasks.md §6).
    """
    pieces = ENDGAME_PIECES[kind]
    while True:
        squares = rng.choice(64, size=2 + len(pieces), replace=False)
        board = chess.Board(None)
        board.set_piece_at(int(squares[0]), chess.Piece(chess.KING, chess.WHITE))
        board.set_piece_at(int(squares[1]), chess.Piece(chess.KING, chess.BLACK))
        for sq, symbol in zip(squares[2:], pieces, strict=True):
            board.set_piece_at(int(sq), chess.Piece.from_symbol(symbol))
        board.turn = chess.WHITE
        if board.is_valid() and not board.is_check() and not board.is_game_over():
            return board


def load_positions(path: str | Path) -> list[dict[str, Any]]:
    """A positions file: one JSON value per line, an object with ``fen`` or a FEN string.

    Every FEN is checked with :func:`start_position`; errors name the file, line and FEN.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e})") from None
            record = {"fen": value} if isinstance(value, str) else value
            if not isinstance(record, dict) or not isinstance(record.get("fen"), str):
                raise ValueError(f"{where}: expected a FEN string or an object with 'fen'")
            board = start_position(record["fen"], where)
            records.append({**record, "type": record.get("type") or position_type(board)})
    if not records:
        raise ValueError(f"{path}: no positions")
    return records


@functools.lru_cache(maxsize=4)
def _positions_and_keys(path: str) -> tuple[tuple[dict[str, Any], ...], frozenset]:
    records = load_positions(path)
    keys = frozenset(position_key(chess.Board(r["fen"])) for r in records)
    return tuple(records), keys


def training_endgame(rng: np.random.Generator, types: Sequence[str], eval_keys: frozenset
                     ) -> tuple[chess.Board, str]:
    """A random training position: type uniform over ``types``, never an evaluation position."""
    while True:
        kind = types[int(rng.integers(len(types)))]
        board = random_endgame(rng, kind)
        if position_key(board) not in eval_keys:
            return board, kind


# --- opponents --------------------------------------------------------------------------------
def parse_opponent(spec: str) -> Strength | None:
    """``stockfish-elo-seeded:<E>`` / ``stockfish-elo:<E>[:<ms>]`` / ``stockfish-nodes:<N>`` ->
    a Strength; ``random`` -> None."""
    if spec == "random":
        return None
    if not spec.startswith("stockfish-"):
        raise ValueError(
            f"unknown opponent {spec!r}; expected 'stockfish-elo-seeded:<E>', "
            "'stockfish-elo:<E>[:<ms>]', 'stockfish-nodes:<N>' or 'random'"
        )
    if spec.startswith("stockfish-elo-seeded:"):
        elo = spec.removeprefix("stockfish-elo-seeded:")
        if not re.fullmatch(r"\d+", elo):
            raise ValueError(f"opponent {spec!r}: expected 'stockfish-elo-seeded:<E>', E an Elo")
        return Strength("elo-seeded", int(elo))
    strength = parse_strength(spec.removeprefix("stockfish-"), default_move_time=0.1)
    if strength.kind == "skill":
        raise ValueError(f"opponent {spec!r}: use stockfish-elo or stockfish-nodes")
    return strength


# --- the env ----------------------------------------------------------------------------------
class ChessEnv(TextEnv):
    """White against Stockfish from the start (``game``) or from won endgames (``endgame``)."""

    return_range = (-float(MAX_STEPS), 1.0)
    action_set_in_info = True
    play_help = (
        "You play White against Stockfish. The position is the FEN with its characters spaced\n"
        "(upper case White, lower case Black, ranks 8 to 1 from the left).\n"
        "Action: a move in SAN or UCI. Examples: e4, Nf3, O-O, e2e4, e7e8q\n"
        "Rewards: +1 for checkmating, -1 for being checkmated, -1 for an illegal move (the\n"
        "position stays), 0 otherwise."
    )

    def __init__(
        self,
        mode: str = "game",
        opponent: str = DEFAULT_OPPONENT,
        types: Sequence[str] | None = None,
        eval_positions: str | Path | None = None,
        max_steps: int = MAX_STEPS,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if mode not in ("game", "endgame"):
            raise ValueError(f"mode must be 'game' or 'endgame', got {mode!r}")
        self.mode = mode
        self.types = tuple(types or ENDGAME_PIECES)
        unknown = [t for t in self.types if t not in ENDGAME_PIECES]
        if unknown:
            raise ValueError(f"unknown endgame types {unknown}; valid: {list(ENDGAME_PIECES)}")
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.max_steps = max_steps
        self.return_range = (-float(max_steps), 1.0)
        self.reward_range = self.return_range
        self.eval_positions = str(eval_positions or EVAL_SET)
        if mode == "endgame":  # load (and validate) now, so a bad file fails at make()
            _positions_and_keys(self.eval_positions)
        self.opponent = opponent
        self._strength = parse_opponent(opponent)
        self._engine: Stockfish | None = None
        if self._strength is not None:
            self._engine = Stockfish()
            try:
                self._engine.set_strength(self._strength)  # checks the Elo range now
            except ValueError:
                self._engine.close()
                raise
            self.deterministic = self._strength.deterministic
        #: Engine name, options and search limit (None for ``random``); shown as info["engine"].
        self.engine_info = None if self._engine is None else self._engine.info()
        self._board = chess.Board()
        self._rng = np.random.default_rng(0)
        self._steps = 0
        self._position_type: str | None = None
        # Of the current position, computed once (each needs a legal-move generation, and the
        # outcome a repetition check): the outcome, and its legal moves' SAN (None until asked).
        self._outcome: chess.Outcome | None = None
        self._sans: dict[chess.Move, str] | None = None

    # --- state for behaviour policies (privileged) ------------------------------------------
    @property
    def board(self) -> chess.Board:
        """A copy of the current board."""
        return self._board.copy()

    def action_set(self) -> tuple[str, ...]:
        """White's legal moves in spaced SAN (``"N f 3"``), in python-chess's move order."""
        return tuple(spaced(san) for san in self._legal_sans().values())

    def _legal_sans(self) -> dict[chess.Move, str]:
        if self._sans is None:
            self._sans = legal_sans(self._board)
        return self._sans

    def _moved(self) -> None:
        """The position changed: recompute its outcome, forget its legal moves."""
        self._outcome = self._board.outcome(claim_draw=False)
        self._sans = None

    def _parse(self, action: str) -> chess.Move | None:
        """:func:`parse_move`, with a lookup first: a legal move's exact SAN (the spelling of
        ``action_set``) names that move, so python-chess's parser is needed only otherwise."""
        if self._sans is not None:
            text = "".join(action.split())
            for move, san in self._sans.items():
                if san == text:
                    return move
        return parse_move(self._board, action)

    @property
    def engine_pid(self) -> int | None:
        """Process id of the opponent engine (None for ``random`` or before it starts)."""
        return None if self._engine is None else self._engine.pid

    # --- TextEnv hooks ----------------------------------------------------------------------
    @staticmethod
    def context_turns(turns: Sequence[Turn]) -> list[Turn]:
        return list(turns[-1:])  # the current position only

    @classmethod
    def evaluation_resets(cls, n_episodes: int, **env_kwargs: Any) -> list[tuple[int, dict]]:
        """Chess: seeds 0..n-1 from the start. Endgames: position i with seed i (cycling)."""
        if env_kwargs.get("mode", "game") != "endgame":
            return [(i, {}) for i in range(n_episodes)]
        n_positions = len(_positions_and_keys(str(env_kwargs.get("eval_positions") or EVAL_SET))[0])
        return [(i, {"eval_index": i % n_positions}) for i in range(n_episodes)]

    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        unknown = set(options) - {"fen", "eval_index"}
        if unknown or ("eval_index" in options and self.mode != "endgame"):
            valid = "'fen', 'eval_index'" if self.mode == "endgame" else "'fen'"
            raise ValueError(f"unknown reset options {sorted(options)}; valid: {valid}")
        self._rng = rng
        if "fen" in options:
            self._board = start_position(options["fen"])
            self._position_type = position_type(self._board) if self.mode == "endgame" else None
        elif "eval_index" in options:
            records, _ = _positions_and_keys(self.eval_positions)
            i = options["eval_index"]
            if not isinstance(i, int) or not 0 <= i < len(records):
                raise ValueError(f"eval_index must be an int in 0..{len(records) - 1}, got {i!r}")
            self._board = chess.Board(records[i]["fen"])
            self._position_type = records[i]["type"]
        elif self.mode == "endgame":
            _, eval_keys = _positions_and_keys(self.eval_positions)
            self._board, self._position_type = training_endgame(rng, self.types, eval_keys)
        else:
            self._board = chess.Board()
            self._position_type = None
        self._steps = 0
        self._moved()
        if self._engine is not None:
            self._engine.new_game()
        info = self._position_info(opponent_move=None)
        return fen_text(info["fen"]), info

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self._steps += 1
        at_cap = self._steps >= self.max_steps
        move = self._parse(action)
        if move is None:
            info = self._position_info(opponent_move=None)
            reason = "not a legal move in this position (SAN such as Nf3, or UCI such as g1f3)"
            info.update(illegal=True, illegal_reason=reason)
            return fen_text(info["fen"]), -1.0, False, at_cap, info
        stored = spaced(self._legal_sans()[move]) + "\n"
        self._board.push(move)
        self._moved()
        reward, reply, error = 0.0, None, None
        if _is_mate(self._outcome):
            reward = 1.0
        elif self._outcome is None:
            try:
                reply_move = self._opponent_move()
            except EngineError as e:
                error = str(e)
            else:
                reply = self._board.san(reply_move)
                self._board.push(reply_move)
                self._moved()
                reward = -1.0 if _is_mate(self._outcome) else 0.0
        terminated = error is None and self._outcome is not None
        info = {**self._position_info(opponent_move=reply), "action": stored}
        if error is not None:
            info["engine_error"] = error
        truncated = not terminated and (at_cap or error is not None)
        info["success"] = info["winner"] == "white"
        return fen_text(info["fen"]), reward, terminated, truncated, info

    # --- helpers ----------------------------------------------------------------------------
    def _opponent_move(self) -> chess.Move:
        if self._engine is None:
            moves = list(self._board.legal_moves)
            return moves[int(self._rng.integers(len(moves)))]
        return self._engine.play(self._board, rng=self._rng)

    def _position_info(self, opponent_move: str | None) -> dict[str, Any]:
        info = {
            "fen": self._board.fen(),
            "opponent_move": opponent_move,
            "outcome": _termination(self._outcome),
            "winner": _winner(self._outcome),
            "opponent": self.opponent,
            "engine": copy.deepcopy(self.engine_info),  # fresh per call (Gymnasium contract)
        }
        if self.mode == "endgame":
            info["position_type"] = self._position_type
        return info

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        super().close()
