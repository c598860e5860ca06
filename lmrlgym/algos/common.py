"""Helpers shared by every training loop (docs/algorithms.md §1.6-1.9, §2.4).

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
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lmrlgym.algos import distributed
from lmrlgym.data.io import write_json

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
    task's BC run (docs/algorithms.md §2.1)."""
    vocab_size: int = 1024
    """Size of the byte-level BPE tokenizer trained on the dataset text (new runs only)."""
    max_context_tokens: int = 256
    """Prompt budget P (render and inference); Maze-FO original: 256 (docs/algorithms.md §3.1)."""
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
    """Torch device (under torchrun/accelerate, ``cuda`` means each rank's own GPU)."""
    lora: str | None = None
    """Train LoRA adapters instead of all LM weights (PEFT), e.g. ``r=16,alpha=32`` or
    ``r=8,alpha=16,dropout=0.05,targets=c_attn|c_proj``; value heads stay fully trainable."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Run training forwards under torch.autocast in this dtype (weights and optimizer stay fp32)."""
    data_parallel: Literal["ddp", "fsdp"] = "ddp"
    """How the ranks of a torchrun/accelerate job hold the model: ``ddp`` replicates it;
    ``fsdp`` shards each transformer block's weights, gradients and optimizer state over the
    ranks (FSDP2), for models whose training state does not fit one device. No effect in one
    process."""
    dist_timeout: float = 1800.0
    """Seconds a collective waits for the other ranks under torchrun/accelerate before failing."""

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
        if self.lora is not None:
            from lmrlgym.models.lora import parse_lora

            parse_lora(self.lora)  # a bad spec fails before any work
        if self.dist_timeout <= 0:
            raise ValueError(f"--dist-timeout must be positive, got {self.dist_timeout}")
        if self.data_parallel == "fsdp" and self.mixed_precision == "fp16":
            raise ValueError("--data-parallel fsdp with --mixed-precision fp16: the fp16 gradient "
                             "scaler would check only this rank's gradient shards; use bf16")
        if self.data_parallel == "fsdp" and self.lora is not None:
            raise ValueError("--data-parallel fsdp with --lora: not supported (LoRA's frozen base "
                             "has no gradients or optimizer state to shard); use ddp")


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


