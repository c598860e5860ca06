"""``LMPolicy``: batched, KV-cached generation of one action per prompt (docs/algorithms.md §4.1).

Prompts are built exactly as ``render()`` builds training rows (per-turn tokenization, one BOS,
the last ``P - 1`` context tokens), left-padded, with ``position_ids = cumsum(mask) - 1``, so
a row's logits do not depend on its batch neighbours. Each row stops at its first generated
token whose text contains ``"\\n"``; if ``max_new_tokens`` runs out first, a newline token is
appended and the action is counted as truncated.

Decoding follows the policy's :class:`~lmrlgym.models.decoding.Decoding` (its ``settings``):
ancestral sampling at ``temperature`` 1 with no top-k/top-p by default (the original's
effective setting); ``greedy``, ``top_k`` and ``top_p`` are available. Extra
embedding rows beyond ``len(tokenizer)`` are sliced off, and special tokens (BOS/EOS/PAD),
which never occur in an action during training, are never sampled. ``logits_adjust(h, logits)``
is the hook for value-guided decoding (§3.5): it receives the LM head's input ``h`` (N, d) and
the reference logits (N, V) of the rows still generating and returns the logits to sample from
(before temperature). Sampling uses the policy's own seeded ``torch.Generator``.

Over a known set of legal actions (issue 16; ``action_sets`` of :meth:`LMPolicy.act_turns`),
``decode`` picks how an action is chosen:

- ``"sample"``: free generation as above; action sets are ignored.
- ``"rerank"``: every candidate (its tokens and the newline token) is scored after the prompt in
  batched forwards that share the prompt's KV cache: the prompt is prefilled once, its cache
  expanded over the candidates, whose tokens are fed right-padded. ``rerank_score="logprob"``
  sums the candidate's log-probabilities under the policy's (possibly value-guided) logits;
  ``"value"`` sums ``adjusted − reference`` logits, i.e. β·(Q − V) (ILQL) or β·Q (MC), the
  original's Maze reranker. The argmax is taken when greedy, else a draw from
  ``softmax(score / temperature)``; top-k/top-p do not apply.
- ``"constrained"``: token-by-token sampling as above, with every token that cannot continue a
  legal action masked (a token trie over the candidates), so only a legal action is spelled.

Either way the emitted ids are the candidate's ids, exactly as ``render()`` tokenizes that
action turn, and a ``None`` action set falls back to free generation for that row.

Across turns (``sessions`` of :meth:`LMPolicy.generate`: one key per live episode), a
generated row keeps its KV cache: the ids it holds (prompt and fed action tokens) and their
keys and values. The episode's next prompt is built as before; the part it shares with those
ids from the start (more than the BOS: a whole history when the window keeps every turn, the
unchanged head of an observation when it keeps only the latest) is taken from the stored cache
(same ids at the same positions), and only the rest is fed. A prompt sharing only the BOS (the
left truncation of the budget ``P`` shifts every position) and weights changed in place
re-encode the whole prompt. So the ids fed equal those of re-encoding; the logits differ only
by float rounding, as the in-turn KV cache's do.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from lmrlgym.core import Turn
from lmrlgym.models.action_sets import ActionSet, ActionSetCache, choose, token_scores
from lmrlgym.models.decoding import Decoding
from lmrlgym.models.dual import DualCache
from lmrlgym.models.factory import positions
from lmrlgym.models.render import ContextFn, TokenCache, prompt_ids
from lmrlgym.models.tokenizer import newline_id

LogitsAdjust = Callable[[Tensor, Tensor], Tensor]
# hidden (N, d) -> (Q over the vocabulary (N, V), V (N,) or None when the method has no V)
ValueReadout = Callable[[Tensor], tuple[Tensor, Tensor | None]]


@dataclasses.dataclass
class Generation:
    """The actions of one ``generate`` call, row-aligned with its prompts."""

    texts: list[str]  # decoded actions, each ending at its first newline token
    action_ids: list[list[int]]  # the generated ids (a forced newline included)
    truncated: list[bool]  # max_new_tokens ran out and a newline was appended
    prompt_ids: list[list[int]]  # the prompts as fed to the model (BOS included, unpadded)
    scores: list[list[float] | None]  # reranked rows: each candidate's score; else None


@dataclasses.dataclass
class _Past:
    """A live episode's KV cache between turns: the ids it holds, and where their keys and
    values are: row ``row`` of a batch's cache buffers ``bufs`` (per cache layer, a
    separate-layout model's policy layers then its value layers, keys and values
    (B, W, H, D)), at positions ``cols``. The rows of a batch share its buffers, so keeping a
    row copies nothing, and the next turn's batch is gathered from them with one
    ``index_select`` per tensor (:func:`_stack_pasts`)."""

    ids: list[int]
    bufs: list[tuple[Tensor, Tensor]]
    row: int
    cols: Tensor


class LMPolicy:
    """A causal LM as a text policy (the ``lmrlgym.core.Policy`` protocol, plus ``act_turns``).

    ``decoding`` says how actions are decoded; it is kept as ``settings`` (a new value may be
    assigned between calls, as ``lmrlgym serve`` does per request) and recorded with every
    evaluation by :attr:`decoding`. ``context_turns`` is the env's window, used by
    :meth:`act_turns` (default: every turn); ``max_context_tokens`` is the prompt budget ``P``
    (BOS included). Prompts are generated in batches of at most ``batch_size``, grouped by
    length so that left padding stays within ``pad_budget`` of a batch's real tokens
    (``float("inf")``: any lengths share a batch). ``use_cache=False`` recomputes the whole
    sequence at every token and ``batch_size=1`` generates row by row: both only exist to
    measure their cost.

    ``decoding.decode`` chooses how actions are decoded when the legal actions are known
    (module docstring); ``candidate_batch`` bounds the (prompt, candidate) rows of one rerank
    forward (Wordle's vocabulary is scored in chunks). Rerank always shares the prompt's cache.

    ``reuse_cache`` keeps each live episode's KV cache between turns when the caller names the
    episodes (``sessions``; module docstring); ``False`` re-encodes every prompt.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        decoding: Decoding = Decoding(),
        context_turns: ContextFn | None = None,
        max_context_tokens: int = 1024,
        logits_adjust: LogitsAdjust | None = None,
        use_cache: bool = True,
        batch_size: int = 64,
        pad_budget: float = 0.25,
        name: str = "lm",
        candidate_batch: int = 256,
        reuse_cache: bool = True,
        value_readout: ValueReadout | None = None,
        beta: float = 1.0,
    ):
        if max_context_tokens < 2:
            raise ValueError(f"max_context_tokens must be at least 2, got {max_context_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if pad_budget < 0:
            raise ValueError(f"pad_budget must be >= 0, got {pad_budget}")
        self.logits_adjust, self.value_readout, self.beta = logits_adjust, value_readout, beta
        self._check_scores(decoding)
        if candidate_batch < 1:
            raise ValueError(f"candidate_batch must be positive, got {candidate_batch}")
        max_new_tokens = decoding.max_new_tokens
        n_pos = positions(model.config)
        if n_pos is not None and max_context_tokens + max_new_tokens > n_pos:
            raise ValueError(
                f"max_context_tokens + max_new_tokens = {max_context_tokens + max_new_tokens} "
                f"exceeds the model's {n_pos} positions"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.settings = decoding
        self.context_turns = context_turns
        self.max_context_tokens = max_context_tokens
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.pad_budget = pad_budget
        self.name = name
        self.candidate_batch = candidate_batch
        self.reuse_cache = reuse_cache
        self._pasts: dict[Hashable, _Past] = {}
        self._pasts_weights: tuple[int, ...] = ()  # the parameters' versions the pasts belong to
        self.n_vocab = len(tokenizer)
        self.newline_id = newline_id(tokenizer)
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.bos_id
        self._tokens = TokenCache(tokenizer)
        self._stops = self._stop_table()
        self._banned = torch.tensor(sorted(set(tokenizer.all_special_ids) & set(range(self.n_vocab))),
                                    dtype=torch.long)
        self._action_sets = ActionSetCache(tokenizer, self._stops, frozenset(self._banned.tolist()),
                                           max_new_tokens)
        self.generator = torch.Generator().manual_seed(decoding.seed)
        self.last: Generation | None = None
        self.n_actions = 0
        self.n_truncated = 0
        self.n_free = 0  # rerank/constrained: actions decoded freely, with no action set given

    # --- the Policy protocol -----------------------------------------------------------------
    def act(self, observations: list[str]) -> list[str]:
        """One action per observation string, each tokenized as a single turn.

        With the project's tokenizer this equals per-turn tokenization (every turn ends with a
        newline, which is its own pre-token); prefer :meth:`act_turns` for other tokenizers.
        """
        return self.act_turns([[Turn(obs, False)] for obs in observations], window=False)

    def act_turns(self, contexts: Sequence[Sequence[Turn]], window: bool = True,
                  action_sets: Sequence[Sequence[str] | None] | None = None,
                  sessions: Sequence[Hashable] | None = None) -> list[str]:
        """One action per turn history. ``window=True`` applies ``context_turns`` first (pass
        the full history); ``window=False`` takes each context as already windowed.
        ``action_sets`` (one entry per context: the legal actions without their newline, or
        None) are used by the ``rerank`` and ``constrained`` modes; ``sessions`` as in
        :meth:`generate`."""
        prompts = []
        for turns in contexts:
            ctx = self.context_turns(turns) if (window and self.context_turns) else list(turns)
            prompts.append(self.prompt(ctx))
        return self.generate(prompts, action_sets, sessions).texts

    def prompt(self, context: Sequence[Turn]) -> list[int]:
        """The prompt ids of a windowed context: exactly what ``render()`` puts before an action."""
        if len(self._tokens) > 200_000:  # dialogue texts rarely repeat: bound the cache
            self._tokens = TokenCache(self.tokenizer)
        self._tokens.prefill([t.text for t in context])
        return prompt_ids(context, self._tokens, self.bos_id, self.max_context_tokens)

    def context_length(self, context: Sequence[Turn]) -> int:
        """Tokens of a windowed context before :meth:`prompt` keeps its last ``P - 1``."""
        self._tokens.prefill([t.text for t in context])
        return sum(len(self._tokens(t.text)) for t in context)

    @property
    def decoding(self) -> dict[str, object]:
        """The decoding settings, recorded with every evaluation. ``batch_size`` and
        ``pad_budget`` (None: unbounded) are included because they decide which row consumes
        which random draw."""
        d = self.settings
        return {"greedy": d.greedy, "temperature": d.temperature, "top_k": d.top_k,
                "top_p": d.top_p, "max_new_tokens": d.max_new_tokens,
                "max_context_tokens": self.max_context_tokens, "seed": d.seed,
                "value_guided": self.logits_adjust is not None, "batch_size": self.batch_size,
                "pad_budget": None if math.isinf(self.pad_budget) else self.pad_budget,
                "decode": d.decode,
                **({"rerank_score": d.rerank_score} if d.decode == "rerank" else {})}

    def end_episodes(self) -> None:
        """Free the KV caches kept for live episodes (``sessions`` of :meth:`generate`)."""
        self._pasts = {}

    def _check_scores(self, decoding: Decoding) -> None:
        if decoding.rerank_score == "value" and self.logits_adjust is None:
            raise ValueError("rerank_score='value' needs a value-guided policy (MC or ILQL, "
                             "with logits_adjust); this policy has no value heads")
        if decoding.rerank_score == "turn" and self.value_readout is None:
            raise ValueError("rerank_score='turn' needs a value-guided policy (MC or ILQL, "
                             "with its value readout); this policy has no value heads")

    def reseed(self, seed: int) -> None:
        self.settings = dataclasses.replace(self.settings, seed=seed)
        self.generator = torch.Generator().manual_seed(seed)

    # --- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]],
                 action_sets: Sequence[Sequence[str] | None] | None = None,
                 sessions: Sequence[Hashable] | None = None) -> Generation:
        """Generate one action for each prompt (token ids, BOS first, at most ``P`` long);
        ``action_sets`` as in :meth:`act_turns`.

        ``sessions``: one key per prompt naming its episode (unique among the live ones). Each
        generated row's cache is kept under its key for that episode's next prompt (with
        ``reuse_cache``); the caches of episodes absent from a call are freed, so a finished
        episode's cache goes as soon as the next turn is generated without it."""
        for p in prompts:
            if not p or len(p) > self.max_context_tokens:
                raise ValueError(f"prompt of {len(p)} tokens; must be 1..{self.max_context_tokens}")
        if action_sets is not None and len(action_sets) != len(prompts):
            raise ValueError(f"{len(action_sets)} action sets for {len(prompts)} prompts")
        if sessions is not None and len(sessions) != len(prompts):
            raise ValueError(f"{len(sessions)} sessions for {len(prompts)} prompts")
        sets: list[ActionSet | None] = [None] * len(prompts)
        if action_sets is not None and self.settings.decode != "sample":
            sets = [None if a is None else self._action_sets(a) for a in action_sets]
        was_training = self.model.training
        if was_training:  # (eval() walks every module: a cost per call when already off)
            self.model.eval()  # dropout off in every rollout (docs/algorithms.md §2.4)
        try:
            ids: list[list[int]] = [[] for _ in prompts]
            truncated = [False] * len(prompts)
            scores: list[list[float] | None] = [None] * len(prompts)
            rerank = self.settings.decode == "rerank"
            reranked = {i: a for i, a in enumerate(sets) if a is not None and rerank}
            generated = [i for i in range(len(prompts)) if i not in reranked]
            keep = sessions is not None and self.reuse_cache and self.use_cache
            pasts = self._resume(prompts, sessions) if keep else {}
            for chunk in self._chunks_of(generated, prompts):
                gen, trunc, kept = self._generate_batch(
                    [list(prompts[i]) for i in chunk], [sets[i] for i in chunk],
                    [pasts.get(i) for i in chunk], keep)
                for i, g, t in zip(chunk, gen, trunc, strict=True):
                    ids[i], truncated[i] = g, t
                for i, past in zip(chunk, kept, strict=True):
                    if past is not None:
                        self._pasts[sessions[i]] = past
            for chunk in self._chunks_of(list(reranked), prompts):
                picks, chunk_scores = self._rerank_batch([list(prompts[i]) for i in chunk],
                                                         [reranked[i] for i in chunk])
                for i, pick, sc in zip(chunk, picks, chunk_scores, strict=True):
                    ids[i], scores[i] = list(reranked[i].ids[pick]), sc
            texts = [self.tokenizer.decode(g, skip_special_tokens=False) if a is None
                     else a.actions[a.index[tuple(g)]] + "\n" for g, a in zip(ids, sets, strict=True)]
        finally:
            if was_training:
                self.model.train()
        self.n_actions += len(ids)
        self.n_truncated += sum(truncated)
        if self.settings.decode != "sample":
            self.n_free += sum(a is None for a in sets)
        self.last = Generation(texts, ids, truncated, [list(p) for p in prompts], scores)
        return self.last

    def _resume(self, prompts: Sequence[Sequence[int]],
                sessions: Sequence[Hashable]) -> dict[int, _Past]:
        """``{i: the head of session i's stored past that prompt i starts with}``, where that
        is more than the BOS and leaves a token to feed; every stored past is dropped from the
        policy (the rows generated now store their own). Pasts made with other weights
        (training changed them in place) are not used."""
        weights = tuple(p._version for p in self.model.parameters())
        stored, self._pasts = self._pasts, {}
        if weights != self._pasts_weights:
            stored, self._pasts_weights = {}, weights
        out = {}
        for i, key in enumerate(sessions):
            past = stored.get(key)
            if past is None:
                continue
            shared = _common_prefix(past.ids, prompts[i], min(len(past.ids), len(prompts[i]) - 1))
            if shared >= 2:
                out[i] = past if shared == len(past.ids) else dataclasses.replace(
                    past, ids=past.ids[:shared], cols=past.cols[:shared])
        return out

    def _chunks_of(self, rows: list[int], prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """:meth:`_chunks` of the prompts ``rows``, as indices into ``prompts``."""
        return [[rows[j] for j in c] for c in self._chunks([len(prompts[i]) for i in rows])]

    def _chunks(self, lengths: list[int]) -> list[list[int]]:
        """Prompt indices grouped by length into batches of at most ``batch_size``.

        Prefill dominates CPU generation, and left padding to the longest prompt wastes it, so
        a batch is closed once its padding would exceed ``pad_budget`` of its real tokens."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks: list[list[int]] = []
        cur: list[int] = []
        real = 0
        for i in order:
            width = lengths[i]  # ascending order: the newest prompt is the longest
            if cur and (len(cur) == self.batch_size
                        or width * (len(cur) + 1) > (1 + self.pad_budget) * (real + lengths[i])):
                chunks.append(cur)
                cur, real = [], 0
            cur.append(i)
            real += lengths[i]
        if cur:
            chunks.append(cur)
        return chunks

    def _left_pad(self, prompts: list[list[int]]) -> tuple[Tensor, Tensor]:
        """(B, width) ids and attention mask of left-padded prompts, on the model's device."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p) :] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def _generate_batch(self, prompts: list[list[int]], sets: list[ActionSet | None],
                        pasts: list[_Past | None], keep: bool,
                        ) -> tuple[list[list[int]], list[bool], list[_Past | None]]:
        """Token-by-token generation; a row with an action set walks its trie (constrained).

        A row with a past feeds only the rest of its prompt after the stored cache; with
        ``keep`` each row's cache is returned as its new past (None where the cache's layers
        cannot be stored)."""
        device = self.model.device
        B = len(prompts)
        rests = [p[len(q.ids):] if q is not None else p for p, q in zip(prompts, pasts, strict=True)]
        seq_ids, seq_mask = self._left_pad(rests)  # (n, t): the rows still generating
        room = self.settings.max_new_tokens
        if any(q is not None for q in pasts):
            cache, past_mask = _stack_pasts(pasts, self.model, seq_ids.shape[1] + room)
            seq_mask = torch.cat([past_mask.to(device), seq_mask], 1)
        else:
            cache = _roomy_cache(self.model, room) if self.use_cache else None
        node = [0] * B  # each constrained row's trie node: the prefix generated so far
        new_ids = seq_ids  # what the next forward pass reads: the prompt, then one token
        rows = torch.arange(B)  # original index of each row still generating
        out_ids: list[list[int]] = [[] for _ in range(B)]
        finished = [False] * B
        kept: list[_Past | None] = [None] * B
        want_h = self.logits_adjust is not None

        def store(ks: list[int]) -> None:  # rows ks (positions in the batch) keep their cache
            if not ks:
                return
            bs = [int(rows[k]) for k in ks]
            for b, past in zip(bs, _row_pasts(cache, ks, seq_mask, [prompts[b] + out_ids[b][:-1]
                                                                    for b in bs]), strict=True):
                kept[b] = past

        for _ in range(self.settings.max_new_tokens):
            position = (seq_mask.cumsum(1) - 1).clamp(min=0)
            if self.use_cache:
                out = self.model(new_ids, attention_mask=seq_mask, cache=cache, use_cache=True,
                                 position_ids=position[:, -new_ids.shape[1] :],
                                 logits_to_keep=1, output_hidden_states=want_h)
                cache = out.cache
            else:
                out = self.model(seq_ids, attention_mask=seq_mask, position_ids=position,
                                 use_cache=False, logits_to_keep=1, output_hidden_states=want_h)
            logits = out.logits[:, -1, : self.n_vocab].float()  # (n, V)
            if want_h:
                logits = self.logits_adjust(out.hidden_states[-1][:, -1], logits).float()
            allowed = None
            if any(sets[b] is not None for b in rows.tolist()):
                allowed = torch.ones(logits.shape, dtype=torch.bool)
                for k, b in enumerate(rows.tolist()):
                    if sets[b] is not None:
                        allowed[k] = False
                        allowed[k, sets[b].allowed[node[b]]] = True
            nxt = self._sample(logits.cpu(), allowed)  # (n,)
            stop = self._stops[nxt]  # (n,) bool
            for k, b in enumerate(rows.tolist()):
                out_ids[b].append(int(nxt[k]))
                finished[b] = bool(stop[k])
                if sets[b] is not None:
                    node[b] = sets[b].children[node[b]][int(nxt[k])]
            if keep:
                store(stop.nonzero().squeeze(1).tolist())
            if bool(stop.all()):
                break
            keep_rows = (~stop).nonzero().squeeze(1)
            if len(keep_rows) < len(rows):  # drop finished rows, their cache entries included
                rows, nxt = rows[keep_rows], nxt[keep_rows]
                seq_ids, seq_mask = seq_ids[keep_rows.to(device)], seq_mask[keep_rows.to(device)]
                if cache is not None:
                    cache.batch_select_indices(keep_rows.to(device))
            new_ids = nxt[:, None].to(device)
            seq_ids = torch.cat([seq_ids, new_ids], 1)
            seq_mask = torch.cat([seq_mask, torch.ones_like(new_ids)], 1)
        else:
            if keep:  # the rows cut at max_new_tokens: their last token was never fed
                seq_mask = seq_mask[:, :-1]
                store(list(range(len(rows))))
        truncated = [not f for f in finished]
        for b in range(B):
            if truncated[b]:
                out_ids[b].append(self.newline_id)
        return out_ids, truncated, kept

    def _sample(self, logits: Tensor, allowed: Tensor | None = None) -> Tensor:
        """(N, V) float logits on CPU -> (N,) ids, with the policy's generator; ``allowed``
        (N, V) bool masks the tokens that may not be drawn (constrained decoding)."""
        if len(self._banned):
            logits = logits.index_fill(1, self._banned, float("-inf"))
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        d = self.settings
        if d.greedy:
            return logits.argmax(-1)
        logits = logits / d.temperature
        if d.top_k is not None and d.top_k < logits.shape[1]:
            kth = logits.topk(d.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if d.top_p is not None and d.top_p < 1.0:
            sorted_logits, order = logits.sort(-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = cum - sorted_logits.softmax(-1) >= d.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    def _rerank_batch(self, prompts: list[list[int]], sets: list[ActionSet],
                      ) -> tuple[list[int], list[list[float]]]:
        """The chosen candidate of each prompt, and every candidate's score.

        The prompts are prefilled once; their (prompt, candidate) rows are then scored
        ``candidate_batch`` at a time on a copy of the prompts' cache indexed by row, each
        candidate's tokens fed right-padded after its prompt."""
        self._check_scores(self.settings)  # settings may be replaced between calls (serve)
        device = self.model.device
        want_h = self.logits_adjust is not None or self.value_readout is not None
        ids, mask = self._left_pad(prompts)
        out = self.model(ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                         use_cache=True, logits_to_keep=1, output_hidden_states=want_h)
        cache = out.cache
        first_logits = out.logits[:, -1:, : self.n_vocab].float()  # (B, 1, V): each first token
        first_h = out.hidden_states[-1][:, -1:] if want_h else None  # (B, 1, d)
        scores = [torch.zeros(len(a.ids), dtype=torch.float64) for a in sets]
        for chunk in _candidate_chunks([len(a.ids) for a in sets], self.candidate_batch):
            L = max(int(sets[b].lengths[c0:c1].max()) for b, c0, c1 in chunk)
            targets = torch.cat([_pad_to(sets[b].padded[c0:c1, :L], L) for b, c0, c1 in chunk])
            lengths = torch.cat([sets[b].lengths[c0:c1] for b, c0, c1 in chunk])
            real = torch.arange(L)[None, :] < lengths[:, None]  # (n, L): right padding
            rows = torch.cat([torch.full((c1 - c0,), b) for b, c0, c1 in chunk]).to(device)
            targets, real, n = targets.to(device), real.to(device), len(lengths)
            logits, h = first_logits[rows], first_h[rows] if want_h else None
            if L > 1:  # the logits after each candidate token but the last
                rows_cache = _select_rows(cache, rows)
                step_mask = torch.cat([mask[rows], real[:, :-1].long()], 1)
                position = (step_mask.cumsum(1) - 1).clamp(min=0)[:, -(L - 1) :]
                step = self.model(targets[:, :-1], attention_mask=step_mask, cache=rows_cache,
                                  position_ids=position, use_cache=True,
                                  output_hidden_states=want_h)
                logits = torch.cat([logits, step.logits[..., : self.n_vocab].float()], 1)
                if want_h:
                    h = torch.cat([h, step.hidden_states[-1]], 1)
            if self.settings.rerank_score == "turn":  # β·Q of the last token (V(s) is shared)
                last = (lengths - 1).to(device)
                q, _ = self.value_readout(h[torch.arange(n, device=device), last])  # (n, V)
                per_row = self.beta * q.gather(1, targets.gather(1, last[:, None])).squeeze(1).double()
            else:
                ref = logits[real]  # (K, V): the real (prompt, candidate, token) positions
                adjusted = self.logits_adjust(h[real], ref).float() if self.logits_adjust else ref
                per_token = token_scores(ref, adjusted, targets[real], self.settings.rerank_score,
                                         self._banned.to(device))
                per_row = torch.zeros(n, dtype=torch.float64, device=device).index_add_(
                    0, real.nonzero()[:, 0], per_token.double())
            for (b, c0, c1), part in zip(chunk, per_row.cpu().split([c1 - c0 for _, c0, c1 in chunk]),
                                         strict=True):
                scores[b][c0:c1] = part
        d = self.settings
        picks = [choose(s, d.greedy, d.temperature, self.generator) for s in scores]
        return picks, [s.tolist() for s in scores]

    def _stop_table(self) -> Tensor:
        """(V,) bool: the tokens whose decoded text contains a newline."""
        pieces = self.tokenizer.batch_decode([[i] for i in range(self.n_vocab)],
                                             skip_special_tokens=False)
        return torch.tensor(["\n" in p for p in pieces], dtype=torch.bool)


def _common_prefix(a: Sequence[int], b: Sequence[int], n: int) -> int:
    """The length of the common prefix of ``a[:n]`` and ``b[:n]`` (one list comparison when
    one holds the other's head, as a growing history does)."""
    if list(a[:n]) == list(b[:n]):
        return n
    return next(k for k in range(n) if a[k] != b[k])


def _candidate_chunks(sizes: list[int], limit: int) -> list[list[tuple[int, int, int]]]:
    """The (prompt, candidate) rows of prompts with ``sizes`` candidates each, in order, cut
    into chunks of at most ``limit`` rows; a chunk is a list of ``(prompt, first, end)``."""
    chunks: list[list[tuple[int, int, int]]] = [[]]
    room = limit
    for b, size in enumerate(sizes):
        start = 0
        while start < size:
            if room == 0:
                chunks.append([])
                room = limit
            end = min(size, start + room)
            chunks[-1].append((b, start, end))
            room -= end - start
            start = end
    return chunks


def _select_rows(cache: Any, rows: Tensor) -> Any:
    """A copy of a KV cache holding its batch entries ``rows`` (repeats allowed), the original
    left intact. Per-layer ``index_select`` is several times faster on CPU than the advanced
    indexing of ``Cache.batch_select_indices``. A separate-layout model's two caches
    (:class:`~lmrlgym.models.dual.DualCache`) are selected together."""
    if isinstance(cache, DualCache):
        return DualCache(_select_rows(cache.policy, rows), _select_rows(cache.value, rows))
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in out.layers:
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
    return out


def _pad_to(ids: Tensor, width: int) -> Tensor:
    """(n, w) ids right-padded with 0 to (n, width)."""
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]))


