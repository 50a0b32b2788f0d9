"""NVML memory measurement: absence, init failure, PID match and the device-delta fallback.

The CPU tests replace the ``pynvml`` module with a scripted fake, so every branch is
exercised without a driver; the GPU test reads the real card.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types

import pytest
import torch

from lpperf.measure import memory
from lpperf.measure.memory import (
    METHOD_DEVICE_DELTA,
    METHOD_PROCESS,
    NvmlUnavailable,
    available,
    device_used_now,
    nvml_device_handle,
    nvml_session,
    track_peak_memory,
)

MB = 1 << 20


class FakeNvml:
    """A scripted stand-in for the pynvml module.

    ``process_memory`` and ``device_used`` are sequences returned one per read (the
    last value repeats), so a test knows every value the sampler can see.
    """

    def __init__(self, *, pid=None, process_memory=(0,), device_used=(0,), total=80_000 * MB,
                 init_error=None, gpu_count=1):
        self.pid = os.getpid() if pid is None else pid
        self.process_memory = list(process_memory)
        self.device_used = list(device_used)
        self.total = total
        self.init_error = init_error
        self.gpu_count = gpu_count
        self.inits = 0
        self.shutdowns = 0
        self.handle_requests = []

    @staticmethod
    def _next(values):
        return values.pop(0) if len(values) > 1 else values[0]

    def module(self):
        fake = self

        class NVMLError(Exception):
            pass

        def nvmlInit():
            if fake.init_error is not None:
                raise NVMLError(fake.init_error)
            fake.inits += 1

        def nvmlShutdown():
            fake.shutdowns += 1

        def nvmlDeviceGetHandleByIndex(index):
            fake.handle_requests.append(("index", index))
            return f"handle-{index}"

        def nvmlDeviceGetHandleByUUID(uuid):
            fake.handle_requests.append(("uuid", uuid))
            return f"handle-{uuid}"

        def nvmlDeviceGetComputeRunningProcesses(handle):
            used = fake._next(fake.process_memory)
            return [types.SimpleNamespace(pid=fake.pid, usedGpuMemory=used)]

        def nvmlDeviceGetMemoryInfo(handle):
            return types.SimpleNamespace(used=fake._next(fake.device_used), total=fake.total)

        return types.SimpleNamespace(
            NVMLError=NVMLError,
            nvmlInit=nvmlInit,
            nvmlShutdown=nvmlShutdown,
            nvmlDeviceGetCount=lambda: fake.gpu_count,
            nvmlDeviceGetHandleByIndex=nvmlDeviceGetHandleByIndex,
            nvmlDeviceGetHandleByUUID=nvmlDeviceGetHandleByUUID,
            nvmlDeviceGetComputeRunningProcesses=nvmlDeviceGetComputeRunningProcesses,
            nvmlDeviceGetMemoryInfo=nvmlDeviceGetMemoryInfo,
        )


def install(monkeypatch, fake: FakeNvml) -> FakeNvml:
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    # The fake stands for a machine whose torch sees no CUDA, whatever this one has.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


# ---------------------------------------------------------------------------------
# NVML missing


def test_missing_pynvml_module_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    status = available()
    assert not status
    assert status.ok is False
    assert "nvidia-ml-py" in status.reason
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py"):
        with track_peak_memory(0):
            pass


def test_init_failure_is_reported_with_the_driver_message(monkeypatch):
    fake = install(monkeypatch, FakeNvml(init_error="Driver Not Loaded"))
    status = available()
    assert not status
    assert "Driver Not Loaded" in status.reason
    with pytest.raises(NvmlUnavailable, match="failed to initialise"):
        with nvml_session():
            pass
    assert fake.inits == 0


def test_no_gpu_is_reported_and_nvml_is_shut_down(monkeypatch):
    fake = install(monkeypatch, FakeNvml(gpu_count=0))
    status = available()
    assert not status
    assert "no GPU" in status.reason
    assert fake.inits == fake.shutdowns == 1


def test_available_true_with_working_nvml(monkeypatch):
    fake = install(monkeypatch, FakeNvml())
    status = available()
    assert status and status.reason == ""
    assert fake.inits == fake.shutdowns == 1


def test_real_nvml_check_never_crashes():
    status = available()
    assert isinstance(status.ok, bool)
    assert status.ok or status.reason  # a failure always carries its reason


# ---------------------------------------------------------------------------------
# attribution


def test_pid_match_reports_process_peak(monkeypatch):
    fake = install(monkeypatch, FakeNvml(process_memory=[100 * MB, 300 * MB, 200 * MB],
                                         device_used=[1000 * MB]))
    with track_peak_memory(0, interval_s=0.001) as tracker:
        pass
    report = tracker.report
    assert report.method == METHOD_PROCESS
    assert report.process_peak_bytes == 300 * MB  # start and end readings alone see 100 and 300
    assert report.samples >= 2
    assert report.peak_is_sampled
    assert report.baseline_device_used_bytes == 1000 * MB
    # torch has no CUDA here: its numbers and the context share are absent, not zero
    assert report.torch_max_allocated_bytes is None
    assert report.torch_max_reserved_bytes is None
    assert report.context_bytes is None
    assert fake.inits == fake.shutdowns == 1
    json.dumps(report.to_dict(), allow_nan=False)


def test_context_share_is_process_minus_torch_reserved(monkeypatch):
    install(monkeypatch, FakeNvml(process_memory=[700 * MB], device_used=[0]))
    monkeypatch.setattr(memory, "_torch_peaks", lambda index: (400 * MB, 512 * MB))
    with track_peak_memory("cuda:0") as tracker:
        pass
    assert tracker.report.method == METHOD_PROCESS
    assert tracker.report.torch_max_allocated_bytes == 400 * MB
    assert tracker.report.torch_max_reserved_bytes == 512 * MB
    assert tracker.report.context_bytes == 700 * MB - 512 * MB


def test_a_sampled_peak_below_torchs_exact_one_claims_no_context(monkeypatch):
    install(monkeypatch, FakeNvml(process_memory=[300 * MB], device_used=[1000 * MB]))
    monkeypatch.setattr(memory, "_torch_peaks", lambda index: (256 * MB, 512 * MB))
    with track_peak_memory(0, interval_s=0.001) as tracker:
        pass
    assert tracker.report.process_peak_bytes == 300 * MB and tracker.report.context_bytes is None


def test_pid_mismatch_falls_back_to_device_delta(monkeypatch):
    install(monkeypatch, FakeNvml(pid=os.getpid() + 1, process_memory=[5000 * MB],
                                  device_used=[1000 * MB, 1500 * MB, 1200 * MB]))
    with track_peak_memory(0, interval_s=0.001) as tracker:
        pass
    report = tracker.report
    assert report.method == METHOD_DEVICE_DELTA
    assert report.baseline_device_used_bytes == 1000 * MB
    assert report.process_peak_bytes == 500 * MB  # peak 1500 minus baseline 1000, not the other PID's 5000
    assert report.context_bytes is None  # a delta cannot separate the context


def test_a_device_delta_counts_from_a_baseline_read_before_the_region(monkeypatch):
    """A timed loop after its build allocates nothing new: from its own start the delta would read ~0."""
    install(monkeypatch, FakeNvml(pid=os.getpid() + 1, device_used=[1000 * MB, 1600 * MB]))
    before = device_used_now(0)  # before the build
    with track_peak_memory(0, interval_s=0.001, baseline_bytes=before) as tracker:
        pass  # the card stays at 1600 MiB: the build's memory, held through the region
    assert tracker.report.method == METHOD_DEVICE_DELTA
    assert tracker.report.baseline_device_used_bytes == 1000 * MB
    assert tracker.report.process_peak_bytes == 600 * MB
    with track_peak_memory(0, interval_s=0.001) as alone:
        pass
    assert alone.report.process_peak_bytes == 0  # what the region's own start gives


def test_bench_hands_both_trackers_of_a_row_the_baseline_from_before_its_build(monkeypatch):
    from lpperf.reports import bench

    seen = []
    monkeypatch.setattr(memory, "available", lambda: memory.NvmlAvailability(True, ""))
    monkeypatch.setattr(memory, "device_used_now", lambda device: 1234)
    monkeypatch.setattr(memory, "track_peak_memory",
                        lambda device, baseline_bytes=None: seen.append(baseline_bytes) or contextlib.nullcontext())
    cuda = torch.device("cuda")
    assert bench._device_used_before(cuda) == 1234 and bench._device_used_before(torch.device("cpu")) is None
    with contextlib.ExitStack() as stack:
        bench._track_memory(stack, cuda, 1234)
    assert seen == [1234]


def test_unavailable_per_process_memory_falls_back_to_device_delta(monkeypatch):
    # Our PID is listed but NVML cannot say its memory (usedGpuMemory None, e.g. WDDM).
    install(monkeypatch, FakeNvml(process_memory=[None], device_used=[10 * MB, 42 * MB]))
    with track_peak_memory(0) as tracker:
        pass
    assert tracker.report.method == METHOD_DEVICE_DELTA
    assert tracker.report.process_peak_bytes == 32 * MB


def test_sampler_failure_is_raised_not_swallowed(monkeypatch):
    fake = install(monkeypatch, FakeNvml())
    nvml = sys.modules["pynvml"]
    calls = []

    def failing(handle):
        calls.append(1)
        if len(calls) > 1:
            raise nvml.NVMLError("GPU is lost")
        return []

    nvml.nvmlDeviceGetComputeRunningProcesses = failing
    with pytest.raises(RuntimeError, match="GPU is lost"):
        with track_peak_memory(0, interval_s=0.001):
            pass
    assert fake.inits == fake.shutdowns == 1


def test_bad_arguments(monkeypatch):
    install(monkeypatch, FakeNvml())
    with pytest.raises(ValueError, match="CUDA device"):
        with track_peak_memory("cpu"):
            pass
    with pytest.raises(ValueError, match="interval_s"):
        with track_peak_memory(0, interval_s=0):
            pass


# ---------------------------------------------------------------------------------
# mapping torch's device index to NVML's


def test_handle_by_index_without_visible_devices(monkeypatch):
    fake = install(monkeypatch, FakeNvml())
    with nvml_session() as nvml:
        assert nvml_device_handle(nvml, 2) == "handle-2"
    assert fake.handle_requests == [("index", 2)]


def test_handle_follows_cuda_visible_devices(monkeypatch):
    fake = install(monkeypatch, FakeNvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1")
    with nvml_session() as nvml:
        assert nvml_device_handle(nvml, 1) == "handle-1"
        assert nvml_device_handle(nvml, 0) == "handle-3"
        with pytest.raises(ValueError, match="not among CUDA_VISIBLE_DEVICES"):
            nvml_device_handle(nvml, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234abcd")
    with nvml_session() as nvml:
        assert nvml_device_handle(nvml, 0) == "handle-GPU-1234abcd"
    assert fake.handle_requests[-1] == ("uuid", "GPU-1234abcd")


def test_handle_prefers_torch_uuid(monkeypatch):
    fake = install(monkeypatch, FakeNvml())
    monkeypatch.setattr(memory, "_cuda_uuid", lambda index: "5c8f0f4e-0000-1111-2222-333344445555")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with nvml_session() as nvml:
        assert nvml_device_handle(nvml, 0) == "handle-GPU-5c8f0f4e-0000-1111-2222-333344445555"
    assert fake.handle_requests == [("uuid", "GPU-5c8f0f4e-0000-1111-2222-333344445555")]


# ---------------------------------------------------------------------------------
# on the card


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_peak_covers_a_known_allocation():
    status = available()
    if not status:
        pytest.skip(f"NVML unavailable: {status.reason}")
    torch.cuda.init()
    nbytes = 256 * MB
    with track_peak_memory("cuda:0", interval_s=0.002) as tracker:
        block = torch.ones(nbytes, dtype=torch.uint8, device="cuda:0")
        torch.cuda.synchronize()
        del block
    report = tracker.report
    assert report.torch_max_allocated_bytes >= nbytes
    assert report.process_peak_bytes >= nbytes
    if report.method == METHOD_PROCESS:
        assert report.context_bytes > 0  # the CUDA context lives outside the caching allocator
    json.dumps(report.to_dict(), allow_nan=False)


def test_release_cached_memory_drops_compiled_graphs_objects_and_cached_blocks(monkeypatch):
    calls = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: calls.append("compiled graphs"))
    monkeypatch.setattr(memory.gc, "collect", lambda: calls.append("unreachable objects") or 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cached GPU blocks"))
    memory.release_cached_memory()
    assert calls == ["compiled graphs", "unreachable objects", "cached GPU blocks"]
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    memory.release_cached_memory()
    assert calls == ["compiled graphs", "unreachable objects"]
