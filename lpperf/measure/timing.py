"""Timing that cannot be fooled by asynchronous GPU work.

Two explicit clocks, chosen by the device type, never by what happens to be installed:

* ``cuda``: CUDA events on the current stream. Before every sample the device is
  synchronised (so earlier work is not billed to this sample), the start and end
  events are recorded on ``torch.cuda.current_stream(device)`` around the call, and
  the elapsed time is read after ``end.synchronize()``. The callable's GPU work must
  be on that stream (or joined to it). Asking for CUDA timing where CUDA is absent
  raises :class:`lpperf.util.devices.CudaUnavailableError`.
* ``cpu``: ``time.perf_counter`` around the call and nothing else (no torch.cuda
  call in the timed region); the callable must be synchronous. If CUDA gets
  initialised during the first call, the callable is using the GPU and a
  ``ValueError`` says to time it on a CUDA device instead. (If CUDA was already
  initialised before, that cannot be detected; the roofline guard in
  ``lpperf.measure.roofline`` is the second line of defence.)

The first call (where ``torch.compile``, cuDNN autotuning and lazy init happen) and the
warm-up calls are timed apart (host wall time, synchronised) and never enter the
steady-state statistics. Sampling continues until a :class:`StoppingRule` is
satisfied or one of its caps is hit; the result records which.

pytest-benchmark: its default clock is a host clock, which times only the *launch* of
asynchronous GPU work. Never hand it an unsynchronised GPU callable. The supported
way: ``--benchmark-timer lpperf.measure.timing.synchronized_perf_counter`` (the lpperf plugin sets it
for every benchmark of the suite), which synchronises before each reading: host wall time with launch
overhead included. :func:`time_callable` is the CUDA event measurement, and its ``to_dict()`` can go
into ``benchmark.extra_info``.

Over 400 lines as one module: both clocks, the stopping rule and CUDA-graph replay must agree with each
other, and everything that times (bench, the suite, the gate's worker) uses them together.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lpperf.measure.memory import NvmlUnavailable, nvml_device_handle, nvml_session
from lpperf.util.devices import resolve_device

CLOCK_CUDA_EVENT = "cuda_event"
CLOCK_HOST = "host_perf_counter"

# NVML clock-event (formerly "throttle") reason bits, from nvml.h; the values are ABI.
CLOCK_REASON_BITS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)


# ---------------------------------------------------------------------------------
# statistics and the stopping rule (pure, CPU-testable)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method), q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample list")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


@dataclasses.dataclass(frozen=True)
class TimingStats:
    """Summary of steady-state samples, all in seconds. ``rel_iqr`` = IQR / median."""

    count: int
    median_s: float
    p90_s: float
    min_s: float
    max_s: float
    mean_s: float
    iqr_s: float
    rel_iqr: float

    @classmethod
    def from_samples(cls, samples_s: Sequence[float]) -> TimingStats:
        if not samples_s:
            raise ValueError("no timing samples to summarise")
        if any(not math.isfinite(s) or s < 0 for s in samples_s):
            raise ValueError(f"timing samples must be finite and >= 0 seconds, got {list(samples_s)}")
        ordered = sorted(samples_s)
        median = percentile(ordered, 50)
        iqr = percentile(ordered, 75) - percentile(ordered, 25)
        if median > 0:
            rel_iqr = iqr / median
        else:
            rel_iqr = 0.0 if iqr == 0 else math.inf
        return cls(
            count=len(ordered),
            median_s=median,
            p90_s=percentile(ordered, 90),
            min_s=ordered[0],
            max_s=ordered[-1],
            mean_s=sum(ordered) / len(ordered),
            iqr_s=iqr,
            rel_iqr=rel_iqr,
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rel_iqr"] = self.rel_iqr if math.isfinite(self.rel_iqr) else None
        for name in ("median", "p90", "min", "max", "mean", "iqr"):
            out[f"{name}_ms"] = out[f"{name}_s"] * 1e3
        return out


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """When to stop sampling.

    Converged: at least ``min_repeats`` samples, at least ``min_seconds`` of measured
    (summed sample) time, and IQR/median at most ``max_rel_iqr``.
    Capped (not converged): ``max_repeats`` samples or ``max_seconds`` of wall time in
    the sampling loop (synchronisation included: the cap is a budget).
    """

    min_repeats: int = 10
    min_seconds: float = 0.2
    max_rel_iqr: float = 0.05
    max_repeats: int = 1000
    max_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.min_repeats < 1:
            raise ValueError(f"min_repeats must be >= 1, got {self.min_repeats}")
        if self.max_repeats < self.min_repeats:
            raise ValueError(
                f"max_repeats ({self.max_repeats}) must be >= min_repeats ({self.min_repeats})"
            )
        if self.min_seconds < 0 or self.max_seconds <= 0:
            raise ValueError(
                f"min_seconds must be >= 0 and max_seconds > 0, got {self.min_seconds}, {self.max_seconds}"
            )
        if self.max_rel_iqr < 0:
            raise ValueError(f"max_rel_iqr must be >= 0, got {self.max_rel_iqr}")

    def decide(self, samples_s: Sequence[float], wall_s: float) -> tuple[bool, bool, str]:
        """(stop, converged, reason) after these samples and ``wall_s`` of sampling loop."""
        count = len(samples_s)
        if count >= self.min_repeats and sum(samples_s) >= self.min_seconds:
            rel_iqr = TimingStats.from_samples(samples_s).rel_iqr
            if rel_iqr <= self.max_rel_iqr:
                return True, True, f"converged: IQR/median {rel_iqr:.4f} <= {self.max_rel_iqr}"
        if count >= self.max_repeats:
            return True, False, f"cap: max_repeats={self.max_repeats} reached"
        if wall_s >= self.max_seconds:
            return True, False, f"cap: max_seconds={self.max_seconds} reached after {count} samples"
        return False, False, ""


# ---------------------------------------------------------------------------------
# clocks through NVML (read only; clocks are never locked or changed here)


def decode_clock_reasons(mask: int) -> tuple[str, ...]:
    """Names of the set NVML clock-event reason bits; unknown bits as ``unknown_0x...``."""
    if mask < 0:
        raise ValueError(f"clock reason mask must be >= 0, got {mask}")
    names = [name for bit, name in CLOCK_REASON_BITS if mask & bit]
    known = 0
    for bit, _ in CLOCK_REASON_BITS:
        known |= bit
    unknown = mask & ~known
    bit = 1
    while unknown:
        if unknown & bit:
            names.append(f"unknown_{bit:#x}")
            unknown &= ~bit
        bit <<= 1
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class ClockReading:
    sm_mhz: int
    mem_mhz: int
    reasons_mask: int
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "reasons": list(self.reasons)}


def read_clocks(cuda_index: int) -> ClockReading:
    """Current SM/memory clocks and clock-event reasons of ``cuda:<cuda_index>``.

    Raises :class:`NvmlUnavailable` when NVML cannot be used.
    """
    with nvml_session() as pynvml:
        handle = nvml_device_handle(pynvml, cuda_index)
        sm = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        mem = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        # Newer drivers name it "clocks event reasons"; the old name is deprecated.
        get_reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if get_reasons is None:
            get_reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = int(get_reasons(handle))
    return ClockReading(sm_mhz=int(sm), mem_mhz=int(mem), reasons_mask=mask, reasons=decode_clock_reasons(mask))


def _try_read_clocks(cuda_index: int) -> tuple[ClockReading | None, str]:
    try:
        return read_clocks(cuda_index), ""
    except NvmlUnavailable as exc:
        return None, str(exc)
    except Exception as exc:  # pynvml.NVMLError (e.g. not supported on this card); pynvml may be absent
        return None, f"NVML clock query failed: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------
# devices


def _synchronize_initialized_cuda() -> None:
    """Wait for all GPU work if this process ever touched CUDA (guard for host timing)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------
