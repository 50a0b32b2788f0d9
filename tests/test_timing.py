"""Timing statistics, the stopping rule, host timing, the CUDA branch and pytest-benchmark glue."""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
import time
import types

import numpy as np
import pytest
import torch

from lpperf.measure import timing
from lpperf.util.devices import CudaUnavailableError, resolve_device
from lpperf.measure.timing import (
    CLOCK_CUDA_EVENT,
    CLOCK_HOST,
    StoppingRule,
    TimingStats,
    decode_clock_reasons,
    percentile,
    read_clocks,
    synchronized_perf_counter,
    time_callable,
    time_parts,
)

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour where CUDA is absent")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FAST_RULE = StoppingRule(min_repeats=5, min_seconds=0.0, max_rel_iqr=0.5, max_repeats=50, max_seconds=5.0)

# ---------------------------------------------------------------------------------
# statistics on known samples


def test_percentile_hand_values():
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 25) == pytest.approx(3.25)
    assert percentile(values, 75) == pytest.approx(7.75)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile([7.0], 90) == 7.0


def test_percentile_agrees_with_numpy():
    rng = random.Random(3)
    values = sorted(rng.uniform(0, 1) for _ in range(37))
    for q in (10, 25, 50, 75, 90, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_stats_of_known_samples():
    stats = TimingStats.from_samples([4.0, 1.0, 3.0, 2.0])  # order must not matter
    assert stats.count == 4
    assert stats.median_s == pytest.approx(2.5)
    assert stats.p90_s == pytest.approx(3.7)  # position 0.9 * 3 = 2.7 -> 3 + 0.7
    assert stats.min_s == 1.0 and stats.max_s == 4.0
    assert stats.mean_s == pytest.approx(2.5)
    assert stats.iqr_s == pytest.approx(3.25 - 1.75)
    assert stats.rel_iqr == pytest.approx(1.5 / 2.5)
    as_dict = stats.to_dict()
    assert as_dict["median_ms"] == pytest.approx(2500.0)
    assert as_dict["p90_ms"] == pytest.approx(3700.0)


def test_stats_zero_median_edge_cases():
    assert TimingStats.from_samples([0.0, 0.0, 0.0]).rel_iqr == 0.0
    spread = TimingStats.from_samples([0.0, 0.0, 0.0, 1.0])  # median 0, IQR 0.25
    assert spread.rel_iqr == math.inf
    assert spread.to_dict()["rel_iqr"] is None  # JSON has no inf
    json.dumps(spread.to_dict(), allow_nan=False)


@pytest.mark.parametrize("bad", [[], [1.0, -0.1], [1.0, math.nan], [math.inf]])
def test_stats_reject_bad_samples(bad):
    with pytest.raises(ValueError):
        TimingStats.from_samples(bad)


@pytest.mark.parametrize("q", [-1, 101])
def test_percentile_rejects_q_out_of_range(q):
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0], q)


# ---------------------------------------------------------------------------------
# stopping rule


def test_rule_converges_once_counts_and_seconds_are_met():
    rule = StoppingRule(min_repeats=10, min_seconds=5.0, max_rel_iqr=0.05, max_repeats=100, max_seconds=60)
    assert rule.decide([1.0] * 9, wall_s=9) == (False, False, "")  # too few samples
    stop, converged, reason = rule.decide([1.0] * 10, wall_s=10)
    assert stop and converged and reason.startswith("converged")


def test_rule_waits_for_min_seconds():
    rule = StoppingRule(min_repeats=10, min_seconds=1.0, max_rel_iqr=0.05, max_repeats=100, max_seconds=60)
    assert rule.decide([0.001] * 10, wall_s=0.01)[0] is False  # 10 ms of measurement < 1 s
    assert rule.decide([0.125] * 10, wall_s=1.25)[:2] == (True, True)


def test_rule_keeps_going_while_noisy_then_stops_at_max_repeats():
    rule = StoppingRule(min_repeats=4, min_seconds=0.0, max_rel_iqr=0.05, max_repeats=20, max_seconds=60)
    noisy = [1.0, 2.0] * 5  # IQR/median far above 5 %
    assert rule.decide(noisy, wall_s=1)[0] is False
    stop, converged, reason = rule.decide([1.0, 2.0] * 10, wall_s=1)
    assert stop and not converged
    assert "max_repeats=20" in reason


