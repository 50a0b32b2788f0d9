"""Which device a command runs on: one parser for `--device` and one resolver, and the cards a
process may be given. Messages name the option and say what to use instead."""

from __future__ import annotations

import argparse
import os
import re

DEVICES = "auto, cpu, cuda or cuda:N"


class CudaUnavailableError(RuntimeError):
    """A CUDA device was asked for where torch cannot use one."""


def device_name(text: str) -> str:
    """An argparse type for --device: the name, checked for form only (nothing is imported)."""
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"unsupported device {text!r}; lpperf runs on {DEVICES}")


def resolve_device(name, option: str = "--device"):
    """auto: CUDA if available, else the CPU; cpu; cuda or cuda:N, which torch must be able to use.
    Anything else is a ValueError, a CUDA device torch cannot use a CudaUnavailableError; both name `option`."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {name!r} is not a device; lpperf runs on {DEVICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} {name}: lpperf runs on {DEVICES}, not on {device.type}")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise CudaUnavailableError(f"{option} {name} asked for a CUDA GPU, but torch sees none (torch "
                           f"{torch.__version__}, CUDA build {torch.version.cuda}); use {option} cpu or auto")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise CudaUnavailableError(f"{option} {name}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def visible_gpus() -> list[str]:
    """The cards a worker can be given: CUDA_VISIBLE_DEVICES entries if set, else every CUDA device."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]
