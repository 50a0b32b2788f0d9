"""The frame pipeline: keypoint math against hand-computed cases, the Animator with stand-in networks."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lpperf.animation import pipeline
from lpperf.models import sample
from lpperf.animation.pipeline import Animator, Motion

K = 21  # LivePortrait's keypoint count


# --- independent references (numpy float64, written from the conventions, not from lpperf) -------

def axis_rotations(pitch, yaw, roll):
    """Right-handed rotations about x (pitch), y (yaw), z (roll); angles in degrees."""
    x, y, z = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rx, ry, rz


def reference_rotation(pitch, yaw, roll):
    rx, ry, rz = axis_rotations(pitch, yaw, roll)
    return (rz @ ry @ rx).T


def motion(pitch=0.0, yaw=0.0, roll=0.0, *, canonical=None, expression=None, scale=1.0, translation=(0, 0, 0)):
    """A batch-1 Motion with the given pose (degrees) and parameters."""
    canonical = torch.zeros(1, K, 3) if canonical is None else canonical
    expression = torch.zeros(1, K, 3) if expression is None else expression
    rotation = pipeline.rotation_matrix(torch.tensor([pitch]), torch.tensor([yaw]), torch.tensor([roll]))
    return Motion(canonical, rotation, expression, torch.tensor([[scale]]), torch.tensor([list(translation)], dtype=torch.float32))


def stack(motions):
    return Motion(*(torch.cat(parts) for parts in zip(*[
        (m.canonical, m.rotation, m.expression, m.scale, m.translation) for m in motions])))


# --- head pose ----------------------------------------------------------------------------------

def test_pose_bins_one_hot_gives_the_bin_angle():
    logits = torch.full((3, 66), -1e4)
    for row, index in enumerate([0, 32, 65]):
        logits[row, index] = 1e4
    # bin i -> 3 i - 97.5 degrees
    assert pipeline.pose_bins_to_degrees(logits).tolist() == [-97.5, -1.5, 97.5]


def test_pose_bins_expectation_uniform_and_two_bins():
    uniform = torch.zeros(1, 66)  # mean bin 32.5 -> 0 degrees
    assert pipeline.pose_bins_to_degrees(uniform).item() == pytest.approx(0.0, abs=1e-5)
    two = torch.full((1, 66), -1e4)
    two[0, 10] = two[0, 20] = 5.0  # mean bin 15 -> -52.5 degrees
    assert pipeline.pose_bins_to_degrees(two).item() == pytest.approx(-52.5, abs=1e-5)


def test_pose_bins_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"pose bins must be Bx66 logits, got shape \(1, 65\)"):
        pipeline.pose_bins_to_degrees(torch.zeros(1, 65))
    with pytest.raises(ValueError, match=r"got shape \(66,\)"):
        pipeline.pose_bins_to_degrees(torch.zeros(66))


def test_zero_angles_give_exactly_the_identity():
    zero = torch.zeros(2)
    assert torch.equal(pipeline.rotation_matrix(zero, zero, zero), torch.eye(3).expand(2, 3, 3))


@pytest.mark.parametrize("angles, axis_in, axis_out", [
    ((0, 90, 0), (1, 0, 0), (0, 0, -1)),   # yaw 90: x -> -z (row vector times (Ry)^T)
    ((0, 90, 0), (0, 0, 1), (1, 0, 0)),    # yaw 90: z -> x
    ((90, 0, 0), (0, 1, 0), (0, 0, 1)),    # pitch 90: y -> z
    ((0, 0, 90), (1, 0, 0), (0, 1, 0)),    # roll 90: x -> y
    ((90, 90, 0), (0, 1, 0), (1, 0, 0)),   # pitch first, then yaw: y -> z -> x
    ((90, 90, 0), (1, 0, 0), (0, 0, -1)),
])
def test_right_angle_rotations_map_axes_as_hand_derived(angles, axis_in, axis_out):
    pitch, yaw, roll = (torch.tensor([float(a)]) for a in angles)
    rotation = pipeline.rotation_matrix(pitch, yaw, roll)
    mapped = torch.tensor([axis_in], dtype=torch.float32) @ rotation[0]
    assert torch.allclose(mapped, torch.tensor([axis_out], dtype=torch.float32), atol=1e-6)


def test_rotation_matches_the_convention_for_general_angles():
    angles = [(10.0, -25.0, 40.0), (-60.0, 15.5, -5.0), (0.0, 0.0, 170.0)]
    pitch, yaw, roll = (torch.tensor(column) for column in zip(*angles))
    got = pipeline.rotation_matrix(pitch[:, None], yaw[:, None], roll[:, None])  # Bx1 input accepted
    for index, (p, y, r) in enumerate(angles):
        expected = reference_rotation(p, y, r)
        assert np.allclose(got[index].numpy(), expected, atol=1e-6)
        assert np.allclose(expected @ expected.T, np.eye(3))


# --- keypoints ----------------------------------------------------------------------------------

def test_transform_keypoints_hand_case():
    canonical = torch.tensor([[[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]])
    expression = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    out = pipeline.transform_keypoints(canonical, torch.eye(3)[None], expression,
                                       torch.tensor([[2.0]]), torch.tensor([[10.0, 20.0, 30.0]]))
    # 2 * (x_c + exp) + (10, 20, 0): t_z dropped
    assert out.tolist() == [[[13.0, 24.0, 6.0], [10.0, 18.0, 1.0]]]


def test_transform_keypoints_rotates_rows():
    canonical = torch.tensor([[[1.0, 0.0, 0.0]]])
    yaw90 = pipeline.rotation_matrix(torch.zeros(1), torch.tensor([90.0]), torch.zeros(1))
    out = pipeline.transform_keypoints(canonical, yaw90, torch.zeros(1, 1, 3), torch.ones(1, 1), torch.zeros(1, 3))
    assert torch.allclose(out, torch.tensor([[[0.0, 0.0, -1.0]]]), atol=1e-6)


def test_motion_from_extractor_reshapes_and_converts():
    logits = torch.full((2, 66), -1e4)
    logits[:, 40] = 1e4  # 22.5 degrees
    raw = {"pitch": logits, "yaw": torch.zeros(2, 66), "roll": torch.zeros(2, 66),
           "t": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "exp": torch.arange(126.0).reshape(2, 63),
           "scale": torch.tensor([[1.5], [2.0]]), "kp": -torch.arange(126.0).reshape(2, 63)}
    m = pipeline.motion_from_extractor({k: v.half() if k == "exp" else v for k, v in raw.items()})
    assert m.canonical.shape == (2, 21, 3) and m.canonical[1, 0].tolist() == [-63.0, -64.0, -65.0]
    assert m.expression.dtype == torch.float32 and m.expression[0, 1].tolist() == [3.0, 4.0, 5.0]
    assert np.allclose(m.rotation[0].numpy(), reference_rotation(22.5, 0, 0), atol=1e-6)
    assert m.scale.tolist() == [[1.5], [2.0]] and m.translation.shape == (2, 3)


@pytest.mark.parametrize("change, message", [
    (dict(kp=torch.zeros(1, 62)), r"'kp' must be Bx\(3K\)"),
    (dict(exp=torch.zeros(1, 60)), r"'exp' must have shape \(1, 63\)"),
    (dict(scale=torch.zeros(1)), r"'scale' must have shape \(1, 1\)"),
    (dict(t=torch.zeros(2, 3)), r"'t' must have shape \(1, 3\)"),
    (dict(yaw=torch.zeros(1, 3)), r"pose bins must be Bx66"),
])
def test_motion_from_extractor_rejects_wrong_outputs(change, message):
    raw = {"pitch": torch.zeros(1, 66), "yaw": torch.zeros(1, 66), "roll": torch.zeros(1, 66),
           "t": torch.zeros(1, 3), "exp": torch.zeros(1, 63), "scale": torch.ones(1, 1), "kp": torch.zeros(1, 63)}
    with pytest.raises(ValueError, match=message):
        pipeline.motion_from_extractor({**raw, **change})
    with pytest.raises(ValueError, match=r"lacks \['scale'\]"):
        pipeline.motion_from_extractor({k: v for k, v in raw.items() if k != "scale"})


# --- relative and absolute motion -----------------------------------------------------------------

def random_motion(generator, batch=1, pose=(7.0, -12.0, 3.0)):
    angles = torch.tensor([pose] * batch) + torch.randn(batch, 3, generator=generator) * 5
    return Motion(canonical=torch.randn(batch, K, 3, generator=generator) * 0.3,
                  rotation=pipeline.rotation_matrix(*angles.T),
                  expression=torch.randn(batch, K, 3, generator=generator) * 0.02,
                  scale=1.5 + torch.rand(batch, 1, generator=generator),
                  translation=torch.randn(batch, 3, generator=generator) * 0.1)


def test_driving_frame_equal_to_reference_reproduces_the_source_keypoints():
    g = torch.Generator().manual_seed(0)
    source = random_motion(g)
    frontal = motion(expression=torch.randn(1, K, 3, generator=g), scale=1.7, translation=(0.1, -0.2, 0.3))
    # Frontal driving pose: R_d = I exactly, so the result is exactly the source's keypoints.
    same = pipeline.relative_motion(source, frontal, frontal)
    assert torch.equal(same.keypoints(), source.keypoints())
    # Any pose: equal up to rounding in R_d R_d^T.
    turned = random_motion(g)
    assert torch.allclose(pipeline.relative_motion(source, turned, turned).keypoints(), source.keypoints(), atol=1e-6)


def test_a_known_rotation_delta_is_applied_to_the_source_pose():
    canonical = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] + [[0.0, 0.0, 0.0]] * (K - 2)])
    source = motion(pitch=20.0, canonical=canonical)
    reference = motion(yaw=10.0)
    driving = motion(yaw=40.0)  # 30 degrees more yaw than the reference
    new = pipeline.relative_motion(source, driving, reference)
    # (R_d R_0^T) is the yaw delta (transposed convention), then the source's own pose.
    expected_rotation = reference_rotation(0, 30, 0) @ reference_rotation(20, 0, 0)
    assert np.allclose(new.rotation[0].numpy(), expected_rotation, atol=1e-6)
    expected_points = canonical[0, :2].double().numpy() @ expected_rotation
    assert np.allclose(new.keypoints()[0, :2].numpy(), expected_points, atol=1e-6)


def test_relative_expression_scale_and_translation_deltas():
    exp_s, exp_0, exp_d = (torch.full((1, K, 3), v) for v in (0.1, 0.02, 0.07))
    source = motion(expression=exp_s, scale=2.0, translation=(1.0, 2.0, 3.0))
    reference = motion(expression=exp_0, scale=1.6, translation=(0.5, 0.5, 0.5))
    driving = motion(expression=exp_d, scale=2.4, translation=(0.75, 0.25, 9.0))
    new = pipeline.relative_motion(source, driving, reference)
    assert torch.allclose(new.expression, torch.full((1, K, 3), 0.15))  # 0.1 + 0.07 - 0.02
    assert new.scale.item() == pytest.approx(3.0)  # 2 * 2.4 / 1.6
    assert new.translation.tolist()[0] == pytest.approx([1.25, 1.75, 11.5])
    # ... and t_z never reaches the keypoints: zero canonical, so x = s * exp + (t_x, t_y, 0)
    assert torch.allclose(new.keypoints()[0, 0], torch.tensor([3 * 0.15 + 1.25, 3 * 0.15 + 1.75, 3 * 0.15]))


def test_relative_motion_broadcasts_batch_one_source_and_reference():
    g = torch.Generator().manual_seed(1)
    source, reference, driving = random_motion(g), random_motion(g), random_motion(g, batch=4)
    batched = pipeline.relative_motion(source, driving, reference).keypoints()
    assert batched.shape == (4, K, 3)
    for index in range(4):
        single = stack([Motion(*(v[index:index + 1] for v in (driving.canonical, driving.rotation, driving.expression,
                                                              driving.scale, driving.translation)))])
        assert torch.allclose(batched[index:index + 1], pipeline.relative_motion(source, single, reference).keypoints(),
                              atol=1e-6)


def test_absolute_motion_takes_the_listed_expression_entries_from_the_driving_frame():
    source = motion(pitch=5.0, expression=torch.zeros(1, K, 3), scale=2.0, translation=(1.0, 1.0, 1.0))
    driving = motion(yaw=30.0, expression=torch.ones(1, K, 3), scale=5.0, translation=(0.2, 0.3, 0.4))
    new = pipeline.absolute_motion(source, driving)
    taken = new.expression[0]
    assert taken[1].tolist() == [1, 1, 1] and taken[20].tolist() == [1, 1, 1]  # whole rows
    assert taken[0].tolist() == [0, 0, 0] and taken[7].tolist() == [0, 0, 0] and taken[10].tolist() == [0, 0, 0]
    assert taken[3].tolist() == [0, 1, 0] and taken[5].tolist() == [0, 0, 1] and taken[9].tolist() == [0, 1, 1]
    assert int(taken.sum()) == 13 * 3 + 6
    assert torch.equal(new.rotation, driving.rotation) and new.scale.item() == 2.0
    assert new.translation.tolist() == driving.translation.tolist()


def test_absolute_motion_needs_the_official_keypoint_count():
    small = Motion(torch.zeros(1, 10, 3), torch.eye(3)[None], torch.zeros(1, 10, 3), torch.ones(1, 1), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="official 21 keypoints; this model has 10"):
        pipeline.absolute_motion(small, small)


# --- stitching, retargeting, multiplier -----------------------------------------------------------

def linear(inputs, outputs, weight=None, bias=None):
    layer = nn.Linear(inputs, outputs)
    with torch.no_grad():
        layer.weight.copy_(torch.zeros(outputs, inputs) if weight is None else weight)
        layer.bias.copy_(torch.zeros(outputs) if bias is None else bias)
    return layer.eval()


def test_stitching_adds_3k_offsets_and_txty():
    bias = torch.arange(3 * K + 2, dtype=torch.float32) / 100
    net = linear(6 * K, 3 * K + 2, bias=bias)
    source, driving = torch.zeros(2, K, 3), torch.ones(2, K, 3)
    out = pipeline.stitch(net, source, driving)
    expected = 1 + bias[:3 * K].reshape(K, 3)
    expected[:, 0] += bias[3 * K]
    expected[:, 1] += bias[3 * K + 1]
    assert out.shape == (2, K, 3) and torch.allclose(out, expected.expand(2, K, 3))


def test_stitching_input_is_source_then_driving_flattened():
    weight = torch.zeros(3 * K + 2, 6 * K)
    weight[0, 0] = 1.0  # output 0 <- x_s[0, 0]
    weight[1, 3 * K + 4] = 1.0  # output 1 <- x_d[1, 1]
    net = linear(6 * K, 3 * K + 2, weight=weight)
    source = torch.randn(1, K, 3)
    driving = torch.randn(3, K, 3)  # source broadcasts over the driving batch
    out = pipeline.stitch(net, source, driving)
    assert torch.allclose(out[:, 0, 0], driving[:, 0, 0] + source[0, 0, 0])
    assert torch.allclose(out[:, 0, 1], driving[:, 0, 1] + driving[:, 1, 1])


def test_stitching_rejects_a_net_with_the_wrong_output_size():
    with pytest.raises(ValueError, match="3K\\+2 = 65 values"):
        pipeline.stitch(linear(6 * K, 63), torch.zeros(1, K, 3), torch.zeros(1, K, 3))


def test_retargeting_mlps_see_source_keypoints_and_ratio():
    weight = torch.zeros(3 * K, 3 * K + 3)
    weight[:, 3 * K + 2] = 1.0  # every offset = the target eye ratio
    weight[0, 0] = 10.0  # offset 0 also gets 10 x_s[0, 0]
    eye = linear(3 * K + 3, 3 * K, weight=weight)
    source = torch.full((1, K, 3), 0.5)
    ratio = torch.tensor([[0.3, 0.3, 0.1], [0.3, 0.3, 0.4]])
    delta = pipeline.retarget(eye, source, ratio)
    assert delta.shape == (2, K, 3)
    assert torch.allclose(delta[:, 1], torch.tensor([[0.1] * 3, [0.4] * 3]))
    assert torch.allclose(delta[:, 0, 0], torch.tensor([5.1, 5.4]))
    with pytest.raises(ValueError, match="3K = 63 values"):
        pipeline.retarget(linear(3 * K + 2, 65), source, torch.zeros(1, 2))


def test_driving_multiplier():
    source, driving = torch.full((1, K, 3), 1.0), torch.full((1, K, 3), 3.0)
    assert torch.equal(pipeline.apply_driving_multiplier(source, driving, 1.0), driving)
    assert torch.equal(pipeline.apply_driving_multiplier(source, driving, 0.5), torch.full((1, K, 3), 2.0))
    assert torch.equal(pipeline.apply_driving_multiplier(source, driving, 0.0), source)


# --- stand-in networks with the official signatures -----------------------------------------------

class StandInFeature(nn.Module):
    """F: Bx3x256x256 -> Bx2x4x64x64 (a small volume) made from the pooled image."""

    def forward(self, image):
        pooled = F.avg_pool2d(image, 4)
        return torch.stack([pooled[:, :2] * (1 + depth) for depth in range(4)], dim=2)


class StandInMotion(nn.Module):
    """M: a fixed linear map of pooled image statistics to the official output dict."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.register_buffer("weight", torch.randn(48, 3 * 66 + 3 + 63 + 1 + 63, generator=g))

    def forward(self, image):
        out = F.adaptive_avg_pool2d(image, 4).flatten(1) @ self.weight
        pitch, yaw, roll, t, exp, scale, kp = out.split([66, 66, 66, 3, 63, 1, 63], dim=1)
        return {"pitch": pitch, "yaw": yaw, "roll": roll, "t": t * 0.01, "exp": exp * 0.01,
                "scale": 1.5 + 0.1 * torch.tanh(scale), "kp": kp * 0.05}


