"""Shared test fixtures and helpers."""

import pytest
import torch

from lmrlgym.registry import EnvSpec


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # Two xdist workers share the CI machine's 2 cores: with torch's default of one thread per
    # core each worker's OpenMP threads spin against the other's and tiny-model steps run
    # several times slower than with one thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(items):
    # The slow tests (learning tests, distributed runs, ~20-150 s each) go first, so that the
    # xdist workers start them early and share the fast tests at the end; started last, one of
    # them left a worker alone for about a minute at the end of an idle run.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def skip_if_missing(spec: EnvSpec) -> None:
    missing = spec.missing()
    if missing:
        pytest.skip(f"{spec.id} needs " + "; ".join(f"{r.name}: {r.install}" for r in missing))
