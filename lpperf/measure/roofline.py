"""Roofline guard: reject timings that imply more arithmetic per second than the card can do.

A time below ``flops / peak`` is not a speed-up, it is a broken measurement (host timing
of asynchronous GPU work, or a cold first call used as the baseline). The guard needs
three numbers: the FLOPs of the call (counted once with ``FlopCounterMode``), the
measured seconds, and the device's peak (measured once per process with a large
dense matrix product and kept in a :class:`PeakCache`).

FlopCounterMode counts only ops with a FLOP formula (matmuls, convolutions, attention);
element-wise work, norms and ``grid_sample`` count zero. The counted FLOPs are
therefore a lower bound of the true work, and the implied TFLOP/s a lower bound too:
when the guard trips, the timing is impossible for certain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lpperf.measure.timing import StoppingRule, time_callable
from lpperf.util.devices import resolve_device

DEFAULT_MARGIN = 1.05  # 5 %: the measured peak itself carries a few per cent of noise


class ImpossibleTimingError(ValueError):
    """A timing implies more FLOP/s than the device's measured peak: a measurement error."""


# ---------------------------------------------------------------------------------
# counting


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call (2 per multiply-add). ``per_module`` maps the module path
    FlopCounterMode tracked (``"Global"`` excluded) to its FLOPs, children included."""

    total: int
    per_module: dict[str, int]
    per_op: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def count_flops(fn: Callable[..., object], *args: Any, **kwargs: Any) -> FlopCount:
    """Run ``fn(*args, **kwargs)`` once under FlopCounterMode and return its FLOPs.

    The call really executes (on whatever device its tensors are on); wrap it in
    ``torch.no_grad()`` yourself if the measured call runs without autograd.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    counts = counter.get_flop_counts()
    global_counts = counts.get("Global", {})
    return FlopCount(
        total=int(counter.get_total_flops()),
        per_module={
            name: int(sum(ops.values())) for name, ops in counts.items() if name != "Global"
        },
        per_op={str(op): int(n) for op, n in global_counts.items()},
    )


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product: one multiply and one add per term."""
    if min(m, n, k) < 1:
        raise ValueError(f"matmul dimensions must be >= 1, got m={m}, n={n}, k={k}")
    return 2 * m * n * k


# ---------------------------------------------------------------------------------
# the peak


@dataclasses.dataclass(frozen=True)
class PeakThroughput:
    """Best observed throughput of a dense square matmul on ``device``."""

    device: str
    dtype: str
    size: int
    products_per_sample: int
    best_seconds: float
    tflops: float
    clock: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_peak_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the fastest dense format the models use), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def measure_peak(
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    size: int | None = None,
    products_per_sample: int = 4,
    rule: StoppingRule | None = None,
) -> PeakThroughput:
    """Measure dense-matmul throughput; the fastest sample gives the peak.

    Several products per sample amortise the launch gap between the start event
    and the first kernel. Defaults: 8192 on CUDA (about 1 TFLOP per product),
    1024 on CPU (fast enough for a 2-core test machine; a larger matrix can reach
    a little more, which the guard's margin absorbs).
    """
    device = resolve_device(device)
    dtype = default_peak_dtype(device) if dtype is None else dtype
    if size is None:
        size = 8192 if device.type == "cuda" else 1024
    if size < 1 or products_per_sample < 1:
        raise ValueError(f"size and products_per_sample must be >= 1, got {size}, {products_per_sample}")
    if rule is None:
        rule = StoppingRule(min_repeats=10, min_seconds=0.2, max_rel_iqr=0.05, max_repeats=50, max_seconds=5.0)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=generator, device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def products() -> None:
        for _ in range(products_per_sample):
            torch.mm(a, b, out=out)

    result = time_callable(products, device, warmup=3, rule=rule)
    flops = products_per_sample * matmul_flops(size, size, size)
    return PeakThroughput(
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        size=size,
        products_per_sample=products_per_sample,
        best_seconds=result.stats.min_s,
        tflops=flops / result.stats.min_s / 1e12,
        clock=result.clock,
    )


class PeakCache:
    """Measures each (device, dtype) peak once and keeps it.

    An instance rather than a module global so its lifetime is explicit: the
    benchmark suite holds one in a session-scoped fixture, giving "once per
    process" without hidden state, and tests can make a fresh one.
    """

    def __init__(self, measure: Callable[..., PeakThroughput] = measure_peak):
        self._measure = measure
        self._peaks: dict[tuple[str, str], PeakThroughput] = {}

    def get(self, device: str | torch.device, dtype: torch.dtype | None = None) -> PeakThroughput:
        device = resolve_device(device)
        dtype = default_peak_dtype(device) if dtype is None else dtype
        key = (str(device), str(dtype))
        if key not in self._peaks:
            self._peaks[key] = self._measure(device, dtype)
        return self._peaks[key]


# ---------------------------------------------------------------------------------
# the guard


def achieved_tflops(flops: float, seconds: float) -> float:
    """TFLOP/s implied by doing ``flops`` in ``seconds``."""
    if flops < 0:
        raise ValueError(f"flops must be >= 0, got {flops}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}; a zero or negative time is a broken measurement")
    return flops / seconds / 1e12


def check(
    flops: float,
    seconds: float,
    peak: float | PeakThroughput,
    *,
    margin: float = DEFAULT_MARGIN,
    label: str = "timing",
) -> float:
    """Return the implied TFLOP/s, or raise :class:`ImpossibleTimingError` if it exceeds
    ``peak * margin`` (``peak`` in TFLOP/s or a :class:`PeakThroughput`)."""
    peak_tflops = peak.tflops if isinstance(peak, PeakThroughput) else float(peak)
    if not peak_tflops > 0:
        raise ValueError(f"peak must be > 0 TFLOP/s, got {peak_tflops}")
    if margin < 1:
        raise ValueError(f"margin must be >= 1 (a tolerance above the peak), got {margin}")
    implied = achieved_tflops(flops, seconds)
    if implied > peak_tflops * margin:
        raise ImpossibleTimingError(
            f"{label}: {flops / 1e12:.4g} TFLOP in {seconds * 1e3:.4g} ms implies {implied:.1f} TFLOP/s, "
            f"above the device's measured peak of {peak_tflops:.1f} TFLOP/s (margin x{margin}). "
            "This is a measurement error, not a speed-up: most likely host timing without "
            "synchronising the GPU (asynchronous kernels not waited for) or a cold first call "
            "used as the baseline. Time with CUDA events after warm-up (lpperf.measure.timing.time_callable)."
        )
    return implied
