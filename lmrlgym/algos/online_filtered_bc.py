"""Online filtered BC: collect episodes with the current policy, keep the successful ones (or
the best fraction by return), behaviour-clone them, repeat.

Paper: Abdulhai et al. 2023, LMRL-Gym, Section 5 ("Online filtered BC") and Table 3. Mirrors the
original's ``llm_rl_scripts/*/online_filtered_bc/train_online_filtered_bc.py``
(docs/algorithms.md §3.7); selection is offline filtered BC's (``filtered_bc.select_episodes``,
§3.2) and the loss is BC's (§3.1).

Under torchrun/accelerate each rank plays a share of the round, every rank selects from the
whole round, and each trains on a slice of each minibatch (algos/distributed.py).

Deviations from the original (docs/deviations.md):
1. Whole episodes are rendered (chains for replacing envs, §1.4) with the sampled ids, and rows
   without action tokens are dropped. The original built examples from the last transition's
   post-step history, which on Maze/Chess shows only ``"Success\n"``: no action tokens were
   left and its masked CE divided 0 by 0 (NaN); ``masked_mean`` now raises instead.
2. A round that keeps nothing is skipped and logged (``train/skipped_round``).
3. Top-fraction ties are broken by a seeded draw (§3.2), so exactly ``ceil(top_fraction · N)``
   episodes are kept.
4. Dropout is off (§2.4); AdamW with gradient clipping at 1.0.
5. Rollout seeds are drawn from a range disjoint from data-generation and evaluation seeds.

Logged keys (one line per round, ``step`` = round): ``rollout/{return, success_rate,
episode_length, illegal_rate, truncated_action_rate}``, ``train/{loss, nll, token_acc, lr,
grad_norm, action_tokens, kept_episodes, kept_fraction, kept_mean_return, return_threshold,
skipped_round, optimizer_steps, round}``, ``time/{tokens_per_s, rollout_s, update_s}`` and the
``eval/*`` keys (every ``eval_every`` rounds and after the last; with ``eval_every > 0`` also at
step 0, for the initial policy). ``train/return_threshold`` is absent when nothing was kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import tyro
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos import distributed, online, presets
from lmrlgym.algos.backbone import hidden_states
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.dataset import context_fn
from lmrlgym.algos.filtered_bc import select_episodes, selection_metrics
from lmrlgym.algos.loop import Progress
from lmrlgym.algos.rl import step_view
from lmrlgym.models.render import Batch, Segment


@dataclasses.dataclass(frozen=True)
class OnlineFilteredBCConfig(online.OnlineConfig):
    """Online filtered BC (docs/algorithms.md §3.7). Defaults: paper Table 3 and the original's
    Maze script."""

    ALGO: ClassVar[str] = "online_filtered_bc"

    # Offline-only settings PPO keeps (its BC term reads a dataset), hidden from the CLI here.
    data: tyro.conf.Suppress[str] = ""
    val_fraction: tyro.conf.Suppress[float] = 0.05
    skip_bad: tyro.conf.Suppress[bool] = False
    allow_partial: tyro.conf.Suppress[bool] = False
    n_rounds: int = 100
    """Collect/filter/train rounds (original Maze and Chess scripts: 100; Wordle 1)."""
    rollouts_per_round: int = 128
    """Episodes collected per round (original: 128)."""
    epochs_per_round: int = 1
    """Passes over each round's kept rows (original: 1, a fresh dataset per round)."""
    lr: float = 1e-4
    """AdamW learning rate (paper Table 3 / original Maze: 1e-4; Wordle 1e-5)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128; Wordle 32)."""
    keep: Literal["success", "top_fraction"] = "success"
    """``success``: successful episodes only (Maze, Chess, Endgames, Text-Nav). ``top_fraction``:
    the best ``top_fraction`` by return (Wordle 0.3, dialogue 0.1)."""
    top_fraction: float = 0.1
    """Share of each round's episodes kept by ``keep=top_fraction``."""
    replay: bool = False
    """Train on every kept episode so far instead of this round's only (original: off)."""
    save_every: int = 10
    """Rounds between checkpoints (one is always written at the end)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"--top-fraction must be in (0, 1], got {self.top_fraction}")


CONFIG = OnlineFilteredBCConfig  # what `lmrlgym train online_filtered_bc` parses


# docs/algorithms.md §3.7: success filtering for Maze/Chess/Endgames/Text-Nav (original scripts);
# Wordle top 30 % with lr 1e-5 and batch 32 (paper Table 3); dialogue top 10 %.
PAPER_PRESETS = presets.expand_tasks({
    presets.DIALOGUE: dict(keep="top_fraction", top_fraction=0.1),
    "Wordle-v0": dict(keep="top_fraction", top_fraction=0.3, lr=1e-5, batch_size=32),
})


def preset(task: str, **overrides: Any) -> OnlineFilteredBCConfig:
    """Online filtered BC config for ``task``: the paper's values plus ``overrides``."""
    return presets.task_preset(OnlineFilteredBCConfig, task, PAPER_PRESETS, **overrides)


