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


def require(what: str, *requirements: Requirement) -> None:
    """Raise :class:`DependencyNotInstalled` naming ``what`` needs and how to install each
    missing requirement (for a Python package: the pyproject extra that brings it)."""
    missing = [r for r in requirements if not r.available()]
    if missing:
        raise DependencyNotInstalled(f"{what} needs " + "; ".join(f"{r.name}: {r.install}"
                                                                  for r in missing))


#: The install command of the ``serve`` extra (FastAPI and uvicorn for ``lmrlgym serve``, httpx
#: for clients of OpenAI-compatible endpoints).
SERVE_EXTRA = 'pip install "lmrlgym[serve]"'


def find_binary(name: str, env_var: str | None = None) -> str | None:
    """Path of an executable: ``$env_var`` if set, else PATH, else Debian's ``/usr/games``."""
    if env_var and os.environ.get(env_var):
        path = os.environ[env_var]
        return path if os.path.exists(path) else None
    return shutil.which(name) or shutil.which(name, path="/usr/games")


@dataclasses.dataclass(frozen=True)
class Lengths:
    """A task's token budgets: the prompt the policy conditions on and one action's tokens."""

    max_context_tokens: int
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.max_context_tokens <= 0 or self.max_new_tokens <= 0:
            raise ValueError(f"token lengths must be positive, got {self}")

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A task's full evaluation: ``episodes`` episodes whose resets cycle through ``cycle``
    start items (``cycle_over``: Maze's start cells, Twenty Questions' objects, ...; 1 when
    only the seed varies). ``episodes`` is a multiple of ``cycle``, so every item is played
    equally often; the resets themselves come from the env class's ``evaluation_resets``."""

    episodes: int = 100
    cycle: int = 1
    cycle_over: str = ""

    def __post_init__(self) -> None:
        if self.episodes <= 0 or self.cycle <= 0:
            raise ValueError(f"protocol sizes must be positive, got {self}")
        if self.episodes % self.cycle:
            raise ValueError(
                f"protocol of {self.episodes} episodes does not play each of the {self.cycle} "
                f"{self.cycle_over or 'items'} equally often"
            )

    @property
    def repeats(self) -> int:
        """Episodes per cycled item."""
        return self.episodes // self.cycle


@dataclasses.dataclass(frozen=True)
class PaperSettings:
    """What the LMRL-Gym paper used for a task: its model and its dataset size (trajectories)."""

    model: str
    data_episodes: int


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How to build one registered env id, and the task facts every other module reads."""

    id: str
    entry_point: str  # "module.path:ClassName"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_turns: int | None = None  # agent steps before truncation (documentation + checker)
    nondeterministic: bool = False
    requires: tuple[Requirement, ...] = ()
    description: str = ""
    lengths: Lengths | None = None  # training/decoding budgets (None: the config's defaults)
    protocol: Protocol = Protocol()
    group: str | None = None  # tasks sharing per-method paper settings ("maze", "dialogue", ...)
    paper: PaperSettings | None = None

    def missing(self) -> list[Requirement]:
        """Requirements that are not installed on this machine."""
        return [r for r in self.requires if not r.available()]

    def env_class(self) -> type[TextEnv]:
        """The class the entry point names (imported; no env is built)."""
        module_name, _, attr = self.entry_point.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def make(self, **kwargs: Any) -> TextEnv:
        require(self.id, *self.requires)
        cls: Callable[..., TextEnv] = self.env_class()
        env = cls(**{**self.kwargs, **kwargs})
        env.spec_id = self.id  # type: ignore[attr-defined]
        return env

    def evaluation_resets(self, n_episodes: int | None = None, **env_kwargs: Any
                          ) -> list[tuple[int, dict[str, Any]]]:
        """``(seed, reset options)`` of the protocol's episodes (``n_episodes`` replaces its
        count); ``env_kwargs`` override the spec's, as in :meth:`make`."""
        n = self.protocol.episodes if n_episodes is None else n_episodes
        return self.env_class().evaluation_resets(n, **{**self.kwargs, **env_kwargs})


registry: dict[str, EnvSpec] = {}


def register(
    id: str,
    entry_point: str,
    kwargs: dict[str, Any] | None = None,
    max_turns: int | None = None,
    nondeterministic: bool = False,
    requires: tuple[Requirement, ...] = (),
    description: str = "",
    lengths: Lengths | None = None,
    protocol: Protocol = Protocol(),
    group: str | None = None,
    paper: PaperSettings | None = None,
) -> EnvSpec:
    """Add an env id to the registry (and to Gymnasium's, as ``lmrlgym/<id>``)."""
    if id in registry:
        raise ValueError(f"env id {id!r} is already registered")
    spec_ = EnvSpec(
        id, entry_point, dict(kwargs or {}), max_turns, nondeterministic, requires, description,
        lengths, protocol, group, paper,
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
