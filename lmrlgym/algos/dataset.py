"""An offline method's data: episodes -> seeded split by episode -> (selection) -> tokenizer ->
rendered rows (docs/algorithms.md §1.3) -> the seeded minibatch schedule (§2.4)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos import distributed
from lmrlgym.algos.config import TrainConfig
from lmrlgym.algos.progress import Progress, report
from lmrlgym.algos.rl import EmptyActionBatch
from lmrlgym.algos.rundir import TOKENIZER_DIR
from lmrlgym.core import Episode
from lmrlgym.data.io import read_episodes, temp_beside
from lmrlgym.models.render import ContextFn, Segment, TokenCache, render

if TYPE_CHECKING:
    from lmrlgym.data.cache import DataCache

# Filtered BC's episode selection: training episodes -> (kept episodes, their data/* metrics).
Select = Callable[[list[Episode]], tuple[list[Episode], dict[str, float]]]


@dataclasses.dataclass
class Data:
    """A rendered dataset: the tokenizer and the training and validation rows."""

    tokenizer: PreTrainedTokenizerBase
    train_rows: list[Segment]
    val_rows: list[Segment]
    metrics: dict[str, float]  # logged once at step 0 (split sizes, filtering)

    @property
    def n_vocab(self) -> int:
        return len(self.tokenizer)


def split_episodes(episodes: list[Episode], val_fraction: float,
                   seed: int) -> tuple[list[Episode], list[Episode]]:
    """Seeded split by episode (never by row, so no episode leaks across the split)."""
    order = list(range(len(episodes)))
    random.Random(seed).shuffle(order)
    n_val = math.floor(val_fraction * len(episodes))
    if val_fraction > 0 and n_val == 0 and len(episodes) > 1:
        n_val = 1
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [episodes[i] for i in train], [episodes[i] for i in val]


def context_fn(task: str, env_kwargs: dict[str, Any] | None = None) -> ContextFn:
    """The env's ``context_turns`` (its window). Built from an instance, because one class can
    serve several ids with different windows (Maze FO: latest observation; PO: 40 turns)."""
    from lmrlgym.registry import make

    env = make(task, **dict(env_kwargs or {}))
    try:
        return env.context_turns
    finally:
        env.close()


def read_dataset(config: TrainConfig) -> tuple[list[Episode], int]:
    """``config.data``'s episodes (all of ``config.task``) and how many malformed lines
    ``--skip-bad`` skipped; a clear error for an unreadable, empty or other-task dataset."""
    episodes, skipped = read_episodes(config.data, skip_bad=config.skip_bad,
                                      allow_partial=config.allow_partial)
    if not episodes:
        raise ValueError(f"{config.data}: the dataset has no episodes")
    other = sorted({e.task for e in episodes} - {config.task})
    if other:
        raise ValueError(f"{config.data}: episodes of {', '.join(other)}, but --task is {config.task}")
    return episodes, skipped


def prepare_data(
    config: TrainConfig, run_dir: Path, gamma: float = 1.0, discount_mode: str = "turn",
    truncation_is_terminal: bool = False, select: Select | None = None,
    dataset: tuple[list[Episode], int] | None = None, progress: Progress | None = None,
) -> Data:
    """Episodes (``dataset``, else :func:`read_dataset`) -> seeded split by episode ->
    (optional ``select`` on the training split) -> tokenizer (trained on the training text, or
    the run's/``init_from``'s) -> rendered rows.

    A trained tokenizer and the rows come from the dataset's cache (``lmrlgym.data.cache``)
    when it holds them for these settings, else are built and stored there. ``select`` is
    cached only when it is a dataclass (its repr is the key), since a closure's identity says
    nothing about what it keeps."""
    from lmrlgym.data.cache import DataCache, tokenizer_fingerprint

    episodes, skipped = dataset or read_dataset(config)
    train_eps, val_eps = split_episodes(episodes, config.val_fraction, config.seed)
    metrics: dict[str, float] = {"data/episodes": len(episodes), "data/skipped_lines": skipped,
                                 "data/train_episodes": len(train_eps), "data/val_episodes": len(val_eps)}
    if select is not None:
        train_eps, select_metrics = select(train_eps)
        metrics.update(select_metrics)
    cache = None
    if select is None or dataclasses.is_dataclass(select):
        cache = DataCache.open(config.data, allow_partial=config.allow_partial, task=config.task,
                               seed=config.seed, val_fraction=config.val_fraction,
                               skip_bad=config.skip_bad,
                               select=repr(select) if select is not None else None)
    report(progress, "tokenizer")
    tokenizer = load_or_train_tokenizer(config, run_dir, train_eps, cache)
    render_key = dict(tokenizer=tokenizer_fingerprint(tokenizer),
                      max_context_tokens=config.max_context_tokens, gamma=gamma,
                      discount_mode=discount_mode, truncation_is_terminal=truncation_is_terminal)
    if render_key["tokenizer"] is None:
        cache = None
    cached = cache.load_rows(len(tokenizer), **render_key) if cache is not None else None
    if cached is not None:
        train_rows, val_rows = cached
    else:
        window = context_fn(config.task)
        tokens = TokenCache(tokenizer)
        n_render, rendered = len(train_eps) + len(val_eps), 0

        def rows(eps: list[Episode]) -> list[Segment]:
            nonlocal rendered
            out = []
            for k, ep in enumerate(eps):
                report(progress, "render", rendered, n_render)
                rendered += 1
                segs = render(ep, tokenizer, window, config.max_context_tokens, gamma,
                              discount_mode, truncation_is_terminal=truncation_is_terminal,
                              episode_id=k, token_cache=tokens)
                out.extend(s for s in segs if bool(s.action_mask.any()))
            return out

        train_rows, val_rows = rows(train_eps), rows(val_eps)
        report(progress, "render", n_render, n_render)
        if cache is not None:
            cache.store_rows(train_rows, val_rows, **render_key)
    metrics.update({"data/train_rows": len(train_rows), "data/val_rows": len(val_rows)})
    return Data(tokenizer, train_rows, val_rows, metrics)


def load_or_train_tokenizer(config: TrainConfig, run_dir: Path, episodes: list[Episode],
                            cache: DataCache | None = None) -> PreTrainedTokenizerBase:
    """The run's own tokenizer when resuming, ``init_from``'s, one found in ``cache``, or one
    trained on the episodes' text (then stored in ``cache``); saved in ``<run>/tokenizer``
    with the run (atomic: temp dir + rename)."""
    from lmrlgym.models.tokenizer import load_tokenizer, train_tokenizer

    own = run_dir / TOKENIZER_DIR
    with distributed.main_first():  # rank 0 trains and saves it; the other ranks load it
        if own.exists():
            return load_tokenizer(own)
        if config.init_from:
            tokenizer = load_tokenizer(Path(config.init_from) / TOKENIZER_DIR)
        else:
            tokenizer = cache.load_tokenizer(vocab_size=config.vocab_size) if cache else None
            if tokenizer is None:
                texts = (t.text for ep in episodes for t in ep.turns)
                tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size)
                if cache is not None:
                    cache.store_tokenizer(tokenizer, vocab_size=config.vocab_size)
        tmp = temp_beside(own, directory=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, own)
        return tokenizer


def epoch_batches(n_rows: int, rows_per_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Row indices of each minibatch of one epoch: a fresh seeded shuffle per epoch (§2.4; the
    original's streamed datasets were never shuffled). A pure function of (seed, epoch), so a
    resumed run replays exactly the batches an uninterrupted run would have seen."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return [order[i : i + rows_per_batch] for i in range(0, n_rows, rows_per_batch)]


class BatchSchedule:
    """Microbatch ``m`` (counted over the whole run) -> (epoch, row indices), without state."""

    def __init__(self, n_rows: int, rows_per_batch: int, seed: int):
        if n_rows == 0:
            raise EmptyActionBatch("the training split has no rows with action tokens")
        self.n_rows, self.rows_per_batch, self.seed = n_rows, rows_per_batch, seed
        self.per_epoch = math.ceil(n_rows / rows_per_batch)
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def __call__(self, m: int) -> tuple[int, np.ndarray]:
        epoch, k = divmod(m, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, epoch_batches(self.n_rows, self.rows_per_batch, self.seed, epoch))
        return epoch, self._cache[1][k]

