"""lpperf.measure.frame on the CPU: the sample driving frames, the parity frame loop, the reference, each stage
alone (calls, outputs, times) and the FLOPs of a frame, on networks smaller than lpperf.models.TINY."""

import pytest
import torch
from torch import nn

from lpperf import models
from lpperf.animation import pipeline
from lpperf.measure import STAGES, frame, roofline
from lpperf.models import sample
from lpperf.optimize import recipes

from helpers import small_networks

@pytest.fixture(scope="module")
def nets():
    return small_networks()


@pytest.fixture(scope="module")
def animator(nets):
    return frame.sample_animator(recipes.build("fp32-eager", nets, "cpu"))


def test_stage_names():
    assert STAGES == ("F", "M", "S", "W", "G")
    assert frame.STAGE_OUTPUT_NAMES == ("f_s", "keypoints", "deformation", "warped")
    assert frame.PARITY_FRAMES == 4


def test_driving_batch_is_consecutive_frames_of_the_sample_sequence():
    clip = sample.driving_clip(5)
    assert torch.equal(frame.driving_batch(2, offset=3), clip[3:5])
    assert torch.equal(frame.driving_batch(1), sample.portrait())  # frame 0 is the portrait itself
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        frame.driving_batch(0)
    with pytest.raises(ValueError, match="offset must be an int >= 0"):
        frame.driving_batch(1, offset=-1)


def test_sample_animator_has_the_portrait_and_frame_zero_as_reference(animator):
    assert torch.equal(animator.source.image, sample.portrait())
    expected = animator.extract_motion(frame.driving_batch(1)).keypoints()
    assert torch.equal(animator.reference.keypoints(), expected)


def test_run_frames_is_the_step_one_frame_at_a_time(animator):
    frames = frame.run_frames(animator, 2, offset=1)
    assert frames.shape == (2, 3, 512, 512) and frames.dtype == torch.float32 and frames.device.type == "cpu"
    expected = torch.cat([animator.step(one) for one in frame.driving_batch(2, offset=1).split(1)])
    assert torch.equal(frames, expected)
    with pytest.raises(ValueError, match=r"count \(driving frames to run\) must be an int >= 1, got 0"):
        frame.run_frames(animator, 0)
    with pytest.raises(RuntimeError, match="no source image"):
        frame.run_frames(pipeline.Animator(small_networks()), 1)


def test_step_work_is_one_step_or_with_motion_ahead_that_many_frames(nets, animator):
    plain = frame.step_work(animator, 2, offset=1)
    assert plain.frames == 2 and list(plain.calls) == ["step"]
    assert torch.equal(plain.calls["step"](), animator.step(frame.driving_batch(2, offset=1)))

    ahead = frame.sample_animator(recipes.build("fp32-eager", nets, "cpu"))
    ahead.motion_ahead = 5
    seen = []
    ahead.nets["motion_extractor"].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    work = frame.step_work(ahead, 2, offset=1)
    last = work.calls["motion ahead + steps"]()
    assert work.frames == 6 and seen == [6]  # 3 steps of 2 frames from one M call over their 6 frames
    expected = animator.step(frame.driving_batch(2, offset=5))
    relative = torch.linalg.vector_norm(last - expected) / torch.linalg.vector_norm(expected)
    assert relative < 1e-5  # M at batch 6 against batch 2: float32 sums in another order
    with pytest.raises(RuntimeError, match="no source image"):
        frame.step_work(pipeline.Animator(small_networks()), 1)


def test_reference_frames_are_the_reference_recipe(nets, animator):
    reference = frame.reference_frames(nets, "cpu", 1)
    tf32_off = frame.sample_animator(recipes.build("reference", nets, "cpu"))
    assert torch.equal(reference, frame.run_frames(tf32_off, 1))
    torch.testing.assert_close(reference, frame.run_frames(animator, 1), rtol=0, atol=1e-5)  # CPU: no TF32


