"""Logging: one flat dict of namespaced scalars per call to ``metrics.jsonl`` (and TensorBoard),
and the running means of a logging interval."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from lmrlgym.algos import distributed
from lmrlgym.algos.rundir import METRICS_FILE, TB_DIR
from lmrlgym.data.io import atomic_write_text


class MetricsLogger:
    """One flat dict of namespaced scalars per call, appended to ``metrics.jsonl`` (and
    TensorBoard when available, imported lazily). Under torchrun only rank 0 writes."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / METRICS_FILE
        self.writes = distributed.is_main()
        self._tb = None
        if tensorboard and self.writes:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional extra: `pip install "lmrlgym[tensorboard]"`
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(run_dir / TB_DIR))

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
        if self.writes and self.path.exists():
            trim_jsonl(self.path, "step", lambda s: s <= step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def trim_jsonl(path: Path, key: str, keep: Callable[[Any], bool],
               write: bool = True) -> list[dict[str, Any]]:
    """The records of a JSONL log (``metrics.jsonl``, a replay buffer) whose ``key`` passes
    ``keep``, rewritten atomically to hold only those (with ``write``): on resume, what was
    logged after the checkpoint goes. Lines end at ``\\n`` only (JSON text may hold U+2028
    and other characters ``str.splitlines`` splits on); an unfinished last line (a kill
    mid-write) is dropped, any other unreadable line is an error naming it."""
    lines = path.read_bytes().split(b"\n")
    kept: list[tuple[bytes, dict[str, Any]]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            passes = keep(rec[key])
        except (ValueError, TypeError, KeyError, IndexError):
            if i == len(lines) - 1:  # no "\n" after it: a write that did not finish
                continue
            raise ValueError(f"{path}:{i + 1}: not a JSON object with {key!r}") from None
        if passes:
            kept.append((line, rec))
    if write:
        atomic_write_text(path, b"".join(ln + b"\n" for ln, _ in kept).decode("utf-8"))
    return [rec for _, rec in kept]


class MetricsMean:
    """Averages per-microbatch metrics over a logging interval. ``state`` and ``from_state``
    carry a part-way interval through a checkpoint, so a resumed run logs the same means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MetricsMean:
        mean = cls()
        mean.sums = {str(k): float(v) for k, v in state["sums"].items()}
        mean.counts = {str(k): int(v) for k, v in state["counts"].items()}
        return mean

    def add(self, metrics: dict[str, float | Tensor]) -> None:
        for k, v in metrics.items():
            v = float(v.detach().item() if isinstance(v, Tensor) else v)
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out