def _cache_layers(cache: Any) -> list[Any]:
    """A cache's layers; a separate-layout model's policy layers, then its value layers."""
    if isinstance(cache, DualCache):
        return _cache_layers(cache.policy) + _cache_layers(cache.value)
    return list(cache.layers)


def _row_pasts(cache: Any, ks: list[int], mask: Tensor, ids: list[list[int]]) -> list[_Past | None]:
    """Rows ``ks`` of a batch cache, each row's real positions (``mask`` (n, W)), as the pasts
    of ``ids``; Nones for a cache not made of :class:`_RoomyLayer` (e.g. a sliding window's,
    which would not hold every position).

    Nothing is copied when every row of the batch is kept (the usual last step of a turn);
    otherwise the kept rows' buffers are selected, so a past holds only its own batch rows."""
    layers = _cache_layers(cache)
    if any(type(layer) is not _RoomyLayer for layer in layers):
        return [None] * len(ks)
    bufs = [layer._bufs for layer in layers]
    rows = ks
    if len(ks) < mask.shape[0]:
        index = torch.tensor(ks, device=mask.device)
        bufs = [(k.index_select(0, index), v.index_select(0, index)) for k, v in bufs]
        rows = list(range(len(ks)))
    real = mask[ks].bool().cpu()  # (m, W), on the CPU, where the next turn builds its index
    pasts: list[_Past | None] = []
    for m, row in enumerate(rows):
        cols = real[m].nonzero().squeeze(1)
        assert len(cols) == len(ids[m]), "a kept cache must hold exactly its ids"
        pasts.append(_Past(ids[m], bufs, row, cols))
    return pasts


