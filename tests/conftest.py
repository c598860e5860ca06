"""Shared test helpers: skipping specs whose optional dependencies are missing."""

import pytest

from lmrlgym.registry import EnvSpec


def skip_if_missing(spec: EnvSpec) -> None:
    missing = spec.missing()
    if missing:
        pytest.skip(f"{spec.id} needs " + "; ".join(f"{r.name}: {r.install}" for r in missing))
