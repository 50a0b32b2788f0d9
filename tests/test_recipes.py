"""Recipes on the CPU: exactness of the exact steps, skipping with reasons, the compile fallback,
and the dtype boundary. GPU speed and parity of the recipes are tests/gpu's job."""

import copy

import pytest
import torch

from lpperf import bench, models, pipeline, recipes, sample

FRAMES = 2


@pytest.fixture(scope="module")
def tiny_nets():
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    nets = {name: models.build(name, **models.TINY.get(name, {})) for name in models.NAMES}
    torch.random.set_rng_state(generator_state)
    return nets


@pytest.fixture(scope="module")
def driving():
    return bench.driving_batch(FRAMES, offset=3)


def _frames(engine, driving):
    animator = engine.animator(sample.portrait(), reference=bench.driving_batch(1))
    return animator.step(driving)


@pytest.fixture(scope="module")
def eager_frames(tiny_nets, driving):
    return _frames(recipes.build("fp32-eager", tiny_nets, "cpu"), driving)


@pytest.mark.parametrize("step", [recipes.fold_spectral_norm, recipes.warp_source_cache, recipes.pad_warp_channels])
def test_exact_steps_do_not_change_the_frames(tiny_nets, driving, eager_frames, step):
    engine = recipes.build([step], tiny_nets, "cpu")
    assert engine.applied == [step.__name__], engine.skipped
    torch.testing.assert_close(_frames(engine, driving), eager_frames, rtol=1e-4, atol=1e-5)


def test_padded_warp_has_channels_in_multiples_of_eight(tiny_nets):
    engine = recipes.build([recipes.pad_warp_channels], tiny_nets, "cpu")
    dense = engine.nets["warping_module"].dense_motion_network
    convs = [dense.hourglass.encoder.down_blocks[0].conv, dense.hourglass.decoder.conv, dense.mask]
    assert all(c.in_channels % 8 == 0 and c.out_channels % 8 == 0 for c in convs)
    with pytest.raises(recipes.StepNotApplicable, match="already padded"):
        recipes.pad_warp_channels(engine)


def test_build_leaves_the_given_networks_untouched(tiny_nets):
    before = {name: copy.deepcopy(net.state_dict()) for name, net in tiny_nets.items()}
    recipes.build("fast", tiny_nets, "cpu")
    for name, net in tiny_nets.items():
        after = net.state_dict()
        assert after.keys() == before[name].keys(), name
        assert all(torch.equal(after[key], before[name][key]) for key in after), name


def test_cuda_steps_are_skipped_with_the_reason_on_cpu(tiny_nets):
    engine = recipes.build("fast", tiny_nets, "cpu")
    for name in ("cudnn_benchmark", "half", "channels_last", "compile_step"):
        assert "needs a CUDA device" in engine.skipped[name]
    assert "networks already run in float32" in engine.skipped["residual_float32"]
    assert {"inference_mode", "fold_spectral_norm", "warp_source_cache", "pad_warp_channels"} <= set(engine.applied)


def test_unknown_recipe_and_compile_mode_are_refused(tiny_nets):
    with pytest.raises(ValueError, match="unknown recipe 'turbo'; known recipes: fp32-eager"):
        recipes.build("turbo", tiny_nets, "cpu")
    with pytest.raises(ValueError, match="unknown torch.compile mode"):
        recipes.compile_step("fastest")


def test_a_failing_compile_falls_back_to_eager_and_says_why(tiny_nets, driving, eager_frames, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("inductor exploded")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    engine = recipes.build([], tiny_nets, "cpu")
    engine.compile_step_mode = "default"  # as compile_step would set it on a GPU
    engine.applied.append("compile_step")
    frames = _frames(engine, driving)
    torch.testing.assert_close(frames, eager_frames, rtol=1e-4, atol=1e-5)
    assert "compile_step" not in engine.applied
    assert "inductor exploded" in engine.skipped["compile_step"]
    assert engine.compile_seconds is not None


def test_boundary_runs_a_network_in_its_dtype_and_returns_float32():
    torch.manual_seed(0)
    decoder = models.build("spade_generator", **models.TINY["spade_generator"]).to(torch.bfloat16)
    feature = torch.rand(1, decoder.in_channels, 8, 8)
    expected = decoder(feature.to(torch.bfloat16)).float()
    out = recipes.Boundary(decoder, torch.bfloat16, channels_last=True)(feature)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_float32_residual_stream_is_closer_to_float32_than_a_bfloat16_one():
    torch.manual_seed(0)
    decoder = models.build("spade_generator", **models.TINY["spade_generator"])
    feature = torch.rand(1, decoder.in_channels, 8, 8)
    low = copy.deepcopy(decoder).to(torch.bfloat16)
    reference = decoder(feature)
    plain = low(feature.to(torch.bfloat16)).float()
    low.residual_dtype = torch.float32
    placed = low(feature.to(torch.bfloat16)).float()
    assert torch.isfinite(placed).all()
    assert (placed - reference).norm() < (plain - reference).norm()


def test_optimized_animator_streams_through_its_own_step(tiny_nets, monkeypatch):
    engine = recipes.build("fast", tiny_nets, "cpu")
    animator = engine.animator(sample.portrait())
    calls = []
    original = recipes.OptimizedAnimator.step
    monkeypatch.setattr(recipes.OptimizedAnimator, "step", lambda self, d, **kw: calls.append(d.shape[0])
                        or original(self, d, **kw))
    frames = [f for f in bench.driving_batch(3).split(1)]
    outputs = list(animator.animate(frames, batch_size=2))
    assert calls == [2, 1] and len(outputs) == 3
    assert isinstance(animator, pipeline.Animator)