class StandInWarp(nn.Module):
    """W: the feature volume flattened to channels, shifted by the keypoint motion of each item."""

    def forward(self, feature_3d, kp_driving, kp_source):
        shift = (kp_driving - kp_source).sum(dim=(1, 2))[:, None, None, None]
        out = feature_3d.flatten(1, 2) + shift
        return {"out": out, "occlusion_map": torch.ones_like(out[:, :1]), "deformation": None}


class StandInDecoder(nn.Module):
    """G: first three channels, upsampled 8x to 512x512."""

    def forward(self, feature):
        return F.interpolate(feature[:, :3], scale_factor=8, mode="nearest")


def stand_in_nets(stitching_bias=0.0):
    g = torch.Generator().manual_seed(3)
    return {
        "appearance_feature_extractor": StandInFeature().eval(),
        "motion_extractor": StandInMotion().eval(),
        "warping_module": StandInWarp().eval(),
        "spade_generator": StandInDecoder().eval(),
        "stitching": linear(6 * K, 3 * K + 2, weight=torch.randn(3 * K + 2, 6 * K, generator=g) * 1e-3,
                            bias=torch.full((3 * K + 2,), stitching_bias)),
        "lip": linear(3 * K + 2, 3 * K, bias=torch.full((3 * K,), 0.01)),
        "eye": linear(3 * K + 3, 3 * K, bias=torch.full((3 * K,), -0.02)),
    }


