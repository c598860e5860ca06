"""``render()``: the one text-to-tensor routine (docs/algorithms.md §1.3-1.5, §1.7).

Every consumer of episodes (BC, filtered BC, MC, ILQL, PPO, evaluation prompts) goes through
the same per-turn tokenization, so the ids a model trains on equal the ids it reads and
generates at rollout time:

1. each turn is tokenized alone (``add_special_tokens=False``) and the pieces concatenated, so
   no BPE merge crosses a turn boundary; an empty action turn is an error naming the record;
2. one BOS starts every row, in training and at inference;
3. rows follow the env's window (``context_turns``): while the env only appends and the prompt
   fits the budget ``P``, later turns extend the same row (append-only form); otherwise a new
   row starts from the last ``P - 1`` context tokens (chain form for replacing envs such as
   Maze-FO), and the closed row links to it through ``next_ids``.

Every action turn appears in exactly one row, so no reward is ever cut, and each action is
trained on exactly the prompt (at most ``P`` tokens, BOS included) that the policy sees when it
generates that action.

``collate`` pads segments on the right into a :class:`Batch` of tensors and, with
``pack=True``, also packs them end to end into fewer rows for the trunk (:class:`Packing`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos.rl import returns_to_go, step_discount
from lmrlgym.core import Episode, Turn

ContextFn = Callable[[Sequence[Turn]], list[Turn]]
DiscountMode = Literal["turn", "token"]


class RenderError(ValueError):
    """An episode that cannot be rendered (e.g. an empty action turn); names the record."""


@dataclasses.dataclass
class Segment:
    """One training row (docs/algorithms.md §1.3). ``L`` = row length, ``L'`` = ``len(next_ids)``."""

    input_ids: Tensor  # (L,) long: BOS + context + action and env tokens
    action_mask: Tensor  # (L,) bool: True on agent tokens
    rewards: Tensor  # (L,) float: each action turn's reward on its last token, 0 elsewhere
    turn_end: Tensor  # (L,) bool: True on the last token of each action turn
    returns: Tensor  # (L,) float: return-to-go of each action token over the whole episode
    next_ids: Tensor  # (L',) long, may be empty: BOS + the context after the row's last action
    terminal: bool  # the episode terminated right after this row's last action
    episode_id: int = 0  # grouping for GAE and logging
    first_turn: int = 0  # index (among the episode's action turns) of the row's first action

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _default_context(turns: Sequence[Turn]) -> list[Turn]:
    return list(turns)