class MetricsLogger:
    """One flat dict of namespaced scalars per call, appended to ``metrics.jsonl`` (and
    TensorBoard when available, imported lazily). Under torchrun only rank 0 writes."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.writes = distributed.is_main()
        self._tb = None
        if tensorboard and self.writes:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional extra: `pip install "lmrlgym[tensorboard]"`
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log(self, step: int, metrics: dict[str, float | Tensor]) -> dict[str, float]:
        flat = {k: float(v.detach().item() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
        if not self.writes:
            return flat
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **flat}) + "\n")
        if self._tb is not None:
            for k, v in flat.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        return flat

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file reads as one run."""
        if not self.writes or not self.path.exists():
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
    point ``checkpoints/latest`` at it. A kill at any moment leaves the previous one intact.
    Under torchrun only rank 0 writes (the ranks hold the same weights)."""

    root = run_dir / CKPT_DIR
    final = root / f"step_{step:08d}"
    # Under FSDP every rank gathers the full weights and optimizer state (collectives).
    states = {name: distributed.full_state_dict(module) for name, module in modules.items()}
    optimizer_state = distributed.full_optimizer_state(optimizer)
    if not distributed.is_main():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp_"))
    try:
        for name, state in states.items():
            save_state(state, tmp / f"{name}.safetensors")
        torch.save({"optimizer": optimizer_state, "rng": rng_state()}, tmp / "state.pt")
        write_json(tmp / "meta.json", {"step": step, **extra})
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


def save_state(state: dict[str, Tensor], path: Path) -> None:
    """A module's state dict as safetensors, the way ``safetensors.torch.save_model`` writes it:
    of tensors sharing memory (GPT-2's tied ``lm_head``/``wte``) only the first name is kept
    (``load_model`` restores the others), recorded in the metadata."""
    from safetensors.torch import save_file

    kept: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, Tensor] = {}
    metadata: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in kept:
            metadata[name] = kept[key]
        else:
            kept[key] = name
            out[name] = t.contiguous()
    save_file(out, str(path), metadata=metadata or None)


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


# --- per-task presets ---------------------------------------------------------------------------

DIALOGUE = ("TwentyQuestions-v0", "GuessCity-v0", "CarDealer-v0")
TEXTNAV = ("TextNav-FO-v0", "TextNav-PO-v0")
MAZE = ("Maze-FO-v0", "Maze-PO-v0")
CHESS = ("Chess-v0", "Endgames-v0")

# (P = max_context_tokens, M = max_new_tokens) per task: the original's lengths (§3.1, §4.1).
TASK_LENGTHS: dict[str, dict[str, int]] = {
    "Maze-FO-v0": {"max_context_tokens": 256, "max_new_tokens": 8},
    "Maze-PO-v0": {"max_context_tokens": 1024, "max_new_tokens": 16},
    "Chess-v0": {"max_context_tokens": 256, "max_new_tokens": 16},
    "Endgames-v0": {"max_context_tokens": 150, "max_new_tokens": 10},
    "TwentyQuestions-v0": {"max_context_tokens": 1024, "max_new_tokens": 128},
    "GuessCity-v0": {"max_context_tokens": 1024, "max_new_tokens": 128},
    "CarDealer-v0": {"max_context_tokens": 512, "max_new_tokens": 128},
    "Wordle-v0": {"max_context_tokens": 2048, "max_new_tokens": 128},
    "TextNav-FO-v0": {"max_context_tokens": 2048, "max_new_tokens": 128},
    "TextNav-PO-v0": {"max_context_tokens": 2048, "max_new_tokens": 128},
}


def expand_tasks(table: dict[tuple[str, ...] | str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{("A", "B"): x, "C": y}`` -> ``{"A": x, "B": x, "C": y}``."""
    out: dict[str, dict[str, Any]] = {}
    for tasks, values in table.items():
        for task in (tasks,) if isinstance(tasks, str) else tasks:
            out[task] = values
    return out


def task_preset(cls: type, task: str, table: dict[str, dict[str, Any]], **overrides: Any) -> Any:
    """The config of one (task, method) cell: class defaults, then the task's lengths and the
    method's per-task paper values, then ``overrides``."""
    return cls(task=task, **{**TASK_LENGTHS.get(task, {}), **table.get(task, {}), **overrides})


# --- the training loop's plumbing ----------------------------------------------------------------

CONFIG_FILE = "config.json"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
HEADS_FILE = "heads.safetensors"


def start_run(config: TrainConfig) -> tuple[TrainConfig, Path, Path | None]:
    """Resolve the run directory and config; returns ``(config, run_dir, checkpoint or None)``.

    ``--resume DIR`` reloads DIR's saved config (flags other than ``--resume`` are ignored, so
    the resumed run is the same run) and its last checkpoint. A new run refuses a directory
    that already holds a run. Under torchrun/accelerate, rank 0 creates the directory and
    every rank uses it (``algos/distributed.py``).
    """
    world = distributed.init_distributed(config.device, config.dist_timeout)
    config = dataclasses.replace(config, device=distributed.device_for(config.device))
    if world.enabled and not config.resume and config.data and not config.out:
        config = dataclasses.replace(config, out=str(distributed.broadcast_object(run_dir_for(config))))
    if config.resume:
        run_dir = Path(config.resume)
        saved = run_dir / CONFIG_FILE
        if not saved.exists():
            raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_FILE} (not a run directory)")
        fields = json.loads(saved.read_text())
        algo = fields.pop("algo", None)
        if algo != config_algo(config):
            raise ValueError(f"--resume {run_dir}: the run is {algo!r}, not {config_algo(config)!r}")
        config = type(config)(**{**fields, "resume": str(run_dir)})
        config = dataclasses.replace(config, device=distributed.device_for(config.device))
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume {run_dir}: no checkpoint yet; start it again")
        return config, run_dir, ckpt
    if not config.data:
        raise ValueError("--data is required (a dataset directory or JSONL file)")
    run_dir = run_dir_for(config)
    with distributed.main_first():
        if distributed.is_main():
            if (run_dir / CONFIG_FILE).exists():
                raise FileExistsError(f"{run_dir} already holds a run; pass --resume {run_dir} or a new --out")
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / CONFIG_FILE, config_to_json(config))
    return config, run_dir, None


