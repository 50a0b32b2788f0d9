"""The Triton convolution kernel off the card: its CPU path against the layer it replaces (float64,
exact), what it refuses, what the step replaces, its FLOP count, and the kernel itself under
Triton's CPU interpreter where Triton is installed (the GPU suite runs it on the card)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lpperf import models
from lpperf.models import weights
from lpperf.optimize import kernels, recipes, rewrites, steps
from tests.helpers import interpreter_runs_runtime_loops

EXACT = 1e-12


@pytest.mark.parametrize("kernel, bias", [((3, 3), True), ((1, 1), False), ((3, 5), True), ((5, 3), False)])
def test_cpu_path_is_the_convolution(generator, kernel, bias):
    conv = nn.Conv2d(16, 32, kernel, padding=(kernel[0] // 2, kernel[1] // 2), bias=bias).double()
    layer = kernels.TritonConv2d(conv)
    x = torch.randn(2, 16, 9, 7, generator=generator, dtype=torch.float64)
    expected = conv(x)
    for inputs in (x, x.contiguous(memory_format=torch.channels_last)):
        out = layer(inputs)
        assert out.shape == expected.shape
        assert ((out - expected).norm() / expected.norm()).item() <= EXACT
    assert torch.equal(layer.conv_weight(), conv.weight)


def test_weights_stay_in_kernel_order_through_the_recipe_casts():
    """channels_last reorders 4-D parameters only; the (kh*kw, Cin, Cout) weights are 3-D and stay
    contiguous, so the kernel reads them in place; .half() casts them with the rest."""
    layer = kernels.TritonConv2d(nn.Conv2d(16, 32, 3, padding=1))
    layer.to(memory_format=torch.channels_last).half()
    assert layer.weight_taps.shape == (9, 16, 32) and layer.weight_taps.is_contiguous()
    assert layer.weight_taps.dtype == layer.bias.dtype == torch.float16


@pytest.mark.parametrize("conv, message", [
    (nn.Conv2d(16, 16, 3, padding=1, stride=2), "stride-1"),
    (nn.Conv2d(16, 16, 2, padding=1), "odd kernels"),
    (nn.Conv2d(16, 16, 3, padding=0), "'same'"),
    (nn.Conv2d(16, 16, 3, padding=1, groups=2), "groups 2"),
    (nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"), "reflect"),
])
def test_refuses_what_it_does_not_compute(conv, message):
    with pytest.raises(ValueError, match=message):
        kernels.TritonConv2d(conv)
    assert not kernels.eligible(conv)


def test_refuses_other_layers():
    with pytest.raises(TypeError, match="expected an nn.Conv2d, got Conv3d"):
        kernels.TritonConv2d(nn.Conv3d(16, 16, 3, padding=1))


def test_refuses_tensors_past_32_bit_offsets():
    """The kernel indexes with 32-bit offsets: a tensor of 2**31 elements or more gets a clear error from
    the kernel's entry point (before Triton is touched), and the bound admits G's last stage at batch 16."""
    assert kernels.fits_int32_offsets(torch.Size((16, 256, 256, 256)), 64)  # G's 256x256 stage at batch 16
    huge = torch.empty(128, 256, 256, 256, device="meta")
    assert not kernels.fits_int32_offsets(huge.shape, 64)
    with pytest.raises(ValueError, match="32-bit offsets.*split the batch"):
        kernels.conv2d_same_triton(huge, torch.empty(9, 256, 64, device="meta"), None, 3)


def test_triton_convs_replaces_the_eligible_convolutions_only(generator):
    net = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(8, 3, (1, 3), padding=(0, 1)),
                        nn.Sequential(nn.Conv2d(3, 16, 2, padding=1)), nn.Conv2d(16, 16, 3, padding=1, stride=2)).double()
    x = torch.randn(1, 16, 8, 8, generator=generator, dtype=torch.float64)
    expected = net[1](net[0](x))
    assert kernels.triton_convs(net) == ["0", "1"]
    assert all(isinstance(net[i], kernels.TritonConv2d) for i in (0, 1)) and type(net[2][0]) is nn.Conv2d
    assert ((net[1](net[0](x)) - expected).norm() / expected.norm()).item() <= EXACT
    assert kernels.triton_convs(net) == []


def test_g_s_last_stage_on_the_kernel_computes_the_same(generator):
    """What triton_decoder_convs replaces on the card: the convolutions of the residual block of the
    batched decoder's last (4x) stage, here on the TINY G in float64 (the CPU path)."""
    decoder = rewrites.batch_spade_modulations(models.build(models.DECODER_NET, **models.TINY[models.DECODER_NET]))
    rewrites.phase_split_upsampled_convs(decoder)
    decoder = decoder.double().eval()
    feature = torch.randn(1, decoder.in_channels, 8, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        expected = decoder(feature)
        names = kernels.triton_convs(decoder.stages[-1].blocks, names=steps.RESIDUAL_CONVS)
        out = decoder(feature)
    assert {name.split(".")[-1] for name in names} >= {"conv_0", "conv_1"}
    assert not any(isinstance(module, kernels.TritonConv2d) for module in decoder.stages[-1].hiddens.modules())
    assert not any(isinstance(module, kernels.TritonConv2d) for module in decoder.stages[-1].blocks[0].spades.modules())
    assert not any(isinstance(module, kernels.TritonConv2d) for module in decoder.stages[0].modules())
    assert ((out - expected).norm() / expected.norm()).item() <= EXACT


def test_step_needs_a_card():
    engine = recipes.build([steps.triton_decoder_convs], weights.tiny_networks(0), "cpu")
    assert "needs a CUDA device" in engine.skipped["triton_decoder_convs"]
    assert not any(isinstance(module, kernels.TritonConv2d) for net in engine.nets.values() for module in net.modules())


def test_flop_count_is_the_convolution_s():
    """torch's flop counter sees the custom op (through its meta kernel) as the convolution it computes."""
    x = torch.empty(2, 32, 10, 12, device="meta")
    weight_taps = torch.empty(15, 32, 48, device="meta")  # a 3 x 5 kernel
    counter = FlopCounterMode(display=False)
    with counter:
        out = torch.ops.lpperf.conv2d_same(x, weight_taps, None, 5)
    assert out.shape == (2, 48, 10, 12)
    assert counter.get_total_flops() == 2 * 2 * 10 * 12 * 32 * 48 * 15


INTERPRETED = textwrap.dedent("""
    import torch
    from lpperf.optimize import kernels
    generator = torch.Generator().manual_seed(0)
    for batch, cin, cout, height, width, kernel, bias in [(2, 48, 80, 9, 7, (3, 3), True), (1, 16, 16, 5, 6, (1, 1), False),
                                                          (1, 48, 32, 6, 5, (3, 5), True), (1, 64, 64, 5, 6, (3, 3), True)]:
        # the last case divides the 32/64-channel and 64-output tiles: the unmasked (EVEN_K/EVEN_N) paths
        conv = torch.nn.Conv2d(cin, cout, kernel, padding=(kernel[0] // 2, kernel[1] // 2), bias=bias)
        layer = kernels.TritonConv2d(conv)
        x = torch.randn(batch, cin, height, width, generator=generator)
        expected = conv(x)
        for tile in (None,) + kernels.TILES:  # the autotuned path, then every tile it may choose
            out = kernels.conv2d_same_triton(x, layer.weight_taps, layer.bias, kernel[1], tile)
            assert out.is_contiguous(memory_format=torch.channels_last)
            error = ((out - expected).norm() / expected.norm()).item()
            assert error <= 1e-5, (batch, cin, cout, kernel, tile, error)

    # The custom op as torch.compile sees it in a recipe: traced into one graph (fullgraph), called as an
    # extern kernel, with compiled work after it.
    def step(x):
        return torch.relu(torch.ops.lpperf.conv2d_same(x, layer.weight_taps, layer.bias, kernel[1])) + 1
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(x)
    expected = torch.relu(conv(x)) + 1
    assert ((compiled - expected).norm() / expected.norm()).item() <= 1e-5
    print("ok")
""")


@pytest.mark.skipif(not kernels.triton_available() or not interpreter_runs_runtime_loops(),
                    reason="needs Triton >= 3.9 for its CPU interpreter (CUDA builds of torch ship Triton)")
def test_kernel_under_the_triton_interpreter():
    """The kernel's indexing (taps, borders, partial tiles, batches) for every tile, and the custom op
    inside torch.compile, on the CPU through TRITON_INTERPRET=1, which must be set before the kernel is
    defined: a fresh process."""
    run = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
