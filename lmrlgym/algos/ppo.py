"""Online PPO, token level, with per-turn rewards from the env and a KL penalty to the BC policy.

Paper: Abdulhai et al. 2023, LMRL-Gym, Section 5 ("PPO") and Table 3; PPO from Schulman et al. 2017,
with the KL-shaped reward of Ziegler et al. 2019. Mirrors the original's
``LLM_RL/algorithms/ppo/`` and ``llm_rl_scripts/*/ppo/train_ppo.py`` (docs/algorithms.md §3.6).

One round: roll out ``rollouts_per_round`` episodes on training seeds with the batched
KV-cached sampler, render them with the sampled ids (§1.3), score them once without gradients
(``old_logp``, ``ref_logp`` of the frozen initial policy, ``old_v``, ``V_boot``), shape the
rewards ``r' = r − c_KL (old_logp − ref_logp)``, run GAE over each episode's flat action steps
(§1.7), whiten the advantages, then ``epochs_per_round`` shuffled passes of clipped updates.

Under torchrun/accelerate each rank plays a share of the round, scores a share of the episodes
and trains on a slice of each minibatch; every statistic is over the whole round, and the
weights equal a single process's up to float summation order (algos/distributed.py).

Deviations from the original (docs/deviations.md):
1. Discounting is per turn by default (γ and λ once per action turn, the paper's text); the
   original discounted per token (``discount_mode="token"``).
2. Rows follow ``render()`` (§1.4): long episodes are segmented instead of right-truncated, so
   no final turn or reward is lost; ids trained on are the ids sampled.
3. Dropout is off in every pass, so the probability ratio is exactly 1 on each round's first
   minibatch, which the loop asserts (the original's dropout and per-pass vocabulary masking
   broke it).
4. The adaptive KL controller counts episodes, not minibatch rows, as its step (§3.6).
5. AdamW with gradient clipping at 1.0 (the original did not clip, §2.4); the value head reads
   the shared trunk by default (``value_model="separate"`` gives a separate value trunk).
6. Rollout seeds are drawn from a range disjoint from data-generation and evaluation seeds.

Logged keys (one line per round, ``step`` = round): ``rollout/{return, success_rate,
episode_length, illegal_rate, truncated_action_rate}``, ``train/{loss, pg_loss, value_loss,
approx_kl, clip_frac, kl_ref, kl_seq, kl_coef, shaped_reward_mean, advantage_mean,
advantage_std, value_target_mean, explained_variance, bc_loss, lr, grad_norm, action_tokens,
optimizer_steps, round}``, ``time/{tokens_per_s, rollout_s, update_s}`` and the ``eval/*`` keys (every ``eval_every``
rounds and after the last; with ``eval_every > 0`` also at step 0, for the initial policy).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lmrlgym.algos import common, distributed, online
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.common import gae, hidden_states, step_mean, step_view
from lmrlgym.models.heads import make_head
from lmrlgym.models.render import Batch, Segment, collate


@dataclasses.dataclass(frozen=True)
class PPOConfig(online.OnlineConfig):
    """Online PPO (docs/algorithms.md §3.6). Defaults: paper Table 3, Maze column, plus the
    original's launch values where the paper is silent."""

    ALGO: ClassVar[str] = "ppo"

    n_rounds: int = 60
    """Rollout/update rounds (the paper's Maze curve spans ~60 rounds; a preset value)."""
    rollouts_per_round: int = 512
    """Episodes collected per round (paper Table 3, Maze: 512)."""
    rollout_batch_size: int = 32
    """Episodes generated in parallel (original launch value: 32)."""
    epochs_per_round: int = 4
    """Shuffled passes over the round's rows (original launch value: 4)."""
    lr: float = 1e-6
    """AdamW learning rate (paper Table 3, Maze: 1e-6)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128; Wordle 32)."""
    gamma: float = 0.99
    """Discount (paper Table 3: 0.99)."""
    lam: float = 0.95
    """GAE λ (paper Table 3: 0.95)."""
    discount_mode: Literal["turn", "token"] = "turn"
    """γ and λ once per action turn (ours, the paper's text) or per action token (original), §1.7."""
    clip_range: float = 0.2
    """Policy ratio clip ε (paper Table 3: 0.2)."""
    value_clip_range: float = 0.2
    """Value clip ε_v around the rollout value (original: 0.2)."""
    vf_coef: float = 0.5
    """Value-loss weight (original: 1.0; Maze-FO script 0.5)."""
    kl_coef: float = 0.1
    """Initial coefficient of the per-token KL penalty to the reference (paper Table 3, Maze: 0.1)."""
    kl_target: float | None = None
    """Adaptive KL: target per-episode KL (None: fixed coefficient; Guess launch: 0.1)."""
    kl_horizon: int | None = None
    """Adaptive KL: horizon in episodes (Guess launch: 10,000)."""
    whiten_advantages: bool = True
    """Normalise advantages over each round's action tokens (original: on)."""
    bc_weight: float = 0.0
    """Weight of a BC loss on offline minibatches from ``data`` (paper Table 3: 0; Wordle 10)."""
    value_model: Literal["shared", "separate"] = "shared"
    """``shared``: the value head reads the policy trunk (default). ``separate``: a copy of the
    initial model as the value trunk."""
    value_head: Literal["linear", "mlp"] = "linear"
    """Value head type (original PPO: linear, §2.2)."""
    value_head_bias: float = -1.0
    """Initial V: bias of the zero-initialised output layer (original: Maze −1, Chess 0, else −4.1)."""
    truncation_is_terminal: bool = False
    """Bootstrap truncated episodes with 0, as the original did (§1.8); default: from V."""
    rollout_temperature: float = 1.0
    """Sampling temperature of the training rollouts (§3.6: 1, no top-k/top-p)."""
    eval_every: int = 0
    """Rounds between env evaluations (0: only at the end)."""
    save_every: int = 5
    """Rounds between checkpoints (one is always written at the end)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_rounds", "rollouts_per_round", "rollout_batch_size", "epochs_per_round"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("clip_range", "value_clip_range"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"--gamma and --lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if (self.kl_target is None) != (self.kl_horizon is None):
            raise ValueError("--kl-target and --kl-horizon go together (adaptive KL) or not at all")
        if self.kl_horizon is not None and self.kl_horizon <= 0:
            raise ValueError(f"--kl-horizon must be positive, got {self.kl_horizon}")
        if self.kl_coef < 0 or self.bc_weight < 0 or self.vf_coef < 0:
            raise ValueError("--kl-coef, --bc-weight and --vf-coef must be non-negative")


CONFIG = PPOConfig  # what `lmrlgym train ppo` parses


# Paper Table 3 per task (docs/algorithms.md §3.6); value-head biases and Maze-FO vf_coef from the
# original scripts (§2.2); Guess's adaptive KL from its launch script.
PAPER_PRESETS = common.expand_tasks({
    common.DIALOGUE: dict(lr=1e-6, rollouts_per_round=2048, kl_coef=0.01, vf_coef=1.0,
                          value_head_bias=-4.1),
    "GuessCity-v0": dict(lr=1e-6, rollouts_per_round=2048, kl_coef=0.01, vf_coef=1.0,
                         value_head_bias=-4.1, kl_target=0.1, kl_horizon=10_000),
    "Maze-FO-v0": dict(lr=1e-6, rollouts_per_round=512, kl_coef=0.1, vf_coef=0.5,
                       value_head_bias=-1.0),
    "Maze-PO-v0": dict(lr=1e-6, rollouts_per_round=512, kl_coef=0.1, vf_coef=1.0,
                       value_head_bias=-1.0),
    common.TEXTNAV: dict(lr=5e-6, rollouts_per_round=4000, kl_coef=0.01, vf_coef=1.0,
                         value_head_bias=-4.1),
    "Chess-v0": dict(lr=1e-5, rollouts_per_round=1024, kl_coef=0.01, vf_coef=1.0,
                     value_head_bias=0.0),
    "Endgames-v0": dict(lr=1e-5, rollouts_per_round=512, kl_coef=0.01, vf_coef=1.0,
                        value_head_bias=0.0),
    "Wordle-v0": dict(lr=3e-5, rollouts_per_round=512, batch_size=32, kl_coef=0.001,
                      bc_weight=10.0, vf_coef=1.0, value_head_bias=-4.1),
})


def preset(task: str, **overrides: Any) -> PPOConfig:
    """PPO config for ``task``: the paper's values plus ``overrides``."""
    return common.task_preset(PPOConfig, task, PAPER_PRESETS, **overrides)


