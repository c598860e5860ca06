"""Helpers shared by every training loop (ALGORITHMS.md §1.6-1.9, §2.4).

Two kinds of code live here, kept apart:

1. **Pure tensor helpers** (``step_view`` ... ``polyak_update``): the token-level MDP of §1.6,
   discounting (§1.7), returns-to-go and GAE. Each has hand-computed unit tests.
2. **Loop plumbing** used word for word by the ``train()`` loops: the base config, run
   directories, ``metrics.jsonl``/TensorBoard logging, atomic resumable checkpoints, the
   episode split and minibatch schedule, tokenizer training and ``load_policy``.

Functions, not base classes: each ``train()`` stays a readable top-to-bottom loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# 1. Pure tensor helpers (§1.6-1.9)
# --------------------------------------------------------------------------------------------


class EmptyActionBatch(ValueError):
    """A batch without action tokens: a mean over them would be 0/0 (the original's NaN)."""


def step_view(batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decision slots of a collated batch: slot ``i`` chooses token ``i + 1`` from state ``h_i``.

    Returns ``act`` (B, S) bool (slot is a decision step), ``a`` (B, S) the token taken,
    ``r`` (B, S) its reward and ``end`` (B, S) whether it closes an action turn.
    """
    act = batch.action_mask[:, 1:] & batch.attention_mask[:, 1:].bool()  # (B, S)
    a = batch.input_ids[:, 1:]  # (B, S)
    r = batch.rewards[:, 1:]  # (B, S)
    end = batch.turn_end[:, 1:]  # (B, S)
    return act, a, r, end


def step_discount(end: Tensor, gamma: float, mode: Literal["turn", "token"]) -> Tensor:
    """Per-step discount ``d_i`` (§1.7): γ at every step ("token", the original's) or only at
    the last token of an action turn ("turn", the paper's and our default)."""
    if mode == "token":
        return torch.full(end.shape, float(gamma), device=end.device)
    if mode == "turn":
        return torch.where(end.bool(), float(gamma), 1.0).to(torch.float32)
    raise ValueError(f"discount_mode must be 'turn' or 'token', got {mode!r}")


def next_step_index(act: Tensor) -> Tensor:
    """(B, S) bool -> (B, S) long: the next decision slot ``j > i`` in the row, or -1 if none.

    Gathers instead of the original's dense (B·T)² pairing matrices; exact for chains too.
    """
    B, S = act.shape
    arange = torch.arange(S, device=act.device).expand(B, S)
    pos = torch.where(act, arange, S)  # non-steps -> sentinel S
    at_or_after = pos.flip(1).cummin(1).values.flip(1)  # first step at index >= i
    nxt = torch.cat([at_or_after[:, 1:], torch.full((B, 1), S, device=act.device)], 1)
    return torch.where(nxt == S, -1, nxt)


def next_state_value(v_steps: Tensor, act: Tensor, v_boot: Tensor) -> Tensor:
    """V of each step's next state: the next step's V in the row, else the row's bootstrap.

    ``v_steps`` (B, S) without grad, ``act`` (B, S), ``v_boot`` (B,) already × (1 - terminal).
    """
    nxt = next_step_index(act)  # (B, S)
    v_next = v_steps.gather(1, nxt.clamp(min=0))  # (B, S)
    return torch.where(nxt >= 0, v_next, v_boot[:, None].to(v_steps.dtype))  # (B, S)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``x`` over ``mask`` divided by the count (pooled over the batch, as the original).

    Raises :class:`EmptyActionBatch` instead of returning NaN when the mask is empty.
    """
    n = mask.sum()
    if n == 0:
        raise EmptyActionBatch("no action tokens in batch")
    return (x * mask).sum() / n


def returns_to_go(r: Tensor, d: Tensor) -> Tensor:
    """``G_k = r_k + d_k · G_{k+1}`` over one episode's K action steps, (K,) -> (K,)."""
    G = torch.empty_like(r)
    acc = torch.zeros((), dtype=r.dtype)
    for k in reversed(range(len(r))):
        acc = r[k] + d[k] * acc
        G[k] = acc
    return G


def gae(r: Tensor, v: Tensor, d: Tensor, lam: Tensor, v_boot: float | Tensor) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over one episode's K action steps (§1.7).

    ``v_boot`` is the value after the last step, already × (1 - terminal). Returns the
    advantages and the value targets ``A + v``, both (K,).
    """
    A = torch.empty_like(r)
    next_v = torch.as_tensor(v_boot, dtype=r.dtype)
    next_a = torch.zeros((), dtype=r.dtype)
    for k in reversed(range(len(r))):
        delta = r[k] + d[k] * next_v - v[k]
        next_a = delta + d[k] * lam[k] * next_a
        A[k], next_v = next_a, v[k]
    return A, A + v


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, alpha: float) -> None:
    """``θ̄ ← (1 − α) θ̄ + α θ`` parameter by parameter (§2.4); buffers are copied."""
    for tp, p in zip(target.parameters(), online.parameters(), strict=True):
        tp.lerp_(p, alpha)
    for tb, b in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(b)


def make_optimizer(
    params: Sequence[nn.Parameter] | Any,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW(0.9, 0.95), eps 1e-8, no weight decay: §2.4 (the original BC used Adafactor)."""
    return torch.optim.AdamW(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Constant learning rate after an optional linear warmup (§2.4)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (one call, as minGPT's ``set_seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
