"""lpperf profile on the CPU: every convolution and matmul of one frame timed alone, with FLOPs, and
the frame's split (the whole step, M, W, G each alone, the time outside them)."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from lpperf import cli
from lpperf.measure import frame, timing
from lpperf.models import weights
from lpperf.optimize import recipes
from lpperf.reports import profile
from lpperf.optimize.engine import HEAVY_NETS
from lpperf.models import DECODER_NET, MOTION_NET, WARP_NET
from helpers import small_networks

# Two samples per measurement: the split's plumbing is under test, not its numbers.
TWO_SAMPLES = timing.StoppingRule(min_repeats=2, min_seconds=0.0, max_rel_iqr=1e9, max_repeats=2, max_seconds=60.0)


@pytest.fixture(scope="module")
def animator():
    return frame.sample_animator(recipes.build("fastest", small_networks(), "cpu"))


@pytest.fixture(scope="module")
def driving():
    return frame.driving_batch(1, offset=frame.PARITY_FRAMES)


@pytest.fixture(scope="module")
def layers(animator, driving):
    return profile.profile_layers(animator, driving, animator.source.image.device)


@pytest.fixture(scope="module")
def split(animator, driving):
    return profile.frame_split(animator, driving, "cpu", warmup=0, rule=TWO_SAMPLES)


def test_every_per_frame_layer_is_timed_once_with_its_flops(layers):
    names = [layer.name for layer in layers]
    assert len(names) == len(set(names))
    assert not [name for name in names if name.startswith("appearance_feature_extractor")]  # F: once per source
    # the rewritten layers are timed as one (their inner convolutions are not listed again)
    assert {"DepthSplitConv3d", "TapSumConv2d", "PhaseSplitConv"} <= {layer.kind for layer in layers}
    assert not [name for name in names if name.endswith("mask.weight") or ".mask." in name]
    assert all(layer.ms > 0 for layer in layers)
    convolutions = [layer for layer in layers if "Conv" in layer.kind]
    assert convolutions and all(layer.flops > 0 for layer in convolutions)
    assert layers == sorted(layers, key=lambda layer: layer.ms, reverse=True)


def test_a_fused_spade_is_timed_as_one_layer_with_its_gamma_beta_flops(driving):
    """The fused SPADE takes the block's normalised stream (not a tensor) as an argument; off the card it
    runs its PyTorch form, whose FLOPs are the kernel's: the gamma/beta convolution's."""
    from lpperf.optimize import modulation
    animator = frame.sample_animator(recipes.build("fastest", small_networks(), "cpu"))
    decoder = animator.engine.nets[DECODER_NET]
    assert modulation.fused_spade_modulations(decoder)
    fused = [layer for layer in profile.profile_layers(animator, driving, torch.device("cpu"))
             if layer.kind == "TritonSpadeModulation"]
    assert len(fused) == sum(len(block.spades) for stage in decoder.stages for block in stage.blocks)
    for layer in fused:
        module = decoder.get_submodule(layer.name.split(".", 1)[1])
        cin, channels = module.in_channels, module.channels
        height, width = (int(size) for size in layer.shapes.split(") (")[0].strip("()").split(", ")[2:])
        assert layer.flops == 2 * height * width * cin * 2 * channels * 9 and layer.ms > 0


def test_the_table_reports_time_flops_and_share_of_the_peak(layers):
    text = profile.format_layers(layers, peak_tflops=100.0, top=3)
    assert len(text.splitlines()) == 2 + 3 + 1
    assert f"{len(layers)} layers timed alone" in text and "card peak 100 TFLOP/s" in text


def test_an_unknown_recipe_fails_before_anything_loads(capsys):
    assert cli.main(["profile", "--recipe", "no-such-recipe", "--device", "cpu"]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err


def test_the_split_times_m_w_and_g_alone_and_sums_them(split):
    assert list(split.networks_ms) == list(HEAVY_NETS) == [MOTION_NET, WARP_NET, DECODER_NET]
    assert split.frame_ms > 0 and all(ms > 0 for ms in split.networks_ms.values())
    # no GPU: nothing to profile, and the networks are called eagerly, as parts of the frame
    assert split.busy_ms is None and split.idle_ms is None and split.profiled_frames == 0
    assert split.network_form == "eager call, host time" and split.networks_as_in_frame


def test_a_whole_step_compile_says_its_networks_alone_are_not_parts_of_the_frame(animator, driving, monkeypatch):
    # On a card a recipe with compile_step fuses across the networks; its split must not subtract them.
    monkeypatch.setattr(animator.engine, "compile_step_mode", "reduce-overhead")
    split = profile.frame_split(animator, driving, "cpu", warmup=0, rule=TWO_SAMPLES)
    assert not split.networks_as_in_frame
    assert "frame - (M + W + G)" not in profile.format_split(split)


def test_the_networks_are_timed_on_the_inputs_they_got_in_a_frame(animator, driving):
    inputs = frame.network_inputs(animator, driving)
    assert list(inputs) == list(HEAVY_NETS)
    (motion_args, _), (_, warp_kwargs), (decoder_args, _) = inputs.values()
    assert motion_args[0] is driving
    assert warp_kwargs["kp_driving"].shape == animator.source.keypoints.shape
    outputs = frame.stage_outputs(animator, driving)
    with animator.engine.context():
        warped = animator.nets[WARP_NET](*inputs[WARP_NET][0], **warp_kwargs)
        decoded = animator.nets[DECODER_NET](*decoder_args)
    # W alone on its recorded inputs, and G alone on W's output, give the frame's own values
    torch.testing.assert_close(warped["out"].float(), outputs["warped"])
    torch.testing.assert_close(decoded.float(), outputs["frame"])


def test_probe_inputs_redraw_every_float_tensor_from_a_standard_normal(animator, driving):
    inputs = frame.network_inputs(animator, driving)
    probe = profile.standard_normal_like(inputs)
    assert list(probe) == list(inputs)
    for (args, kwargs), (probe_args, probe_kwargs) in zip(inputs.values(), probe.values()):
        assert list(probe_kwargs) == list(kwargs) and len(probe_args) == len(args)
        for value, drawn in zip([*args, *kwargs.values()], [*probe_args, *probe_kwargs.values()]):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert drawn is not value and (drawn.shape, drawn.dtype, drawn.stride()) == (
                    value.shape, value.dtype, value.stride())
                if drawn.numel() >= 1000:  # the image, the feature: N(0, 1) by their moments
                    assert abs(drawn.mean().item()) < 0.1 and abs(drawn.std().item() - 1) < 0.1
            else:
                assert drawn is value
    keypoints = probe[WARP_NET][1]["kp_driving"]
    assert (keypoints.abs() > 1).any()  # as in the official probe: keypoints outside the [-1, 1] volume
    again = profile.standard_normal_like(inputs)  # seeded: the same draw each time
    torch.testing.assert_close(again[WARP_NET][1]["kp_driving"], keypoints, rtol=0, atol=0)


def test_the_split_times_the_networks_on_probe_inputs_when_asked(animator, driving):
    split = profile.frame_split(animator, driving, "cpu", warmup=0, rule=TWO_SAMPLES, probe_inputs=True)
    assert list(split.probe_ms) == list(split.networks_ms) and all(ms > 0 for ms in split.probe_ms.values())
    text = profile.format_split(split)
    assert "official speed script's random inputs" in text and "against the frame's own inputs" in text


def test_the_profiled_frames_must_be_a_positive_count(animator, driving):
    with pytest.raises(ValueError, match="profiled_frames must be an int >= 1, got 0"):
        profile.frame_split(animator, driving, "cpu", rule=TWO_SAMPLES, profiled_frames=0)


@pytest.mark.parametrize("intervals, merged", [
    ([], []),
    ([(0.0, 2.0), (1.0, 3.0)], [(0.0, 3.0)]),  # overlapping
    ([(0.0, 10.0), (2.0, 3.0), (4.0, 5.0)], [(0.0, 10.0)]),  # nested
    ([(5.0, 6.0), (0.0, 1.0), (2.0, 3.0)], [(0.0, 1.0), (2.0, 3.0), (5.0, 6.0)]),  # disjoint, unsorted
    ([(0.0, 1.0), (1.0, 2.0)], [(0.0, 2.0)]),  # touching
    ([(3.0, 4.0), (0.0, 2.0), (1.0, 3.5), (6.0, 6.0)], [(0.0, 4.0), (6.0, 6.0)]),  # a chain, an empty one
])
def test_kernel_intervals_are_merged_into_their_union(intervals, merged):
    assert profile.merge_intervals(intervals) == merged


def test_gpu_activity_merges_busy_time_and_counts_kernels_not_copies():
    intervals = [(0.0, 10.0, "sm90_xmma_fprop"), (5.0, 12.0, "triton_poi_fused_add"),  # overlapping streams
                 (20.0, 21.0, "Memcpy HtoD (Pageable -> Device)"), (30.0, 34.0, "Memset (Device)"),
                 (40.0, 46.0, "gemv2N_kernel")]
    activity = profile.GpuActivity.from_intervals(intervals, frames=2)
    assert activity.busy_ms == pytest.approx((12 + 1 + 4 + 6) / 1e3 / 2) and activity.kernels_per_frame == 1.5


@pytest.mark.parametrize("name, family", [
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolutions"),
    ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_f16_s16816fprop_optimized_f16_256x64_32x4_nhwc_align8>", "convolutions"),
    ("void nhwcAddPaddingKernel<__half, __half, float, true, (cudnnKernelDataType_t)0>(int)", "convolutions"),
    ("conv2d_c1_k1_nhwc_specialized", "convolutions"),
    ("triton_poi_fused__to_copy_add_convolution_leaky_relu_45", "inductor"),
    ("nvjet_sm90_hsh_128x256_64x4_2x1_v_bz_coopA_TNN", "matrix products"),
    ("void cutlass::Kernel2<cutlass_75_wmma_tensorop_f16_s161616gemm_f16_32x32_128x1_tn_align1>", "matrix products"),
    ("std::enable_if<!(false), void>::type internal::gemvx::kernel<int, int, float>", "matrix products"),
    ("Memset (Unknown)", "copies and fills"), ("memset32", "copies and fills"),
    ("Memcpy DtoD (Device -> Device)", "copies and fills"),
    ("sample_trilinear", "other"), ("void at::native::elementwise_kernel<128, 4>", "other"),
    ("void implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, true, false, true>", "convolutions"),
    ("void explicit_convolve_sgemm<float, int, 128, 6, 7, 3, 3, 5, 0, false>", "convolutions"),
    ("void at::native::conv_depthwise2d_forward_kernel<1, c10::Half, int>", "convolutions"),
    ("void at::native::vol2col_kernel<c10::Half>", "convolutions"), ("fft2d_r2c_32x32<float, false, 1u>", "convolutions"),
])
def test_kernels_are_sorted_into_families_by_name(name, family):
    assert profile.kernel_family(name).startswith(family)


def test_kernel_families_count_time_per_frame_and_the_wait_after_each_fill():
    intervals = [(0.0, 1.0, "Memset (Unknown)"), (4.0, 24.0, "sm90_xmma_fprop_x"), (24.5, 26.5, "triton_poi_a"),
                 (27.0, 28.0, "Memset (Unknown)"), (30.0, 50.0, "sm90_xmma_fprop_y"), (51.0, 53.0, "triton_poi_b"),
                 (60.0, 61.0, "Memset (Unknown)")]  # a last fill: nothing after it to wait for
    families = profile.KernelFamilies.from_intervals(intervals, frames=2)
    assert list(families.per_frame)[0].startswith("convolutions")  # by time, the largest first
    assert families.per_frame[profile.kernel_family("sm90_xmma_fprop_x")] == pytest.approx((1.0, 0.020))
    assert families.per_frame[profile.kernel_family("triton_poi_a")] == pytest.approx((1.0, 0.002))
    assert families.fills_per_frame == 1.5 and families.wait_after_fills_ms == pytest.approx((3 + 2) / 1e3 / 2)
    text = profile.format_families(families)
    assert "mean of 2 frames" in text and "idle after fills (memsets)" in text
    with pytest.raises(ValueError, match="frames"):
        profile.KernelFamilies.from_intervals(intervals, frames=0)


def test_a_fill_by_any_spelling_counts_as_a_fill_and_not_as_a_kernel():
    intervals = [(0.0, 1.0, "memset32"), (5.0, 6.0, "sm90_xmma_fprop_x")]
    families = profile.KernelFamilies.from_intervals(intervals, frames=1)
    assert families.fills_per_frame == 1 and families.wait_after_fills_ms == pytest.approx(0.004)
    assert profile.GpuActivity.from_intervals(intervals, frames=1).kernels_per_frame == 1


def test_gpu_intervals_of_cuda_without_an_index_are_the_current_cards(monkeypatch):
    from torch.autograd import DeviceType

    def event(index, name):
        return types.SimpleNamespace(device_type=DeviceType.CUDA, is_user_annotation=False, device_index=index,
                                     name=name, time_range=types.SimpleNamespace(start=0.0, end=1.0))

    profiler = types.SimpleNamespace(events=lambda: [event(0, "on card 0"), event(1, "on card 1")])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert profile._gpu_intervals(profiler, torch.device("cuda")) == [(0.0, 1.0, "on card 0")]
    with pytest.raises(RuntimeError, match="no GPU work on cuda:2"):
        profile._gpu_intervals(profiler, torch.device("cuda", 2))


def test_an_interval_that_ends_before_it_starts_is_refused():
    with pytest.raises(ValueError, match=r"must not end before it starts, got \(2.0, 1.0\)"):
        profile.merge_intervals([(0.0, 1.0), (2.0, 1.0)])


def test_the_split_block_reports_busy_idle_each_network_and_the_rest():
    networks_ms = {MOTION_NET: 1.0, WARP_NET: 2.5, DECODER_NET: 3.5}
    split = profile.FrameSplit(frame_ms=10.0, busy_ms=6.0, networks_ms=networks_ms, network_form="compiled",
                               profiled_frames=20)
    lines = profile.format_split(split).splitlines()
    assert lines[0] == "frame split (networks alone: compiled)"
    assert "10.000 ms" in lines[1]
    assert "6.000 ms" in lines[2] and "mean of 20 profiled frames" in lines[2]
    assert "4.000 ms" in lines[3] and "40.0% of the frame" in lines[3]
    assert [line.split()[:2] for line in lines[4:7]] == [["M", MOTION_NET], ["W", WARP_NET], ["G", DECODER_NET]]
    assert "M + W + G alone" in lines[7] and "7.000 ms" in lines[7]
    assert "frame - (M + W + G)" in lines[8] and "3.000 ms" in lines[8] and "30.0% of the frame" in lines[8]
    on_the_cpu = profile.format_split(dataclasses.replace(split, busy_ms=None, profiled_frames=0))
    assert "n/a" in on_the_cpu.splitlines()[2] and "n/a" in on_the_cpu.splitlines()[3]
    whole_step = profile.format_split(dataclasses.replace(split, networks_as_in_frame=False))
    assert "frame - (M + W + G)" not in whole_step and "not parts of this frame" in whole_step
    assert "random inputs" not in profile.format_split(split)  # no probe rows unless measured
    assert "kernels per frame" not in profile.format_split(split)
    counted = profile.format_split(dataclasses.replace(split, kernels_per_frame=250.0)).splitlines()
    assert "kernels per frame" in counted[4] and "250.0" in counted[4] and "16.00 us idle per kernel" in counted[4]
    probed = profile.format_split(dataclasses.replace(split, probe_ms={MOTION_NET: 0.5, WARP_NET: 1.5,
                                                                       DECODER_NET: 3.0})).splitlines()
    assert "official speed script's random inputs" in probed[9]
    assert [line.split()[:2] for line in probed[10:13]] == [["M", MOTION_NET], ["W", WARP_NET], ["G", DECODER_NET]]
    assert "5.000 ms" in probed[13] and "-2.000 ms against the frame's own inputs" in probed[13]


def test_the_split_flag_prints_the_block_after_the_header(capsys, monkeypatch):
    monkeypatch.setattr(weights, "tiny_networks", lambda seed=0: small_networks())
    monkeypatch.setattr(profile, "CPU_SPLIT_RULE", TWO_SAMPLES)
    assert cli.main(["profile", "--recipe", "fp32-eager", "--device", "cpu", "--split", "--no-layers"]) == 0
    out = capsys.readouterr().out
    assert "layers timed alone" not in out  # --no-layers
    assert "frame split (networks alone: eager call, host time)" in out
    assert "frame - (M + W + G)" in out and "warping_module alone" in out


def test_probe_inputs_without_the_split_fail_before_anything_loads(capsys, monkeypatch):
    monkeypatch.setattr(weights, "load_networks", lambda *args, **kwargs: pytest.fail("networks were loaded"))
    assert cli.main(["profile", "--device", "cpu", "--probe-inputs"]) == 2
    assert "--probe-inputs times the networks of the split: add --split" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--batch", "--top"])
def test_a_bad_count_fails_before_anything_loads(option, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("networks were loaded before the arguments were checked")

    monkeypatch.setattr(weights, "load_networks", refuse)
    assert cli.main(["profile", "--device", "cpu", "--split", option, "0"]) == 2
    assert f"argument {option}: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_a_round_is_one_step_or_with_motion_ahead_the_steps_animate_makes(driving):
    plain = frame.sample_animator(recipes.build("fp32-eager", small_networks(), "cpu"))
    round_ = profile.StepRound.of(plain, driving)
    assert round_.steps == 1 and round_.rounds_for(20) == 20
    assert torch.equal(round_.run(), plain.step(driving))

    ahead = frame.sample_animator(recipes.build("fp32-eager", small_networks(), "cpu"))
    ahead.motion_ahead = 4
    motion_batches = []
    ahead.nets[MOTION_NET].register_forward_hook(lambda module, args, out: motion_batches.append(args[0].shape[0]))
    round_ = profile.StepRound.of(ahead, driving)
    round_.run()
    assert round_.steps == 4 and motion_batches == [4]  # M once over the 4 frames, then 4 steps from their motion
    assert round_.rounds_for(20) == 5 and round_.rounds_for(21) == 6


def test_the_split_of_a_recipe_with_motion_ahead_is_per_step(driving, monkeypatch):
    """A round of 4 steps timed at 8 ms is 2 ms a frame; the networks alone are timed as before."""
    ahead = frame.sample_animator(recipes.build("fp32-eager", small_networks(), "cpu"))
    ahead.motion_ahead = 4
    timed = []

    def time_callable(call, device, **kwargs):
        timed.append(call)
        return dataclasses.make_dataclass("Timed", ["median_ms"])(8.0)
    monkeypatch.setattr(profile.timing, "time_callable", time_callable)
    split = profile.frame_split(ahead, driving, "cpu", warmup=0, rule=TWO_SAMPLES)
    assert split.frame_ms == 2.0 and set(split.networks_ms) == set(HEAVY_NETS) - {"appearance_feature_extractor"}
    assert all(ms == 8.0 for ms in split.networks_ms.values()) and len(timed) == 1 + len(split.networks_ms)
