"""GPU memory of this process, read through NVML (nvidia-ml-py, ``import pynvml``).

Two ways to attribute memory to this process, and every report says which one it used:

* ``"nvml_process"``: NVML's per-process list (``nvmlDeviceGetComputeRunningProcesses``)
  matched on ``os.getpid()``. Exact, and includes the CUDA context, cuBLAS/cuDNN
  workspaces and everything else outside torch's caching allocator.
* ``"nvml_device_delta"``: the device's used memory minus a baseline read before the
  region. Used when our PID is not in NVML's list, which is normal in containers
  (NVML reports host PIDs, the process sees its namespace PID). It also counts any
  other process that allocates on the card meanwhile, and misses whatever this
  process already held before the baseline (e.g. a context created earlier).

Peaks over a region are *sampled* (a background thread reads NVML every few ms), so
a spike shorter than the interval can be missed; torch's own
``max_memory_allocated``/``max_memory_reserved`` are exact for what goes through the
caching allocator and are reported next to it.

This module also holds the small NVML plumbing (session, device handle) that
``lpperf.measure.timing`` and ``lpperf.measure.environment`` reuse, so the "NVML missing" path is
written once, and :func:`release_cached_memory`, which everything that measures one
configuration after another calls in between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import threading
from collections.abc import Iterator
from typing import Any

import torch

METHOD_PROCESS = "nvml_process"
METHOD_DEVICE_DELTA = "nvml_device_delta"


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here: no pynvml module, no driver, or no GPU. The message says which."""


@dataclasses.dataclass(frozen=True)
class NvmlAvailability:
    """Result of :func:`available`; truthy only when NVML can be used."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(
            f"the pynvml module is not importable ({exc}); install nvidia-ml-py"
        ) from exc
    return pynvml


@contextlib.contextmanager
def nvml_session() -> Iterator[Any]:
    """Initialise NVML for the duration of the block and yield the pynvml module.

    nvmlInit/nvmlShutdown are reference counted by NVML, so sessions may nest and
    several threads may hold one at the same time.
    """
    pynvml = _import_pynvml()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(
            f"NVML failed to initialise ({exc}); is an NVIDIA driver installed and a GPU visible?"
        ) from exc
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            raise NvmlUnavailable("NVML initialised but reports no GPU on this machine")
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def available() -> NvmlAvailability:
    """Whether NVML can be used, with the reason when it cannot. Never raises for a missing NVML."""
    try:
        with nvml_session():
            return NvmlAvailability(True, "")
    except NvmlUnavailable as exc:
        return NvmlAvailability(False, str(exc))


def _cuda_uuid(cuda_index: int) -> str | None:
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_properties(cuda_index).uuid)


def nvml_device_handle(pynvml: Any, cuda_index: int) -> Any:
    """NVML handle of the card that torch calls ``cuda:<cuda_index>``.

    torch numbers only the visible devices, NVML numbers all of them, so the index
    alone is wrong under CUDA_VISIBLE_DEVICES. Matched by UUID when torch can give
    one; otherwise through CUDA_VISIBLE_DEVICES; otherwise the index is the same.
    """
    if cuda_index < 0:
        raise ValueError(f"CUDA device index must be >= 0, got {cuda_index}")
    uuid = _cuda_uuid(cuda_index)
    if uuid is not None:
        nvml_uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(nvml_uuid)
        except pynvml.NVMLError:
            pass  # e.g. a MIG instance: its UUID is not a GPU UUID; resolve via the index below
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
        if cuda_index >= len(entries):
            raise ValueError(
                f"cuda:{cuda_index} is not among CUDA_VISIBLE_DEVICES={visible!r} ({len(entries)} visible)"
            )
        entry = entries[cuda_index]
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        return pynvml.nvmlDeviceGetHandleByUUID(entry)
    return pynvml.nvmlDeviceGetHandleByIndex(cuda_index)


def process_memory_bytes(pynvml: Any, handle: Any, pid: int) -> int | None:
    """NVML's used memory of process ``pid`` on the card, or None when NVML does not list it."""
    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory is not None:
            return int(proc.usedGpuMemory)
    return None


def device_used_bytes(pynvml: Any, handle: Any) -> int:
    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


