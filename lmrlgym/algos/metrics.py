"""Logging: one flat dict of namespaced scalars per call to ``metrics.jsonl`` (and TensorBoard),
and the running means of a logging interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from lmrlgym.algos import distributed


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

