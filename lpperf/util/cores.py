"""Keeping processes on disjoint CPU cores: one card's compile must not slow another card's launches."""

from __future__ import annotations

import os
from collections.abc import Sequence


def available() -> list[int]:
    """The CPU cores this process may run on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_shares(count: int) -> list[list[int]] | None:
    """This process's CPU cores in `count` disjoint, contiguous shares, one per card's worker; None where
    affinity cannot be set (not Linux) or there are fewer cores than workers.

    Why: a compile in one card's process (inductor uses every core it may) slows the kernel launches of
    a launch-bound measurement in another card's process on the same host. Measured on two H200s
    sharing a host (torch 2.11): an eager frame's per-round spread went to +-20 %, and an
    A/A comparison of one card's CUDA-graph frame moved 11.5 %, while the other card compiled."""
    if not hasattr(os, "sched_getaffinity") or count < 1:
        return None
    cores = available()
    if len(cores) < count:
        return None
    return [cores[index * len(cores) // count:(index + 1) * len(cores) // count] for index in range(count)]


def pin(pid: int, cores: Sequence[int] | None) -> None:
    """Keep process `pid` (and the processes and threads it starts afterwards) on `cores`."""
    if not cores:
        return
    try:
        os.sched_setaffinity(pid, cores)
    except ProcessLookupError:
        pass  # it has already exited: its exit code and log say why, where it is waited for


def describe_cores(cores: Sequence[int] | None) -> str | None:
    if not cores:
        return None
    if len(cores) == 1:
        return str(cores[0])
    contiguous = list(cores) == list(range(cores[0], cores[-1] + 1))
    return f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores))
