"""A one-step toy task for learning tests (docs/algorithms.md §5.2 item 5), registered as ``Toy-Choice-v0``.

The env shows a colour; one move is rewarded for it (``red`` -> ``left``, ``blue`` -> ``right``),
the other is not. The dataset picks the colour and the move uniformly, so half the actions are
rewarded: BC should stay near 50 % success, methods that use the reward should pick the rewarded
move almost always.
"""

from typing import Any

import numpy as np

from lmrlgym.core import Episode, TextEnv, Turn
from lmrlgym.registry import register, registry

TASK = "Toy-Choice-v0"
REWARDED = {"red\n": "left\n", "blue\n": "right\n"}


class ChoiceEnv(TextEnv):
    return_range = (-1.0, 1.0)

    def _reset(self, rng: np.random.Generator, options: dict[str, Any]) -> tuple[str, dict]:
        self.colour = list(REWARDED)[int(rng.integers(2))]
        return self.colour, {}

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if action not in ("left\n", "right\n"):
            return "done\n", -1.0, True, False, {"illegal": True}
        won = action == REWARDED[self.colour]
        return "done\n", float(won), True, False, {"success": won}


if TASK not in registry:
    register(TASK, "tests.algos.toy:ChoiceEnv", max_turns=1)


def toy_episodes(n: int, seed: int) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        colour = list(REWARDED)[int(rng.integers(2))]
        action = ["left\n", "right\n"][int(rng.integers(2))]
        won = action == REWARDED[colour]
        turns = [Turn(colour, False), Turn(action, True, float(won)), Turn("done\n", False)]
        out.append(Episode(TASK, turns, True, False, won, seed=i, policy="uniform"))
    return out
