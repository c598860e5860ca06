"""Versioned environment registry: ``register``, ``make``, ``spec``, ``registry``.

Ids follow Gymnasium's ``Name-vN`` convention. Every spec is also registered with Gymnasium
under the ``lmrlgym/`` namespace, so ``gymnasium.make("lmrlgym/Maze-FO-v0")`` works once
``lmrlgym`` is imported. Gymnasium 1.x loads no plugin entry points, so code that does not
import ``lmrlgym`` uses the module-import form ``gymnasium.make("lmrlgym:lmrlgym/Maze-FO-v0")``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

from lmrlgym.core import TextEnv


class DependencyNotInstalled(ImportError):
    """An optional dependency (Python package or system binary) of an env is missing."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    """An optional dependency: a Python module or an executable, with the command installing it."""

    name: str
    install: str
    kind: str = "module"  # "module" or "binary"
    env_var: str | None = None  # for binaries: an env var that may point at the executable

    def available(self) -> bool:
        if self.kind == "module":
            return importlib.util.find_spec(self.name) is not None
        return find_binary(self.name, self.env_var) is not None


def find_binary(name: str, env_var: str | None = None) -> str | None:
    """Path of an executable: ``$env_var`` if set, else PATH, else Debian's ``/usr/games``."""
    if env_var and os.environ.get(env_var):
        path = os.environ[env_var]
        return path if os.path.exists(path) else None
    return shutil.which(name) or shutil.which(name, path="/usr/games")


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How to build one registered env id."""

    id: str
    entry_point: str  # "module.path:ClassName"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_turns: int | None = None  # agent steps before truncation (documentation + checker)
    nondeterministic: bool = False
    requires: tuple[Requirement, ...] = ()
    description: str = ""

    def missing(self) -> list[Requirement]:
        """Requirements that are not installed on this machine."""
        return [r for r in self.requires if not r.available()]

    def make(self, **kwargs: Any) -> TextEnv:
        missing = self.missing()
        if missing:
            hints = "; ".join(f"{r.name}: {r.install}" for r in missing)
            raise DependencyNotInstalled(f"{self.id} needs {hints}")
        module_name, _, attr = self.entry_point.partition(":")
        cls: Callable[..., TextEnv] = getattr(importlib.import_module(module_name), attr)
        env = cls(**{**self.kwargs, **kwargs})
        env.spec_id = self.id  # type: ignore[attr-defined]
        return env


registry: dict[str, EnvSpec] = {}


def register(
    id: str,
    entry_point: str,
    kwargs: dict[str, Any] | None = None,
    max_turns: int | None = None,
    nondeterministic: bool = False,
    requires: tuple[Requirement, ...] = (),
    description: str = "",
) -> EnvSpec:
    """Add an env id to the registry (and to Gymnasium's, as ``lmrlgym/<id>``)."""
    if id in registry:
        raise ValueError(f"env id {id!r} is already registered")
    spec_ = EnvSpec(
        id, entry_point, dict(kwargs or {}), max_turns, nondeterministic, requires, description
    )
    registry[id] = spec_
    import gymnasium

    gymnasium.register(
        id=f"lmrlgym/{id}",
        entry_point=entry_point,
        kwargs=dict(kwargs or {}),
        nondeterministic=nondeterministic,
    )
    return spec_


def spec(id: str) -> EnvSpec:
    """The spec of a registered id; an unknown id raises ``KeyError`` listing the valid ones."""
    try:
        return registry[id]
    except KeyError:
        raise KeyError(unknown_id_message(id)) from None


def unknown_id_message(id: str) -> str:
    close = difflib.get_close_matches(id, list(registry), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown task id {id!r}.{hint} Valid ids: {', '.join(registry)}"


def make(id: str, **kwargs: Any) -> TextEnv:
    """Build a registered env, with ``kwargs`` overriding the spec's defaults."""
    return spec(id).make(**kwargs)


def parse_env_kwargs(text: str, flag: str = "--env-kwargs") -> dict[str, Any]:
    """Env keyword arguments given on a command line as a JSON object (``flag`` names the
    option in the error)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not valid JSON: {e.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value
