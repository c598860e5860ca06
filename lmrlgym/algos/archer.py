"""ArCHer: an off-policy turn-level critic and a token-level policy gradient whose per-turn
advantage comes from it.

Paper: Zhou et al. 2024, "ArCHer: Training Language Model Agents via Hierarchical Multi-Turn
RL"; settings from its released configs (``scripts/config/default.yaml``, ``archer_20q.yaml``,
``archer_city.yaml``) where the paper gives none (docs/algorithms.md §3.9).

The critic works on whole utterances: a turn transition is ``(c_t, a_t, r_t, c_{t+1}, done)``,
``c_t`` the prompt the policy saw (its context window, as ids) and ``a_t`` the sampled action.
Twin heads ``Q_1, Q_2(c, a)`` and ``V_1, V_2(c)`` share one causal trunk (a copy of the initial
policy, or a separate small model, ``critic_model``): ``V`` reads the last context token,
``Q`` that state beside the last action token. Target copies follow by Polyak averaging.
Each round:

1. Roll out ``rollouts_per_round`` episodes and add their transitions to the replay buffer (the
   last ``replay_capacity``; also written to ``replay.jsonl`` so a resumed run rebuilds it).
2. ``critic_steps`` updates on minibatches drawn uniformly from the buffer, each followed by the
   Polyak update: ``Q_k(c, a) ← r + γ (1 − done) V̄_k(c')`` and ``V_k(c) ← Q̄_k(c, a')`` with
   ``a' ~ π(·|c)`` sampled afresh (the released trainer's targets).
3. After ``warmup_rounds`` rounds of critic-only training, the actor: each action turn of the
   round gets ``A_t = min_k Q_k(c_t, a_t) − min_k V_k(c_t)`` on all its tokens, and
   ``epochs_per_round`` passes of the clipped objective (``grpo.pg_loss``).

Deviations from the released code (docs/deviations.md): the actor trains on the round's own
episodes (on-policy, so the clipped ratio makes its 3 epochs safe) instead of fresh actions
sampled at replay states; the critic reads the policy's tokenization with a causal trunk
rather than RoBERTa's pooled embeddings of context and action; AdamW instead of Adam.

Logged keys: as GRPO (``grpo`` module docstring, without the group keys), plus
``train/{critic_loss, q_mean, v_mean, td_target_mean, replay_size, actor_update}``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos import distributed, grpo, online, presets
from lmrlgym.algos.backbone import hidden_states
from lmrlgym.algos.loop import Progress, make_optimizer
from lmrlgym.algos.rl import polyak_update
from lmrlgym.models.heads import make_head
from lmrlgym.models.render import ContextFn, TokenCache, pad_ids, prompt_ids


@dataclasses.dataclass(frozen=True)
class ArcherConfig(grpo.PGConfig):
    """ArCHer (docs/algorithms.md §3.9). Defaults: the released ``default.yaml`` and the
    Twenty Questions config (``archer_20q.yaml``); PPO's round count."""

    ALGO: ClassVar[str] = "archer"

    n_rounds: int = 60
    """Rollout/update rounds (as PPO; the released configs run 30 to 2,000 iterations)."""
    rollouts_per_round: int = 128
    """Episodes per round (released 20Q and City configs: ``rollout_size`` 128)."""
    epochs_per_round: int = 3
    """Actor passes over each round's rows (released: ``actor_epochs`` 3)."""
    lr: float = 1e-6
    """Actor learning rate (released 20Q: ``lm_lr`` 1e-6; City 1e-5)."""
    gamma: float = 0.95
    """Per-turn discount of the critic (released: 0.95)."""
    adam_eps: float = 1e-5
    """AdamW ε of the actor: a young critic's ``Q − V`` is nearly flat (std 0.001 after 20
    updates on Maze-FO), and with ε = 1e-8 Adam turned the actor's near-zero gradient into
    full-size steps that drove the policy into illegal moves; 1e-5 (PPO's value in OpenAI
    baselines and cleanrl) scales such steps down (docs/algorithms.md §3.9)."""
    critic_lr: float = 2e-5
    """Critic learning rate (released 20Q and City: 2e-5)."""
    critic_steps: int = 20
    """Critic updates per round (released 20Q: ``epochs`` 20, one step each; City 50)."""
    critic_batch_size: int = 256
    """Transitions per critic update (released: batch 8 × 32 accumulation steps)."""
    tau: float = 0.1
    """Polyak rate of the target critic after every critic update (released: 0.1)."""
    replay_capacity: int = 10_000
    """Transitions kept in the replay buffer, the newest (released: ``capacity`` 10,000)."""
    warmup_rounds: int = 20
    """Rounds that train only the critic (released 20Q: ``warmup_iter`` 20; City 10)."""
    critic_grad_clip: float = 1.0
    """Gradient-norm clip of the critic updates (released: ``max_grad_norm`` 1.0)."""
    critic_model: str | None = None
    """The critic's trunk: None, a copy of the initial policy; else a model preset or path
    built fresh with the run's tokenizer (a separate, e.g. smaller, trunk; the released code
    used RoBERTa-base)."""
    truncation_is_terminal: bool = False
    """Bootstrap truncated episodes with 0, not from ``V̄`` of the final context (§1.8)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("critic_steps", "critic_batch_size", "replay_capacity"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.warmup_rounds < 0:
            raise ValueError(f"--warmup-rounds must be non-negative, got {self.warmup_rounds}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"--gamma must be in [0, 1] and --tau in (0, 1], got {self.gamma}, {self.tau}")
        if self.critic_lr <= 0:
            raise ValueError(f"--critic-lr must be positive, got {self.critic_lr}")


CONFIG = ArcherConfig  # what `lmrlgym train archer` parses

# Per task: PPO's learning rate and batch (grpo.PG_PRESETS); the released 20Q and City configs
# for those two tasks.
PAPER_PRESETS = {
    **grpo.PG_PRESETS,
    "TwentyQuestions-v0": {**grpo.PG_PRESETS["TwentyQuestions-v0"], "lr": 1e-6, "critic_steps": 20,
                           "warmup_rounds": 20},
    "GuessCity-v0": {**grpo.PG_PRESETS["GuessCity-v0"], "lr": 1e-5, "critic_steps": 50,
                     "warmup_rounds": 10},
}


def preset(task: str, **overrides: Any) -> ArcherConfig:
    """ArCHer config for ``task``: the released settings where they exist, else PPO's per-task
    learning rate and batch, plus ``overrides``."""
    return presets.task_preset(ArcherConfig, task, PAPER_PRESETS, **overrides)


# --------------------------------------------------------------------------------------------
# The critic's math (pure)
# --------------------------------------------------------------------------------------------


def td_targets(r: Tensor, done: Tensor, v_next: Tensor, gamma: float) -> Tensor:
    """``y_k = r + γ (1 − done) V̄_k(c')`` for each twin ``k``: (B,), (B,), (2, B) -> (2, B)."""
    return r + gamma * (1.0 - done.float()) * v_next


def critic_loss(q: Tensor, v: Tensor, y_q: Tensor, y_v: Tensor) -> Tensor:
    """Sum over the twins of the mean squared errors ``(Q_k − y_k)²`` and ``(V_k − Q̄_k(c, a'))²``;
    all (2, B)."""
    return ((q - y_q) ** 2).mean(1).sum() + ((v - y_v) ** 2).mean(1).sum()


def turn_advantage(q: Tensor, v: Tensor) -> Tensor:
    """``min_k Q_k(c, a) − min_k V_k(c)``: (2, B), (2, B) -> (B,) (the pessimistic twins)."""
    return q.min(0).values - v.min(0).values


# --------------------------------------------------------------------------------------------
# Transitions and the critic network
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Transition:
    """One action turn: the context and action ids, the reward and the next context."""

    prompt: list[int]
    action: list[int]
    reward: float
    next_prompt: list[int]
    done: bool  # no bootstrap after this turn


def episode_transitions(rollout: online.Rollout, window: ContextFn, tokens: TokenCache, bos_id: int,
                        budget: int, truncation_is_terminal: bool = False) -> list[Transition]:
    """The turn transitions of one episode; a context is ``BOS +`` the last ``budget − 1``
    tokens of the window's turns (the inference prompt). Only the last turn can be done:
    when the episode terminated (or was truncated, with ``truncation_is_terminal``)."""
    ep = rollout.episode
    at = [i for i, t in enumerate(ep.turns) if t.is_action]
    contexts = [prompt_ids(window(ep.turns[:i]), tokens, bos_id, budget) for i in at]
    contexts.append(prompt_ids(window(ep.turns), tokens, bos_id, budget))
    last_done = ep.terminated or (truncation_is_terminal and ep.truncated)
    return [Transition(contexts[k], list(rollout.action_ids[k]), float(ep.turns[i].reward),
                       contexts[k + 1], last_done and k == len(at) - 1)
            for k, i in enumerate(at)]


class TurnCritic(nn.Module):
    """Twin ``Q_k(c, a)`` and ``V_k(c)`` on one causal trunk: ``V`` from the state at the last
    context token, ``Q`` from it concatenated with the state at the last action token (MLP
    heads, §2.2, starting at ``head_bias``)."""

    def __init__(self, trunk: nn.Module, pad_id: int, head_bias: float = 0.0):
        super().__init__()
        d = trunk.get_output_embeddings().in_features
        self.trunk, self.pad_id = trunk, pad_id
        self.q = nn.ModuleList([make_head("mlp", 2 * d, 1, head_bias) for _ in range(2)])
        self.v = nn.ModuleList([make_head("mlp", d, 1, head_bias) for _ in range(2)])

    def _states(self, seqs: Sequence[Sequence[int]], at: Sequence[Sequence[int]]) -> list[Tensor]:
        device = next(self.parameters()).device
        ids, mask = pad_ids(seqs, self.pad_id)
        h = hidden_states(self.trunk, ids.to(device), mask.to(device))  # (B, T, d)
        rows = torch.arange(len(seqs), device=device)
        return [h[rows, torch.tensor(col, device=device)] for col in zip(*at, strict=True)]

    def forward(self, prompts: Sequence[list[int]], actions: Sequence[list[int]]) -> tuple[Tensor, Tensor]:
        """``Q`` and ``V``, each (2, B)."""
        seqs = [p + a for p, a in zip(prompts, actions, strict=True)]
        h_c, h_a = self._states(seqs, [(len(p) - 1, len(s) - 1) for p, s in zip(prompts, seqs, strict=True)])
        h_q = torch.cat([h_c, h_a], -1)
        return torch.stack([head(h_q) for head in self.q]), torch.stack([head(h_c) for head in self.v])

    def values(self, prompts: Sequence[list[int]]) -> Tensor:
        """``V`` of contexts alone, (2, B)."""
        (h_c,) = self._states(prompts, [(len(p) - 1,) for p in prompts])
        return torch.stack([head(h_c) for head in self.v])


def critic_update(critic: TurnCritic, target: TurnCritic, optimizer: torch.optim.Optimizer,
                  batch: Sequence[Transition], sample: Callable[[list[list[int]]], list[list[int]]],
                  gamma: float, tau: float, grad_clip: float) -> dict[str, float]:
    """One TD update of the twin critic on ``batch``, then the Polyak step of ``target``.
    ``sample(prompts)`` draws the current policy's actions ``a'`` for the V targets."""
    prompts = [t.prompt for t in batch]
    device = next(critic.parameters()).device
    r = torch.tensor([t.reward for t in batch], device=device)
    done = torch.tensor([t.done for t in batch], device=device)
    with torch.no_grad():
        y_v, _ = target(prompts, sample(prompts))  # Q̄_k(c, a'), (2, B)
        y_q = td_targets(r, done, target.values([t.next_prompt for t in batch]), gamma)
    q, v = critic(prompts, [t.action for t in batch])
    loss = critic_loss(q, v, y_q, y_v)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(critic.parameters()), grad_clip)
    optimizer.step()
    polyak_update(target, critic, tau)
    return {"train/critic_loss": float(loss.detach()), "train/q_mean": float(q.detach().mean()),
            "train/v_mean": float(v.detach().mean()), "train/td_target_mean": float(y_q.mean())}


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


