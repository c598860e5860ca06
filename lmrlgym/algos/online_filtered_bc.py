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
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import tyro
from torch import Tensor, nn

from lmrlgym.algos import common, distributed, online
from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.common import hidden_states, step_view
from lmrlgym.algos.filtered_bc import select_episodes, selection_metrics
from lmrlgym.data.io import episode_from_json
from lmrlgym.models.render import Batch, Segment, collate


@dataclasses.dataclass(frozen=True)
class OnlineFilteredBCConfig(online.OnlineConfig):
    """Online filtered BC (docs/algorithms.md §3.7). Defaults: paper Table 3 and the original's
    Maze script."""

    ALGO: ClassVar[str] = "online_filtered_bc"

    # Offline-only settings PPO keeps (its BC term reads a dataset), hidden from the CLI here.
    data: tyro.conf.Suppress[str] = ""
    val_fraction: tyro.conf.Suppress[float] = 0.05
    skip_bad: tyro.conf.Suppress[bool] = False
    n_rounds: int = 100
    """Collect/filter/train rounds (original Maze and Chess scripts: 100; Wordle 1)."""
    rollouts_per_round: int = 128
    """Episodes collected per round (original: 128)."""
    rollout_batch_size: int = 32
    """Episodes generated in parallel."""
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
    rollout_temperature: float = 1.0
    """Sampling temperature of the rollouts (1, no top-k/top-p)."""
    eval_every: int = 0
    """Rounds between env evaluations (0: only at the end)."""
    save_every: int = 10
    """Rounds between checkpoints (one is always written at the end)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_rounds", "rollouts_per_round", "rollout_batch_size", "epochs_per_round"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"--top-fraction must be in (0, 1], got {self.top_fraction}")


CONFIG = OnlineFilteredBCConfig  # what `lmrlgym train online_filtered_bc` parses


# docs/algorithms.md §3.7: success filtering for Maze/Chess/Endgames/Text-Nav (original scripts);
# Wordle top 30 % with lr 1e-5 and batch 32 (paper Table 3); dialogue top 10 %.
PAPER_PRESETS = common.expand_tasks({
    common.DIALOGUE: dict(keep="top_fraction", top_fraction=0.1),
    "Wordle-v0": dict(keep="top_fraction", top_fraction=0.3, lr=1e-5, batch_size=32),
})


def preset(task: str, **overrides: Any) -> OnlineFilteredBCConfig:
    """Online filtered BC config for ``task``: the paper's values plus ``overrides``."""
    return common.task_preset(OnlineFilteredBCConfig, task, PAPER_PRESETS, **overrides)


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


REPLAY_FILE = "replay.jsonl"


def append_replay(run_dir: Path, rnd: int, kept: Sequence[online.Rollout]) -> None:
    """Persist a round's kept episodes with their sampled ids, so ``--resume`` rebuilds the
    replay buffer exactly."""
    if not distributed.is_main():  # under torchrun every rank holds the round's episodes
        return
    with open(run_dir / REPLAY_FILE, "a", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps({"round": rnd, "episode": r.episode.to_json(),
                                "action_ids": r.action_ids}) + "\n")


def load_replay(run_dir: Path, start: int) -> list[online.Rollout]:
    """The replay buffer of the rounds before ``start`` (later lines came after the last
    checkpoint and are dropped from the file, as they will be collected again)."""
    path = run_dir / REPLAY_FILE
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if json.loads(ln)["round"] < start]
    if distributed.is_main():
        path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    out = []
    for k, ln in enumerate(lines):
        rec = json.loads(ln)
        ep = episode_from_json(rec["episode"], f"{path}:{k + 1}")
        out.append(online.Rollout(ep, rec["action_ids"], [], [], []))
    return out