@pytest.fixture(scope="module")
def frames():
    """Seven driving frames, made once (read only: tests clone before changing one)."""
    return sample.driving_clip(7, seed=1)


def ready_animator(frames, **options):
    animator = Animator(stand_in_nets(), **options)
    animator.set_source(sample.portrait())
    if animator.relative_motion:
        animator.set_reference(frames[:1])
    return animator


def test_step_shapes_and_source_work_done_once(frames):
    animator = ready_animator(frames)
    source = animator.source
    assert source.feature.shape == (1, 2, 4, 64, 64) and source.keypoints.shape == (1, K, 3)
    out = animator.step(frames[:3])
    assert out.shape == (3, 3, 512, 512)
    assert animator.source is source  # stepping does not recompute the source state


def test_first_frame_as_reference_keeps_the_source_pose(frames):
    animator = ready_animator(frames, stitching=False)
    x_d = animator.driving_keypoints(pipeline.motion_from_extractor(animator.nets["motion_extractor"](frames[:1])))
    assert torch.allclose(x_d, animator.source.keypoints, atol=1e-6)
    # and the rendered frame is the source re-rendered without motion
    assert torch.allclose(animator.step(frames[:1]), animator.decode(animator.warp(animator.source.keypoints)["out"]), atol=1e-5)