class ArcherMethod(grpo.PGMethod):
    """ArCHer's part of the online loop: the replay buffer, the critic and its target and
    optimizer (trained in ``prepare``), and per-turn advantages from the critic for
    ``grpo.PGMethod``'s actor update."""

    def __init__(self, config: ArcherConfig, lm: nn.Module, tokenizer: PreTrainedTokenizerBase):
        super().__init__(config, lm, tokenizer)
        if config.critic_model is None:
            trunk = copy.deepcopy(lm)
        else:
            from lmrlgym.models.factory import build_model

            trunk = build_model(config.critic_model, tokenizer, dropout=0.0).to(config.device)
        self.critic = TurnCritic(trunk, tokenizer.pad_token_id).to(config.device)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.modules.update(critic=self.critic, target_critic=self.target)
        self.optimizers = {"critic": make_optimizer(self.critic.parameters(), config.critic_lr,
                                                    config.weight_decay)}
        self.tokens = TokenCache(tokenizer)
        self.replay: list[Transition] = []
        self.run_dir = Path()

    def start(self, loop: online.OnlineLoop, meta: dict[str, Any] | None) -> None:
        """The replay buffer of the rounds before ``loop.start`` (from ``replay.jsonl``)."""
        super().start(loop, meta)
        self.run_dir = loop.run_dir
        with distributed.main_first():  # rank 0 trims the file before the others read it
            self.add(online.load_replay(loop.run_dir, loop.start))

    def add(self, rollouts: Sequence[online.Rollout]) -> list[list[Transition]]:
        """Append the rollouts' transitions to the buffer (keeping the newest
        ``replay_capacity``); returns them per episode."""
        config = self.config
        per_episode = [episode_transitions(r, self.window, self.tokens, self.tokenizer.bos_token_id,
                                           config.max_context_tokens, config.truncation_is_terminal)
                       for r in rollouts]
        self.replay = (self.replay + [t for ts in per_episode for t in ts])[-config.replay_capacity :]
        return per_episode

    def turn_advantages(self, loop: online.OnlineLoop, rnd: int,
                        rollouts: list[online.Rollout]) -> tuple[list[list[float]] | None, dict[str, float]]:
        config = self.config
        online.append_replay(self.run_dir, rnd, rollouts)
        per_episode = self.add(rollouts)
        # The critic: seeded minibatches and a seeded sampler per (run, round).
        rng = np.random.default_rng([config.seed, rnd, 2])
        sampler = online.rollout_policy(self.lm, self.tokenizer, config, rnd)
        sampler.reseed(int(rng.integers(2**62)))
        self.critic.train()
        logs = [critic_update(self.critic, self.target, self.optimizers["critic"],
                              [self.replay[i] for i in rng.integers(len(self.replay), size=config.critic_batch_size)],
                              lambda p: sampler.generate(p).action_ids, config.gamma, config.tau,
                              config.critic_grad_clip)
                for _ in range(config.critic_steps)]
        self.critic.eval()
        metrics = {k: float(np.mean([m[k] for m in logs])) for k in logs[0]}
        metrics.update({"train/replay_size": float(len(self.replay)),
                        "train/actor_update": float(rnd >= config.warmup_rounds)})
        if rnd < config.warmup_rounds:
            return None, metrics
        flat = [t for ts in per_episode for t in ts]
        with torch.no_grad():
            adv = torch.cat([turn_advantage(*self.critic([t.prompt for t in part], [t.action for t in part])).cpu()
                             for part in (flat[i : i + config.critic_batch_size]
                                          for i in range(0, len(flat), config.critic_batch_size))]).tolist()
        out, start = [], 0
        for ts in per_episode:
            out.append(adv[start : start + len(ts)])
            start += len(ts)
        return out, metrics


def train(config: ArcherConfig, progress: Progress | None = None) -> Path:
    """Run ArCHer from ``init_from`` (a BC run) and return the run directory."""
    return online.run(config, ArcherMethod, progress)
