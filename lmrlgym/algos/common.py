"""Helpers shared by every training loop (ALGORITHMS.md §1.6-1.9, §2.4).

Two kinds of code live here, kept apart:

1. **Pure tensor helpers** (``step_view`` ... ``polyak_update``): the token-level MDP of §1.6,
   discounting (§1.7), returns-to-go and GAE. Each has hand-computed unit tests.
2. **Loop plumbing** used word for word by the ``train()`` loops: the base config, run
   directories, ``metrics.jsonl``/TensorBoard logging, atomic resumable checkpoints, the
   episode split and minibatch schedule, tokenizer training and ``load_policy``.

Functions, not base classes: each ``train()`` stays a readable top-to-bottom loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# 1. Pure tensor helpers (§1.6-1.9)
# --------------------------------------------------------------------------------------------


class EmptyActionBatch(ValueError):
    """A batch without action tokens: a mean over them would be 0/0 (the original's NaN)."""


def step_view(batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decision slots of a collated batch: slot ``i`` chooses token ``i + 1`` from state ``h_i``.

    Returns ``act`` (B, S) bool (slot is a decision step), ``a`` (B, S) the token taken,
    ``r`` (B, S) its reward and ``end`` (B, S) whether it closes an action turn.
    """
    act = batch.action_mask[:, 1:] & batch.attention_mask[:, 1:].bool()  # (B, S)
    a = batch.input_ids[:, 1:]  # (B, S)
    r = batch.rewards[:, 1:]  # (B, S)
    end = batch.turn_end[:, 1:]  # (B, S)
    return act, a, r, end


def step_discount(end: Tensor, gamma: float, mode: Literal["turn", "token"]) -> Tensor:
    """Per-step discount ``d_i`` (§1.7): γ at every step ("token", the original's) or only at
    the last token of an action turn ("turn", the paper's and our default)."""
    if mode == "token":
        return torch.full(end.shape, float(gamma), device=end.device)
    if mode == "turn":
        return torch.where(end.bool(), float(gamma), 1.0).to(torch.float32)
    raise ValueError(f"discount_mode must be 'turn' or 'token', got {mode!r}")


def next_step_index(act: Tensor) -> Tensor:
    """(B, S) bool -> (B, S) long: the next decision slot ``j > i`` in the row, or -1 if none.

    Gathers instead of the original's dense (B·T)² pairing matrices; exact for chains too.
    """
    B, S = act.shape
    arange = torch.arange(S, device=act.device).expand(B, S)
    pos = torch.where(act, arange, S)  # non-steps -> sentinel S
    at_or_after = pos.flip(1).cummin(1).values.flip(1)  # first step at index >= i
    nxt = torch.cat([at_or_after[:, 1:], torch.full((B, 1), S, device=act.device)], 1)
    return torch.where(nxt == S, -1, nxt)


def next_state_value(v_steps: Tensor, act: Tensor, v_boot: Tensor) -> Tensor:
    """V of each step's next state: the next step's V in the row, else the row's bootstrap.

    ``v_steps`` (B, S) without grad, ``act`` (B, S), ``v_boot`` (B,) already × (1 - terminal).
    """
    nxt = next_step_index(act)  # (B, S)
    v_next = v_steps.gather(1, nxt.clamp(min=0))  # (B, S)
    return torch.where(nxt >= 0, v_next, v_boot[:, None].to(v_steps.dtype))  # (B, S)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``x`` over ``mask`` divided by the count (pooled over the batch, as the original).

    Raises :class:`EmptyActionBatch` instead of returning NaN when the mask is empty.
    """
    n = mask.sum()
    if n == 0:
        raise EmptyActionBatch("no action tokens in batch")
    return (x * mask).sum() / n


def step_mean(x: Tensor) -> Tensor:
    """Mean of per-step values already gathered at the batch's ``n`` action steps, ``(n,)``.

    ``masked_mean`` with an all-true mask: the same pooled mean and the same empty-batch error.
    """
    return masked_mean(x, torch.ones_like(x, dtype=torch.bool))


def returns_to_go(r: Tensor, d: Tensor) -> Tensor:
    """``G_k = r_k + d_k · G_{k+1}`` over one episode's K action steps, (K,) -> (K,)."""
    G = torch.empty_like(r)
    acc = torch.zeros((), dtype=r.dtype)
    for k in reversed(range(len(r))):
        acc = r[k] + d[k] * acc
        G[k] = acc
    return G


def gae(r: Tensor, v: Tensor, d: Tensor, lam: Tensor, v_boot: float | Tensor) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over one episode's K action steps (§1.7).

    ``v_boot`` is the value after the last step, already × (1 - terminal). Returns the
    advantages and the value targets ``A + v``, both (K,).
    """
    A = torch.empty_like(r)
    next_v = torch.as_tensor(v_boot, dtype=r.dtype)
    next_a = torch.zeros((), dtype=r.dtype)
    for k in reversed(range(len(r))):
        delta = r[k] + d[k] * next_v - v[k]
        next_a = delta + d[k] * lam[k] * next_a
        A[k], next_v = next_a, v[k]
    return A, A + v


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, alpha: float) -> None:
    """``θ̄ ← (1 − α) θ̄ + α θ`` parameter by parameter (§2.4); buffers are copied."""
    for tp, p in zip(target.parameters(), online.parameters(), strict=True):
        tp.lerp_(p, alpha)
    for tb, b in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(b)


def make_optimizer(
    params: Sequence[nn.Parameter] | Any,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW(0.9, 0.95), eps 1e-8, no weight decay: §2.4 (the original BC used Adafactor)."""
    return torch.optim.AdamW(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Constant learning rate after an optional linear warmup (§2.4)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (one call, as minGPT's ``set_seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def disable_dropout(module: nn.Module) -> None:
    """Dropout 0 in every RL forward pass, targets included (§2.4; the original left it on)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    config = getattr(module, "config", None)
    for name in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "dropout"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)


# --------------------------------------------------------------------------------------------
# 2. Loop plumbing: config, run directory, logging, checkpoints
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every offline method (BC, filtered BC, MC Returns, ILQL)."""

    task: str = "Maze-FO-v0"
    """Task id: selects the env's context window for rendering, and the env for evaluation."""
    data: str = ""
    """Dataset directory (JSONL shards + manifest.json) or a single JSONL file."""
    out: str | None = None
    """Run directory. Default: runs/<task>__<algo>__<seed>__<time>/."""
    resume: str | None = None
    """Continue the run in this directory from its last checkpoint, with its saved config."""
    seed: int = 1
    """Seed of initialisation, episode split, batch order and dropout."""
    model: str = "gpt2-mini"
    """Model preset name (lmrlgym.models.factory.PRESETS) or a local/hub path for
    AutoModelForCausalLM."""
    init_from: str | None = None
    """A finished run directory to start from (model and tokenizer); RL methods start from the
    task's BC run (ALGORITHMS.md §2.1)."""
    vocab_size: int = 1024
    """Size of the byte-level BPE tokenizer trained on the dataset text (new runs only)."""
    max_context_tokens: int = 256
    """Prompt budget P (render and inference); Maze-FO original: 256 (ALGORITHMS.md §3.1)."""
    max_new_tokens: int = 8
    """Per-turn generation cap M at evaluation; Maze original BC eval: 8 (§4.1)."""
    batch_size: int = 128
    """Rows per optimizer step (before grad_accum splits it); paper Table 3: 128."""
    grad_accum: int = 1
    """Microbatches per optimizer step; each holds batch_size / grad_accum rows."""
    epochs: int = 1
    """Passes over the training rows (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; default: epochs × steps per epoch."""
    lr: float = 1e-4
    """AdamW learning rate, constant after warmup; paper Table 3: 1e-4."""
    warmup_steps: int = 0
    """Linear warmup steps (§2.4: optional, off by default)."""
    weight_decay: float = 0.0
    """AdamW weight decay (§2.4: 0)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm at this value (§2.4, ours; the original RL did not clip)."""
    val_fraction: float = 0.05
    """Fraction of episodes held out (seeded split by episode) for eval/loss."""
    skip_bad: bool = False
    """Skip malformed dataset lines (reporting how many) instead of failing."""
    log_every: int = 10
    """Optimizer steps between metric lines."""
    eval_every: int = 0
    """Optimizer steps between validation (and env evaluation); 0: only at the end."""
    eval_episodes: int = 0
    """Env episodes per evaluation (task protocol seeds); 0: no env evaluation."""
    temperature: float = 1.0
    """Sampling temperature at evaluation (§4.1: ancestral sampling at 1.0)."""
    greedy: bool = False
    """Greedy decoding at evaluation (results are labelled; §4.1)."""
    save_every: int = 200
    """Optimizer steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    tensorboard: bool = True
    """Also write TensorBoard events (when tensorboard is installed)."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "epochs", "max_context_tokens", "max_new_tokens",
                    "log_every", "save_every", "keep_checkpoints", "vocab_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"--batch-size {self.batch_size} is not a multiple of "
                             f"--grad-accum {self.grad_accum}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"--max-steps must be positive, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")


def config_to_json(config: Any) -> dict[str, Any]:
    return {"algo": config_algo(config), **dataclasses.asdict(config)}


def config_algo(config: Any) -> str:
    return type(config).ALGO


def run_dir_for(config: TrainConfig) -> Path:
    """``runs/<task>__<algo>__<seed>__<time>/`` (cleanrl's naming) unless ``--out`` is given."""
    if config.out:
        return Path(config.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.task}__{config_algo(config)}__{config.seed}__{stamp}"


def write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


class MetricsLogger:
    """One flat dict of namespaced scalars per call, appended to ``metrics.jsonl`` (and
    TensorBoard when available, imported lazily)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional extra: `pip install "lmrlgym[tensorboard]"`
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log(self, step: int, metrics: dict[str, float | Tensor]) -> dict[str, float]:
        flat = {k: float(v.detach().item() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **flat}) + "\n")
        if self._tb is not None:
            for k, v in flat.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        return flat

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file reads as one run."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class MetricsMean:
    """Averages per-microbatch metrics over a logging interval."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float | Tensor]) -> None:
        for k, v in metrics.items():
            v = float(v.detach().item() if isinstance(v, Tensor) else v)
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out


# --- checkpoints -------------------------------------------------------------------------------

CKPT_DIR = "checkpoints"
LATEST = "latest"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: Path, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
    extra: dict[str, Any], keep: int,
) -> Path:
    """Write ``checkpoints/step_<N>/`` atomically: build it in a temp dir, rename it, then
    point ``checkpoints/latest`` at it. A kill at any moment leaves the previous one intact."""
    from safetensors.torch import save_model

    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp_"))
    try:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / "state.pt")
        write_json_atomic(tmp / "meta.json", {"step": step, **extra})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd, ptr = tempfile.mkstemp(dir=root, prefix=".latest.")
    with os.fdopen(fd, "w") as f:
        f.write(final.name + "\n")
    os.replace(ptr, root / LATEST)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    ptr = Path(run_dir) / CKPT_DIR / LATEST
    if not ptr.exists():
        return None
    path = ptr.parent / ptr.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{ptr} points at {path.name}, which does not exist")
    return path


def load_checkpoint(
    path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states; returns the checkpoint's meta (step, ...)."""
    from safetensors.torch import load_model

    for name, module in modules.items():
        load_model(module, str(path / f"{name}.safetensors"))
    state = torch.load(path / "state.pt", weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return json.loads((path / "meta.json").read_text())


# --- data: episodes -> split -> rows -> minibatches --------------------------------------------


def split_episodes(episodes: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split by episode (never by row, so no episode leaks across the split)."""
    order = list(range(len(episodes)))
    random.Random(seed).shuffle(order)
    n_val = math.floor(val_fraction * len(episodes))
    if val_fraction > 0 and n_val == 0 and len(episodes) > 1:
        n_val = 1
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [episodes[i] for i in train], [episodes[i] for i in val]


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


def total_steps(config: TrainConfig, n_rows: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` passes over the rows."""
    if config.max_steps is not None:
        return config.max_steps
    micro = config.batch_size // config.grad_accum
    return math.ceil(config.epochs * math.ceil(n_rows / micro) / config.grad_accum)
