"""The exact layer rewrites against the layers they replace, in float64 on small sizes: relative
error <= 1e-6 (float64 reordering gives ~1e-15; a wrong tap, phase or bias gives ~1), for
contiguous and channels-last inputs and batches > 1."""

import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lpperf import models
from lpperf.measure import roofline
from lpperf.optimize import recipes, rewrites, steps
from lpperf.models.blocks import ResBlock3d
from lpperf.models.warping import DepthFoldedConv2d
from tests.helpers import relative_error, tiny_decoder

EXACT = 1e-6
LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}


def channels_last(value):
    """A tensor, or every 4-D/5-D parameter of a module, in the channels-last layout (as the
    channels_last step lays them out)."""
    if isinstance(value, torch.Tensor):
        return value.contiguous(memory_format=LAYOUTS[value.dim()])
    for parameter in value.parameters():
        if parameter.dim() in LAYOUTS:
            parameter.data = parameter.data.contiguous(memory_format=LAYOUTS[parameter.dim()])
    return value


def randomise_batch_norms(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding them is not a no-op."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, _BatchNorm):
                size = module.num_features
                module.running_mean.copy_(0.5 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
                module.weight.copy_(1 + 0.3 * torch.randn(size, generator=generator))
                module.bias.copy_(0.3 * torch.randn(size, generator=generator))
    return net


def tiny_warp(generator, **overrides) -> nn.Module:
    torch.manual_seed(1)
    net = models.build("warping_module", **{**models.TINY["warping_module"], **overrides})
    return randomise_batch_norms(net, generator).double()


def warp_inputs(generator, batch: int = 2, size: int = 16):
    feature = torch.randn(batch, 4, 4, size, size, generator=generator, dtype=torch.float64)
    kp_source = 0.6 * (2 * torch.rand(batch, 21, 3, generator=generator, dtype=torch.float64) - 1)
    kp_driving = kp_source + 0.05 * torch.randn(batch, 21, 3, generator=generator, dtype=torch.float64)
    return feature, kp_driving, kp_source


# --------------------------------------------------------------------------------------
# BatchNorm folding


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_folded_batch_norm_equals_conv_then_norm(generator, dims, bias):
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(5, 6, 3, padding=1, bias=bias).double()
    norm = randomise_batch_norms((nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(6), generator).double().eval()
    x = torch.randn(2, 5, *[6] * dims, generator=generator, dtype=torch.float64)
    expected = norm(conv(x))
    rewrites.fold_conv_batch_norm(conv, norm)
    assert relative_error(conv(x), expected) <= EXACT
    assert relative_error(conv(channels_last(x)), expected) <= EXACT


def test_folding_refuses_a_training_mode_norm():
    with pytest.raises(ValueError, match="eval-mode BatchNorm"):
        rewrites.fold_conv_batch_norm(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3).train())


def test_fold_batch_norms_folds_w_but_leaves_pre_activation_norms(generator):
    warp = tiny_warp(generator)
    inputs = warp_inputs(generator)
    expected = warp(*inputs)
    folded = rewrites.fold_batch_norms(warp)
    assert {"third", "dense_motion_network", "dense_motion_network.hourglass.decoder",
            "dense_motion_network.hourglass.encoder.down_blocks.0"} <= set(folded)
    assert not any(isinstance(m, _BatchNorm) for m in warp.modules())
    out = warp(*inputs)
    for key in ("out", "deformation", "occlusion_map"):
        assert relative_error(out[key], expected[key]) <= EXACT, key

    torch.manual_seed(3)
    appearance = randomise_batch_norms(models.build("appearance_feature_extractor",
                                                    **models.TINY["appearance_feature_extractor"]), generator).double()
    image = torch.rand(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    expected = appearance(image)
    assert rewrites.fold_batch_norms(appearance)
    assert relative_error(appearance(channels_last(image)), expected) <= EXACT
    resblocks = [m for m in appearance.modules() if isinstance(m, ResBlock3d)]
    assert resblocks and all(isinstance(r.norm1, nn.BatchNorm3d) and isinstance(r.norm2, nn.BatchNorm3d)
                             for r in resblocks)
    assert rewrites.fold_batch_norms(appearance) == []


# --------------------------------------------------------------------------------------
# phase split


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(5, 6), (4, 7)])
def test_phase_split_equals_conv_of_nearest_upsampled_map(generator, scale, size):
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    split = rewrites.PhaseSplitConv(conv, scale)
    x = torch.randn(2, 3, *size, generator=generator, dtype=torch.float64)
    upsampled = F.interpolate(x, size=(scale * size[0], scale * size[1]), mode="nearest")
    expected = conv(upsampled)
    assert relative_error(split(x), expected) <= EXACT
    assert relative_error(channels_last(split)(channels_last(x)), expected) <= EXACT


def test_phase_split_without_bias_and_its_flops(generator):
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=False).double()
    split = rewrites.PhaseSplitConv(conv, 4)
    x = torch.randn(1, 6, 16, 16, generator=generator, dtype=torch.float64)
    upsampled = F.interpolate(x, scale_factor=4, mode="nearest")
    assert relative_error(split(x), conv(upsampled)) <= EXACT
    ratio = roofline.count_flops(split, x).total / roofline.count_flops(conv, upsampled).total
    assert ratio == pytest.approx(4 / 9 * 17 * 17 / (16 * 16))  # a 2x2 kernel on the (H+1, W+1) grid


