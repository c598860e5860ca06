"""``lmrlgym bench run``: the task x method x seed grid, resumable, with references and a report.

Layout of an output directory::

    <out>/data/<task>/            the task's offline dataset (default behaviour policy)
    <out>/runs/<task>__<method>__<seed>/   one training run per cell (resumable)
    <out>/cells/<task>__<method>__<seed>.json   the cell's evaluation summary (written last)
    <out>/results.json, results.md, scores.png, learning_curves.png

A cell whose JSON exists with the same config hash is skipped; a corrupted or partial cell (or
dataset) is recomputed with a warning. Runs with a checkpoint resume instead of restarting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmrlgym.algos import ALGORITHMS, TrainConfig, algorithm
from lmrlgym.bench import presets
from lmrlgym.bench.report import (
    aggregate,
    comparison_table,
    markdown_table,
    ordering_flags,
    paired_table,
    paired_vs_bc,
    plot_learning_curves,
    plot_scores,
)
from lmrlgym.data.io import DatasetError, read_manifest, write_json
from lmrlgym.registry import registry

# RL methods start from the same seed's BC run (docs/algorithms.md §2.1).
NEEDS_BC_INIT = {"mc", "ilql", *presets.ONLINE}


@dataclasses.dataclass(frozen=True)
class Cell:
    task: str
    method: str  # a key of ALGORITHMS, or "behaviour" / "optimal" (scripted references)
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}__{self.method}__{self.seed}"


# Config fields added after cells were first hashed, with their defaults: left out of the hash
# at that default, so cells hashed before the field existed stay done.
LATER_FIELDS = {"allow_partial": False, "packing": False, "backup": "token",
                "aux_lm_weight": 0.0, "value_init": "policy"}


def config_hash(obj: Any) -> str:
    """Hash of a cell's settings (config fields except paths, and the :data:`LATER_FIELDS` at
    their defaults) for resumability."""
    d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    for k in ("out", "resume", "data", "init_from", "init"):
        d.pop(k, None)
    for k, default in LATER_FIELDS.items():
        if k in d and d[k] == default:
            del d[k]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    """What decides a CPU run's float kernels, so two results.json can be told apart: the CPU
    model, the vector extension torch dispatches to (AVX2, AVX512, ...) and the thread count.
    Tiny-model results can move with these (docs/cpu-scale.md)."""
    import os

    import torch

    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    try:  # Linux; elsewhere platform.processor() is the best there is
        for line in Path("/proc/cpuinfo").read_text().split("\n"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read_cell(path: Path, want_hash: str) -> dict[str, Any] | None:
    """A finished cell's summary, or None (missing, corrupted or from other settings)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "normalized_score" not in data:
            raise ValueError("missing normalized_score")
    except (ValueError, OSError) as e:
        warnings.warn(f"{path}: corrupted cell result ({e}); rerunning the cell", stacklevel=2)
        return None
    if data.get("config_hash") != want_hash:
        warnings.warn(f"{path}: settings changed since it was run; rerunning the cell",
                      stacklevel=2)
        return None
    return data


