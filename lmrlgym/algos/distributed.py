"""Data-parallel training under ``torchrun`` / ``accelerate launch``, with no change to the loops.

Every ``train()`` calls the same plumbing (``loop.start_run`` and ``loop.Loop`` for the
offline methods, ``online.start_online_run`` and ``online.collect_round`` for PPO and online
filtered BC); that plumbing calls the helpers here, which do nothing in a single process.
Under a launcher (``WORLD_SIZE > 1`` in the environment) they make the job behave as ONE
training run:

- **Same global batch.** Every rank draws the same seeded global microbatch and takes its
  contiguous slice (:func:`shard`), so W ranks see exactly the rows one process would.
- **Same gradient.** The losses are pooled means over the action tokens of the batch
  (docs/algorithms.md §1.6). Rank ``r`` scales its loss by ``W · n_r / N`` (``n_r`` its action
  tokens, ``N`` the global count) and the gradients are averaged over ranks, which gives
  ``Σ_r n_r ∇L_r / N``: the gradient of the pooled mean over the global batch. (Plain DDP
  averaging of per-rank means is only equal when every rank holds the same number of tokens.)
  The weights therefore match a single-process run up to float summation order.
- **Gradient sync** is an explicit bucketed all-reduce after the backward pass
  (:func:`sync_grads`), the arithmetic of ``DistributedDataParallel``. The loops call
  ``lm.base_model`` and separate heads directly, which bypasses a DDP wrapper's ``forward``
  (where DDP arms its reducer), so wrapping would silently not sync. The cost: no overlap of
  communication with the backward pass.
- **FSDP** (``--data-parallel fsdp``, offline methods): :func:`shard_blocks` applies FSDP2's
  ``fully_shard`` to each transformer block (their own hooks fire, unlike a root wrapper's),
  so the blocks' weights, gradients and AdamW state are split over the ranks; embeddings, the
  tied LM head and the value heads stay replicated and synced as above. Anything rank 0 does
  alone first gathers on every rank: checkpoints and the export write
  :func:`full_state_dict` / :func:`full_optimizer_state` (the single-process layout, so a run
  resumes with any number of processes, sharded or not), and evaluation runs inside
  :func:`gathered`. Gradient clipping uses the global norm over both kinds (:func:`clip_grad_norm`).
- **Online methods.** A round's episodes are cut into batches with their own sampling seeds;
  rank ``r`` plays batches ``r, r + W, ...`` and the ranks all-gather the episodes
  (:func:`all_gather_object`), so every rank holds the round a single process would play.
  Statistics over the round (advantage whitening, the KL controller, rollout metrics, episode
  selection) are computed from the whole round on every rank; PPO's no-grad scoring pass is
  split by episode and all-gathered; the update shards each microbatch as above.
- **Rank 0 only** writes the run directory, the tokenizer, logs, checkpoints and the export;
  the other ranks wait at barriers and read what rank 0 wrote. Logged metrics are global
  (token-weighted all-reduce), so ``metrics.jsonl`` reads like the single-process run's.
- **Seeds.** Initialisation and batch order use the run's seed on every rank (so the ranks
  start identical; rank 0's weights are also broadcast, as DDP does); dropout afterwards uses
  :func:`rank_seed`, so ranks draw different masks. Rank 0 keeps the run's seed.
- **Failures.** A rank that raises records its traceback for the launcher (torchrun's
  ``@record`` mechanism) and prints it prefixed with its rank; torchrun then stops the other
  ranks and exits non-zero naming the failed rank. Collectives time out after
  ``--dist-timeout`` seconds (a hung rank). Checkpoints are atomic renames written by rank 0,
  so the last finished one survives any failure.

Mixed precision (``--mixed-precision bf16|fp16``) runs each training microbatch's forward
under ``torch.autocast``; fp16 adds a gradient scaler. Master weights and optimizer state stay
fp32. The online methods train in fp32 and replicate the model (no FSDP).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

Precision = Literal["no", "bf16", "fp16"]
PRECISIONS = ("no", "bf16", "fp16")
Parallelism = Literal["ddp", "fsdp"]
PARALLELISMS = ("ddp", "fsdp")
_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size
_FAILURE_GRACE_S = 3.0  # see _collective


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()


def world_from_env(env: dict[str, str] | os._Environ = os.environ) -> World:
    """The world described by the launcher's variables (torchrun and ``accelerate launch``
    set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``).
    No ``WORLD_SIZE``, or 1: a single process."""
    if "WORLD_SIZE" not in env:
        return World()
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = env.get(name, "0" if name == "LOCAL_RANK" else None)
        if raw is None:
            raise RuntimeError(f"WORLD_SIZE is set but {name} is not: launch with torchrun or "
                               "accelerate launch, which set both")
        try:
            values[name] = int(raw)
        except ValueError:
            raise RuntimeError(f"environment variable {name}={raw!r} is not an integer") from None
    size, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size:
        raise RuntimeError(f"RANK={rank} is not in [0, WORLD_SIZE={size})")
    if size > 1:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not env.get(n)]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={size} but {' and '.join(missing)} not set: launch "
                               "with torchrun or accelerate launch")
    return World(rank=rank, world_size=size, local_rank=local)


def init_distributed(device: str = "cpu", timeout_s: float = 1800.0) -> World:
    """Join the launcher's process group (gloo on CPU, nccl on CUDA) if there is one; a no-op
    in a single process and when already initialised. Returns this process's :class:`World`."""
    global _WORLD
    import torch.distributed as dist

    world = world_from_env()
    if not world.enabled or (dist.is_available() and dist.is_initialized()):
        _WORLD = world
        return world
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    if timeout_s <= 0:
        raise ValueError(f"--dist-timeout must be positive, got {timeout_s}")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    _WORLD = world
    _record_failures(world)
    atexit.register(_destroy)
    return world


