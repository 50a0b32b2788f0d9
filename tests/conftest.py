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


@pytest.fixture
def small_nets(monkeypatch):
    """Commands that run on the CPU get tests/helpers.py's small networks instead of the TINY ones."""
    from helpers import small_networks
    from lpperf.models import weights

    monkeypatch.setattr(weights, "tiny_networks", lambda seed=0: small_networks())


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if a command gets as far as loading networks (arguments must be checked first)."""
    from lpperf.models import weights

    def refuse(*args, **kwargs):
        raise AssertionError("networks were loaded before the arguments were checked")

    monkeypatch.setattr(weights, "load_networks", refuse)


@pytest.fixture
def drawn(monkeypatch):
    """Every chart figure drawn, kept instead of written as PNG files."""
    pytest.importorskip("matplotlib")
    from lpperf.reports import charts

    figures = []
    monkeypatch.setattr(charts, "_save", lambda figure, path: figures.append(figure) or path)
    return figures
