"""Scripted Text-Nav behaviour policies (docs/tasks.md §3, "Behaviour policies for offline data").

They read the env's true state (``TextNavEnv.house_state``: room, inventory, where the stale food
is), so the same policy drives FO and PO.

- ``textnav-walkthrough``: the walkthrough from any state (shortest path to the stale food, take
  it, shortest path to the kitchen, open, insert, close). From a fresh start it wins in the
  optimal ``d(start, living room) + 6`` turns: the benchmark's upper reference (return 1).
- ``textnav-half-expert(p_near, q_follow)``: the paper's design and the default dataset. Each
  episode draws the near-half expert (rooms kitchen, dining room, living room, bedroom) with
  probability ``p_near``, else the far-half expert (office, bathroom, garden, backyard). In a room
  of its half the expert follows the walkthrough with probability ``q_follow``; otherwise, and
  everywhere in the other half, it picks a uniform command from the shown admissible list.
  With the defaults (``q_follow=1``) a near-half episode wanders at random until it enters its
  half and then always wins, while a far-half one walks well only far from the goal and (in the
  2.5k default episodes) never wins; so the success rate is about ``p_near``, and good moves
  far from the goal appear only in failed episodes: the data rewards stitching.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmrlgym.core import TextEnv
from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.envs.textnav import TextNavEnv, shown_commands, walkthrough_command

NEAR_HALF = frozenset({"kitchen", "dining room", "living room", "bedroom"})
FAR_HALF = frozenset({"office", "bathroom", "garden", "backyard"})
# docs/tasks.md §3: p_near = 0.25, q_follow = 1.0 gives success ~0.25 (paper Table 1: 0.26); see
# scripts/compute_constants.py for the measured default dataset.
DEFAULT_P_NEAR = 0.25
DEFAULT_Q_FOLLOW = 1.0


def _textnav_env(env: TextEnv) -> TextNavEnv:
    if not isinstance(env, TextNavEnv):
        raise TypeError(f"Text-Nav policies need a TextNavEnv, got {type(env).__name__}")
    return env


def random_command(info: dict[str, Any], rng: np.random.Generator) -> str:
    """A uniform command from the list the agent is shown (TextWorld's, minus examine/look/...)."""
    commands = shown_commands(info["admissible_commands"])
    return commands[int(rng.integers(len(commands)))] + "\n"


class Walkthrough(BehaviourPolicy):
    """The walkthrough from the current state; optimal from every start."""

    policy_name = "textnav-walkthrough"

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        return walkthrough_command(_textnav_env(env).house_state) + "\n"


class HalfExpert(BehaviourPolicy):
    """Near- or far-half expert per episode; walkthrough w.p. ``q_follow`` in its own half."""

    policy_name = "textnav-half-expert"

    def __init__(self, p_near: float = DEFAULT_P_NEAR, q_follow: float = DEFAULT_Q_FOLLOW):
        for name, value in (("p_near", p_near), ("q_follow", q_follow)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        super().__init__(p_near=p_near, q_follow=q_follow)
        self.p_near, self.q_follow = float(p_near), float(q_follow)
        self._half: frozenset[str] = NEAR_HALF

    def act(self, env: TextEnv, obs: str, info: dict[str, Any], rng: np.random.Generator) -> str:
        if len(info["turns"]) == 1:  # first action of an episode: draw the expert
            self._half = NEAR_HALF if rng.random() < self.p_near else FAR_HALF
        state = _textnav_env(env).house_state
        if state.room in self._half and rng.random() < self.q_follow:
            return walkthrough_command(state) + "\n"
        return random_command(info, rng)

    def episode_meta(self, env: TextEnv, info: dict[str, Any]) -> dict[str, Any]:
        return {
            "expert_half": "near" if self._half is NEAR_HALF else "far",
            "start_room": _textnav_env(env).start_room,
        }
