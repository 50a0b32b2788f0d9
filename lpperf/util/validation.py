"""Input checks shared by the pipeline and the CLI.

Every check raises ValueError naming the input, what was expected, what
came and what to do. Nothing is resized, converted or clipped: a wrong input
is an error, not something to repair silently.

Shape and dtype checks cost nothing on the GPU. Value checks (range, NaN,
Inf) read a result back to the host, so they synchronise the device; the
pipeline runs them where frames enter. Inside its per-frame step it uses
check_unit_range_async instead, which never waits for the device.
"""

import math
import numbers
import os
from pathlib import Path

import torch

IMAGE_SIZE = 256  # LivePortrait's networks take 256x256 crops
IMAGE_CHANNELS = 3


def check_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(value: torch.Tensor, name: str) -> torch.Tensor:
    if not value.is_floating_point():
        hint = " (8-bit images: convert with .float() / 255)" if value.dtype == torch.uint8 else ""
        raise ValueError(f"{name} must have a floating dtype, got {value.dtype}{hint}")
    return value


def check_images(images, name: str, *, batch: int | None = None, size: int = IMAGE_SIZE,
                 check_values: bool = True) -> torch.Tensor:
    """A Bx3xSxS floating batch of RGB images with values in [0, 1]; returns it unchanged.

    `batch`, when given, is the batch size the caller needs.
    """
    check_tensor(images, name)
    expected = f"{'B' if batch is None else batch}x{IMAGE_CHANNELS}x{size}x{size}"
    if images.dim() != 4:
        raise ValueError(f"{name} must be a 4-D {expected} image batch, got {images.dim()}-D shape "
                         f"{tuple(images.shape)}" + ("; add the batch dimension with .unsqueeze(0)"
                                                      if images.dim() == 3 else ""))
    if images.shape[1] != IMAGE_CHANNELS:
        raise ValueError(f"{name} must have {IMAGE_CHANNELS} (RGB) channels in dim 1 ({expected}), got "
                         f"shape {tuple(images.shape)}; channels-last images need .permute(0, 3, 1, 2)")
    if tuple(images.shape[2:]) != (size, size):
        raise ValueError(f"{name} must be {size}x{size} pixels ({expected}), got {images.shape[2]}x"
                         f"{images.shape[3]}; crop/resize to {size}x{size} first (lpperf never resizes)")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)}); pass at least one image")
    if batch is not None and images.shape[0] != batch:
        raise ValueError(f"{name} must hold {batch} image(s) ({expected}), got a batch of {images.shape[0]}")
    check_floating(images, name)
    if check_values:
        check_unit_range(images, name)
    return images


def check_unit_range(values: torch.Tensor, name: str) -> torch.Tensor:
    """All values finite and within [0, 1] (one host read-back; meta tensors hold no values to check)."""
    if values.device.type == "meta":
        return values
    low, high = torch.aminmax(values.detach())  # NaN propagates into both
    low, high = torch.stack([low, high]).float().tolist()
    if low != low or high != high:
        count = int(torch.isnan(values).sum())
        raise ValueError(f"{name} contains {count} NaN value(s); expected finite values in [0, 1]")
    if low == float("-inf") or high == float("inf"):
        count = int(torch.isinf(values).sum())
        raise ValueError(f"{name} contains {count} infinite value(s); expected finite values in [0, 1]")
    if low < 0.0 or high > 1.0:
        looks_8_bit = values.dim() == 4 and 1.0 < high <= 255.0  # an image batch of 0-255 levels
        hint = "; 8-bit images need / 255" if looks_8_bit else ""
        raise ValueError(f"{name} values must lie in [0, 1], got min {low:.6g} and max {high:.6g}{hint}")
    return values


def check_unit_range_async(values: torch.Tensor, name: str) -> torch.Tensor:
    """All values finite and within [0, 1], without waiting for the device.

    On the CPU this is check_unit_range (nothing to wait for; a ValueError with the counts). On a
    GPU it queues torch._assert_async, eagerly or inside a torch.compile'd step (inductor emits it
    as a device assertion): a bad value prints this message from the device and the next
    synchronisation raises "device-side assert triggered"; the CUDA context cannot be used after
    that. Where a bad input must be survivable, check it on the host first (check_unit_range;
    animate() does).
    """
    if values.device.type in ("cpu", "meta"):
        return check_unit_range(values, name)
    in_range = ((values >= 0) & (values <= 1)).all()  # NaN fails both comparisons
    torch._assert_async(in_range, f"{name}: values must be finite and within [0, 1] (NaN, Inf or 0-255 "
                                  "input?); check frames with lpperf.util.validation.check_unit_range first")
    return values


