"""Roofline guard: FLOP counting, the peak cache, and the arithmetic of the check."""

from __future__ import annotations

import json
import time

import pytest
import torch

from lpperf.measure.roofline import (
    DEFAULT_MARGIN,
    ImpossibleTimingError,
    PeakCache,
    PeakThroughput,
    achieved_tflops,
    check,
    count_flops,
    matmul_flops,
    measure_peak,
)
from lpperf.measure.timing import StoppingRule, time_callable
from lpperf.util.devices import CudaUnavailableError

FAST_RULE = StoppingRule(min_repeats=5, min_seconds=0.0, max_rel_iqr=1.0, max_repeats=20, max_seconds=5.0)

# ---------------------------------------------------------------------------------
# counting


def test_matmul_flops_is_two_mnk():
    assert matmul_flops(64, 16, 32) == 2 * 64 * 16 * 32
    assert matmul_flops(8192, 8192, 8192) == 1_099_511_627_776
    with pytest.raises(ValueError):
        matmul_flops(0, 1, 1)


def test_count_flops_of_a_matmul():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    counted = count_flops(torch.mm, a, b)
    assert counted.total == 2 * 64 * 16 * 32
    assert counted.per_op == {"aten.mm": 2 * 64 * 16 * 32}


def test_count_flops_per_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    with torch.no_grad():
        counted = count_flops(net, torch.randn(4, 32))
    first, second = 2 * 4 * 32 * 16, 2 * 4 * 16 * 8  # batch 4; the ReLU counts nothing
    assert counted.total == first + second
    assert counted.per_module["Sequential.0"] == first
    assert counted.per_module["Sequential.2"] == second
    assert counted.per_module["Sequential"] == first + second  # a parent includes its children
    json.dumps(counted.to_dict())


def test_count_flops_of_a_convolution():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        counted = count_flops(conv, torch.randn(2, 3, 10, 10))
    # per output element: 3 * 3 * 3 multiply-adds; outputs: 2 * 8 * 10 * 10
    assert counted.total == 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)


# ---------------------------------------------------------------------------------
# the guard's arithmetic


def test_achieved_tflops():
    assert achieved_tflops(2e12, 1.0) == pytest.approx(2.0)
    assert achieved_tflops(1.25e12, 7.15e-3) == pytest.approx(174.825, rel=1e-4)
    with pytest.raises(ValueError, match="seconds"):
        achieved_tflops(1e12, 0.0)
    with pytest.raises(ValueError, match="flops"):
        achieved_tflops(-1.0, 1.0)


def test_guard_trips_just_above_peak_times_margin_and_passes_just_below():
    peak, margin = 100.0, 1.05
    flops = matmul_flops(8192, 8192, 8192)
    limit_seconds = flops / (peak * margin * 1e12)  # the time that implies exactly peak * margin
    below = check(flops, limit_seconds * (1 + 1e-6), peak, margin=margin)
    assert below == pytest.approx(peak * margin, rel=1e-5)
    with pytest.raises(ImpossibleTimingError):
        check(flops, limit_seconds * (1 - 1e-6), peak, margin=margin)
    assert check(flops, 2 * flops / (peak * 1e12), peak, margin=margin) == pytest.approx(peak / 2)


def test_guard_default_margin_and_error_type():
    assert DEFAULT_MARGIN > 1.0
    with pytest.raises(ValueError):  # ImpossibleTimingError is a ValueError
        check(2e12, 1e-3, 100.0)


def test_guard_rejects_the_seed_claim_with_a_clear_message():
    # 1.25 TFLOP per frame in 0.6 ms against a ~790 TFLOP/s card (measured on an H200, torch 2.11)
    peak = PeakThroughput(device="cuda:0", dtype="bfloat16", size=8192, products_per_sample=4,
                          best_seconds=5.6e-3, tflops=790.0, clock="cuda_event")
    with pytest.raises(ImpossibleTimingError) as raised:
        check(1.25e12, 0.6e-3, peak, label="seed notebook")
    message = str(raised.value)
    assert "seed notebook" in message
    assert "2083.3 TFLOP/s" in message
    assert "790.0 TFLOP/s" in message
    assert "measurement error" in message
    assert "synchronising" in message and "cold first call" in message