def test_step_matches_the_math_done_by_hand(frames):
    animator = ready_animator(frames)
    nets = animator.nets
    motion_d = pipeline.motion_from_extractor(nets["motion_extractor"](frames[3:5]))
    source = animator.source
    new = pipeline.relative_motion(source.motion, motion_d, animator.reference)
    x_d = pipeline.stitch(nets["stitching"], source.keypoints, new.keypoints())
    warped = nets["warping_module"](source.feature.expand(2, -1, -1, -1, -1), kp_driving=x_d,
                                    kp_source=source.keypoints.expand(2, -1, -1))
    expected = nets["spade_generator"](warped["out"])
    assert torch.allclose(animator.step(frames[3:5]), expected, atol=1e-6)
    # the motion moves the output (the stand-in W shifts by the keypoint motion)
    assert not torch.allclose(expected[0], expected[1])


def test_batched_equals_sequential(frames):
    animator = ready_animator(frames)
    batched = animator.step(frames)
    one_by_one = torch.cat([animator.step(frames[i:i + 1]) for i in range(len(frames))])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 10])
def test_animate_streams_in_batches_and_matches_step(frames, batch_size):
    animator = Animator(stand_in_nets())
    animator.set_source(sample.portrait())
    outputs = list(animator.animate(iter(frames.split(1)), batch_size=batch_size))
    assert len(outputs) == 7 and all(out.shape == (1, 3, 512, 512) for out in outputs)
    reference = ready_animator(frames)
    expected = torch.cat([reference.step(frames[i:i + 1]) for i in range(7)])
    assert torch.allclose(torch.cat(outputs), expected, atol=1e-5)


