"""W's volume sampling off the card: the official form it replaces (`warping.sample_volumes`: the volume
repeated per grid, then F.grid_sample), where the Triton kernel applies and where W keeps sampling as
before, and the step that installs it (the GPU suite runs the kernel itself on the card)."""

import pytest
import torch
import torch.nn.functional as F

from lpperf.models import weights
from lpperf.models.warping import sample_volumes
from lpperf.optimize import recipes, sampling, steps


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