@pytest.mark.parametrize("depth_kernel, depth_padding", [(3, 1), (1, 0), (3, 0)])
@pytest.mark.parametrize("scale", [2, 3])
def test_phase_split_conv3d_equals_conv_of_plane_upsampled_volume(generator, depth_kernel, depth_padding, scale):
    conv = nn.Conv3d(3, 4, (depth_kernel, 3, 3), padding=(depth_padding, 1, 1)).double()
    split = rewrites.PhaseSplitConv(conv, scale)
    x = torch.randn(2, 3, 4, 5, 6, generator=generator, dtype=torch.float64)
    expected = conv(F.interpolate(x, scale_factor=(1, scale, scale)))
    assert split.conv.weight.shape == (4 * scale * scale, 3, depth_kernel, 2, 2)
    assert relative_error(split(x), expected) <= EXACT
    assert relative_error(channels_last(split)(channels_last(x)), expected) <= EXACT


def test_phase_split_hourglass_blocks_keep_w_and_take_4_9_of_their_flops(generator):
    warp = tiny_warp(generator)
    inputs = warp_inputs(generator)
    expected = warp(*inputs)
    rewrites.fold_batch_norms(warp)
    decoder = warp.dense_motion_network.hourglass.decoder
    blocks = list(decoder.up_blocks)
    x = torch.randn(1, blocks[0].conv.in_channels, 2, 8, 8, generator=generator, dtype=torch.float64)
    flops_before = roofline.count_flops(blocks[0], x).total
    changed = rewrites.phase_split_upsampling_blocks(warp)
    assert changed == [f"dense_motion_network.hourglass.decoder.up_blocks.{i}" for i in range(len(blocks))]
    assert all(isinstance(block.conv, rewrites.PhaseSplitConv) and block.upsample == 1 for block in blocks)
    out = warp(*inputs)
    for key in ("out", "deformation", "occlusion_map"):
        assert relative_error(out[key], expected[key]) <= EXACT, key
    # a 3x2x2 kernel to 4 phases on the (H+1, W+1) plane: 4/9 of the taps, on a plane one pixel wider
    assert roofline.count_flops(blocks[0], x).total / flops_before == pytest.approx(4 / 9 * 9 * 9 / (8 * 8))
    assert rewrites.phase_split_upsampling_blocks(warp) == []


@pytest.mark.parametrize("conv, scale, message", [
    (nn.Conv2d(2, 2, 5, padding=2), 2, "3x3 plane kernel with padding 1"),
    (nn.Conv3d(2, 2, (3, 3, 3), padding=(1, 0, 1)), 2, "3x3 plane kernel with padding 1"),
    (nn.Conv2d(2, 2, 3, padding=1, stride=2), 2, "stride 1"),
    (nn.Conv2d(2, 2, 3, padding=1), 1, "integer upsampling scale >= 2"),
])
def test_phase_split_refuses_what_it_cannot_compute(conv, scale, message):
    with pytest.raises(ValueError, match=message):
        rewrites.PhaseSplitConv(conv, scale)


