"""The offline methods' training loop (BC, filtered BC, MC Returns, ILQL): run start and
resume, the optimizer and its schedule, and the :class:`Loop` around each ``train()``'s
forward pass and loss (docs/algorithms.md §2.4).

Functions and one loop object, not base classes: each ``train()`` stays a readable
top-to-bottom loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lmrlgym.algos import distributed
from lmrlgym.algos.backbone import check_usable
from lmrlgym.algos.checkpoint import load_checkpoint, save_checkpoint
from lmrlgym.algos.config import TrainConfig, config_algo, config_to_json
from lmrlgym.algos.dataset import BatchSchedule, Data, read_dataset
from lmrlgym.algos.metrics import MetricsLogger, MetricsMean
from lmrlgym.algos.progress import Progress, counter, report
from lmrlgym.algos.rundir import (
    CONFIG_FILE,
    MODEL_DIR,
    TOKENIZER_DIR,
    clear_outputs,
    config_from_fields,
    is_restartable,
    latest_checkpoint,
    read_config,
    run_dir_for,
)
from lmrlgym.core import Episode
from lmrlgym.data.io import write_json
from lmrlgym.eval.evaluate import EvalResult, evaluate
from lmrlgym.eval.value_map import MAZE_TASKS, maze_value_map
from lmrlgym.models.policy import LMPolicy, ValueReadout
from lmrlgym.models.render import Batch, collate

# A dataset's episodes and how many malformed lines --skip-bad skipped.
Dataset = tuple[list[Episode], int]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (one call, as minGPT's ``set_seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(
    params: Iterable[nn.Parameter],
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


def start_run(config: TrainConfig,
              progress: Progress | None = None) -> tuple[TrainConfig, Path, Path | None, Dataset]:
    """Check the run (:func:`check_run`), then resolve its directory and config; returns
    ``(config, run_dir, checkpoint or None, (episodes, skipped lines))``.

    ``--resume DIR`` reloads DIR's saved config (flags other than ``--resume`` are ignored, so
    the resumed run is the same run) and its last checkpoint; a run without one starts again.
    A new run refuses a directory that holds a checkpointed run. Under torchrun/accelerate,
    rank 0 creates the directory and every rank uses it (``algos/distributed.py``).
    """
    world = distributed.init_distributed(config.device, config.dist_timeout)
    config = dataclasses.replace(config, device=distributed.device_for(config.device))
    if world.enabled and not config.resume and config.data and not config.out:
        config = dataclasses.replace(config, out=str(distributed.broadcast_object(run_dir_for(config))))
    if config.resume:
        run_dir = Path(config.resume)
        algo, fields = read_config(run_dir, "--resume ")
        if algo != config_algo(config):
            raise ValueError(f"--resume {run_dir}: the run is {algo!r}, not {config_algo(config)!r}")
        config = config_from_fields(type(config), {**fields, "resume": str(run_dir)},
                                    f"--resume {run_dir / CONFIG_FILE}")
        config = dataclasses.replace(config, device=distributed.device_for(config.device))
        check_resumable_paths(config, run_dir)
        ckpt = latest_checkpoint(run_dir)
        dataset = check_run(config, progress)
        if ckpt is None:  # it never got to a checkpoint: start it again
            with distributed.main_first():
                if distributed.is_main():
                    clear_outputs(run_dir)
        return config, run_dir, ckpt, dataset
    dataset = check_run(config, progress)
    config = absolute_paths(config)  # the saved config resumes from any working directory
    return config, create_run_dir(config), None, dataset


def check_run(config: TrainConfig, progress: Progress | None = None) -> Dataset:
    """Everything a run needs, checked before its directory is created, so a run that cannot
    start leaves nothing behind: usable lengths (:func:`check_usable`), the task (known, its
    dependencies installed), the model,
    ``init_from`` and the dataset, read here once (the lengths are checked by the config).
    Returns the dataset's ``(episodes, skipped lines)`` (empty for an online method)."""
    from lmrlgym.models.factory import check_model_source
    from lmrlgym.registry import spec

    task = spec(config.task)
    missing = task.missing()
    if missing:
        raise ImportError(f"--task {config.task} needs " + "; ".join(
            f"{r.name} ({r.install})" for r in missing))
    online = hasattr(config, "n_rounds")
    if config.init_from:
        init = Path(config.init_from)
        if not (init / MODEL_DIR).is_dir() or not (init / TOKENIZER_DIR).is_dir():
            flag = "--init" if online else "--init-from"
            raise FileNotFoundError(f"{flag} {init}: no {MODEL_DIR}/ and {TOKENIZER_DIR}/ "
                                    "(not a finished training run)")
    else:
        check_model_source(config.model)
    check_usable(config)  # settings the finished run could not use, before any compute
    if online:  # its optional dataset (PPO's BC term) is read when it is used
        if config.data and not Path(config.data).exists():
            raise FileNotFoundError(f"--data {config.data}: no such file or directory")
        return [], 0
    if not config.data:
        raise ValueError("--data is required (a dataset directory or JSONL file)")
    report(progress, "read data")
    return read_dataset(config)


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its local paths (``data``, ``init_from``, a ``model`` directory) made
    absolute, so the saved config resumes from any working directory."""
    paths = {name: os.path.abspath(value) for name in ("data", "init_from", "model")
             if (value := getattr(config, name)) and (name != "model" or os.path.exists(value))}
    return dataclasses.replace(config, **paths)


def check_resumable_paths(config: TrainConfig, run_dir: Path) -> None:
    """A run saved with relative paths (by older versions) resumes only from the directory it
    was started in: say so instead of failing on a missing file."""
    for name in ("data", "init_from"):
        value = getattr(config, name)
        if value and not os.path.isabs(value) and not os.path.exists(value):
            raise FileNotFoundError(
                f"--resume {run_dir}: its {name} {value!r} is relative to the directory the run was "
                f"started in (runs of older versions saved it so) and is not found from here "
                f"({os.getcwd()}); resume from that directory, or write the absolute path into "
                f"{run_dir / CONFIG_FILE}")


def create_run_dir(config: TrainConfig) -> Path:
    """A new run's directory with its ``config.json``, the same on every rank: rank 0 names
    and creates it. Refuses a directory that holds a checkpointed run; a run that never got to
    a checkpoint (:func:`~.rundir.is_restartable`) is started again in place."""
    run_dir = Path(distributed.broadcast_object(str(run_dir_for(config))))
    with distributed.main_first():
        if distributed.is_main():
            if (run_dir / CONFIG_FILE).exists():
                if not is_restartable(run_dir):
                    raise FileExistsError(f"{run_dir} already holds a run (or another config.json); "
                                          f"pass --resume {run_dir} or a new --out")
                clear_outputs(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / CONFIG_FILE, config_to_json(config))
    return run_dir


def total_steps(config: TrainConfig, n_rows: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` passes over the rows."""
    if config.max_steps is not None:
        return config.max_steps
    micro = config.batch_size // config.grad_accum
    return math.ceil(config.epochs * math.ceil(n_rows / micro) / config.grad_accum)


