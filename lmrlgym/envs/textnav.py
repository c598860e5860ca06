"""Text-Nav: a TextWorld house adventure (``TextNav-FO-v0``, ``TextNav-PO-v0``).

Description
-----------
Carry the stale food from the living-room table to the kitchen fridge and close the fridge, in
an eight-room house built and played with the real TextWorld engine (PyPI ``textworld``, pinned
to 1.7.0). Fully observed (FO) texts also name the room and the inventory; partially observed
(PO) ones do not. Tests credit assignment and stitching with rich language (docs/tasks.md §3)::

                     garden
                       |
    backyard - kitchen - dining room - living room - bedroom
                                          |              |
                                        office   -   bathroom

Observation
-----------
TextWorld's feedback, cleaned by :func:`clean_feedback` (banner, ``-= Room =-`` headers, the
prompt/status line, the score summary and the restart question dropped; lines stripped; blank
runs collapsed). The reset text starts with the objective line :data:`OBJECTIVE` and a blank line.
Room descriptions never name their room (their first paragraph is dropped when the game is
built). On a non-final step a blank line follows, then (FO only) ``You are in the <room>.
<inventory sentence>`` and ``Admissible commands: <c1>, <c2>, ...`` (TextWorld's sorted list
without commands containing ``examine``, ``look`` or ``inventory``). The final step shows the
cleaned feedback only. The window is the whole transcript.

Action
------
One free-text command, stripped and sent to TextWorld (case-insensitive). A refused command gets
the engine's refusal (``You can't see any such thing.``, ``That's not a verb I recognise.``) and
uses a turn; ``info["illegal"]`` is True when the command is not in TextWorld's full admissible
list. Characters outside printable ASCII (and backslashes) become spaces and the command is cut
at 190 characters before it reaches the interpreter (a NUL byte kills it). Commands that would
desynchronise TextWorld's state tracking never reach the engine and get Inform's own refusals:
several actions in one line (``.``, ``,``, ``;``, ``then``, ``and``, ``all``, ...) get ``You
can't use multiple objects with that verb.``; interpreter meta commands (``undo``, ``restart``,
``quit``, ``save``, ``restore``, ``script``, TextWorld's ``tw-`` debug commands, ...) get
``That's not a verb I recognise.``.

Rewards
-------
1 on the winning step (the stale food is in the closed fridge), else 0 (the losing step
included). Return range [0, 1].

Episode End
-----------
Win or loss (the stale food eaten): ``terminated``. ``max_turns`` (15) agent turns without
either: ``truncated``. The optimal length is ``d(start, living room) + 6`` (:func:`walkthrough`).

Arguments
---------
``observability``: ``"full"`` or ``"partial"``; ``max_turns`` (default 15). Reset option
``{"start_room": <room>}`` (one of :data:`ROOMS`; default uniform from the seed). Extra info keys:
``room``, ``inventory`` (sorted item names), ``won``, ``lost``, ``admissible_commands``
(TextWorld's full list). The compiled game lives in ``$LMRLGYM_CACHE/textnav/<hash>`` (default
``~/.cache/lmrlgym``), built once (about 10 s) and shared by every process.

Differences from LMRL-Gym
-------------------------
1. Stock TextWorld from PyPI instead of the authors' fork, so the prose differs from the original
   data; PO hides the room by dropping the room-naming paragraph (the fork had a grammar switch).
2. Compiled once (one variant per start room, cached on disk); the original recompiled the game
   on every reset.
3. A 15-turn limit in the env; the original env had none (only its data collection stopped).
4. The start room comes from the reset seed (original: unseeded).
5. Cleaning, the FO room/inventory line, the final-step text and the objective wording are
   defined here; the original appended an extra ``inventory`` command's text to FO feedback.
6. Reward 1 on the winning step only; the original returned the cumulative score every step.
7. The original ``reset``/``step`` were broken; this is the intended behaviour.
8. Multi-action lines and interpreter meta commands are refused before the engine (see Action).

References
----------
Abdulhai et al., "LMRL Gym: Benchmarks for Multi-Turn Reinforcement Learning with Language
Models" (2023); original code ``llm_rl_scripts/text_nav`` (MIT). Côté et al., "TextWorld: A
Learning Environment for Text-based Games" (2018).

Version History
---------------
v0: initial release (docs/tasks.md §3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.registry import DependencyNotInstalled

# --- the house (docs/tasks.md §3) ---------------------------------------------------------------
#: The eight rooms, in the order of the evaluation protocol (room index i -> seeds 32*i + k).
ROOMS: tuple[str, ...] = (
    "living room", "bedroom", "office", "dining room",
    "bathroom", "kitchen", "garden", "backyard",
)  # fmt: skip
#: Two-way exits ``(room, direction, neighbour)``.
EXITS: tuple[tuple[str, str, str], ...] = (
    ("kitchen", "north", "garden"),
    ("kitchen", "west", "backyard"),
    ("dining room", "west", "kitchen"),
    ("living room", "west", "dining room"),
    ("bedroom", "west", "living room"),
    ("living room", "south", "office"),
    ("bedroom", "south", "bathroom"),
    ("bathroom", "west", "office"),
)
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
#: Furniture ``(name, TextWorld type, room)``: s = supporter, c = container (starts closed).
FURNITURE: tuple[tuple[str, str, str], ...] = (
    ("table", "s", "bedroom"),
    ("table", "s", "living room"),
    ("table", "s", "dining room"),
    ("chest", "c", "office"),
    ("fridge", "c", "kitchen"),
)
#: Portable items ``(name, TextWorld type, (furniture, room))``: f = food (edible), o = object.
ITEMS: tuple[tuple[str, str, tuple[str, str]], ...] = (
    ("stale food", "f", ("table", "living room")),
    ("fresh food", "f", ("table", "living room")),
    ("bowl", "o", ("table", "bedroom")),
    ("coffee cup", "o", ("table", "dining room")),
    ("plate", "o", ("table", "dining room")),
    ("utensils", "o", ("chest", "office")),
    ("fruit", "f", ("fridge", "kitchen")),
)
TARGET, TARGET_ROOM, GOAL_ROOM = "stale food", "living room", "kitchen"
OBJECTIVE = (
    "Your task: take the stale food from the table in the living room, put it in the fridge in "
    "the kitchen, and close the fridge."
)
#: Every TextWorld generation seed (grammar, quest, ...): the prose is identical in every process.
GENERATION_SEED = 1234
GRAMMAR = {
    "theme": "house",
    "include_adj": False,
    "only_last_action": True,
    "blend_instructions": True,
    "blend_descriptions": True,
}
#: Bumped whenever the build below changes, so old caches are not reused.
BUILD_VERSION = 2
MAX_TURNS = 15
WIN_REWARD = 1.0
HIDDEN_WORDS = ("examine", "look", "inventory")  # commands left out of the shown list

# Inform's separators and multi-object words: such a line runs several actions in one turn, which
# TextWorld's state tracker (admissible commands) misses, so it never reaches the engine.
_MULTI_ACTION = re.compile(r"[.,;]|\b(then|and|all|everything|both|except|but)\b")
# Interpreter meta commands: they restart, save/restore or reconfigure the story outside the
# tracked game state (TextWorld's own ``tw-`` commands included).
_META_VERBS = frozenset(
    "undo oops o restart quit q die save restore script unscript transcript noscript".split()
)
MULTI_ACTION_REFUSAL = "You can't use multiple objects with that verb."
META_REFUSAL = "That's not a verb I recognise."
MAX_COMMAND_CHARS = 190  # Jericho truncates (with a warning) at 198 bytes
_HEADER = re.compile(r"^-= .* =-$")


# --- pure rules ------------------------------------------------------------------------------
@functools.cache
def exits() -> dict[str, dict[str, str]]:
    """``room -> {direction: neighbour}`` for the two-way exits."""
    graph: dict[str, dict[str, str]] = {room: {} for room in ROOMS}
    for room, direction, neighbour in EXITS:
        graph[room][direction] = neighbour
        graph[neighbour][OPPOSITE[direction]] = room
    return graph


def shortest_path(start: str, goal: str) -> list[str]:
    """Directions of a shortest walk (BFS; ties broken by direction name, so deterministic)."""
    parents: dict[str, tuple[str, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        room = queue.popleft()
        for direction, neighbour in sorted(exits()[room].items()):
            if neighbour not in parents:
                parents[neighbour] = (room, direction)
                queue.append(neighbour)
    path: list[str] = []
    node = goal
    while parents[node] is not None:
        node, direction = parents[node]  # type: ignore[misc]
        path.append(direction)
    return path[::-1]


def walkthrough(start: str) -> list[str]:
    """The optimal command sequence from ``start`` (docs/tasks.md §3)."""
    to_food = [f"go {d}" for d in shortest_path(start, TARGET_ROOM)]
    to_fridge = [f"go {d}" for d in shortest_path(TARGET_ROOM, GOAL_ROOM)]
    return [
        *to_food,
        "take stale food from table",
        *to_fridge,
        "open fridge",
        "insert stale food into fridge",
        "close fridge",
    ]


def optimal_length(start: str) -> int:
    return len(walkthrough(start))


def shown_commands(admissible: Sequence[str]) -> list[str]:
    """The admissible commands shown to the agent: without examine / look / inventory."""
    return [c for c in admissible if not any(w in c for w in HIDDEN_WORDS)]


def canonical_command(command: str) -> str:
    """Lower case with single spaces, the spelling of TextWorld's admissible commands."""
    return " ".join(command.lower().split())


