"""Decoding over a known set of legal actions (issue 16): the candidates' token ids, the token
trie that constrained decoding walks, and the scores and choice of reranking.

A candidate is tokenized exactly as ``render()`` tokenizes an action turn (the action plus its
newline, alone), so the ids a policy emits by reranking or constrained sampling are the ids a
training row would hold. Every candidate ends with a stop token (one whose text contains
``"\\n"``) and has none before it: generation then stops exactly when a candidate is complete.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lmrlgym.models.decoding import RerankScore


@dataclasses.dataclass(frozen=True)
class ActionSet:
    """The legal actions of one state, tokenized, with their token trie.

    ``children[node]`` maps a token to the next node (node 0 is the root, the empty prefix);
    ``allowed[node]`` holds the same tokens as a tensor, the mask of constrained decoding.
    """

    actions: tuple[str, ...]  # without the trailing newline, duplicates removed
    ids: tuple[tuple[int, ...], ...]  # action + "\n", tokenized as an action turn
    index: dict[tuple[int, ...], int]  # ids -> position in ``actions``
    children: tuple[dict[int, int], ...]
    allowed: tuple[Tensor, ...]
    padded: Tensor  # (C, longest) the ids right-padded with 0, batched by reranking
    lengths: Tensor  # (C,) the candidates' token counts


def build_action_set(
    actions: Sequence[str], tokenizer: PreTrainedTokenizerBase, stops: Tensor,
    banned: frozenset[int], max_tokens: int,
) -> ActionSet:
    """Tokenize ``actions`` and build their trie. ``stops`` is the (V,) bool table of tokens
    that end an action, ``banned`` the ids the policy never emits (special tokens), and
    ``max_tokens`` the longest a candidate may be (the policy's ``max_new_tokens``)."""
    unique = tuple(dict.fromkeys(actions))
    if not unique:
        raise ValueError("empty action set: a state with no legal action cannot be decoded")
    encoded = tokenizer([a + "\n" for a in unique], add_special_tokens=False)["input_ids"]
    children: list[dict[int, int]] = [{}]
    for action, ids in zip(unique, encoded, strict=True):
        if "\n" in action:
            raise ValueError(f"action {action!r} holds a newline; give one-line actions without "
                             "the trailing newline")
        is_stop = [bool(stops[i]) for i in ids]
        if not is_stop[-1] or any(is_stop[:-1]):
            raise ValueError(f"action {action!r}: with its newline it must tokenize to exactly one "
                             "stop token, the last")
        if banned.intersection(ids):
            raise ValueError(f"action {action!r} tokenizes to a special token")
        if len(ids) > max_tokens:
            raise ValueError(f"action {action!r} is {len(ids)} tokens with its newline, more than "
                             f"max_new_tokens={max_tokens}")
        node = 0
        for token in ids:
            if token not in children[node]:
                children[node][token] = len(children)
                children.append({})
            node = children[node][token]
    ids = tuple(tuple(i) for i in encoded)
    allowed = tuple(torch.tensor(sorted(c), dtype=torch.long) for c in children)
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
    padded = torch.zeros((len(ids), int(lengths.max())), dtype=torch.long)
    for k, i in enumerate(ids):
        padded[k, : len(i)] = torch.tensor(i, dtype=torch.long)
    return ActionSet(unique, ids, {t: k for k, t in enumerate(ids)}, tuple(children), allowed,
                     padded, lengths)


class ActionSetCache:
    """``build_action_set`` memoised by the tuple of actions: Wordle's vocabulary is the same
    every turn, and its trie is built once. Least recently used sets are dropped beyond
    ``size`` (Chess has a new set of legal moves at almost every position)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Tensor, banned: frozenset[int],
                 max_tokens: int, size: int = 256):
        self.tokenizer, self.stops, self.banned = tokenizer, stops, banned
        self.max_tokens, self.size = max_tokens, size
        self._sets: OrderedDict[tuple[str, ...], ActionSet] = OrderedDict()

    def __call__(self, actions: Sequence[str]) -> ActionSet:
        key = tuple(actions)
        found = self._sets.get(key)
        if found is not None:
            self._sets.move_to_end(key)
            return found
        built = build_action_set(key, self.tokenizer, self.stops, self.banned, self.max_tokens)
        self._sets[key] = built
        if len(self._sets) > self.size:
            self._sets.popitem(last=False)
        return built


def token_scores(
    ref_logits: Tensor, logits: Tensor, targets: Tensor, score: RerankScore, banned: Tensor,
) -> Tensor:
    """The per-token rerank score of ``targets`` (K,) given the reference logits (K, V) and the
    policy's logits (K, V), which differ only for value-guided policies.

    ``"logprob"``: ``log_softmax`` of the policy's logits over the vocabulary without the
    ``banned`` ids (the distribution sampling draws from at temperature 1).
    ``"value"``: ``logits − ref_logits`` at the target, i.e. β·(Q − V) for ILQL and β·Q for MC,
    whose sum over an action's tokens is the original's Maze reranker score.
    """
    if score == "value":
        return (logits - ref_logits).gather(1, targets[:, None]).squeeze(1)
    if len(banned):
        logits = logits.index_fill(1, banned, float("-inf"))
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)


def choose(scores: Tensor, greedy: bool, temperature: float, generator: torch.Generator) -> int:
    """The index of the chosen candidate: argmax when ``greedy`` (the first on ties), else a
    draw from ``softmax(scores / temperature)`` with ``generator``."""
    if greedy:
        return int(scores.argmax())
    probs = (scores.double() / temperature).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))