class Loop:
    """The outer loop shared word for word by every offline method: step schedule, resume,
    learning rate, clipping, logging, validation, evaluation, checkpoints and export.

    Each ``train()`` owns the forward pass and the loss; this owns everything around them.
    """

    def __init__(
        self, config: TrainConfig, run_dir: Path, data: Data, modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer, checkpoint: Path | None,
        validate: Callable[[Batch], dict[str, Tensor]] | None = None,
        make_policy: Callable[[], LMPolicy] | None = None,
        export: Callable[[Path], None] | None = None,
        select_best: bool = False, progress: Progress | None = None,
        value_readout: Callable[[], tuple[nn.Module, ValueReadout]] | None = None,
    ):
        self.config, self.run_dir, self.data = config, run_dir, data
        self.modules, self.optimizer = modules, optimizer
        self.validate, self.make_policy, self.export = validate, make_policy, export
        # Value methods on Maze also log the value-map diagnostic (eval/value_map.py).
        self.value_readout = value_readout if config.task in MAZE_TASKS else None
        self.micro = config.batch_size // config.grad_accum
        self.schedule = BatchSchedule(len(data.train_rows), self.micro, config.seed)
        self.n_steps = total_steps(config, len(data.train_rows))
        self.logger = MetricsLogger(run_dir, config.tensorboard)
        self.pad_id = data.tokenizer.pad_token_id
        self.select_best = select_best
        self.best = math.inf  # lowest eval/loss so far (select_best)
        self.start = 0
        self.mean = MetricsMean()  # the logging interval's running means
        if checkpoint is not None:
            meta = load_checkpoint(checkpoint, modules, optimizer)
            self.start, self.best = meta["step"], meta.get("best_eval_loss", math.inf)
            if "running_means" in meta:  # absent in run dirs of older versions
                self.mean = MetricsMean.from_state(meta["running_means"])
            self.logger.truncate_after(self.start)
        # Identity in one process; under torchrun: rank 0's weights, shards, global metrics,
        # and with --data-parallel fsdp the sharded blocks (the optimizer is re-pointed at them).
        self.parallel = distributed.DataParallel(modules, config.seed, optimizer,
                                                 config.data_parallel, config.device)
        self.params = [p for p in optimizer.param_groups[0]["params"]]
        self.tokens, self.t0 = 0, time.perf_counter()
        self.epoch = 0.0
        self.progress = progress if distributed.is_main() else None  # the CLI's progress bar
        self.amp = distributed.MixedPrecision(config.mixed_precision, config.device)

    def steps(self) -> Iterator[int]:
        """Optimizer step indices still to run (after the checkpoint when resuming)."""
        if self.start == 0:
            self.logger.log(0, self.data.metrics)
        return iter(range(self.start, self.n_steps))

    def microbatches(self, step: int) -> Iterator[Batch]:
        """The ``grad_accum`` collated microbatches of optimizer step ``step``."""
        for j in range(self.config.grad_accum):
            epoch, idx = self.schedule(step * self.config.grad_accum + j)
            self.epoch = epoch + (idx[0] if len(idx) else 0) / max(self.schedule.n_rows, 1)
            idx = self.parallel.shard(idx)  # this rank's slice of the global microbatch
            batch = collate([self.data.train_rows[i] for i in idx], self.pad_id,
                            self.config.packing)
            with self.amp.autocast():
                yield batch.to(self.config.device)

    def backward(self, loss: Tensor, metrics: dict[str, Tensor], batch: Batch) -> None:
        """Accumulate the gradient of one microbatch (each weighs 1/grad_accum). Under
        torchrun the loss is weighted by this rank's share of the action tokens and the metrics
        are the global batch's."""
        loss, metrics, attended = self.parallel.weigh(loss, metrics, batch.n_action_tokens,
                                                      int(batch.attention_mask.sum()))
        self.amp.backward(loss / self.config.grad_accum)
        self.mean.add({**metrics, "time/pad_fraction": batch.pad_fraction})  # this rank's
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
            if last:
                report(self.progress, "export")  # the last checkpoint, then finish()'s export
            save_checkpoint(self.run_dir, done, self.modules, self.optimizer,
                            {"n_steps": self.n_steps, "best_eval_loss": self.best,
                             "running_means": self.mean.state()},
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
                # seed 0: the task's fixed protocol, shared by every method (paired comparisons).
                n = self.config.eval_episodes
                result = evaluate(self.make_policy(), self.config.task, n,
                                  progress=counter(self.progress, "evaluate", n))
                out.update(eval_metrics(result, self.config))
            if self.value_readout is not None:
                trunk, readout = self.value_readout()
                out.update(maze_value_map(trunk, self.data.tokenizer, readout,
                                          self.config.task).metrics())
        finally:
            for name, m in self.modules.items():
                m.train(modes[name])
        return out

    def validation_loss(self) -> dict[str, float]:
        """Token-weighted means of the loss metrics over the validation rows, as ``eval/*``."""
        sums: dict[str, float] = {}
        weight = 0
        rows = self.data.val_rows
        for i in range(0, len(rows), self.micro):
            report(self.progress, "validate", i, len(rows))
            batch = collate(rows[i : i + self.micro], self.pad_id,
                            self.config.packing).to(self.config.device)
            n = batch.n_action_tokens
            for k, v in self.validate(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            weight += n
        report(self.progress, "validate", len(rows), len(rows))
        return {k.replace("train/", "eval/"): v / weight for k, v in sums.items()}

    def finish(self) -> Path:
        """Export the final model (``model/``, ``tokenizer/`` and, for value methods,
        ``heads.safetensors``) for ``load_policy`` and ``lmrlgym eval --run``."""
        self.logger.close()
        if self.export is not None and not (self.select_best and math.isfinite(self.best)):
            self.export(self.run_dir)
        distributed.cleanup()  # every rank waits for rank 0's export, then leaves the group
        return self.run_dir


def eval_metrics(result: EvalResult, config: TrainConfig) -> dict[str, float]:
    """The ``eval/*`` scalars of an evaluation (``EvalResult.metrics``), plus ``eval/beta`` for
    value-guided decoding."""
    metrics = dict(result.metrics)
    if hasattr(config, "beta"):
        metrics["eval/beta"] = float(config.beta)
    return metrics