# measuring


@dataclasses.dataclass
class TimingResult:
    """One measured callable. Seconds throughout; ``to_dict()`` adds milliseconds."""

    device: str
    clock: str
    stats: TimingStats
    samples_s: list[float]
    converged: bool
    stop_reason: str
    first_call_s: float
    warmup_s: float
    warmup_calls: int
    measurement_wall_s: float
    rule: StoppingRule
    clocks_before: ClockReading | None
    clocks_after: ClockReading | None
    clocks_unavailable_reason: str
    # time_parts: each part's own samples (a sample of the whole is their sum in the same round)
    parts: dict[str, TimingStats] = dataclasses.field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return self.stats.median_s * 1e3

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "clock": self.clock,
            "stats": self.stats.to_dict(),
            "samples_s": list(self.samples_s),
            "converged": self.converged,
            "stop_reason": self.stop_reason,
            "first_call_s": self.first_call_s,
            "warmup_s": self.warmup_s,
            "warmup_calls": self.warmup_calls,
            "measurement_wall_s": self.measurement_wall_s,
            "rule": dataclasses.asdict(self.rule),
            "clocks_before": None if self.clocks_before is None else self.clocks_before.to_dict(),
            "clocks_after": None if self.clocks_after is None else self.clocks_after.to_dict(),
            "clocks_unavailable_reason": self.clocks_unavailable_reason,
            "parts": {name: stats.to_dict() for name, stats in self.parts.items()},
        }


