"""How training reports its phases to the CLI's progress display: library code prints
nothing itself, so ``train()`` called from Python is silent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    """The CLI's progress display (library code prints nothing itself). Called as each phase
    starts (``done`` 0) and advances: ``read data``, ``tokenizer``, ``render``, ``train``
    (after each logged step or round, with its metrics), ``validate``, ``evaluate``,
    ``export``; ``total`` None: the phase has no count."""

    def __call__(self, done: int, total: int | None, metrics: dict[str, float],
                 phase: str = "train") -> None: ...


def report(progress: Progress | None, phase: str, done: int = 0, total: int | None = None) -> None:
    """Tell ``progress`` (if any) where ``phase`` is."""
    if progress is not None:
        progress(done, total, {}, phase)


def counter(progress: Progress | None, phase: str, total: int) -> Callable[[int], None] | None:
    """A ``progress(k)`` callback (``k`` more done, as :func:`evaluate` calls it) reporting
    ``phase`` out of ``total``; None without ``progress``."""
    if progress is None:
        return None
    done = 0
    report(progress, phase, 0, total)

    def advance(k: int) -> None:
        nonlocal done
        done += k
        report(progress, phase, done, total)

    return advance
