"""Reading and writing episode records (JSONL shards + ``manifest.json``; docs/tasks.md §11.1).

Writes are atomic (temp file + rename), so a crash never leaves a half-written shard or
manifest that looks complete. Reads validate every record and name the file, line and field
at fault.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmrlgym.core import EPISODE_FORMAT, Episode, Turn

MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A dataset file or record is malformed; the message names the file, line and field."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dumps_episode(ep: Episode) -> str:
    return json.dumps(ep.to_json(), ensure_ascii=False, separators=(",", ":"))


def write_shard(path: str | os.PathLike, episodes: Iterable[Episode]) -> None:
    atomic_write_text(path, "".join(dumps_episode(ep) + "\n" for ep in episodes))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def episode_from_json(rec: Any, where: str = "<record>") -> Episode:
    """Validate one decoded record and build an :class:`Episode`."""

    def bad(field: str, why: str) -> DatasetError:
        return DatasetError(f"{where}: field {field!r}: {why}")

    if not isinstance(rec, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if rec.get("format", EPISODE_FORMAT) != EPISODE_FORMAT:
        raise bad("format", f"expected {EPISODE_FORMAT!r}, got {rec.get('format')!r}")
    if not isinstance(rec.get("task"), str):
        raise bad("task", "missing or not a string")
    raw_turns = rec.get("turns")
    if not isinstance(raw_turns, list) or not raw_turns:
        raise bad("turns", "missing, empty or not a list")
    turns = []
    for i, t in enumerate(raw_turns):
        if not isinstance(t, dict):
            raise bad(f"turns[{i}]", "not an object")
        text, is_action, reward = t.get("text"), t.get("is_action"), t.get("reward", 0.0)
        if not isinstance(text, str) or not text:
            raise bad(f"turns[{i}].text", "missing, empty or not a string")
        if not isinstance(is_action, bool):
            raise bad(f"turns[{i}].is_action", "missing or not a bool")
        if not isinstance(reward, (int, float)) or isinstance(reward, bool):
            raise bad(f"turns[{i}].reward", "not a number")
        if not is_action and reward != 0:
            raise bad(f"turns[{i}].reward", "env turns must have reward 0")
        turns.append(Turn(text, is_action, float(reward)))
    for key in ("terminated", "truncated"):
        if not isinstance(rec.get(key), bool):
            raise bad(key, "missing or not a bool")
    seed = rec.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise bad("seed", "not an int or null")
    ep = Episode(
        task=rec["task"],
        turns=turns,
        terminated=rec["terminated"],
        truncated=rec["truncated"],
        success=bool(rec.get("success", False)),
        seed=seed,
        policy=str(rec.get("policy", "")),
        env_kwargs=dict(rec.get("env_kwargs") or {}),
        reset_options=dict(rec.get("reset_options") or {}),
        meta=dict(rec.get("meta") or {}),
    )
    if "return" in rec and abs(float(rec["return"]) - ep.ret) > 1e-6:
        raise bad("return", f"{rec['return']} != sum of turn rewards {ep.ret}")
    return ep


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """The JSONL shards of a dataset directory (sorted), or ``[path]`` for a single file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_file():
        return [path]
    shards = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not shards:
        raise DatasetError(f"{path}: no *.jsonl or *.jsonl.gz shards")
    return shards


def iter_episodes(path: str | os.PathLike, skip_bad: bool = False) -> Iterator[Episode]:
    """Yield the episodes of a dataset directory or file (``skip_bad``: drop malformed lines)."""
    yield from _iter(path, skip_bad, [0])


def _iter(path: str | os.PathLike, skip_bad: bool, skipped: list[int]) -> Iterator[Episode]:
    for shard in shard_paths(path):
        opener = gzip.open if shard.name.endswith(".gz") else open
        with opener(shard, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{shard}:{lineno}"
                try:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DatasetError(f"{where}: invalid JSON ({e.msg})") from None
                    yield episode_from_json(rec, where)
                except DatasetError:
                    if not skip_bad:
                        raise
                    skipped[0] += 1


def read_episodes(
    path: str | os.PathLike, skip_bad: bool = False
) -> tuple[list[Episode], int]:
    """All episodes of a dataset, and how many malformed lines were skipped."""
    skipped = [0]
    episodes = list(_iter(path, skip_bad, skipped))
    return episodes, skipped[0]


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{p}: no manifest (is this a dataset directory?)") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: invalid JSON ({e.msg})") from None
