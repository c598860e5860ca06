"""Value and Q heads on the LM head's input (docs/algorithms.md §2.2).

As in the original, the output layer's weight starts at zero and its bias at ``head_bias``, so
every ``Q(s, a)`` or ``V(s)`` starts at exactly ``head_bias`` and value-guided decoding starts
as the behaviour policy. Heads run in float32 and have no dropout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _zero_out(layer: nn.Linear, head_bias: float) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.constant_(layer.bias, head_bias)
    return layer


class MLPHead(nn.Module):
    """``Linear(d, d) -> ReLU -> Linear(d, out)``; the first layer keeps PyTorch's default init.

    ``out = V`` for a Q head (one value per vocabulary token), ``1`` for a V head (then the
    trailing dimension is squeezed: ``(..., d) -> (...)``).
    """

    def __init__(self, d: int, out: int, head_bias: float = 0.0):
        super().__init__()
        self.out = out
        self.net = nn.Sequential(nn.Linear(d, d), nn.ReLU(), _zero_out(nn.Linear(d, out), head_bias))

    def forward(self, h: Tensor) -> Tensor:  # (..., d) -> (..., out) or (...) when out == 1
        y = self.net(h.to(torch.float32))
        return y.squeeze(-1) if self.out == 1 else y


class LinearHead(nn.Module):
    """One ``Linear(d, out)`` with zero weight and constant bias (scalar output squeezed)."""

    def __init__(self, d: int, out: int, head_bias: float = 0.0):
        super().__init__()
        self.out = out
        self.linear = _zero_out(nn.Linear(d, out), head_bias)

    def forward(self, h: Tensor) -> Tensor:  # (..., d) -> (..., out) or (...) when out == 1
        y = self.linear(h.to(torch.float32))
        return y.squeeze(-1) if self.out == 1 else y


def make_head(kind: str, d: int, out: int, head_bias: float = 0.0) -> nn.Module:
    """``kind`` is ``"mlp"`` or ``"linear"`` (presets: MLP for ILQL, see §2.2)."""
    if kind == "mlp":
        return MLPHead(d, out, head_bias)
    if kind == "linear":
        return LinearHead(d, out, head_bias)
    raise ValueError(f"head kind must be 'mlp' or 'linear', got {kind!r}")