def refusal(command: str) -> str | None:
    """The refusal of a command kept from the engine (see the module card), else None."""
    words = canonical_command(command).split()
    if words and (words[0] in _META_VERBS or words[0].startswith("tw-")):
        return META_REFUSAL
    if _MULTI_ACTION.search(command.lower()):
        return MULTI_ACTION_REFUSAL
    return None


def engine_command(command: str) -> str:
    """What the interpreter receives: printable ASCII only, at most 190 characters."""
    # Frotz's dumb terminal reads a backslash as the start of its own escape commands.
    safe = "".join(c if " " <= c <= "~" and c != "\\" else " " for c in command)
    return safe.strip()[:MAX_COMMAND_CHARS]


def clean_feedback(text: str) -> str:
    """TextWorld's feedback without banner, headers, prompt/status line and end-of-game summary."""
    if OBJECTIVE in text:  # the reset text: drop the title banner before the objective
        text = text[text.index(OBJECTIVE) :]
    lines: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if raw.lstrip().startswith(">"):  # the prompt, followed by the status line
            break
        if _HEADER.match(line) or line.startswith(("You scored ", "Would you like to RESTART")):
            continue
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip()


def compose_text(
    feedback: str, room: str, inventory_sentence: str, admissible: Sequence[str], full: bool
) -> str:
    """One env text: cleaned feedback, then (non-final steps) the FO line and the command list."""
    parts = [feedback] if feedback else []
    tail = []
    if full:
        tail.append(f"You are in the {room}. {' '.join(inventory_sentence.split())}")
    tail.append("Admissible commands: " + ", ".join(shown_commands(admissible)))
    parts.append("\n".join(tail))
    return "\n\n".join(parts) + "\n"


