"""W's volume sampling off the card: the official form it replaces (`warping.sample_volumes`: the volume
repeated per grid, then F.grid_sample), where the Triton kernel applies and where W keeps sampling as
before, the step that installs it, and the kernel under Triton's CPU interpreter (the GPU suite runs it on
the card)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from lpperf.models import weights
from lpperf.models.warping import sample_volumes
from lpperf.optimize import kernels, recipes, sampling, steps
from tests.helpers import interpreter_runs_runtime_loops


def test_sample_volumes_samples_each_volume_at_each_of_its_grids(generator):
    volume = torch.randn(2, 3, 4, 6, 5, generator=generator, dtype=torch.float64)
    grids = torch.rand(2, 4, 3, 5, 6, 3, generator=generator, dtype=torch.float64) * 2.2 - 1.1
    out = sample_volumes(volume, grids, torch.float64, torch.float32)
    assert out.shape == (2, 4, 3, 3, 5, 6) and out.dtype == torch.float32
    for b in range(2):
        for k in range(4):
            expected = F.grid_sample(volume[b:b + 1], grids[b:b + 1, k], align_corners=False)[0]
            torch.testing.assert_close(out[b, k], expected.float())


def test_off_the_card_the_sampler_is_the_official_form(generator):
    volume = torch.randn(1, 4, 4, 8, 8, generator=generator)
    grids = torch.rand(1, 3, 4, 8, 8, 3, generator=generator) * 2 - 1
    assert not sampling.kernel_applies(volume, grids, torch.float32)
    assert torch.equal(sampling.sample_volumes_on_kernel(volume, grids, torch.float32, torch.float16),
                       sample_volumes(volume, grids, torch.float32, torch.float16))


@pytest.mark.parametrize("change, applies", [(lambda v, g, d: (v, g, d), True),
                                             (lambda v, g, d: (v, g, torch.float16), False),
                                             (lambda v, g, d: (v, g.half(), d), False),
                                             (lambda v, g, d: (v.double(), g, d), False),
                                             (lambda v, g, d: (v[:1], g, d), False)])
def test_the_kernel_applies_to_float32_sampling_only(cuda_device, change, applies):
    volume = torch.zeros(2, 4, 4, 8, 8, device=cuda_device, dtype=torch.float16)
    grids = torch.zeros(2, 3, 4, 8, 8, 3, device=cuda_device)
    assert sampling.kernel_applies(*change(volume, grids, torch.float32)) is applies


def test_the_step_needs_the_card():
    engine = recipes.build([steps.triton_volume_sampling], weights.tiny_networks(seed=0), "cpu")
    assert "needs a CUDA device" in engine.skipped["triton_volume_sampling"]
    assert engine.nets["warping_module"].dense_motion_network.sampler is sample_volumes


def test_the_step_installs_the_kernel_once(monkeypatch):
    monkeypatch.setattr(steps, "_require_cuda", lambda engine: None)
    monkeypatch.setattr(steps.kernels, "triton_available", lambda: True)
    engine = recipes.build([steps.triton_volume_sampling, steps.triton_volume_sampling],
                           weights.tiny_networks(seed=0), "cpu")
    assert engine.nets["warping_module"].dense_motion_network.sampler is sampling.sample_volumes_on_kernel
    assert "already samples on the Triton kernel" in engine.skipped["triton_volume_sampling"]


INTERPRETED = textwrap.dedent("""
    import torch
    from lpperf.models import warping
    from lpperf.optimize import sampling
    generator = torch.Generator().manual_seed(0)
    for batch, candidates, channels, size, dtype, layout in [
            (1, 3, 4, (4, 6, 5), torch.float16, torch.contiguous_format),
            (2, 1, 5, (3, 5, 7), torch.float32, torch.channels_last_3d)]:
        volume = torch.randn(batch, channels, *size, generator=generator).to(dtype)
        grids = torch.rand(batch, candidates, 3, 4, 5, 3, generator=generator) * 2.4 - 1.2  # some outside
        grids[:, :, 0, 0, :4] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1.2, 0.5, 0.0], [5e6, 0.0, 0.0]])
        expected = warping.sample_volumes(volume.double(), grids.double(), torch.float64, torch.float64)
        out = sampling.sample_volumes_kernel(volume.contiguous(memory_format=layout), grids, torch.float32)
        assert out.shape == expected.shape and out.dtype == torch.float32
        error = (out.double() - expected).abs().max().item()
        assert error <= 1e-5 * max(1.0, expected.abs().max().item()), (batch, candidates, channels, error)
    print("ok")
""")


@pytest.mark.skipif(not kernels.triton_available() or not interpreter_runs_runtime_loops(),
                    reason="needs Triton >= 3.9 for its CPU interpreter (CUDA builds of torch ship Triton)")
def test_kernel_under_the_triton_interpreter():
    """The sampling kernel's corners, weights, borders and strides against float64 grid_sample, on the CPU
    through TRITON_INTERPRET=1 (set before the kernel is defined: a fresh process)."""
    run = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
