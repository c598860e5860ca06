"""Stockfish over UCI for the chess envs and the chess behaviour policies (docs/tasks.md §5).

One :class:`Stockfish` object owns one engine process: started lazily, configured with the
spec's fixed options (``Threads=1``, ``Hash=16``), given a fresh game (``ucinewgame``) on
request, and closed by ``close()``, by garbage collection or at interpreter exit, so no engine
outlives its owner. Every engine call has a watchdog: an engine that dies or stops answering
raises :class:`EngineError` (never a hang) and is discarded; the next call starts a new one.

Strength settings are parsed here once for both users:

- ``elo:<E>``: ``UCI_LimitStrength`` with ``UCI_Elo=E`` (Stockfish 15.1 accepts 1350-2850).
  Stockfish then picks a weakened move with a PRNG seeded from the clock, so it is
  nondeterministic. In 15.1 the pick happens once depth ``1 + int(level)`` is reached, and
  Elo 1350 gives level ~0.01, so the choice is made at depth 1 and a longer move time does not
  change the move distribution (src/search.cpp, ``Skill::time_to_pick``).
- ``skill:<0..20>``: the ``Skill Level`` option, the same weakening on the older scale
  (nondeterministic below 20).
- ``nodes:<N>``: full strength with ``N`` nodes per move: deterministic for one engine build
  when every game starts from a fresh hash.
- ``elo-seeded:<E>`` (opponents only): the ``elo:<E>`` weakening made reproducible. The engine
  plays at full strength and searches, from a fresh hash, to the depth where Stockfish 15.1
  makes its weakened pick (``1 + int(level)``) with four principal variations; lmrlgym then
  applies Stockfish's pick formula (:func:`skill_pick`) with draws from the episode's seeded
  generator instead of the engine's clock-seeded one. Differences from the engine's own pick:
  the draws, and the hash (Stockfish keeps it between the moves of a game, so its shallow
  scores can reuse deeper ones).
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import re
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from lmrlgym.registry import DependencyNotInstalled, find_binary

ENV_VAR = "LMRLGYM_STOCKFISH"
INSTALL_HINT = (
    "install it with `apt-get install stockfish` (Debian/Ubuntu; the binary lands in "
    f"/usr/games) or set {ENV_VAR} to the path of a Stockfish binary"
)
#: Fixed engine options of every search (docs/tasks.md §5): one thread, so a node budget gives the
#: same search on every machine; a small hash, so 2-core machines can run several engines.
BASE_OPTIONS: dict[str, Any] = {"Threads": 1, "Hash": 16}
#: Seconds an engine may take beyond the requested move time before it is declared hung.
#: Node-limited searches have no move time; a 1e6-node search takes ~1-2 s on one slow core.
WATCHDOG_SECONDS = 30.0


class EngineError(RuntimeError):
    """The engine process could not be started, died, or stopped answering."""


@dataclasses.dataclass(frozen=True)
class Strength:
    """How hard an engine plays: ``kind`` is ``elo``, ``skill`` or ``nodes``."""

    kind: str
    value: int
    #: Seconds per move for ``elo``/``skill`` (None: use ``nodes``); ``nodes`` limits the search.
    move_time: float | None = None
    nodes: int | None = None

    @property
    def deterministic(self) -> bool:
        return self.kind in ("nodes", "elo-seeded") or (self.kind == "skill" and self.value == 20)

    def options(self) -> dict[str, Any]:
        """UCI options selecting this strength (every option is set, so none leaks over)."""
        return {
            "UCI_LimitStrength": self.kind == "elo",
            "UCI_Elo": self.value if self.kind == "elo" else 1350,
            "Skill Level": self.value if self.kind == "skill" else 20,
        }

    def limit(self) -> Any:
        import chess.engine

        if self.kind == "nodes":
            return chess.engine.Limit(nodes=self.value)
        if self.kind == "elo-seeded":
            return chess.engine.Limit(depth=1 + int(skill_level(self.value)))
        if self.nodes is not None:
            return chess.engine.Limit(nodes=self.nodes)
        return chess.engine.Limit(time=self.move_time)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_strength(text: str, default_move_time: float = 0.1, default_nodes: int | None = None
                   ) -> Strength:
    """``"elo:1350"``, ``"elo:1350:100"`` (ms per move), ``"skill:5"`` or ``"nodes:2000"``.

    ``elo``/``skill`` searches are limited by ``default_nodes`` when given, else by time.
    Ranges are checked against the engine's advertised ones by :meth:`Stockfish.set_strength`.
    """
    m = re.fullmatch(r"(elo|skill|nodes):(\d+)(?::(\d+))?", text.strip())
    if not m or (m.group(1) == "nodes" and m.group(3)):
        raise ValueError(
            f"bad engine strength {text!r}; expected elo:<E>[:<ms>], skill:<0-20> or nodes:<N>"
        )
    kind, value = m.group(1), int(m.group(2))
    if kind == "nodes":
        if value <= 0:
            raise ValueError(f"node budget must be positive in {text!r}")
        return Strength("nodes", value)
    if kind == "skill" and not 0 <= value <= 20:
        raise ValueError(f"skill level must be in 0..20, got {value} in {text!r}")
    if m.group(3):
        ms = int(m.group(3))
        if ms <= 0:
            raise ValueError(f"move time must be positive (ms) in {text!r}")
        return Strength(kind, value, move_time=ms / 1000)
    if default_nodes is not None:
        return Strength(kind, value, nodes=default_nodes)
    return Strength(kind, value, move_time=default_move_time)


# --- Stockfish 15.1's weakened move choice, with the caller's draws -----------------------------
#: Stockfish 15.1's constants (src/types.h, src/uci.h): a middlegame pawn and the internal value
#: of 100 reported centipawns, the mate value.
PAWN_VALUE_MG = 126
NORMALIZE_TO_PAWN_VALUE = 361
VALUE_MATE = 32000
#: Principal variations searched for the weakened pick (Stockfish uses at least 4).
SKILL_MULTIPV = 4


def skill_level(elo: int) -> float:
    """The skill level Stockfish 15.1 derives from ``UCI_Elo`` (src/search.cpp, ``Skill``):
    ~0.01 at Elo 1350, 18.5 at 2850 (the engine is weakened below level 20)."""
    return min(max((elo - 1346.6) / 143.4, 0.0) ** (1 / 0.806), 20.0)


def internal_value(score: Any) -> int:
    """A python-chess score (side to move's view) in Stockfish's internal units: centipawns
    times 3.61, and a mate in n moves as ``VALUE_MATE`` minus its plies (the inverse of
    ``UCI::value``, exact up to the centipawn rounding)."""
    mate = score.mate()
    if mate is not None:
        return VALUE_MATE + 1 - 2 * mate if mate > 0 else -VALUE_MATE - 2 * mate
    return round(score.score() * NORMALIZE_TO_PAWN_VALUE / 100)


def skill_pick(scored: Sequence[tuple[Any, int]], level: float, draws: Sequence[int]) -> Any:
    """Stockfish 15.1's weakened choice (src/search.cpp, ``Skill::pick_best``) among the
    principal variations ``scored`` (move, internal value), best first, with one unsigned
    32-bit draw per move. Each score gets a push toward the best one,
    ``(weakness·(top − score) + delta·(draw mod ⌊weakness⌋)) / 128`` with weakness
    ``120 − 2·level`` and delta ``min(top − worst, PAWN_VALUE_MG)``; the highest pushed score
    wins, ties going to the later move. At level ~0 the pick is close to uniform among the
    moves within about a pawn of the best."""
    if not scored or len(draws) != len(scored):
        raise ValueError(f"need one draw per move: {len(scored)} moves, {len(draws)} draws")
    top = scored[0][1]
    delta = min(top - scored[-1][1], PAWN_VALUE_MG)
    weakness = 120 - 2 * level
    best, best_value = None, None
    for (move, value), draw in zip(scored, draws, strict=True):
        push = int((weakness * (top - value) + delta * (draw % int(weakness))) / 128)
        if best_value is None or value + push >= best_value:
            best, best_value = move, value + push
    return best


def stockfish_path() -> str:
    """The engine binary: ``$LMRLGYM_STOCKFISH``, else ``stockfish`` on PATH, else /usr/games."""
    path = find_binary("stockfish", ENV_VAR)
    if path is None:
        raise DependencyNotInstalled(f"Stockfish not found; {INSTALL_HINT}")
    return path


class _Box:
    """Holds the live ``SimpleEngine`` (or None); shared by an owner and its finalizer."""

    engine: Any = None


def _shutdown(box: _Box) -> None:
    # Module-level so the finalizer holds no reference to the owner (else it never runs).
    engine, box.engine = box.engine, None
    if engine is None:
        return
    try:
        engine.quit()  # waits for the process to exit, so it is reaped (no zombie)
    except Exception:  # noqa: BLE001  (already dead or hung: closing the transport kills it)
        engine.close()


_LIVE: weakref.WeakSet[_Box] = weakref.WeakSet()


def _shutdown_all() -> None:
    for box in list(_LIVE):
        _shutdown(box)


# python-chess runs each engine's event loop on a non-daemon thread, and the interpreter joins
# non-daemon threads *before* ordinary atexit handlers (and weakref finalizers) run: an engine
# left open would hang the exit. threading's own pre-join hook (the one concurrent.futures
# uses) closes them first; plain atexit is the fallback should that hook ever disappear.
getattr(threading, "_register_atexit", atexit.register)(_shutdown_all)


class Stockfish:
    """One Stockfish process, restarted on demand after a crash; see the module docstring."""

    def __init__(self, path: str | None = None):
        self.path = path or stockfish_path()
        self._box = _Box()
        _LIVE.add(self._box)
        self._finalizer = weakref.finalize(self, _shutdown, self._box)
        self._strength: Strength | None = None
        self._game: object = object()
        self.restarts = 0

    # --- process ------------------------------------------------------------------------
    def _engine(self) -> Any:
        if self._box.engine is None:
            self._box.engine = self._start()
            if self._strength is not None:
                self._box.engine.configure(self._strength.options())
        return self._box.engine

    def _start(self) -> Any:
        import chess.engine

        try:
            engine = chess.engine.SimpleEngine.popen_uci(self.path, timeout=WATCHDOG_SECONDS)
        except (OSError, chess.engine.EngineError, asyncio.TimeoutError) as e:
            raise EngineError(
                f"could not start Stockfish at {self.path!r} ({type(e).__name__}: {e}); "
                f"{INSTALL_HINT}"
            ) from e
        try:
            engine.configure(BASE_OPTIONS)
        except Exception as e:
            engine.close()
            raise EngineError(f"{self.path!r} rejected options {BASE_OPTIONS}: {e}") from e
        return engine

    @property
    def pid(self) -> int | None:
        """Process id of the running engine (None when not started)."""
        engine = self._box.engine
        return None if engine is None else engine.transport.get_pid()

    @property
    def name(self) -> str:
        """The engine's UCI ``id name``, e.g. ``Stockfish 15.1``."""
        return self._call(lambda e: e.id.get("name", "unknown"))

    def option_range(self, name: str) -> tuple[int, int]:
        opt = self._call(lambda e: e.options[name])
        return int(opt.min), int(opt.max)

    def close(self) -> None:
        """Stop the engine process (idempotent; a later call starts a new one)."""
        _shutdown(self._box)

    # --- games --------------------------------------------------------------------------
    def set_strength(self, strength: Strength) -> None:
        """Configure a strength, checking Elo/skill against the engine's advertised range."""
        if strength == self._strength:
            return
        if strength.kind in ("elo", "elo-seeded", "skill"):
            option = "Skill Level" if strength.kind == "skill" else "UCI_Elo"
            lo, hi = self.option_range(option)
            if not lo <= strength.value <= hi:
                raise ValueError(
                    f"{strength.kind} {strength.value} is outside {self.name}'s {option} range "
                    f"{lo}..{hi}"
                )
        self._strength = strength
        self._call(lambda e: e.configure(strength.options()))

    def new_game(self) -> None:
        """The next search starts a new game: python-chess sends ``ucinewgame`` (clears hash)."""
        self._game = object()

    def play(self, board: Any, strength: Strength | None = None, rng: Any = None) -> Any:
        """The engine's move in ``board`` at ``strength`` (default: the last one set);
        ``elo-seeded`` draws its pick from ``rng`` (a numpy Generator)."""
        if strength is not None:
            self.set_strength(strength)
        if self._strength is None:
            raise ValueError("no strength set; call set_strength() first")
        limit = self._strength.limit()
        if self._strength.kind == "elo-seeded":
            if rng is None:
                raise ValueError(f"{self._strength} needs a seeded generator (rng=...)")
            infos = self.analyse(board, limit, multipv=SKILL_MULTIPV)
            scored = [(i["pv"][0], internal_value(i["score"].relative)) for i in infos if i.get("pv")]
            if not scored:
                raise EngineError(f"Stockfish returned no variation for {board.fen()!r}")
            scored.sort(key=lambda move_value: -move_value[1])  # as Stockfish's root moves
            draws = rng.integers(2**32, size=len(scored)).tolist()
            return skill_pick(scored, skill_level(self._strength.value), draws)
        game = self._game
        result = self._call(
            lambda e: _run(e, lambda: e.protocol.play(board, limit, game=game), limit)
        )
        if result.move is None:
            raise EngineError(f"Stockfish returned no move for {board.fen()!r}")
        return result.move

    def analyse(self, board: Any, limit: Any, multipv: int | None = None) -> Any:
        """``go`` with ``limit`` in a fresh game; returns python-chess's info dict (a list of
        them, best first, with ``multipv``)."""
        self.new_game()
        game = self._game
        return self._call(lambda e: _run(
            e, lambda: e.protocol.analyse(board, limit, multipv=multipv, game=game), limit))

    def info(self) -> dict[str, Any]:
        """Name, path and options in force, for ``info["engine"]`` and manifests."""
        strength = self._strength
        info = {
            "name": self.name,
            "options": {**BASE_OPTIONS, **(strength.options() if strength else {})},
            "limit": None if strength is None else _limit_text(strength.limit()),
        }
        if strength is not None and strength.kind == "elo-seeded":
            info["pick"] = (f"Skill::pick_best at Elo {strength.value} (level "
                            f"{skill_level(strength.value):.4f}) over {SKILL_MULTIPV} PVs, "
                            "seeded draws")
        return info

    def _call(self, fn: Any) -> Any:
        import chess.engine

        engine = self._engine()
        try:
            return fn(engine)
        except (chess.engine.EngineError, asyncio.TimeoutError, TimeoutError) as e:
            # Dead or hung: discard this process (killing it if needed); the next call restarts.
            pid = engine.transport.get_pid()
            self._box.engine = None
            self.restarts += 1
            engine.close()
            raise EngineError(
                f"Stockfish (pid {pid}) died or stopped answering ({type(e).__name__}: {e}); "
                "it will be restarted on next use"
            ) from e


def _run(engine: Any, make_coro: Any, limit: Any) -> Any:
    # SimpleEngine.play has no timeout for node limits; this wraps every search in a watchdog.
    import chess.engine

    loop = engine.protocol.loop
    if loop.is_closed() or engine.returncode.done():  # python-chess saw the process exit
        raise chess.engine.EngineTerminatedError("engine process has exited")
    inner = make_coro()
    outer = asyncio.wait_for(inner, WATCHDOG_SECONDS + (limit.time or 0.0))
    try:
        future = asyncio.run_coroutine_threadsafe(outer, loop)
    except RuntimeError as e:  # the loop closed in between: the process just died
        outer.close()
        inner.close()
        raise chess.engine.EngineTerminatedError(f"engine event loop closed ({e})") from e
    return future.result()


def _limit_text(limit: Any) -> str:
    if limit.nodes is not None:
        return f"nodes={limit.nodes}"
    if limit.depth is not None:
        return f"depth={limit.depth}"
    return f"movetime={int(round(limit.time * 1000))}ms"
