"""Benchmark profiles: one named preset per (task, method) cell, at three scales.

- ``full``: the paper's settings (docs/algorithms.md §3 tables = paper Table 3; models of §2.1;
  dataset sizes of paper Table 1; evaluation episodes of §4.2). For GPU machines.
- ``cpu``: tiny GPT-2, fewer rows and steps, higher learning rates and CPU-scale γ/β for the
  tiny model (documented deviations, see ``SMALL_VALUE``), 3 seeds. The README's results table
  comes from it, and ``lmrlgym train`` / ``eval`` use its sizes where no GPU is found
  (``--preset``, :func:`choose_preset`).
- ``smoke``: ``make bench``: the paper's six methods, 2 seeds, on Maze-FO and Wordle, plus the behaviour
  and scripted-optimum references on every other task; minutes on a 2-core CPU.

Per-task hyperparameters come from each algorithm's ``preset(task)`` (paper Table 3: β, γ, τ,
CQL weight, learning rates, prompt lengths); a profile rescales sizes and learning rates, and the
small ones set the documented CPU-scale values (``SMALL_VALUE``, ``SMALL_TASK``,
``CPU_MAZE_ILQL``). ``lmrlgym bench run --profile P --dry-run`` prints every cell's resolved
config.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from lmrlgym.envs import TASK_IDS
from lmrlgym.models.decoding import Decoding
from lmrlgym.registry import spec

if TYPE_CHECKING:
    from lmrlgym.algos.config import TrainConfig

PAPER_METHODS = ("bc", "filtered_bc", "mc", "ilql", "ppo", "online_filtered_bc")
# Beyond the paper (docs/algorithms.md §3.8-3.9); every online method starts from BC.
NEW_ONLINE = ("grpo", "rloo", "gigpo", "archer")
ALL_METHODS = PAPER_METHODS + NEW_ONLINE
ONLINE = ("ppo", "online_filtered_bc", *NEW_ONLINE)
TASKS = TASK_IDS

# The `full` profile's sizes, from each task's registry spec: dataset sizes (paper Table 1),
# evaluation episodes (its protocol, docs/algorithms.md §4.2) and models (paper §5, §2.1).
PAPER_DATA = {t: spec(t).paper.data_episodes for t in TASKS}
PAPER_EVAL = {t: spec(t).protocol.episodes for t in TASKS}
PAPER_MODEL = {t: spec(t).paper.model for t in TASKS}
# Offline value methods on the tiny model (tests/algos/test_learning.py): with the paper's
# β 16 / γ 0.99 on Maze, MC's return regression swamps the shared 2-layer trunk and ILQL's
# advantages drown the LM logits, giving ~99 % illegal moves. These CPU-scale values
# (γ 0.9, β 4, faster Polyak) are documented deviations; `full` keeps the paper's.
SMALL_VALUE = {
    "mc": {"gamma": 0.9, "beta": 4.0},
    "ilql": {"gamma": 0.9, "beta": 4.0, "polyak_alpha": 0.05},
}
# Filtered BC on Maze-FO keeps the best 30 % of episodes by return, not the paper's successful
# ones: the sub-maze dataset's episodes stop at the sub-maze exits, so only ~10 % succeed, all in
# the goal's sub-maze, and a policy cloned from them never sees the other start cells (measured
# in docs/cpu-scale.md, "Filtered BC on Maze-FO").
# Maze-PO's default dataset is the same sub-maze behaviour, so it gets the same filter (by that
# argument; the fraction was selected on Maze-FO only).
SMALL_TASK = {("Maze-FO-v0", "mc"): {"head_bias": -5.0},
              **{(t, "filtered_bc"): {"keep": "top_fraction", "top_fraction": 0.3}
                 for t in ("Maze-FO-v0", "Maze-PO-v0")}}
# ILQL on Maze-FO in the cpu profile (docs/cpu-scale.md, "The cpu profile's ILQL"): the value
# heads on a fresh trunk of their own, one TD hop per move, the world-model loss that tells
# mirror cells apart, and the four moves reranked by Q at each move's last token. The policy's
# LM plays no part in that decoding. 2,000 steps: the value map orders the cells (ρ > 0.9) by
# ~1,000 and the moves follow by ~1,500-2,000.
CPU_MAZE_ILQL = {
    "value_model": "separate", "value_init": "fresh", "backup": "turn", "discount_mode": "turn",
    "aux_lm_weight": 0.1, "gamma": 0.9, "tau": 0.9, "polyak_alpha": 0.05, "head_bias": -5.0,
    "cql_weight": 0.0, "lr": 1e-3, "batch_size": 64, "max_steps": 2000,
    "decode": "rerank", "rerank_score": "turn",
}

# Small profiles: a Wordle guess is ~10 tokens, so the default 1920 + 128 budget only slows
# an untrained tiny model down; the window still holds the whole game.
SMALL_LENGTHS = {"Wordle-v0": {"max_context_tokens": 256, "max_new_tokens": 16}}


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
    offline_steps: dict[str, int] | None
    """Optimizer steps of each offline method per task, ``"*"`` for the others (None: the
    config's epochs)."""
    batch_size: int | None
    """Rows per step for every method (None: the paper's per-task value)."""
    lr_scale: float
    """Multiplies the paper's learning rates (tiny models train with larger steps)."""
    online: dict[str, Any]
    """Online methods' sizes (rounds, rollouts per round, group size, critic updates)."""
    extra: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per-method fields set for every task (e.g. vocabulary size)."""
    task_extra: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per-(task, method) fields, applied last."""
    lengths: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """Per-task prompt/generation budgets replacing the paper's (small profiles only)."""
    eval_env_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    data_workers: int = 1
    method_names: tuple[str, ...] = ALL_METHODS
    """The methods trained on each of ``method_tasks``."""
    task_methods: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Per-task method lists replacing ``method_names`` (tasks of ``method_tasks`` only)."""

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.method_tasks + self.reference_tasks

    def methods(self, task: str) -> tuple[str, ...]:
        if task not in self.method_tasks:
            return ()
        return self.task_methods.get(task, self.method_names)

    def data_episodes(self, task: str) -> int:
        return self.data[task]

    def eval_episodes(self, task: str) -> int:
        return self.eval[task]

    def env_kwargs(self, task: str) -> dict[str, Any]:
        return dict(self.eval_env_kwargs.get(task, {}))

    def decoding(self, task: str, run: Decoding) -> Decoding:
        """How a trained cell is evaluated: its run's decoding (decode mode, token cap) sampled
        at temperature 1, as the paper's numbers were (docs/algorithms.md §4.1)."""
        return dataclasses.replace(run, temperature=1.0, greedy=False)

    def overrides(self, task: str, method: str, base: Any) -> dict[str, Any]:
        """How this profile rescales one cell's paper preset ``base`` (a config instance)."""
        values: dict[str, Any] = {"model": self.model[task], "lr": base.lr * self.lr_scale}
        values.update(self.lengths.get(task, {}))
        if method in ONLINE:
            values.update(self.online.get(method, {}))
        else:
            if self.batch_size is not None:
                values["batch_size"] = self.batch_size
            if self.offline_steps is not None:
                values["max_steps"] = self.offline_steps.get(task, self.offline_steps["*"])
        values.update(self.extra.get("*", {}))
        values.update(self.extra.get(method, {}))
        values.update(self.task_extra.get((task, method), {}))
        return values


# Online methods in the small profiles. PPO on the tiny model: one epoch at lr 3e-4 learns
# fastest; more epochs or larger steps drift into illegal moves within a few rounds (the
# paper's Maze collapse). At 3 rounds of 32 rollouts one smoke seed still collapsed; at these
# sizes both online methods improved on their BC start on 10 of 10 seeds (docs/cpu-scale.md).
# The methods beyond the paper get the same 4 rounds × 48 episodes (192 env episodes per cell):
# the group methods as 6 start states × K = 8, and PPO's step size, epochs and batch; ArCHer
# trains only its critic in round 1 (100 updates of 32 transitions per round: after 20 its
# Q − V carried no signal and the actor collapsed; critic lr as the tiny-model learning test,
# tests/algos/test_pg_methods.py).
_SMALL_PG = {"n_rounds": 4, "rollouts_per_round": 48, "lr": 3e-4, "epochs_per_round": 1,
             "batch_size": 64}
SMALL_ONLINE = {"ppo": dict(_SMALL_PG),
                "online_filtered_bc": {"n_rounds": 4, "rollouts_per_round": 48, "lr": 1e-3},
                **{m: {**_SMALL_PG, "group_size": 8} for m in ("grpo", "rloo", "gigpo")},
                "archer": {**_SMALL_PG, "warmup_rounds": 1, "critic_steps": 100,
                           "critic_batch_size": 32, "critic_lr": 1e-3}}


def online_budget(profile: Profile) -> str:
    """The caption line stating the environment episodes each online cell trains on, or ""
    when the profile keeps the methods' own sizes (``full``)."""
    sizes = {m: v["n_rounds"] * v["rollouts_per_round"] for m, v in profile.online.items()
             if m in profile.method_names}
    if not sizes:
        return ""
    per = ", ".join(f"{m} {n}" for m, n in sizes.items())
    same = len(set(sizes.values())) == 1
    head = (f"Online budget: {next(iter(sizes.values()))} environment episodes per cell for every "
            "online method" if same else f"Online budget (environment episodes per cell): {per}")
    groups = {profile.online[m].get("group_size") for m in ("grpo", "rloo", "gigpo") if m in sizes}
    tail = f" (GRPO, RLOO and GiGPO: groups of K = {groups.pop()} episodes per start state)" if len(groups) == 1 else ""
    return head + tail + "."

# Evaluation episodes of the smoke profile: Maze covers every start cell, 20Q and Guess every
# item; engine- and TextWorld-backed tasks get a handful (their references are scripted).
_SMOKE_EVAL = {"Maze-FO-v0": 100, "Maze-PO-v0": 25, "Wordle-v0": 64, "TextNav-FO-v0": 8,
               "TextNav-PO-v0": 8, "Chess-v0": 2, "Endgames-v0": 8, "TwentyQuestions-v0": 158,
               "GuessCity-v0": 100, "CarDealer-v0": 64}

def _other_tasks(*method_tasks: str) -> tuple[str, ...]:
    """The tasks a small profile gives only the scripted references."""
    return tuple(t for t in TASKS if t not in method_tasks)


_CPU = Profile(
    name="cpu",
    method_tasks=("Maze-FO-v0", "Maze-PO-v0", "Wordle-v0"),
    reference_tasks=_other_tasks("Maze-FO-v0", "Maze-PO-v0", "Wordle-v0"),
    seeds=(0, 1, 2),
    model={t: "gpt2-tiny" for t in TASKS},
    data={**{t: 1000 for t in TASKS}, "Maze-FO-v0": 1240, "Wordle-v0": 5000},
    eval={"Maze-FO-v0": 200, "Maze-PO-v0": 50, "Wordle-v0": 256, "TextNav-FO-v0": 16,
          "TextNav-PO-v0": 16, "Chess-v0": 4, "Endgames-v0": 16, "TwentyQuestions-v0": 158,
          "GuessCity-v0": 100, "CarDealer-v0": 64},
    offline_steps={"*": 300},
    batch_size=32,
    lr_scale=30.0,
    online=SMALL_ONLINE,
    # 512 merges keep "move right\n" at ~3 tokens (320 leaves it at ~9, over the 8 cap).
    extra={"*": {"vocab_size": 512}, **SMALL_VALUE},
    task_extra={**SMALL_TASK, ("Maze-FO-v0", "ilql"): CPU_MAZE_ILQL},
    lengths=SMALL_LENGTHS,
    # Maze-PO: the offline methods only. Its rows carry up to 40 turns of history (~8 min per
    # BC cell on 2 cores, 4x Maze-FO's); online cells were not measured at this scale.
    task_methods={"Maze-PO-v0": ("bc", "filtered_bc", "mc", "ilql")},
)

PROFILES: dict[str, Profile] = {
    # The cpu profile with 2 seeds, smaller datasets and evaluations.
    "smoke": dataclasses.replace(
        _CPU,
        name="smoke",
        method_tasks=("Maze-FO-v0", "Wordle-v0"),
        reference_tasks=_other_tasks("Maze-FO-v0", "Wordle-v0"),
        seeds=(0, 1),
        data={**{t: 400 for t in TASKS}, "Maze-FO-v0": 1240, "Wordle-v0": 2000},
        eval=_SMOKE_EVAL,
        # Maze-FO keeps the cpu profile's 300 steps (BC's validation loss is flat from ~250).
        # Wordle gets 100: a tiny model needs ~2,000 steps just to spell valid guesses
        # (docs/cpu-scale.md), beyond a smoke budget.
        offline_steps={"*": 100, "Maze-FO-v0": 300},
        # The paper's six only: the four newer online methods do not fit its 15 minutes.
        method_names=PAPER_METHODS,
        # ILQL keeps the shared layout's 300 steps: the cpu profile's 2,000 would not fit either.
        task_extra=SMALL_TASK,
    ),
    "cpu": _CPU,
    "full": Profile(
        name="full",
        method_tasks=TASKS,
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


def sized_config(profile: Profile, method: str, task: str, **values: Any) -> TrainConfig:
    """``method``'s paper preset for ``task``, rescaled by ``profile``, then ``values``: every
    bench cell's config, and the defaults of ``lmrlgym train --preset``."""
    from lmrlgym.algos import algorithm

    base = algorithm(method).preset(task)
    values = {**profile.overrides(task, method, base), **values}
    unknown = set(values) - {f.name for f in dataclasses.fields(base)}
    if unknown:
        raise ValueError(f"preset {profile.name}/{task}/{method} sets unknown "
                         f"{type(base).__name__} fields: {sorted(unknown)}")
    return dataclasses.replace(base, **values)


# `--preset` of `lmrlgym train` and `lmrlgym eval` -> the profile whose sizes it uses.
PRESET_PROFILES = {"cpu": "cpu", "paper": "full"}
PRESETS = ("auto", *PRESET_PROFILES)


@dataclasses.dataclass(frozen=True)
class PresetChoice:
    """What ``--preset`` and ``--device`` resolve to for ``lmrlgym train`` and ``eval``."""

    name: str
    """``cpu`` or ``paper``."""
    device: str
    """``--device`` if given, else ``cuda`` when a GPU is found, else ``cpu``."""
    reason: str | None
    """Why ``auto`` chose the CPU preset (``no GPU found`` or ``--device cpu``), else None."""

    @property
    def profile(self) -> Profile:
        return PROFILES[PRESET_PROFILES[self.name]]

    def announcement(self, sizes: str) -> str | None:
        """The one line saying that the CPU preset is used (None for the paper's)."""
        if self.name != "cpu":
            return None
        line = f"using the CPU preset ({sizes})"
        if self.reason:
            line = f"{self.reason}: {line}; pass --preset paper for the paper's settings"
        return line


def choose_preset(preset: str = "auto", device: str | None = None,
                  cuda: bool | None = None) -> PresetChoice:
    """``auto`` is ``paper`` on a CUDA device and ``cpu`` otherwise. ``device`` is the user's
    ``--device`` (None: ``cuda`` if ``cuda``, default: ``torch.cuda.is_available()``)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: valid: {', '.join(PRESETS)}")
    if device is None:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        device, reason = ("cuda" if cuda else "cpu"), "no GPU found"
    else:
        reason = f"--device {device}"
    gpu = device.startswith("cuda")
    name = preset if preset != "auto" else ("paper" if gpu else "cpu")
    return PresetChoice(name, device, reason if preset == "auto" and not gpu else None)