@dataclasses.dataclass(frozen=True)
class HouseState:
    """The true game state a scripted policy may read (privileged: PO texts do not show it)."""

    room: str
    inventory: tuple[str, ...]
    #: Where the stale food is: ``("carried", None)``, ``("eaten", None)``,
    #: ``(room, "table" | "chest" | "fridge" | None)`` (None: on the floor).
    target_at: tuple[str, str | None]
    open_containers: frozenset[str]


def walkthrough_command(state: HouseState) -> str:
    """The next walkthrough command from any state (also after random detours)."""
    place, holder = state.target_at
    if place == "eaten":
        return "look"  # lost: nothing left to do (the episode has ended)
    if place == "carried":
        if state.room != GOAL_ROOM:
            return f"go {shortest_path(state.room, GOAL_ROOM)[0]}"
        if "fridge" not in state.open_containers:
            return "open fridge"
        return "insert stale food into fridge"
    if holder == "fridge" and place == GOAL_ROOM:
        if state.room != GOAL_ROOM:
            return f"go {shortest_path(state.room, GOAL_ROOM)[0]}"
        return "close fridge"
    if state.room != place:
        return f"go {shortest_path(state.room, place)[0]}"
    if holder is None:
        return "take stale food"
    if holder in ("chest", "fridge") and holder not in state.open_containers:
        return f"open {holder}"
    return f"take stale food from {holder}"


# --- building and caching the game ------------------------------------------------------------
def _textworld() -> Any:
    try:
        import textworld
    except ImportError:
        raise DependencyNotInstalled(
            'Text-Nav needs TextWorld: pip install "lmrlgym[textnav]"'
        ) from None
    return textworld


