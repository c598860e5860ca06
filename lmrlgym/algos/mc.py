"""Monte Carlo Returns (MC): fit a token-level Q head to the return-to-go, act with
``π_β · exp(β Q)``.

Paper: Abdulhai et al. 2023, LMRL-Gym, §5 ("MC Returns") and Table 3; one step of policy
improvement over the behaviour policy. Mirrors the original's ``llm_rl_scripts/*/mc/train_mc.py``
(ALGORITHMS.md §3.3, decoding §3.5).

Deviations from the original (docs/deviations.md):
1. Shared layout by default: one trunk with the LM head and the Q head; a BC term
   (``bc_weight``) keeps the LM head ≈ π_β, instead of a frozen BC copy (``value_model``).
2. Returns are computed once per episode over all its action turns, with no duplicated final
   step (the original counted the terminal reward twice on Maze/Chess, §1.8), and no dialogue
   is truncated on the right (§1.4).
3. Discounting is per turn by default (``discount_mode="token"`` gives the original's).
4. Dropout is off (the original trained with it on); AdamW with gradient clipping (§2.4).

Logged keys: ``train/{loss, q_loss, cql_loss, bc_loss, q_mean, return_mean, q_abs_err, lr,
grad_norm, action_tokens, epoch}``, ``time/tokens_per_s`` and the ``eval/*`` keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from torch import Tensor

from lmrlgym.algos import common
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.common import step_mean, step_view


@dataclasses.dataclass(frozen=True)
class MCConfig(common.TrainConfig):
    """MC Returns (ALGORITHMS.md §3.3). Defaults: paper Table 3, Maze column."""

    ALGO: ClassVar[str] = "mc"

    lr: float = 1e-4
    """AdamW learning rate (paper Table 3: 1e-4; Wordle 3e-5)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128; Chess/Endgames 64, Wordle 32)."""
    gamma: float = 0.99
    """Discount (paper Table 3: 0.99; Wordle 1.0)."""
    discount_mode: Literal["turn", "token"] = "turn"
    """γ per action turn (ours, the paper's text) or per action token (the original code), §1.7."""
    beta: float = 16.0
    """Decoding weight of Q in ``π_β · exp(β Q)`` (paper Table 3, Maze: 16)."""
    cql_weight: float = 0.5
    """Weight of the conservative CE term (paper Table 3, Maze: 0.5)."""
    bc_weight: float = 1.0
    """Weight of the BC term that keeps the shared LM head ≈ π_β (ours, §2.3; 0 if separate)."""
    head: Literal["mlp", "linear"] = "mlp"
    """Q head type (original: MLP on Maze/Chess/Endgames, linear elsewhere; §2.2)."""
    head_bias: float = 0.0
    """Initial Q value: the zero-initialised output layer's bias (original: 0 on Maze/Chess)."""
    value_model: Literal["shared", "separate"] = "shared"
    """``shared``: one trunk for LM and Q (default). ``separate``: the original's layout, a Q
    trunk trained without an LM loss and a frozen copy of the initial model as π_β."""


def mc_loss(q: Tensor, lm_logits: Tensor | None, batch: Any, cfg: MCConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_Q + cql_weight · L_CQL + bc_weight · L_BC`` (§3.3).

    ``q``: (n, V) Q head at the action steps; ``lm_logits``: (n, V) LM logits there (used when
    ``bc_weight > 0``). ``batch.returns`` holds each action token's return-to-go ``G_i``.
    """
    act, a, _, _ = step_view(batch)  # (B, S)
    a = a[act]  # (n,) the taken tokens
    g = batch.returns[:, 1:][act].float()  # (n,) return-to-go of a_i
    q = q.float()
    q_a = q.gather(-1, a[:, None]).squeeze(-1)  # (n,) Q(s_i, a_i)
    q_loss = step_mean(0.5 * (q_a - g) ** 2)
    # Conservative term: a cross-entropy with Q as logits, pushing down unseen tokens' Q.
    cql = step_mean(q.logsumexp(-1) - q_a)
    loss = q_loss + cfg.cql_weight * cql
    metrics = {"train/q_loss": q_loss, "train/cql_loss": cql, "train/q_mean": step_mean(q_a),
               "train/return_mean": step_mean(g), "train/q_abs_err": step_mean((q_a - g).abs())}
    if cfg.bc_weight > 0:
        bc, _ = bc_loss(lm_logits, batch)
        loss = loss + cfg.bc_weight * bc
        metrics["train/bc_loss"] = bc
    return loss, {"train/loss": loss, **metrics}
