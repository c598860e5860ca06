"""Monte Carlo Returns (MC): fit a token-level Q head to the return-to-go, act with
``π_β · exp(β Q)``.

Paper: Abdulhai et al. 2023, LMRL-Gym, Section 5 ("MC Returns") and Table 3; one step of policy
improvement over the behaviour policy. Mirrors the original's ``llm_rl_scripts/*/mc/train_mc.py``
(docs/algorithms.md §3.3, decoding §3.5).

Deviations from the original (docs/deviations.md):
1. Shared layout by default: one trunk with the LM head and the Q head; a BC term
   (``bc_weight``) keeps the LM head ≈ π_β. ``value_model="separate"`` gives the original's
   layout (§2.3): the Q head on its own trunk (a copy of the ``init_from`` model, the only
   trunk trained) and π_β from a frozen copy of the model, with no BC term.
2. Returns are computed once per episode over all its action turns, with no duplicated final
   step (the original counted the terminal reward twice on Maze/Chess, §1.8), and no dialogue
   is truncated on the right (§1.4).
3. Discounting is per turn by default (``discount_mode="token"`` gives the original's).
4. Dropout is off (the original trained with it on); AdamW with gradient clipping (§2.4).

Logged keys: ``train/{loss, q_loss, cql_loss, bc_loss, q_mean, return_mean, q_abs_err, lr,
grad_norm, action_tokens, epoch}``, ``time/{tokens_per_s, pad_fraction}`` and the ``eval/*`` keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from lmrlgym.algos import presets
from lmrlgym.algos.backbone import batch_states, build_lm, disable_dropout, lm_policy, value_trunk
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.checkpoint import export_lm
from lmrlgym.algos.config import ValueGuidedConfig
from lmrlgym.algos.dataset import prepare_data
from lmrlgym.algos.loop import Loop, make_optimizer, set_seed, start_run
from lmrlgym.algos.progress import Progress
from lmrlgym.algos.rl import step_mean, step_view
from lmrlgym.models.heads import make_head
from lmrlgym.models.policy import LMPolicy, LogitsAdjust, ValueReadout
from lmrlgym.models.render import Batch


@dataclasses.dataclass(frozen=True)
class MCConfig(ValueGuidedConfig):
    """MC Returns (docs/algorithms.md §3.3). Defaults: paper Table 3, Maze column; the model layout
    (``value_model``, shared or the original's separate value trunk) and ``bc_weight`` as in
    ``ValueGuidedConfig`` (§2.3)."""

    ALGO: ClassVar[str] = "mc"

    lr: float = 1e-4
    """AdamW learning rate (paper Table 3: 1e-4; Wordle 3e-5)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128; Chess/Endgames 64, Wordle 32)."""
    gamma: float = 0.99
    """Discount (paper Table 3: 0.99; Wordle 1.0)."""
    discount_mode: Literal["turn", "token"] = "turn"
    """γ per action turn (ours, the paper's text) or per action token (the original code), §1.7."""
    beta: float = 16.0
    """Decoding weight of Q in ``π_β · exp(β Q)`` (paper Table 3, Maze: 16)."""
    cql_weight: float = 0.5
    """Weight of the conservative CE term (paper Table 3, Maze: 0.5)."""
    head: Literal["mlp", "linear"] = "mlp"
    """Q head type (original: MLP on Maze/Chess/Endgames, linear elsewhere; §2.2)."""
    head_bias: float = 0.0
    """Initial Q value: the zero-initialised output layer's bias (original: 0 on Maze/Chess)."""


CONFIG = MCConfig

# Paper Table 3 per task (docs/algorithms.md §3.3); head types and biases from the original (§2.2).
PAPER_PRESETS = presets.expand_tasks({
    presets.DIALOGUE: dict(beta=16.0, cql_weight=0.001, head="linear", head_bias=-4.1),
    # Maze: the original evaluated value methods with its reranker over the four moves (§3.5).
    presets.MAZE: dict(beta=16.0, cql_weight=0.5, **presets.MAZE_RERANK),
    presets.TEXTNAV: dict(beta=4.0, cql_weight=0.001, head="linear", head_bias=-4.1),
    "Chess-v0": dict(batch_size=64, beta=8.0, cql_weight=1e-4),
    "Endgames-v0": dict(batch_size=64, beta=8.0, cql_weight=1.0),  # paper "1, 1e-4": ours 1
    "Wordle-v0": dict(lr=3e-5, batch_size=32, beta=64.0, gamma=1.0, cql_weight=0.01,
                      head="linear", head_bias=-4.1),
})


def preset(task: str, **overrides: Any) -> MCConfig:
    """MC config for ``task``: the paper's values plus ``overrides``."""
    return presets.task_preset(MCConfig, task, PAPER_PRESETS, **overrides)


def mc_loss(q: Tensor, lm_logits: Tensor | None, batch: Batch, cfg: MCConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_Q + cql_weight · L_CQL + bc_weight · L_BC`` (§3.3; ``cfg.bc_term``).

    ``q``: (n, V) Q head at the action steps; ``lm_logits``: (n, V) LM logits there (used when
    ``cfg.bc_term > 0``). ``batch.returns`` holds each action token's return-to-go ``G_i``.
    """
    act, a, _, _ = step_view(batch)  # (B, S)
    a = a[act]  # (n,) the taken tokens
    g = batch.returns[:, 1:][act].float()  # (n,) return-to-go of a_i
    q = q.float()
    q_a = q.gather(-1, a[:, None]).squeeze(-1)  # (n,) Q(s_i, a_i)
    q_loss = step_mean(0.5 * (q_a - g) ** 2)
    # Conservative term: a cross-entropy with Q as logits, pushing down unseen tokens' Q.
    cql = step_mean(q.logsumexp(-1) - q_a)
    loss = q_loss + cfg.cql_weight * cql
    metrics = {"train/q_loss": q_loss, "train/cql_loss": cql, "train/q_mean": step_mean(q_a),
               "train/return_mean": step_mean(g), "train/q_abs_err": step_mean((q_a - g).abs())}
    if cfg.bc_term > 0:
        bc, _ = bc_loss(lm_logits, batch)
        loss = loss + cfg.bc_term * bc
        metrics["train/bc_loss"] = bc
    return loss, {"train/loss": loss, **metrics}


def train(config: MCConfig, progress: Progress | None = None) -> Path:
    """Train MC Returns and return the run directory."""
    config, run_dir, checkpoint, dataset = start_run(config, progress)
    set_seed(config.seed)
    # Data: episodes -> seeded split -> tokenizer -> rendered rows with returns-to-go (§1.3).
    data = prepare_data(config, run_dir, config.gamma, config.discount_mode, dataset=dataset,
                        progress=progress)
    # Model: a Q head on a trunk; dropout off (§2.3, §2.4). Shared: the trunk is the LM's.
    # Separate: the head's own trunk; the LM is the frozen π_β.
    lm = build_lm(config, data.tokenizer, dropout=0.0).to(config.device)
    disable_dropout(lm)
    trunk = value_trunk(lm, config)
    lm_head = lm.get_output_embeddings()
    heads = make_heads(config, lm_head.in_features, data.n_vocab).to(config.device)
    q_head = heads["q"]
    value_lm = None if trunk is lm else trunk  # the separate layout's own trunk (None: shared)
    modules = {"lm" if value_lm is None else "value_lm": trunk, "q": q_head}
    optimizer = make_optimizer([*trunk.parameters(), *heads.parameters()], config.lr,
                                      config.weight_decay)

    def forward(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        act, _, _, _ = step_view(batch)  # (B, S)
        h = batch_states(trunk, batch)  # (B, T, d)
        h = h[:, :-1][act]  # (n, d): Q and logits only where a token is chosen
        lm_logits = lm_head(h)[:, : data.n_vocab] if config.bc_term > 0 else None  # (n, V)
        return mc_loss(q_head(h), lm_logits, batch, config)

    def make_policy() -> LMPolicy:
        return lm_policy(lm, data.tokenizer, config, logits_adjust(heads, config.beta), value_lm,
                         value_readout=value_readout(heads), beta=config.beta)

    def export(run_dir: Path) -> None:
        export_lm(lm, data.tokenizer, run_dir, dict(heads), value_lm)

    loop = Loop(config, run_dir, data, modules, optimizer, checkpoint,
                validate=lambda batch: forward(batch)[1], make_policy=make_policy,
                value_readout=lambda: (trunk, value_readout(heads)),
                export=export, progress=progress)
    for step in loop.steps():  # resumes after the last checkpoint
        for batch in loop.microbatches(step):  # grad_accum microbatches of this step
            loss, metrics = forward(batch)
            loop.backward(loss, metrics, batch)
        loop.optimizer_step(step)  # learning rate, gradient clipping, AdamW step
        loop.end_step(step)  # log, validate/evaluate, checkpoint
    return loop.finish()  # export model/ (+ value_model/) + tokenizer/ + heads for load_policy


def make_heads(config: MCConfig, d: int, n_vocab: int) -> nn.ModuleDict:
    """The heads MC trains, exports and decodes with: ``q`` (n_vocab outputs, §2.2)."""
    return nn.ModuleDict({"q": make_head(config.head, d, n_vocab, config.head_bias)})


def logits_adjust(heads: nn.ModuleDict, beta: float) -> LogitsAdjust:
    """Value-guided decoding for MC (§3.5): ``logits + β · Q(s, ·)`` (V ≡ 0: a per-state
    constant does not change the softmax). Equals π_β at β = 0 and at head init."""
    q_head = heads["q"]

    def adjust(hidden: Tensor, logits: Tensor) -> Tensor:  # (N, d), (N, V) -> (N, V)
        n_vocab = logits.shape[-1]
        return logits.float() + beta * q_head(hidden)[:, :n_vocab]

    return adjust


def value_readout(heads: nn.ModuleDict) -> ValueReadout:
    """``(Q, None)`` of hidden states: MC has no V head, so the value-map diagnostic takes
    ``max_a Q(s, a)`` over the known moves (§3.3)."""
    return lambda hidden: (heads["q"](hidden), None)