def test_rule_stops_at_max_seconds():
    rule = StoppingRule(min_repeats=4, min_seconds=0.0, max_rel_iqr=0.05, max_repeats=1000, max_seconds=30)
    stop, converged, reason = rule.decide([1.0, 2.0, 1.0, 2.0], wall_s=30.5)
    assert stop and not converged
    assert "max_seconds=30" in reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_repeats": 0},
        {"min_repeats": 10, "max_repeats": 5},
        {"min_seconds": -1.0},
        {"max_seconds": 0.0},
        {"max_rel_iqr": -0.1},
    ],
)
def test_rule_rejects_inconsistent_settings(kwargs):
    with pytest.raises(ValueError):
        StoppingRule(**kwargs)


# ---------------------------------------------------------------------------------
# host timing


def test_host_timing_of_a_sleep_is_plausible():
    result = time_callable(lambda: time.sleep(0.005), "cpu", warmup=1, rule=FAST_RULE)
    assert result.clock == CLOCK_HOST
    assert result.device == "cpu"
    assert result.stats.count >= 5
    assert result.stats.min_s >= 0.005  # sleep never returns early
    assert result.stats.median_s < 0.005 + 0.05  # generous for a loaded 2-core machine
    assert len(result.samples_s) == result.stats.count
    assert result.clocks_before is None and "CPU" in result.clocks_unavailable_reason
    json.dumps(result.to_dict(), allow_nan=False)


def test_first_call_and_warmup_are_kept_out_of_steady_state():
    calls = []

    def compiled_once():
        calls.append(1)
        time.sleep(0.2 if len(calls) == 1 else 0.002)  # first call pays a "compile"

    result = time_callable(compiled_once, "cpu", warmup=2, rule=FAST_RULE)
    assert result.first_call_s >= 0.2
    assert result.stats.max_s < 0.2
    assert result.warmup_calls == 2
    assert 2 * 0.002 <= result.warmup_s < 0.2
    assert len(calls) == 1 + 2 + result.stats.count


def _alternating_clock(monkeypatch, *seconds):
    """A host clock that each call of the returned callable advances by the next of `seconds`, in turn:
    the stopping rule then sees exactly these durations, however loaded the machine is."""
    clock = [0.0]
    durations = itertools.cycle(seconds)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def run():
        clock[0] += next(durations)
    return run


def test_sampling_stops_at_max_repeats_when_noisy(monkeypatch):
    rule = StoppingRule(min_repeats=3, min_seconds=0.0, max_rel_iqr=0.01, max_repeats=8, max_seconds=30)
    result = time_callable(_alternating_clock(monkeypatch, 0.0, 0.004), "cpu", warmup=0, rule=rule)
    assert result.stats.count == 8
    assert result.converged is False
    assert "max_repeats" in result.stop_reason


def test_sampling_stops_at_max_seconds(monkeypatch):
    rule = StoppingRule(min_repeats=3, min_seconds=0.0, max_rel_iqr=0.01, max_repeats=100_000, max_seconds=0.1)
    result = time_callable(_alternating_clock(monkeypatch, 0.0, 0.004), "cpu", warmup=0, rule=rule)
    assert result.converged is False
    assert "max_seconds" in result.stop_reason
    assert 0.1 <= result.measurement_wall_s < 0.11
    assert result.stats.count < 100


def test_converges_on_a_steady_callable(monkeypatch):
    rule = StoppingRule(min_repeats=5, min_seconds=0.02, max_rel_iqr=0.5, max_repeats=500, max_seconds=10)
    result = time_callable(_alternating_clock(monkeypatch, 0.002, 0.0021), "cpu", warmup=0, rule=rule)
    assert result.converged, result.stop_reason
    assert sum(result.samples_s) >= 0.02 and result.stats.count >= 5


def test_parts_are_each_timed_alone_and_a_sample_is_their_sum_in_one_round(monkeypatch):
    """The official speed script's measure: M, W and G each between two synchronisations, added."""
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def part(*seconds):
        durations = iter(seconds * 10)

        def run():
            clock[0] += next(durations)
        return run

    rule = StoppingRule(min_repeats=4, min_seconds=0.0, max_rel_iqr=1.0, max_repeats=4, max_seconds=100)
    # first call and one warm-up call, then four rounds: W alternates, so a round's sum pairs the parts
    result = time_parts({"M": part(0.001), "W": part(0.003, 0.005), "G": part(0.002)}, "cpu", warmup=1, rule=rule)
    assert result.first_call_s == pytest.approx(0.006) and result.warmup_s == pytest.approx(0.008)
    assert result.samples_s == pytest.approx([0.006, 0.008, 0.006, 0.008])
    assert list(result.parts) == ["M", "W", "G"]
    assert [stats.count for stats in result.parts.values()] == [4, 4, 4]
    assert {name: stats.median_s for name, stats in result.parts.items()} == pytest.approx(
        {"M": 0.001, "W": 0.004, "G": 0.002})
    assert result.to_dict()["parts"]["W"]["max_ms"] == pytest.approx(5.0)
    assert time_callable(part(0.001), "cpu", warmup=0, rule=rule).parts == {}  # one callable: no breakdown
    with pytest.raises(ValueError, match="at least one callable"):
        time_parts({}, "cpu")


