"""Dataset statistics: the figures of a manifest, recomputed from episodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmrlgym.core import Episode


def episode_stats(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Counts, success rate, return and length (agent turns) mean/std; paper Table 1's columns."""
    if not episodes:
        raise ValueError("no episodes")
    returns = np.array([ep.ret for ep in episodes], dtype=np.float64)
    lengths = np.array([ep.n_actions for ep in episodes], dtype=np.float64)
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([ep.success for ep in episodes])),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(lengths.mean()),
        "length_std": float(lengths.std()),
        "terminated_rate": float(np.mean([ep.terminated for ep in episodes])),
        "actions": int(lengths.sum()),
    }
