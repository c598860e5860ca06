"""GiGPO: GRPO's episode-level advantage plus a step-level advantage from anchor-state groups.

Paper: Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training" (GiGPO);
settings from verl-agent's ALFWorld GiGPO example (γ 0.95, step weight 1, mean/std
normalisation, K = 8, KL loss 0.01).

Within one group (K episodes from the same start state), every step whose observation text is
identical forms an *anchor group*, wherever in the episodes it occurs (revisits included).
Each step's discounted return-to-go ``G_t = Σ_{k≥t} γ^{k−t} r_k`` is normalised within its
anchor group, and the step's advantage is ``A = A^E + ω A^S``: ``A^E`` GRPO's episode
advantage (§3.8), ``A^S`` the step-level one (0 for a step whose observation no other step
shares). The grouping key is the observation the policy saw before acting, the text of the
env's context window (``context_turns``): the current cell on Maze-FO, the last 40 turns on
Maze-PO, the board on Chess and Endgames, the whole history on the append-only tasks
(docs/algorithms.md §3.8 lists them).

Logged keys: as GRPO (``grpo`` module docstring), plus ``train/anchored_steps`` (the share of
steps in an anchor group of two or more) and ``train/anchor_groups`` (how many such groups).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos import grpo, online, presets
from lmrlgym.algos.loop import Progress
from lmrlgym.algos.rl import returns_to_go
from lmrlgym.core import Episode
from lmrlgym.models.render import ContextFn


@dataclasses.dataclass(frozen=True)
class GiGPOConfig(grpo.GRPOConfig):
    """GiGPO (docs/algorithms.md §3.8). Defaults: Feng et al. 2025 via verl-agent's ALFWorld
    example; PPO's sizes for the rest."""

    ALGO: ClassVar[str] = "gigpo"

    gamma: float = 0.95
    """Per-turn discount of the step-level returns (verl-agent GiGPO examples: 0.95)."""
    step_weight: float = 1.0
    """ω, the weight of the step-level advantage (verl-agent ``step_advantage_w``: 1.0)."""
    kl_coef: float = 0.01
    """Weight of the per-token k3 KL to the reference (verl-agent examples: 0.01)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"--gamma must be in [0, 1], got {self.gamma}")
        if self.step_weight < 0:
            raise ValueError(f"--step-weight must be non-negative, got {self.step_weight}")


CONFIG = GiGPOConfig  # what `lmrlgym train gigpo` parses


def preset(task: str, **overrides: Any) -> GiGPOConfig:
    """GiGPO config for ``task``: PPO's per-task learning rate and batch plus ``overrides``."""
    return presets.task_preset(GiGPOConfig, task, grpo.PG_PRESETS, **overrides)


def observation_keys(episode: Episode, window: ContextFn) -> list[str]:
    """Per action turn, the anchor key: the text of the context window the policy saw."""
    turns = episode.turns
    return ["".join(t.text for t in window(turns[:i])) for i, t in enumerate(turns) if t.is_action]


def anchor_groups(keys: Sequence[Sequence[str]], groups: Sequence[int]) -> dict[tuple[int, str], list[tuple[int, int]]]:
    """``(group, key) -> [(episode, turn), ...]``: the steps of one group's episodes that saw the
    same observation, in episode then turn order."""
    out: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for i, episode_keys in enumerate(keys):
        for t, key in enumerate(episode_keys):
            out.setdefault((groups[i], key), []).append((i, t))
    return out


def gigpo_advantages(rewards: Sequence[Sequence[float]], keys: Sequence[Sequence[str]],
                     groups: Sequence[int], gamma: float, step_weight: float,
                     std_normalize: bool = True) -> list[list[float]]:
    """Per episode, per action turn: ``A^E_i + ω A^S_{i,t}`` (§3.8).

    ``rewards[i][t]``/``keys[i][t]``: turn ``t``'s reward and observation key in episode ``i``.
    ``A^E``: :func:`grpo.grpo_advantages` of the undiscounted returns; ``A^S``: each step's
    return-to-go (discount ``gamma`` per turn) normalised within its anchor group."""
    ep = grpo.grpo_advantages([sum(r) for r in rewards], groups, std_normalize)
    rtg = [returns_to_go(r, [gamma] * len(r)) for r in rewards]
    step = [[0.0] * len(r) for r in rewards]
    for members in anchor_groups(keys, groups).values():
        values = grpo.group_normalize([rtg[i][t] for i, t in members], [0] * len(members),
                                      std_normalize)
        for (i, t), v in zip(members, values, strict=True):
            step[i][t] = v
    return [[ep[i] + step_weight * s for s in step[i]] for i in range(len(rewards))]


class GiGPOMethod(grpo.PGMethod):
    """K rollouts per start state, per-turn advantages from :func:`gigpo_advantages`."""

    def __init__(self, config: GiGPOConfig, lm: nn.Module, tokenizer: PreTrainedTokenizerBase):
        super().__init__(config, lm, tokenizer)
        self.group_size = config.group_size

    def turn_advantages(self, loop: online.OnlineLoop, rnd: int,
                        rollouts: list[online.Rollout]) -> tuple[list[list[float]], dict[str, float]]:
        config = self.config
        groups = grpo.episode_groups(rollouts, self.group_size)
        rewards = [[t.reward for t in r.episode.turns if t.is_action] for r in rollouts]
        keys = [observation_keys(r.episode, self.window) for r in rollouts]
        adv = gigpo_advantages(rewards, keys, groups, config.gamma, config.step_weight,
                               config.std_normalize)
        shared = [m for m in anchor_groups(keys, groups).values() if len(m) > 1]
        n_steps = sum(len(k) for k in keys)
        metrics = {**grpo.group_metrics([r.episode.ret for r in rollouts], groups),
                   "train/anchored_steps": sum(len(m) for m in shared) / max(n_steps, 1),
                   "train/anchor_groups": float(len(shared))}
        return adv, metrics


def train(config: GiGPOConfig, progress: Progress | None = None) -> Path:
    """Run GiGPO from ``init_from`` (a BC run) and return the run directory."""
    return online.run(config, GiGPOMethod, progress)
