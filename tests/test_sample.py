import hashlib
import itertools

import numpy as np
import pytest
import torch

from lpperf.models import sample

# Checksums of the shipped data and of the generated frames. The frames use
# IEEE basic arithmetic only, so these hold bit-for-bit on every machine.
PORTRAIT_UINT8_SHA256 = "ab20e2b7542b6fc0f8413abb399efce375d0b0b76715680350564af654147894"
FIRST_100_FRAMES_SHA256 = "91357f76633a368f5f8f09a837a069eb7463a44eca1fec87e6b023833ac6382e"


def sha256(tensor):
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def box(region):
    x, y, half_w, half_h = region
    return slice(int(y - half_h), int(y + half_h) + 1), slice(int(x - half_w), int(x + half_w) + 1)


def test_portrait_shape_range_and_exact_content():
    image = sample.portrait()
    assert image.shape == (1, 3, 256, 256) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    as_uint8 = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
    assert sha256(as_uint8) == PORTRAIT_UINT8_SHA256
    # uint8 / 255 exactly, so no value is off the 8-bit grid
    assert torch.equal(as_uint8.float() / 255, image[0].permute(1, 2, 0))


def test_portrait_is_a_face_crop_with_face_features_where_stated():
    regions = sample.face_regions()
    left, right, mouth = regions["left_eye"], regions["right_eye"], regions["mouth"]
    # LivePortrait-style crop: face centred horizontally, eyes level, mouth below the eyes.
    assert 110 < (left[0] + right[0]) / 2 < 146
    assert left[0] < mouth[0] < right[0]
    assert abs(left[1] - right[1]) < 4
    assert mouth[1] - left[1] > 40
    image = sample.portrait()[0]
    # Pupils are darker than the skin around the eye; teeth are brighter than the lips' surroundings.
    luma = image.mean(0)
    eye_dark = luma[int(left[1]) - 2:int(left[1]) + 3, int(left[0]) - 2:int(left[0]) + 3].mean()
    cheek = luma[int(left[1]) + 20:int(left[1]) + 30, int(left[0]) - 5:int(left[0]) + 5].mean()
    assert eye_dark < cheek - 0.2
    rows, cols = box(mouth)
    assert luma[rows, cols].max() > 0.9  # teeth


def test_frames_stream_lazily_with_the_documented_shape():
    frames = sample.driving_frames(num_frames=3, size=128)
    assert iter(frames) is frames  # a generator: nothing computed before it is pulled
    first = next(frames)
    assert first.shape == (1, 3, 128, 128) and first.dtype == torch.float32
    assert len(list(frames)) == 2


def test_default_stream_is_endless():
    late = list(itertools.islice(sample.driving_frames(), 150, 152))
    assert len(late) == 2 and not torch.equal(late[0], late[1])


def test_first_frame_is_the_portrait_and_frames_are_deterministic():
    clip = sample.driving_clip(100)
    assert clip.shape == (100, 3, 256, 256)
    assert torch.equal(clip[:1], sample.portrait())
    assert sha256(clip) == FIRST_100_FRAMES_SHA256
    again = torch.cat(list(sample.driving_frames(5)))
    assert torch.equal(again, clip[:5])


def test_frames_are_in_range_and_move_smoothly():
    clip = sample.driving_clip(60)
    assert clip.min() >= 0.0 and clip.max() <= 1.0 and torch.isfinite(clip).all()
    step = (clip[1:] - clip[:-1]).abs().mean(dim=(1, 2, 3))
    assert (step > 0).all()  # every frame differs from the one before
    assert step.max() < 0.03  # but only a little: smooth motion, no cuts
    assert (clip[30] - clip[0]).abs().mean() > 0.02  # and it adds up over time


def test_seed_changes_the_motion_but_not_frame_zero():
    a = sample.driving_clip(12, seed=0)
    b = sample.driving_clip(12, seed=3)
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[11], b[11])


