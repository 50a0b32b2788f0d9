"""Environment info without CUDA, without NVML, with a scripted NVML, and on a card."""

from __future__ import annotations

import json
import platform
import socket
import sys
import types

import pytest
import torch

from lpperf.measure import environment
from lpperf.measure.environment import environment_info


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def fake_nvml(driver="550.54.15", cuda_version=12040):
    class NVMLError(Exception):
        pass

    return types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlSystemGetDriverVersion=lambda: driver,
        nvmlSystemGetCudaDriverVersion=lambda: cuda_version,
    )


def test_cpu_only_environment(no_cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    info = environment_info()
    assert info["device"] == "cpu"
    assert info["device_name"] == info["cpu_model"] == environment.cpu_model()
    assert info["cpu_model"]
    assert info["cuda_available"] is False
    assert info["gpu_count"] == 0 and info["gpus"] == []
    assert info["compute_capability"] is None and info["sm_count"] is None
    assert info["torch_version"] == torch.__version__
    assert info["python_version"] == platform.python_version()
    assert info["cuda_runtime_version"] == torch.version.cuda
    assert info["nvml_available"] is False
    assert "nvidia-ml-py" in info["nvml_unavailable_reason"]
    assert info["driver_version"] is None
    assert info["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    json.dumps(info, allow_nan=False)


def test_no_hostname_is_collected(no_cuda, monkeypatch):
    fake_host = "lpperf-private-host-7f3a"
    monkeypatch.setattr(platform, "node", lambda: fake_host)
    monkeypatch.setattr(socket, "gethostname", lambda: fake_host)
    info = environment_info()
    assert fake_host not in json.dumps(info)
    assert not [key for key in info if "host" in key or "node" in key]


def test_nvml_driver_fields(no_cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    info = environment_info()
    assert info["nvml_available"] is True
    assert info["driver_version"] == "550.54.15"
    assert info["driver_cuda_version"] == "12.4"


def test_nvml_query_failure_is_recorded(no_cuda, monkeypatch):
    nvml = fake_nvml()

    def unsupported():
        raise nvml.NVMLError("Not Supported")

    nvml.nvmlSystemGetDriverVersion = unsupported
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    info = environment_info()
    assert info["nvml_available"] is False
    assert "Not Supported" in info["nvml_unavailable_reason"]


@pytest.mark.parametrize("raw, text", [(12040, "12.4"), (11080, "11.8"), (13000, "13.0"), (12090, "12.9")])
def test_decode_cuda_version(raw, text):
    assert environment._decode_cuda_version(raw) == text


def test_cuda_device_without_cuda_is_an_error(no_cuda):
    with pytest.raises(ValueError, match="CUDA is not available"):
        environment_info("cuda:0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_environment():
    info = environment_info("cuda:0")
    assert info["device"] == "cuda:0"
    assert info["gpu_count"] == torch.cuda.device_count() >= 1
    major, minor = torch.cuda.get_device_capability(0)
    assert info["compute_capability"] == f"{major}.{minor}"
    assert info["sm_count"] == torch.cuda.get_device_properties(0).multi_processor_count > 0
    assert info["device_name"] == torch.cuda.get_device_name(0)
    assert info["gpus"][0]["l2_cache_bytes"] > 0
    assert info["cudnn_version"] is not None
    json.dumps(info, allow_nan=False)
