"""Hugging Face ``datasets`` interop: export a dataset directory, import it back.

The export keeps the episode schema with a fixed Arrow type: ``turns`` is a list of
``{text, is_action, reward}`` structs, and the free-form dicts (``env_kwargs``,
``reset_options``, ``meta``) are JSON strings so every task shares one schema.
Written as ``save_to_disk`` (``<out>/hf``) and as one parquet file (``<out>/episodes.parquet``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lmrlgym.core import Episode
from lmrlgym.data.io import episode_from_json
from lmrlgym.registry import Requirement, require

_JSON_FIELDS = ("env_kwargs", "reset_options", "meta")
DATASETS = Requirement("datasets", 'pip install "lmrlgym[hf]"')


def _datasets():
    require("Hugging Face export and import", DATASETS)
    import datasets

    return datasets


def features():
    ds = _datasets()
    return ds.Features({
        "format": ds.Value("string"), "task": ds.Value("string"),
        "env_kwargs": ds.Value("string"), "seed": ds.Value("int64"),
        "reset_options": ds.Value("string"), "policy": ds.Value("string"),
        "turns": ds.List({"text": ds.Value("string"), "is_action": ds.Value("bool"),
                          "reward": ds.Value("float64")}),
        "terminated": ds.Value("bool"), "truncated": ds.Value("bool"),
        "return": ds.Value("float64"), "success": ds.Value("bool"), "meta": ds.Value("string"),
    })


def to_row(ep: Episode) -> dict[str, Any]:
    row = ep.to_json()
    for k in _JSON_FIELDS:
        row[k] = json.dumps(row[k], sort_keys=True, ensure_ascii=False)
    return row


def from_row(row: dict[str, Any], where: str) -> Episode:
    rec = dict(row)
    for k in _JSON_FIELDS:
        rec[k] = json.loads(rec[k]) if rec.get(k) else {}
    return episode_from_json(rec, where)


def export_hf(episodes: list[Episode], out: Path) -> Path:
    """Write ``out/hf`` (save_to_disk) and ``out/episodes.parquet``; returns ``out``."""
    ds = _datasets().Dataset.from_list([to_row(ep) for ep in episodes], features=features())
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ds.save_to_disk(str(tmp / "hf"))
    ds.to_parquet(str(tmp / "episodes.parquet"))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # complete exports only: the directory appears when everything is written
    return out


def import_hf(path: Path) -> list[Episode]:
    """Episodes from an export directory, a ``save_to_disk`` folder or a parquet file."""
    ds_mod = _datasets()
    path = Path(path)
    if path.is_dir() and (path / "hf").is_dir():
        path = path / "hf"
    if path.suffix == ".parquet":
        ds = ds_mod.Dataset.from_parquet(str(path))
    elif path.is_dir():
        ds = ds_mod.load_from_disk(str(path))
    else:
        raise FileNotFoundError(f"no Hugging Face dataset at {path}")
    return [from_row(row, f"{path}[{i}]") for i, row in enumerate(ds)]