def ensure_dataset(profile: presets.Profile, task: str, out: Path,
                   progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Generate the task's dataset once; regenerate it (with a warning) if it is incomplete.
    ``progress(task, episodes_done, episodes)`` while generating."""
    from lmrlgym.data.generate import DATA_SEED_BASE, generate_dataset
    from lmrlgym.data.policies import default_policy

    path = out / "data" / task
    n = profile.data_episodes(task)
    policy = default_policy(task)
    try:
        manifest = read_manifest(path)
        if manifest.get("episodes") == n and manifest.get("base_seed") == DATA_SEED_BASE:
            return path
        warnings.warn(f"{path}: dataset has other settings; regenerating", stacklevel=2)
    except DatasetError:
        if path.exists():
            warnings.warn(f"{path}: incomplete dataset (no valid manifest); regenerating",
                          stacklevel=2)
    done = 0

    def played(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(task, done, n)

    generate_dataset(task, path, n, policy, DATA_SEED_BASE, workers=profile.data_workers,
                     overwrite=True, progress=played)
    return path


def _summary_fields(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("mean_return", "ci95", "success_rate", "normalized_score", "paper_normalized_score",
            "episodes", "illegal_rate", "episode_length")
    return {k: summary[k] for k in keep if k in summary}


def run_reference(profile: presets.Profile, cell: Cell, out: Path) -> dict[str, Any]:
    """Evaluate a scripted reference policy (behaviour or optimum) under the eval protocol."""
    from lmrlgym.data.policies import DEFAULT_POLICY, OPTIMAL_POLICY, make_policy
    from lmrlgym.eval.evaluate import evaluate

    spec = (DEFAULT_POLICY if cell.method == "behaviour" else OPTIMAL_POLICY)[cell.task]
    policy = make_policy(spec, cell.task)
    try:
        result = evaluate(policy, cell.task, profile.eval_episodes(cell.task), seed=cell.seed,
                          env_kwargs=profile.env_kwargs(cell.task),
                          out_dir=out / "evals" / cell.key)
    finally:
        policy.close()
    return {"policy": spec, **_summary_fields(result.summary)}


def run_method(profile: presets.Profile, cell: Cell, out: Path, data: Path) -> dict[str, Any]:
    """Train one cell (resuming if a checkpoint exists), then evaluate its final policy."""
    from lmrlgym.algos import latest_checkpoint, load_config, load_policy
    from lmrlgym.eval.evaluate import evaluate

    config = cell_config(profile, cell, out, data)
    run_dir = Path(config.out)
    checkpointed = run_dir.exists() and latest_checkpoint(run_dir) is not None
    if checkpointed and not _same_settings(run_dir, config):
        # A run of other settings must not be resumed (it would finish the old run); it is
        # kept beside the new one, replacing an older one kept there.
        old = run_dir.with_name(run_dir.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        run_dir.rename(old)
        warnings.warn(f"{run_dir}: trained with other settings; moved to {old.name}, "
                      "training anew", stacklevel=2)
    elif checkpointed:
        config = dataclasses.replace(config, resume=str(run_dir))
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # started but never checkpointed: nothing to keep
    module = algorithm(cell.method)
    module.train(config)
    decoding = profile.decoding(cell.task, load_config(run_dir).decoding)
    policy = load_policy(run_dir, decoding=decoding)
    result = evaluate(policy, cell.task, profile.eval_episodes(cell.task), seed=cell.seed,
                      env_kwargs=profile.env_kwargs(cell.task), out_dir=out / "evals" / cell.key)
    return {"run_dir": str(run_dir), **_summary_fields(result.summary)}


def _same_settings(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``run_dir`` was started with ``config``'s settings (as :func:`config_hash`
    compares them); a run whose config cannot be read counts as different."""
    from lmrlgym.algos import load_config

    try:
        return config_hash(load_config(run_dir)) == config_hash(config)
    except (OSError, ValueError):
        return False


def cell_config(profile: presets.Profile, cell: Cell, out: Path, data: Path) -> TrainConfig:
    """The cell's named preset: the algorithm's paper preset for the task, rescaled by the
    profile, with this cell's data, seed, run directory and BC initialisation."""
    values: dict[str, Any] = {"data": str(data), "seed": cell.seed,
                              "out": str(out / "runs" / cell.key)}
    if cell.method in NEEDS_BC_INIT:
        values["init_from"] = str(out / "runs" / Cell(cell.task, "bc", cell.seed).key)
    return presets.sized_config(profile, cell.method, cell.task, **values)


def plan(profile: presets.Profile, tasks: list[str] | None, methods: list[str] | None,
         seeds: list[int] | None = None) -> list[Cell]:
    """The cells to run, in dependency order (references, then BC before the methods using it)."""
    cells: list[Cell] = []
    for task in profile.tasks:
        if tasks and task not in tasks:
            continue
        missing = registry[task].missing()
        if missing:
            warnings.warn(f"skipping {task}: needs " + "; ".join(
                f"{r.name} ({r.install})" for r in missing), stacklevel=2)
            continue
        cells += [Cell(task, ref, 0) for ref in ("behaviour", "optimal")]
        for seed in seeds or profile.seeds:
            for method in profile.methods(task):
                if not methods or method in methods or (
                    method == "bc" and set(methods) & NEEDS_BC_INIT
                ):
                    cells.append(Cell(task, method, seed))
    return cells


def describe_grid(
    profile_name: str, out: Path, tasks: list[str] | None, methods: list[str] | None,
    seeds: list[int] | None = None,
) -> str:
    """Every planned cell with its resolved config (``bench run --dry-run``)."""
    profile = presets.get_profile(profile_name)
    _validate(profile, tasks, methods, seeds)
    lines = []
    for cell in plan(profile, tasks, methods, seeds):
        if cell.method in ALGORITHMS:
            config = cell_config(profile, cell, out, out / "data" / cell.task)
            lines.append(f"{cell.key}: {config}")
        else:
            lines.append(f"{cell.key}: scripted reference, "
                         f"{profile.eval_episodes(cell.task)} eval episodes")
    return "\n".join(lines)


def run_grid(
    profile_name: str,
    out: Path,
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
    progress: Callable[[Cell, int, int], None] | None = None,
    seeds: list[int] | None = None,
    data_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the grid and write the results; returns the results dict.
    ``seeds`` replaces the profile's training seeds (e.g. more seeds for tighter intervals);
    ``data_progress(task, episodes_done, episodes)`` reports a dataset being generated."""
    profile = presets.get_profile(profile_name)
    _validate(profile, tasks, methods, seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    cells = plan(profile, tasks, methods, seeds)
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    bad_input = True  # every failure so far was refused input (exit code 2, not 1)
    for i, cell in enumerate(cells):
        if progress:
            progress(cell, i, len(cells))
        if cell.method in ALGORITHMS:
            data = ensure_dataset(profile, cell.task, out, data_progress)
            h = config_hash(cell_config(profile, cell, out, data))
        else:
            h = config_hash({"cell": cell.key, "eval": profile.eval_episodes(cell.task)})
        path = out / "cells" / f"{cell.key}.json"
        done = _read_cell(path, h)
        if done is None:
            t0 = time.time()
            try:
                if cell.method in ALGORITHMS:
                    summary = run_method(profile, cell, out, data)
                else:
                    summary = run_reference(profile, cell, out)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one broken cell must not cost the rest of the grid
                warnings.warn(f"cell {cell.key} failed: {type(e).__name__}: {e}", stacklevel=2)
                failed.append(f"{cell.key}: {type(e).__name__}: {e}")
                bad_input = bad_input and isinstance(e, (ValueError, OSError))
                continue
            done = {**dataclasses.asdict(cell), **summary, "config_hash": h,
                    "seconds": time.time() - t0}
            write_json(path, done)
        results.append(done)
    report = write_report(profile, out, results, failed)
    if failed:
        raise CellFailures(failed, bad_input)
    return report


class CellFailures(RuntimeError):
    """Some cells failed; the report holds the others, and a rerun retries only the failed.
    ``bad_input``: every one failed on a file or setting it refused (e.g. a run directory's
    checkpoint), not on an error while running."""

    def __init__(self, failed: list[str], bad_input: bool = False):
        super().__init__(f"{len(failed)} cell(s) failed (rerun to retry them):\n  "
                         + "\n  ".join(failed))
        self.bad_input = bad_input


def _validate(profile: presets.Profile, tasks: list[str] | None, methods: list[str] | None,
              seeds: list[int] | None = None) -> None:
    for t in tasks or []:
        if t not in profile.tasks:
            raise ValueError(f"unknown task {t!r} for profile {profile.name!r}; valid: "
                             f"{', '.join(profile.tasks)}")
    for m in methods or []:
        if m not in ALGORITHMS:
            raise ValueError(f"unknown method {m!r}; valid: {', '.join(ALGORITHMS)}")
    bad = [s for s in seeds or [] if s < 0]
    if bad or (seeds is not None and len(set(seeds)) != len(seeds)):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")


# Learning-curve panels: offline methods log train/loss per step, online ones rollout/return
# per round, and any run with periodic evaluation eval/return.
CURVE_KEYS = ("train/loss", "rollout/return", "eval/return")


def _curves(results: list[dict[str, Any]]) -> dict[str, dict[str, list[list[tuple[float, float]]]]]:
    """``{"<task> <key>": {method: [points of each seed]}}`` from the cells' metrics.jsonl."""
    curves: dict[str, dict[str, list[list[tuple[float, float]]]]] = {}
    for r in results:
        run_dir = r.get("run_dir")
        metrics = Path(run_dir) / "metrics.jsonl" if run_dir else None
        if not metrics or not metrics.exists():
            continue
        points: dict[str, list[tuple[float, float]]] = {k: [] for k in CURVE_KEYS}
        for line in metrics.read_text(encoding="utf-8").split("\n"):
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue
            for k in CURVE_KEYS:
                if k == "train/loss" and r["method"] in presets.ONLINE:
                    continue  # PPO's loss includes the value loss: not comparable
                if k in m and "step" in m:
                    points[k].append((m["step"], m[k]))
        for k, pts in points.items():
            if pts:
                curves.setdefault(f"{r['task']} {k}", {}).setdefault(r["method"], []).append(pts)
    return curves


def write_report(
    profile: presets.Profile, out: Path, results: list[dict[str, Any]], failed: list[str]
) -> dict[str, Any]:
    from lmrlgym import __version__

    agg = aggregate(results)
    flags = ordering_flags(agg)
    paired = paired_vs_bc(agg)
    vs_ppo = paired_vs_bc(agg, base="ppo")
    data = {
        "format": "lmrlgym.results/1",
        "profile": profile.name,
        "lmrlgym_version": __version__,
        "machine": machine_info(),
        "cells": results,
        "summary": agg,
        "paired_vs_bc": paired,
        "paired_vs_ppo": vs_ppo,
        "ordering_differences_vs_paper": flags,
        "failed_cells": failed,
    }
    write_json(out / "results.json", data)
    md = markdown_table(agg, title=f"lmrlgym `{profile.name}` profile")
    budget = presets.online_budget(profile)
    if budget:
        md += f"\n{budget}\n"
    if paired:
        md += ("\n### Difference from BC, paired by seed\n\n" + paired_table(paired)
               + "\nCells: mean over seeds of (method − BC at the same seed) ± 95 % t-interval "
               "(seeds above BC / seeds). MC Returns, ILQL and the online methods start from "
               "that seed's BC run, so this removes BC's seed-to-seed spread.\n")
    if vs_ppo:
        md += ("\n### Difference from online PPO, paired by seed\n\n" + paired_table(vs_ppo, "ppo")
               + "\nCells: mean over seeds of (method − online PPO at the same seed) ± 95 % "
               "t-interval (seeds above PPO / seeds); both start from that seed's BC run.\n")
    md += "\n### Compared with the paper (Table 2)\n\n" + comparison_table(agg)
    if flags:
        md += "\nOrderings that differ from the paper:\n\n" + "".join(f"- {f}\n" for f in flags)
    if failed:
        md += "\nFailed cells (not in the table):\n\n" + "".join(f"- {f}\n" for f in failed)
    (out / "results.md").write_text(md, encoding="utf-8")
    plot_scores(agg, out / "scores.png")
    plot_learning_curves(_curves(results), out / "learning_curves.png")
    return data