def check_keypoints(keypoints, name: str, *, batch: int | None = None, num_kp: int | None = None) -> torch.Tensor:
    """A BxKx3 floating keypoint tensor; returns it unchanged."""
    check_tensor(keypoints, name)
    expected = f"{'B' if batch is None else batch}x{'K' if num_kp is None else num_kp}x3"
    if keypoints.dim() != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"{name} must be {expected} keypoints, got shape {tuple(keypoints.shape)}")
    if batch is not None and keypoints.shape[0] != batch:
        raise ValueError(f"{name} must hold {batch} keypoint set(s) ({expected}), got {keypoints.shape[0]}")
    if num_kp is not None and keypoints.shape[1] != num_kp:
        raise ValueError(f"{name} must hold {num_kp} keypoints ({expected}), got {keypoints.shape[1]}")
    return check_floating(keypoints, name)


def check_feature_volume(feature, name: str, *, batch: int | None = None) -> torch.Tensor:
    """A BxCxDxHxW floating appearance feature volume (F's output); returns it unchanged."""
    check_tensor(feature, name)
    if feature.dim() != 5:
        raise ValueError(f"{name} must be a 5-D BxCxDxHxW feature volume (LivePortrait: Bx32x16x64x64), "
                         f"got shape {tuple(feature.shape)}")
    if batch is not None and feature.shape[0] != batch:
        raise ValueError(f"{name} must hold {batch} feature volume(s), got a batch of {feature.shape[0]}")
    return check_floating(feature, name)


def check_ratio(ratio, name: str, *, width: int, batch: int) -> torch.Tensor:
    """A retargeting ratio tensor of shape Nx`width` with N equal to 1 (shared) or `batch`.

    Shape and dtype only; the values (finite, within [0, 1]) are checked where the ratio is used,
    with check_unit_range_async, so that a GPU step need not wait for the device.
    """
    check_tensor(ratio, name)
    if ratio.dim() != 2 or ratio.shape[1] != width or ratio.shape[0] not in (1, batch):
        shapes = (f"1x{width} (one row, for the one driving frame)" if batch == 1 else
                  f"1x{width} or {batch}x{width} (one row per driving frame)")
        hint = "; add the batch dimension with .unsqueeze(0)" if ratio.dim() == 1 else ""
        raise ValueError(f"{name} must be {shapes}, got shape {tuple(ratio.shape)}{hint}")
    return check_floating(ratio, name)


def check_same_placement(value: torch.Tensor, name: str, reference: torch.Tensor, reference_name: str) -> torch.Tensor:
    """`value` on the same device and with the same dtype as `reference`."""
    if value.device != reference.device:
        raise ValueError(f"{name} is on {value.device} but {reference_name} is on {reference.device}; "
                         f"move it with .to({str(reference.device)!r})")
    if value.dtype != reference.dtype:
        raise ValueError(f"{name} has dtype {value.dtype} but {reference_name} has {reference.dtype}; "
                         f"convert it with .to({reference.dtype})")
    return value


def check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_finite_number(value, name: str) -> float:
    """A real, finite Python number (not a bool, a string or a tensor), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be finite: a real number, got {value!r}")
    return float(value)


def check_fraction(value, name: str) -> float:
    """A real, finite Python number within [0, 1], as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    return float(value)


def check_path(value, name: str) -> Path:
    """A file system path given as a str or os.PathLike (not None, not empty)."""
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ValueError(f"{name} must be a path (a str or pathlib.Path), got {value!r}")
    return Path(value)


def check_positive_int(value, name: str, *, at_most: int | None = None, why: str = "") -> int:
    """An int >= 1 and, when `at_most` is given, at most that (`why` says why, for the message)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if at_most is not None and value > at_most:
        raise ValueError(f"{name} must be at most {at_most}{why}, got {value}")
    return value
