"""Per-task tables of the training methods: task groups, each task's lengths (P, M) and the
preset rule (class defaults, then the task's lengths and paper values, then overrides;
docs/algorithms.md).

Each algorithm module keeps its own ``PAPER_PRESETS`` table (the values of its Table 3
column); this module holds what they share.
"""

from __future__ import annotations

from typing import Any, TypeVar

from lmrlgym.envs import task_group, task_lengths

C = TypeVar("C")  # a method's config class

# Task groups and lengths come from the registry specs (lmrlgym/envs/__init__.py), so training,
# evaluation and the bench presets agree by construction.
DIALOGUE = task_group("dialogue")
TEXTNAV = task_group("textnav")
MAZE = task_group("maze")
CHESS = task_group("chess")

# The value methods' Maze decoding: each of the four moves scored by its summed β·(Q − V) and
# drawn from their softmax (argmax with greedy), as the original's Maze reranker (§3.5).
MAZE_RERANK: dict[str, Any] = {"decode": "rerank", "rerank_score": "value"}

# (P = max_context_tokens, M = max_new_tokens) per task: the original's lengths (§3.1, §4.1).
TASK_LENGTHS: dict[str, dict[str, int]] = task_lengths()


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
