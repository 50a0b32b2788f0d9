"""lpperf.optimize.fp8 on the CPU: e4m3 rounding, the scales, and a convolution simulated as an FP8
kernel computes it, against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lpperf.optimize import fp8


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rounding_moves_a_normal_value_by_at_most_a_sixteenth_and_keeps_e4m3_values():
    x = torch.randn(10_000, generator=generator(), dtype=torch.float64) * 40
    normal = x.abs() >= 2.0**-6
    rounded = fp8.round_to_e4m3(x, 1.0)
    assert ((rounded - x).abs() / x.abs())[normal].max() <= 2.0**-4
    assert (rounded - x).abs()[~normal].max() <= 2.0**-10
    assert torch.equal(fp8.round_to_e4m3(rounded, 1.0), rounded)  # e4m3 values round to themselves
    assert fp8.round_to_e4m3(torch.tensor([1e4, -1e4]), 1.0).tolist() == [448.0, -448.0]  # clipped
    assert fp8.round_to_e4m3(torch.tensor([1e4]), 125.0).item() == 1e4  # within range once scaled: 80 x 125


def test_weight_scales_are_per_output_channel_and_clip_nothing():
    weight = torch.randn(4, 3, 3, 3, generator=generator()) * torch.tensor([1e-3, 1.0, 1e3, 0.0]).view(4, 1, 1, 1)
    scales = fp8.weight_scales(weight)
    assert scales.shape == (4, 1, 1, 1) and scales[3].item() == 1.0
    rounded = fp8.round_to_e4m3(weight, scales)
    amax = weight.abs().flatten(1).amax(1)
    assert torch.allclose(rounded.abs().flatten(1).amax(1), amax) and torch.equal(rounded[3], weight[3])
    assert (((rounded - weight).abs().flatten(1).amax(1)) <= amax * 2.0**-4 + 1e-30).all()


@pytest.mark.parametrize("conv", [nn.Conv2d(8, 6, 3, padding=1), nn.Conv3d(4, 5, 3, padding=1, bias=False),
                                  nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3)])
def test_a_simulated_layer_is_the_conv_of_the_rounded_values_with_float32_accumulation(conv):
    torch.manual_seed(0)
    shape = (2, conv.in_channels, 9, 9) if isinstance(conv, nn.Conv2d) else (1, conv.in_channels, 5, 6, 7)
    x = torch.randn(shape, generator=generator(1))
    amax = float(x.abs().max())
    simulated = fp8.Fp8SimulatedConv(conv, amax)
    scale_x = amax / fp8.E4M3_MAX
    x_q = fp8.round_to_e4m3(x.double(), scale_x)
    w_q = fp8.round_to_e4m3(conv.weight.detach().double(), fp8.weight_scales(conv.weight).double())
    function = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv3d
    bias = None if conv.bias is None else conv.bias.detach().double()
    expected = function(x_q, w_q, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    with torch.no_grad():
        got = simulated(x)
        exact = conv(x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)  # float32's rounding only
    relative = (got - exact).norm() / exact.norm()
    assert 0 < relative < 2 * 2.0**-4  # two roundings of at most 2^-4 each, mostly cancelling in the sum


def test_calibration_records_each_layers_largest_input_and_a_copy_simulates_fp8():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 8, 8, generator=generator(2))
    layers = fp8.convolutions(net)
    assert layers == ["0", "2"]
    amax = fp8.input_amax(net, layers, lambda: net(x))
    assert amax["0"] == pytest.approx(float(x.abs().max()))
    with torch.no_grad():
        assert amax["2"] == pytest.approx(float(torch.relu(net[0](x)).abs().max()))
    simulated = fp8.with_fp8(net, {"2": amax["2"]})
    assert isinstance(simulated[2], fp8.Fp8SimulatedConv) and isinstance(net[2], nn.Conv2d)  # net untouched
    assert not net[0]._forward_pre_hooks  # the calibration hooks are gone
    errors = fp8.layer_errors(net, amax, lambda: net(x))
    assert set(errors) == {"0", "2"} and all(0 < error < 0.125 for error in errors.values())
    with torch.no_grad():
        frame_error = ((simulated(x) - net(x)).norm() / net(x).norm()).item()
    assert frame_error == pytest.approx(errors["2"], rel=1e-4)  # only that layer simulates FP8


def test_values_beyond_the_calibrated_range_are_clipped_and_exact_values_cost_nothing():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    simulated = fp8.Fp8SimulatedConv(conv, input_amax=448.0)  # scale 1: e4m3 values pass unchanged
    x = torch.tensor([[[[1.0, 2.0, -3.5, 448.0, 1000.0]]]])
    assert simulated(x).flatten().tolist() == [1.0, 2.0, -3.5, 448.0, 448.0]
    with pytest.raises(ValueError, match="input_amax must be > 0"):
        fp8.Fp8SimulatedConv(conv, 0.0)
    with pytest.raises(TypeError, match="nn.Conv2d or nn.Conv3d"):
        fp8.Fp8SimulatedConv(nn.Linear(2, 2), 1.0)


def test_block_scales_follow_each_pixels_own_range():
    # one pixel 10^7 times larger than the others: past e4m3's range (448 down to 2^-9), so a per-tensor
    # scale rounds the others to a few subnormal steps or zero
    x = torch.randn(1, 8, 4, 4, generator=generator(3)) * 1e-2
    x[0, :, 0, 0] *= 1e7
    per_pixel = fp8.round_blocks_to_e4m3(x, 8)
    normal = x.abs() >= (x.abs().flatten(2).amax(1, keepdim=True).view(1, 1, 4, 4) / fp8.E4M3_MAX) * 2.0**-6
    assert (((per_pixel - x).abs() / x.abs())[normal]).max() <= 2.0**-4
    per_tensor = fp8.round_to_e4m3(x, float(x.abs().max()) / fp8.E4M3_MAX)
    small = (slice(None), slice(None), slice(1, None), slice(1, None))  # the pixels away from the outlier

    def error(rounded):
        return ((rounded[small] - x[small]).norm() / x[small].norm()).item()
    assert error(per_tensor) > 0.1 > 2.0**-4 > error(per_pixel)  # the small pixels fall among e4m3's subnormals
    assert torch.equal(fp8.round_blocks_to_e4m3(x, 3)[:, :6], fp8.round_blocks_to_e4m3(x[:, :6], 3))  # 8 = 3+3+2
    with pytest.raises(ValueError, match="channel_block must be >= 1"):
        fp8.round_blocks_to_e4m3(x, 0)


def test_a_layer_takes_one_scaling_and_the_copy_caps_the_block_at_its_channels():
    conv = nn.Conv2d(4, 2, 3, padding=1)
    x = torch.randn(1, 4, 6, 6, generator=generator(4))
    with torch.no_grad():
        simulated = fp8.Fp8SimulatedConv(conv, channel_block=4)
        expected = F.conv2d(fp8.round_blocks_to_e4m3(x, 4), simulated.weight, conv.bias, padding=1)
        assert torch.equal(simulated(x), expected)
    with pytest.raises(ValueError, match="not both and not neither"):
        fp8.Fp8SimulatedConv(conv)
    with pytest.raises(ValueError, match="not both and not neither"):
        fp8.Fp8SimulatedConv(conv, 1.0, channel_block=4)
    copy = fp8.with_fp8(nn.Sequential(conv), {"0": 1.0}, channel_block=1024)
    assert copy[0].channel_block == 4 and copy[0].input_scale is None