class CompiledStandIn(nn.Module):
    """What torch.compile returns: the network as _orig_mod; calling the wrapper would run compiled code."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self._orig_mod = net

    def forward(self, *args, **kwargs):
        raise AssertionError("a stage ran the compiled wrapper instead of the eager network")


def test_stage_calls_run_each_stage_alone_eagerly(nets):
    animator = frame.sample_animator(recipes.build("fp32-eager", nets, "cpu"))
    driving = frame.driving_batch(1, offset=2)
    values = animator.run_stages(driving)
    for name in (models.MOTION_NET, models.WARP_NET, models.DECODER_NET):
        animator.nets[name] = CompiledStandIn(animator.nets[name])  # as compile_nets leaves them
    calls = frame.stage_calls(animator, driving)
    assert tuple(calls) == STAGES
    assert torch.equal(calls["F"](), animator.source.feature)
    assert torch.equal(calls["M"]().keypoints(), values.motion.keypoints())
    assert torch.equal(calls["S"](), values.keypoints)
    assert torch.equal(calls["W"]()["out"], values.warped["out"])
    assert torch.equal(calls["G"](), values.frame)
    assert isinstance(animator.nets[models.WARP_NET], CompiledStandIn)  # the animator itself is left as it was


def test_stage_calls_run_in_the_recipes_context(nets, monkeypatch):
    animator = frame.sample_animator(recipes.build("reference", nets, "cpu"))  # TF32 off
    seen = []
    monkeypatch.setattr(animator.nets[models.DECODER_NET], "forward", lambda feature: seen.append(
        (torch.is_grad_enabled(), torch.backends.cudnn.allow_tf32)) or feature)
    call = frame.stage_calls(animator, frame.driving_batch(1, offset=2))["G"]
    assert torch.is_grad_enabled() and torch.backends.cudnn.allow_tf32  # outside: torch's defaults
    call()
    assert seen == [(False, False), (False, False)]  # preparing the inputs, then the call: the recipe's context


def test_stage_outputs(animator):
    driving = frame.driving_batch(2, offset=1)
    outputs = frame.stage_outputs(animator, driving)
    assert tuple(outputs) == frame.STAGE_OUTPUT_NAMES + ("frame",)
    assert all(value.dtype == torch.float32 and value.device.type == "cpu" for value in outputs.values())
    assert outputs["keypoints"].shape == (2, 21, 3) and outputs["deformation"].shape[-1] == 3
    torch.testing.assert_close(outputs["frame"], animator.step(driving), rtol=0, atol=1e-6)


def test_time_stages_on_the_cpu_times_each_stage_alone(animator):
    rule = frame.STAGE_RULE.__class__(min_repeats=2, min_seconds=0.0, max_rel_iqr=1.0, max_repeats=2,
                                      max_seconds=5.0)
    stages = frame.time_stages(animator, frame.driving_batch(1, offset=1), "cpu", warmup=0, rule=rule)
    assert tuple(stages) == STAGES and all(result.median_ms > 0 for result in stages.values())
    assert all(result.stats.count == 2 for result in stages.values())
    assert frame.stage_clock("cpu").startswith("host time") and "CUDA-graph" in frame.stage_clock("cuda")


def test_flops_per_frame_counts_m_s_w_g_of_one_frame(nets, animator):
    driving = frame.driving_batch(1, offset=1)
    values = animator.run_stages(driving)
    source = animator.source
    with torch.no_grad():
        by_network = sum(roofline.count_flops(call).total for call in (
            lambda: nets[models.MOTION_NET](driving),
            lambda: pipeline.stitch(nets[models.STITCHING_NET], source.keypoints, values.keypoints),
            lambda: nets[models.WARP_NET](source.feature, values.keypoints, source.keypoints),
            lambda: nets[models.DECODER_NET](values.warped["out"])))
    flops = frame.flops_per_frame(nets)
    assert by_network <= flops <= by_network * 1.001  # the keypoint math adds a few 3x3 products
    assert frame.flops_per_frame(nets, batch=2) == pytest.approx(flops)  # per frame, whatever the batch