def test_motion_template_then_step_from_motion_is_step(frames):
    animator = ready_animator(frames)
    motion = animator.motion_template(frames)
    assert motion.batch == 7 and motion.canonical.shape == (7, K, 3)
    from_motion = torch.cat([animator.step_from_motion(motion.items(i, i + 2)) for i in range(0, 7, 2)])
    assert torch.allclose(from_motion, animator.step(frames), atol=1e-5)
    ratios = {"eye_ratio": torch.tensor([[0.3, 0.3, 0.4]]), "lip_ratio": torch.tensor([[0.2, 0.4]])}
    assert torch.allclose(animator.step_from_motion(motion.items(2, 4), **ratios),
                          animator.step(frames[2:4], **ratios), atol=1e-5)


def test_step_from_motion_refuses_what_is_not_a_motion_of_this_model(frames):
    animator = ready_animator(frames)
    motion = animator.motion_template(frames[:2])
    with pytest.raises(ValueError, match="motion must be a lpperf.animation.pipeline.Motion .from motion_template., "
                                         "got Tensor"):
        animator.step_from_motion(motion.canonical)
    with pytest.raises(ValueError, match=f"motion.canonical must hold {K} keypoints"):
        animator.step_from_motion(Motion(motion.canonical[:, :5], motion.rotation, motion.expression[:, :5],
                                         motion.scale, motion.translation))
    with pytest.raises(ValueError, match=r"motion.scale must have shape \(2, 1\) .batch 2, from motion.canonical., "
                                         r"got \(1, 1\)"):
        animator.step_from_motion(Motion(motion.canonical, motion.rotation, motion.expression, motion.scale[:1],
                                         motion.translation))
    with pytest.raises(ValueError, match="eye_ratio"):
        animator.step_from_motion(motion, eye_ratio=torch.tensor([[0.3, 0.3]]))
    with pytest.raises(ValueError, match="driving frames"):
        animator.motion_template(frames[:2, :1])


@pytest.mark.parametrize("motion_ahead,batch_size,m_calls", [(4, 1, [4, 3]), (7, 2, [7]), (3, 2, [3, 3, 1]),
                                                             (2, 2, [2, 2, 2, 1]), (1, 3, [3, 3, 1])])
def test_animate_with_motion_ahead_runs_m_over_that_many_frames_and_matches_step(frames, motion_ahead, batch_size,
                                                                                 m_calls):
    nets = stand_in_nets()
    seen = []
    nets["motion_extractor"].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    animator = Animator(nets, motion_ahead=motion_ahead)
    animator.set_source(sample.portrait())
    seen.clear()
    outputs = list(animator.animate(iter(frames.split(1)), batch_size=batch_size))
    assert seen == [1] + m_calls  # the reference frame first; motion_ahead <= batch_size: M inside each step
    expected = torch.cat([ready_animator(frames).step(frames[i:i + 1]) for i in range(7)])
    assert len(outputs) == 7 and torch.allclose(torch.cat(outputs), expected, atol=1e-5)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, pipeline.MAX_MOTION_AHEAD + 1])
