"""Reading and writing episode records (JSONL shards + ``manifest.json``; docs/tasks.md §11.1).

Writes are atomic (temp file + rename), so a crash never leaves a half-written shard or
manifest that looks complete. Reads validate every record and name the file, line and field
at fault.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import secrets
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmrlgym.core import EPISODE_FORMAT, Episode, Turn

MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A dataset file or record is malformed; the message names the file, line and field."""


def temp_beside(path: str | os.PathLike, directory: bool = False) -> Path:
    """A new empty temp file (or directory) next to ``path``, to be renamed onto it.

    It is created with mode 0o666 (0o777) less the umask, as ``open()`` (``mkdir``) would
    create ``path`` itself; ``tempfile.mkstemp`` (``mkdtemp``) makes it 0o600 (0o700), which
    the rename would keep."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        if directory:
            os.mkdir(tmp, 0o777)
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:  # name the file being written, not its hidden temp file
        raise type(e)(e.errno, e.strerror, str(path)) from None
    return tmp


def honour_umask(tmp: Path) -> None:
    """Give ``tmp`` (a temp file or directory about to be renamed into place) and every file
    in it the mode ``open()`` would (0o666 less the umask): some writers, safetensors and
    hence ``save_pretrained`` among them, make their files 0o600 whatever the umask. The mode
    is read off a probe file (reading the umask with ``os.umask`` would change it, for every
    thread, meanwhile)."""
    probe = temp_beside(tmp)
    try:
        mode = probe.stat().st_mode & 0o777
    finally:
        probe.unlink()
    for path in [tmp, *tmp.rglob("*")] if tmp.is_dir() else [tmp]:
        if path.is_file():
            os.chmod(path, mode)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, ``\n`` line ends) to ``path`` via a temp file in the same
    directory (:func:`temp_beside`) and a rename."""
    _atomic_write(path, text, binary=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    _atomic_write(path, data, binary=True)


def _atomic_write(path: str | os.PathLike, content: str | bytes, binary: bool) -> None:
    tmp = temp_beside(path)
    try:
        with (open(tmp, "wb") if binary
              else open(tmp, "w", encoding="utf-8", newline="\n")) as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
        if not _is_finite(reward):
            raise bad(f"turns[{i}].reward", f"not a finite number: {reward!r}")
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
    if "return" in rec:
        if not _is_finite(rec["return"]):
            raise bad("return", f"not a finite number: {rec['return']!r}")
        if abs(rec["return"] - ep.ret) > 1e-6:
            raise bad("return", f"{rec['return']} != sum of turn rewards {ep.ret}")
    return ep


def _is_finite(x: Any) -> bool:
    """A JSON number that is neither NaN nor infinite (Python's json reads ``NaN``)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def shard_paths(path: str | os.PathLike, allow_partial: bool = False) -> list[Path]:
    """The JSONL shards of a dataset directory (sorted), or ``[path]`` for a single file.

    A directory must hold its manifest and every shard the manifest lists: without them it is
    an interrupted ``data generate`` (the manifest is written last), refused unless
    ``allow_partial``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_file():
        return [path]
    shards = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not allow_partial:
        partial = "; pass --allow-partial to use the shards that are there"
        if not (path / MANIFEST).exists():
            raise DatasetError(f"{path}: no {MANIFEST}, so the dataset is incomplete (an "
                               f"interrupted `data generate`?){partial}")
        listed = read_manifest(path).get("shards") or []
        missing = sorted(set(listed) - {p.name for p in shards})
        if missing:
            raise DatasetError(f"{path / MANIFEST} lists {len(missing)} shard(s) that are "
                               f"missing: {', '.join(missing[:3])}{partial}")
    if not shards:
        raise DatasetError(f"{path}: no *.jsonl or *.jsonl.gz shards")
    return shards


def _records(shard: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, decoded JSON)`` for each non-blank line of a shard; a line that cannot be
    read gives a :class:`DatasetError` in place of its record. Lines end at ``\\n`` only (a
    JSON string may hold U+2028 or other characters ``str.splitlines`` would split on)."""
    if shard.stat().st_size == 0:
        yield f"{shard}:1", DatasetError(f"{shard}: empty file (0 bytes)")
        return
    lineno = 0
    try:
        with (gzip.open if shard.name.endswith(".gz") else open)(shard, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{shard}:{lineno}"
                if not raw.strip():
                    continue
                try:
                    yield where, json.loads(raw.rstrip(b"\n").decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield where, DatasetError(f"{where}: invalid UTF-8 (byte 0x{raw[e.start]:02x} "
                                              f"at column {e.start + 1})")
                except json.JSONDecodeError as e:
                    yield where, DatasetError(f"{where}: invalid JSON at column {e.colno}: {e.msg}")
                except RecursionError:
                    yield where, DatasetError(f"{where}: JSON nested too deeply to read")
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        where = f"{shard}:{lineno + 1}"
        what = "not valid gzip data" if shard.name.endswith(".gz") else "cannot be read"
        yield where, DatasetError(f"{where}: {what} ({getattr(e, 'strerror', None) or e}); "
                                  "the rest of the file is unreadable")


def _iter(path: str | os.PathLike, skip_bad: bool, skipped: list[int],
          allow_partial: bool) -> Iterator[Episode]:
    for shard in shard_paths(path, allow_partial):
        for where, rec in _records(shard):
            try:
                if isinstance(rec, DatasetError):
                    raise rec
                yield episode_from_json(rec, where)
            except DatasetError as e:
                if not skip_bad:
                    raise DatasetError(f"{e} (--skip-bad skips unreadable lines)") from None
                skipped[0] += 1


def read_episodes(
    path: str | os.PathLike, skip_bad: bool = False, allow_partial: bool = False
) -> tuple[list[Episode], int]:
    """All episodes of a dataset, and how many unreadable lines were skipped (``skip_bad``; a
    broken gzip stream or an empty file counts as one). ``allow_partial`` reads a directory
    without its manifest (see :func:`shard_paths`)."""
    skipped = [0]
    episodes = list(_iter(path, skip_bad, skipped, allow_partial))
    return episodes, skipped[0]


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{p}: no manifest (is this a dataset directory?)") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: invalid JSON ({e.msg})") from None