def _record_failures(world: World) -> None:
    """On an uncaught exception: print it prefixed with the rank and write torchrun's error
    file, so the launcher's summary names this rank and shows its traceback."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    handler = get_error_handler()
    handler.initialize()
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write("".join(f"[rank {world.rank}] {ln}\n" for ln in text.splitlines()))
        if isinstance(value, Exception):
            try:  # record_exception reads the traceback of the exception being handled
                raise value.with_traceback(tb)
            except Exception:
                with contextlib.suppress(Exception):
                    handler.record_exception(value)
        if previous is not sys.__excepthook__:  # the default would print it a second time
            previous(kind, value, tb)

    sys.excepthook = hook


def world() -> World:
    return _WORLD


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and logs."""
    return _WORLD.is_main


def rank_seed(seed: int, rank: int | None = None) -> int:
    """The seed of ``rank``'s random stream (dropout): the run's seed on rank 0 (so rank 0
    continues the single-process stream), distinct on the others."""
    rank = _WORLD.rank if rank is None else rank
    return seed + 1_000_003 * rank


def device_for(device: str) -> str:
    """``cuda`` (or ``cuda:N``) -> ``cuda:<LOCAL_RANK>`` under a launcher: one GPU per process."""
    if _WORLD.enabled and device.split(":")[0] == "cuda":
        return f"cuda:{_WORLD.local_rank}"
    return device


