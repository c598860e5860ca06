"""Scripted Maze behaviour policies (TASKS.md §2, "Behaviour policies for offline data").

They read the env's true position (privileged state), so the same policy drives FO and PO.

- ``maze-optimal``: the shortest-path move (the FO optimum, -6.84 on average over the starts).
- ``maze-random``: a uniform command.
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

from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.envs.maze import COMMANDS, MazeEnv

Cell = tuple[int, int]

# Sub-mazes of the double-T maze (TASKS.md §2); together they cover its 26 free cells.
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


class MazeOptimal(BehaviourPolicy):
    policy_name = "maze-optimal"

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        return _maze_env(env).optimal_command() + "\n"


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