@dataclasses.dataclass
class Data:
    """A rendered dataset: the tokenizer and the training and validation rows."""

    tokenizer: Any
    train_rows: list
    val_rows: list
    metrics: dict[str, float]  # logged once at step 0 (split sizes, filtering)

    @property
    def n_vocab(self) -> int:
        return len(self.tokenizer)


def context_fn(task: str, env_kwargs: dict[str, Any] | None = None) -> Any:
    """The env's ``context_turns`` (its window). Built from an instance, because one class can
    serve several ids with different windows (Maze FO: latest observation; PO: 40 turns)."""
    from lmrlgym.registry import make

    env = make(task, **dict(env_kwargs or {}))
    try:
        return env.context_turns
    finally:
        env.close()


def prepare_data(
    config: TrainConfig, run_dir: Path, gamma: float = 1.0, discount_mode: str = "turn",
    truncation_is_terminal: bool = False, select: Any = None,
) -> Data:
    """Episodes -> seeded split by episode -> (optional ``select`` on the training split) ->
    tokenizer (trained on the training text, or the run's/``init_from``'s) -> rendered rows."""
    from lmrlgym.data.io import read_episodes
    from lmrlgym.models.render import TokenCache, render

    episodes, skipped = read_episodes(config.data, skip_bad=config.skip_bad)
    if skipped:
        print(f"{config.data}: skipped {skipped} malformed lines (--skip-bad)", file=sys.stderr)
    if not episodes:
        raise ValueError(f"{config.data}: the dataset has no episodes")
    other = sorted({e.task for e in episodes} - {config.task})
    if other:
        raise ValueError(f"{config.data}: episodes of {', '.join(other)}, but --task is {config.task}")
    train_eps, val_eps = split_episodes(episodes, config.val_fraction, config.seed)
    metrics: dict[str, float] = {"data/episodes": len(episodes), "data/skipped_lines": skipped,
                                 "data/train_episodes": len(train_eps), "data/val_episodes": len(val_eps)}
    if select is not None:
        train_eps, select_metrics = select(train_eps)
        metrics.update(select_metrics)
    tokenizer = load_or_train_tokenizer(config, run_dir, train_eps)
    window = context_fn(config.task)
    cache = TokenCache(tokenizer)

    def rows(eps: list) -> list:
        out = []
        for k, ep in enumerate(eps):
            segs = render(ep, tokenizer, window, config.max_context_tokens, gamma, discount_mode,
                          truncation_is_terminal=truncation_is_terminal, episode_id=k,
                          token_cache=cache)
            out.extend(s for s in segs if bool(s.action_mask.any()))
        return out

    data = Data(tokenizer, rows(train_eps), rows(val_eps), metrics)
    metrics.update({"data/train_rows": len(data.train_rows), "data/val_rows": len(data.val_rows)})
    return data


def load_or_train_tokenizer(config: TrainConfig, run_dir: Path, episodes: list) -> Any:
    """The run's own tokenizer when resuming, ``init_from``'s, or one trained on the episodes'
    text; saved in ``<run>/tokenizer`` with the run (atomic: temp dir + rename)."""
    from lmrlgym.models.tokenizer import load_tokenizer, train_tokenizer

    own = run_dir / TOKENIZER_DIR
    with distributed.main_first():  # rank 0 trains and saves it; the other ranks load it
        if own.exists():
            return load_tokenizer(own)
        if config.init_from:
            tokenizer = load_tokenizer(Path(config.init_from) / TOKENIZER_DIR)
        else:
            texts = (t.text for ep in episodes for t in ep.turns)
            tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size)
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".tokenizer."))
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, own)
        return tokenizer


def build_lm(config: TrainConfig, tokenizer: Any, dropout: float | None = None) -> nn.Module:
    """The causal LM: ``init_from``'s exported model, else ``--model`` (a preset or a path).
    Rows never exceed ``P + M`` plus one env turn, so the preset's position table is kept.
    An ``init_from`` LoRA run's adapter is merged in; ``--lora`` then adds fresh adapters."""
    from lmrlgym.models import lora

    source = str(Path(config.init_from) / MODEL_DIR) if config.init_from else config.model
    # from_pretrained returns eval mode; training mode keeps the model's dropout active (BC).
    lm = lora.build_model(source, tokenizer, merge=True, dropout=dropout).train()
    return lora.apply_lora(lm, config.lora) if config.lora else lm