def game_definition() -> dict[str, Any]:
    """Everything the compiled files depend on; its hash names the cache directory."""
    textworld = _textworld()
    return {
        "rooms": ROOMS,
        "exits": EXITS,
        "furniture": FURNITURE,
        "items": ITEMS,
        "objective": OBJECTIVE,
        "grammar": GRAMMAR,
        "seed": GENERATION_SEED,
        "build_version": BUILD_VERSION,
        "textworld": textworld.__version__,
    }


def cache_root() -> Path:
    base = os.environ.get("LMRLGYM_CACHE") or Path.home() / ".cache" / "lmrlgym"
    return Path(base) / "textnav"


def _room_slug(room: str) -> str:
    return room.replace(" ", "_")


def build_game() -> Any:
    """The house as a ``textworld.Game`` (player in the living room; variants move them)."""
    textworld = _textworld()
    from textworld.generator.game import Event, Quest
    from textworld.generator.text_grammar import GrammarOptions

    options = textworld.GameOptions()
    options.seeds = GENERATION_SEED
    options.grammar = GrammarOptions(**GRAMMAR)
    maker = textworld.GameMaker(options)
    rooms = {name: maker.new_room(name) for name in ROOMS}
    for room, direction, neighbour in EXITS:
        maker.connect(rooms[room].exits[direction], rooms[neighbour].exits[OPPOSITE[direction]])
    furniture = {}
    for name, kind, room in FURNITURE:
        entity = maker.new(type=kind, name=name)
        if kind == "c":
            entity.add_property("closed")
        rooms[room].add(entity)
        furniture[name, room] = entity
    items = {}
    for name, kind, holder in ITEMS:
        items[name] = maker.new(type=kind, name=name)
        furniture[holder].add(items[name])
    maker.set_player(rooms[TARGET_ROOM])
    fridge = furniture["fridge", GOAL_ROOM]
    # Lists, not sets: the order of the conditions is the order of the compiled checks, and a
    # set's order changes with PYTHONHASHSEED (the compiled file would differ between builds).
    win = Event(conditions=[maker.new_fact("in", items[TARGET], fridge),
                            maker.new_fact("closed", fridge)])  # fmt: skip
    lose = Event(conditions=[maker.new_fact("eaten", items[TARGET])])
    maker.quests = [Quest(win_events=[win], fail_events=[lose])]
    game = maker.build()
    game.objective = OBJECTIVE
    for info in game.infos.values():
        if info.type == "r" and info.desc:
            # The first paragraph names the room ("You've entered a kitchen."); PO must not see it.
            info.desc = info.desc.split("\n\n", 1)[-1].lstrip()
    return game


