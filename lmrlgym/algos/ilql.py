"""Implicit Language Q-Learning (ILQL): twin token-level Qs backed up toward ``r + γ V(s′)``,
V fit by expectile regression to the target Qs, decoding with ``π_β · exp(β (Q − V))``.

Paper: Snell et al. 2022, "Offline RL for Natural Language Generation with Implicit Language Q
Learning"; settings from Abdulhai et al. 2023, LMRL-Gym, Table 3. Mirrors the original's
``LLM_RL/algorithms/ilql/`` loss and ``llm_rl_scripts/*/ilql/train_ilql.py``
(ALGORITHMS.md §3.4, decoding §3.5).

Deviations from the original (docs/deviations.md):
1. Shared layout by default: one trunk with LM, Q1, Q2 and V heads, an EMA target of the trunk
   and the Q heads, and a BC term (``bc_weight``) that keeps the LM head ≈ π_β, instead of a
   frozen BC copy (``value_model``).
2. No duplicated final step: the last real transition of a terminated episode bootstraps from 0
   (the original bootstrapped it from V(s_T), §1.8); next states are found by gathers, not
   O(N²) one-hot pairings; no dialogue is truncated on the right (§1.4).
3. Discounting is per turn by default (``discount_mode="token"`` gives the original's).
4. Dropout is off, the target pass included; AdamW with gradient clipping (§2.4).
5. No checkpoint "selection" by a training loss: the final checkpoint is exported.

Logged keys: ``train/{loss, q_loss, v_loss, cql_loss, bc_loss, q1_mean, q2_mean, target_q_mean,
v_mean, v_next_mean, td_target_mean, reward_mean, advantage_mean, lr, grad_norm,
action_tokens, epoch}``, ``time/tokens_per_s`` and the ``eval/*`` keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lmrlgym.algos import common
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.common import next_state_value, step_discount, step_mean, step_view


@dataclasses.dataclass(frozen=True)
class ILQLConfig(common.TrainConfig):
    """ILQL (ALGORITHMS.md §3.4). Defaults: paper Table 3, Maze column."""

    ALGO: ClassVar[str] = "ilql"

    lr: float = 1e-4
    """AdamW learning rate (paper Table 3: 1e-4; Wordle 3e-5)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128; Wordle 32)."""
    gamma: float = 0.99
    """Discount (paper Table 3: 0.99)."""
    discount_mode: Literal["turn", "token"] = "turn"
    """γ per action turn (ours, the paper's text) or per action token (the original code), §1.7."""
    beta: float = 16.0
    """Decoding weight of the advantage in ``π_β · exp(β (Q − V))`` (paper Table 3, Maze: 16)."""
    tau: float = 0.99
    """Expectile of the V regression (paper Table 3, Maze: 0.99; else 0.7)."""
    cql_weight: float = 0.5
    """Weight of the conservative CE term on both Qs (paper Table 3, Maze: 0.5)."""
    bc_weight: float = 1.0
    """Weight of the BC term that keeps the shared LM head ≈ π_β (ours, §2.3; 0 if separate)."""
    polyak_alpha: float = 0.005
    """Target update ``θ̄ ← (1 − α) θ̄ + α θ`` after each optimizer step (paper and original)."""
    target_trunk: bool = True
    """Keep an EMA copy of the trunk for the target Qs; False: target heads read the online
    hidden states under no_grad (§2.3)."""
    head: Literal["mlp", "linear"] = "mlp"
    """Q/V head type (original: MLP for ILQL; §2.2)."""
    head_bias: float = 0.0
    """Initial Q and V: the zero-initialised output layer's bias (original: 0 on Maze/Chess)."""
    truncation_is_terminal: bool = False
    """Bootstrap truncated episodes with 0, as the original did (§1.8); default: from V."""
    value_model: Literal["shared", "separate"] = "shared"
    """``shared``: one trunk for LM, Q and V (default). ``separate``: the original's layout, a
    value trunk trained without an LM loss and a frozen copy of the initial model as π_β."""


def ilql_loss(
    q1: Tensor, q2: Tensor, tq1: Tensor, tq2: Tensor, v: Tensor, v_boot: Tensor,
    lm_logits: Tensor | None, batch: Any, cfg: ILQLConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_Q + L_V + cql_weight · L_CQL + bc_weight · L_BC`` (§3.4).

    ``q1, q2``: (n, V) online Q heads at the action steps; ``tq1, tq2``: (n, V) target heads
    there (no grad); ``v``: (B, T) V head on the online hidden states; ``v_boot``: (B,) V after
    each row's last step, × (1 − terminal), no grad; ``lm_logits``: (n, V) or None.
    """
    act, a, r, end = step_view(batch)  # (B, S)
    d = step_discount(end, cfg.gamma, cfg.discount_mode)  # (B, S)
    v_s = v[:, :-1].float()  # (B, S) V(s_i)
    v_next = next_state_value(v_s.detach(), act, v_boot)  # (B, S) V(s_next(i)), online V
    y = (r + d * v_next)[act].detach()  # (n,) TD target
    a, v_a = a[act], v_s[act]  # (n,)
    q1_a = q1.float().gather(-1, a[:, None]).squeeze(-1)  # (n,)
    q2_a = q2.float().gather(-1, a[:, None]).squeeze(-1)  # (n,)
    q_loss = step_mean(0.5 * (q1_a - y) ** 2) + step_mean(0.5 * (q2_a - y) ** 2)
    # V regresses to the smaller target Q with an expectile (IQL): an in-support maximum that
    # never queries unseen actions.
    tq_a = torch.minimum(tq1.float().gather(-1, a[:, None]), tq2.float().gather(-1, a[:, None]))
    tq_a = tq_a.squeeze(-1).detach()  # (n,)
    w = torch.where(tq_a >= v_a, cfg.tau, 1.0 - cfg.tau)  # (n,) expectile weight
    v_loss = step_mean(w * 0.5 * (v_a - tq_a) ** 2)
    cql = step_mean(q1.float().logsumexp(-1) - q1_a) + step_mean(q2.float().logsumexp(-1) - q2_a)
    loss = q_loss + v_loss + cfg.cql_weight * cql
    metrics = {
        "train/q_loss": q_loss, "train/v_loss": v_loss, "train/cql_loss": cql,
        "train/q1_mean": step_mean(q1_a), "train/q2_mean": step_mean(q2_a),
        "train/target_q_mean": step_mean(tq_a), "train/v_mean": step_mean(v_a),
        "train/v_next_mean": step_mean(v_next[act]), "train/td_target_mean": step_mean(y),
        "train/reward_mean": step_mean(r[act].float()),
        "train/advantage_mean": step_mean(tq_a - v_a),
    }
    if cfg.bc_weight > 0:
        bc, _ = bc_loss(lm_logits, batch)
        loss = loss + cfg.bc_weight * bc
        metrics["train/bc_loss"] = bc
    return loss, {"train/loss": loss, **metrics}
