"""The pure RL math of the token-level MDP (docs/algorithms.md §1.6-1.9, §2.4): decision slots of a
batch, discounting, returns-to-go, GAE, pooled means and the Polyak update.

Functions of tensors (or floats) only, each with hand-computed unit tests; no model, config or
I/O. ``models/render.py`` computes its returns-to-go with these too, so the discounting of a
rendered row and of a loss is one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # render() imports this module for its returns-to-go
    from lmrlgym.models.render import Batch


class EmptyActionBatch(ValueError):
    """A batch without action tokens: a mean over them would be 0/0 (the original's NaN)."""


def step_view(batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decision slots of a collated batch: slot ``i`` chooses token ``i + 1`` from state ``h_i``.

    Returns ``act`` (B, S) bool (slot is a decision step), ``a`` (B, S) the token taken,
    ``r`` (B, S) its reward and ``end`` (B, S) whether it closes an action turn.
    """
    act = batch.action_mask[:, 1:] & batch.attention_mask[:, 1:].bool()  # (B, S)
    a = batch.input_ids[:, 1:]  # (B, S)
    r = batch.rewards[:, 1:]  # (B, S)
    end = batch.turn_end[:, 1:]  # (B, S)
    return act, a, r, end


def step_discount(end: Tensor, gamma: float, mode: Literal["turn", "token"],
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-step discount ``d_i`` (§1.7): γ at every step ("token", the original's) or only at
    the last token of an action turn ("turn", the paper's and our default)."""
    if mode not in ("turn", "token"):
        raise ValueError(f"discount_mode must be 'turn' or 'token', got {mode!r}")
    d = torch.full(end.shape, float(gamma), dtype=dtype, device=end.device)
    return d if mode == "token" else d.masked_fill(~end.bool(), 1.0)


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


def turn_end_index(act: Tensor, end: Tensor) -> Tensor:
    """(B, S) bool, (B, S) bool -> (B, S) long: the slot of the last token of each step's action
    turn, i.e. the first turn-ending step ``j >= i`` in the row (``i`` itself if the row has none
    after it; ``render()`` never cuts a turn, so every action step finds its turn's end)."""
    B, S = act.shape
    arange = torch.arange(S, device=act.device).expand(B, S)
    pos = torch.where(act & end.bool(), arange, S)  # non-ending slots -> sentinel S
    at_or_after = pos.flip(1).cummin(1).values.flip(1)  # first turn end at index >= i
    return torch.where(at_or_after == S, arange, at_or_after)


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


def step_mean(x: Tensor) -> Tensor:
    """Mean of per-step values already gathered at the batch's ``n`` action steps, ``(n,)``.

    ``masked_mean`` with an all-true mask: the same pooled mean and the same empty-batch error.
    """
    return masked_mean(x, torch.ones_like(x, dtype=torch.bool))


def returns_to_go(r: Sequence[float], d: Sequence[float]) -> list[float]:
    """``G_k = r_k + d_k · G_{k+1}`` over one episode's K action steps, 0 after the last (pure
    Monte Carlo, §3.3). Python floats (double precision): ``render()`` calls it per episode."""
    g = [0.0] * len(r)
    acc = 0.0
    for k in reversed(range(len(r))):
        acc = r[k] + d[k] * acc
        g[k] = acc
    return g


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