def _stack_pasts(pasts: list[_Past | None], model: Any, room: int) -> tuple[Any, Tensor]:
    """A batch cache of the rows' pasts, left-aligned to the longest (a row without one is all
    padding), with ``room`` more positions for what is fed next, and its (B, C) attention mask.

    Each tensor is one ``index_select`` of its source buffers (their concatenation when the
    pasts come from several): the padding positions read arbitrary finite values, which the
    mask keeps out of attention (their weight is exactly 0)."""
    width = max(len(q.ids) for q in pasts if q is not None)
    pad = [width - len(q.ids) if q is not None else width for q in pasts]  # left padding per row
    mask = (torch.arange(width)[None, :] >= torch.tensor(pad)[:, None]).long()
    srcs: list[list[tuple[Tensor, Tensor]]] = []  # the distinct source buffers, in order
    offset: dict[int, int] = {}  # id(bufs) -> where its positions start in their concatenation
    for q in pasts:
        if q is not None and id(q.bufs) not in offset:
            offset[id(q.bufs)] = sum(b[0][0].shape[0] * b[0][0].shape[1] for b in srcs)
            srcs.append(q.bufs)
    cap = width + room
    pieces = []  # each row's source positions: padding, its past, room (any valid position)
    for q, n in zip(pasts, pad, strict=True):
        if q is None:
            pieces.append(torch.zeros(cap, dtype=torch.long))
            continue
        cols = q.cols + offset[id(q.bufs)] + q.row * q.bufs[0][0].shape[1]
        pieces += [cols[:1].expand(n), cols, cols[:1].expand(room)]
    index = torch.cat(pieces).to(srcs[0][0][0].device)
    kv = []
    for j in range(len(srcs[0])):
        pair = []
        for t in (0, 1):
            flat = [bufs[j][t].flatten(0, 1) for bufs in srcs]  # (B_s * W_s, H, D)
            src = flat[0] if len(flat) == 1 else torch.cat(flat)
            pair.append(src.index_select(0, index).view(len(pasts), cap, *src.shape[1:]))
        kv.append((pair[0], pair[1]))
    return _roomy_cache(model, room, kv, width), mask