@dataclasses.dataclass
class MemoryReport:
    """GPU memory over one region. Byte counts; None where the source does not apply.

    ``process_peak_bytes`` is the sampled peak by ``method`` (see the module doc).
    ``context_bytes`` = process peak minus torch's peak reserved: the CUDA context,
    library workspaces and anything allocated outside torch's caching allocator.
    It is only given for the ``nvml_process`` method; the device delta misses what
    existed before the baseline, so a difference there would not mean "context". None
    too where the sampled peak lies below torch's exact one (a spike between samples).
    """

    method: str
    device_index: int
    process_peak_bytes: int
    samples: int
    sample_interval_s: float
    baseline_device_used_bytes: int
    device_total_bytes: int
    torch_max_allocated_bytes: int | None
    torch_max_reserved_bytes: int | None
    context_bytes: int | None
    peak_is_sampled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MemoryTracker:
    """Samples NVML in a background thread and keeps the peaks; see :func:`track_peak_memory`."""

    def __init__(self, pynvml: Any, handle: Any, cuda_index: int, interval_s: float, baseline_bytes: int | None = None):
        self._pynvml = pynvml
        self._handle = handle
        self._cuda_index = cuda_index
        self._interval_s = interval_s
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        self._baseline = int(info.used) if baseline_bytes is None else baseline_bytes
        self._total = int(info.total)
        self._peak_process: int | None = None
        self._peak_device = max(self._baseline, int(info.used))
        self._samples = 0
        self.report: MemoryReport | None = None

    def sample(self) -> None:
        """Take one reading now (the thread calls this; start and end take one each too)."""
        process = process_memory_bytes(self._pynvml, self._handle, self._pid)
        device = device_used_bytes(self._pynvml, self._handle)
        if process is not None:
            self._peak_process = process if self._peak_process is None else max(self._peak_process, process)
        self._peak_device = max(self._peak_device, device)
        self._samples += 1

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval_s):
                self.sample()
        except Exception as exc:  # re-raised in the caller's thread by stop()
            self._error = exc

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="lpperf-nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> MemoryReport:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is None:
            try:
                self.sample()
            except self._pynvml.NVMLError as exc:
                self._error = exc
        if self._error is not None:
            raise RuntimeError(f"NVML memory sampling failed: {self._error}") from self._error
        self.report = self._build_report()
        return self.report

    def _build_report(self) -> MemoryReport:
        torch_allocated, torch_reserved = _torch_peaks(self._cuda_index)
        if self._peak_process is not None:
            method, peak = METHOD_PROCESS, self._peak_process
            context = None if torch_reserved is None else peak - torch_reserved
            if context is not None and context < 0:  # the sampler missed the peak that torch counted exactly
                context = None
        else:
            method, peak = METHOD_DEVICE_DELTA, self._peak_device - self._baseline
            context = None
        return MemoryReport(
            method=method,
            device_index=self._cuda_index,
            process_peak_bytes=peak,
            samples=self._samples,
            sample_interval_s=self._interval_s,
            baseline_device_used_bytes=self._baseline,
            device_total_bytes=self._total,
            torch_max_allocated_bytes=torch_allocated,
            torch_max_reserved_bytes=torch_reserved,
            context_bytes=context,
        )


def _torch_peaks(cuda_index: int) -> tuple[int | None, int | None]:
    if not torch.cuda.is_available():
        return None, None
    return (
        int(torch.cuda.max_memory_allocated(cuda_index)),
        int(torch.cuda.max_memory_reserved(cuda_index)),
    )


def _cuda_index(device: int | str | torch.device) -> int:
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"GPU memory is measured on a CUDA device, got {device}; pass 'cuda' or 'cuda:N'")
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def track_peak_memory(
    device: int | str | torch.device = "cuda", interval_s: float = 0.005, baseline_bytes: int | None = None
) -> Iterator[MemoryTracker]:
    """Record the peak GPU memory of this process over the ``with`` block.

    ``tracker.report`` (a :class:`MemoryReport`) is filled when the block exits. ``baseline_bytes`` (from
    :func:`device_used_now`, read earlier) is what the device-delta method subtracts instead of the card's
    use on entry: a region that runs what an earlier step already allocated (a timed loop after its
    build) would otherwise count only its growth.
    torch's peak counters are reset on entry so its maxima cover this region only,
    and the device is synchronised before the last reading so queued work counts.
    Raises :class:`NvmlUnavailable` on entry when NVML cannot be used.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
    cuda_index = _cuda_index(device)
    with nvml_session() as pynvml:
        handle = nvml_device_handle(pynvml, cuda_index)
        if torch.cuda.is_available():
            torch.cuda.synchronize(cuda_index)
            torch.cuda.reset_peak_memory_stats(cuda_index)
        tracker = MemoryTracker(pynvml, handle, cuda_index, interval_s, baseline_bytes)
        tracker.start()
        try:
            yield tracker
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize(cuda_index)
            tracker.stop()


def device_used_now(device: int | str | torch.device = "cuda") -> int:
    """The card's used memory now, through NVML (raises NvmlUnavailable where it cannot be read): the
    baseline to hand to track_peak_memory for a region whose allocations start before it."""
    cuda_index = _cuda_index(device)
    with nvml_session() as pynvml:
        if torch.cuda.is_available():
            torch.cuda.synchronize(cuda_index)
        return device_used_bytes(pynvml, nvml_device_handle(pynvml, cuda_index))


def release_cached_memory() -> None:
    """Free what the last configuration left behind before measuring the next: torch.compile's
    graphs (and their CUDA-graph memory pools), unreachable objects, and torch's cached GPU blocks.
    Call it once that configuration's engines and animators are out of scope."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
