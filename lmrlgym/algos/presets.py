"""Per-task tables of the training methods: task groups, each task's lengths (P, M) and the
preset rule (class defaults, then the task's lengths and paper values, then overrides).

Each algorithm module keeps its own ``PAPER_PRESETS`` table (the values of its Table 3
column); this module holds what they share.
"""

from __future__ import annotations

from typing import Any, TypeVar

C = TypeVar("C")  # a method's config class

DIALOGUE = ("TwentyQuestions-v0", "GuessCity-v0", "CarDealer-v0")
TEXTNAV = ("TextNav-FO-v0", "TextNav-PO-v0")
MAZE = ("Maze-FO-v0", "Maze-PO-v0")
CHESS = ("Chess-v0", "Endgames-v0")

# (P = max_context_tokens, M = max_new_tokens) per task: the original's lengths (§3.1, §4.1).
TASK_LENGTHS: dict[str, dict[str, int]] = {
    "Maze-FO-v0": {"max_context_tokens": 256, "max_new_tokens": 8},
    "Maze-PO-v0": {"max_context_tokens": 1024, "max_new_tokens": 16},
    "Chess-v0": {"max_context_tokens": 256, "max_new_tokens": 16},
    "Endgames-v0": {"max_context_tokens": 150, "max_new_tokens": 10},
    "TwentyQuestions-v0": {"max_context_tokens": 1024, "max_new_tokens": 128},
    "GuessCity-v0": {"max_context_tokens": 1024, "max_new_tokens": 128},
    "CarDealer-v0": {"max_context_tokens": 512, "max_new_tokens": 128},
    "Wordle-v0": {"max_context_tokens": 2048, "max_new_tokens": 128},
    "TextNav-FO-v0": {"max_context_tokens": 2048, "max_new_tokens": 128},
    "TextNav-PO-v0": {"max_context_tokens": 2048, "max_new_tokens": 128},
}


def expand_tasks(table: dict[tuple[str, ...] | str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{("A", "B"): x, "C": y}`` -> ``{"A": x, "B": x, "C": y}``."""
    out: dict[str, dict[str, Any]] = {}
    for tasks, values in table.items():
        for task in (tasks,) if isinstance(tasks, str) else tasks:
            out[task] = values
    return out


def task_preset(cls: type[C], task: str, table: dict[str, dict[str, Any]], **overrides: Any) -> C:
    """The config of one (task, method) cell: class defaults, then the task's lengths and the
    method's per-task paper values, then ``overrides``."""
    return cls(task=task, **{**TASK_LENGTHS.get(task, {}), **table.get(task, {}), **overrides})