def hidden_states(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states ``h`` (B, T, d), after the final norm: the LM head's input (§2.1).
    ``base_model`` is the trunk of every Hugging Face causal LM (GPT-2's ``transformer``)."""
    return lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def last_token_states(lm: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """``h`` at the last real token of each right-padded row, (B, d)."""
    h = hidden_states(lm, ids, mask)  # (B, T, d)
    last = mask.sum(1) - 1  # (B,)
    return h[torch.arange(h.shape[0]), last.clamp(min=0)]


class Loop:
    """The outer loop shared word for word by every offline method: step schedule, resume,
    learning rate, clipping, logging, validation, evaluation, checkpoints and export.

    Each ``train()`` owns the forward pass and the loss; this owns everything around them.
    """

    def __init__(
        self, config: TrainConfig, run_dir: Path, data: Data, modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer, checkpoint: Path | None,
        validate: Any = None, make_policy: Any = None, export: Any = None,
        select_best: bool = False, progress: Any = None,
    ):
        self.config, self.run_dir, self.data = config, run_dir, data
        self.modules, self.optimizer = modules, optimizer
        self.validate, self.make_policy, self.export = validate, make_policy, export
        self.micro = config.batch_size // config.grad_accum
        self.schedule = BatchSchedule(len(data.train_rows), self.micro, config.seed)
        self.n_steps = total_steps(config, len(data.train_rows))
        self.logger = MetricsLogger(run_dir, config.tensorboard)
        self.pad_id = data.tokenizer.pad_token_id
        self.select_best = select_best
        self.best = math.inf  # lowest eval/loss so far (select_best)
        self.start = 0
        if checkpoint is not None:
            meta = load_checkpoint(checkpoint, modules, optimizer)
            self.start, self.best = meta["step"], meta.get("best_eval_loss", math.inf)
            self.logger.truncate_after(self.start)
        # Identity in one process; under torchrun: rank 0's weights, shards, global metrics,
        # and with --data-parallel fsdp the sharded blocks (the optimizer is re-pointed at them).
        self.parallel = distributed.DataParallel(modules, config.seed, optimizer,
                                                 config.data_parallel, config.device)
        self.params = [p for p in optimizer.param_groups[0]["params"]]
        self.mean = MetricsMean()
        self.tokens, self.t0 = 0, time.perf_counter()
        self.epoch = 0.0
        self.progress = progress if distributed.is_main() else None  # the CLI's progress bar
        self.amp = distributed.MixedPrecision(config.mixed_precision, config.device)

    def steps(self) -> Iterator[int]:
        """Optimizer step indices still to run (after the checkpoint when resuming)."""
        if self.start == 0:
            self.logger.log(0, self.data.metrics)
        return iter(range(self.start, self.n_steps))

    def microbatches(self, step: int) -> Iterator[Any]:
        """The ``grad_accum`` collated microbatches of optimizer step ``step``."""
        from lmrlgym.models.render import collate

        for j in range(self.config.grad_accum):
            epoch, idx = self.schedule(step * self.config.grad_accum + j)
            self.epoch = epoch + (idx[0] if len(idx) else 0) / max(self.schedule.n_rows, 1)
            idx = self.parallel.shard(idx)  # this rank's slice of the global microbatch
            batch = collate([self.data.train_rows[i] for i in idx], self.pad_id)
            with self.amp.autocast():
                yield batch.to(self.config.device)

    def backward(self, loss: Tensor, metrics: dict[str, Tensor], batch: Any) -> None:
        """Accumulate the gradient of one microbatch (each weighs 1/grad_accum). Under
        torchrun the loss is weighted by this rank's share of the action tokens and the metrics
        are the global batch's."""
        loss, metrics, attended = self.parallel.weigh(loss, metrics, batch.n_action_tokens,
                                                      int(batch.attention_mask.sum()))
        self.amp.backward(loss / self.config.grad_accum)
        self.mean.add(metrics)
        self.tokens += attended

    def optimizer_step(self, step: int) -> None:
        """Learning rate, gradient clipping at ``grad_clip`` and one AdamW step (§2.4)."""
        lr = lr_at(step, self.config.lr, self.config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # FSDP: free gathered weights (no-grad passes keep them), so the step and any Polyak
        # update after it act on the shards and the next forward gathers the new values.
        distributed.free_blocks(self.parallel.blocks)
        distributed.sync_grads(self.params)  # average over ranks (no-op in one process)
        self.amp.unscale(self.optimizer)
        grad_norm = distributed.clip_grad_norm(self.params, self.config.grad_clip)
        self.amp.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.mean.add({"train/lr": lr, "train/grad_norm": grad_norm})

    def end_step(self, step: int) -> None:
        """Log every ``log_every`` steps, validate/evaluate every ``eval_every``, checkpoint
        every ``save_every`` (and always after the last step)."""
        done = step + 1
        last = done == self.n_steps
        if done % self.config.log_every == 0 or last:
            elapsed = time.perf_counter() - self.t0
            metrics = {**self.mean.pop(), "train/epoch": self.epoch,
                       "time/tokens_per_s": self.tokens / max(elapsed, 1e-9)}
            self.tokens, self.t0 = 0, time.perf_counter()
            self.logger.log(done, metrics)
            if self.progress is not None:
                self.progress(done, self.n_steps, metrics)
        if (self.config.eval_every and done % self.config.eval_every == 0) or last:
            metrics = self.evaluate()
            self.logger.log(done, metrics)
            if self.select_best and metrics.get("eval/loss", math.inf) < self.best:
                self.best = metrics["eval/loss"]
                self.export(self.run_dir)  # the best model so far is the exported one
        if done % self.config.save_every == 0 or last:
            save_checkpoint(self.run_dir, done, self.modules, self.optimizer,
                            {"n_steps": self.n_steps, "best_eval_loss": self.best},
                            self.config.keep_checkpoints)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``eval/loss`` on the validation rows and, with ``eval_episodes``, env evaluation.
        Rank 0 evaluates (on full weights, gathered by every rank under FSDP) while the others
        wait; every rank returns rank 0's metrics, so all take the same ``select_best`` path."""
        with self.parallel.gathered():
            out = self._evaluate() if distributed.is_main() else {}
        return distributed.broadcast_object(out)

    def _evaluate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        modes = {name: m.training for name, m in self.modules.items()}
        for m in self.modules.values():
            m.eval()
        try:
            if self.validate is not None and self.data.val_rows:
                out.update(self.validation_loss())
            if self.config.eval_episodes > 0 and self.make_policy is not None:
                from lmrlgym.eval.evaluate import evaluate

                # seed 0: the task's fixed protocol, shared by every method (paired comparisons).
                result = evaluate(self.make_policy(), self.config.task, self.config.eval_episodes)
                out.update(eval_metrics(result, self.config))
        finally:
            for name, m in self.modules.items():
                m.train(modes[name])
        return out

    def validation_loss(self) -> dict[str, float]:
        """Token-weighted means of the loss metrics over the validation rows, as ``eval/*``."""
        from lmrlgym.models.render import collate

        sums: dict[str, float] = {}
        weight = 0
        rows = self.data.val_rows
        for i in range(0, len(rows), self.micro):
            batch = collate(rows[i : i + self.micro], self.pad_id).to(self.config.device)
            n = batch.n_action_tokens
            for k, v in self.validate(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            weight += n
        return {k.replace("train/", "eval/"): v / weight for k, v in sums.items()}

    def finish(self) -> Path:
        """Export the final model (``model/``, ``tokenizer/`` and, for value methods,
        ``heads.safetensors``) for ``load_policy`` and ``lmrlgym eval --run``."""
        self.logger.close()
        if self.export is not None and not (self.select_best and math.isfinite(self.best)):
            self.export(self.run_dir)
        distributed.cleanup()  # every rank waits for rank 0's export, then leaves the group
        return self.run_dir


def eval_metrics(result: Any, config: TrainConfig) -> dict[str, float]:
    """The ``eval/*`` scalars of an evaluation (``EvalResult.metrics``), plus ``eval/beta`` for
    value-guided decoding."""
    metrics = dict(result.metrics)
    if hasattr(config, "beta"):
        metrics["eval/beta"] = float(config.beta)
    return metrics


def export_lm(lm: nn.Module, tokenizer: Any, run_dir: Path, heads: dict[str, nn.Module] | None = None) -> None:
    """Write ``model/`` (Hugging Face ``save_pretrained``), and the heads' weights, atomically.
    A LoRA model writes its frozen base there and the adapter in ``model/adapter/`` (PEFT
    format). Rank 0 only under torchrun/accelerate."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    from lmrlgym.models import lora

    # Under FSDP every rank gathers the full weights (collectives); rank 0 writes them.
    state = distributed.full_state_dict(lm)
    head_states = {name: distributed.full_state_dict(head) for name, head in (heads or {}).items()}
    if not distributed.is_main():
        return
    hf_logging.disable_progress_bar()  # progress bars belong to the CLI layer
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".model."))
    if lora.is_lora(lm):
        lora.save_pretrained(lm, tmp)
    else:
        lm.save_pretrained(str(tmp), state_dict=state)
    tokenizer.save_pretrained(str(tmp))
    if (run_dir / MODEL_DIR).exists():
        shutil.rmtree(run_dir / MODEL_DIR)
    os.replace(tmp, run_dir / MODEL_DIR)
    if heads:
        state = {f"{name}.{k}": v.detach().contiguous() for name, head_state in head_states.items()
                 for k, v in head_state.items()}
        fd, tmp_file = tempfile.mkstemp(dir=run_dir, prefix=".heads.")
        os.close(fd)
        save_file(state, tmp_file)
        os.replace(tmp_file, run_dir / HEADS_FILE)


def lm_policy(lm: nn.Module, tokenizer: Any, config: TrainConfig, logits_adjust: Any = None,
              **decoding: Any) -> Any:
    """The evaluation policy of a run: ancestral sampling (or greedy) from the LM, value-guided
    by ``logits_adjust`` for MC/ILQL (§3.5). ``decoding`` overrides the run's settings."""
    from lmrlgym.models.policy import LMPolicy

    settings = dict(context_turns=context_fn(config.task),
                    max_context_tokens=config.max_context_tokens,
                    max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                    greedy=config.greedy, name=config_algo(config))
    return LMPolicy(lm, tokenizer, logits_adjust=logits_adjust, **{**settings, **decoding})


def load_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved config of a run directory, as its algorithm's config class."""
    from lmrlgym.algos.cli import ALGORITHMS, algorithm

    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG_FILE} (not a training run directory)")
    fields = json.loads(path.read_text())
    algo = fields.pop("algo", None)
    if algo not in ALGORITHMS:
        raise ValueError(f"{path}: unknown algo {algo!r}; valid: {', '.join(ALGORITHMS)}")
    return algorithm(algo).CONFIG(**fields)


def load_policy(run_dir: str | os.PathLike, beta: float | None = None, device: str = "cpu",
                **decoding: Any) -> Any:
    """An ``LMPolicy`` from a finished run (``lmrlgym eval --run``): the exported ``model/``
    and ``tokenizer/``, value-guided with the run's heads and β for MC and ILQL (§3.5).

    ``beta`` overrides the run's β; ``decoding`` overrides ``LMPolicy`` settings
    (``temperature``, ``greedy``, ``top_k``, ``max_new_tokens``, ``seed``, ...).
    """
    from safetensors.torch import load_file

    from lmrlgym.models.heads import make_head
    from lmrlgym.models.lora import build_model  # the factory's, plus a saved LoRA adapter
    from lmrlgym.models.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if not (run_dir / MODEL_DIR).is_dir():
        raise FileNotFoundError(f"{run_dir}: no exported {MODEL_DIR}/ (the run has not finished; "
                                f"resume it with --resume {run_dir})")
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
    lm = build_model(str(run_dir / MODEL_DIR), tokenizer).to(device).eval()
    adjust = None
    head_names = {"mc": ("q",), "ilql": ("q1", "q2", "v")}.get(config_algo(config), ())
    if head_names:
        state = load_file(str(run_dir / HEADS_FILE))
        d = lm.get_output_embeddings().in_features
        heads = nn.ModuleDict()
        for name in head_names:
            out = 1 if name == "v" else len(tokenizer)
            heads[name] = make_head(config.head, d, out)
            heads[name].load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                                         if k.split(".", 1)[0] == name})
        heads.to(device).eval()
        beta = config.beta if beta is None else float(beta)
        from lmrlgym.algos import ilql, mc

        adjust = (mc.mc_adjust(heads["q"], beta) if config_algo(config) == "mc"
                  else ilql.ilql_adjust(heads, beta))
        decoding.setdefault("name", f"{config_algo(config)}(beta={beta:g})")
    policy = lm_policy(lm, tokenizer, config, adjust, **decoding)
    if head_names:
        policy.beta = beta
    return policy