def pose_only_frame(index, seed=0):
    """The frame with head motion but no expression change (the mouth and eyes left as in the portrait)."""
    plan = sample._MotionPlan(seed)
    axis = torch.arange(256, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    x, y = sample._head_motion(x, y, plan.pose(index))
    return sample._sample_bilinear(sample.portrait()[0].double(), x, y).float()


def test_mouth_opens_and_only_the_lower_face_changes():
    plan = sample._MotionPlan(0)
    index = 25
    assert plan.mouth_open(index) > 0.8 and plan.blink(index) == 0.0
    frame = sample.driving_clip(index + 1)[index]
    change = (frame - pose_only_frame(index)).abs().sum(0)
    rows, cols = box(sample.face_regions()["mouth"])
    assert change[rows, cols].mean() > 0.05
    # Nothing above the nose or near the image border is touched by the expression.
    eyes_y = sample.face_regions()["left_eye"][1]
    assert change[: int(eyes_y) + 10].abs().max() == 0
    assert change[:, :40].abs().max() == 0 and change[:, -40:].abs().max() == 0


def test_blink_closes_the_eyes():
    plan = sample._MotionPlan(0)
    blinking = [i for i in range(100) if plan.blink(i) > 0.9]
    assert blinking, "no full blink in the first 100 frames"
    index = blinking[0]
    frame = sample.driving_clip(index + 1)[index]
    still = pose_only_frame(index)
    for name in ("left_eye", "right_eye"):
        rows, cols = box(sample.face_regions()[name])
        # The dark pupil/iris is covered by the lighter lid: the eye box gets brighter.
        assert frame[:, rows, cols].mean() > still[:, rows, cols].mean() + 0.03


def test_motion_parameters_start_neutral_and_stay_in_bounds():
    plan = sample._MotionPlan(7)
    assert plan.pose(0) == (0.0, 0.0, 0.0, 1.0)
    assert plan.mouth_open(0) == 0.0 and plan.blink(0) == 0.0
    for i in range(400):
        roll, sx, sy, zoom = plan.pose(i)
        assert abs(roll) <= np.radians(sample.ROLL_DEGREES) + 1e-12
        assert abs(sx) <= sample.SHIFT_PIXELS[0] + 1e-12 and abs(sy) <= sample.SHIFT_PIXELS[1] + 1e-12
        assert abs(zoom - 1) <= sample.ZOOM + 1e-12
        assert 0.0 <= plan.mouth_open(i) <= 1.0 and 0.0 <= plan.blink(i) <= 1.0


def test_polynomial_cos_sin_matches_libm_for_small_angles():
    for angle in np.linspace(-0.2, 0.2, 41):
        cos, sin = sample._cos_sin(float(angle))
        assert cos == pytest.approx(np.cos(angle), abs=1e-12)
        assert sin == pytest.approx(np.sin(angle), abs=1e-12)


def test_bilinear_sampler_hand_cases():
    image = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4) / 11  # rows 0..2, cols 0..3
    x = torch.tensor([[0.0, 1.5, 3.0, -5.0, 0.25]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.5, 2.0, 1.0, 9.0]], dtype=torch.float64)
    got = sample._sample_bilinear(image, x, y)[0, 0] * 11
    # (0,0) -> 0; (1.5,0.5) -> mean of 1,2,5,6 = 3.5; (3,2) -> 11; x clamped to 0 at row 1 -> 4;
    # y clamped to row 2, x 0.25 between 8 and 9 -> 8.25
    assert torch.allclose(got, torch.tensor([0.0, 3.5, 11.0, 4.0, 8.25], dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [dict(num_frames=-1), dict(num_frames=2.0), dict(num_frames=True),
                                    dict(size=4), dict(size="256")])
def test_driving_frames_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=r"(num_frames must be None \(endless\) or|size must be) an int"):
        next(sample.driving_frames(**kwargs))


def test_driving_clip_refuses_long_videos():
    with pytest.raises(ValueError, match="stream longer videos with driving_frames"):
        sample.driving_clip(sample.MAX_CLIP_FRAMES + 1)