def test_motion_ahead_must_be_a_bounded_count_of_frames(value):
    with pytest.raises(ValueError, match="motion_ahead must be"):
        Animator(stand_in_nets(), motion_ahead=value)


def test_animate_is_lazy():
    batch_size = 3
    counts = {"pulled": 0, "consumed": 0}

    def watched_frames():
        for frame in sample.driving_frames(10):
            if counts["pulled"] - counts["consumed"] > batch_size:
                raise AssertionError(f"animate pulled {counts['pulled']} frames for {counts['consumed']} outputs")
            counts["pulled"] += 1
            yield frame

    animator = Animator(stand_in_nets())
    animator.set_source(sample.portrait())
    for _ in animator.animate(watched_frames(), batch_size=batch_size):
        counts["consumed"] += 1
    assert counts == {"pulled": 10, "consumed": 10}


def test_animate_handles_an_endless_stream():
    def endless():
        for i in itertools.count():
            if i > 20:  # fail instead of filling memory if animate reads ahead without bound
                raise AssertionError("animate kept pulling frames from an endless stream")
            yield sample.portrait() * 0.5 + 0.25 * (i % 2)

    animator = Animator(stand_in_nets())
    animator.set_source(sample.portrait())
    taken = list(itertools.islice(animator.animate(endless(), batch_size=2), 5))
    assert len(taken) == 5


def test_animate_accepts_unbatched_frames_and_stacked_clips(frames):
    animator = Animator(stand_in_nets())
    animator.set_source(sample.portrait())
    as_3d = torch.cat(list(animator.animate([f for f in frames], batch_size=2)))  # 3x256x256 items
    animator.reset_reference()
    as_clips = torch.cat(list(animator.animate([frames[:4], frames[4:]], batch_size=3)))
    animator.reset_reference()
    as_tensor = torch.cat(list(animator.animate(frames, batch_size=5)))
    assert torch.allclose(as_3d, as_clips, atol=1e-5) and torch.allclose(as_3d, as_tensor, atol=1e-5)


def test_reference_is_the_first_frame_until_reset(frames):
    animator = Animator(stand_in_nets(), stitching=False)
    animator.set_source(sample.portrait())
    first = list(animator.animate(frames[2:4]))  # reference = frames[2]
    assert torch.allclose(first[0], animator.decode(animator.warp(animator.source.keypoints)["out"]), atol=1e-5)
    again = list(animator.animate(frames[3:4]))  # reference kept: frames[3] is not re-rendered as the source
    assert torch.allclose(again[0], first[1], atol=1e-6)
    animator.reset_reference()
    fresh = list(animator.animate(frames[3:4]))  # now frames[3] is the reference
    assert torch.allclose(fresh[0], animator.decode(animator.warp(animator.source.keypoints)["out"]), atol=1e-5)
    assert not torch.allclose(fresh[0], first[1])


def test_networks_are_looked_up_at_call_time(frames):
    animator = ready_animator(frames)
    before = animator.step(frames[1:2])
    animator.nets["spade_generator"] = lambda feature: torch.zeros(feature.shape[0], 3, 512, 512)
    assert torch.equal(animator.step(frames[1:2]), torch.zeros(1, 3, 512, 512))
    assert before.abs().sum() > 0


def test_stitching_and_multiplier_options(frames):
    plain = ready_animator(frames, stitching=False)
    stitched = ready_animator(frames)
    stitched.nets["stitching"] = linear(6 * K, 3 * K + 2, bias=torch.full((3 * K + 2,), 0.01))
    motion_d = pipeline.motion_from_extractor(plain.nets["motion_extractor"](frames[4:6]))
    x_plain = plain.driving_keypoints(motion_d)
    x_stitched = stitched.driving_keypoints(motion_d)
    offset = torch.tensor([0.02, 0.02, 0.01])  # 0.01 on every coordinate, + 0.01 more on x and y
    assert torch.allclose(x_stitched - x_plain, offset.expand_as(x_plain), atol=1e-6)
    halved = ready_animator(frames, stitching=False, driving_multiplier=0.5)
    x_s = halved.source.keypoints
    assert torch.allclose(halved.driving_keypoints(motion_d), x_s + (x_plain - x_s) * 0.5, atol=1e-6)


def test_absolute_motion_needs_no_reference(frames):
    animator = Animator(stand_in_nets(), relative_motion=False, stitching=False)
    animator.set_source(sample.portrait())
    out = animator.step(frames[2:4])
    assert out.shape == (2, 3, 512, 512) and animator.reference is None
    motion_d = pipeline.motion_from_extractor(animator.nets["motion_extractor"](frames[2:4]))
    expected = pipeline.absolute_motion(animator.source.motion, motion_d).keypoints()
    assert torch.allclose(animator.driving_keypoints(motion_d), expected, atol=1e-6)


