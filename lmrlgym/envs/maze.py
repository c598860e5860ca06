"""Maze: walk through a fixed grid maze to a fixed goal (``Maze-FO-v0``, ``Maze-PO-v0``).

Description
-----------
The agent starts on a free cell of the "double T" maze (10 rows x 13 columns, goal (8, 6)) and
must reach the goal. Fully observed (FO): every observation names the goal, the agent's position
and the nearby walls. Partially observed (PO): only the nearby walls, so the agent must infer its
position from its history. Tests credit assignment and trajectory stitching; PO adds partial
observability (docs/tasks.md §2).

Observation
-----------
Wall sentence, neighbours checked in the order right, left, above, below:
``There are no walls near you.`` / ``There is a wall to your right.`` /
``There are walls to your right, above you, below you.``. Numbers print digit by digit
(11 -> ``1 1``), a position as ``<row>, <col>`` (``1, 1 1`` is (1, 11)).

- FO: ``The goal is at position 8, 6. Your current position is at position 6, 6. <walls>\\n``;
  the window is the latest env text only.
- PO: ``<walls>\\n``; the window is the last 40 turns (env texts and actions), the whole history
  before 40 turns exist, so a full window starts with an action line.
- Reaching the goal shows ``Success\\n``, the step cap ``Failure\\n``.

Action
------
``move up`` (row - 1), ``move down`` (row + 1), ``move left`` (col - 1), ``move right``
(col + 1), matched case-insensitively after stripping surrounding whitespace (inner spacing must
match) and stored in lower case. Walking into a wall is legal and changes nothing. Any other text
is unrecognised (``info["illegal"]``) and changes nothing. ``env.action_set()`` and
``info["action_set"]`` hold the four commands (in the order above) in every state.

Before parsing, an action is cut to its first 1,000 characters and lone surrogates become U+FFFD
(the stored action too), so a PO window holds at most 20 actions of 1,001 characters; FO shows no
action.

Rewards
-------
0 when the new position is the goal; else -4 for an unrecognised action; else -1 (a wall bump
included). The cap step gives -1. Return range [-401, 0].

Episode End
-----------
Goal reached: ``terminated``. After 100 steps that did not end the episode, the next step ignores
its action (stored, not parsed) and returns ``Failure\\n``, reward -1, ``truncated``: a failed
episode has 101 agent steps (return -101 if every action was recognised, -401 at worst).

Arguments
---------
``observability``: ``"full"`` or ``"partial"``. ``grid``: a maze name from ``mazes.json``
(``"double_t_maze"``, ``"umaze"``, ``"maze2d_medium"``, ``"maze2d_large"``) or rows of 0/1
(1 = wall); ``goal``: ``(row, col)``, needed when the grid has none. Reset option
``{"start": (row, col)}`` (a free non-goal cell; default uniform over the start cells).
Extra info keys: ``position``, ``goal``, ``distance`` (shortest path from the current cell),
``illegal_reason`` (after an unrecognised action: why, in words).

Differences from LMRL-Gym
-------------------------
1. Commands match case-insensitively after stripping; the original needed the exact string.
2. PO keeps its 40-turn window after an unrecognised action; the original wiped the history.
3. The PO window is fixed at 40 turns in the env (the original's evaluation flag defaulted to 1).
4. The cap step is ``truncated``; the original had one ``done`` flag (returns unchanged).
5. The reset option is ``start`` (original ``init_position``) and the random start is seeded.

References
----------
Abdulhai et al., "LMRL Gym: Benchmarks for Multi-Turn Reinforcement Learning with Language
Models" (2023); original code ``llm_rl_scripts/maze/env`` (MIT). The grids and the optimal action
table are in ``lmrlgym/envs/data/mazes.json``.

Version History
---------------
v0: initial release (docs/tasks.md §2).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import deque
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv, Turn

#: Commands in the order used for tie-breaks and random choices.
MOVES: dict[str, tuple[int, int]] = {
    "move up": (-1, 0),
    "move down": (1, 0),
    "move left": (0, -1),
    "move right": (0, 1),
}
COMMANDS: tuple[str, ...] = tuple(MOVES)
# The wall sentence checks neighbours in this order (docs/tasks.md §2, as the original did).
_WALL_CHECKS: tuple[tuple[tuple[int, int], str], ...] = (
    ((0, 1), "to your right"),
    ((0, -1), "to your left"),
    ((-1, 0), "above you"),
    ((1, 0), "below you"),
)
MAX_STEPS = 100  # steps that did not end the episode; the next step is the cap step
PO_WINDOW = 40  # turns of history in the PO observation
_CANONICAL = {command + "\n": command for command in COMMANDS}
SUCCESS_TEXT = "Success\n"
FAILURE_TEXT = "Failure\n"
GOAL_REWARD, MOVE_REWARD, ILLEGAL_REWARD, CAP_REWARD = 0.0, -1.0, -4.0, -1.0

Cell = tuple[int, int]


# --- pure rules ------------------------------------------------------------------------------
def spaced_number(n: int) -> str:
    """Digits separated by single spaces, as the original tokenised numbers: 11 -> '1 1'."""
    return " ".join(str(n))


def format_position(cell: Cell) -> str:
    return f"{spaced_number(cell[0])}, {spaced_number(cell[1])}"


def is_wall(walls: Sequence[Sequence[bool]], cell: Cell) -> bool:
    """Off-grid cells count as walls, so grids without a border still work."""
    r, c = cell
    return not (0 <= r < len(walls) and 0 <= c < len(walls[r])) or bool(walls[r][c])


def wall_sentence(walls: Sequence[Sequence[bool]], cell: Cell) -> str:
    phrases = [p for (dr, dc), p in _WALL_CHECKS if is_wall(walls, (cell[0] + dr, cell[1] + dc))]
    if not phrases:
        return "There are no walls near you."
    if len(phrases) == 1:
        return f"There is a wall {phrases[0]}."
    return f"There are walls {', '.join(phrases)}."


def fo_text(walls: Sequence[Sequence[bool]], cell: Cell, goal: Cell) -> str:
    return (
        f"The goal is at position {format_position(goal)}. Your current position is at position "
        f"{format_position(cell)}. {wall_sentence(walls, cell)}\n"
    )


def po_text(walls: Sequence[Sequence[bool]], cell: Cell) -> str:
    return wall_sentence(walls, cell) + "\n"


def parse_command(action: str) -> str | None:
    """The canonical command (lower case, no newline) or None if unrecognised."""
    command = _CANONICAL.get(action)  # the usual spelling, found without string work
    if command is None:
        command = action.strip().lower()
    return command if command in MOVES else None


def apply_move(walls: Sequence[Sequence[bool]], cell: Cell, command: str) -> Cell:
    dr, dc = MOVES[command]
    target = (cell[0] + dr, cell[1] + dc)
    return cell if is_wall(walls, target) else target


def step_reward(reached_goal: bool, recognised: bool) -> float:
    if reached_goal:
        return GOAL_REWARD
    return MOVE_REWARD if recognised else ILLEGAL_REWARD


def shortest_distances(walls: Sequence[Sequence[bool]], goal: Cell) -> dict[Cell, int]:
    """Moves from every cell that can reach the goal (breadth-first search from the goal)."""
    dist = {goal: 0}
    queue = deque([goal])
    while queue:
        cell = queue.popleft()
        for dr, dc in MOVES.values():
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt not in dist and not is_wall(walls, nxt):
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    return dist


def fo_context_turns(turns: Sequence[Turn]) -> list[Turn]:
    """FO window: the latest env text only (the observation is Markov)."""
    return [turns[-1]]


def po_context_turns(turns: Sequence[Turn]) -> list[Turn]:
    """PO window: the last 40 turns; the whole history before 40 turns exist."""
    return list(turns[-PO_WINDOW:])


# --- the maze --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: used as a cache key
class Maze:
    """A grid (True = wall) with its goal, plus tables derived once for fast stepping."""

    name: str
    walls: tuple[tuple[bool, ...], ...]
    goal: Cell
    distance: dict[Cell, int] = dataclasses.field(init=False, repr=False)
    start_cells: tuple[Cell, ...] = dataclasses.field(init=False)
    # (cell, command) -> next cell; cell -> FO / PO text: the env only looks things up.
    transition: dict[tuple[Cell, str], Cell] = dataclasses.field(init=False, repr=False)
    fo_texts: dict[Cell, str] = dataclasses.field(init=False, repr=False)
    po_texts: dict[Cell, str] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        where = f"maze {self.name!r}"
        if not self.walls or any(len(row) != len(self.walls[0]) for row in self.walls):
            raise ValueError(f"{where}: the grid must be a non-empty rectangle of 0/1 cells")
        if is_wall(self.walls, self.goal):
            raise ValueError(f"{where}: goal {self.goal} is not a free cell of the grid")
        free = [
            (r, c) for r, row in enumerate(self.walls) for c, wall in enumerate(row) if not wall
        ]
        distance = shortest_distances(self.walls, self.goal)
        unreachable = [cell for cell in free if cell not in distance]
        if unreachable:
            raise ValueError(f"{where}: cells {unreachable[:5]} cannot reach goal {self.goal}")
        set_ = functools.partial(object.__setattr__, self)
        set_("distance", distance)
        set_("start_cells", tuple(cell for cell in free if cell != self.goal))
        set_(
            "transition",
            {(c, m): apply_move(self.walls, c, m) for c in free for m in COMMANDS},
        )
        set_("fo_texts", {c: fo_text(self.walls, c, self.goal) for c in free})
        set_("po_texts", {c: po_text(self.walls, c) for c in free})

    def optimal_command(self, cell: Cell) -> str:
        """A shortest-path move (first in ``COMMANDS`` order on ties; unique in double T)."""
        for command in COMMANDS:
            nxt = self.transition[cell, command]
            if nxt != cell and self.distance[nxt] == self.distance[cell] - 1:
                return command
        raise ValueError(f"maze {self.name!r}: {cell} is the goal, no move needed")

    def check_start(self, start: Any) -> Cell:
        """A validated start cell from a reset option (tuple, list or array of two ints)."""
        try:
            r, c = (int(v) for v in start)
        except (TypeError, ValueError):
            raise ValueError(f"reset option 'start' must be (row, col), got {start!r}") from None
        if (r, c) == self.goal:
            raise ValueError(f"reset option 'start' {(r, c)} is the goal of maze {self.name!r}")
        if is_wall(self.walls, (r, c)):
            raise ValueError(
                f"reset option 'start' {(r, c)} is a wall or outside maze {self.name!r}; "
                f"free cells: {list(self.start_cells)}"
            )
        return (r, c)


def _mazes_json() -> dict[str, Any]:
    return json.loads(resources.files("lmrlgym.envs").joinpath("data/mazes.json").read_text())


@functools.lru_cache(maxsize=8)
def load_maze(name: str, goal: Cell | None = None) -> Maze:
    """A named grid of ``mazes.json``; ``goal`` overrides (or supplies) its goal."""
    data = _mazes_json()
    names = [k for k, v in data.items() if isinstance(v, dict) and "grid" in v]
    if name not in names:
        raise ValueError(f"unknown maze {name!r}; choose one of {names} or pass a grid")
    entry = data[name]
    if goal is None and "goal" not in entry:
        raise ValueError(f"maze {name!r} has no goal in mazes.json; pass goal=(row, col)")
    return make_maze(entry["grid"], goal if goal is not None else entry["goal"], name)


def make_maze(grid: Sequence[Sequence[Any]], goal: Any, name: str = "custom") -> Maze:
    """A maze from rows of 0/1 (1 = wall) and a goal ``(row, col)``."""
    try:
        walls = tuple(tuple(bool(int(v)) for v in row) for row in grid)
        goal_cell = (int(goal[0]), int(goal[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(
            f"maze {name!r}: grid must be rows of 0/1 and goal a (row, col) pair"
        ) from None
    return Maze(name, walls, goal_cell)


DOUBLE_T = load_maze("double_t_maze")
#: The 25 free non-goal cells of the double-T maze, row-major.
START_CELLS: tuple[Cell, ...] = DOUBLE_T.start_cells
EVAL_EPISODES_PER_START = 32


class MazeEnv(TextEnv):
    """Grid maze with text observations; see the module docstring for the card."""

    return_range = (MAX_STEPS * ILLEGAL_REWARD + CAP_REWARD, GOAL_REWARD)
    action_set_in_info = True
    play_help = (
        "Walk to the goal of a maze (10 rows x 13 columns; positions are row, column, numbers\n"
        "spelled digit by digit: 1 1 is 11). Each turn names the walls around you; the fully\n"
        "observed version (FO) also shows the goal and your position, the partially observed\n"
        "one (PO) does not.\n"
        "Action: move up (row - 1), move down (row + 1), move left, move right.\n"
        "Rewards: -1 per move (walking into a wall too: you stay put), -4 for anything else,\n"
        "0 for the move that reaches the goal; the episode fails after 100 moves."
    )
    play_reveal = ("position", "goal")

    def __init__(
        self,
        observability: str = "full",
        grid: str | Sequence[Sequence[int]] = "double_t_maze",
        goal: Sequence[int] | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if observability not in ("full", "partial"):
            raise ValueError(f"observability must be 'full' or 'partial', got {observability!r}")
        self.observability = observability
        self.maze = _resolve_maze(grid, goal)
        self._texts = self.maze.fo_texts if observability == "full" else self.maze.po_texts
        # The window depends on the observability, so it is chosen per instance.
        self.context_turns = fo_context_turns if observability == "full" else po_context_turns
        self.position: Cell = self.maze.start_cells[0]
        self._steps = 0

    def window(self, turns: Sequence[Turn]) -> str:  # type: ignore[override]
        """The observation for a history: FO the latest env text, PO the last 40 turns."""
        if self.observability == "full":
            return turns[-1][0]
        return "".join([t[0] for t in self.context_turns(turns)])

    @property
    def start_cells(self) -> tuple[Cell, ...]:
        return self.maze.start_cells

    @classmethod
    def evaluation_resets(cls, n_episodes: int, **env_kwargs: Any) -> list[tuple[int, dict]]:
        """docs/tasks.md §2: 25 starts x 32 episodes, seed ``32*start_index + k``.

        Episode ``j`` starts on cell ``j % n_starts`` (so any ``n >= n_starts`` covers every
        start) as that start's ``k = j // n_starts``-th episode. Past 32 per start the seeds
        continue above ``32 * n_starts`` so no seed repeats.
        """
        maze = _resolve_maze(env_kwargs.get("grid", "double_t_maze"), env_kwargs.get("goal"))
        starts = maze.start_cells
        resets = []
        for j in range(n_episodes):
            i, k = j % len(starts), j // len(starts)
            if k < EVAL_EPISODES_PER_START:
                seed = EVAL_EPISODES_PER_START * i + k
            else:
                seed = len(starts) * k + i
            resets.append((seed, {"start": starts[i]}))
        return resets

    def action_set(self) -> tuple[str, ...]:
        """The four moves (walking into a wall is legal too)."""
        return COMMANDS

    def cell_text(self, cell: Cell) -> str:
        """The env text shown on ``cell`` (FO or PO form; the goal shows ``Success``)."""
        return SUCCESS_TEXT if cell == self.maze.goal else self._texts[cell]

    def optimal_command(self) -> str:
        """The shortest-path move from the true position (for scripted policies)."""
        return self.maze.optimal_command(self.position)

    def _extra(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "goal": self.maze.goal,
            "distance": self.maze.distance[self.position],
        }

    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        unknown = set(options) - {"start"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; Maze accepts 'start'")
        if "start" in options:
            self.position = self.maze.check_start(options["start"])
        else:
            starts = self.maze.start_cells
            self.position = starts[int(rng.integers(len(starts)))]
        self._steps = 0
        return self._texts[self.position], self._extra()

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._steps >= MAX_STEPS:
            # The cap step: the action is stored as sent, never parsed or applied.
            return FAILURE_TEXT, CAP_REWARD, False, True, self._extra()
        self._steps += 1
        command = parse_command(action)
        if command is not None:
            self.position = self.maze.transition[self.position, command]
        reached = self.position == self.maze.goal
        extra = self._extra()
        extra["illegal"] = command is None
        if command is None:
            extra["illegal_reason"] = "not a move: " + ", ".join(COMMANDS)
        elif action not in _CANONICAL:
            extra["action"] = command + "\n"  # stored in canonical spelling
        reward = step_reward(reached, command is not None)
        if reached:
            extra["success"] = True
            return SUCCESS_TEXT, reward, True, False, extra
        return self._texts[self.position], reward, False, False, extra


def _resolve_maze(grid: str | Sequence[Sequence[int]], goal: Sequence[int] | None) -> Maze:
    if isinstance(grid, str):
        return load_maze(grid, None if goal is None else (int(goal[0]), int(goal[1])))
    if goal is None:
        raise ValueError("a custom maze grid needs goal=(row, col)")
    return make_maze(grid, goal)


__all__ = [
    "COMMANDS",
    "MAX_STEPS",
    "PO_WINDOW",
    "START_CELLS",
    "Maze",
    "MazeEnv",
    "fo_context_turns",
    "format_position",
    "load_maze",
    "make_maze",
    "po_context_turns",
    "shortest_distances",
    "spaced_number",
    "wall_sentence",
]
