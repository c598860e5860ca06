"""On-disk cache of what training derives from a dataset: the tokenizer trained on its text and
its rendered rows, so that a second run on the same data starts in seconds.

An entry is found by a hash of everything its content depends on: the dataset's bytes (manifest
and shards), the split and selection settings, the tokenizer, the render settings (``P``, γ,
discount mode, truncation flag), the lmrlgym source and the versions of the libraries that
tokenize and compute; any change is a miss, never a stale hit. Entries are plain data (JSON and
safetensors; nothing is unpickled, so a planted file cannot run code), written atomically, and
a damaged one is a miss that is rebuilt. They live in ``.lmrlgym-cache/`` inside the dataset
directory (next to a single-file dataset), or under ``$LMRLGYM_CACHE/data`` (default
``~/.cache/lmrlgym``) when that is not writable. ``LMRLGYM_DATA_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors
from transformers import PreTrainedTokenizerBase

from lmrlgym.data.io import MANIFEST, atomic_write_bytes, atomic_write_text, shard_paths
from lmrlgym.models.render import Segment

CACHE_DIR = ".lmrlgym-cache"
ENV_VAR = "LMRLGYM_DATA_CACHE"
FORMAT = 1  # of the entries' layout

# Segment fields, stored per split as one concatenated tensor (the per-token ones and next_ids)
# or one value per row, with the dtypes checked on load.
_TOKEN_FIELDS = {"input_ids": torch.long, "action_mask": torch.bool, "rewards": torch.float32,
                 "turn_end": torch.bool, "returns": torch.float32, "next_ids": torch.long}
_ROW_FIELDS = {"terminal": torch.bool, "episode_id": torch.long, "first_turn": torch.long}
_LENGTHS = {"lengths": torch.long, "next_lengths": torch.long}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(path: str | os.PathLike, allow_partial: bool = False) -> str:
    """Hash of a dataset's content: the name, size and bytes of its manifest (if any) and
    every shard. Raises the errors of :func:`~lmrlgym.data.io.shard_paths` for an incomplete
    directory unless ``allow_partial``."""
    path = Path(path)
    manifest = [path / MANIFEST] if (path / MANIFEST).is_file() else []
    files = shard_paths(path, allow_partial) + manifest
    h = hashlib.sha256()
    for file in files:
        h.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the lmrlgym source and of the libraries' versions that tokenize and compute: a
    change to the rendering code (or a window, or the split) must never read old rows."""
    import numpy
    import tokenizers
    import transformers

    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(" ".join(m.__version__ for m in (torch, numpy, tokenizers, transformers))
                       .encode())
    for source in sorted(package.rglob("*.py")):
        h.update(f"\0{source.relative_to(package).as_posix()}\0".encode())
        h.update(source.read_bytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Hash of a fast tokenizer's full definition (None for a slow one: not cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return _sha256(f"{tokenizer.bos_token_id}\0{backend.to_str()}".encode())


def cache_root(data: str | os.PathLike) -> Path | None:
    """The writable directory holding a dataset's entries, or None (cache off, or nowhere to
    write). One directory per dataset, so a regenerated dataset's old entries can be pruned."""
    if os.environ.get(ENV_VAR, "").lower() in ("0", "off", "false", "no"):
        return None
    data = Path(data).resolve()
    local = data / CACHE_DIR if data.is_dir() else data.parent / CACHE_DIR / data.name
    home = Path(os.environ.get("LMRLGYM_CACHE") or Path.home() / ".cache" / "lmrlgym")
    for root in (local, home / "data" / _sha256(str(data).encode())[:16]):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(root, os.W_OK):
            return root
    return None


class DataCache:
    """A dataset's cached tokenizers and rows. ``base`` holds the settings every entry depends on
    (the split and selection); each entry adds its own (vocabulary size; render settings)."""

    def __init__(self, root: Path, data_hash: str, base: dict[str, Any]):
        self.root = root
        self.data_hash = data_hash
        self.base = {"format": FORMAT, "code": code_version(), "data": data_hash, **base}

    @classmethod
    def open(cls, data: str | os.PathLike, allow_partial: bool = False,
             **base: Any) -> DataCache | None:
        """The cache of dataset ``data`` (its shards as ``read_episodes`` would read them)
        under the settings ``base`` (JSON values), or None when caching is off or there is
        nowhere to write."""
        data_hash = fingerprint(data, allow_partial)
        root = cache_root(data)
        return None if root is None else cls(root, data_hash, base)

    def _entry(self, kind: str, ext: str, settings: dict[str, Any]) -> tuple[Path, str]:
        key = json.dumps({**self.base, "kind": kind, **settings}, sort_keys=True)
        name = f"{kind}-{self.data_hash[:12]}-{_sha256(key.encode())[:24]}.{ext}"
        return self.root / name, key

    def _store(self, kind: str, path: Path, write: Any) -> None:
        """Write an entry and drop this kind's entries of other dataset contents (a dataset
        regenerated in place); a failed write only warns: the cache is an optimisation."""
        try:
            write()
            for old in self.root.glob(f"{kind}-*"):
                if not old.name.startswith(f"{kind}-{self.data_hash[:12]}-"):
                    old.unlink(missing_ok=True)
        except OSError as e:
            warnings.warn(f"data cache: could not write {path}: {e}", stacklevel=3)

    def load_tokenizer(self, **settings: Any) -> PreTrainedTokenizerBase | None:
        from lmrlgym.models.tokenizer import tokenizer_from_json

        path, key = self._entry("tokenizer", "json", settings)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["key"] != key:
                return None
            return tokenizer_from_json(entry["tokenizer"])
        except Exception:  # a damaged entry is a miss: rebuilt and overwritten
            return None

    def store_tokenizer(self, tokenizer: PreTrainedTokenizerBase, **settings: Any) -> None:
        path, key = self._entry("tokenizer", "json", settings)
        text = json.dumps({"key": key, "tokenizer": tokenizer.backend_tokenizer.to_str()})
        self._store("tokenizer", path, lambda: atomic_write_text(path, text))

    def load_rows(self, n_vocab: int, **settings: Any) -> tuple[list[Segment], list[Segment]] | None:
        """(training rows, validation rows) stored under ``settings``, or None; an entry whose
        dtypes or token ids (``< n_vocab``) are wrong is a miss too."""
        path, key = self._entry("rows", "safetensors", settings)
        if not path.is_file():
            return None
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key:
                    return None
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            return _unpack(tensors, "train", n_vocab), _unpack(tensors, "val", n_vocab)
        except Exception:  # a damaged entry is a miss: rebuilt and overwritten
            return None

    def store_rows(self, train: list[Segment], val: list[Segment], **settings: Any) -> None:
        path, key = self._entry("rows", "safetensors", settings)
        tensors = {**_pack(train, "train"), **_pack(val, "val")}
        blob = save_tensors(tensors, metadata={"key": key})
        self._store("rows", path, lambda: atomic_write_bytes(path, blob))


def _pack(rows: list[Segment], split: str) -> dict[str, torch.Tensor]:
    out = {f"{split}.{name}": torch.cat([getattr(r, name) for r in rows]) if rows
           else torch.zeros(0, dtype=dtype) for name, dtype in _TOKEN_FIELDS.items()}
    out[f"{split}.lengths"] = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out[f"{split}.next_lengths"] = torch.tensor([len(r.next_ids) for r in rows], dtype=torch.long)
    for name, dtype in _ROW_FIELDS.items():
        out[f"{split}.{name}"] = torch.tensor([getattr(r, name) for r in rows], dtype=dtype)
    return out


def _unpack(tensors: dict[str, torch.Tensor], split: str, n_vocab: int) -> list[Segment]:
    for name, dtype in {**_TOKEN_FIELDS, **_ROW_FIELDS, **_LENGTHS}.items():
        t = tensors[f"{split}.{name}"]
        if t.dtype != dtype or t.dim() != 1:
            raise ValueError(f"{split}.{name}: {t.dtype} of shape {tuple(t.shape)}")
    for name in ("input_ids", "next_ids"):
        ids = tensors[f"{split}.{name}"]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_vocab):
            raise ValueError(f"{split}.{name}: token ids outside the vocabulary")
    lengths = tensors[f"{split}.lengths"].tolist()
    columns: dict[str, Any] = {name: tensors[f"{split}.{name}"].split(lengths)
                               for name in _TOKEN_FIELDS if name != "next_ids"}
    columns["next_ids"] = tensors[f"{split}.next_ids"].split(tensors[f"{split}.next_lengths"].tolist())
    columns.update({name: tensors[f"{split}.{name}"].tolist() for name in _ROW_FIELDS})
    # Positional, in the dataclass's field order: the fastest way to build 10^5 rows.
    return [Segment(*values) for values in zip(*(columns[f.name] for f in dataclasses.fields(Segment)),
                                               strict=True)]