def test_eye_and_lip_retargeting_follow_the_official_rules(frames):
    animator = ready_animator(frames, stitching=False)
    motion_d = pipeline.motion_from_extractor(animator.nets["motion_extractor"](frames[1:3]))
    x_s = animator.source.keypoints
    eye_ratio, lip_ratio = torch.tensor([[0.3, 0.3, 0.0]]), torch.tensor([[0.2, 0.5], [0.2, 0.0]])
    # relative motion: x_s + eye offsets + lip offsets (stand-in MLPs: constant -0.02 and +0.01)
    both = animator.driving_keypoints(motion_d, eye_ratio=eye_ratio, lip_ratio=lip_ratio)
    assert both.shape == (2, K, 3)
    assert torch.allclose(both, (x_s - 0.01).expand(2, K, 3), atol=1e-6)
    eye_only = animator.driving_keypoints(motion_d, eye_ratio=eye_ratio)
    assert torch.allclose(eye_only, (x_s - 0.02).expand(2, K, 3), atol=1e-6)
    # absolute motion: the offsets add to the driven keypoints
    absolute = Animator(stand_in_nets(), relative_motion=False, stitching=False)
    absolute.set_source(sample.portrait())
    driven = pipeline.absolute_motion(absolute.source.motion, motion_d).keypoints()
    assert torch.allclose(absolute.driving_keypoints(motion_d, lip_ratio=lip_ratio), driven + 0.01, atol=1e-6)
    with pytest.raises(ValueError, match=r"eye_ratio must be 1x3 or 2x3"):
        animator.driving_keypoints(motion_d, eye_ratio=torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"lip_ratio is on meta but the source is on cpu"):
        animator.driving_keypoints(motion_d, lip_ratio=torch.zeros(1, 2, device="meta"))
    animator.step(frames[1:3], eye_ratio=eye_ratio)  # through the per-frame step too


def test_lip_normalisation_of_an_open_source_mouth(frames):
    animator = Animator(stand_in_nets(), stitching=False)
    closed = animator.set_source(sample.portrait(), lip_ratio=0.01)  # below the 0.03 threshold
    assert closed.lip_delta is None
    opened = animator.set_source(sample.portrait(), lip_ratio=0.2)
    assert torch.allclose(opened.lip_delta, torch.full((1, K, 3), 0.01))  # stand-in lip MLP: constant 0.01
    animator.set_reference(frames[:1])
    x_d = animator.driving_keypoints(pipeline.motion_from_extractor(animator.nets["motion_extractor"](frames[:1])))
    assert torch.allclose(x_d, opened.keypoints + 0.01, atol=1e-6)


# --- bad input ------------------------------------------------------------------------------------

def test_constructor_checks_the_networks():
    nets = stand_in_nets()
    with pytest.raises(ValueError, match=r"nets lacks \['stitching'\] \(needed with stitching=True\)"):
        Animator({k: v for k, v in nets.items() if k != "stitching"})
    Animator({k: v for k, v in nets.items() if k != "stitching"}, stitching=False)
    nets["warping_module"].train()
    with pytest.raises(ValueError, match=r"networks \['warping_module'\] are in training mode; call .eval\(\)"):
        Animator(nets)
    with pytest.raises(ValueError, match="must be a dict"):
        Animator(list(stand_in_nets().values()))
    with pytest.raises(ValueError, match="driving_multiplier must be finite"):
        Animator(stand_in_nets(), driving_multiplier=math.nan)


def test_order_of_calls_is_enforced(frames):
    animator = Animator(stand_in_nets())
    with pytest.raises(RuntimeError, match=r"no source image: call set_source\(image\) first"):
        animator.step(frames[:1])
    with pytest.raises(RuntimeError, match="no source image"):
        next(animator.animate(frames))
    animator.set_source(sample.portrait())
    with pytest.raises(RuntimeError, match=r"needs a reference driving frame: call set_reference\(first_frame\)"):
        animator.step(frames[:1])


@pytest.mark.parametrize("bad, message", [
    (torch.rand(1, 3, 512, 512), r"source image must be 256x256 pixels .* got 512x512"),
    (torch.rand(2, 3, 256, 256), r"source image must hold 1 image\(s\) .* got a batch of 2"),
    (torch.rand(3, 256, 256), r"source image must be a 4-D"),
    (torch.rand(1, 3, 256, 256) * 255, r"values must lie in \[0, 1\]"),
    (torch.randint(0, 255, (1, 3, 256, 256), dtype=torch.uint8), "floating dtype"),
])
def test_bad_source_images(bad, message):
    with pytest.raises(ValueError, match=message):
        Animator(stand_in_nets()).set_source(bad)


