"""Filtered behaviour cloning (%BC), offline: BC on the episodes with the highest returns, or
on the successful ones only.

Paper: Abdulhai et al. 2023, LMRL-Gym, Section 5 ("Filtered BC") and Table 3. The original filtered
with per-task scripts or pre-filtered files (docs/algorithms.md §3.2).

Deviations from the original (docs/deviations.md):
1. Top-fraction selection breaks return ties with a seeded draw, so exactly
   ``ceil(top_fraction · N)`` episodes are kept (Car Dealer's percentile cut kept every tie).
2. Selection runs on the training split only, after the seeded episode split, so validation
   NLL is measured on unfiltered held-out episodes.
3. Everything else is BC (``algos/bc.py``) and shares its deviations.

Logged keys: BC's, plus ``train/{kept_episodes, kept_fraction, return_threshold,
kept_mean_return}`` (logged once, at step 0).
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any, ClassVar, Literal

from lmrlgym.algos import bc, presets
from lmrlgym.algos.progress import Progress
from lmrlgym.core import Episode


@dataclasses.dataclass(frozen=True)
class FilteredBCConfig(bc.BCConfig):
    """Filtered BC (docs/algorithms.md §3.2). Defaults: paper, successful episodes only."""

    ALGO: ClassVar[str] = "filtered_bc"

    keep: Literal["success", "top_fraction"] = "success"
    """``success``: successful episodes only (paper: Maze, Text-Nav, Chess, Endgames).
    ``top_fraction``: the best ``top_fraction`` of episodes by return (20Q/Guess/Car, Wordle)."""
    top_fraction: float = 0.1
    """Share of episodes kept by ``keep=top_fraction`` (paper: 10 %; Wordle 30 %)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"--top-fraction must be in (0, 1], got {self.top_fraction}")


CONFIG = FilteredBCConfig

PAPER_PRESETS = presets.expand_tasks({
    presets.DIALOGUE: dict(keep="top_fraction", top_fraction=0.1),
    "Wordle-v0": dict(keep="top_fraction", top_fraction=0.3),
})


def preset(task: str, **overrides: Any) -> FilteredBCConfig:
    """Filtered BC config for ``task``: the paper's values plus ``overrides``."""
    return presets.task_preset(FilteredBCConfig, task, PAPER_PRESETS, **overrides)


def select_episodes(
    episodes: list[Episode], keep: str, top_fraction: float, seed: int
) -> list[Episode]:
    """The episodes %BC trains on: the successful ones, or the top fraction by return."""
    if keep == "success":
        return [e for e in episodes if e.success]
    if keep != "top_fraction":
        raise ValueError(f"keep must be 'success' or 'top_fraction', got {keep!r}")
    rng = random.Random(seed)
    tiebreak = [rng.random() for _ in episodes]  # ties: seeded, not file order
    order = sorted(range(len(episodes)), key=lambda i: (-episodes[i].ret, tiebreak[i]))
    return [episodes[i] for i in sorted(order[: math.ceil(top_fraction * len(episodes))])]


def selection_metrics(episodes: list[Episode], kept: list[Episode]) -> dict[str, float]:
    return {
        "train/kept_episodes": len(kept),
        "train/kept_fraction": len(kept) / max(len(episodes), 1),
        "train/return_threshold": min((e.ret for e in kept), default=float("nan")),
        "train/kept_mean_return": sum(e.ret for e in kept) / max(len(kept), 1),
    }


@dataclasses.dataclass(frozen=True)
class Selection:
    """The training-split selection of a run: a dataclass, so its repr keys the data cache."""

    data: str
    keep: str
    top_fraction: float
    seed: int

    def __call__(self, episodes: list[Episode]) -> tuple[list[Episode], dict[str, float]]:
        kept = select_episodes(episodes, self.keep, self.top_fraction, self.seed)
        if not kept:
            raise ValueError(f"filtered BC kept no episodes of {self.data} (keep={self.keep!r})")
        return kept, selection_metrics(episodes, kept)


def train(config: FilteredBCConfig, progress: Progress | None = None) -> Path:
    """BC (``bc.train``) on the selected training episodes; returns the run directory."""
    select = Selection(config.data, config.keep, config.top_fraction, config.seed)
    return bc.train(config, select=select, progress=progress)
