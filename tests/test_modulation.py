"""The fused SPADE modulation (lpperf.optimize.modulation): its CPU path, its place in G, its kernel
under Triton's CPU interpreter. The kernel on the card: tests/gpu/test_gpu_suite.py."""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lpperf.models import weights
from lpperf.models.spade import SPADE
from lpperf.optimize import kernels, modulation, recipes, rewrites, steps
from tests.helpers import interpreter_runs_runtime_loops, relative_error, tiny_decoder

EXACT = 1e-12


def _spade(norm_channels: int = 12, label_channels: int = 5, hidden: int = 8) -> SPADE:
    spade = SPADE(norm_channels, label_channels, hidden).double()
    with torch.no_grad():
        spade.mlp_gamma.weight.mul_(0.3)
    return spade


@pytest.mark.parametrize("upsample, slope", [(1, 0.2), (2, None), (2, 0.2)])
def test_cpu_path_is_the_spade_modulation(generator, upsample, slope):
    plain = rewrites.SpadeModulation(_spade())
    fused = modulation.TritonSpadeModulation(plain)
    hidden = torch.relu(torch.randn(2, 8, 6, 8, generator=generator, dtype=torch.float64))
    x = torch.randn(2, 12, 6 // upsample, 8 // upsample, generator=generator, dtype=torch.float64) * 3 + 1
    expected = plain(rewrites.NormalizedStream(x, upsample), hidden, slope)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = fused(rewrites.NormalizedStream(x.contiguous(memory_format=layout), upsample),
                    hidden.contiguous(memory_format=layout), slope)
        assert relative_error(out, expected) <= EXACT
    gamma, beta = fused.conv_weights()
    assert torch.equal(torch.cat([gamma, beta]), plain.gamma_beta.weight)


def test_reference_is_spade_forward(generator):
    """spade_modulate_reference, the kernel's specification, computes SPADE.forward given its hidden map and
    the instance-norm statistics of its input."""
    spade = _spade()
    seg = torch.randn(1, 5, 6, 6, generator=generator, dtype=torch.float64)
    x = torch.randn(1, 12, 6, 6, generator=generator, dtype=torch.float64) * 2 - 1
    mean, rstd = rewrites.NormalizedStream(x).statistics()
    hidden = spade.mlp_shared(seg)
    weight, bias = spade.mlp_gamma, spade.mlp_beta
    out = modulation.spade_modulate_reference(hidden, weight.weight, bias.weight, weight.bias, bias.bias, x, mean,
                                              rstd, 1, None)
    assert relative_error(out, spade(x, seg)) <= EXACT


def test_fused_decoder_computes_the_decoder(generator):
    decoder = tiny_decoder()
    feature = torch.rand(2, decoder.in_channels, 8, 8, generator=generator, dtype=torch.float64)
    batched = rewrites.batch_spade_modulations(copy.deepcopy(decoder))
    expected = decoder(feature)
    rewrites.normalize_before_upsample(batched)
    names = modulation.fused_spade_modulations(batched)
    assert len(names) == 18 and all(".spades." in name for name in names)
    assert modulation.fused_spade_modulations(batched) == []
    assert relative_error(batched(feature), expected) <= 1e-10


def test_weights_stay_in_kernel_order_through_the_recipe_casts():
    fused = modulation.TritonSpadeModulation(rewrites.SpadeModulation(SPADE(32, 4, 16)))
    fused.to(memory_format=torch.channels_last).half()
    assert fused.w_gamma_taps.shape == fused.w_beta_taps.shape == (9, 16, 32)
    assert fused.w_gamma_taps.is_contiguous() and fused.w_beta_taps.is_contiguous()
    assert {p.dtype for p in fused.parameters()} == {torch.float16}


def test_refuses_a_convolution_it_does_not_compute():
    spade = SPADE(8, 4, 8)
    plain = rewrites.SpadeModulation(spade)
    plain.gamma_beta = nn.Conv2d(8, 16, 3, padding=1, stride=2)
    with pytest.raises(ValueError, match="stride-1"):
        modulation.TritonSpadeModulation(plain)


def test_the_kernel_applies_on_the_card_only():
    weight = torch.empty(9, 128, 64, dtype=torch.float16)
    hidden = torch.empty(1, 128, 16, 16, dtype=torch.float16)
    assert not modulation.kernel_applies(hidden, weight, torch.empty(1, 64, 8, 8), 2)


@pytest.mark.parametrize("hidden, channels, x, upsample, fits", [
    ((1, 128, 256, 256), 256, (1, 256, 128, 128), 2, True),  # up_1's norm_0: the stream before its upsampling
    ((2, 128, 64, 64), 512, (2, 512, 64, 64), 1, True),
    ((1, 128, 256, 256), 256, (1, 256, 256, 256), 2, False),  # x not at 1/upsample of the hidden map
    ((1, 128, 255, 256), 256, (1, 256, 127, 128), 2, False),  # H not a multiple of upsample
    ((1, 128, 64, 64), 512, (1, 256, 64, 64), 1, False),  # channels differ
    ((16, 128, 256, 256), 256, (16, 256, 128, 128), 2, True),  # G's 256x256 stage at batch 16
    ((160, 128, 256, 256), 512, (160, 512, 128, 128), 2, False),  # past 32-bit offsets
])
def test_the_kernel_covers_matching_shapes_within_32_bit_offsets(hidden, channels, x, upsample, fits):
    stride = torch.empty(x, device="meta").stride()
    assert modulation.shapes_fit(torch.Size(hidden), channels, torch.Size(x), stride, upsample) is fits


def test_step_needs_a_card():
    engine = recipes.build([steps.batch_spade_modulations, steps.triton_spade_modulations],
                           weights.tiny_networks(0), "cpu")
    assert "needs a CUDA device" in engine.skipped["triton_spade_modulations"]


def test_flop_count_is_the_gamma_beta_convolution_s():
    hidden = torch.empty(2, 16, 10, 12, device="meta", dtype=torch.float16)
    taps = torch.empty(9, 16, 24, device="meta", dtype=torch.float16)
    bias = torch.empty(24, device="meta", dtype=torch.float16)
    x = torch.empty(2, 24, 5, 6, device="meta")
    stats = torch.empty(2, 24, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        out = torch.ops.lpperf.spade_modulate(hidden, taps, taps, bias, bias, x, stats, stats, 2, 0.2, 3)
    assert out.shape == (2, 24, 10, 12) and out.dtype == torch.float16
    assert counter.get_total_flops() == 2 * 2 * 10 * 12 * 16 * 48 * 9


INTERPRETED = textwrap.dedent("""
    import torch
    from lpperf.optimize import modulation, rewrites
    generator = torch.Generator().manual_seed(0)
    cases = [(1, 32, 16, 8, 2, torch.float32, 0.2), (2, 40, 24, 6, 1, torch.float16, None),
             (1, 64, 64, 4, 2, torch.float32, None), (1, 64, 128, 4, 1, torch.float32, 0.2)]
    # the last two divide every tile's channel blocks: the unmasked (EVEN_K / EVEN_N) paths
    for batch, cin, channels, size, upsample, x_dtype, slope in cases:
        hidden = torch.relu(torch.randn(batch, cin, size, size, generator=generator)).half()
        weight = (torch.randn(2 * channels, cin, 3, 3, generator=generator) * 0.05).half()
        bias = (torch.randn(2 * channels, generator=generator) * 0.1).half()
        x = (torch.randn(batch, channels, size // upsample, size // upsample, generator=generator) * 3 + 1).to(x_dtype)
        mean, rstd = rewrites.NormalizedStream(x).statistics()
        taps = weight.permute(2, 3, 1, 0).reshape(9, cin, 2 * channels)
        expected = modulation.spade_modulate_reference(
            hidden.double(), weight[:channels].double(), weight[channels:].double(), bias[:channels].double(),
            bias[channels:].double(), x.double(), mean.double(), rstd.double(), upsample, slope)
        for tile in (None,) + modulation.TILES[:4]:
            out = modulation.spade_modulate_triton(
                hidden, taps[:, :, :channels].contiguous(), taps[:, :, channels:].contiguous(), bias[:channels],
                bias[channels:], x.contiguous(memory_format=torch.channels_last), mean, rstd, upsample, slope, 3, tile)
            assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float16
            error = ((out.double() - expected).abs().max() / expected.abs().max()).item()
            assert error <= 2e-3, (batch, cin, channels, upsample, tile, error)  # the fp16 output's rounding
    print("ok")
""")


@pytest.mark.skipif(not kernels.triton_available() or not interpreter_runs_runtime_loops(),
                    reason="needs Triton >= 3.9 for its CPU interpreter (CUDA builds of torch ship Triton)")
def test_kernel_under_the_triton_interpreter():
    """The kernel's indexing (taps, borders, partial tiles, batches, the upsampled read of x, strides) on
    the CPU through TRITON_INTERPRET=1, set before the kernel is defined: a fresh process."""
    run = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