# --------------------------------------------------------------------------------------------
# The loss and the KL controller (pure)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepTargets:
    """Per-action-step rollout quantities, flat over ``n`` steps in ``step_view`` order."""

    old_logp: Tensor  # (n,) log π_old(a_i | s_i), recomputed after the rollout
    old_v: Tensor  # (n,) V_old(s_i)
    adv: Tensor  # (n,) advantage (whitened when configured)
    ret: Tensor  # (n,) value target R_i = A_i + V_old(s_i) (raw)


def ppo_loss(logp: Tensor, v: Tensor, tg: StepTargets, cfg: PPOConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_pg + vf_coef · L_v`` on the ``n`` action steps of a minibatch (§3.6).

    ``logp``: (n,) current ``log π_θ(a_i | s_i)``; ``v``: (n,) current ``V_θ(s_i)``. The BC term
    of ``bc_weight`` is added by the loop on a separate offline minibatch.
    """
    log_ratio = logp - tg.old_logp  # (n,)
    ratio = log_ratio.exp()
    # Clipped surrogate: the pessimistic (larger) of the two losses; once ρ leaves
    # [1 − ε, 1 + ε] in the direction the advantage favours, the gradient is zero.
    pg = torch.max(-tg.adv * ratio, -tg.adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
    pg_loss = step_mean(pg)
    v_clip = tg.old_v + (v - tg.old_v).clamp(-cfg.value_clip_range, cfg.value_clip_range)
    v_loss = 0.5 * step_mean(torch.max((v - tg.ret) ** 2, (v_clip - tg.ret) ** 2))
    loss = pg_loss + cfg.vf_coef * v_loss
    with torch.no_grad():
        approx_kl = step_mean((ratio - 1) - log_ratio)  # k3 estimate of KL(old || new)
        clip_frac = step_mean(((ratio - 1).abs() > cfg.clip_range).float())
    return loss, {"train/loss": loss, "train/pg_loss": pg_loss, "train/value_loss": v_loss,
                  "train/approx_kl": approx_kl, "train/clip_frac": clip_frac}


def kl_coef_update(coef: float, kl_seq: float, n_episodes: int, cfg: PPOConfig) -> float:
    """Adaptive KL controller (Ziegler et al. 2019): move ``coef`` toward keeping the
    per-episode KL at ``kl_target``; the error is clipped to ±20 % and scaled by the episodes
    seen over ``kl_horizon``. Fixed when no target is set."""
    if cfg.kl_target is None or cfg.kl_horizon is None:
        return coef
    err = min(max(kl_seq / cfg.kl_target - 1.0, -0.2), 0.2)
    return coef * (1.0 + err * n_episodes / cfg.kl_horizon)


def k3(log_ratio: Tensor) -> Tensor:
    """``exp(Δ) − 1 − Δ`` with ``Δ = log p − log q``: an unbiased, non-negative per-sample
    estimate of KL(q || p) under samples from q (Schulman's k3)."""
    return log_ratio.exp() - 1 - log_ratio


# --------------------------------------------------------------------------------------------
# Rollout rows -> advantages (pure): GAE over each episode's flat action steps
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RowSteps:
    """One rendered row's action steps (``k`` of them), in slot order."""

    episode_id: int
    first_turn: int
    r: Tensor  # (k,) env reward of each step (on turn-ending tokens)
    end: Tensor  # (k,) bool: the step's token closes an action turn
    old_logp: Tensor  # (k,)
    ref_logp: Tensor  # (k,)
    old_v: Tensor  # (k,)


@dataclasses.dataclass
class Advantages:
    """GAE results, aligned with the rows they came from, and the round's ``train/*`` stats."""

    adv: list[Tensor]  # per row, (k,), whitened if asked
    ret: list[Tensor]  # per row, (k,), value targets (raw)
    metrics: dict[str, float]


def row_steps(segment: Any, old_logp: Tensor, ref_logp: Tensor, old_v: Tensor) -> RowSteps:
    """Bundle one segment's step quantities; ``step_view``'s slot ``i`` is token ``i + 1``."""
    act = segment.action_mask[1:]  # (L - 1,) bool
    return RowSteps(int(segment.episode_id), int(segment.first_turn),
                    segment.rewards[1:][act].float(), segment.turn_end[1:][act],
                    old_logp, ref_logp, old_v)


def compute_advantages(
    rows: Sequence[RowSteps], v_boot: dict[int, float], kl_coef: float, cfg: PPOConfig
) -> Advantages:
    """Shaped rewards ``r − kl_coef (old_logp − ref_logp)``, GAE per episode and whitening
    (§3.6 steps 3-4).

    ``v_boot`` maps each episode id to the value after its last action, already
    × (1 − terminal). Rows of one episode are chained in ``first_turn`` order: the next state
    of a row's last step is the next row's first step (the same prompt, so the same value).
    """
    by_episode: dict[int, list[int]] = {}
    for j, row in enumerate(rows):
        by_episode.setdefault(row.episode_id, []).append(j)
    adv: list[Tensor] = [torch.empty(0)] * len(rows)
    ret: list[Tensor] = [torch.empty(0)] * len(rows)
    kl_seq, shaped, all_adv, all_ret, all_v = [], [], [], [], []
    for eid, idx in by_episode.items():
        idx = sorted(idx, key=lambda j: rows[j].first_turn)
        r, end, old_logp, ref_logp, old_v = (
            torch.cat([getattr(rows[j], name) for j in idx])  # (K,) over the episode's steps
            for name in ("r", "end", "old_logp", "ref_logp", "old_v"))
        kl = k3(ref_logp - old_logp)  # (K,) per-token KL estimate to the reference
        kl_seq.append(float(kl.sum()))
        r_shaped = r - kl_coef * (old_logp - ref_logp)  # (K,)
        shaped.append(r_shaped)
        d = common.step_discount(end, cfg.gamma, cfg.discount_mode)  # (K,)
        lam = common.step_discount(end, cfg.lam, cfg.discount_mode)  # (K,) λ on the same steps
        a, R = gae(r_shaped, old_v, d, lam, float(v_boot[eid]))
        all_adv.append(a)
        all_ret.append(R)
        all_v.append(old_v)
        start = 0
        for j in idx:
            k = len(rows[j].r)
            adv[j], ret[j] = a[start : start + k], R[start : start + k]
            start += k
    flat_adv, flat_ret, flat_v = torch.cat(all_adv), torch.cat(all_ret), torch.cat(all_v)
    mean, std = flat_adv.mean(), flat_adv.std(unbiased=False)
    if cfg.whiten_advantages:
        adv = [(a - mean) / (std + 1e-8) for a in adv]
    flat_kl = torch.cat([k3(rows[j].ref_logp - rows[j].old_logp) for j in range(len(rows))])
    metrics = {
        "train/kl_ref": float(flat_kl.mean()),
        "train/kl_seq": sum(kl_seq) / len(kl_seq),
        "train/kl_coef": kl_coef,
        "train/shaped_reward_mean": float(torch.cat(shaped).mean()),
        "train/advantage_mean": float(mean),
        "train/advantage_std": float(std),
        "train/value_target_mean": float(flat_ret.mean()),
    }
    var_ret = float(flat_ret.var(unbiased=False))
    if var_ret > 0:  # undefined (not logged) when every target is equal
        metrics["train/explained_variance"] = 1.0 - float((flat_ret - flat_v).var(unbiased=False)) / var_ret
    return Advantages(adv, ret, metrics)


# --------------------------------------------------------------------------------------------
# Networks: policy trunk + LM head, value head (shared trunk or its own), frozen reference
# --------------------------------------------------------------------------------------------


class PPOModel(nn.Module):
    """The trained modules: the policy LM, its value head and, in ``separate`` mode, the value
    trunk (a copy of the initial model whose LM head is never used).

    ``n_vocab`` slices off extra embedding rows (§1.3) and ``banned`` are the special tokens
    the sampler never emits (``LMPolicy``), so ``log π`` here is the sampling distribution.
    """

    def __init__(self, policy: nn.Module, value_head: nn.Module, value_trunk: nn.Module | None,
                 n_vocab: int, banned: Sequence[int] = ()):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.value_trunk = value_trunk
        self.n_vocab = n_vocab
        banned_ids = sorted(i for i in set(banned) if i < n_vocab)
        self.register_buffer("banned", torch.tensor(banned_ids, dtype=torch.long), persistent=False)

    def action_logp(self, lm: nn.Module, h_act: Tensor, a: Tensor) -> Tensor:
        """(n, d), (n,) -> (n,): ``log π(a_i | s_i)`` of ``lm``'s head (policy or reference)."""
        logits = lm.get_output_embeddings()(h_act)[:, : self.n_vocab].float()  # (n, V)
        if len(self.banned):
            logits = logits.index_fill(1, self.banned, float("-inf"))
        return logits.log_softmax(-1).gather(-1, a[:, None]).squeeze(-1)

    def step_outputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``log π(a_i | s_i)`` and ``V(s_i)`` at the batch's ``n`` action steps, both (n,)."""
        act, a, _, _ = step_view(batch)  # (B, S)
        h = hidden_states(self.policy, batch.input_ids, batch.attention_mask)  # (B, T, d)
        logp = self.action_logp(self.policy, h[:, :-1][act], a[act])  # (n,)
        if self.value_trunk is not None:
            h = hidden_states(self.value_trunk, batch.input_ids, batch.attention_mask)
        v = self.value_head(h[:, :-1][act]).float()  # (n,)
        return logp, v

    def values_at(self, input_ids: Tensor, attention_mask: Tensor, index: Tensor) -> Tensor:
        """``V`` at token ``index[b]`` of each row, (B,)."""
        trunk = self.value_trunk if self.value_trunk is not None else self.policy
        h = hidden_states(trunk, input_ids, attention_mask)  # (B, T, d)
        return self.value_head(h[torch.arange(len(index), device=index.device), index]).float()


@torch.no_grad()
def score_rows(
    model: PPOModel, reference: nn.Module, segments: Sequence[Segment], pad_id: int, chunk: int,
) -> tuple[list[RowSteps], dict[int, float]]:
    """The no-grad pass of §3.6 step 2: per row ``old_logp``, ``ref_logp``, ``old_v``; per
    episode ``V_boot`` (× (1 − terminal)), read from the episode's last row."""
    rows: list[RowSteps] = []
    last_row: dict[int, int] = {}
    for j, seg in enumerate(segments):
        if seg.episode_id not in last_row or seg.first_turn > segments[last_row[seg.episode_id]].first_turn:
            last_row[seg.episode_id] = j
    v_boot = {eid: 0.0 for eid in last_row}
    device = next(model.parameters()).device
    for start in range(0, len(segments), chunk):
        part = segments[start : start + chunk]
        batch = collate(part, pad_id).to(device)
        act, a, _, _ = step_view(batch)  # (B, S)
        old_logp, old_v = model.step_outputs(batch)  # (n,)
        h_ref = hidden_states(reference, batch.input_ids, batch.attention_mask)
        ref_logp = model.action_logp(reference, h_ref[:, :-1][act], a[act])  # (n,)
        counts = act.sum(1).tolist()
        for seg, lp, rl, v in zip(part, old_logp.split(counts), ref_logp.split(counts),
                                  old_v.split(counts), strict=True):
            rows.append(row_steps(seg, lp.cpu(), rl.cpu(), v.cpu()))
        # Bootstrap values: only non-terminal episode ends need one.
        boot = [b for b, seg in enumerate(part)
                if last_row[seg.episode_id] == start + b and not seg.terminal]
        for b in boot:
            seg = part[b]
            if len(seg.next_ids):  # the bootstrap state is in next_ids: V at its last token
                ids = seg.next_ids[None].to(device)  # (1, L')
            else:  # the final observation was appended to the row: V at its last token
                ids = seg.input_ids[None].to(device)  # (1, L)
            last = torch.tensor([ids.shape[1] - 1], device=device)
            v = model.values_at(ids, torch.ones_like(ids), last)
            v_boot[seg.episode_id] = float(v[0])
    return rows, v_boot


def score_round(
    model: PPOModel, reference: nn.Module, segments: Sequence[Segment], pad_id: int, chunk: int,
) -> tuple[list[RowSteps], dict[int, float]]:
    """:func:`score_rows` over the round's rows. Under torchrun each rank scores a contiguous
    share of the episodes (whole episodes, so each ``V_boot`` is read from its episode's last
    row) and the ranks all-gather the results: every rank gets every row, in segment order."""
    if not distributed.world().enabled:
        return score_rows(model, reference, segments, pad_id, chunk)
    episodes = sorted({int(s.episode_id) for s in segments})
    part, real = distributed.shard(np.arange(len(episodes)))
    mine = {episodes[i] for i in part} if real else set()
    local = [j for j, s in enumerate(segments) if int(s.episode_id) in mine]
    rows, v_boot = score_rows(model, reference, [segments[j] for j in local], pad_id, chunk)
    out: list[RowSteps | None] = [None] * len(segments)
    v_all: dict[int, float] = {}
    for idx, r, v in distributed.all_gather_object((local, rows, v_boot)):
        for j, row in zip(idx, r, strict=True):
            out[j] = row
        v_all.update(v)
    assert all(r is not None for r in out)
    return out, v_all  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# One round's update: epochs_per_round shuffled passes of clipped steps (§3.6 step 5)
# --------------------------------------------------------------------------------------------

RATIO_ATOL = 1e-4  # |log ρ| allowed on a round's first minibatch (float noise of re-batching)


def update_round(
    model: PPOModel, optimizer: torch.optim.Optimizer, segments: Sequence[Segment],
    rows: Sequence[RowSteps], adv: Advantages, cfg: PPOConfig, rnd: int, pad_id: int,
    bc_batches: Any = None, parallel: distributed.DataParallel | None = None,
) -> dict[str, float]:
    """Clipped PPO steps over the round's rows; returns the minibatch metrics averaged over
    the round. Each optimizer step takes ``batch_size`` rows in ``grad_accum`` microbatches.

    ``bc_batches``: when ``bc_weight > 0``, a callable returning the next offline BC
    :class:`Batch` (an independent stream, §3.6 step 5), this rank's slice of it.
    ``parallel``: under torchrun, every rank holds the round's rows and trains on its slice
    of each microbatch with the offline loops' token-weighted gradient sync (default: one
    process).
    """
    parallel = parallel if parallel is not None else distributed.DataParallel({}, cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    targets = [StepTargets(r.old_logp, r.old_v, a, R) for r, a, R in zip(rows, adv.adv, adv.ret, strict=True)]
    micro = cfg.batch_size // cfg.grad_accum
    device = next(model.parameters()).device
    mean = common.MetricsMean()
    first = True
    for epoch in range(cfg.epochs_per_round):
        # A fresh seeded order per (round, epoch): a resumed run replays the same batches.
        order = common.epoch_batches(len(segments), cfg.batch_size, cfg.seed,
                                     rnd * cfg.epochs_per_round + epoch)
        for step_rows in order:
            parts = [step_rows[i : i + micro] for i in range(0, len(step_rows), micro)]
            n_total = sum(len(rows[j].r) for j in step_rows)
            optimizer.zero_grad(set_to_none=True)
            for part in parts:
                part = parallel.shard(part)  # this rank's slice of the microbatch
                batch = collate([segments[j] for j in part], pad_id).to(device)
                logp, v = model.step_outputs(batch)  # (n,)
                tg = StepTargets(*(torch.cat([getattr(targets[j], f.name) for j in part]).to(device)
                                   for f in dataclasses.fields(StepTargets)))  # (n,) each
                if first:
                    check_ratio_is_one(logp, tg.old_logp, rnd)
                    first = False
                loss, metrics = ppo_loss(logp, v, tg, cfg)
                # Pooled mean over the step's action tokens: the microbatch's (global) mean,
                # weighted by its share of the step's tokens.
                loss, metrics, _ = parallel.weigh(loss, metrics, len(logp), 0)
                total = loss * metrics.pop("train/action_tokens") / n_total
                if cfg.bc_weight > 0:
                    bc_batch = bc_batches()
                    bc = bc_step_loss(model.policy, bc_batch, model.n_vocab)
                    bc, bc_metrics, _ = parallel.weigh(bc, {"train/bc_loss": bc}, bc_batch.n_action_tokens, 0)
                    total = total + cfg.bc_weight * bc / len(parts)
                    metrics["train/bc_loss"] = bc_metrics["train/bc_loss"]
                total.backward()
                mean.add(metrics)
            distributed.sync_grads(params)  # average over ranks (no-op in one process)
            grad_norm = distributed.clip_grad_norm(params, cfg.grad_clip)
            optimizer.step()
            mean.add({"train/grad_norm": grad_norm, "train/action_tokens": n_total})
    return mean.pop()


def check_ratio_is_one(logp: Tensor, old_logp: Tensor, rnd: int) -> None:
    """Before any update of a round, the policy is the rollout policy: with dropout off and
    the same vocabulary slice in both passes, ρ = 1 up to float noise (§3.6). A failure means
    the two passes differ (dropout on, different masking or truncation)."""
    err = float((logp.detach() - old_logp).abs().max())
    if err > RATIO_ATOL:
        raise AssertionError(f"round {rnd}: PPO ratio != 1 on the first minibatch "
                             f"(max |log ρ| = {err:.2e}); the scoring and training passes differ")


def bc_step_loss(policy: nn.Module, batch: Batch, n_vocab: int) -> Tensor:
    """``L_BC`` (§3.1) on an offline minibatch, through the policy's LM head."""
    act, _, _, _ = step_view(batch)  # (B, S)
    h = hidden_states(policy, batch.input_ids, batch.attention_mask)  # (B, T, d)
    logits = policy.get_output_embeddings()(h[:, :-1][act])[:, :n_vocab]  # (n, V)
    return bc_loss(logits, batch)[0]


# --------------------------------------------------------------------------------------------
# train(): rounds of rollout -> score -> advantages -> update -> KL controller -> log
# --------------------------------------------------------------------------------------------


def train(config: PPOConfig, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Run PPO from ``init_from`` (a BC run) and return the run directory.

    ``progress(round, n_rounds, metrics)`` is called after each round (the CLI's progress bar).
    """
    if config.bc_weight > 0 and not config.data:
        raise ValueError(f"--bc-weight {config.bc_weight} needs --data (a dataset of {config.task} "
                         "for the offline BC minibatches), or --bc-weight 0")
    config, run_dir, checkpoint = online.start_online_run(config)
    common.set_seed(config.seed)
    lm, tokenizer = online.load_init(config, run_dir)
    n_vocab, pad_id = len(tokenizer), tokenizer.pad_token_id
    # The frozen reference is the initial (BC) policy, also on resume (§3.6).
    reference = copy.deepcopy(lm).eval().requires_grad_(False)
    value_trunk = copy.deepcopy(lm) if config.value_model == "separate" else None
    d = lm.get_output_embeddings().weight.shape[1]
    value_head = make_head(config.value_head, d, 1, config.value_head_bias).to(config.device)
    model = PPOModel(lm, value_head, value_trunk, n_vocab, tokenizer.all_special_ids)
    modules: dict[str, nn.Module] = {"lm": lm, "value_head": value_head}
    if value_trunk is not None:
        modules["value_trunk"] = value_trunk
    optimizer = common.make_optimizer(model.parameters(), config.lr, config.weight_decay)
    window = common.context_fn(config.task)

    logger = common.MetricsLogger(run_dir, config.tensorboard)
    start, kl_coef, n_steps, bc_position = 0, config.kl_coef, 0, 0
    if checkpoint is not None:
        meta = common.load_checkpoint(checkpoint, modules, optimizer)
        start, kl_coef, n_steps = meta["step"], meta["kl_coef"], meta["optimizer_steps"]
        bc_position = meta["bc_position"]
        logger.truncate_after(start)
    # Identity in one process; under torchrun: rank 0's weights, row shards, global metrics.
    parallel = distributed.DataParallel(modules, config.seed)
    bc_batches = _bc_stream(config, run_dir, tokenizer, parallel) if config.bc_weight > 0 else None
    if bc_batches is not None:
        bc_batches.position = bc_position
    if start == 0 and config.eval_every and config.eval_episodes > 0:
        logger.log(0, online.evaluate_lm(lm, tokenizer, config))  # the initial policy

    for rnd in range(start, config.n_rounds):
        t0 = time.perf_counter()
        # 1. Roll out on training seeds with the current policy; keep the sampled ids (under
        #    torchrun each rank plays a share of the round and every rank gets all of it).
        model.eval()
        rollouts = online.collect_round(lm, tokenizer, config, rnd)
        segments = online.render_rollouts(rollouts, tokenizer, window, config.max_context_tokens,
                                          config.gamma, config.discount_mode,
                                          config.truncation_is_terminal)
        # 2. No-grad pass: old_logp, ref_logp, old_v per action step; V_boot per episode.
        rows, v_boot = score_round(model, reference, segments, pad_id, config.batch_size)
        # 3-4. Shaped rewards, GAE per episode, whitening: over the whole round, on every rank.
        adv = compute_advantages(rows, v_boot, kl_coef, config)
        t1 = time.perf_counter()
        # 5. Clipped updates (dropout is off, so train mode only matters for custom modules).
        model.train()
        lr = common.lr_at(n_steps, config.lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        metrics = update_round(model, optimizer, segments, rows, adv, config, rnd, pad_id,
                               bc_batches, parallel)
        n_steps += config.epochs_per_round * math.ceil(len(segments) / config.batch_size)
        t2 = time.perf_counter()
        # 6. KL controller (steps with the round's episode count), logging, evaluation.
        kl_coef = kl_coef_update(kl_coef, adv.metrics["train/kl_seq"], len(rollouts), config)
        done = rnd + 1
        tokens = sum(len(s) for s in segments) * config.epochs_per_round
        metrics = {**online.rollout_metrics(rollouts), **adv.metrics, **metrics,
                   "train/lr": lr, "train/round": done, "train/optimizer_steps": n_steps,
                   "time/rollout_s": t1 - t0, "time/update_s": t2 - t1,
                   "time/tokens_per_s": tokens / max(t2 - t1, 1e-9)}
        last = done == config.n_rounds
        if config.eval_episodes > 0 and ((config.eval_every and done % config.eval_every == 0) or last):
            metrics.update(online.evaluate_lm(lm, tokenizer, config))
        logger.log(done, metrics)
        if done % config.save_every == 0 or last:
            common.save_checkpoint(run_dir, done, modules, optimizer,
                                   {"kl_coef": kl_coef, "optimizer_steps": n_steps,
                                    "bc_position": bc_batches.position if bc_batches else 0},
                                   config.keep_checkpoints)
        if progress is not None:
            progress(done, config.n_rounds, metrics)
    logger.close()
    common.export_lm(lm, tokenizer, run_dir, heads={"value": value_head})
    distributed.cleanup()  # every rank waits for rank 0's export
    return run_dir


class _BCStream:
    """Offline BC minibatches for ``bc_weight`` (§3.6 step 5): the dataset's training split,
    reshuffled each epoch, as an endless resumable stream."""

    def __init__(self, rows: list, micro: int, seed: int, pad_id: int, device: str,
                 parallel: distributed.DataParallel):
        self.rows, self.pad_id, self.device, self.parallel = rows, pad_id, device, parallel
        self.schedule = common.BatchSchedule(len(rows), micro, seed)
        self.position = 0

    def __call__(self) -> Batch:
        """The next microbatch: this rank's slice under torchrun (weigh it next)."""
        _, idx = self.schedule(self.position)
        self.position += 1
        idx = self.parallel.shard(idx)
        return collate([self.rows[i] for i in idx], self.pad_id).to(self.device)


def _bc_stream(config: PPOConfig, run_dir: Path, tokenizer: Any,
               parallel: distributed.DataParallel) -> _BCStream:
    data = common.prepare_data(config, run_dir, config.gamma, config.discount_mode)
    return _BCStream(data.train_rows, config.batch_size // config.grad_accum, config.seed,
                     tokenizer.pad_token_id, config.device, parallel)
