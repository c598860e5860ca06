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
``env.action_set()`` and ``info["action_set"]`` hold the admissible commands the text shows:
every legal command except the ``examine``, ``look`` and ``inventory`` ones, which stay legal.

Before parsing, an action is cut to its first 190 characters (what the interpreter reads) and lone
surrogates become U+FFFD (the stored action too), so the transcript holds at most 15 actions of 191
characters.

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

import dataclasses
import functools
import re
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.envs._textnav_game import (
    EXITS,
    GOAL_ROOM,
    OBJECTIVE,
    OPPOSITE,
    ROOMS,
    TARGET,
    TARGET_ROOM,
    import_textworld,
    memoise_valid_actions,
    process_game_files,
)

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


# --- the env ----------------------------------------------------------------------------------
class TextNavEnv(TextEnv):
    """TextWorld house: put the stale food in the fridge (see the module card)."""

    return_range = (0.0, 1.0)
    action_set_in_info = True
    max_action_chars = MAX_COMMAND_CHARS  # stored as the interpreter reads it
    play_help = (
        "Put the stale food from the living-room table into the kitchen fridge and close the\n"
        "fridge, within 15 commands; eating it loses. The fully observed version (FO) lists\n"
        "your room, inventory and the commands that make sense.\n"
        "Action: one command. Examples: go west, take stale food from table, open fridge,\n"
        "put stale food in fridge, close fridge\n"
        "Rewards: 1 for the winning command, 0 otherwise."
    )

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
        self._files = process_game_files()
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

    def action_set(self) -> tuple[str, ...] | None:
        """The admissible commands the text shows; None before the first reset."""
        if self._state is None:
            return None
        return tuple(shown_commands(self._state["admissible_commands"]))

    # --- engine access ----------------------------------------------------------------------
    def _open(self, room: str) -> Any:
        if room not in self._engines:
            textworld = import_textworld()
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
        memoise_valid_actions(self._engine)
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