def test_host_timing_refuses_a_callable_that_starts_cuda(monkeypatch):
    cuda_state = {"initialized": False}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_state["initialized"])

    def launches_gpu_work():
        cuda_state["initialized"] = True

    with pytest.raises(ValueError, match="device='cuda'"):
        time_callable(launches_gpu_work, "cpu", rule=FAST_RULE)


def test_bad_arguments():
    with pytest.raises(ValueError, match="warmup"):
        time_callable(lambda: None, "cpu", warmup=-1)
    with pytest.raises(ValueError, match="lpperf runs on auto, cpu, cuda or cuda:N"):
        resolve_device("meta")


# ---------------------------------------------------------------------------------
# CUDA branch without CUDA


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_timing_without_cuda_is_an_error_not_a_fallback(device):
    calls = []
    with pytest.raises(CudaUnavailableError, match="asked for a CUDA GPU, but torch sees none"):
        time_callable(lambda: calls.append(1), device)
    assert calls == []  # nothing was run, let alone host-timed


# ---------------------------------------------------------------------------------
# clocks


def test_decode_clock_reasons_known_masks():
    assert decode_clock_reasons(0) == ()
    assert decode_clock_reasons(0x1) == ("gpu_idle",)
    assert decode_clock_reasons(0x4 | 0x40) == ("sw_power_cap", "hw_thermal_slowdown")
    assert decode_clock_reasons(0x800 | 0x8) == ("hw_slowdown", "unknown_0x800")
    with pytest.raises(ValueError):
        decode_clock_reasons(-1)


def test_clock_reason_bits_match_pynvml_constants():
    pynvml = pytest.importorskip("pynvml")
    by_name = dict((name, bit) for bit, name in timing.CLOCK_REASON_BITS)
    expected = {
        "gpu_idle": "nvmlClocksThrottleReasonGpuIdle",
        "applications_clocks_setting": "nvmlClocksThrottleReasonApplicationsClocksSetting",
        "sw_power_cap": "nvmlClocksThrottleReasonSwPowerCap",
        "hw_slowdown": "nvmlClocksThrottleReasonHwSlowdown",
        "sync_boost": "nvmlClocksThrottleReasonSyncBoost",
        "sw_thermal_slowdown": "nvmlClocksThrottleReasonSwThermalSlowdown",
        "hw_thermal_slowdown": "nvmlClocksThrottleReasonHwThermalSlowdown",
        "hw_power_brake_slowdown": "nvmlClocksThrottleReasonHwPowerBrakeSlowdown",
        "display_clock_setting": "nvmlClocksThrottleReasonDisplayClockSetting",
    }
    for name, constant in expected.items():
        assert by_name[name] == getattr(pynvml, constant), name


def _fake_clock_nvml(*, event_api: bool):
    class NVMLError(Exception):
        pass

    module = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_CLOCK_SM=1,
        NVML_CLOCK_MEM=2,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: f"h{index}",
        nvmlDeviceGetClockInfo=lambda handle, kind: {1: 1980, 2: 2619}[kind],
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda handle: 0x1,
    )
    if event_api:
        module.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: 0x4
    return module


@pytest.mark.parametrize("event_api, mask, names", [(True, 0x4, ("sw_power_cap",)), (False, 0x1, ("gpu_idle",))])
def test_read_clocks_through_nvml(monkeypatch, event_api, mask, names):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_clock_nvml(event_api=event_api))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    reading = read_clocks(0)
    assert (reading.sm_mhz, reading.mem_mhz) == (1980, 2619)
    assert reading.reasons_mask == mask
    assert reading.reasons == names
    assert reading.to_dict()["reasons"] == list(names)


def test_clock_read_failure_is_recorded_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    reading, reason = timing._try_read_clocks(0)
    assert reading is None and "nvidia-ml-py" in reason


# ---------------------------------------------------------------------------------
# pytest-benchmark


