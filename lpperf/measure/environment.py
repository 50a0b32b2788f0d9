"""What a benchmark number was measured on, as a JSON-ready dict.

Works without CUDA (device "cpu", the CPU model from /proc/cpuinfo or ``platform``)
and without NVML (driver fields None, the reason recorded). No hostname or user name
is collected. The numeric-mode switches that change results (TF32, cuDNN benchmark,
determinism) are recorded too, since they change both speed and parity.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import numpy as np
import torch

import lpperf
from lpperf.measure.memory import NvmlUnavailable, nvml_session


def cpu_model() -> str:
    """CPU model name; /proc/cpuinfo on Linux, where platform.processor() is often empty."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall through to platform
    return platform.processor() or platform.machine() or "unknown"


def _decode_cuda_version(version: int) -> str:
    """NVML's integer CUDA version (e.g. 12040) as "12.4"."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def nvml_info() -> dict[str, Any]:
    """Driver version and the CUDA version the driver supports, via NVML."""
    try:
        with nvml_session() as pynvml:
            try:
                driver = str(pynvml.nvmlSystemGetDriverVersion())
                cuda = _decode_cuda_version(int(pynvml.nvmlSystemGetCudaDriverVersion()))
            except pynvml.NVMLError as exc:
                raise NvmlUnavailable(f"NVML system query failed: {exc}") from exc
    except NvmlUnavailable as exc:
        return {
            "nvml_available": False,
            "nvml_unavailable_reason": str(exc),
            "driver_version": None,
            "driver_cuda_version": None,
        }
    return {
        "nvml_available": True,
        "nvml_unavailable_reason": "",
        "driver_version": driver,
        "driver_cuda_version": cuda,
    }


def gpu_info(index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "total_memory_bytes": int(props.total_memory),
        "l2_cache_bytes": int(props.L2_cache_size),
    }


def numeric_settings() -> dict[str, Any]:
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def environment_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Software and hardware of this run. ``device`` names the one the numbers were taken on
    (default: cuda:current when CUDA is available, else cpu)."""
    cuda = torch.cuda.is_available()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not cuda:
        raise ValueError(f"environment_info: {device} requested but CUDA is not available here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    gpus = [gpu_info(i) for i in range(torch.cuda.device_count())] if cuda else []
    selected = gpus[device.index] if device.type == "cuda" else None
    device_name = cpu_model() if selected is None else selected["name"]
    cudnn_version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "device": str(device),
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "os": platform.system(),
        "os_release": platform.release(),
        "machine": platform.machine(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable_bits": 64 if sys.maxsize > 2**32 else 32,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "lpperf_version": lpperf.__version__,
        "cuda_available": cuda,
        "cuda_runtime_version": torch.version.cuda,
        "cudnn_version": cudnn_version,
        "gpu_count": len(gpus),
        "gpus": gpus,
        "compute_capability": None if selected is None else selected["compute_capability"],
        "sm_count": None if selected is None else selected["sm_count"],
        **nvml_info(),
        **numeric_settings(),
    }
