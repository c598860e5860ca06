"""Benchmark profiles: one named preset per (task, method) cell, at three scales.

- ``full``: the paper's settings (ALGORITHMS.md §3 tables = paper Table 3; models of §2.1;
  dataset sizes of paper Table 1; evaluation episodes of §4.2). For GPU machines.
- ``cpu``: tiny GPT-2, fewer rows and steps, higher learning rates for the tiny model (a
  documented deviation), 3 seeds. The README's results table comes from it.
- ``smoke``: ``make bench``: all six methods, 2 seeds, on Maze-FO and Wordle, plus the behaviour
  and scripted-optimum references on every other task; minutes on a 2-core CPU.

Per-task hyperparameters follow the paper (β, γ, τ, CQL weight, learning rates); a profile only
rescales sizes. ``lmrlgym bench run --profile P --dry-run`` prints every cell's resolved config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ALL_METHODS = ("bc", "filtered_bc", "mc", "ilql", "ppo", "online_filtered_bc")

# Task families share the paper's hyperparameter columns.
FAMILY = {
    "Maze-FO-v0": "maze", "Maze-PO-v0": "maze", "TextNav-FO-v0": "textnav",
    "TextNav-PO-v0": "textnav", "Wordle-v0": "wordle", "Chess-v0": "chess",
    "Endgames-v0": "endgames", "TwentyQuestions-v0": "dialogue", "GuessCity-v0": "dialogue",
    "CarDealer-v0": "dialogue",
}

# Paper Table 3 per family (ALGORITHMS.md §3.2-3.7).
PAPER_HPARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "mc": {
        "dialogue": dict(lr=1e-4, batch_size=128, beta=16.0, gamma=0.99, cql_weight=1e-3),
        "maze": dict(lr=1e-4, batch_size=128, beta=16.0, gamma=0.99, cql_weight=0.5),
        "textnav": dict(lr=1e-4, batch_size=128, beta=4.0, gamma=0.99, cql_weight=1e-3),
        "chess": dict(lr=1e-4, batch_size=64, beta=8.0, gamma=0.99, cql_weight=1e-4),
        "endgames": dict(lr=1e-4, batch_size=64, beta=8.0, gamma=0.99, cql_weight=1.0),
        "wordle": dict(lr=3e-5, batch_size=32, beta=64.0, gamma=1.0, cql_weight=0.01),
    },
    "ilql": {
        "dialogue": dict(lr=1e-4, batch_size=128, beta=4.0, cql_weight=1e-3, tau=0.7),
        "maze": dict(lr=1e-4, batch_size=128, beta=16.0, cql_weight=0.5, tau=0.99),
        "textnav": dict(lr=1e-4, batch_size=128, beta=1.0, cql_weight=1e-3, tau=0.7),
        "chess": dict(lr=1e-4, batch_size=128, beta=8.0, cql_weight=1e-4, tau=0.7),
        "endgames": dict(lr=1e-4, batch_size=128, beta=8.0, cql_weight=1.0, tau=0.7),
        "wordle": dict(lr=3e-5, batch_size=32, beta=32.0, cql_weight=0.01, tau=0.7),
    },
    "filtered_bc": {
        "dialogue": dict(keep="top_fraction", top_fraction=0.1),
        "maze": dict(keep="success"), "textnav": dict(keep="success"),
        "chess": dict(keep="success"), "endgames": dict(keep="success"),
        "wordle": dict(keep="top_fraction", top_fraction=0.3),
    },
}

# Prompt budget P and per-turn generation cap M (ALGORITHMS.md §3.1 and §4.1, original values).
IO = {
    "Maze-FO-v0": (256, 8), "Maze-PO-v0": (1024, 16), "TextNav-FO-v0": (1024, 32),
    "TextNav-PO-v0": (1024, 32), "Wordle-v0": (256, 16), "Chess-v0": (256, 16),
    "Endgames-v0": (150, 10), "TwentyQuestions-v0": (1024, 64), "GuessCity-v0": (1024, 64),
    "CarDealer-v0": (512, 96),
}
# Dataset sizes (paper Table 1) and evaluation episodes (ALGORITHMS.md §4.2) for `full`.
PAPER_DATA = {
    "Maze-FO-v0": 1240, "Maze-PO-v0": 1240, "TextNav-FO-v0": 2500, "TextNav-PO-v0": 2500,
    "Wordle-v0": 1_000_000, "Chess-v0": 625_000, "Endgames-v0": 97_800,
    "TwentyQuestions-v0": 100_000, "GuessCity-v0": 100_000, "CarDealer-v0": 19_000,
}
PAPER_EVAL = {
    "Maze-FO-v0": 800, "Maze-PO-v0": 800, "TextNav-FO-v0": 512, "TextNav-PO-v0": 512,
    "Wordle-v0": 4096, "Chess-v0": 1000, "Endgames-v0": 645, "TwentyQuestions-v0": 632,
    "GuessCity-v0": 500, "CarDealer-v0": 512,
}
PAPER_MODEL = {**{t: "gpt2" for t in FAMILY}, "TwentyQuestions-v0": "gpt2-medium",
               "GuessCity-v0": "gpt2-medium", "CarDealer-v0": "gpt2-xl"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark scale; hyperparameters come from the paper tables above."""

    name: str
    method_tasks: tuple[str, ...]
    """Tasks on which every method is trained."""
    reference_tasks: tuple[str, ...]
    """Tasks that only get the behaviour-policy and scripted-optimum references."""
    seeds: tuple[int, ...]
    model: dict[str, str]
    data: dict[str, int]
    eval: dict[str, int]
    offline_steps: int | None
    """Optimizer steps of each offline method (None: the config's epochs)."""
    batch_size: int | None
    """Rows per step for every method (None: the paper's per-task value)."""
    lr_scale: float
    """Multiplies the paper's learning rates (tiny models train with larger steps)."""
    online: dict[str, Any]
    """PPO / online filtered BC sizes (rounds, rollouts per round)."""
    extra: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per-method fields set for every task (e.g. vocabulary size)."""
    eval_env_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    data_workers: int = 1

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.method_tasks + self.reference_tasks

    def methods(self, task: str) -> tuple[str, ...]:
        return ALL_METHODS if task in self.method_tasks else ()

    def data_episodes(self, task: str) -> int:
        return self.data[task]

    def eval_episodes(self, task: str) -> int:
        return self.eval[task]

    def env_kwargs(self, task: str) -> dict[str, Any]:
        return dict(self.eval_env_kwargs.get(task, {}))

    def decoding(self, task: str) -> dict[str, Any]:
        # The paper's numbers were sampled at temperature 1 (ALGORITHMS.md §4.1).
        return {"temperature": 1.0, "greedy": False}

    def overrides(self, task: str, method: str) -> dict[str, Any]:
        """The fields of one cell's config (the cell's named preset)."""
        family = FAMILY[task]
        p, m = IO[task]
        values: dict[str, Any] = {"model": self.model[task], "max_context_tokens": p,
                                  "max_new_tokens": m}
        values.update(PAPER_HPARAMS.get(method, {}).get(family, {}))
        if "lr" in values:
            values["lr"] = values["lr"] * self.lr_scale
        elif method in ("bc", "filtered_bc"):
            values["lr"] = 1e-4 * self.lr_scale  # paper Table 3
        if self.batch_size is not None and method not in ("ppo", "online_filtered_bc"):
            values["batch_size"] = self.batch_size
        if method in ("ppo", "online_filtered_bc"):
            values.update(self.online.get(method, {}))
        elif self.offline_steps is not None:
            values["max_steps"] = self.offline_steps
        values.update(self.extra.get(method, {}))
        values.update(self.extra.get("*", {}))
        return values


_SMALL_EVAL = {"Maze-FO-v0": 100, "Maze-PO-v0": 50, "Wordle-v0": 128, "TextNav-FO-v0": 16,
               "TextNav-PO-v0": 16, "Chess-v0": 4, "Endgames-v0": 16, "TwentyQuestions-v0": 158,
               "GuessCity-v0": 100, "CarDealer-v0": 64}
_ALL_TASKS = tuple(FAMILY)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        method_tasks=("Maze-FO-v0", "Wordle-v0"),
        reference_tasks=tuple(t for t in _ALL_TASKS if t not in ("Maze-FO-v0", "Wordle-v0")),
        seeds=(0, 1),
        model={t: "gpt2-tiny" for t in _ALL_TASKS},
        data={**{t: 400 for t in _ALL_TASKS}, "Maze-FO-v0": 1240, "Wordle-v0": 2000},
        eval=_SMALL_EVAL,
        offline_steps=150,
        batch_size=32,
        lr_scale=10.0,
        online={"ppo": {"n_rounds": 4, "rollouts_per_round": 32, "lr": 1e-4},
                "online_filtered_bc": {"n_rounds": 4, "rollouts_per_round": 32, "lr": 1e-3}},
        extra={"*": {"vocab_size": 256}},
    ),
    "cpu": Profile(
        name="cpu",
        method_tasks=("Maze-FO-v0", "Wordle-v0"),
        reference_tasks=tuple(t for t in _ALL_TASKS if t not in ("Maze-FO-v0", "Wordle-v0")),
        seeds=(0, 1, 2),
        model={t: "gpt2-tiny" for t in _ALL_TASKS},
        data={**{t: 1000 for t in _ALL_TASKS}, "Maze-FO-v0": 1240, "Wordle-v0": 10_000},
        eval={**_SMALL_EVAL, "Maze-FO-v0": 200, "Wordle-v0": 256},
        offline_steps=500,
        batch_size=64,
        lr_scale=10.0,
        online={"ppo": {"n_rounds": 10, "rollouts_per_round": 64, "lr": 1e-4},
                "online_filtered_bc": {"n_rounds": 10, "rollouts_per_round": 64, "lr": 1e-3}},
        extra={"*": {"vocab_size": 384}},
    ),
    "full": Profile(
        name="full",
        method_tasks=_ALL_TASKS,
        reference_tasks=(),
        seeds=(0, 1, 2),
        model=PAPER_MODEL,
        data=PAPER_DATA,
        eval=PAPER_EVAL,
        offline_steps=None,
        batch_size=None,
        lr_scale=1.0,
        online={},
        data_workers=8,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}") from None
