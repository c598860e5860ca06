"""``Decoding``: how a policy turns logits into actions (docs/algorithms.md §4.1), one frozen
value shared by ``LMPolicy``, ``lmrlgym eval``, ``lmrlgym serve``, the bench profiles and a
run's evaluation settings (``TrainConfig.decoding``).

It holds only what decides which action comes out (and the seed that replays it); where the
prompt comes from (model, tokenizer, context window and budget) and how rows are batched stay
with the policy. No torch here, so configs can build one cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Decode = Literal["sample", "rerank", "constrained"]
RerankScore = Literal["logprob", "value", "turn"]
DECODE_MODES: tuple[str, ...] = ("sample", "rerank", "constrained")
RERANK_SCORES: tuple[str, ...] = ("logprob", "value", "turn")


@dataclasses.dataclass(frozen=True)
class Decoding:
    """Ancestral sampling at temperature 1 with no top-k/top-p by default (the original's
    effective setting)."""

    temperature: float = 1.0
    """Divides the logits before sampling (and rerank scores before their draw)."""
    greedy: bool = False
    """Take the argmax instead of sampling (``temperature`` is then ignored)."""
    top_k: int | None = None
    """Sample from the ``top_k`` most likely tokens only."""
    top_p: float | None = None
    """Sample from the smallest set of tokens whose probability reaches ``top_p``."""
    max_new_tokens: int = 32
    """Per-action token cap ``M``; an action that reaches it gets a newline and is counted as
    truncated."""
    seed: int = 0
    """Seed of the policy's sampling generator."""
    decode: Decode = "sample"
    """Over known legal actions: free generation (``sample``), scoring every candidate
    (``rerank``), or sampling only tokens that continue a legal action (``constrained``)."""
    rerank_score: RerankScore = "logprob"
    """With ``rerank``: a candidate's log-probability under the policy, or (value-guided
    policies) its summed β·(Q − V), the original's Maze reranker (§3.5), or β·Q at its last
    token (``turn``: the Q a turn-level backup trains, §3.4)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be positive (or use greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be positive, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, "
                             f"got {self.decode!r}")
        if self.rerank_score not in RERANK_SCORES:
            raise ValueError(f"rerank_score must be one of {', '.join(RERANK_SCORES)}, "
                             f"got {self.rerank_score!r}")
        if self.rerank_score != "logprob" and self.decode != "rerank":
            raise ValueError(f"rerank_score={self.rerank_score!r} only applies to decode='rerank'")
        if self.decode == "rerank" and (self.top_k is not None or self.top_p is not None):
            raise ValueError("top_k/top_p do not apply to decode='rerank' (it draws whole "
                             "actions from softmax(score / temperature))")
