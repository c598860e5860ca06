"""An env's step as JSON: what the env server (``lmrlgym env-server``, plain or OpenEnv) sends.

Shared by :mod:`lmrlgym.envserver` and :mod:`lmrlgym.openenv_adapter`; ``info`` keeps only the
values JSON carries exactly (numbers, strings, lists, string-keyed dicts; numpy scalars become
Python numbers; non-finite floats and other objects are left out), ``turns`` as
``[text, is_action, reward]`` triples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmrlgym.core import TextEnv
from lmrlgym.registry import registry, unknown_id_message

#: Largest action set sent with each answer (a chess position's legal moves fit, a vocabulary
#: of thousands of words does not and is left to the task's documentation).
MAX_ACTION_SET = 64


def served_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The ids to serve: ``tasks`` checked (unknown or not installed: ``ValueError``), or every
    registered id whose optional dependencies are installed."""
    if not tasks:
        return tuple(s.id for s in registry.values() if not s.missing())
    for t in tasks:
        if t not in registry:
            raise ValueError(unknown_id_message(t))
        missing = registry[t].missing()
        if missing:
            raise ValueError(f"--tasks {t} needs " + "; ".join(
                f"{r.name}: {r.install}" for r in missing))
    return tuple(dict.fromkeys(tasks))


def json_info(info: dict[str, Any]) -> dict[str, Any]:
    """The part of an env's ``info`` that JSON carries exactly (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key == "turns":
            out[key] = [[t.text, bool(t.is_action), float(t.reward)] for t in value]
            continue
        value = _plain(value)
        if value is not _DROP:
            out[key] = value
    return out


_DROP = object()


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready Python data, or ``_DROP`` if JSON cannot carry it."""
    if hasattr(value, "dtype") and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return _DROP
        items = {k: _plain(v) for k, v in value.items()}
        return _DROP if any(v is _DROP for v in items.values()) else items
    return _DROP


def action_set_of(env: TextEnv) -> list[str] | None:
    """The env's current valid actions when it defines a small set, else None."""
    method = getattr(env, "action_set", None)
    actions = method() if callable(method) else None
    if actions is None or len(actions) > MAX_ACTION_SET:
        return None
    return list(actions)