class _RoomyLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are the head of position-major buffers
    (B, capacity, H, D) with spare positions, so a decoding step writes its token in place,
    where ``DynamicLayer.update`` copies the whole cache into a new tensor at every step. A full
    buffer is regrown with ``room`` more positions.
    Position-major, a batch's next cache is gathered from kept rows with one ``index_select``
    per tensor (:func:`_stack_pasts`); attention reads the (B, H, T, D) view."""

    def __init__(self, room: int, bufs: tuple[Tensor, Tensor] | None = None, length: int = 0):
        super().__init__()
        self.room = room
        self._bufs: tuple[Tensor, Tensor] | None = None
        if bufs is not None:
            self.lazy_initialization(*bufs)
            self._view(bufs, length)

    def _view(self, bufs: tuple[Tensor, Tensor], length: int) -> None:
        self._bufs = bufs
        self.keys, self.values = (b[:, :length].transpose(1, 2) for b in bufs)

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any,
               ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.get_seq_length(), key_states.shape[-2]
        if self._bufs is None or n + m > self._bufs[0].shape[1]:
            new = [s.new_empty((s.shape[0], n + m + self.room, s.shape[1], s.shape[3]))
                   for s in (key_states, value_states)]
            if n:
                for buf, old in zip(new, (self.keys, self.values), strict=True):
                    buf[:, :n] = old.transpose(1, 2)
            self._bufs = (new[0], new[1])
        for buf, states in zip(self._bufs, (key_states, value_states), strict=True):
            buf[:, n : n + m] = states.transpose(1, 2)
        self._view(self._bufs, n + m)
        return self.keys, self.values

    def batch_select_indices(self, indices: Tensor) -> None:
        k, v = self._bufs
        self._view((k.index_select(0, indices), v.index_select(0, indices)), self.get_seq_length())


def _roomy_cache(model: Any, room: int, kv: list[tuple[Tensor, Tensor]] | None = None,
                 length: int = 0) -> Any:
    """An empty KV cache for ``model`` made of :class:`_RoomyLayer` (a separate-layout model's
    :class:`DualCache` of two), or one over the buffers ``kv`` (per layer, keys and values
    (B, capacity, H, D) holding ``length`` positions; a separate-layout model's policy layers,
    then its value layers)."""
    from lmrlgym.models.dual import DualLM

    if isinstance(model, DualLM):
        n = model.policy.config.get_text_config(decoder=True).num_hidden_layers
        return DualCache(_roomy_cache(model.policy, room, kv and kv[:n], length),
                         _roomy_cache(model.value, room, kv and kv[n:], length))
    cache = DynamicCache()
    if kv is None:
        cache.layer_class_to_replicate = functools.partial(_RoomyLayer, room)
    else:
        cache.layers = [_RoomyLayer(room, pair, length) for pair in kv]
    return cache