def _variant(game_data: dict[str, Any], room_ids: dict[str, str], room: str) -> Any:
    """A copy of the serialised game with the player starting in ``room``."""
    from textworld.generator.game import Game

    data = json.loads(json.dumps(game_data))
    for fact in data["world"]:
        if fact["name"] == "at" and fact["arguments"][0]["name"] == "P":
            fact["arguments"][1]["name"] = room_ids[room]
    return Game.deserialize(data)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_cache(directory: Path) -> dict[str, Path] | None:
    """``room -> .z8 path`` if ``directory`` holds a complete, uncorrupted build, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        files = {}
        for room in ROOMS:
            for name, digest in manifest["files"][room].items():
                if _sha256(directory / name) != digest:
                    return None
            files[room] = directory / f"{_room_slug(room)}.z8"
        return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _compile_into(directory: Path) -> None:
    textworld = _textworld()
    game = build_game()
    room_ids = {info.name: key for key, info in game.infos.items() if info.type == "r"}
    data = game.serialize()
    files: dict[str, dict[str, str]] = {}
    for room in ROOMS:
        options = textworld.GameOptions()
        options.path = str(directory / f"{_room_slug(room)}.z8")
        options.force_recompile = True
        textworld.generator.compile_game(_variant(data, room_ids, room), options)
        names = (f"{_room_slug(room)}.z8", f"{_room_slug(room)}.json")
        files[room] = {name: _sha256(directory / name) for name in names}
    # Written last: a manifest means a complete build.
    (directory / "manifest.json").write_text(json.dumps({"files": files}, indent=1))


@contextlib.contextmanager
def _exclusive(lock_file: Any) -> Iterator[None]:
    import fcntl

    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)


def _discard(directory: Path) -> None:
    trash = directory.with_name(f".{directory.name}.trash-{uuid.uuid4().hex}")
    with contextlib.suppress(OSError):
        os.rename(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def game_files(root: Path | None = None) -> dict[str, Path]:
    """The compiled game (one ``.z8`` + ``.json`` per start room), built on first use.

    Safe with concurrent processes: builds are serialised by a file lock, happen in a temporary
    directory and appear by an atomic rename, so no process ever sees a half-written build. A
    corrupted cache (a file changed or missing) is discarded and rebuilt.
    """
    root = root or cache_root()
    key = hashlib.sha256(json.dumps(game_definition(), sort_keys=True).encode()).hexdigest()[:16]
    target = root / key
    files = _read_cache(target)
    if files is not None:
        return files
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_file = open(root / f".{key}.lock", "a")  # closed by the `with` below
    except OSError as e:
        raise OSError(
            f"cannot write the Text-Nav game cache in {root} ({e}); set LMRLGYM_CACHE to a "
            "writable directory"
        ) from e
    with lock_file, _exclusive(lock_file):
        files = _read_cache(target)  # another process may have finished meanwhile
        if files is not None:
            return files
        if target.exists():
            _discard(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.build-", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any other
        try:
            _compile_into(tmp)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    files = _read_cache(target)
    if files is None:
        raise RuntimeError(f"Text-Nav game build in {target} is unreadable right after building")
    return files


@functools.cache
def _process_game_files() -> dict[str, Path]:
    # Resolved once per process (the cache check hashes eight small files).
    return game_files()


# Valid actions per world state, shared by every engine of the process. TextWorld (1.7.0) derives
# them from its logic rules after every action, about half of a step's time, although episodes
# revisit few distinct states. The world state is its set of facts, so the memo is exact.
_VALID_ACTIONS: dict[frozenset, list] = {}
_VALID_ACTIONS_LIMIT = 100_000


def _memoise_valid_actions(engine: Any) -> None:
    """Route the state tracker's valid-action search through ``_VALID_ACTIONS``."""
    wrapper = engine
    while wrapper is not None and not hasattr(wrapper, "_game_progression"):
        wrapper = getattr(wrapper, "_wrapped_env", None)
    progression = getattr(wrapper, "_game_progression", None)
    if progression is None:  # another TextWorld layout: stay correct, only slower
        return
    state = progression.state
    search = state.all_applicable_actions

    def applicable(rules: Any, mapping: Any = None) -> list:
        key = frozenset(state.facts)
        if key not in _VALID_ACTIONS:
            if len(_VALID_ACTIONS) >= _VALID_ACTIONS_LIMIT:
                _VALID_ACTIONS.clear()
            _VALID_ACTIONS[key] = list(search(rules, mapping))
        return _VALID_ACTIONS[key]

    state.all_applicable_actions = applicable