def test_synchronized_perf_counter_is_a_monotonic_clock():
    first = synchronized_perf_counter()
    time.sleep(0.001)
    assert synchronized_perf_counter() - first >= 0.001


# ---------------------------------------------------------------------------------
# on the card


@pytest.mark.gpu
@needs_cuda
def test_cuda_events_time_the_gpu_work_not_the_launch():
    device = torch.device("cuda", 0)
    torch.cuda.init()
    cycles = 20_000_000  # about 10 ms at ~2 GHz

    def spin():
        torch.cuda._sleep(cycles)

    spin()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    spin()  # no synchronise: host time sees only the launch
    launch_s = time.perf_counter() - start
    torch.cuda.synchronize(device)

    rule = StoppingRule(min_repeats=5, min_seconds=0.0, max_rel_iqr=0.1, max_repeats=20, max_seconds=10)
    result = time_callable(spin, device, warmup=1, rule=rule)
    assert result.clock == CLOCK_CUDA_EVENT
    assert result.device == "cuda:0"
    assert result.stats.median_s > 10 * launch_s
    assert 0.002 < result.stats.median_s < 0.1
    if result.clocks_before is not None:
        assert result.clocks_before.sm_mhz > 0 and result.clocks_after.mem_mhz > 0
    else:
        assert result.clocks_unavailable_reason
    json.dumps(result.to_dict(), allow_nan=False)


@pytest.mark.gpu
@needs_cuda
def test_the_synchronising_clock_waits_for_the_gpu():
    """The suite's pytest-benchmark clock: a reading taken while a kernel runs comes after the kernel."""
    torch.cuda.init()
    torch.cuda._sleep(1_000)
    torch.cuda.synchronize()
    torch.cuda._sleep(20_000_000)  # about 10 ms at ~2 GHz
    launched = time.perf_counter()
    assert synchronized_perf_counter() - launched > 0.002


# --- the CUDA clocks' order of operations, on a scripted torch.cuda -------------------------------------

@pytest.fixture
def scripted_cuda(monkeypatch):
    """torch.cuda's synchronize, stream and events replaced by a log of what was called, in order; an
    event pair reports 7 ms, as CUDA's elapsed_time does (milliseconds)."""
    calls = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing, "an event without timing cannot be read"
            self.name = f"event {sum(call.startswith('new event') for call in calls)}"
            calls.append(f"new {self.name}")

        def record(self, stream=None):
            calls.append(f"record {self.name} on {stream}")

        def synchronize(self):
            calls.append(f"wait {self.name}")

        def elapsed_time(self, end):
            return 7.0

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "the current stream")
    monkeypatch.setattr(torch.cuda, "Event", Event)
    return calls


def test_a_cuda_sample_is_the_events_around_the_call_after_a_synchronize_in_seconds(scripted_cuda):
    seconds = timing.cuda_sample_s(lambda: scripted_cuda.append("call"), torch.device("cuda"))
    assert seconds == pytest.approx(0.007)
    assert scripted_cuda == ["synchronize", "new event 0", "new event 1", "record event 0 on the current stream",
                             "call", "record event 1 on the current stream", "wait event 1"]


def test_a_host_call_on_the_card_waits_for_the_gpu_before_and_after(scripted_cuda):
    timing.host_call_s(lambda: scripted_cuda.append("call"), torch.device("cuda"))
    assert scripted_cuda == ["synchronize", "call", "synchronize"]


def test_time_parts_on_the_card_samples_every_part_with_cuda_events(scripted_cuda, monkeypatch):
    monkeypatch.setattr(timing, "_try_read_clocks", lambda index: (None, "scripted card"))
    for name, value in (("is_available", True), ("device_count", 1), ("current_device", 0), ("is_initialized", True)):
        monkeypatch.setattr(torch.cuda, name, lambda *args, value=value: value)
    result = timing.time_parts({"M": lambda: scripted_cuda.append("M"), "W": lambda: scripted_cuda.append("W")},
                               torch.device("cuda"), warmup=1, rule=FAST_RULE)
    assert result.clock == timing.CLOCK_CUDA_EVENT
    assert result.stats.median_s == pytest.approx(0.014)  # two parts of 7 ms each, summed per round
    timed = scripted_cuda[scripted_cuda.index("new event 0"):]  # after the first and warm-up calls
    assert timed[:6] == ["new event 0", "new event 1", "record event 0 on the current stream", "M",
                         "record event 1 on the current stream", "wait event 1"]