def shard(indices: Sequence[int] | np.ndarray, rank: int | None = None,
          world_size: int | None = None) -> tuple[np.ndarray, bool]:
    """This rank's contiguous slice of a global batch, and whether it holds real rows.

    Slices differ by at most one row. A global batch smaller than the world (an epoch's short
    last batch) leaves some ranks empty: they take the batch's first row with weight 0
    (``False``), so they still run the collectives but add nothing to the gradient.
    """
    rank = _WORLD.rank if rank is None else rank
    size = _WORLD.world_size if world_size is None else world_size
    idx = np.asarray(indices)
    part = np.array_split(idx, size)[rank]
    if len(part) == 0:
        return idx[:1], False
    return part, True


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a backend error (a peer died, or ``--dist-timeout`` ran out) into one that says
    which rank saw it and what to look at.

    The error is raised after a short wait: a peer's death closes its connections at once, and
    torchrun names as root cause the failure with the earliest error-file timestamp, in whole
    seconds. Without the wait this rank's own error often lands in the same second and, on a
    tie, the lower rank is named. Waiting lets the launcher see the first failure and stop
    this rank."""
    try:
        yield
    except RuntimeError as e:
        time.sleep(_FAILURE_GRACE_S)
        raise RuntimeError(
            f"rank {_WORLD.rank}/{_WORLD.world_size}: {what} failed: another rank died or hung "
            f"(a collective waits --dist-timeout seconds); see the launcher's summary for the "
            f"rank that failed first. Backend error: {e}") from e


def barrier() -> None:
    if _WORLD.enabled:
        import torch.distributed as dist

        with _collective("barrier"):
            dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a file); the others run it after, when what
    rank 0 wrote exists."""
    if not _WORLD.is_main:
        barrier()
    yield
    if _WORLD.is_main:
        barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; small objects only)."""
    if not _WORLD.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    with _collective("broadcast from rank 0"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled; rollouts and rows, not weights)."""
    if not _WORLD.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * _WORLD.world_size
    with _collective("all-gather of the ranks' rollouts"):
        dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_modules(modules: dict[str, nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP's start-up sync)."""
    if not _WORLD.enabled:
        return
    import torch.distributed as dist

    with _collective("broadcast of rank 0's weights"):
        for module in modules.values():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum over ranks (a copy; the input is untouched)."""
    out = values.clone()
    if _WORLD.enabled:
        import torch.distributed as dist

        with _collective("all-reduce of the batch's token counts and metrics"):
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def sync_grads(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients over ranks in flat buckets of ~25 MB (DDP's arithmetic).
    Parameters sharded by FSDP are skipped: their backward already reduce-scattered (averaged)
    the gradient into this rank's shard.

    Which parameters got a gradient is agreed first (one small all-reduce): a parameter with a
    gradient on some rank only gets zeros on the others, and one with none anywhere keeps
    ``None``, so the optimizer skips exactly what a single process would skip."""
    if not _WORLD.enabled:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    params = [p for p in params if p.requires_grad and not is_sharded(p)]  # FSDP syncs its own
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                       device=params[0].device)
    with _collective("gradient all-reduce"):
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
    synced_params = []
    for p, any_grad in zip(params, has.tolist(), strict=True):
        if any_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            synced_params.append(p)
    bucket: list[Tensor] = []
    size = 0
    for i, p in enumerate(synced_params):
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= _BUCKET_BYTES or i == len(synced_params) - 1:
            flat = _flatten_dense_tensors(bucket)
            with _collective("gradient all-reduce"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= _WORLD.world_size
            for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                g.copy_(synced)
            bucket, size = [], 0


# --- FSDP: sharded transformer blocks --------------------------------------------------------


def is_sharded(t: Tensor) -> bool:
    """A parameter, gradient or state tensor that FSDP sharded over the ranks (a ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def transformer_blocks(modules: dict[str, nn.Module]) -> list[nn.Module]:
    """The repeated transformer blocks of every model in ``modules`` (GPT-2's ``GPT2Block``):
    the classes a Hugging Face model lists in ``_no_split_modules``, which is also what
    ``accelerate``'s FSDP auto-wrap policy shards by default. Embeddings, the final norm, the
    (tied) LM head and the value heads are not blocks: they stay replicated."""
    names: set[str] = set()
    for module in modules.values():
        for sub in module.modules():
            names |= set(getattr(sub, "_no_split_modules", None) or ())
    seen: set[int] = set()
    blocks = []
    for module in modules.values():
        for sub in module.modules():
            if type(sub).__name__ in names and id(sub) not in seen:
                seen.add(id(sub))
                blocks.append(sub)
    return blocks


def shard_blocks(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                 device: str) -> list[nn.Module]:
    """FSDP2 (``fully_shard``) on each transformer block, then re-point ``optimizer`` (built on
    the unsharded parameters, as the loops do) at the sharded ones; optimizer state already
    loaded from a checkpoint is sliced the same way. Returns the sharded blocks.

    Why only the blocks: the loops call ``lm.base_model``, ``lm_head`` and the value heads
    directly, so a root-level wrapper's ``forward`` would never run; each block's own hooks do
    fire. Leaving the embeddings and ``lm_head`` unsharded keeps GPT-2's tied weights tied.

    ``reshard_after_forward=False`` (ZeRO-2's schedule): a block's weights are gathered by the
    first forward of a microbatch and freed after its backward (or by :func:`free_blocks`), so
    a rank may run extra no-grad forwards that the others skip (ILQL's bootstrap pass over the
    rows that have a next state) without a mismatched collective. Gradients and optimizer state
    stay sharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    blocks = transformer_blocks(modules)
    if not blocks:
        raise ValueError("--data-parallel fsdp: the model declares no transformer block class "
                         "(Hugging Face's _no_split_modules); use --data-parallel ddp")
    owner: dict[int, tuple[nn.Module, str]] = {}
    for module in modules.values():
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                owner.setdefault(id(p), (sub, name))
    mesh = init_device_mesh(torch.device(device).type, (_WORLD.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=False)
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            module, name = owner[id(p)]
            new = module._parameters[name]
            if new is not p:
                state = optimizer.state.pop(p, {})
                optimizer.state[new] = {
                    k: distribute_tensor(v, mesh, new.placements, src_data_rank=None)
                    if torch.is_tensor(v) and v.shape == p.shape and v.dim() > 0 else v
                    for k, v in state.items()}
            params.append(new)
        group["params"] = params
    return blocks


def free_blocks(blocks: Sequence[nn.Module]) -> None:
    """Drop the gathered weights of sharded blocks (local, no communication), so the next
    forward gathers the current shards (after an optimizer step or a Polyak update)."""
    for block in blocks:
        block.reshard()


@contextlib.contextmanager
def gathered(blocks: Sequence[nn.Module]) -> Iterator[None]:
    """Every rank gathers the full weights of the sharded blocks (a collective), so that rank 0
    alone can then run forwards (evaluation, validation) without the other ranks."""
    with _collective("FSDP all-gather of the full weights"):
        for block in blocks:
            block.unshard()
    try:
        yield
    finally:
        free_blocks(blocks)


def full_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with sharded tensors gathered into full ones. A collective
    under FSDP: every rank calls it, in the same order; other tensors are returned as they are."""
    state = module.state_dict()
    if not any(is_sharded(v) for v in state.values()):
        return state
    with _collective("FSDP gather of a state dict"):
        return {k: v.full_tensor() if is_sharded(v) else v for k, v in state.items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with sharded state gathered: the same layout as a single
    process's, so a checkpoint resumes with any number of processes, sharded or not. A
    collective under FSDP (every rank calls it)."""
    state = optimizer.state_dict()
    with _collective("FSDP gather of the optimizer state"):
        for key in sorted(state["state"]):
            state["state"][key] = {k: v.full_tensor() if is_sharded(v) else v
                                   for k, v in state["state"][key].items()}
    return state


@torch.no_grad()
def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over replicated and FSDP-sharded gradients: the
    sharded ones' squares are summed over ranks, so every rank gets the global norm."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [g for g in grads if not is_sharded(g)]
    local = sum((g.to_local().float().pow(2).sum() for g in sharded), torch.zeros(()))
    total = all_reduce_sum(local.to(sharded[0].device))
    total = (total + sum((g.float().pow(2).sum() for g in plain), torch.zeros((), device=total.device))).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        (g.to_local() if is_sharded(g) else g).mul_(coef.to(g.dtype))
    return total


class DataParallel:
    """What ``loop.Loop`` needs per microbatch: the shard, the loss weight and global
    metrics; with ``fsdp``, the sharded blocks. In a single process every method is the
    identity."""

    def __init__(self, modules: dict[str, nn.Module], seed: int,
                 optimizer: torch.optim.Optimizer | None = None, parallelism: str = "ddp",
                 device: str = "cpu") -> None:
        if parallelism not in PARALLELISMS:
            raise ValueError(f"--data-parallel must be one of {', '.join(PARALLELISMS)}, got {parallelism!r}")
        self.world = _WORLD
        self.real = True  # this rank's current microbatch holds real rows
        self.blocks: list[nn.Module] = []  # FSDP-sharded transformer blocks
        if self.world.enabled:
            broadcast_modules(modules)
            if parallelism == "fsdp":
                if optimizer is None:
                    raise ValueError("FSDP needs the optimizer, to re-point it at the shards")
                self.blocks = shard_blocks(modules, optimizer, device)
            if not self.world.is_main:  # dropout masks differ per rank (rank 0: the run's stream)
                torch.manual_seed(rank_seed(seed))

    def gathered(self) -> contextlib.AbstractContextManager:
        """Full weights on every rank for the block (a no-op unless sharded); see :func:`gathered`."""
        return gathered(self.blocks) if self.blocks else contextlib.nullcontext()

    def shard(self, idx: np.ndarray) -> np.ndarray:
        if not self.world.enabled:
            return idx
        part, self.real = shard(idx)
        return part

    def weigh(self, loss: Tensor, metrics: dict[str, Any], n_tokens: int,
              n_attended: int) -> tuple[Tensor, dict[str, float], int]:
        """``(loss · W n_r / N, the global token-weighted metrics, global attended tokens)``.

        One all-reduce of ``[n_r, n_attended, m_1 · n_r, ...]`` per microbatch; the metric
        names are the same on every rank (the same loss code runs on every rank)."""
        if not self.world.enabled:
            return loss, {**metrics, "train/action_tokens": n_tokens}, n_attended
        n = n_tokens if self.real else 0
        keys = list(metrics)
        vals = [float(metrics[k].detach() if isinstance(metrics[k], Tensor) else metrics[k]) for k in keys]
        local = torch.tensor([n, n_attended if self.real else 0, *(v * n for v in vals)],
                             dtype=torch.float64)
        total = all_reduce_sum(local.to(loss.device)).cpu()
        n_global = float(total[0])
        scaled = loss * (self.world.world_size * n / n_global)
        out = {k: float(total[2 + i]) / n_global for i, k in enumerate(keys)}
        out["train/action_tokens"] = n_global
        return scaled, out, int(total[1])


class MixedPrecision:
    """``torch.autocast`` for training forwards, and a gradient scaler for fp16."""

    def __init__(self, precision: str, device: str):
        if precision not in PRECISIONS:
            raise ValueError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision, self.device_type = precision, torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def backward(self, loss: Tensor) -> None:
        """The backward pass, outside autocast (PyTorch's advice: backward ops reuse the
        forward's dtypes anyway), scaled for fp16."""
        with torch.autocast(self.device_type, enabled=False):
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping: gradients back in true units."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (skipped by the fp16 scaler on inf/NaN gradients)."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def cleanup() -> None:
    """End of a training run: every rank waits here until rank 0 has written the export.

    The process group stays up for a further ``train()`` in the same process (re-creating it
    under torchrun would reuse the launcher's rendezvous keys); it is destroyed at exit."""
    barrier()


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
