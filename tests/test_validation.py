import pytest
import torch

from lpperf.util import validation


def images(*shape, fill=0.5, dtype=torch.float32):
    return torch.full(shape, fill, dtype=dtype)


def test_a_good_batch_passes_and_comes_back_unchanged():
    batch = torch.rand(2, 3, 256, 256)
    assert validation.check_images(batch, "frames") is batch
    assert validation.check_images(images(1, 3, 256, 256, fill=1.0), "edge", batch=1) is not None
    assert validation.check_images(images(1, 3, 256, 256, fill=0.0, dtype=torch.float16), "half") is not None


@pytest.mark.parametrize("value, message", [
    ([0.5], "must be a torch.Tensor, got list"),
    (images(3, 256, 256), r"4-D Bx3x256x256 image batch, got 3-D shape \(3, 256, 256\); add the batch dimension"),
    (images(1, 1, 3, 256, 256), r"4-D .* got 5-D"),
    (images(1, 4, 256, 256), r"3 \(RGB\) channels .* got shape \(1, 4, 256, 256\)"),
    (images(1, 256, 256, 3), r"channels-last images need .permute\(0, 3, 1, 2\)"),
    (images(1, 3, 512, 512), r"must be 256x256 pixels .* got 512x512; crop/resize to 256x256 first \(lpperf never resizes\)"),
    (images(1, 3, 256, 128), r"got 256x128"),
    (images(0, 3, 256, 256), r"empty batch"),
    (torch.zeros(1, 3, 256, 256, dtype=torch.uint8), r"floating dtype, got torch.uint8 \(8-bit images: convert with .float\(\) / 255\)"),
    (torch.zeros(1, 3, 256, 256, dtype=torch.int32), r"floating dtype, got torch.int32"),
    (images(1, 3, 256, 256, fill=255.0), r"values must lie in \[0, 1\], got min 255 and max 255; 8-bit images need / 255"),
    (images(1, 3, 256, 256, fill=-0.25), r"got min -0.25 and max -0.25"),
])
def test_bad_images_raise_saying_what_was_expected_and_what_came(value, message):
    with pytest.raises(ValueError, match=message):
        validation.check_images(value, "driving")


def test_the_message_names_the_input():
    with pytest.raises(ValueError, match="^source image must be 256x256"):
        validation.check_images(images(1, 3, 64, 64), "source image")


def test_nan_and_inf_are_reported_with_counts():
    x = images(1, 3, 256, 256)
    x[0, 0, 0, :3] = float("nan")
    with pytest.raises(ValueError, match="contains 3 NaN value"):
        validation.check_images(x, "frames")
    y = images(1, 3, 256, 256)
    y[0, 1, 5, 5] = float("inf")
    y[0, 1, 5, 6] = -float("inf")
    with pytest.raises(ValueError, match="contains 2 infinite value"):
        validation.check_images(y, "frames")


def test_the_step_value_check_is_an_ordinary_check_on_the_cpu():
    """check_unit_range_async queues a device assertion on a GPU (no synchronisation); on the CPU,
    where there is nothing to wait for, it raises the same ValueError as check_unit_range."""
    good = images(1, 3, 8, 8)
    assert validation.check_unit_range_async(good, "frames") is good
    bad = images(1, 3, 8, 8)
    bad[0, 2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="frames contains 1 NaN value"):
        validation.check_unit_range_async(bad, "frames")
    with pytest.raises(ValueError, match=r"got min 255 and max 255; 8-bit images need / 255"):
        validation.check_unit_range_async(images(1, 3, 8, 8, fill=255.0), "frames")
    meta = torch.empty(1, 3, 8, 8, device="meta")  # no values: nothing to check (FLOP counting runs on meta)
    assert validation.check_unit_range_async(meta, "frames") is meta


def test_value_checks_can_be_skipped_but_shape_checks_cannot():
    assert validation.check_images(images(1, 3, 256, 256, fill=7.0), "x", check_values=False) is not None
    with pytest.raises(ValueError, match="256x256"):
        validation.check_images(images(1, 3, 200, 200), "x", check_values=False)


def test_batch_mismatch():
    with pytest.raises(ValueError, match="must hold 1 image\\(s\\) \\(1x3x256x256\\), got a batch of 2"):
        validation.check_images(images(2, 3, 256, 256), "source image", batch=1)


def test_other_sizes_can_be_asked_for():
    assert validation.check_images(images(1, 3, 64, 64), "small", size=64) is not None


def test_keypoints():
    kp = torch.zeros(2, 21, 3)
    assert validation.check_keypoints(kp, "kp", batch=2, num_kp=21) is kp
    for bad, message in [(torch.zeros(2, 63), r"Bx21x3 keypoints, got shape \(2, 63\)"),
                         (torch.zeros(2, 21, 2), r"got shape \(2, 21, 2\)"),
                         (torch.zeros(2, 20, 3), r"must hold 21 keypoints .* got 20"),
                         (torch.zeros(2, 21, 3, dtype=torch.int64), "floating dtype")]:
        with pytest.raises(ValueError, match=message):
            validation.check_keypoints(bad, "kp", num_kp=21)
    with pytest.raises(ValueError, match=r"must hold 3 keypoint set\(s\) \(3xKx3\), got 2"):
        validation.check_keypoints(kp, "kp", batch=3)


def test_feature_volume():
    feature = torch.zeros(1, 32, 16, 64, 64)
    assert validation.check_feature_volume(feature, "f", batch=1) is feature
    with pytest.raises(ValueError, match=r"5-D BxCxDxHxW feature volume .* got shape \(1, 512, 64, 64\)"):
        validation.check_feature_volume(torch.zeros(1, 512, 64, 64), "f")
    with pytest.raises(ValueError, match="must hold 2 feature volume"):
        validation.check_feature_volume(feature, "f", batch=2)


def test_ratio():
    assert validation.check_ratio(torch.zeros(1, 3), "eye", width=3, batch=4) is not None
    assert validation.check_ratio(torch.zeros(4, 3), "eye", width=3, batch=4) is not None
    for bad in (torch.zeros(2, 3), torch.zeros(4, 2), torch.zeros(3)):
        with pytest.raises(ValueError, match=r"eye must be 1x3 or 4x3 \(one row per driving frame\)"):
            validation.check_ratio(bad, "eye", width=3, batch=4)


def test_same_placement():
    a, b = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    assert validation.check_same_placement(a, "a", torch.ones(2), "b") is a
    with pytest.raises(ValueError, match=r"a has dtype torch.float32 but b has torch.float64; convert it with .to\(torch.float64\)"):
        validation.check_same_placement(a, "a", b, "b")
    meta = torch.zeros(1, device="meta")
    with pytest.raises(ValueError, match="a is on cpu but b is on meta; move it with .to\\('meta'\\)"):
        validation.check_same_placement(a, "a", meta, "b")


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "4", None])
def test_positive_int(value):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        validation.check_positive_int(value, "batch_size")
    assert validation.check_positive_int(3, "batch_size") == 3
