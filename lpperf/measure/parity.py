"""Output parity between a candidate implementation and a reference.

Per stage (any tensor, or a possibly nested dict of tensors: f_s, keypoints,
deformation, warped feature, ...): relative error ``||a - b|| / ||b||`` (Frobenius,
float64) and non-finite counts. On the final frame (floats meant to be in [0, 1]):
PSNR in dB and the largest difference in 8-bit levels after the rounding the
official ``parse_output`` applies (clip to [0, 1], * 255, truncate to uint8).

A NaN or Inf anywhere, in candidate or reference, fails the comparison: every
threshold is checked as "value is within tolerance", which NaN never is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Union

import numpy as np
import torch

from lpperf.measure.tolerances import Tolerance

ArrayLike = Union[torch.Tensor, np.ndarray]
StageValue = Union[ArrayLike, Mapping[str, Any]]


class ParityError(AssertionError):
    """The candidate is not within tolerance of the reference; the message lists every failure."""


def json_float(value: float) -> float | str:
    """JSON-safe float: inf/-inf/nan become the strings "inf"/"-inf"/"nan" (``float()`` reads them back)."""
    if math.isfinite(value):
        return value
    return str(value)


# ---------------------------------------------------------------------------------
# tolerances


# ---------------------------------------------------------------------------------
# metrics


def _as_tensor(value: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{what}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _pair(
    actual: ArrayLike, reference: ArrayLike, what: str, *, frames: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float64 CPU tensors of the same shape; ``frames`` also requires float input."""
    a = _as_tensor(actual, what)
    b = _as_tensor(reference, what)
    if frames:
        _require_float_frame(a, f"{what} (candidate)")
        _require_float_frame(b, f"{what} (reference)")
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: shapes differ, candidate {tuple(a.shape)} vs reference {tuple(b.shape)}; "
            "parity compares like with like and never broadcasts"
        )
    return a.cpu().to(torch.float64), b.cpu().to(torch.float64)


def count_nonfinite(value: ArrayLike) -> int:
    """Number of NaN and +-Inf elements."""
    t = _as_tensor(value, "count_nonfinite")
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    return int((~torch.isfinite(t)).sum().item())


def relative_error(actual: ArrayLike, reference: ArrayLike) -> float:
    """``||a - b|| / ||b||`` in float64. 0 when both are all zeros, inf when only b is; NaN if either has NaN."""
    a, b = _pair(actual, reference, "relative_error")
    diff_norm = torch.linalg.vector_norm(a - b).item()
    ref_norm = torch.linalg.vector_norm(b).item()
    if ref_norm == 0.0:
        return diff_norm if math.isnan(diff_norm) else (0.0 if diff_norm == 0.0 else math.inf)
    return diff_norm / ref_norm


def _require_float_frame(t: torch.Tensor, what: str) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{what}: frames must be floating point in [0, 1], got dtype {t.dtype}")


def to_uint8_like_official(frame: ArrayLike) -> torch.Tensor:
    """clip to [0, 1], * 255, truncate to uint8 - the official parse_output rounding, in float32.

    Computed in float32 whatever the frame's dtype, so candidate and reference get the
    same rounding step and only their values differ. NaN would become an arbitrary
    level, so non-finite input is refused: count it with :func:`count_nonfinite` first.
    """
    t = _as_tensor(frame, "to_uint8_like_official")
    _require_float_frame(t, "to_uint8_like_official")
    if count_nonfinite(t):
        raise ValueError("to_uint8_like_official: frame contains NaN/Inf; it has no 8-bit rendering")
    scaled = t.to(torch.float32).clamp(0.0, 1.0) * 255.0
    return scaled.clamp(0.0, 255.0).to(torch.uint8)  # float -> uint8 truncates toward zero


def psnr(actual: ArrayLike, reference: ArrayLike) -> float:
    """PSNR in dB of frames in [0, 1] (peak 1), both clipped to [0, 1] as they are shown.

    inf when identical after clipping; NaN when either contains NaN.
    """
    a, b = _pair(actual, reference, "psnr", frames=True)
    mse = torch.mean((a.clamp(0.0, 1.0) - b.clamp(0.0, 1.0)) ** 2).item()
    if math.isnan(mse):
        return math.nan
    if mse == 0.0:
        return math.inf
    return -10.0 * math.log10(mse)


def max_level_difference(actual: ArrayLike, reference: ArrayLike) -> int:
    """Largest absolute difference in 8-bit levels after :func:`to_uint8_like_official`."""
    a = to_uint8_like_official(actual)
    b = to_uint8_like_official(reference)
    if a.shape != b.shape:
        raise ValueError(f"max_level_difference: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return int((a.to(torch.int16) - b.to(torch.int16)).abs().max().item())


# ---------------------------------------------------------------------------------
# the report


@dataclasses.dataclass(frozen=True)
class StageParity:
    name: str
    shape: tuple[int, ...]
    rel_error: float
    max_abs_error: float
    nonfinite_actual: int
    nonfinite_reference: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "rel_error": json_float(self.rel_error),
            "max_abs_error": json_float(self.max_abs_error),
            "nonfinite_actual": self.nonfinite_actual,
            "nonfinite_reference": self.nonfinite_reference,
        }


@dataclasses.dataclass(frozen=True)
class FrameParity:
    shape: tuple[int, ...]
    psnr_db: float
    max_level_diff: int | None  # None when a frame is non-finite (no 8-bit rendering exists)
    nonfinite_actual: int
    nonfinite_reference: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "psnr_db": json_float(self.psnr_db),
            "max_level_diff": self.max_level_diff,
            "nonfinite_actual": self.nonfinite_actual,
            "nonfinite_reference": self.nonfinite_reference,
        }


