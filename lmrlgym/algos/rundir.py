"""The run directory's layout (DESIGN "Run directory"): where a run keeps its config, exported
model (and separate value trunk), tokenizer, heads and checkpoints, and how a new one is named. Reading it needs no
torch, so ``lmrlgym.algos`` exposes it cheaply."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, TypeVar

from lmrlgym.algos.config import TrainConfig, config_algo

CONFIG_FILE = "config.json"  # the resolved config, with its "algo"
MODEL_DIR = "model"  # the exported LM (Hugging Face save_pretrained; LoRA: + adapter/)
VALUE_MODEL_DIR = "value_model"  # value_model="separate": the value trunk, laid out as model/
TOKENIZER_DIR = "tokenizer"
HEADS_FILE = "heads.safetensors"  # the exported value heads, keys "<head>.<param>"
CKPT_DIR = "checkpoints"  # step_<N>/ directories
LATEST = "latest"  # checkpoints/latest: the name of the newest complete step_<N>/
METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"  # TensorBoard events
REPLAY_FILE = "replay.jsonl"  # online filtered BC's kept episodes
# What a run writes besides its config; temporary entries are named ".<stem>.<random>".
OUTPUTS = (MODEL_DIR, TOKENIZER_DIR, HEADS_FILE, CKPT_DIR, METRICS_FILE, TB_DIR, REPLAY_FILE)

C = TypeVar("C", bound=TrainConfig)


def run_dir_for(config: TrainConfig) -> Path:
    """``runs/<task>__<algo>__<seed>__<time>/`` (cleanrl's naming) unless ``--out`` is given."""
    if config.out:
        return Path(config.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.task}__{config_algo(config)}__{config.seed}__{stamp}"


def read_config(run_dir: str | os.PathLike, flag: str = "") -> tuple[str | None, dict[str, Any]]:
    """``(algo, fields)`` of a run directory's saved config; ``flag`` prefixes the error."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{flag}{run_dir}: no {CONFIG_FILE} (not a run directory)")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, absurd nesting
        raise ValueError(f"{flag}{path}: not a readable config ({type(e).__name__}: {e})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{flag}{path}: expected a JSON object")
    return fields.pop("algo", None), fields


def is_restartable(run_dir: str | os.PathLike) -> bool:
    """A run that was started (its ``config.json`` is a run's) but never checkpointed: it
    failed or was stopped before its first checkpoint, so nothing in it is worth keeping."""
    try:
        algo, _ = read_config(run_dir)
    except (OSError, ValueError):
        return False
    return algo is not None and latest_checkpoint(run_dir) is None


def clear_outputs(run_dir: Path) -> None:
    """Remove what a run wrote besides its config (before starting a restartable run again);
    other files are left alone."""
    stems = tuple(f".{name.split('.')[0]}." for name in OUTPUTS)
    for path in run_dir.iterdir():
        if path.name in OUTPUTS or path.name.startswith(stems):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
def config_from_fields(cls: type[C], fields: dict[str, Any], where: str) -> C:
    """``cls(**fields)`` of a saved config; unknown fields or values of the wrong type (a
    foreign or hand-edited ``config.json``) raise ``ValueError`` naming ``where``."""
    try:
        return cls(**fields)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The run's newest complete checkpoint directory, or None before the first one."""
    ptr = Path(run_dir) / CKPT_DIR / LATEST
    if not ptr.exists():
        return None
    name = ptr.read_text(encoding="utf-8", errors="replace").strip()
    if not re.fullmatch(r"step_\d+", name):  # never a path out of checkpoints/
        raise ValueError(f"{ptr}: expected the name of a step_<N> directory, got {name[:80]!r}")
    path = ptr.parent / name
    if not path.is_dir():
        raise FileNotFoundError(f"{ptr} points at {path.name}, which does not exist")
    return path