def train(config: OnlineFilteredBCConfig,
          progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Run online filtered BC from ``init_from`` (a BC run) and return the run directory.

    ``progress(round, n_rounds, metrics)`` is called after each round (the CLI's progress bar).
    """
    config, run_dir, checkpoint = online.start_online_run(config)
    common.set_seed(config.seed)
    lm, tokenizer = online.load_init(config, run_dir)
    n_vocab, pad_id = len(tokenizer), tokenizer.pad_token_id
    modules: dict[str, nn.Module] = {"lm": lm}
    optimizer = common.make_optimizer(lm.parameters(), config.lr, config.weight_decay)
    window = common.context_fn(config.task)
    micro = config.batch_size // config.grad_accum

    logger = common.MetricsLogger(run_dir, config.tensorboard)
    start, n_steps = 0, 0
    replay: list[online.Rollout] = []
    if checkpoint is not None:
        meta = common.load_checkpoint(checkpoint, modules, optimizer)
        start, n_steps = meta["step"], meta["optimizer_steps"]
        logger.truncate_after(start)
    # Identity in one process; under torchrun: rank 0's weights, row shards, global metrics.
    parallel = distributed.DataParallel(modules, config.seed)
    params = [p for p in lm.parameters() if p.requires_grad]
    if start == 0 and config.eval_every and config.eval_episodes > 0:
        logger.log(0, online.evaluate_lm(lm, tokenizer, config))  # the initial policy
    if config.replay:
        with distributed.main_first():  # rank 0 trims the file before the others read it
            replay = load_replay(run_dir, start)

    for rnd in range(start, config.n_rounds):
        t0 = time.perf_counter()
        # Collect with the current policy on training seeds, keep the sampled ids (under
        # torchrun each rank plays a share of the round and every rank gets all of it).
        rollouts = online.collect_round(lm, tokenizer, config, rnd)
        metrics: dict[str, float] = online.rollout_metrics(rollouts)
        # Keep the successful episodes, or the best fraction by return (§3.2).
        by_episode = {id(r.episode): r for r in rollouts}
        kept_eps = select_episodes([r.episode for r in rollouts], config.keep,
                                   config.top_fraction, seed=rnd)
        kept = [by_episode[id(e)] for e in kept_eps]
        metrics.update({k: v for k, v in selection_metrics([r.episode for r in rollouts], kept_eps).items()
                        if math.isfinite(v)})  # no threshold when nothing was kept
        if config.replay:
            append_replay(run_dir, rnd, kept)
            replay += kept
            kept = list(replay)
        # Whole episodes as rows (chains for replacing envs), with the sampled ids.
        rows = training_rows(online.render_rollouts(kept, tokenizer, window,
                                                    config.max_context_tokens))
        t1 = time.perf_counter()
        metrics["train/skipped_round"] = float(not rows)
        mean = common.MetricsMean()
        tokens = 0
        lr = common.lr_at(n_steps, config.lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for epoch in range(config.epochs_per_round if rows else 0):
            order = common.epoch_batches(len(rows), config.batch_size, config.seed,
                                         rnd * config.epochs_per_round + epoch)
            for step_rows in order:
                parts = [step_rows[i : i + micro] for i in range(0, len(step_rows), micro)]
                n_total = sum(int(rows[j].action_mask.sum()) for j in step_rows)
                optimizer.zero_grad(set_to_none=True)
                for part in parts:
                    part = parallel.shard(part)  # this rank's slice of the microbatch
                    batch = collate([rows[j] for j in part], pad_id).to(config.device)
                    loss, m = bc_forward(lm, batch, n_vocab)
                    # Pooled mean over the step's action tokens (§1.6): the
                    # microbatch's (global) mean, weighted by its share of the step's tokens.
                    loss, m, attended = parallel.weigh(loss, m, batch.n_action_tokens,
                                                       int(batch.attention_mask.sum()))
                    (loss * m.pop("train/action_tokens") / n_total).backward()
                    mean.add(m)
                    tokens += attended
                distributed.sync_grads(params)  # average over ranks (no-op in one process)
                grad_norm = distributed.clip_grad_norm(params, config.grad_clip)
                optimizer.step()
                n_steps += 1
                mean.add({"train/grad_norm": grad_norm, "train/action_tokens": n_total})
        t2 = time.perf_counter()
        done = rnd + 1
        metrics.update({**mean.pop(), "train/lr": lr, "train/round": done,
                        "train/optimizer_steps": n_steps, "time/rollout_s": t1 - t0,
                        "time/update_s": t2 - t1,
                        "time/tokens_per_s": tokens / max(t2 - t1, 1e-9)})
        last = done == config.n_rounds
        if config.eval_episodes > 0 and ((config.eval_every and done % config.eval_every == 0) or last):
            metrics.update(online.evaluate_lm(lm, tokenizer, config))
        logger.log(done, metrics)
        if done % config.save_every == 0 or last:
            common.save_checkpoint(run_dir, done, modules, optimizer,
                                   {"optimizer_steps": n_steps}, config.keep_checkpoints)
        if progress is not None:
            progress(done, config.n_rounds, metrics)
    logger.close()
    common.export_lm(lm, tokenizer, run_dir)
    distributed.cleanup()  # every rank waits for rank 0's export
    return run_dir