class TokenCache:
    """Per-turn token ids by text. Exact because each turn is tokenized alone; shared across
    episodes it makes rendering a dataset with repeated texts (Maze cells) cheap."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __call__(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            self._ids[text] = ids
        return ids

    def prefill(self, texts: Sequence[str]) -> None:
        """Tokenize many new texts in one batched call (the fast tokenizer is parallel)."""
        new = list(dict.fromkeys(t for t in texts if t not in self._ids))
        if new:
            for text, ids in zip(new, self.tokenizer(new, add_special_tokens=False)["input_ids"],
                                 strict=True):
                self._ids[text] = list(ids)


def episode_returns(
    action_lengths: Sequence[int], rewards: Sequence[float], gamma: float,
    discount_mode: DiscountMode,
) -> list[list[float]]:
    """Return-to-go of every action token, per action turn: ``G_i = r_i + d_i G_next(i)``,
    0 after the last action (pure Monte Carlo: no bootstrap, docs/algorithms.md §3.3), with the
    discounting of the losses (``algos.rl.step_discount``, §1.7) in double precision."""
    end = torch.tensor([k == n - 1 for n in action_lengths for k in range(n)], dtype=torch.bool)
    d = step_discount(end, gamma, discount_mode, dtype=torch.float64).tolist()
    r: list[float] = []
    for n, rew in zip(action_lengths, rewards, strict=True):
        r.extend([0.0] * (n - 1) + [float(rew)])
    g = returns_to_go(r, d)
    out, start = [], 0
    for n in action_lengths:
        out.append(g[start : start + n])
        start += n
    return out


def _tensor(values: list, dtype: type) -> Tensor:
    # Via NumPy: about 3x faster than torch.tensor(list), which dominates rendering a dataset.
    return torch.from_numpy(np.array(values, dtype=dtype))


class _Row:
    """A row under construction: parallel python lists, turned into tensors once closed."""

    def __init__(self, prompt: list[int], first_turn: int):
        self.ids = list(prompt)
        self.act = [False] * len(prompt)
        self.rew = [0.0] * len(prompt)
        self.end = [False] * len(prompt)
        self.ret = [0.0] * len(prompt)
        self.first_turn = first_turn

    def add_env(self, ids: list[int]) -> None:
        n = len(ids)
        self.ids += ids
        self.act += [False] * n
        self.rew += [0.0] * n
        self.end += [False] * n
        self.ret += [0.0] * n

    def add_action(self, ids: list[int], reward: float, returns: list[float]) -> None:
        n = len(ids)
        self.ids += ids
        self.act += [True] * n
        self.rew += [0.0] * (n - 1) + [float(reward)]
        self.end += [False] * (n - 1) + [True]
        self.ret += returns

    def close(self, next_ids: list[int], terminal: bool, episode_id: int) -> Segment:
        return Segment(
            input_ids=_tensor(self.ids, np.int64),
            action_mask=_tensor(self.act, np.bool_),
            rewards=_tensor(self.rew, np.float32),
            turn_end=_tensor(self.end, np.bool_),
            returns=_tensor(self.ret, np.float32),
            next_ids=_tensor(next_ids, np.int64),
            terminal=terminal,
            episode_id=episode_id,
            first_turn=self.first_turn,
        )


def prompt_ids(
    context: Sequence[Turn], tokens: Callable[[str], list[int]], bos_id: int,
    max_context_tokens: int,
) -> list[int]:
    """``BOS + last (P - 1) tokens`` of a context, tokenized per turn: the inference prompt."""
    ids = [i for t in context for i in tokens(t.text)]
    return [bos_id] + ids[max(0, len(ids) - (max_context_tokens - 1)) :]


def appended_turns(context: list[Turn], previous: list[Turn], action: Turn) -> list[Turn] | None:
    """The new env turns when ``context == previous + [action] + new`` (the env only
    appended), else None. Compared as (text, is_action), so rewards do not matter."""
    head = [*previous, action]
    if len(context) < len(head):
        return None
    if any((a.text, a.is_action) != (b.text, b.is_action) for a, b in zip(context, head, strict=False)):
        return None
    new = context[len(head) :]
    if any(t.is_action for t in new):
        return None
    return new


def render(
    episode: Episode | Sequence[Turn],
    tokenizer: PreTrainedTokenizerBase,
    context_turns: ContextFn | None = None,
    max_context_tokens: int = 1024,
    gamma: float = 0.99,
    discount_mode: DiscountMode = "turn",
    *,
    terminated: bool | None = None,
    truncation_is_terminal: bool = False,
    episode_id: int = 0,
    record: str | None = None,
    action_ids: Sequence[Sequence[int]] | None = None,
    token_cache: TokenCache | None = None,
) -> list[Segment]:
    """Tokenize one episode into training rows (docs/algorithms.md §1.3-1.4).

    ``episode`` is an :class:`Episode` or a list of turns (then pass ``terminated``).
    ``context_turns`` is the env's window (default: the whole transcript, append-only);
    ``max_context_tokens`` is the prompt budget ``P`` including BOS. ``returns`` use
    ``gamma`` with ``discount_mode`` ("turn": γ once per action turn, the default; "token": γ per
    action token, the original's). ``truncation_is_terminal=True`` treats a truncated episode
    as terminated (the original's behaviour, §1.8). ``action_ids`` replaces the tokenization
    of each action turn by the ids actually sampled (online methods). ``record`` names the
    episode in errors (e.g. ``"shard-00000.jsonl:17"``).
    """
    if isinstance(episode, Episode):
        turns = list(episode.turns)
        if terminated is None:
            terminated = episode.terminated
        truncation_is_terminal = truncation_is_terminal and episode.truncated
        if record is None:
            record = f"episode (task {episode.task!r}, seed {episode.seed})"
    else:
        turns = [t if isinstance(t, Turn) else Turn(*t) for t in episode]
        if terminated is None:
            raise TypeError("render(turns, ...) needs terminated=True/False (an Episode has it)")
    record = record or f"episode {episode_id}"
    terminal_at_end = bool(terminated) or truncation_is_terminal
    if max_context_tokens < 2:
        raise ValueError(f"max_context_tokens must be at least 2 (BOS + 1), got {max_context_tokens}")
    context_fn = context_turns or _default_context
    tokens = token_cache if token_cache is not None else TokenCache(tokenizer)
    if isinstance(tokens, TokenCache):
        tokens.prefill([t.text for t in turns])
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("tokenizer has no bos_token; render() starts every row with BOS")

    action_at = [k for k, t in enumerate(turns) if t.is_action]
    if action_ids is not None and len(action_ids) != len(action_at):
        raise RenderError(f"{record}: {len(action_ids)} action_ids for {len(action_at)} action turns")
    a_ids: list[list[int]] = []
    for j, k in enumerate(action_at):
        ids = list(action_ids[j]) if action_ids is not None else tokens(turns[k].text)
        if not ids:
            raise RenderError(f"{record}: action turn {k} (action {j}) is empty: {turns[k].text!r}")
        a_ids.append(ids)
    if not action_at:
        return []
    returns = episode_returns([len(x) for x in a_ids], [turns[k].reward for k in action_at],
                              gamma, discount_mode)

    segments: list[Segment] = []
    row: _Row | None = None
    prev_ctx: list[Turn] = []
    for j, k in enumerate(action_at):
        ctx = context_fn(turns[:k])
        new = appended_turns(ctx, prev_ctx, turns[action_at[j - 1]]) if row is not None else None
        e = [i for t in new for i in tokens(t.text)] if new is not None else None
        if row is not None and e is not None and len(row.ids) + len(e) <= max_context_tokens:
            row.add_env(e)
        else:
            prompt = prompt_ids(ctx, tokens, bos, max_context_tokens)
            if row is not None:
                segments.append(row.close(prompt, False, episode_id))
            row = _Row(prompt, j)
        row.add_action(a_ids[j], turns[k].reward, returns[j])
        prev_ctx = ctx

    assert row is not None
    if terminal_at_end:
        segments.append(row.close([], True, episode_id))
        return segments
    # Not terminal: the final observation is the bootstrap state (docs/algorithms.md §1.4 rule 4).
    ctx = context_fn(turns)
    new = appended_turns(ctx, prev_ctx, turns[action_at[-1]])
    e = [i for t in new for i in tokens(t.text)] if new is not None else None
    if e is not None and len(row.ids) + len(e) <= max_context_tokens:
        row.add_env(e)
        segments.append(row.close([], False, episode_id))
    else:
        segments.append(row.close(prompt_ids(ctx, tokens, bos, max_context_tokens), False, episode_id))
    return segments


@dataclasses.dataclass
class Packing:
    """A batch's rows laid end to end in ``R <= B`` rows of the batch's width ``T`` (first-fit
    decreasing), so the trunk's forward pass spends little on padding. Position ids restart at
    0 in each original row: a model whose attention honours packed position ids
    (Transformers' mask utilities, with no 2D attention mask and no cache) keeps every token's
    attention inside its own row, so the hidden states equal the padded batch's."""

    input_ids: Tensor  # (R, T) long, the rest of each packed row padded with pad_id
    position_ids: Tensor  # (R, T) long: 0, 1, ... within each original row and within the padding
    index: Tensor  # (B, T) long: flat (R·T) position of each batch token, R·T on padding

    def to(self, device: torch.device | str) -> Packing:
        return Packing(self.input_ids.to(device), self.position_ids.to(device), self.index.to(device))

    def unpack(self, h: Tensor) -> Tensor:
        """(R, T, d) hidden states of the packed rows -> (B, T, d) in the batch's padded layout,
        zeros on padding."""
        flat = h.flatten(0, 1)  # (R·T, d)
        return torch.cat([flat, flat.new_zeros(1, flat.shape[1])])[self.index]  # (B, T, d)


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: row indices grouped into bins of at most ``capacity`` tokens
    (longest rows first, ties by index, so the packing is a pure function of the lengths)."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > capacity:
            raise ValueError(f"row {i} has {lengths[i]} tokens, more than the capacity {capacity}")
        k = next((k for k, f in enumerate(free) if f >= lengths[i]), len(bins))
        if k == len(bins):
            bins.append([])
            free.append(capacity)
        bins[k].append(i)
        free[k] -= lengths[i]
    return bins


def pack_rows(segments: Sequence[Segment], pad_id: int) -> Packing:
    """:class:`Packing` of ``segments`` (see :func:`pack_bins`) at the batch's width."""
    lengths = [len(s) for s in segments]
    T = max(lengths)
    bins = pack_bins(lengths, T)
    # The padding is never read (it attends only to itself and unpack drops it); pad ids at a
    # row's end would only make Transformers warn that no attention mask was passed.
    ids = torch.full((len(bins), T), pad_id, dtype=torch.long)
    pos = torch.zeros((len(bins), T), dtype=torch.long)
    index = torch.full((len(segments), T), len(bins) * T, dtype=torch.long)
    for r, rows in enumerate(bins):
        start = 0
        for b in rows:
            n = lengths[b]
            ids[r, start : start + n] = segments[b].input_ids
            pos[r, start : start + n] = torch.arange(n)
            index[b, :n] = r * T + start + torch.arange(n)
            start += n
        pos[r, start:] = torch.arange(T - start)
        ids[r, start:] = ids[r, 0]
    return Packing(ids, pos, index)


@dataclasses.dataclass
class Batch:
    """Right-padded segments. ``B`` rows, ``T`` = longest row, ``T'`` = longest ``next_ids``
    (0 when no row has one)."""

    input_ids: Tensor  # (B, T) long, padded with pad_id
    attention_mask: Tensor  # (B, T) long, 1 on real tokens
    action_mask: Tensor  # (B, T) bool
    rewards: Tensor  # (B, T) float32
    turn_end: Tensor  # (B, T) bool
    returns: Tensor  # (B, T) float32
    next_ids: Tensor  # (B, T') long, BOS + next context, padded with pad_id
    next_attention_mask: Tensor  # (B, T') long
    has_next: Tensor  # (B,) bool: the row has next_ids (else bootstrap at its last real token)
    terminal: Tensor  # (B,) bool
    last_index: Tensor  # (B,) long: index of each row's last real token
    episode_id: Tensor  # (B,) long
    first_turn: Tensor  # (B,) long
    packing: Packing | None = None  # the same rows packed for the trunk (collate(pack=True))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: None if (v := getattr(self, f.name)) is None else v.to(device)
                        for f in dataclasses.fields(self)})

    @property
    def n_action_tokens(self) -> int:
        return int((self.action_mask & self.attention_mask.bool()).sum())

    @property
    def pad_fraction(self) -> float:
        """Share of the trunk's input positions that are padding (of the packed rows if any)."""
        ids = self.input_ids if self.packing is None else self.packing.input_ids
        return 1.0 - float(self.attention_mask.sum()) / max(ids.numel(), 1)


def _pad(seqs: Sequence[Tensor], value: float | int | bool, dtype: torch.dtype) -> Tensor:
    # pad_sequence copies in C++: half the time of a Python loop of row assignments.
    return pad_sequence(list(seqs), batch_first=True, padding_value=value).to(dtype)


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token-id lists right-padded with ``pad_id``: ``(ids, attention_mask)``, each (B, T) long,
    T the longest list."""
    ids = _pad([torch.tensor(s, dtype=torch.long) for s in seqs], pad_id, torch.long)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return ids, (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()


def collate(segments: Sequence[Segment], pad_id: int, pack: bool = False) -> Batch:
    """Pad segments on the right into one :class:`Batch`; ``pack`` also packs them for the
    trunk (``Batch.packing``)."""
    if not segments:
        raise ValueError("collate() needs at least one segment")
    lengths = torch.tensor([len(s) for s in segments], dtype=torch.long)
    next_lengths = torch.tensor([len(s.next_ids) for s in segments], dtype=torch.long)
    T = int(lengths.max())
    Tn = int(next_lengths.max())
    return Batch(
        input_ids=_pad([s.input_ids for s in segments], pad_id, torch.long),
        attention_mask=(torch.arange(T)[None, :] < lengths[:, None]).long(),
        action_mask=_pad([s.action_mask for s in segments], False, torch.bool),
        rewards=_pad([s.rewards for s in segments], 0.0, torch.float32),
        turn_end=_pad([s.turn_end for s in segments], False, torch.bool),
        returns=_pad([s.returns for s in segments], 0.0, torch.float32),
        next_ids=_pad([s.next_ids for s in segments], pad_id, torch.long),
        next_attention_mask=(torch.arange(Tn)[None, :] < next_lengths[:, None]).long(),
        has_next=next_lengths > 0,
        terminal=torch.tensor([s.terminal for s in segments], dtype=torch.bool),
        last_index=lengths - 1,
        episode_id=torch.tensor([s.episode_id for s in segments], dtype=torch.long),
        first_turn=torch.tensor([s.first_turn for s in segments], dtype=torch.long),
        packing=pack_rows(segments, pad_id) if pack else None,
    )