def training_rows(segments: Sequence[Segment]) -> list[Segment]:
    """The rows BC trains on: those with at least one action token (§3.7; the original's
    action-less examples gave NaN)."""
    return [s for s in segments if bool(s.action_mask.any())]


def bc_forward(lm: nn.Module, batch: Batch, n_vocab: int) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_BC`` (§3.1) with logits only at the action steps."""
    act, _, _, _ = step_view(batch)  # (B, S)
    h = hidden_states(lm, batch.input_ids, batch.attention_mask)  # (B, T, d)
    logits = lm.get_output_embeddings()(h[:, :-1][act])[:, :n_vocab]  # (n, V)
    return bc_loss(logits, batch)


class FilteredBCMethod(online.OnlineMethod):
    """Online filtered BC's part of the online loop (:class:`online.OnlineMethod`): keep the
    round's successful (or best) episodes, optionally with every earlier round's, and
    behaviour-clone them."""

    def __init__(self, config: OnlineFilteredBCConfig, lm: nn.Module,
                 tokenizer: PreTrainedTokenizerBase):
        self.config, self.lm, self.tokenizer = config, lm, tokenizer
        self.modules = {"lm": lm}
        self.window = context_fn(config.task)
        self.replay: list[online.Rollout] = []
        self.run_dir = Path()

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.lm.parameters()

    def start(self, loop: online.OnlineLoop, meta: dict[str, Any] | None) -> None:
        """With ``replay``: the kept episodes of the rounds before ``loop.start``."""
        self.run_dir = loop.run_dir
        if self.config.replay:
            with distributed.main_first():  # rank 0 trims the file before the others read it
                self.replay = online.load_replay(loop.run_dir, loop.start)

    def prepare(self, loop: online.OnlineLoop, rnd: int,
                rollouts: list[online.Rollout]) -> online.Round:
        config = self.config
        # Keep the successful episodes, or the best fraction by return (§3.2).
        by_episode = {id(r.episode): r for r in rollouts}
        kept_eps = select_episodes([r.episode for r in rollouts], config.keep,
                                   config.top_fraction, seed=rnd)
        kept = [by_episode[id(e)] for e in kept_eps]
        metrics = {k: v for k, v in selection_metrics([r.episode for r in rollouts], kept_eps).items()
                   if math.isfinite(v)}  # no threshold when nothing was kept
        if config.replay:
            online.append_replay(self.run_dir, rnd, kept)
            self.replay += kept
            kept = list(self.replay)
        # Whole episodes as rows (chains for replacing envs), with the sampled ids.
        rows = training_rows(online.render_rollouts(kept, self.tokenizer, self.window,
                                                    config.max_context_tokens))
        metrics["train/skipped_round"] = float(not rows)
        return online.Round(rows, metrics)

    def loss(self, batch: Batch, rows: Sequence[int],
             prepared: online.Round) -> tuple[Tensor, dict[str, Tensor]]:
        return bc_forward(self.lm, batch, len(self.tokenizer))


def train(config: OnlineFilteredBCConfig, progress: Progress | None = None) -> Path:
    """Run online filtered BC from ``init_from`` (a BC run) and return the run directory.

    ``progress(round, n_rounds, metrics)`` is called after each round (the CLI's progress bar).
    """
    return online.run(config, FilteredBCMethod, progress)
