"""CPU-suite settings: under pytest-xdist each worker gets its share of the cores for torch, so
two workers on a 2-core machine do not each start 2 threads and fight over the cores (that made
the suite 2-3x slower). Shared fixtures."""

import os

import pytest


def pytest_configure(config):
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture
def generator():
    """A seeded generator for the tests' random inputs and weights."""
    import torch

    return torch.Generator().manual_seed(0)