def test_bad_driving_input(frames):
    animator = ready_animator(frames)
    with pytest.raises(ValueError, match=r"driving frames must be 256x256 pixels .* got 128x128"):
        animator.step(sample.driving_clip(1, size=128))
    with pytest.raises(ValueError, match=r"driving frames has dtype torch.float64 but the source image has torch.float32"):
        animator.step(frames[:2].double())
    with pytest.raises(ValueError, match=r"driving frames must have 3 \(RGB\) channels"):
        animator.step(frames[:1, :1])
    nan_frame = frames[:1].clone()
    nan_frame[0, 0, 10, 10] = float("nan")
    with pytest.raises(ValueError, match="driving frame 2 contains 1 NaN"):
        list(animator.animate([frames[0], frames[1], nan_frame]))
    with pytest.raises(ValueError, match=r"driving frame 0 must be 256x256 pixels"):
        list(animator.animate(sample.driving_frames(2, size=64)))
    with pytest.raises(ValueError, match=r"frames item 1 must be a 3x256x256 frame or an Nx3x256x256 batch"):
        list(animator.animate([frames[0], frames[0, 0]]))
    with pytest.raises(ValueError, match="frames item 0 must be a torch.Tensor"):
        list(animator.animate([np.zeros((3, 256, 256))]))
    with pytest.raises(ValueError, match="frames given as one tensor must be a stacked Nx3x256x256 clip"):
        list(animator.animate(frames[0]))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        list(animator.animate(frames, batch_size=0))
    with pytest.raises(ValueError, match=r"driving keypoints must hold 21 keypoints"):
        animator.warp(torch.zeros(1, 20, 3))


def test_step_refuses_nan_inf_and_8_bit_input(frames):
    """step() used to return an all-NaN frame for one NaN pixel and a plausible image for 0-255 input,
    without a word (only animate() checked values)."""
    animator = ready_animator(frames)
    nan_frame = frames[:1].clone()
    nan_frame[0, 1, 20, 30] = float("nan")
    with pytest.raises(ValueError, match="driving frames contains 1 NaN value"):
        animator.step(nan_frame)
    with pytest.raises(ValueError, match="driving frames contains 1 infinite value"):
        animator.step(torch.where(torch.isnan(nan_frame), torch.tensor(float("inf")), nan_frame))
    with pytest.raises(ValueError, match=r"driving frames values must lie in \[0, 1\], .* 8-bit images need / 255"):
        animator.step(frames[:2] * 255)
    assert animator.step(frames[:2]).shape == (2, 3, 512, 512)  # the same frames in [0, 1] pass


def test_host_value_checks_in_animate_can_be_switched_off_but_step_still_checks(frames):
    animator = ready_animator(frames)
    too_bright = frames[:2] * 1.5
    with pytest.raises(ValueError, match="driving frame 0 values must lie in"):
        list(animator.animate(too_bright))
    with pytest.raises(ValueError, match="driving frames values must lie in"):  # step's own check
        list(animator.animate(too_bright, check_values=False))
    assert len(list(animator.animate(frames[:2], check_values=False))) == 2


def test_run_stages_is_the_step_stage_by_stage(frames):
    animator = ready_animator(frames)
    values = animator.run_stages(frames[3:5])
    assert torch.equal(values.frame, animator.step(frames[3:5]))
    assert torch.equal(values.keypoints, animator.driving_keypoints(animator.extract_motion(frames[3:5])))
    assert torch.equal(values.warped["out"], animator.warp(values.keypoints)["out"])
    assert torch.equal(animator.decode(values.warped["out"]), values.frame)
    assert torch.equal(animator.extract_feature(animator.source.image), animator.source.feature)


# --- the real networks (lpperf.models, small configuration, default initialisation) --------------

@pytest.fixture(scope="module")
def tiny_nets():
    from lpperf.models import weights

    return weights.tiny_networks(seed=0)


def test_real_networks_reference_frame_reproduces_the_source_keypoints(tiny_nets):
    animator = Animator(tiny_nets, stitching=False)
    animator.set_source(sample.portrait())
    frame = sample.driving_clip(1)  # frame 0 of the sample video is the portrait itself
    animator.set_reference(frame)
    motion_d = pipeline.motion_from_extractor(tiny_nets["motion_extractor"](frame))
    assert torch.allclose(animator.driving_keypoints(motion_d), animator.source.keypoints, atol=1e-6)


def test_real_networks_stream_batches_like_single_steps(tiny_nets):
    frames = sample.driving_clip(3, seed=2)
    animator = Animator(tiny_nets)
    animator.set_source(sample.portrait())
    streamed = torch.cat(list(animator.animate(frames.split(1), batch_size=2)))  # a full and a partial batch
    assert streamed.shape == (3, 3, 512, 512) and torch.isfinite(streamed).all()
    assert streamed.min() >= 0 and streamed.max() <= 1
    singles = torch.cat([animator.step(frames[i:i + 1]) for i in range(2)])  # the frames of the full batch
    # M's batched convolutions round differently in the last bit (~5e-7 on the keypoints);
    # the untrained W/G amplify that to ~1e-3 on the frame.
    assert (streamed[:2] - singles).abs().max() < 3e-3
    # and the driving motion shows: later frames differ from the reference frame's output
    assert (streamed[2] - streamed[0]).abs().mean() > 1e-2
