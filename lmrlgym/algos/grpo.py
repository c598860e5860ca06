"""Multi-turn GRPO: K rollouts per start state, each episode's return compared with its group's,
that advantage on every action token of the episode, the clipped ratio objective and an optional
KL term to the reference; no value head.

Papers: Shao et al. 2024, DeepSeekMath, §4.1 (GRPO: group-normalised outcome advantages, the
clipped objective, the k3 KL to the reference as a loss term); Liu et al. 2025, "Understanding
R1-Zero-Like Training" (Dr.GRPO: dividing by the group's standard deviation up-weights groups
of nearly equal returns, i.e. too-easy or too-hard start states; ``std_normalize=False``
drops it). Multi-turn: an episode's return is the sum of its turns' rewards (docs/algorithms.md
§3.8).

This module also holds what the policy-gradient methods without a value head share (RLOO,
GiGPO and ArCHer use it): :class:`PGConfig`, the loss :func:`pg_loss` and
:class:`PGMethod`, the online-loop method that trains the policy on per-turn advantages
given by a subclass (``turn_advantages``). One round: collect (K per start state for the
group methods), ask the subclass for each episode's per-turn advantages, spread each turn's
advantage over its action tokens, score ``old_logp`` (and ``ref_logp``) without gradients,
then ``epochs_per_round`` passes of the clipped objective.

Under torchrun/accelerate each rank plays a share of the round (every rank then holds all of
it, so the groups are whole), scores a share of the rows, and trains on a slice of each
minibatch (algos/distributed.py).

Logged keys (one line per round, ``step`` = round): ``rollout/*`` as PPO, ``train/{loss,
pg_loss, kl_loss, approx_kl, clip_frac, kl_ref, advantage_mean, advantage_std,
group_return_std, flat_groups, lr, grad_norm, action_tokens, optimizer_steps, round}``
(``kl_loss`` and ``kl_ref`` only with ``kl_coef > 0``), ``time/*`` and the ``eval/*`` keys.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos import distributed, online, ppo, presets
from lmrlgym.algos.backbone import action_logp, banned_ids, hidden_states
from lmrlgym.algos.dataset import context_fn
from lmrlgym.algos.loop import Progress
from lmrlgym.algos.rl import step_mean, step_view
from lmrlgym.models.render import Batch, Segment, collate


@dataclasses.dataclass(frozen=True)
class PGConfig(online.OnlineConfig):
    """What the policy-gradient methods without a value head share (GRPO, RLOO, GiGPO,
    ArCHer's actor)."""

    lr: float = 1e-6
    """AdamW learning rate (DeepSeekMath GRPO: 1e-6; the paper's PPO on Maze: 1e-6)."""
    batch_size: int = 128
    """Rows per optimizer step (as PPO, paper Table 3: 128; Wordle 32)."""
    clip_range: float = 0.2
    """Policy ratio clip ε (PPO's and GRPO's 0.2)."""
    kl_coef: float = 0.0
    """Weight of the per-token k3 KL to the frozen initial policy, as a loss term (0: no
    reference is kept)."""
    center_advantages: bool = True
    """Subtract the round's mean advantage over its action tokens before the update: a
    constant baseline shift (the gradient stays unbiased) that stops the collapse into
    illegal actions on multi-turn tasks (docs/algorithms.md §3.8, "Token centring")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_range <= 0:
            raise ValueError(f"--clip-range must be positive, got {self.clip_range}")
        if self.kl_coef < 0:
            raise ValueError(f"--kl-coef must be non-negative, got {self.kl_coef}")


@dataclasses.dataclass(frozen=True)
class GroupConfig(PGConfig):
    """The group-baseline methods (GRPO, RLOO, GiGPO): ``group_size`` rollouts per start state."""

    group_size: int = 8
    """K, episodes per start state (the same env seed, so the same reset); GiGPO and
    verl-agent's examples: 8."""
    n_rounds: int = 60
    """Rollout/update rounds (as PPO)."""
    rollouts_per_round: int = 512
    """Episodes per round, ``rollouts_per_round / group_size`` start states (as PPO's 512)."""
    kl_coef: float = 0.04
    """Weight of the per-token k3 KL to the reference (DeepSeekMath GRPO: 0.04)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"--group-size must be at least 2 (a group baseline), got {self.group_size}")
        if self.rollouts_per_round % self.group_size:
            raise ValueError(f"--rollouts-per-round {self.rollouts_per_round} is not a multiple of "
                             f"--group-size {self.group_size}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig(GroupConfig):
    """Multi-turn GRPO (docs/algorithms.md §3.8). Defaults: DeepSeekMath's GRPO settings, PPO's
    sizes where it has none."""

    ALGO: ClassVar[str] = "grpo"

    std_normalize: bool = True
    """Divide by the group's standard deviation (GRPO); False: only subtract the group mean
    (Dr.GRPO, which found the division biased toward groups of nearly equal returns)."""


CONFIG = GRPOConfig  # what `lmrlgym train grpo` parses

# Per task: the learning rate and batch size of PPO's column of paper Table 3 (the same models
# on the same tasks; docs/algorithms.md §3.6). The other settings have no per-task source.
PG_PRESETS = {task: {k: v for k, v in values.items() if k in ("lr", "batch_size")}
              for task, values in ppo.PAPER_PRESETS.items()}


def preset(task: str, **overrides: Any) -> GRPOConfig:
    """GRPO config for ``task``: PPO's per-task learning rate and batch plus ``overrides``."""
    return presets.task_preset(GRPOConfig, task, PG_PRESETS, **overrides)


# --------------------------------------------------------------------------------------------
# The estimator and the loss (pure)
# --------------------------------------------------------------------------------------------

STD_EPS = 1e-6  # a group of equal returns gets advantage 0, not 0/0


def group_normalize(x: Sequence[float], groups: Sequence[int], std_normalize: bool) -> list[float]:
    """``(x_i − mean_g) / (std_g + eps)`` over the members of each ``groups`` label (std
    population, ``ddof=0``); without ``std_normalize`` only ``x_i − mean_g``."""
    x_arr, g_arr = np.asarray(x, dtype=np.float64), np.asarray(groups)
    out = np.zeros_like(x_arr)
    for g in np.unique(g_arr):
        m = g_arr == g
        centred = x_arr[m] - x_arr[m].mean()
        out[m] = centred / (x_arr[m].std() + STD_EPS) if std_normalize else centred
    return out.tolist()


def grpo_advantages(returns: Sequence[float], groups: Sequence[int],
                    std_normalize: bool = True) -> list[float]:
    """Episode-level GRPO advantage ``A_i = (R_i − mean_{j∈g} R_j) / (std_{j∈g} R_j + eps)``
    of each episode ``i`` in group ``g`` (Dr.GRPO without the division), §3.8."""
    return group_normalize(returns, groups, std_normalize)


def token_turns(segment: Segment) -> Tensor:
    """(k,): the episode action-turn index of each of the row's ``k`` action steps (``step_view``
    order): ``first_turn`` plus the turn ends before the step."""
    act = segment.action_mask[1:]
    end = segment.turn_end[1:][act].long()
    return segment.first_turn + torch.cumsum(end, 0) - end


def spread(segment: Segment, per_turn: Sequence[float]) -> Tensor:
    """(k,): each action step of the row gets its turn's value from ``per_turn`` (the
    episode's values, one per action turn)."""
    return torch.tensor(per_turn, dtype=torch.float32)[token_turns(segment)]


def center_tokens(adv: Sequence[Tensor]) -> list[Tensor]:
    """Each row's per-token advantages minus their mean over all the rows' tokens, §3.8.

    A constant baseline shift, so the policy gradient stays unbiased. Why it is needed: an
    episode-level advantage given to every token weights episode ``i`` by its length ``L_i``,
    and on multi-turn tasks the failed episodes are the long ones, so ``Σ_i L_i A_i < 0``: the
    round pushes down the tokens every turn shares (``move``, the newline), and Adam turns that
    small, consistent push into full-size steps toward tokens no legal action uses."""
    shift = torch.cat(list(adv)).mean()
    return [a - shift for a in adv]


@dataclasses.dataclass
class PGTargets:
    """Per-action-step quantities of one row, flat over its ``k`` steps."""

    old_logp: Tensor  # (k,) log π_old(a_i | s_i), recomputed after the rollout
    ref_logp: Tensor  # (k,) log π_ref(a_i | s_i) (zeros without a reference)
    adv: Tensor  # (k,) the step's turn advantage


def pg_loss(logp: Tensor, tg: PGTargets, clip_range: float,
            kl_coef: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = (1/n) Σ_i [max(−A_i ρ_i, −A_i clip(ρ_i, 1 ± ε)) + kl_coef · k3_i]`` over the ``n``
    action steps, ``k3_i = exp(Δ_i) − 1 − Δ_i`` with ``Δ_i = ref_logp_i − log π_θ(a_i|s_i)``
    (GRPO's per-token KL estimate, with gradient), §3.8."""
    pg, metrics = ppo.clipped_surrogate(logp, tg.old_logp, tg.adv, clip_range)
    loss = step_mean(pg)
    metrics["train/pg_loss"] = loss
    if kl_coef > 0:
        kl = step_mean(ppo.k3(tg.ref_logp - logp))
        loss = loss + kl_coef * kl
        metrics["train/kl_loss"] = kl
    return loss, {"train/loss": loss, **metrics}


# --------------------------------------------------------------------------------------------
# The method: per-turn advantages -> tokens -> clipped updates
# --------------------------------------------------------------------------------------------


class Scorer:
    """``log π(a_i | s_i)`` at a batch's action steps, as the sampler draws them (special ids
    masked, extra embedding rows sliced off, as PPO's)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.n_vocab = len(tokenizer)
        self.banned = banned_ids(tokenizer.all_special_ids, self.n_vocab)

    def __call__(self, lm: nn.Module, batch: Batch) -> Tensor:
        act, a, _, _ = step_view(batch)  # (B, S)
        h = hidden_states(lm, batch.input_ids, batch.attention_mask)  # (B, T, d)
        return action_logp(lm, h[:, :-1][act], a[act], self.n_vocab, self.banned.to(h.device))  # (n,)


@torch.no_grad()
def score_logps(scorer: Scorer, lm: nn.Module, reference: nn.Module | None,
                segments: Sequence[Segment], pad_id: int, chunk: int,
                device: str) -> list[tuple[Tensor, Tensor]]:
    """Per row ``(old_logp, ref_logp)``, each (k,) on the CPU (``ref_logp`` zeros without a
    reference). Under torchrun each rank scores a contiguous share of the rows and the ranks
    all-gather them, so every rank gets every row."""
    idx = np.arange(len(segments))
    if distributed.world().enabled:
        part, real = distributed.shard(idx)
        idx = part if real else idx[:0]
    out: list[tuple[Tensor, Tensor]] = []
    for start in range(0, len(idx), chunk):
        part = [segments[j] for j in idx[start : start + chunk]]
        batch = collate(part, pad_id).to(device)
        counts = batch.action_mask[:, 1:].sum(1).tolist()
        old = scorer(lm, batch)
        ref = scorer(reference, batch) if reference is not None else torch.zeros_like(old)
        out += [(o.cpu(), r.cpu()) for o, r in zip(old.split(counts), ref.split(counts), strict=True)]
    if not distributed.world().enabled:
        return out
    rows: list[tuple[Tensor, Tensor] | None] = [None] * len(segments)
    for ids, scored in distributed.all_gather_object((idx.tolist(), out)):
        for j, s in zip(ids, scored, strict=True):
            rows[j] = s
    assert all(r is not None for r in rows)
    return rows  # type: ignore[return-value]


def group_metrics(returns: Sequence[float], groups: Sequence[int]) -> dict[str, float]:
    """``train/group_return_std``: the mean within-group return std; ``train/flat_groups``: the
    share of groups whose returns are all equal (no signal for a group baseline)."""
    r, g = np.asarray(returns, dtype=np.float64), np.asarray(groups)
    stds = [float(r[g == k].std()) for k in np.unique(g)]
    return {"train/group_return_std": float(np.mean(stds)),
            "train/flat_groups": float(np.mean([s == 0.0 for s in stds]))}


class PGMethod(online.OnlineMethod):
    """The policy-gradient part of the online loop for methods without a value head: a
    subclass gives each episode's per-turn advantages (``turn_advantages``); this class
    spreads them over the action tokens, scores ``old_logp`` (and ``ref_logp``) and gives the
    clipped loss. ``group_size`` > 1 collects K episodes per start state."""

    group_size = 1

    def __init__(self, config: PGConfig, lm: nn.Module, tokenizer: PreTrainedTokenizerBase):
        self.config, self.lm, self.tokenizer = config, lm, tokenizer
        self.reference = (copy.deepcopy(lm).eval().requires_grad_(False)
                          if config.kl_coef > 0 else None)
        self.modules: dict[str, nn.Module] = {"lm": lm}
        self.scorer = Scorer(tokenizer)
        self.window = context_fn(config.task)
        self.first, self.rnd = True, 0  # the round's first microbatch: check ρ = 1
        self.ratio_atol = ppo.RATIO_ATOL if config.mixed_precision == "no" else ppo.RATIO_ATOL_AUTOCAST

    @abc.abstractmethod
    def turn_advantages(self, loop: online.OnlineLoop, rnd: int,
                        rollouts: list[online.Rollout]) -> tuple[list[list[float]] | None, dict[str, float]]:
        """Per episode, one advantage per action turn (None: no policy update this round),
        and the estimator's ``train/*`` metrics."""

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.lm.parameters()

    def start(self, loop: online.OnlineLoop, meta: dict[str, Any] | None) -> None:
        self.amp = loop.amp

    def collect(self, loop: online.OnlineLoop, rnd: int) -> list[online.Rollout]:
        return online.collect_round(loop.lm, loop.tokenizer, loop.config, rnd, self.group_size)

    def prepare(self, loop: online.OnlineLoop, rnd: int,
                rollouts: list[online.Rollout]) -> online.Round:
        config = self.config
        per_turn, metrics = self.turn_advantages(loop, rnd, rollouts)
        if per_turn is None:
            return online.Round([], metrics)
        segments = online.render_rollouts(rollouts, self.tokenizer, self.window,
                                          config.max_context_tokens)
        with self.amp.autocast():
            scored = score_logps(self.scorer, self.lm, self.reference, segments,
                                 self.tokenizer.pad_token_id, config.batch_size, config.device)
        targets = [PGTargets(old, ref, spread(seg, per_turn[int(seg.episode_id)]))
                   for seg, (old, ref) in zip(segments, scored, strict=True)]
        adv = torch.cat([t.adv for t in targets])
        metrics.update({"train/advantage_mean": float(adv.mean()),
                        "train/advantage_std": float(adv.std(unbiased=False))})
        if config.center_advantages:  # logged above before centring: the bias it removes
            for t, centred in zip(targets, center_tokens([t.adv for t in targets]), strict=True):
                t.adv = centred
        if self.reference is not None:
            metrics["train/kl_ref"] = float(torch.cat([ppo.k3(t.ref_logp - t.old_logp)
                                                       for t in targets]).mean())
        self.first, self.rnd = True, rnd
        return online.Round(segments, metrics, targets)

    def loss(self, batch: Batch, rows: Sequence[int],
             prepared: online.Round) -> tuple[Tensor, dict[str, Tensor]]:
        logp = self.scorer(self.lm, batch)  # (n,)
        tg = PGTargets(*(torch.cat([getattr(prepared.targets[j], f.name) for j in rows]).to(logp.device)
                         for f in dataclasses.fields(PGTargets)))  # (n,) each
        if self.first:
            ppo.check_ratio_is_one(logp, tg.old_logp, self.rnd, self.ratio_atol)
            self.first = False
        return pg_loss(logp, tg, self.config.clip_range, self.config.kl_coef)


def episode_groups(rollouts: Sequence[online.Rollout], group_size: int) -> list[int]:
    """The group label of each rollout: ``collect_round`` plays groups of ``group_size`` in a
    row, each on one env seed (checked)."""
    groups = [i // group_size for i in range(len(rollouts))]
    for i, r in enumerate(rollouts):
        if r.episode.seed != rollouts[groups[i] * group_size].episode.seed:
            raise AssertionError(f"rollout {i}: not the seed of its group (collect order changed)")
    return groups


class GroupMethod(PGMethod):
    """A group-baseline method: K rollouts per start state; ``episode_advantages`` maps the
    episodes' returns and groups to one advantage per episode, given to all its turns."""

    def __init__(self, config: GroupConfig, lm: nn.Module, tokenizer: PreTrainedTokenizerBase):
        super().__init__(config, lm, tokenizer)
        self.group_size = config.group_size

    @abc.abstractmethod
    def episode_advantages(self, returns: list[float], groups: list[int]) -> list[float]:
        """One advantage per episode from the round's returns and group labels."""

    def turn_advantages(self, loop: online.OnlineLoop, rnd: int,
                        rollouts: list[online.Rollout]) -> tuple[list[list[float]], dict[str, float]]:
        groups = episode_groups(rollouts, self.group_size)
        returns = [r.episode.ret for r in rollouts]
        adv = self.episode_advantages(returns, groups)
        return ([[a] * len(r.action_ids) for a, r in zip(adv, rollouts, strict=True)],
                group_metrics(returns, groups))


class GRPOMethod(GroupMethod):
    def episode_advantages(self, returns: list[float], groups: list[int]) -> list[float]:
        return grpo_advantages(returns, groups, self.config.std_normalize)


def train(config: GRPOConfig, progress: Progress | None = None) -> Path:
    """Run multi-turn GRPO from ``init_from`` (a BC run) and return the run directory."""
    return online.run(config, GRPOMethod, progress)
