"""Online PPO, token level, with per-turn rewards from the env and a KL penalty to the BC policy.

Paper: Abdulhai et al. 2023, LMRL-Gym, §5 ("PPO") and Table 3; PPO from Schulman et al. 2017,
with the KL-shaped reward of Ziegler et al. 2019. Mirrors the original's
``LLM_RL/algorithms/ppo/`` and ``llm_rl_scripts/*/ppo/train_ppo.py`` (ALGORITHMS.md §3.6).

One round: roll out ``rollouts_per_round`` episodes on training seeds with the batched
KV-cached sampler, render them with the sampled ids (§1.3), score them once without gradients
(``old_logp``, ``ref_logp`` of the frozen initial policy, ``old_v``, ``V_boot``), shape the
rewards ``r' = r − c_KL (old_logp − ref_logp)``, run GAE over each episode's flat action steps
(§1.7), whiten the advantages, then ``epochs_per_round`` shuffled passes of clipped updates.

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
optimizer_steps, round}``, ``time/{tokens_per_s, rollout_s, update_s}`` and the ``eval/*`` keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
import tyro
from torch import Tensor

from lmrlgym.algos import common
from lmrlgym.algos.common import gae, step_mean


@dataclasses.dataclass(frozen=True)
class PPOConfig(common.TrainConfig):
    """Online PPO (ALGORITHMS.md §3.6). Defaults: paper Table 3, Maze column, plus the
    original's launch values where the paper is silent."""

    ALGO: ClassVar[str] = "ppo"

    init_from: Annotated[str | None, tyro.conf.arg(aliases=("--init",))] = None
    """The task's BC run directory to start from (model and tokenizer; also the frozen KL
    reference). Every RL method starts from BC (§2.1)."""
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
        if self.bc_weight > 0 and not self.data:
            raise ValueError("--bc-weight > 0 needs --data (the offline BC minibatches)")


# Paper Table 3 per task (ALGORITHMS.md §3.6); value-head biases and Maze-FO vf_coef from the
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
