"""Scripted Maze behaviour policies (docs/tasks.md §2, "Behaviour policies for offline data").

They read the env's true position (privileged state), so the same policy drives FO and PO.

- ``maze-optimal``: the shortest-path move (the FO optimum, -6.84 on average over the starts).
- ``maze-random``: a uniform command.
- ``maze-belief``: the optimum of a policy that knows the map but not its position: it tracks
  the set of cells consistent with the history and plays the value-iteration optimum of that
  belief MDP (PO: -7.24 on average over the starts; FO texts reveal the cell, so -6.84).
- ``maze-mixture(p_solver)``: each step the shortest-path move with probability ``p_solver``,
  else a uniform command.
- ``maze-submaze(p_solver, w_goal)``: the default dataset. The mixture, confined to one of three
  sub-mazes as in the original data: an episode picks the goal's (bottom) sub-maze with
  probability ``w_goal``, else left or right equally, starts on a uniform non-goal cell of it, and
  the record is cut (``truncated``, ``meta.cut``) at the step that leaves it. So no record goes
  from a far start to the goal (learners must stitch) and successes only start near the goal
  (learners must assign credit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv, Turn
from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.envs.maze import COMMANDS, GOAL_REWARD, MOVE_REWARD, Maze, MazeEnv, parse_command

Cell = tuple[int, int]
# The current cell of every start consistent with the history, sorted (a multiset, since wall
# bumps can merge two starts onto one cell).
Belief = tuple[Cell, ...]

# Sub-mazes of the double-T maze (docs/tasks.md §2); together they cover its 26 free cells.
SUBMAZES: dict[str, frozenset[Cell]] = {
    "left": frozenset([(1, c) for c in range(1, 6)] + [(r, 3) for r in range(2, 5)]),
    "right": frozenset([(1, c) for c in range(7, 12)] + [(r, 9) for r in range(2, 5)]),
    "bottom": frozenset([(5, c) for c in range(3, 10)] + [(r, 6) for r in range(6, 9)]),
}
GOAL_SUBMAZE = "bottom"
# Calibrated so the default dataset's success rate is the paper's 0.11 (Table 1); see
# scripts/compute_constants.py and tests/data/test_maze_wordle_data.py for the measurement.
DEFAULT_W_GOAL = 0.16
DEFAULT_P_SOLVER = 0.15  # the paper's 15 % solver / 85 % random behaviour policy


def _maze_env(env: TextEnv) -> MazeEnv:
    if not isinstance(env, MazeEnv):
        raise TypeError(f"maze policies need a MazeEnv, got {type(env).__name__}")
    return env


def _random_command(rng: np.random.Generator) -> str:
    return COMMANDS[int(rng.integers(len(COMMANDS)))] + "\n"


def mixture_command(env: MazeEnv, p_solver: float, rng: np.random.Generator) -> str:
    """With probability ``p_solver`` the shortest-path move, else a uniform command."""
    if rng.random() < p_solver:
        return env.optimal_command() + "\n"
    return _random_command(rng)


def _check_probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


# --- the belief MDP of a map-aware agent that does not see its position --------------------
def belief_transitions(
    maze: Maze, text_of: Callable[[Cell], str], belief: Belief, command: str
) -> list[tuple[float, float, Belief | None]]:
    """``(probability, reward, next belief or None at the goal)`` for each possible env text."""
    groups: dict[str, list[Cell]] = {}
    for cell in belief:
        nxt = maze.transition[cell, command]
        groups.setdefault(text_of(nxt), []).append(nxt)
    out = []
    for cells in groups.values():
        done = cells[0] == maze.goal
        reward = GOAL_REWARD if done else MOVE_REWARD
        out.append((len(cells) / len(belief), reward, None if done else tuple(sorted(cells))))
    return out


@dataclasses.dataclass(frozen=True)
class BeliefSolution:
    """Optimal values and moves of every reachable belief, and the belief after each first text."""

    values: dict[Belief, float]
    moves: dict[Belief, str]
    initial: dict[str, Belief]

    def mean_return(self) -> float:
        """Expected optimal return from a uniform start cell."""
        n = sum(len(b) for b in self.initial.values())
        return sum(len(b) * self.values[b] for b in self.initial.values()) / n


def solve_beliefs(maze: Maze, text_of: Callable[[Cell], str], tol: float = 1e-12) -> BeliefSolution:
    """Value iteration over the beliefs reachable from the first observation (any moves)."""
    initial: dict[str, list[Cell]] = {}
    for cell in maze.start_cells:
        initial.setdefault(text_of(cell), []).append(cell)
    start_beliefs = {text: tuple(sorted(cells)) for text, cells in initial.items()}
    frontier = list(start_beliefs.values())
    succ: dict[tuple[Belief, str], list[tuple[float, float, Belief | None]]] = {}
    seen = set(frontier)
    while frontier:
        belief = frontier.pop()
        for command in COMMANDS:
            succ[belief, command] = belief_transitions(maze, text_of, belief, command)
            for _, _, nxt in succ[belief, command]:
                if nxt is not None and nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
    beliefs = sorted(seen)
    values = dict.fromkeys(beliefs, 0.0)

    def q(belief: Belief, command: str) -> float:
        return sum(
            p * (r + (values[b] if b is not None else 0.0)) for p, r, b in succ[belief, command]
        )

    # Every move costs 1 until the goal, so iterating from 0 converges to the optimum.
    for _ in range(100_000):
        delta = 0.0
        for belief in beliefs:
            best = max(q(belief, command) for command in COMMANDS)
            delta = max(delta, abs(best - values[belief]))
            values[belief] = best
        if delta < tol:
            break
    moves = {}
    for belief in beliefs:
        qs = [q(belief, command) for command in COMMANDS]
        moves[belief] = COMMANDS[int(np.argmax(np.array(qs) >= max(qs) - 1e-9))]
    return BeliefSolution(values, moves, start_beliefs)


def history_belief(env: MazeEnv, solution: BeliefSolution, turns: Sequence[Turn]) -> Belief:
    """The belief after a history: filter the cells by each recognised move's env text."""
    belief = solution.initial[turns[0].text]
    for action, text in zip(turns[1::2], turns[2::2], strict=False):
        command = parse_command(action.text)
        if command is None:
            continue
        belief = tuple(
            sorted(
                nxt
                for nxt in (env.maze.transition[cell, command] for cell in belief)
                if env.cell_text(nxt) == text.text
            )
        )
    return belief


