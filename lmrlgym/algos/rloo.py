"""RLOO, multi-turn: K rollouts per start state, each episode's return compared with the mean
of the group's *other* returns, that advantage on every action token of the episode, GRPO's
clipped objective and optional KL term; no value head.

Papers: Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!" (the
leave-one-out baseline); Ahmadian et al. 2024, "Back to Basics" (RLOO for language models,
k = 2 or 4 samples per prompt, 4 best). The baseline of episode ``i`` does not contain ``R_i``,
so the estimator is unbiased for any K ≥ 2 (docs/algorithms.md §3.8); GRPO's group mean
contains it (a gradient shrunk by (K − 1)/K, and biased once divided by the std).

Why a module of its own rather than a switch of ``grpo``: each ``lmrlgym train`` name has one
config class (a run directory records it), RLOO has no std division to switch, and what
differs from GRPO is one pure function; the loop, the loss and the scoring are ``grpo``'s.

Logged keys: as GRPO (``grpo`` module docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lmrlgym.algos import grpo, online, presets
from lmrlgym.algos.loop import Progress


@dataclasses.dataclass(frozen=True)
class RLOOConfig(grpo.GroupConfig):
    """Multi-turn RLOO (docs/algorithms.md §3.8). Defaults: GRPO's (a KL loss term of 0.04;
    Ahmadian et al. put the KL in the reward instead), with Ahmadian et al.'s k = 4."""

    ALGO: ClassVar[str] = "rloo"

    group_size: int = 4
    """K, episodes per start state (Ahmadian et al. 2024: k = 4 did best of 2 and 4)."""


CONFIG = RLOOConfig  # what `lmrlgym train rloo` parses


def preset(task: str, **overrides: Any) -> RLOOConfig:
    """RLOO config for ``task``: PPO's per-task learning rate and batch plus ``overrides``."""
    return presets.task_preset(RLOOConfig, task, grpo.PG_PRESETS, **overrides)


def rloo_advantages(returns: Sequence[float], groups: Sequence[int]) -> list[float]:
    """``A_i = R_i − (1/(K_g − 1)) Σ_{j∈g, j≠i} R_j = K_g/(K_g − 1) · (R_i − mean_g)`` for
    episode ``i`` of group ``g`` with ``K_g`` members (0 for a group of one), §3.8."""
    r, g = np.asarray(returns, dtype=np.float64), np.asarray(groups)
    out = np.zeros_like(r)
    for label in np.unique(g):
        m = g == label
        k = int(m.sum())
        if k > 1:
            out[m] = (r[m] - (r[m].sum() - r[m]) / (k - 1))
    return out.tolist()


class RLOOMethod(grpo.GroupMethod):
    def episode_advantages(self, returns: list[float], groups: list[int]) -> list[float]:
        return rloo_advantages(returns, groups)


def train(config: RLOOConfig, progress: Progress | None = None) -> Path:
    """Run multi-turn RLOO from ``init_from`` (a BC run) and return the run directory."""
    return online.run(config, RLOOMethod, progress)