# --------------------------------------------------------------------------------------
# batched SPADE modulations


@pytest.mark.parametrize("phase_split", [False, True])
def test_batched_spade_decoder_equals_the_decoder(generator, phase_split):
    decoder = tiny_decoder()
    feature = torch.rand(2, decoder.in_channels, 8, 8, generator=generator, dtype=torch.float64)
    batched = rewrites.batch_spade_modulations(copy.deepcopy(decoder))
    expected = decoder(feature)
    if phase_split:
        assert rewrites.phase_split_upsampled_convs(batched) == ["stages.1.hiddens.shared",
                                                                 "stages.2.hiddens.shared"]
        assert rewrites.phase_split_upsampled_convs(batched) == []
    assert relative_error(batched(feature), expected) <= EXACT
    assert relative_error(channels_last(batched)(channels_last(feature)), expected) <= EXACT
    # one shared conv per resolution, one gamma/beta conv per SPADE (12 + 3 + 3)
    assert [sum(len(block.spades) for block in stage.blocks) for stage in batched.stages] == [12, 3, 3]


@pytest.mark.parametrize("phase_split", [False, True])
def test_norms_before_the_upsampling_leave_the_decoder_unchanged(generator, phase_split):
    decoder = tiny_decoder()
    feature = torch.rand(2, decoder.in_channels, 8, 8, generator=generator, dtype=torch.float64)
    batched = rewrites.batch_spade_modulations(copy.deepcopy(decoder))
    if phase_split:
        rewrites.phase_split_upsampled_convs(batched)
    expected = decoder(feature)
    assert rewrites.normalize_before_upsample(batched) == ["stages.1", "stages.2"]
    assert rewrites.normalize_before_upsample(batched) == []
    assert relative_error(batched(feature), expected) <= EXACT
    assert relative_error(channels_last(batched)(channels_last(feature)), expected) <= EXACT


@pytest.mark.parametrize("before", [False, True])
def test_norms_before_the_upsampling_take_each_stage_input_statistics_once_at_its_resolution(monkeypatch, before):
    """G's input 8x8: up_0 runs at 16x16, up_1 at 32x32. Each stage's block normalises its input once
    (for norm_0 and the learned shortcut's norm_s) and its conv_0 output for norm_1; moved before the
    upsampling, up_0's input statistics are taken at 8x8 and up_1's at 16x16."""
    batched = rewrites.batch_spade_modulations(tiny_decoder())
    if before:
        rewrites.normalize_before_upsample(batched)
    normalized = collections.Counter()
    instance_norm = F.instance_norm
    monkeypatch.setattr(F, "instance_norm", lambda x, *a, **kw: normalized.update([x.shape[-1]])
                        or instance_norm(x, *a, **kw))
    batched(torch.rand(1, batched.in_channels, 8, 8, dtype=torch.float64))
    assert (normalized[16], normalized[32]) == ((2, 1) if before else (2, 2))


def test_normalize_before_upsample_needs_a_batched_decoder():
    with pytest.raises(TypeError, match="BatchedSPADEDecoder"):
        rewrites.normalize_before_upsample(tiny_decoder())


def test_batched_spade_decoder_keeps_the_residual_stream_and_casts():
    """bfloat16 convolutions with a float32 residual stream: the same dtypes reach the same layers."""
    decoder = tiny_decoder().float().to(torch.bfloat16)
    decoder.residual_dtype = torch.float32
    batched = rewrites.batch_spade_modulations(copy.deepcopy(decoder))
    feature = torch.rand(1, decoder.in_channels, 8, 8).to(torch.bfloat16)

    def traced(net):
        seen = []
        hooks = [module.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, args[0].dtype)))
                 for name, module in net.named_modules() if name.rsplit(".", 1)[-1] in {"conv_0", "conv_1", "conv_s"}
                 or isinstance(module, (models.spade.SPADEResnetBlock, rewrites.ModulatedResnetBlock))]
        out = net(feature)
        for hook in hooks:
            hook.remove()
        return out, [dtype for _, dtype in seen]

    expected, expected_dtypes = traced(decoder)
    out, dtypes = traced(batched)
    assert dtypes == expected_dtypes
    assert {torch.float32, torch.bfloat16} == set(dtypes)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


