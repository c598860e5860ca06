"""Behaviour cloning (BC): maximise the likelihood of the dataset's action tokens.

Paper: Abdulhai et al. 2023, LMRL-Gym, §5 and Table 3. Mirrors the original's
``llm_rl_scripts/*/bc/train_bc.py`` and its masked-CE loss (ALGORITHMS.md §3.1).

Deviations from the original (docs/deviations.md):
1. One masked loss over ``render()`` segments replaces the two input paths ((prompt, target)
   pairs for Maze/Chess, masked dialogues elsewhere).
2. AdamW at the Table 3 learning rate instead of Adafactor with a relative step (§2.4), and the
   gradient norm is clipped at 1.0.
3. One BOS starts every row in training and at inference (the original: training only), and the
   prompt is truncated the same way in both (§1.4).
4. Episodes are split train/validation by a seeded shuffle and reshuffled each epoch (the
   original's Maze split was swapped and its streams never shuffled).
5. ``select_best`` picks the checkpoint by validation NLL, never by test episodes.

Logged keys: ``train/{loss, nll, token_acc, lr, grad_norm, action_tokens, epoch}``,
``time/tokens_per_s``, ``eval/loss`` (validation NLL) and the ``eval/*`` keys of evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor

from lmrlgym.algos import common
from lmrlgym.algos.common import step_mean, step_view


@dataclasses.dataclass(frozen=True)
class BCConfig(common.TrainConfig):
    """Behaviour cloning (ALGORITHMS.md §3.1). Defaults: paper Table 3."""

    ALGO: ClassVar[str] = "bc"

    lr: float = 1e-4
    """AdamW learning rate (paper Table 3: 1e-4)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128)."""
    select_best: bool = False
    """Export the checkpoint with the lowest validation NLL instead of the final one."""


def bc_loss(logits: Tensor, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_BC = −(1/n) Σ_i log π_θ(a_i | s_i)`` over the batch's ``n`` action steps (§3.1).

    ``logits``: (n, V) LM logits at the action steps, in ``step_view`` order
    (``h[:, :-1][act]``); env tokens are context only.
    """
    act, a, _, _ = step_view(batch)  # (B, S)
    a = a[act]  # (n,) the taken tokens
    logp = logits.float().log_softmax(-1)  # (n, V)
    logp_a = logp.gather(-1, a[:, None]).squeeze(-1)  # (n,)
    loss = -step_mean(logp_a)
    acc = step_mean((logp.argmax(-1) == a).float())
    return loss, {"train/loss": loss, "train/nll": loss, "train/token_acc": acc}
