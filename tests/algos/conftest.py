"""Shared fixtures of the algorithm tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # The CI machine has 2 cores shared with other jobs; oversubscribed OpenMP threads spin and
    # run tiny-model steps several times slower than one thread does.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