def test_batch_spade_modulations_needs_a_spade_decoder():
    with pytest.raises(TypeError, match="expected a SPADEDecoder"):
        rewrites.batch_spade_modulations(nn.Conv2d(1, 1, 1))


# --------------------------------------------------------------------------------------
# Conv3d split over depth


@pytest.mark.parametrize("kernel, padding", [((7, 7, 7), (3, 3, 3)), ((3, 3, 3), (1, 1, 1)), ((3, 1, 1), (1, 0, 0)),
                                             ((1, 3, 3), (0, 1, 1)), ((5, 3, 3), (2, 0, 0))])
@pytest.mark.parametrize("bias", [True, False])
def test_depth_split_conv3d_equals_conv3d(generator, kernel, padding, bias):
    conv = nn.Conv3d(6, 5, kernel, padding=padding, bias=bias).double()
    split = rewrites.DepthSplitConv3d(conv)
    x = torch.randn(2, 6, 4, 7, 9, generator=generator, dtype=torch.float64)  # depth 4 < kernel 7: edge taps
    expected = conv(x)
    assert split(x).shape == expected.shape
    assert relative_error(split(x), expected) <= EXACT
    out = channels_last(split)(channels_last(x))
    assert relative_error(out, expected) <= EXACT
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_depth_split_of_a_volume_shallower_than_the_tap_reach(generator, depth):
    """Depth 2 with a 7-deep kernel: the outer taps touch no slice (a negative slice end once wrapped)."""
    conv = nn.Conv3d(3, 4, 7, padding=3).double()
    x = torch.randn(1, 3, depth, 8, 8, generator=generator, dtype=torch.float64)
    assert relative_error(rewrites.DepthSplitConv3d(conv)(x), conv(x)) <= EXACT


