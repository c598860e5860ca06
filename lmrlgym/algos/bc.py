"""Behaviour cloning (BC): maximise the likelihood of the dataset's action tokens.

Paper: Abdulhai et al. 2023, LMRL-Gym, Section 5 and Table 3. Mirrors the original's
``llm_rl_scripts/*/bc/train_bc.py`` and its masked-CE loss (docs/algorithms.md §3.1).

Deviations from the original (docs/deviations.md):
1. One masked loss over ``render()`` segments replaces the two input paths ((prompt, target)
   pairs for Maze/Chess, masked dialogues elsewhere).
2. AdamW at the Table 3 learning rate instead of Adafactor with a relative step (§2.4), and the
   gradient norm is clipped at 1.0.
3. One BOS starts every row in training and at inference (the original: training only), and the
   prompt is truncated the same way in both (§1.4).
4. Episodes are split train/validation by a seeded shuffle and reshuffled each epoch (the
   original's Maze split was swapped and its streams never shuffled).
5. ``select_best`` picks the checkpoint by validation NLL, never by test episodes.

Logged keys: ``train/{loss, nll, token_acc, lr, grad_norm, action_tokens, epoch}``,
``time/{tokens_per_s, pad_fraction}``, ``eval/loss`` (validation NLL) and the ``eval/*`` keys of evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from lmrlgym.algos import presets
from lmrlgym.algos.backbone import batch_states, build_lm, lm_policy
from lmrlgym.algos.checkpoint import export_lm
from lmrlgym.algos.config import TrainConfig
from lmrlgym.algos.dataset import prepare_data
from lmrlgym.algos.loop import Loop, make_optimizer, set_seed, start_run
from lmrlgym.algos.progress import Progress
from lmrlgym.algos.rl import step_mean, step_view
from lmrlgym.models.policy import LMPolicy
from lmrlgym.models.render import Batch


@dataclasses.dataclass(frozen=True)
class BCConfig(TrainConfig):
    """Behaviour cloning (docs/algorithms.md §3.1). Defaults: paper Table 3."""

    ALGO: ClassVar[str] = "bc"

    lr: float = 1e-4
    """AdamW learning rate (paper Table 3: 1e-4)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128)."""
    select_best: bool = False
    """Export the checkpoint with the lowest validation NLL instead of the final one."""


CONFIG = BCConfig

# Paper Table 3: lr 1e-4 and batch 128 on every task, so only the lengths vary (TASK_LENGTHS).
PAPER_PRESETS: dict[str, dict[str, Any]] = {}


def preset(task: str, **overrides: Any) -> BCConfig:
    """BC config for ``task``: the paper's values plus ``overrides``."""
    return presets.task_preset(BCConfig, task, PAPER_PRESETS, **overrides)


def bc_loss(logits: Tensor, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_BC = −(1/n) Σ_i log π_θ(a_i | s_i)`` over the batch's ``n`` action steps (§3.1).

    ``logits``: (n, V) LM logits at the action steps, in ``step_view`` order
    (``h[:, :-1][act]``); env tokens are context only.
    """
    act, a, _, _ = step_view(batch)  # (B, S)
    a = a[act]  # (n,) the taken tokens
    logp = logits.float().log_softmax(-1)  # (n, V)
    logp_a = logp.gather(-1, a[:, None]).squeeze(-1)  # (n,)
    loss = -step_mean(logp_a)
    acc = step_mean((logp.argmax(-1) == a).float())
    return loss, {"train/loss": loss, "train/nll": loss, "train/token_acc": acc}


def train(
    config: BCConfig, select: Callable[[list], tuple[list, dict]] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train BC and return the run directory. ``select`` (filtered BC) picks the training
    episodes and returns them with its metrics."""
    config, run_dir, checkpoint, dataset = start_run(config, progress)
    set_seed(config.seed)
    # Data: episodes -> seeded split -> tokenizer -> rendered rows (§1.3).
    data = prepare_data(config, run_dir, select=select, dataset=dataset, progress=progress)
    # Model: BC keeps the model's dropout (§2.4).
    lm = build_lm(config, data.tokenizer).to(config.device)
    lm_head = lm.get_output_embeddings()
    modules = {"lm": lm}
    optimizer = make_optimizer(lm.parameters(), config.lr, config.weight_decay)

    def forward(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        act, _, _, _ = step_view(batch)  # (B, S)
        h = batch_states(lm, batch)  # (B, T, d)
        h = h[:, :-1][act]  # (n, d): logits only where a token is chosen
        logits = lm_head(h)[:, : data.n_vocab]  # (n, V): extra embedding rows sliced off
        return bc_loss(logits, batch)

    def make_policy() -> LMPolicy:
        return lm_policy(lm, data.tokenizer, config)

    def export(run_dir: Path) -> None:
        export_lm(lm, data.tokenizer, run_dir)

    loop = Loop(config, run_dir, data, modules, optimizer, checkpoint,
                validate=lambda batch: forward(batch)[1], make_policy=make_policy,
                export=export, select_best=config.select_best, progress=progress)
    for step in loop.steps():  # resumes after the last checkpoint
        for batch in loop.microbatches(step):  # grad_accum microbatches of this step
            loss, metrics = forward(batch)
            loop.backward(loss, metrics, batch)
        loop.optimizer_step(step)  # learning rate, gradient clipping, AdamW step
        loop.end_step(step)  # log, validate/evaluate, checkpoint
    return loop.finish()  # export model/ + tokenizer/ for load_policy
