"""The Text-Nav house as a TextWorld game (``TextNav-FO-v0``, ``TextNav-PO-v0``).

The house's definition, the build with TextWorld's game maker (one compiled variant per start
room), the on-disk cache shared by every process (file lock, atomic rename, corruption check)
and the per-process memo of TextWorld's valid-action search. The env and its rules are in
``textnav.py``; this module is what it needs from TextWorld beyond playing a compiled game.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
BUILD_VERSION = 3


# --- building and caching the game ------------------------------------------------------------
def import_textworld() -> Any:
    try:
        import textworld
    except ImportError:
        raise DependencyNotInstalled(
            'Text-Nav needs TextWorld: pip install "lmrlgym[textnav]"'
        ) from None
    return textworld


def game_definition() -> dict[str, Any]:
    """Everything the compiled files depend on; its hash names the cache directory."""
    textworld = import_textworld()
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
    textworld = import_textworld()
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


# The Z-machine header's serial number (bytes 0x12-0x17) is the compile date (YYMMDD), so two
# builds of the same game on different days differ there. The interpreter only displays it and
# the story checksum starts at 0x40, so a fixed serial makes a build byte-identical on any day.
SERIAL_AT, SERIAL = 0x12, b"000000"


def _pin_serial(path: Path) -> None:
    story = bytearray(path.read_bytes())
    story[SERIAL_AT : SERIAL_AT + len(SERIAL)] = SERIAL
    path.write_bytes(bytes(story))


def _compile_into(directory: Path) -> None:
    textworld = import_textworld()
    game = build_game()
    room_ids = {info.name: key for key, info in game.infos.items() if info.type == "r"}
    data = game.serialize()
    files: dict[str, dict[str, str]] = {}
    for room in ROOMS:
        options = textworld.GameOptions()
        options.path = str(directory / f"{_room_slug(room)}.z8")
        options.force_recompile = True
        textworld.generator.compile_game(_variant(data, room_ids, room), options)
        _pin_serial(Path(options.path))
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
def process_game_files() -> dict[str, Path]:
    # Resolved once per process (the cache check hashes eight small files).
    return game_files()


# Valid actions per world state, shared by every engine of the process. TextWorld (1.7.0) derives
# them from its logic rules after every action, about half of a step's time, although episodes
# revisit few distinct states. The world state is its set of facts, so the memo is exact.
_VALID_ACTIONS: dict[frozenset, list] = {}
_VALID_ACTIONS_LIMIT = 100_000


def memoise_valid_actions(engine: Any) -> None:
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
