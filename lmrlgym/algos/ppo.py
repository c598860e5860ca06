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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos import distributed, online, presets
from lmrlgym.algos.backbone import action_logp, banned_ids, hidden_states
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.dataset import BatchSchedule, context_fn, prepare_data
from lmrlgym.algos.loop import Progress
from lmrlgym.algos.rl import gae, step_discount, step_mean, step_view
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

    def __post_init__(self) -> None:
        super().__post_init__()
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
PAPER_PRESETS = presets.expand_tasks({
    presets.DIALOGUE: dict(lr=1e-6, rollouts_per_round=2048, kl_coef=0.01, vf_coef=1.0,
                          value_head_bias=-4.1),
    "GuessCity-v0": dict(lr=1e-6, rollouts_per_round=2048, kl_coef=0.01, vf_coef=1.0,
                         value_head_bias=-4.1, kl_target=0.1, kl_horizon=10_000),
    "Maze-FO-v0": dict(lr=1e-6, rollouts_per_round=512, kl_coef=0.1, vf_coef=0.5,
                       value_head_bias=-1.0),
    "Maze-PO-v0": dict(lr=1e-6, rollouts_per_round=512, kl_coef=0.1, vf_coef=1.0,
                       value_head_bias=-1.0),
    presets.TEXTNAV: dict(lr=5e-6, rollouts_per_round=4000, kl_coef=0.01, vf_coef=1.0,
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
    return presets.task_preset(PPOConfig, task, PAPER_PRESETS, **overrides)


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
    pg, ratio_metrics = clipped_surrogate(logp, tg.old_logp, tg.adv, cfg.clip_range)
    pg_loss = step_mean(pg)
    v_clip = tg.old_v + (v - tg.old_v).clamp(-cfg.value_clip_range, cfg.value_clip_range)
    v_loss = 0.5 * step_mean(torch.max((v - tg.ret) ** 2, (v_clip - tg.ret) ** 2))
    loss = pg_loss + cfg.vf_coef * v_loss
    return loss, {"train/loss": loss, "train/pg_loss": pg_loss, "train/value_loss": v_loss,
                  **ratio_metrics}


def clipped_surrogate(logp: Tensor, old_logp: Tensor, adv: Tensor,
                      clip_range: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-step ``max(−A ρ, −A clip(ρ, 1 − ε, 1 + ε))``, (n,), and the ratio's
    ``train/{approx_kl, clip_frac}`` (§3.6; every policy-gradient method uses it)."""
    log_ratio = logp - old_logp  # (n,)
    ratio = log_ratio.exp()
    # The pessimistic (larger) of the two losses; once ρ leaves [1 − ε, 1 + ε] in the
    # direction the advantage favours, the gradient is zero.
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))
    with torch.no_grad():
        approx_kl = step_mean((ratio - 1) - log_ratio)  # k3 estimate of KL(old || new)
        clip_frac = step_mean(((ratio - 1).abs() > clip_range).float())
    return pg, {"train/approx_kl": approx_kl, "train/clip_frac": clip_frac}


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


def row_steps(segment: Segment, old_logp: Tensor, ref_logp: Tensor, old_v: Tensor) -> RowSteps:
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
        d = step_discount(end, cfg.gamma, cfg.discount_mode)  # (K,)
        lam = step_discount(end, cfg.lam, cfg.discount_mode)  # (K,) λ on the same steps
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
        self.register_buffer("banned", banned_ids(banned, n_vocab), persistent=False)

    def action_logp(self, lm: nn.Module, h_act: Tensor, a: Tensor) -> Tensor:
        """(n, d), (n,) -> (n,): ``log π(a_i | s_i)`` of ``lm``'s head (policy or reference)."""
        return action_logp(lm, h_act, a, self.n_vocab, self.banned)

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
# PPO's round (§3.6): rollout -> score -> advantages -> clipped updates -> KL controller
# --------------------------------------------------------------------------------------------

RATIO_ATOL = 1e-4  # |log ρ| allowed on a round's first minibatch (float noise of re-batching)
RATIO_ATOL_AUTOCAST = 5e-2  # the same under --mixed-precision bf16/fp16


def check_ratio_is_one(logp: Tensor, old_logp: Tensor, rnd: int, atol: float = RATIO_ATOL) -> None:
    """Before any update of a round, the policy is the rollout policy: with dropout off and
    the same vocabulary slice in both passes, ρ = 1 up to float noise (§3.6). A failure means
    the two passes differ (dropout on, different masking or truncation)."""
    err = float((logp.detach() - old_logp).abs().max())
    if err > atol:
        raise AssertionError(f"round {rnd}: PPO ratio != 1 on the first minibatch "
                             f"(max |log ρ| = {err:.2e}); the scoring and training passes differ")


def bc_step_loss(policy: nn.Module, batch: Batch, n_vocab: int) -> Tensor:
    """``L_BC`` (§3.1) on an offline minibatch, through the policy's LM head."""
    act, _, _, _ = step_view(batch)  # (B, S)
    h = hidden_states(policy, batch.input_ids, batch.attention_mask)  # (B, T, d)
    logits = policy.get_output_embeddings()(h[:, :-1][act])[:, :n_vocab]  # (n, V)
    return bc_loss(logits, batch)[0]


class PPOMethod(online.OnlineMethod):
    """PPO's part of the online loop (:class:`online.OnlineMethod`): the value head (and, in
    ``separate`` mode, its trunk) beside the policy, the frozen reference (the initial BC
    policy, also on resume), the adaptive KL coefficient and the offline BC stream."""

    def __init__(self, config: PPOConfig, lm: nn.Module, tokenizer: PreTrainedTokenizerBase):
        self.config, self.lm, self.tokenizer = config, lm, tokenizer
        self.reference = copy.deepcopy(lm).eval().requires_grad_(False)
        value_trunk = copy.deepcopy(lm) if config.value_model == "separate" else None
        d = lm.get_output_embeddings().weight.shape[1]
        value_head = make_head(config.value_head, d, 1, config.value_head_bias).to(config.device)
        self.model = PPOModel(lm, value_head, value_trunk, len(tokenizer), tokenizer.all_special_ids)
        self.modules = {"lm": lm, "value_head": value_head}
        if value_trunk is not None:
            self.modules["value_trunk"] = value_trunk
        self.export_heads = {"value": value_head}
        self.window = context_fn(config.task)
        self.kl_coef = config.kl_coef
        self.bc_batches: _BCStream | None = None
        self.first, self.rnd = True, 0  # the round's first microbatch: check ρ = 1
        # Under autocast the scoring and training passes round differently (their batches differ).
        self.ratio_atol = RATIO_ATOL if config.mixed_precision == "no" else RATIO_ATOL_AUTOCAST

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.model.parameters()

    def start(self, loop: online.OnlineLoop, meta: dict[str, Any] | None) -> None:
        config = self.config
        if meta is not None:
            self.kl_coef = meta["kl_coef"]
        if config.bc_weight > 0:
            self.bc_batches = _bc_stream(config, loop.run_dir, self.tokenizer, loop.parallel)
            self.bc_batches.position = meta["bc_position"] if meta is not None else 0
        self.amp = loop.amp

    def state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_coef,
                "bc_position": self.bc_batches.position if self.bc_batches else 0}

    def prepare(self, loop: online.OnlineLoop, rnd: int,
                rollouts: list[online.Rollout]) -> online.Round:
        config = self.config
        segments = online.render_rollouts(rollouts, self.tokenizer, self.window,
                                          config.max_context_tokens, config.gamma,
                                          config.discount_mode, config.truncation_is_terminal)
        # No-grad pass: old_logp, ref_logp, old_v per action step; V_boot per episode.
        with self.amp.autocast():
            rows, v_boot = score_round(self.model, self.reference, segments,
                                       self.tokenizer.pad_token_id, config.batch_size)
        # Shaped rewards, GAE per episode, whitening: over the whole round, on every rank.
        adv = compute_advantages(rows, v_boot, self.kl_coef, config)
        targets = [StepTargets(r.old_logp, r.old_v, a, R)
                   for r, a, R in zip(rows, adv.adv, adv.ret, strict=True)]
        self.first, self.rnd = True, rnd
        return online.Round(segments, adv.metrics, targets)

    def loss(self, batch: Batch, rows: Sequence[int],
             prepared: online.Round) -> tuple[Tensor, dict[str, Tensor]]:
        logp, v = self.model.step_outputs(batch)  # (n,)
        device = logp.device
        tg = StepTargets(*(torch.cat([getattr(prepared.targets[j], f.name) for j in rows]).to(device)
                           for f in dataclasses.fields(StepTargets)))  # (n,) each
        if self.first:
            check_ratio_is_one(logp, tg.old_logp, self.rnd, self.ratio_atol)
            self.first = False
        return ppo_loss(logp, v, tg, self.config)

    def extra_loss(self, n_parts: int) -> tuple[Tensor, dict[str, float]] | None:
        """``bc_weight ·`` BC on the next offline microbatch, split evenly over the step's
        microbatches (§3.6 step 5)."""
        if self.bc_batches is None:
            return None
        bc_batch = self.bc_batches()
        bc = bc_step_loss(self.lm, bc_batch, self.model.n_vocab)
        bc, bc_metrics, _ = self.bc_batches.parallel.weigh(bc, {"train/bc_loss": bc},
                                                           bc_batch.n_action_tokens, 0)
        return self.config.bc_weight * bc / n_parts, {"train/bc_loss": bc_metrics["train/bc_loss"]}

    def end_round(self, prepared: online.Round, rollouts: list[online.Rollout]) -> None:
        """The KL controller, stepping with the round's episode count (§3.6)."""
        self.kl_coef = kl_coef_update(self.kl_coef, prepared.metrics["train/kl_seq"],
                                      len(rollouts), self.config)


def train(config: PPOConfig, progress: Progress | None = None) -> Path:
    """Run PPO from ``init_from`` (a BC run) and return the run directory.

    ``progress(round, n_rounds, metrics)`` is called after each round (the CLI's progress bar).
    """
    if config.bc_weight > 0 and not config.data:
        raise ValueError(f"--bc-weight {config.bc_weight} needs --data (a dataset of {config.task} "
                         "for the offline BC minibatches), or --bc-weight 0")
    return online.run(config, PPOMethod, progress)


class _BCStream:
    """Offline BC minibatches for ``bc_weight`` (§3.6 step 5): the dataset's training split,
    reshuffled each epoch, as an endless resumable stream."""

    def __init__(self, rows: list[Segment], micro: int, seed: int, pad_id: int, device: str,
                 parallel: distributed.DataParallel):
        self.rows, self.pad_id, self.device, self.parallel = rows, pad_id, device, parallel
        self.schedule = BatchSchedule(len(rows), micro, seed)
        self.position = 0

    def __call__(self) -> Batch:
        """The next microbatch: this rank's slice under torchrun (weigh it next)."""
        _, idx = self.schedule(self.position)
        self.position += 1
        idx = self.parallel.shard(idx)
        return collate([self.rows[i] for i in idx], self.pad_id).to(self.device)


def _bc_stream(config: PPOConfig, run_dir: Path, tokenizer: PreTrainedTokenizerBase,
               parallel: distributed.DataParallel) -> _BCStream:
    data = prepare_data(config, run_dir, config.gamma, config.discount_mode)
    return _BCStream(data.train_rows, config.batch_size // config.grad_accum, config.seed,
                     tokenizer.pad_token_id, config.device, parallel)