def host_call_s(fn: Callable[[], object], device: torch.device) -> float:
    """Synchronised host wall time of one call (a first call with its compile, a warm-up call)."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def cuda_sample_s(fn: Callable[[], object], device: torch.device) -> float:
    """GPU time of one call in seconds: CUDA events around it on the current stream, after a synchronize."""
    torch.cuda.synchronize(device)
    stream = torch.cuda.current_stream(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1e3  # elapsed_time is in ms


def _host_sample_s(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_callable(
    fn: Callable[[], object],
    device: str | torch.device = "cpu",
    *,
    warmup: int = 3,
    rule: StoppingRule | None = None,
) -> TimingResult:
    """Time ``fn()`` (no arguments; bind them with a lambda or functools.partial).

    One first call and ``warmup`` further calls run untimed-by-statistics (their host
    times are recorded), then samples are taken until ``rule`` says stop. Clocks are
    read through NVML right before the first and right after the last sample; if NVML
    is unusable the reason is recorded instead.
    """
    return dataclasses.replace(time_parts({"call": fn}, device, warmup=warmup, rule=rule), parts={})


def time_parts(
    parts: Mapping[str, Callable[[], object]],
    device: str | torch.device = "cpu",
    *,
    warmup: int = 3,
    rule: StoppingRule | None = None,
) -> TimingResult:
    """Time a sequence of callables, each alone: in every round each part is sampled by itself (on
    CUDA the device is synchronised before it, as for time_callable), and the round's sample is the
    sum of its parts' samples. This is how the official LivePortrait speed script times its networks
    (each call between two synchronisations, the times added): the sum carries no work between the
    parts and no overlap of one part's launch with another's kernels.

    The result's samples and stopping rule are those of the sums; ``parts`` holds each part's own
    statistics, by name.
    """
    if not parts:
        raise ValueError("time_parts needs at least one callable to time")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 calls, got {warmup}")
    rule = StoppingRule() if rule is None else rule
    device = resolve_device(device, option="device")
    is_cuda = device.type == "cuda"
    calls = list(parts.values())

    cuda_was_initialized = torch.cuda.is_initialized()
    first_call_s = sum(host_call_s(fn, device) for fn in calls)
    if not is_cuda and not cuda_was_initialized and torch.cuda.is_initialized():
        raise ValueError(
            "the callable initialised CUDA during its first call, so it runs GPU work; host timing "
            "on device='cpu' would time only the kernel launches. Pass device='cuda' (or 'cuda:N')."
        )
    warmup_s = sum(host_call_s(fn, device) for _ in range(warmup) for fn in calls)

    if is_cuda:
        clocks_before, clock_reason = _try_read_clocks(device.index)
    else:
        clocks_before, clock_reason = None, "host timing on CPU: no GPU clocks apply"

    samples: list[float] = []
    part_samples: list[list[float]] = [[] for _ in calls]
    loop_start = time.perf_counter()
    while True:
        round_s = [cuda_sample_s(fn, device) if is_cuda else _host_sample_s(fn) for fn in calls]
        for kept, sample in zip(part_samples, round_s):
            kept.append(sample)
        samples.append(sum(round_s))
        stop, converged, reason = rule.decide(samples, time.perf_counter() - loop_start)
        if stop:
            break
    measurement_wall_s = time.perf_counter() - loop_start

    clocks_after = None
    if is_cuda:
        clocks_after, after_reason = _try_read_clocks(device.index)
        clock_reason = clock_reason or after_reason

    return TimingResult(
        device=str(device),
        clock=CLOCK_CUDA_EVENT if is_cuda else CLOCK_HOST,
        stats=TimingStats.from_samples(samples),
        samples_s=samples,
        converged=converged,
        stop_reason=reason,
        first_call_s=first_call_s,
        warmup_s=warmup_s,
        warmup_calls=warmup,
        measurement_wall_s=measurement_wall_s,
        rule=rule,
        clocks_before=clocks_before,
        clocks_after=clocks_after,
        clocks_unavailable_reason=clock_reason,
        parts={name: TimingStats.from_samples(kept) for name, kept in zip(parts, part_samples)},
    )


def graph_replay(fn: Callable[[], object], device: str | torch.device, *, warmup: int = 3) -> Callable[[], None]:
    """``fn``'s GPU work captured once as a CUDA graph; the returned callable replays it.

    Timing the replays measures the kernels alone: no Python, no launch gaps, so host jitter
    cannot move the number. ``fn`` must be capturable (no host synchronisation, no CPU-side
    data-dependent control flow). Warm-up runs first on a side stream, so cuDNN autotuning and
    lazy initialisation stay out of the graph.
    """
    device = resolve_device(device, option="device")
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, got {device}; time the eager call on the CPU instead")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # cuBLAS keeps one workspace per stream, allocated on first use and freed whenever anything clears
    # the workspaces (torch.compile's CUDA-graph trees do, on every recording). A graph whose matmuls
    # captured a workspace allocated outside it then writes into freed memory: an illegal memory access
    # on an H200 (torch 2.11) once a compiled recipe shared the process. Cleared before the
    # capture, the workspace is allocated inside the graph's private pool and lives with the graph;
    # cleared after, eager work never shares it. (The CUDA-graph trees do the same around their recordings.)
    _clear_cublas_workspaces()
    with torch.cuda.graph(graph):
        fn()
    _clear_cublas_workspaces()
    return graph.replay


def _clear_cublas_workspaces() -> None:
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # absent from CPU-only builds
    if clear is not None:
        clear()


# ---------------------------------------------------------------------------------
# pytest-benchmark integration


def synchronized_perf_counter() -> float:
    """A pytest-benchmark timer that waits for the GPU before reading the host clock.

    Use with ``--benchmark-timer lpperf.measure.timing.synchronized_perf_counter``. pytest-benchmark
    reads the timer before and after the target, so both ends are synchronised.
    """
    _synchronize_initialized_cuda()
    return time.perf_counter()