# --- the env ----------------------------------------------------------------------------------
class TextNavEnv(TextEnv):
    """TextWorld house: put the stale food in the fridge (see the module card)."""

    return_range = (0.0, 1.0)

    def __init__(
        self,
        observability: str = "full",
        max_turns: int = MAX_TURNS,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if observability not in ("full", "partial"):
            raise ValueError(f"observability must be 'full' or 'partial', got {observability!r}")
        if max_turns <= 0:
            raise ValueError(f"max_turns must be positive, got {max_turns}")
        self.observability = observability
        self.max_turns = int(max_turns)
        self._files = _process_game_files()
        self._engines: dict[str, Any] = {}
        self._engine: Any = None
        self._state: Any = None
        self._names: dict[str, str] = {}
        self._n_turns = 0
        self.start_room = ""  # of the current episode

    @classmethod
    def evaluation_resets(cls, n_episodes: int, **env_kwargs: Any) -> list[tuple[int, dict]]:
        """docs/tasks.md §3: 8 start rooms x 32 episodes, seed ``32*room_index + k``.

        Episode ``j`` starts in room ``j % 8`` as its ``k = j // 8``-th episode, so any
        ``n >= 8`` covers every room; past 32 per room the seeds continue above 256.
        """
        resets = []
        for j in range(n_episodes):
            i, k = j % len(ROOMS), j // len(ROOMS)
            seed = 32 * i + k if k < 32 else len(ROOMS) * k + i
            resets.append((seed, {"start_room": ROOMS[i]}))
        return resets

    # --- engine access ----------------------------------------------------------------------
    def _open(self, room: str) -> Any:
        if room not in self._engines:
            textworld = _textworld()
            infos = textworld.EnvInfos(admissible_commands=True, inventory=True)
            with warnings.catch_warnings():
                # Jericho warns that a game outside its list of known titles lacks score and
                # move detection; TextWorld tracks both itself.
                warnings.filterwarnings("ignore", message=".*is not fully supported")
                engine = textworld.start(str(self._files[room]), request_infos=infos)
            self._engines[room] = engine
        return self._engines[room]

    def _facts(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(f.name, tuple(a.name for a in f.arguments)) for f in self._state["_facts"]]

    @property
    def house_state(self) -> HouseState:
        """The true state (room, inventory, where the stale food is, open containers)."""
        names = self._names
        room = None
        where: dict[str, tuple[str, str]] = {}  # entity id -> (relation, holder id)
        eaten, opened = set(), set()
        for name, args in self._facts():
            if name == "at" and args[0] == "P":
                room = names[args[1]]
            elif name in ("at", "on", "in"):
                where[args[0]] = (name, args[1])
            elif name == "eaten":
                eaten.add(names[args[0]])
            elif name == "open":
                opened.add(names[args[0]])
        inventory = tuple(sorted(names[e] for e, (rel, h) in where.items() if h == "I"))
        target_id = next(k for k, v in names.items() if v == TARGET)
        if TARGET in eaten:
            target_at: tuple[str, str | None] = ("eaten", None)
        elif where[target_id][1] == "I":
            target_at = ("carried", None)
        elif where[target_id][0] == "at":
            target_at = (names[where[target_id][1]], None)
        else:
            holder = where[target_id][1]
            target_at = (names[where[holder][1]], names[holder])
        return HouseState(room or "", inventory, target_at, frozenset(opened))

    def _observe(self, feedback: str, final: bool) -> tuple[str, dict[str, Any]]:
        """The env text for ``feedback`` and the extra info keys, from one state lookup."""
        state = self.house_state
        cleaned = clean_feedback(feedback)
        if final:
            text = cleaned + "\n"
        else:
            text = compose_text(
                cleaned,
                state.room,
                self._state["inventory"] or "",
                self._state["admissible_commands"],
                full=self.observability == "full",
            )
        extra = {
            "room": state.room,
            "inventory": list(state.inventory),
            "won": bool(self._state["won"]),
            "lost": bool(self._state["lost"]),
            "admissible_commands": list(self._state["admissible_commands"]),
        }
        return text, extra

    # --- TextEnv hooks ----------------------------------------------------------------------
    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        unknown = set(options) - {"start_room"}
        if unknown:
            raise ValueError(f"unknown Text-Nav reset options {sorted(unknown)}; use 'start_room'")
        room = options.get("start_room")
        if room is None:
            room = ROOMS[int(rng.integers(len(ROOMS)))]
        elif room not in ROOMS:
            raise ValueError(f"unknown start_room {room!r}; valid rooms: {', '.join(ROOMS)}")
        self.start_room = room
        self._engine = self._open(room)
        self._state = self._engine.reset()
        _memoise_valid_actions(self._engine)
        if not self._names:  # entity id -> name, the same in every variant
            self._names = {key: info.name for key, info in self._state["game"].infos.items()}
        self._n_turns = 0
        return self._observe(self._state["feedback"], final=False)

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        command = action.strip()
        illegal = canonical_command(command) not in self._state["admissible_commands"]
        refused = refusal(command)
        if refused is None:
            self._state, _, _ = self._engine.step(engine_command(command))
            feedback = self._state["feedback"]
        else:
            feedback = refused
        self._n_turns += 1
        won, lost = bool(self._state["won"]), bool(self._state["lost"])
        terminated = won or lost
        truncated = not terminated and self._n_turns >= self.max_turns
        text, extra = self._observe(feedback, final=terminated or truncated)
        extra.update(illegal=illegal, success=won)
        return text, WIN_REWARD if won else 0.0, terminated, truncated, extra

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        self._engine = None