class MazeOptimal(BehaviourPolicy):
    policy_name = "maze-optimal"

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        return _maze_env(env).optimal_command() + "\n"


class MazeBelief(BehaviourPolicy):
    """Optimal without privileged state: acts on the belief implied by the whole history."""

    policy_name = "maze-belief"

    def __init__(self) -> None:
        super().__init__()
        self._solutions: dict[tuple[Maze, str], BeliefSolution] = {}

    def solution(self, env: MazeEnv) -> BeliefSolution:
        key = (env.maze, env.observability)
        if key not in self._solutions:
            self._solutions[key] = solve_beliefs(env.maze, env.cell_text)
        return self._solutions[key]

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        maze_env = _maze_env(env)
        solution = self.solution(maze_env)
        return solution.moves[history_belief(maze_env, solution, info["turns"])] + "\n"


class MazeRandom(BehaviourPolicy):
    policy_name = "maze-random"

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        return _random_command(rng)


class MazeMixture(BehaviourPolicy):
    policy_name = "maze-mixture"

    def __init__(self, p_solver: float = DEFAULT_P_SOLVER):
        super().__init__(p_solver=_check_probability("p_solver", p_solver))
        self.p_solver = self.settings["p_solver"]

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        return mixture_command(_maze_env(env), self.p_solver, rng)


class MazeSubmaze(BehaviourPolicy):
    policy_name = "maze-submaze"

    def __init__(self, p_solver: float = DEFAULT_P_SOLVER, w_goal: float = DEFAULT_W_GOAL):
        super().__init__(
            p_solver=_check_probability("p_solver", p_solver),
            w_goal=_check_probability("w_goal", w_goal),
        )
        self.p_solver = self.settings["p_solver"]
        self.w_goal = self.settings["w_goal"]
        self._submaze = GOAL_SUBMAZE

    def reset_options(self, env: TextEnv, rng: np.random.Generator) -> dict[str, Any]:
        maze = _maze_env(env).maze
        if maze.name != "double_t_maze":
            raise ValueError(f"maze-submaze is defined for the double-T maze, not {maze.name!r}")
        if rng.random() < self.w_goal:
            self._submaze = GOAL_SUBMAZE
        else:
            self._submaze = ("left", "right")[int(rng.integers(2))]
        starts = sorted(SUBMAZES[self._submaze] - {maze.goal})
        return {"start": starts[int(rng.integers(len(starts)))]}

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        return mixture_command(_maze_env(env), self.p_solver, rng)

    def cut(self, env: TextEnv, info: dict[str, Any]) -> str | None:
        if info["position"] not in SUBMAZES[self._submaze]:
            return f"left the {self._submaze} sub-maze"
        return None

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        return {"submaze": self._submaze}

    def manifest_extra(self) -> dict[str, Any]:
        return {
            "p_solver": self.p_solver,
            "w_goal": self.w_goal,
            "submazes": {k: sorted(map(list, v)) for k, v in SUBMAZES.items()},
        }
