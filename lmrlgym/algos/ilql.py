"""Implicit Language Q-Learning (ILQL): twin token-level Qs backed up toward ``r + γ V(s′)``,
V fit by expectile regression to the target Qs, decoding with ``π_β · exp(β (Q − V))``.

Paper: Snell et al. 2022, "Offline RL for Natural Language Generation with Implicit Language Q
Learning"; settings from Abdulhai et al. 2023, LMRL-Gym, Table 3. Mirrors the original's
``LLM_RL/algorithms/ilql/`` loss and ``llm_rl_scripts/*/ilql/train_ilql.py``
(docs/algorithms.md §3.4, decoding §3.5).

Deviations from the original (docs/deviations.md):
1. Shared layout by default: one trunk with LM, Q1, Q2 and V heads, an EMA target of the
   trunk and the Q heads, and a BC term (``bc_weight``) that keeps the LM head ≈ π_β.
   ``value_model="separate"`` gives the original's layout (§2.3): Q1, Q2 and V on their own
   trunk (a copy of the ``init_from`` model, the only trunk trained), a Polyak target of that
   trunk and of the Q heads, and π_β from a frozen copy of the model, with no BC term.
2. No duplicated final step: the last real transition of a terminated episode bootstraps from 0
   (the original bootstrapped it from V(s_T), §1.8); next states are found by gathers, not
   O(N²) one-hot pairings; no dialogue is truncated on the right (§1.4).
3. Discounting is per turn by default (``discount_mode="token"`` gives the original's).
4. Dropout is off, the target pass included; AdamW with gradient clipping (§2.4).
5. No checkpoint "selection" by a training loss: the final checkpoint is exported.

Logged keys: ``train/{loss, q_loss, v_loss, cql_loss, bc_loss, q1_mean, q2_mean, target_q_mean,
v_mean, v_next_mean, td_target_mean, reward_mean, advantage_mean, aux_lm_loss, lr, grad_norm,
action_tokens, epoch}`` (``aux_lm_loss`` with ``aux_lm_weight > 0``), ``time/{tokens_per_s, pad_fraction}`` and the ``eval/*`` keys.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lmrlgym.algos import presets
from lmrlgym.algos.backbone import (
    batch_states,
    build_lm,
    disable_dropout,
    hidden_states,
    last_token_states,
    lm_policy,
    value_trunk,
)
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.checkpoint import export_lm
from lmrlgym.algos.config import ValueGuidedConfig
from lmrlgym.algos.dataset import prepare_data
from lmrlgym.algos.loop import Loop, make_optimizer, set_seed, start_run
from lmrlgym.algos.progress import Progress
from lmrlgym.algos.rl import (
    next_state_value,
    polyak_update,
    step_discount,
    step_mean,
    step_view,
    turn_end_index,
)
from lmrlgym.models.factory import positions
from lmrlgym.models.heads import make_head
from lmrlgym.models.policy import LMPolicy, LogitsAdjust, ValueReadout
from lmrlgym.models.render import Batch


@dataclasses.dataclass(frozen=True)
class ILQLConfig(ValueGuidedConfig):
    """ILQL (docs/algorithms.md §3.4). Defaults: paper Table 3, Maze column; the model layout
    (``value_model``, shared or the original's separate value trunk) and ``bc_weight`` as in
    ``ValueGuidedConfig`` (§2.3)."""

    ALGO: ClassVar[str] = "ilql"
    SEPARATE_ONLY: ClassVar[tuple[str, ...]] = (*ValueGuidedConfig.SEPARATE_ONLY, "aux_lm_weight")

    lr: float = 1e-4
    """AdamW learning rate (paper Table 3: 1e-4; Wordle 3e-5)."""
    batch_size: int = 128
    """Rows per optimizer step (paper Table 3: 128; Wordle 32)."""
    gamma: float = 0.99
    """Discount (paper Table 3: 0.99)."""
    discount_mode: Literal["turn", "token"] = "turn"
    """γ per action turn (ours, the paper's text) or per action token (the original code), §1.7."""
    beta: float = 16.0
    """Decoding weight of the advantage in ``π_β · exp(β (Q − V))`` (paper Table 3, Maze: 16)."""
    tau: float = 0.99
    """Expectile of the V regression (paper Table 3, Maze: 0.99; else 0.7)."""
    cql_weight: float = 0.5
    """Weight of the conservative CE term on both Qs (paper Table 3, Maze: 0.5)."""
    polyak_alpha: float = 0.005
    """Target update ``θ̄ ← (1 − α) θ̄ + α θ`` after each optimizer step (paper and original)."""
    target_trunk: bool = True
    """Keep an EMA copy of the trunk (the value trunk in separate mode) for the target Qs;
    False: target heads read the online hidden states under no_grad (§2.3)."""
    head: Literal["mlp", "linear"] = "mlp"
    """Q/V head type (original: MLP for ILQL; §2.2)."""
    head_bias: float = 0.0
    """Initial Q and V: the zero-initialised output layer's bias (original: 0 on Maze/Chess)."""
    truncation_is_terminal: bool = False
    """Bootstrap truncated episodes with 0, as the original did (§1.8); default: from V."""
    backup: Literal["token", "turn"] = "token"
    """How far one TD backup reaches (§3.4). ``"token"`` (the original's): each action token
    backs up to V of the next token's state, so a k-token move takes k hops. ``"turn"``: every
    token of an action turn backs up to its turn's target ``r + γ V(s′)`` (s′ after the env's
    reply), and V at each of them fits the target Q at the turn's last token: one hop per move.
    Needs ``discount_mode="turn"``."""
    aux_lm_weight: float = 0.0
    """Weight of a world-model loss on the value trunk (ours, §3.4; 0: off). Each row is read
    with its next context (``next_ids`` without BOS; nothing after a terminal move) appended after
    its last action, and the value trunk's own LM head is trained by next-token cross-entropy on
    the observation tokens of that sequence, the appended ones included, so the states at a move
    must carry what its next observation depends on. The value heads read the row's positions,
    which the appended tokens cannot change. Needs ``value_model="separate"``; measured on
    Maze-FO with ``backup="turn"`` (docs/cpu-scale.md). This pass is not packed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backup == "turn" and self.discount_mode != "turn":
            raise ValueError("--backup turn needs --discount-mode turn: a turn-level backup "
                             "discounts once per turn")
        if self.aux_lm_weight < 0:
            raise ValueError(f"--aux-lm-weight must be non-negative, got {self.aux_lm_weight}")
        if self.aux_lm_weight > 0 and self.value_model != "separate":
            raise ValueError(f"--aux-lm-weight {self.aux_lm_weight} needs --value-model separate: "
                             "in the shared layout the trunk's LM head is the policy, which a "
                             "loss on observation tokens would change")


CONFIG = ILQLConfig

# Paper Table 3 per task (docs/algorithms.md §3.4); head biases from the original (§2.2).
PAPER_PRESETS = presets.expand_tasks({
    presets.DIALOGUE: dict(beta=4.0, tau=0.7, cql_weight=0.001, head_bias=-4.1),
    # Maze: the original evaluated value methods with its reranker over the four moves (§3.5).
    presets.MAZE: dict(beta=16.0, tau=0.99, cql_weight=0.5, **presets.MAZE_RERANK),
    presets.TEXTNAV: dict(beta=1.0, tau=0.7, cql_weight=0.001, head_bias=-4.1),
    "Chess-v0": dict(beta=8.0, tau=0.7, cql_weight=1e-4),
    "Endgames-v0": dict(beta=8.0, tau=0.7, cql_weight=1.0),
    "Wordle-v0": dict(lr=3e-5, batch_size=32, beta=32.0, tau=0.7, cql_weight=0.01,
                      head_bias=-4.1),
})


def preset(task: str, **overrides: Any) -> ILQLConfig:
    """ILQL config for ``task``: the paper's values plus ``overrides``."""
    return presets.task_preset(ILQLConfig, task, PAPER_PRESETS, **overrides)


def ilql_loss(
    q1: Tensor, q2: Tensor, tq1: Tensor, tq2: Tensor, v: Tensor, v_boot: Tensor,
    lm_logits: Tensor | None, batch: Batch, cfg: ILQLConfig, aux_lm: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = L_Q + L_V + cql_weight · L_CQL + bc_weight · L_BC [+ aux_lm_weight · L_LM]`` (§3.4;
    ``cfg.bc_term``; ``aux_lm``: :func:`aux_lm_loss`, None when ``cfg.aux_lm_weight`` is 0).

    ``q1, q2``: (n, V) online Q heads at the action steps; ``tq1, tq2``: (n, V) target heads
    there (no grad); ``v``: (B, T) V head on the online hidden states; ``v_boot``: (B,) V after
    each row's last step, × (1 − terminal), no grad; ``lm_logits``: (n, V) or None.
    ``cfg.backup == "turn"`` gives every step the TD target and the target Q of its turn's last
    step, ``e(i)``: ``y_i = y_e(i)``, ``q̄_i = q̄_e(i)``.
    """
    act, a, r, end = step_view(batch)  # (B, S)
    d = step_discount(end, cfg.gamma, cfg.discount_mode)  # (B, S)
    v_s = v[:, :-1].float()  # (B, S) V(s_i)
    v_next = next_state_value(v_s.detach(), act, v_boot)  # (B, S) V(s_next(i)), online V
    y = (r + d * v_next).detach()  # (B, S) TD target
    a, v_a = a[act], v_s[act]  # (n,)
    q1_a = q1.float().gather(-1, a[:, None]).squeeze(-1)  # (n,)
    q2_a = q2.float().gather(-1, a[:, None]).squeeze(-1)  # (n,)
    # V regresses to the smaller target Q with an expectile (IQL): an in-support maximum that
    # never queries unseen actions.
    tq_a = torch.minimum(tq1.float().gather(-1, a[:, None]), tq2.float().gather(-1, a[:, None]))
    tq_a = tq_a.squeeze(-1).detach()  # (n,)
    if cfg.backup == "turn":  # one hop per turn: read y and q̄ at the turn's last step
        last = turn_end_index(act, end)  # (B, S)
        y = y.gather(1, last)
        tq_a = torch.zeros_like(v_s).masked_scatter(act, tq_a).gather(1, last)[act]
    y = y[act]  # (n,)
    q_loss = step_mean(0.5 * (q1_a - y) ** 2) + step_mean(0.5 * (q2_a - y) ** 2)
    w = torch.where(tq_a >= v_a, cfg.tau, 1.0 - cfg.tau)  # (n,) expectile weight
    v_loss = step_mean(w * 0.5 * (v_a - tq_a) ** 2)
    cql = step_mean(q1.float().logsumexp(-1) - q1_a) + step_mean(q2.float().logsumexp(-1) - q2_a)
    loss = q_loss + v_loss + cfg.cql_weight * cql
    metrics = {
        "train/q_loss": q_loss, "train/v_loss": v_loss, "train/cql_loss": cql,
        "train/q1_mean": step_mean(q1_a), "train/q2_mean": step_mean(q2_a),
        "train/target_q_mean": step_mean(tq_a), "train/v_mean": step_mean(v_a),
        "train/v_next_mean": step_mean(v_next[act]), "train/td_target_mean": step_mean(y),
        "train/reward_mean": step_mean(r[act].float()),
        "train/advantage_mean": step_mean(tq_a - v_a),
    }
    if cfg.bc_term > 0:
        bc, _ = bc_loss(lm_logits, batch)
        loss = loss + cfg.bc_term * bc
        metrics["train/bc_loss"] = bc
    if aux_lm is not None:
        loss = loss + cfg.aux_lm_weight * aux_lm
        metrics["train/aux_lm_loss"] = aux_lm
    return loss, {"train/loss": loss, **metrics}


def with_next_context(batch: Batch, pad_id: int, max_len: int | None = None,
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Each row followed by its next context (``next_ids`` without BOS; none after a terminal
    move), right-padded to ``W``: ``ids`` (B, W), ``mask`` (B, W) and ``obs`` (B, W − 1) bool,
    true where slot ``t`` predicts an observation token ``t + 1`` (the row's own env tokens and
    every appended one). The row's tokens keep their positions, so a causal trunk's states there
    are those of the row alone. ``max_len`` (the model's positions) cuts appended tokens only."""
    n = batch.attention_mask.sum(1)  # (B,) row lengths
    m = (batch.next_attention_mask.sum(1) - 1).clamp(min=0)  # (B,) appended: next_ids minus BOS
    if max_len is not None:
        m = torch.minimum(m, (max_len - n).clamp(min=0))
    T = batch.input_ids.shape[1]
    W = int((n + m).max())
    k = torch.arange(W, device=n.device)[None, :] - n[:, None]  # (B, W) offset into next_ids[1:]
    appended = (k >= 0) & (k < m[:, None])  # (B, W)
    ids = nn.functional.pad(batch.input_ids, (0, W - T), value=pad_id)  # (B, W)
    if appended.any():
        nxt = batch.next_ids.gather(1, (k + 1).clamp(0, batch.next_ids.shape[1] - 1))  # (B, W)
        ids = torch.where(appended, nxt, ids)
    own = nn.functional.pad(batch.attention_mask.bool() & ~batch.action_mask, (0, W - T))
    mask = nn.functional.pad(batch.attention_mask, (0, W - T)) | appended.long()  # (B, W)
    return ids, mask, (own | appended)[:, 1:]


def aux_lm_loss(lm_head: nn.Module, h: Tensor, ids: Tensor, obs: Tensor, n_vocab: int) -> Tensor:
    """Mean next-token cross-entropy of ``lm_head`` (float32, over the first ``n_vocab`` logits)
    at the slots ``obs`` (B, W − 1) of the rows ``ids`` (B, W) with states ``h`` (B, W, d), as
    :func:`with_next_context` gives them; 0 when no slot is marked."""
    logits = lm_head(h[:, :-1][obs])[:, :n_vocab].float()  # (k, V)
    ce = nn.functional.cross_entropy(logits, ids[:, 1:][obs], reduction="sum")
    return ce / max(int(obs.sum()), 1)


def train(config: ILQLConfig, progress: Progress | None = None) -> Path:
    """Train ILQL and return the run directory."""
    config, run_dir, checkpoint, dataset = start_run(config, progress)
    set_seed(config.seed)
    # Data: episodes -> seeded split -> tokenizer -> rendered rows with next-state links (§1.3).
    data = prepare_data(config, run_dir, config.gamma, config.discount_mode,
                        config.truncation_is_terminal, dataset=dataset, progress=progress)
    # Model: Q1, Q2 and V heads on a trunk, plus EMA targets; dropout off (§2.3, §2.4). Shared:
    # the trunk is the LM's. Separate: the heads' own trunk; the LM is the frozen π_β.
    lm = build_lm(config, data.tokenizer, dropout=0.0).to(config.device)
    disable_dropout(lm)
    trunk = value_trunk(lm, config)
    lm_head = lm.get_output_embeddings()
    d = lm_head.in_features
    heads = make_heads(config, d, data.n_vocab).to(config.device)
    # Targets start as exact copies; the V head has no target (§2.4).
    target = nn.ModuleDict({"q1": copy.deepcopy(heads["q1"]), "q2": copy.deepcopy(heads["q2"])})
    if config.target_trunk:
        target["trunk"] = copy.deepcopy(trunk)
    target.requires_grad_(False)
    value_lm = None if trunk is lm else trunk  # the separate layout's own trunk (None: shared)
    modules = {"lm" if value_lm is None else "value_lm": trunk, "heads": heads, "target": target}
    optimizer = make_optimizer([*trunk.parameters(), *heads.parameters()], config.lr,
                                      config.weight_decay)

    n_positions = positions(lm.config)

    def forward(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        act, _, _, _ = step_view(batch)  # (B, S)
        aux = None
        if config.aux_lm_weight > 0:  # one pass over each row + its next context
            ids, mask, obs = with_next_context(batch, data.tokenizer.pad_token_id, n_positions)
            h_ext = hidden_states(trunk, ids, mask)  # (B, W, d)
            aux = aux_lm_loss(trunk.get_output_embeddings(), h_ext, ids, obs, data.n_vocab)
            h_all = h_ext[:, : batch.input_ids.shape[1]]  # (B, T, d) the rows' own states
        else:
            h_all = batch_states(trunk, batch)  # (B, T, d)
        h = h_all[:, :-1][act]  # (n, d): Q and logits only where a token is chosen
        v = heads["v"](h_all)  # (B, T)
        with torch.no_grad():
            if config.target_trunk:
                th = batch_states(target["trunk"], batch)
                th = th[:, :-1][act]  # (n, d) target trunk
            else:
                th = h  # target heads read the online hidden states (§2.3)
            tq1, tq2 = target["q1"](th), target["q2"](th)  # (n, V) each
            v_boot = bootstrap_values(trunk, heads["v"], batch, v)  # (B,)
        lm_logits = lm_head(h)[:, : data.n_vocab] if config.bc_term > 0 else None  # (n, V)
        return ilql_loss(heads["q1"](h), heads["q2"](h), tq1, tq2, v, v_boot, lm_logits, batch,
                         config, aux)

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
        # EMA targets advance only on real optimizer steps (§2.4).
        for name in ("q1", "q2"):
            polyak_update(target[name], heads[name], config.polyak_alpha)
        if config.target_trunk:
            polyak_update(target["trunk"], trunk, config.polyak_alpha)
        loop.end_step(step)  # log, validate/evaluate, checkpoint
    return loop.finish()  # export model/ (+ value_model/) + tokenizer/ + heads for load_policy


@torch.no_grad()
def bootstrap_values(lm: nn.Module, v_head: nn.Module, batch: Batch, v: Tensor) -> Tensor:
    """``V_boot`` (B,) after each row's last step (§1.6): V at the last token of ``next_ids``
    (one extra trunk pass over those rows), else at the row's last real token; × (1 − terminal)."""
    v_boot = v.detach().float().gather(1, batch.last_index[:, None]).squeeze(1)  # (B,)
    rows = batch.has_next.nonzero().squeeze(1)  # (k,)
    if len(rows):
        ids, mask = batch.next_ids[rows], batch.next_attention_mask[rows]  # (k, T')
        v_boot[rows] = v_head(last_token_states(lm, ids, mask)).float()  # (k,)
    return v_boot * (~batch.terminal).float()


def make_heads(config: ILQLConfig, d: int, n_vocab: int) -> nn.ModuleDict:
    """The heads ILQL trains, exports and decodes with: twin Qs (n_vocab outputs) and V (§2.2)."""
    return nn.ModuleDict({
        "q1": make_head(config.head, d, n_vocab, config.head_bias),
        "q2": make_head(config.head, d, n_vocab, config.head_bias),
        "v": make_head(config.head, d, 1, config.head_bias),
    })


def logits_adjust(heads: nn.ModuleDict, beta: float) -> LogitsAdjust:
    """Value-guided decoding (§3.5): ``logits + β · (min(Q1, Q2) − V)`` from the online heads,
    as in the original. Equals π_β at β = 0 and at head init (Q ≡ V ≡ head_bias)."""

    def adjust(hidden: Tensor, logits: Tensor) -> Tensor:  # (N, d), (N, V) -> (N, V)
        n_vocab = logits.shape[-1]
        q = torch.minimum(heads["q1"](hidden), heads["q2"](hidden))[:, :n_vocab]  # (N, V)
        return logits.float() + beta * (q - heads["v"](hidden)[:, None])

    return adjust


def value_readout(heads: nn.ModuleDict) -> ValueReadout:
    """``(min(Q1, Q2), V)`` of hidden states: what the value-map diagnostic reads (§3.5)."""
    return lambda hidden: (torch.minimum(heads["q1"](hidden), heads["q2"](hidden)),
                           heads["v"](hidden))
