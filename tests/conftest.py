"""Shared test fixtures and helpers."""

import os

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
    # Each xdist worker starts on its share of the long tests (learning tests, distributed runs:
    # `slow(seconds=N)`, N their time on one idle core). Worksteal scheduling first gives worker
    # i the i-th contiguous share of this order (N // n_workers tests, the last ones one more),
    # so each share is made to open with every n-th long test, longest first, followed by a
    # contiguous run of the short ones (a module's fixtures stay on one worker). At the end an
    # idle worker steals the other's last, short tests. In file order, one worker got every long
    # test and ran them in a row for 420 s while the other finished its short ones at 350 s.
    # Long tests of one `slow(group=...)` share an expensive module fixture: they are dealt as
    # one unit, so the fixture runs on one worker only.
    def marker(item):
        return item.get_closest_marker("slow")

    def seconds(item):
        return 0 if marker(item) is None else marker(item).kwargs.get("seconds", 10)

    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    units: dict[str, list] = {}
    for item in items:
        if seconds(item):
            units.setdefault(marker(item).kwargs.get("group", item.nodeid), []).append(item)
    long = sorted(units.values(), key=lambda unit: sum(map(seconds, unit)), reverse=True)
    short = [item for item in items if not seconds(item)]
    ordered, left = [], len(items)
    for i in range(n):
        size = left // (n - i)  # worksteal's share for the i-th worker
        lane = [item for unit in long[i::n] for item in unit]
        take = max(0, size - len(lane))
        ordered += lane + short[:take]
        short, left = short[take:], left - size
    items[:] = ordered + short


def skip_if_missing(spec: EnvSpec) -> None:
    missing = spec.missing()
    if missing:
        pytest.skip(f"{spec.id} needs " + "; ".join(f"{r.name}: {r.install}" for r in missing))
