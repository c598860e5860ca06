"""``DualLM``: the separate layout's decoding model (docs/algorithms.md §2.3, §3.5) as one causal LM.

In ``value_model="separate"`` mode the reference logits ``ℓ_β`` come from the frozen BC model
and Q/V from a second trunk. ``DualLM`` runs both on the same ids, each with its own KV cache,
and answers like a Hugging Face causal LM: ``logits`` are the policy's, ``hidden_states[-1]``
is the value trunk's final hidden state (after the final norm, what the heads read in
training). So :class:`~lmrlgym.models.policy.LMPolicy` and every method's
``logits_adjust(heads, beta)`` work on it unchanged.

The cache it returns, :class:`DualCache`, holds the two trunks' caches and applies each batch
edit to both; it offers the Hugging Face ``Cache`` batch operations a sampler uses (row
selection as finished rows drop out, row repetition to expand a prompt over candidates).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn


@dataclasses.dataclass
class DualCache:
    """The policy's and the value trunk's KV caches, edited together."""

    policy: Any  # transformers Cache
    value: Any

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep the rows ``indices`` (in that order) in both caches."""
        self.policy.batch_select_indices(indices)
        self.value.batch_select_indices(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times in place (row ``b`` becomes rows
        ``b·repeats .. b·repeats + repeats − 1``) in both caches."""
        self.policy.batch_repeat_interleave(repeats)
        self.value.batch_repeat_interleave(repeats)


@dataclasses.dataclass
class DualOutput:
    """The fields of a causal-LM output that a sampler reads."""

    logits: Tensor  # (B, T', V): the policy's
    cache: DualCache | None
    hidden_states: tuple[Tensor, ...] | None  # (value trunk's final h (B, T, d),) on request


class DualLM(nn.Module):
    """A frozen policy LM and a value trunk (a causal LM whose LM head is unused), run
    together on the same ids. ``config`` and ``device`` are the policy's."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy = policy
        self.value = value
        # In training mode only if both parts are: LMPolicy restores this mode after sampling,
        # and a frozen policy must stay in eval mode.
        self.training = policy.training and value.training

    @property
    def config(self) -> Any:
        return self.policy.config

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None, cache: DualCache | None = None,
        use_cache: bool = False, logits_to_keep: int = 0, output_hidden_states: bool = False,
    ) -> DualOutput:
        policy_cache, value_cache = (cache.policy, cache.value) if cache is not None else (None, None)
        out = self.policy(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=policy_cache, use_cache=use_cache, logits_to_keep=logits_to_keep)
        # The trunk alone (``base_model``): its final hidden states are the heads' input.
        value = self.value.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids, cache=value_cache,
                                      use_cache=use_cache)
        caches = DualCache(out.cache, value.cache) if use_cache else None
        hidden = (value.last_hidden_state,) if output_hidden_states else None
        return DualOutput(out.logits, caches, hidden)