def test_depth_split_reads_channels_last_3d_slices_without_a_copy(generator, monkeypatch):
    split = channels_last(rewrites.DepthSplitConv3d(nn.Conv3d(8, 4, 3, padding=1).double()))
    x = channels_last(torch.randn(2, 8, 3, 5, 5, generator=generator, dtype=torch.float64))
    inputs = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda slices, *args, **kw: inputs.append(slices) or conv2d(slices, *args, **kw))
    split(x)
    assert len(inputs) == 1 and inputs[0].shape == (6, 8, 5, 5)
    assert inputs[0].data_ptr() == x.data_ptr() and inputs[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("multiple, padding", [(8, 2), (32, 26), (3, 0)])
def test_depth_split_with_zero_input_channels_equals_conv3d(generator, multiple, padding):
    conv = nn.Conv3d(6, 5, 7, padding=3).double()
    split = rewrites.DepthSplitConv3d(conv)
    assert split.pad_input_channels(multiple) == padding
    assert split.weight.shape[1] == 6 + padding and split.input_padding == padding
    x = torch.randn(2, 6, 5, 7, 9, generator=generator, dtype=torch.float64)
    assert relative_error(split(x), conv(x)) <= EXACT
    out = channels_last(split)(channels_last(x))
    assert relative_error(out, conv(x)) <= EXACT and out.is_contiguous(memory_format=torch.channels_last_3d)
    laid_out = channels_last(rewrites.DepthSplitConv3d(conv))  # padded after the layout: it keeps it
    laid_out.pad_input_channels(multiple)
    assert laid_out.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("multiple", [0, -8, 2.0, True])
def test_depth_split_input_padding_refuses_a_bad_multiple(multiple):
    with pytest.raises(ValueError, match="multiple must be an int >= 1"):
        rewrites.DepthSplitConv3d(nn.Conv3d(2, 2, 3, padding=1)).pad_input_channels(multiple)


def test_depth_split_flops_equal_the_conv3d(generator):
    conv = nn.Conv3d(4, 3, 7, padding=3).double()
    x = torch.randn(1, 4, 5, 6, 6, generator=generator, dtype=torch.float64)
    split = rewrites.DepthSplitConv3d(conv)
    assert roofline.count_flops(split, x).total == roofline.count_flops(conv, x).total


@pytest.mark.parametrize("conv, message", [
    (nn.Conv3d(2, 2, 3, padding=(0, 1, 1)), "'same' depth padding"),
    (nn.Conv3d(2, 2, 3, padding=1, stride=(1, 2, 2)), "stride 1"),
    (nn.Conv2d(2, 2, 3), "expected a Conv3d layer"),
])
def test_depth_split_refuses_what_it_cannot_compute(conv, message):
    with pytest.raises((ValueError, TypeError), match=message):
        rewrites.DepthSplitConv3d(conv)


# --------------------------------------------------------------------------------------
# Conv3d in the frequency domain


@pytest.mark.parametrize("kernel, padding", [((7, 7, 7), (3, 3, 3)), ((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (0, 1, 1)),
                                             ((5, 1, 1), (2, 0, 0)), ((3, 5, 3), (1, 2, 1))])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frames_per_chunk", [1, 4])
def test_fft_conv3d_equals_conv3d(generator, kernel, padding, bias, frames_per_chunk):
    conv = nn.Conv3d(6, 5, kernel, padding=padding, bias=bias).double()
    x = torch.randn(3, 6, 4, 9, 7, generator=generator, dtype=torch.float64)  # depth 4 < kernel 7: edge taps
    fft = rewrites.FFTConv3d(conv, (9, 7), frames_per_chunk=frames_per_chunk)
    expected = conv(x)
    out = fft(x)
    assert out.shape == expected.shape and out.dtype == torch.float64
    assert relative_error(out, expected) <= EXACT
    assert relative_error(fft(channels_last(x)), expected) <= EXACT


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_fft_conv3d_of_a_volume_shallower_than_the_tap_reach(generator, depth):
    conv = nn.Conv3d(3, 4, 7, padding=3).double()
    x = torch.randn(2, 3, depth, 8, 8, generator=generator, dtype=torch.float64)
    assert relative_error(rewrites.FFTConv3d(conv, (8, 8))(x), conv(x)) <= EXACT


def test_fft_conv3d_of_a_float32_conv_is_float32_accurate_and_keeps_its_spectrum_through_half(generator):
    """The spectrum is complex64 for a float32 layer and stays so, values and all, when the recipe
    casts the network to half: the transform runs in float32 on half inputs too."""
    reference = nn.Conv3d(8, 6, 7, padding=3).double()
    conv = nn.Conv3d(8, 6, 7, padding=3)
    conv.load_state_dict({name: value.float() for name, value in reference.state_dict().items()})
    x = torch.randn(2, 8, 5, 12, 12, generator=generator, dtype=torch.float64)
    fft = rewrites.FFTConv3d(conv, (12, 12))
    assert fft.spectrum.dtype == torch.complex64
    assert relative_error(fft(x.float()).double(), reference(x)) <= EXACT
    spectrum = fft.spectrum.clone()
    fft.to(torch.float16)  # how the recipes cast a network: Module.to(dtype) would cast a complex buffer too
    assert fft.spectrum.dtype == torch.complex64 and torch.equal(fft.spectrum, spectrum)
    assert fft.bias.dtype == torch.float16
    out = fft(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert relative_error(out.double(), reference(x)) <= 2e-3  # the half input and output roundings


@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex operators")
def test_fft_conv3d_compiled_by_inductor_computes_the_same(generator):
    """Inductor runs the complex ops as ATen kernels and fuses the tap sum on their real views: the
    compiled module must give the eager one's values (the recipes compile it inside the step)."""
    conv = nn.Conv3d(6, 5, (7, 3, 3), padding=(3, 1, 1))
    fft = rewrites.FFTConv3d(conv, (10, 10), frames_per_chunk=2).eval()
    x = torch.randn(3, 6, 5, 10, 10, generator=generator)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(fft)(x)
        torch.testing.assert_close(compiled, fft(x), rtol=1e-5, atol=1e-6)


def test_fft_conv3d_keeps_only_the_filters_asked_for(generator):
    conv = nn.Conv3d(4, 6, 3, padding=1).double()
    x = torch.randn(1, 4, 3, 6, 6, generator=generator, dtype=torch.float64)
    fft = rewrites.FFTConv3d(conv, (6, 6), outputs=4)
    assert fft.out_channels == 4 and fft.spectrum.shape == (8 * 5, 4, 3 * 4)  # (8 x 5 frequencies, Cin, kd * kept)
    assert relative_error(fft(x), conv(x)[:, :4]) <= EXACT


@pytest.mark.parametrize("build, message", [
    (lambda: rewrites.FFTConv3d(nn.Conv3d(2, 2, 3, padding=(1, 0, 1)), (8, 8)), "'same' padding"),
    (lambda: rewrites.FFTConv3d(nn.Conv3d(2, 2, 3, padding=1, stride=(1, 2, 2)), (8, 8)), "stride 1"),
    (lambda: rewrites.FFTConv3d(nn.Conv2d(2, 2, 3, padding=1), (8, 8)), "expected a Conv3d layer"),
    (lambda: rewrites.FFTConv3d(nn.Conv3d(2, 2, 3, padding=1), (8, 8), frames_per_chunk=0), "frames_per_chunk"),
    (lambda: rewrites.FFTConv3d(nn.Conv3d(2, 2, 3, padding=1), (8, 8), outputs=3), "outputs must be 1..2"),
])
def test_fft_conv3d_refuses_what_it_cannot_compute(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


@pytest.mark.parametrize("shape", [(1, 2, 3, 8, 9), (1, 3, 3, 8, 8), (2, 3, 8, 8)])
def test_fft_conv3d_names_the_input_it_was_built_for(shape):
    fft = rewrites.FFTConv3d(nn.Conv3d(2, 2, 3, padding=1), (8, 8))
    with pytest.raises(ValueError, match=r"built for \(B, 2, D, 8, 8\) inputs, got"):
        fft(torch.zeros(shape))


# --------------------------------------------------------------------------------------
# a k x k convolution as per-tap maps


@pytest.mark.parametrize("outputs, kernel, padding, bias", [(1, 7, 3, True), (2, 3, 1, False),
                                                            (1, (3, 5), (0, 2), True)])
def test_tap_sum_conv_equals_the_depth_folded_conv(generator, outputs, kernel, padding, bias):
    conv = DepthFoldedConv2d(5, 2, outputs, kernel, padding=padding).double()
    if not bias:
        conv.bias = None
    taps = rewrites.TapSumConv2d(conv)
    assert taps.weight.shape[0] % 8 == 0 and taps.weight.shape[1:] == (5, 2, 1, 1)  # maps padded to aligned rows
    volume = torch.randn(2, 5, 2, 9, 8, generator=generator, dtype=torch.float64)
    expected = F.conv2d(volume.flatten(1, 2), conv.weight, conv.bias, padding=padding)
    assert relative_error(conv(volume), expected) <= EXACT
    assert relative_error(taps(volume), expected) <= EXACT
    assert relative_error(channels_last(taps)(channels_last(volume)), expected) <= EXACT


def test_tap_sum_conv_takes_only_a_depth_folded_conv():
    with pytest.raises(TypeError, match="expected a DepthFoldedConv2d layer, got Conv2d"):
        rewrites.TapSumConv2d(nn.Conv2d(4, 1, 3, padding=1))


# --------------------------------------------------------------------------------------
# the rewrites of W, composed with padding and folding


@pytest.mark.parametrize("mask_step", ["warp_depth_split", "warp_depth_split_all", "warp_mask_fft",
                                       "warp_depth_split+pad_warp_mask_input"])
def test_w_rewrites_after_padding_and_folding_leave_w_unchanged(generator, monkeypatch, mask_step):
    monkeypatch.setattr(steps, "FEATURE_PLANE", (16, 16))  # warp_inputs' planes
    warp = tiny_warp(generator)
    inputs = warp_inputs(generator)
    expected = warp(*inputs)
    mask_steps = [steps.lookup(name) for name in mask_step.split("+")]
    chosen = [steps.pad_warp_channels, steps.fold_batch_norm, *mask_steps, steps.occlusion_as_taps]
    mask_step = mask_steps[0].name
    engine = recipes.build(chosen, {"warping_module": warp}, "cpu")
    assert engine.applied == chosen, engine.skipped
    rewritten = engine.nets["warping_module"]
    dense = rewritten.dense_motion_network
    if mask_step == "warp_mask_fft":  # the padded zero filters dropped: 24 -> the 22 W keeps
        assert isinstance(dense.mask, rewrites.FFTConv3d) and dense.mask.out_channels == 22
    else:
        assert isinstance(dense.mask, rewrites.DepthSplitConv3d) and dense.mask.out_channels == 24  # padded 22 -> 24
    assert isinstance(dense.occlusion, rewrites.TapSumConv2d)
    split = [m for m in rewritten.modules() if isinstance(m, rewrites.DepthSplitConv3d)]
    # encoder, decoder blocks, last conv, mask
    assert len(split) == {"warp_depth_split": 1, "warp_depth_split_all": 2 + 2 + 1 + 1, "warp_mask_fft": 0}[mask_step]
    if steps.pad_warp_mask_input in chosen:  # zero input channels up to whole 32-channel tiles
        assert dense.mask.weight.shape[1] % 32 == 0 < dense.mask.input_padding
    for out in (rewritten(*inputs), channels_last(rewritten)(*[channels_last(t) for t in inputs[:1]], *inputs[1:])):
        for key in ("out", "deformation", "occlusion_map"):
            assert relative_error(out[key], expected[key]) <= EXACT, key


def test_w_padded_to_multiples_of_32_needs_no_mask_input_padding_and_is_unchanged(generator):
    # the official decoder's 32 added channels (block_expansion), so that in and out pad to x32 together
    dense_params = {**models.TINY["warping_module"]["dense_motion_params"], "block_expansion": 32, "max_features": 64}
    warp = tiny_warp(generator, dense_motion_params=dense_params)
    inputs = warp_inputs(generator)
    expected = warp(*inputs)
    chosen = [steps.pad_warp_channels_x32, steps.fold_batch_norm, steps.phase_split_hourglass, steps.warp_depth_split,
              steps.pad_warp_mask_input, steps.occlusion_as_taps]
    engine = recipes.build(chosen, {"warping_module": warp}, "cpu")
    assert "already padded" in engine.skipped["pad_warp_mask_input"]
    dense = engine.nets["warping_module"].dense_motion_network
    glass = dense.hourglass
    assert glass.encoder.down_blocks[0].conv.in_channels % 32 == 0 == glass.out_filters % 32
    assert glass.decoder.conv.weight.shape[:2] == (glass.out_filters, glass.out_filters)
    assert dense.mask.weight.shape[:2] == (7 * 24, glass.out_filters)  # outputs still padded 22 -> 24 per tap
    out = engine.nets["warping_module"](*inputs)
    for key in ("out", "deformation", "occlusion_map"):
        assert relative_error(out[key], expected[key]) <= EXACT, key
    tiny = recipes.build([steps.pad_warp_channels_x32], {"warping_module": tiny_warp(generator)}, "cpu")
    assert "cannot be padded to multiples of 32 together" in tiny.skipped["pad_warp_channels_x32"]


def test_rewrites_of_w_report_what_they_changed(generator):
    warp = tiny_warp(generator)
    assert rewrites.depth_split_conv3ds(warp) == ["dense_motion_network.mask"]
    assert rewrites.depth_split_conv3ds(warp) == []
    assert rewrites.fft_conv3ds(tiny_warp(generator), (16, 16)) == ["dense_motion_network.mask"]
    assert rewrites.occlusion_as_taps(warp) == ["dense_motion_network.occlusion"]
    assert rewrites.occlusion_as_taps(warp) == []
    without_occlusion = tiny_warp(generator, estimate_occlusion_map=False)
    assert rewrites.occlusion_as_taps(without_occlusion) == []