def test_guard_accepts_the_measured_anchor():
    # torch.compile reduce-overhead: 7.15 ms per frame on an H200 (torch 2.11)
    assert check(1.25e12, 7.15e-3, 790.0) == pytest.approx(174.8, rel=1e-3)


@pytest.mark.parametrize("peak, margin", [(0.0, 1.05), (-5.0, 1.05), (100.0, 0.99)])
def test_guard_rejects_bad_parameters(peak, margin):
    with pytest.raises(ValueError) as raised:
        check(1e12, 1.0, peak, margin=margin)
    assert not isinstance(raised.value, ImpossibleTimingError)


# ---------------------------------------------------------------------------------
# the peak


def test_peak_cache_measures_each_device_and_dtype_once():
    calls = []

    def fake_measure(device, dtype):
        calls.append((str(device), dtype))
        return PeakThroughput(str(device), str(dtype), 8, 1, 1.0, 1.0 + len(calls), "host_perf_counter")

    cache = PeakCache(measure=fake_measure)
    first = cache.get("cpu")
    assert cache.get("cpu") is first
    assert cache.get(torch.device("cpu"), torch.float32) is first  # float32 is the CPU default
    assert calls == [("cpu", torch.float32)]
    assert cache.get("cpu", torch.bfloat16) is not first
    assert len(calls) == 2


def test_cpu_peak_is_positive_and_bounds_an_honest_measurement():
    # One thread, and the peak measured on both sides of the honest run: on a shared 2-core CI
    # machine (pytest -n 2) thread oversubscription can otherwise slow one measurement many-fold.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before = measure_peak("cpu", size=256, products_per_sample=2, rule=FAST_RULE)
        a, b = torch.randn(256, 256), torch.randn(256, 256)
        flops = count_flops(torch.mm, a, b).total
        honest = time_callable(lambda: torch.mm(a, b), "cpu", warmup=2, rule=FAST_RULE)
        after = measure_peak("cpu", size=256, products_per_sample=2, rule=FAST_RULE)
    finally:
        torch.set_num_threads(threads)
    peak = max(before, after, key=lambda p: p.tflops)
    assert peak.clock == "host_perf_counter" and peak.dtype == "float32"
    assert peak.tflops > 0
    assert peak.best_seconds == pytest.approx(2 * matmul_flops(256, 256, 256) / (peak.tflops * 1e12))
    # the median of an honest run cannot beat the best of the peak runs by much; 3 absorbs CPU noise
    check(flops, honest.stats.median_s, peak, margin=3.0)
    with pytest.raises(ImpossibleTimingError):
        check(flops, honest.stats.median_s / 100, peak, margin=3.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour where CUDA is absent")
def test_gpu_peak_without_cuda_is_an_error():
    with pytest.raises(CudaUnavailableError):
        measure_peak("cuda")
    with pytest.raises(CudaUnavailableError):
        PeakCache().get("cuda:0")


# ---------------------------------------------------------------------------------
# on the card


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_guard_catches_unsynchronised_host_timing():
    device = torch.device("cuda", 0)
    peak = PeakCache().get(device)
    assert peak.dtype == "bfloat16" and peak.clock == "cuda_event"
    assert 10.0 < peak.tflops < 5000.0  # sanity, not a performance claim

    n, products = 8192, 20
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)

    def work():
        for _ in range(products):
            torch.mm(a, b)

    flops = products * matmul_flops(n, n, n)
    work()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()  # the seed notebook's mistake: no synchronise before reading the clock
    unsynchronised_s = time.perf_counter() - start
    torch.cuda.synchronize(device)
    with pytest.raises(ImpossibleTimingError):
        check(flops, unsynchronised_s, peak)

    honest = time_callable(work, device, warmup=1, rule=FAST_RULE)
    check(flops, honest.stats.median_s, peak)