def _flatten(value: StageValue, prefix: str) -> dict[str, ArrayLike]:
    if isinstance(value, Mapping):
        flat: dict[str, ArrayLike] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}/{key}"))
        return flat
    return {prefix: value}


def _flattened(stages: Mapping[str, StageValue], side: str) -> dict[str, ArrayLike]:
    """The stages as "stage/key" names; two that flatten to one name ("k/x" and {"k": {"x": ...}}) are
    refused, since one of them would silently go uncompared."""
    flat: dict[str, ArrayLike] = {}
    for name, value in stages.items():
        for key, item in _flatten(value, name).items():
            if key in flat:
                raise ValueError(f"{side} stages give the name {key!r} twice (a stage named with '/' and a nested "
                                 "key); rename one so that each is compared")
            flat[key] = item
    return flat


def compare_stage(name: str, actual: ArrayLike, reference: ArrayLike) -> StageParity:
    a, b = _pair(actual, reference, f"stage {name!r}")
    return StageParity(
        name=name,
        shape=tuple(a.shape),
        rel_error=relative_error(a, b),
        max_abs_error=(a - b).abs().max().item() if a.numel() else 0.0,
        nonfinite_actual=count_nonfinite(a),
        nonfinite_reference=count_nonfinite(b),
    )


def compare_frames(actual: ArrayLike, reference: ArrayLike) -> FrameParity:
    a, b = _pair(actual, reference, "final frame", frames=True)
    bad_a, bad_b = count_nonfinite(a), count_nonfinite(b)
    return FrameParity(
        shape=tuple(a.shape),
        psnr_db=psnr(a, b),
        max_level_diff=None if bad_a or bad_b else max_level_difference(a, b),
        nonfinite_actual=bad_a,
        nonfinite_reference=bad_b,
    )


@dataclasses.dataclass(frozen=True)
class ParityReport:
    stages: tuple[StageParity, ...]
    frame: FrameParity | None
    precision: str | None = None

    def failures(self, tolerance: Tolerance) -> list[str]:
        """Human-readable list of everything outside ``tolerance`` (empty when it passes)."""
        problems: list[str] = []
        for stage in self.stages:
            if stage.nonfinite_actual or stage.nonfinite_reference:
                problems.append(
                    f"stage {stage.name}: {stage.nonfinite_actual} NaN/Inf in candidate, "
                    f"{stage.nonfinite_reference} in reference (must be 0)"
                )
            limit = tolerance.rel_error_for(stage.name)
            if not stage.rel_error <= limit:
                problems.append(f"stage {stage.name}: relative error {stage.rel_error:.3e} > {limit:.1e}")
        if self.frame is not None:
            frame = self.frame
            if frame.nonfinite_actual or frame.nonfinite_reference:
                problems.append(
                    f"final frame: {frame.nonfinite_actual} NaN/Inf in candidate, "
                    f"{frame.nonfinite_reference} in reference (must be 0)"
                )
            if not frame.psnr_db >= tolerance.min_psnr_db:
                problems.append(f"final frame: PSNR {frame.psnr_db:.2f} dB < {tolerance.min_psnr_db} dB")
            if frame.max_level_diff is not None and frame.max_level_diff > tolerance.max_level_diff:
                problems.append(
                    f"final frame: max difference {frame.max_level_diff} levels > {tolerance.max_level_diff}"
                )
        if not self.stages and self.frame is None:
            problems.append("nothing was compared (no stages and no frame)")
        return problems

    @property
    def has_nonfinite(self) -> bool:
        counts = [s.nonfinite_actual + s.nonfinite_reference for s in self.stages]
        if self.frame is not None:
            counts.append(self.frame.nonfinite_actual + self.frame.nonfinite_reference)
        return any(counts)

    def check(self, tolerance: Tolerance | None = None) -> None:
        """Raise :class:`ParityError` listing every failure; ``tolerance`` defaults to the precision's."""
        if tolerance is None:
            if self.precision is None:
                raise ValueError("check() needs a tolerance, or a report built with a precision name")
            tolerance = Tolerance.for_precision(self.precision)
        problems = self.failures(tolerance)
        if problems:
            label = f" ({self.precision})" if self.precision else ""
            raise ParityError(f"parity failed{label}:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "stages": [stage.to_dict() for stage in self.stages],
            "frame": None if self.frame is None else self.frame.to_dict(),
            "has_nonfinite": self.has_nonfinite,
        }


def compare(
    actual_stages: Mapping[str, StageValue],
    reference_stages: Mapping[str, StageValue],
    actual_frame: ArrayLike | None = None,
    reference_frame: ArrayLike | None = None,
    precision: str | None = None,
) -> ParityReport:
    """Compare candidate and reference stage by stage, and their final frames.

    Stage names must match exactly (a missing stage is a bug, not a pass); nested
    dicts are flattened to ``"stage/key"`` names, and their keys must match too.
    """
    flat_actual = _flattened(actual_stages, "candidate")
    flat_reference = _flattened(reference_stages, "reference")
    missing = sorted(set(flat_reference) - set(flat_actual))
    extra = sorted(set(flat_actual) - set(flat_reference))
    if missing or extra:
        raise ValueError(
            f"stage names differ: missing from candidate {missing}, not in reference {extra}; "
            "compare the same stages on both sides"
        )
    if (actual_frame is None) != (reference_frame is None):
        raise ValueError("give both final frames or neither")
    if precision is not None:
        Tolerance.for_precision(precision)  # fail early on an unknown name
    stages = tuple(compare_stage(name, flat_actual[name], flat_reference[name]) for name in flat_reference)
    frame = None if actual_frame is None else compare_frames(actual_frame, reference_frame)
    return ParityReport(stages=stages, frame=frame, precision=precision)
