"""Parity metrics on hand-computed values; NaN never passes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lpperf.measure.parity import (
    ParityError,
    ParityReport,
    Tolerance,
    compare,
    compare_frames,
    count_nonfinite,
    json_float,
    max_level_difference,
    psnr,
    relative_error,
    to_uint8_like_official,
)

PSNR_ONE_LEVEL = 20 * math.log10(255)  # 48.1308 dB: every pixel off by 1/255


def mid_level_frame(seed: int = 0, shape=(1, 3, 8, 8)) -> torch.Tensor:
    """Frame whose values sit in the middle of 8-bit levels 0..200, so +1/255 moves each by exactly one level."""
    levels = torch.randint(0, 200, shape, generator=torch.Generator().manual_seed(seed))
    return (levels.to(torch.float32) + 0.5) / 255


def official_uint8(frame: np.ndarray) -> np.ndarray:
    """The rounding described for the official parse_output, written independently with numpy."""
    out = np.clip(frame, 0, 1)
    return np.clip(out * 255, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------
# metrics


def test_relative_error_known_values():
    reference = torch.tensor([3.0, 4.0])  # norm 5
    assert relative_error(torch.tensor([3.0, 5.0]), reference) == pytest.approx(0.2)
    assert relative_error(reference * 1.01, reference) == pytest.approx(0.01, rel=1e-5)
    assert relative_error(reference, reference) == 0.0
    assert relative_error(np.array([3.0, 5.0]), reference.numpy()) == pytest.approx(0.2)


def test_relative_error_zero_reference_and_nan():
    zeros = torch.zeros(3)
    assert relative_error(zeros, zeros) == 0.0
    assert relative_error(torch.ones(3), zeros) == math.inf
    assert math.isnan(relative_error(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0])))
    assert math.isnan(relative_error(torch.tensor([math.nan]), torch.zeros(1)))


def test_shape_mismatch_is_an_error_not_a_broadcast():
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(torch.zeros(1, 3), torch.zeros(3))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        relative_error([1.0], torch.zeros(1))


def test_count_nonfinite():
    assert count_nonfinite(torch.tensor([1.0, math.nan, math.inf, -math.inf, 0.0])) == 3
    assert count_nonfinite(torch.ones(4, dtype=torch.float16)) == 0
    assert count_nonfinite(torch.ones(4, dtype=torch.int64)) == 0


def test_uint8_rounding_matches_official_recipe():
    values = torch.tensor([-0.5, 0.0, 0.999, 1.0, 1.7, 0.5, 0.00392, 0.9959])
    expected = torch.tensor([0, 0, 254, 255, 255, 127, 0, 253], dtype=torch.uint8)  # truncation, not rounding
    assert torch.equal(to_uint8_like_official(values), expected)
    rng = np.random.default_rng(0)
    frame = rng.uniform(-0.2, 1.2, size=(1, 3, 16, 16)).astype(np.float32)
    assert np.array_equal(to_uint8_like_official(frame).numpy(), official_uint8(frame))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_like_official(torch.tensor([math.nan]))


def test_one_level_offset_gives_known_psnr_and_level_diff():
    reference = mid_level_frame()
    candidate = reference + 1.0 / 255
    assert psnr(candidate, reference) == pytest.approx(PSNR_ONE_LEVEL, abs=1e-3)
    assert max_level_difference(candidate, reference) == 1
    assert max_level_difference(reference + 3.0 / 255, reference) == 3


def test_psnr_known_mse_and_clipping():
    reference = torch.full((1, 3, 4, 4), 0.5)
    assert psnr(reference + 0.1, reference) == pytest.approx(20.0)  # MSE 0.01
    # values beyond [0, 1] are clipped as they are when shown: 1.5 and 1.0 look the same
    assert psnr(torch.full((4,), 1.5), torch.ones(4)) == math.inf


def test_identical_frames_give_inf_psnr_that_serialises():
    frame = mid_level_frame()
    parity = compare_frames(frame.clone(), frame)
    assert parity.psnr_db == math.inf
    assert parity.max_level_diff == 0
    as_dict = parity.to_dict()
    assert as_dict["psnr_db"] == "inf"
    assert float(as_dict["psnr_db"]) == math.inf
    json.dumps(as_dict, allow_nan=False)


def test_json_float():
    assert json_float(1.5) == 1.5
    assert json_float(math.inf) == "inf" and json_float(-math.inf) == "-inf"
    assert json_float(math.nan) == "nan"


def test_frames_must_be_float():
    with pytest.raises(ValueError, match="floating point"):
        psnr(torch.zeros(4, dtype=torch.uint8), torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="floating point"):
        compare_frames(torch.zeros(4, dtype=torch.uint8), torch.zeros(4))


# ---------------------------------------------------------------------------------
# tolerances


def test_tolerances_tighten_with_precision():
    fp32, tf32, fp16, bf16 = (Tolerance.for_precision(p) for p in ("fp32", "tf32", "fp16", "bf16"))
    assert fp32.max_rel_error < tf32.max_rel_error <= fp16.max_rel_error < bf16.max_rel_error
    assert fp32.min_psnr_db > tf32.min_psnr_db >= fp16.min_psnr_db > bf16.min_psnr_db
    assert fp32.max_level_diff <= tf32.max_level_diff <= fp16.max_level_diff <= bf16.max_level_diff
    with pytest.raises(ValueError, match="unknown precision"):
        Tolerance.for_precision("fp8")


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_a_single_rounding_is_well_within_its_tolerance(precision, dtype):
    reference = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    rounded = reference.to(dtype).to(torch.float32)
    assert relative_error(rounded, reference) < Tolerance.for_precision(precision).max_rel_error / 5


def test_stage_override():
    tolerance = Tolerance(max_rel_error=1e-3, min_psnr_db=40, max_level_diff=2,
                          stage_rel_error={"keypoints": 1e-1, "deformation/x": 0.5})
    assert tolerance.rel_error_for("keypoints/exp") == 1e-1
    assert tolerance.rel_error_for("deformation/x") == 0.5
    assert tolerance.rel_error_for("f_s") == 1e-3


# ---------------------------------------------------------------------------------
# reports


def stages(offset: float = 0.0):
    torch.manual_seed(0)
    return {
        "f_s": torch.randn(1, 4, 2, 8, 8) + offset,
        "keypoints": {"exp": torch.randn(1, 21, 3) + offset, "scale": torch.ones(1, 1) + offset},
        "deformation": torch.randn(1, 2, 8, 8, 3) + offset,
        "warped": torch.randn(1, 8, 8, 8) + offset,
    }


def test_matching_outputs_pass_and_report_serialises():
    reference_frame = mid_level_frame()
    report = compare(stages(), stages(), reference_frame + 1.0 / 255, reference_frame, precision="fp16")
    names = [s.name for s in report.stages]
    assert names == ["f_s", "keypoints/exp", "keypoints/scale", "deformation", "warped"]
    assert all(s.rel_error == 0.0 for s in report.stages)
    assert report.frame.max_level_diff == 1
    report.check()  # fp16 default tolerance, from the precision name
    with pytest.raises(ParityError, match="PSNR 48.13 dB < 60"):  # one level off is too much for fp32
        report.check(Tolerance.for_precision("fp32"))
    payload = json.dumps(report.to_dict(), allow_nan=False)
    assert "keypoints/exp" in payload


def test_failures_are_all_listed():
    reference_frame = mid_level_frame()
    candidate_stages = stages()
    candidate_stages["f_s"] = candidate_stages["f_s"] * 1.5
    candidate_stages["warped"] = candidate_stages["warped"] * 1.2
    report = compare(candidate_stages, stages(), reference_frame + 5.0 / 255, reference_frame)
    with pytest.raises(ParityError) as raised:
        report.check(Tolerance.for_precision("fp32"))
    message = str(raised.value)
    assert "stage f_s: relative error 5.000e-01" in message
    assert "stage warped: relative error 2.000e-01" in message
    assert "PSNR" in message and "max difference 5 levels > 1" in message
    assert "keypoints" not in message  # the passing stages are not reported as failures


def test_nan_in_a_stage_fails_even_with_any_tolerance():
    candidate_stages = stages()
    candidate_stages["keypoints"]["exp"][0, 0, 0] = math.nan
    report = compare(candidate_stages, stages())
    everything_goes = Tolerance(max_rel_error=1e30, min_psnr_db=-1e30, max_level_diff=255)
    assert report.has_nonfinite
    with pytest.raises(ParityError, match=r"keypoints/exp: 1 NaN/Inf in candidate"):
        report.check(everything_goes)


def test_nan_in_the_frame_fails_even_with_any_tolerance():
    reference_frame = mid_level_frame()
    candidate = reference_frame.clone()
    candidate[0, 1, 2, 3] = math.nan
    report = compare({}, {}, candidate, reference_frame)
    assert math.isnan(report.frame.psnr_db)
    assert report.frame.max_level_diff is None
    everything_goes = Tolerance(max_rel_error=1e30, min_psnr_db=-1e30, max_level_diff=255)
    with pytest.raises(ParityError, match="final frame: 1 NaN/Inf in candidate"):
        report.check(everything_goes)
    json.dumps(report.to_dict(), allow_nan=False)


def test_inf_in_the_reference_fails():
    reference_stages = stages()
    reference_stages["warped"][0, 0, 0, 0] = math.inf
    report = compare(stages(), reference_stages)
    with pytest.raises(ParityError, match="1 in reference"):
        report.check(Tolerance.for_precision("bf16"))


def test_stage_names_and_frames_must_match():
    reference_stages = stages()
    candidate_stages = stages()
    del candidate_stages["keypoints"]["scale"]
    with pytest.raises(ValueError, match="missing from candidate.*keypoints/scale"):
        compare(candidate_stages, reference_stages)
    with pytest.raises(ValueError, match="both final frames"):
        compare({}, {}, mid_level_frame(), None)
    with pytest.raises(ValueError, match="unknown precision"):
        compare({}, {}, precision="int8")


def test_two_stages_that_flatten_to_one_name_are_refused_not_half_compared():
    values = {"k/x": np.zeros(3), "k": {"x": np.ones(3)}}
    with pytest.raises(ValueError, match="candidate stages give the name 'k/x' twice"):
        compare(values, {"k/x": np.zeros(3), "k": {"x": np.ones(3)}})


def test_empty_comparison_does_not_pass():
    report = ParityReport(stages=(), frame=None)
    with pytest.raises(ParityError, match="nothing was compared"):
        report.check(Tolerance.for_precision("fp32"))
    with pytest.raises(ValueError, match="needs a tolerance"):
        report.check()
