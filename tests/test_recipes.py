"""Recipes on the CPU: exactness of the exact steps, skipping with reasons, the compile fallback,
and the dtype boundary. GPU speed and parity of the recipes are tests/gpu's job."""

import copy
import warnings

import pytest
import torch

from lpperf.optimize import engine as engine_module
from lpperf import models
from lpperf.animation import pipeline
from lpperf.measure import frame
from lpperf.models import sample, weights
from lpperf.optimize import recipes, rewrites, steps as R

FRAMES = 2


@pytest.fixture(scope="module")
def tiny_nets():
    return weights.tiny_networks(seed=0)


@pytest.fixture(scope="module")
def driving():
    return frame.driving_batch(FRAMES, offset=3)


def _frames(engine, driving):
    animator = engine.animator(sample.portrait(), reference=frame.driving_batch(1))
    return animator.step(driving)


@pytest.fixture(scope="module")
def eager_frames(tiny_nets, driving):
    return _frames(recipes.build("fp32-eager", tiny_nets, "cpu"), driving)


def _assert_same_up_to_float32_reordering(frames, expected):
    """The exact rewrites reorder float32 sums. The tiny default-initialised networks amplify such
    rounding about 100x through G (their float32 frames differ from float64 ones by ~3e-5 relative,
    up to ~5e-4 in a pixel), so this is float32-rounding-level agreement; a wrong tap, phase, bias
    or channel changes the frames by orders of magnitude more."""
    relative = torch.linalg.vector_norm(frames - expected) / torch.linalg.vector_norm(expected)
    assert relative <= 1e-4, relative
    torch.testing.assert_close(frames, expected, rtol=0, atol=2e-3)


SAME_WORK = [(R.fold_spectral_norm,), (R.warp_source_cache,), (R.pad_warp_channels,)]
REORDERED_SUMS = [(R.fold_batch_norm,), (R.warp_depth_split,), (R.warp_depth_split_all,), (R.warp_mask_fft,),
                  (R.occlusion_as_taps,),
                  (R.batch_spade_modulations,), (R.batch_spade_modulations, R.phase_split_upsampled_convs),
                  (R.batch_spade_modulations, R.spade_norm_before_upsample, R.phase_split_upsampled_convs),
                  (R.pad_warp_channels, R.warp_depth_split, R.pad_warp_mask_input),
                  (R.pad_warp_channels, R.fold_batch_norm, R.warp_depth_split_all, R.occlusion_as_taps),
                  (R.pad_warp_channels, R.fold_batch_norm, R.warp_mask_fft, R.occlusion_as_taps),
                  (R.phase_split_hourglass,), (R.phase_split_hourglass, R.fold_batch_norm),
                  (R.pad_warp_channels, R.fold_batch_norm, R.phase_split_hourglass, R.warp_depth_split,
                   R.pad_warp_mask_input, R.occlusion_as_taps)]


@pytest.mark.parametrize("steps", SAME_WORK + REORDERED_SUMS, ids=lambda steps: "+".join(s.name for s in steps))
def test_exact_steps_do_not_change_the_frames(tiny_nets, driving, eager_frames, steps):
    engine = recipes.build(list(steps), tiny_nets, "cpu")
    assert engine.applied == list(steps), engine.skipped
    if steps in SAME_WORK:
        torch.testing.assert_close(_frames(engine, driving), eager_frames, rtol=1e-4, atol=1e-5)
    else:
        _assert_same_up_to_float32_reordering(_frames(engine, driving), eager_frames)


def test_fastest_is_fast_plus_exact_rewrites_run_in_float32_and_compile_last():
    """fastest adds to fast the exact rewrites (each checked against eager above) and W's sampling kernel
    (the same arithmetic; the GPU suite checks it), all before the casts, so they rewrite float32 weights;
    fastest-batched changes W's mask form, fastest-triton and fastest-fused-spade add one kernel each."""
    fast, fastest = recipes.lookup("fast").steps, recipes.lookup("fastest").steps
    added = [step for step in fastest if step not in fast]
    # W's channels padded to x32 in x8's place: the mask's input is then whole tiles already
    assert [step for step in fastest if step in fast] == [step for step in fast if step is not R.pad_warp_channels]
    assert fastest.index(R.pad_warp_channels_x32) == fast.index(R.pad_warp_channels)
    assert [step.name for step in added] == ["pad_warp_channels_x32", *recipes.EXACT_REWRITES, "triton_volume_sampling"]
    assert all(fastest.index(step) < fastest.index(R.half) for step in added)
    assert fastest[-1].compile_scope is R.CompileScope.STEP and fastest[-1].compile_mode == "reduce-overhead"
    batched = recipes.lookup("fastest-batched").steps
    assert [step for step in batched if step not in fastest] == [R.pad_warp_channels, R.warp_mask_fft]
    assert [step for step in fastest if step not in batched] == [R.pad_warp_channels_x32, R.warp_depth_split]
    triton = recipes.lookup("fastest-triton").steps
    assert [step for step in triton if step not in fastest] == [R.triton_decoder_convs]
    assert triton.index(R.triton_decoder_convs) == triton.index(R.half) - 1
    fused = recipes.lookup("fastest-fused-spade").steps
    assert [step for step in fused if step not in fastest] == [R.triton_spade_modulations]
    assert fused.index(R.triton_spade_modulations) == fused.index(R.half) - 1


def test_every_step_is_registered_once_with_a_label_and_every_recipe_uses_registered_steps():
    assert all(R.STEPS[name] is step and step.label.startswith("+ ") for name, step in R.STEPS.items())
    for recipe in recipes.RECIPES.values():
        assert all(R.lookup(step.name) is step for step in recipe.steps), recipe.name

    def twice(engine):
        """A step registered under a name that is taken."""

    R.register("+ once")(twice)
    try:
        with pytest.raises(ValueError, match="a step named 'twice' is already registered"):
            R.register("+ twice")(twice)
    finally:
        R.STEPS.pop("twice")


def test_fastest_on_cpu_skips_the_cuda_steps_and_keeps_the_frames(tiny_nets, driving):
    engine = recipes.build("fastest", tiny_nets, "cpu")
    for name in ("cudnn_benchmark", "half", "channels_last", "compile_step[reduce-overhead]"):
        assert "needs a CUDA device" in engine.skipped[name]
    assert "networks already run in float32" in engine.skipped["residual_float32"]
    assert "needs a CUDA device" in engine.skipped["triton_volume_sampling"]
    # the tiny W's in and out channels do not pad to x32 together (the official ones do: 110 -> 128, 142 -> 160)
    assert "cannot be padded to multiples of 32 together" in engine.skipped["pad_warp_channels_x32"]
    assert engine.report()["applied"] == ["inference_mode", "fold_spectral_norm", "warp_source_cache",
                                          "fold_batch_norm", "phase_split_hourglass",
                                          "warp_depth_split", "occlusion_as_taps",
                                          "batch_spade_modulations", "spade_norm_before_upsample",
                                          "phase_split_upsampled_convs"]
    assert engine.precision == "fp32" and not engine.compiled  # what runs on the CPU, not what was asked
    reference = _frames(recipes.build("reference", tiny_nets, "cpu"), driving)
    _assert_same_up_to_float32_reordering(_frames(engine, driving), reference)


def test_half_and_channels_last_reach_the_rewritten_layers(tiny_nets, monkeypatch):
    monkeypatch.setattr(R, "_require_cuda", lambda engine: None)  # lay them out as on a GPU
    engine = recipes.build([R.pad_warp_channels, R.fold_batch_norm, R.warp_depth_split_all, R.occlusion_as_taps,
                            R.batch_spade_modulations, R.phase_split_upsampled_convs, R.half, R.residual_float32,
                            R.channels_last], tiny_nets, "cpu")
    assert R.half in engine.applied and R.channels_last in engine.applied, engine.skipped
    decoder = engine.nets["spade_generator"]
    assert decoder.residual_dtype == torch.float32
    new_layers = [module for net in engine.nets.values() for module in net.modules()
                  if type(module).__module__ == "lpperf.optimize.rewrites"]
    parameters = [p for module in new_layers for p in module.parameters()]
    assert len(new_layers) > 10 and parameters
    assert all(p.dtype == torch.float16 for p in parameters)
    layouts = {4: torch.channels_last, 5: torch.channels_last_3d}
    assert all(p.is_contiguous(memory_format=layouts[p.dim()]) for p in parameters if p.dim() in layouts)


def test_half_leaves_the_fft_mask_spectrum_whole(tiny_nets, monkeypatch):
    """half casts the networks with Module.to(float16), which casts complex buffers to real ones
    (dropping the imaginary part) unless the layer keeps its spectrum out of the cast."""
    monkeypatch.setattr(R, "_require_cuda", lambda engine: None)
    steps = [R.pad_warp_channels, R.fold_batch_norm, R.warp_mask_fft]
    float32 = recipes.build(steps, tiny_nets, "cpu").nets["warping_module"].dense_motion_network.mask
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Casting complex values to real discards the imaginary part"
        engine = recipes.build(steps + [R.half, R.channels_last], tiny_nets, "cpu")
    assert engine.applied == steps + [R.half, R.channels_last], engine.skipped
    mask = engine.nets["warping_module"].dense_motion_network.mask
    assert isinstance(mask, rewrites.FFTConv3d) and mask.bias.dtype == torch.float16
    assert mask.spectrum.dtype == torch.complex64 and torch.equal(mask.spectrum, float32.spectrum)


def test_official_reduce_overhead_compiles_each_network_in_half(tiny_nets, monkeypatch):
    monkeypatch.setattr(R, "_require_cuda", lambda engine: None)
    engine = recipes.build("official-reduce-overhead", tiny_nets, "cpu")  # configures; nothing is compiled yet
    assert engine.applied == [R.half, R.compile_nets("reduce-overhead")] and engine.compiled
    assert engine.compile_nets_mode == "reduce-overhead" and engine.weight_dtype == torch.float16


@pytest.mark.parametrize("steps, skipped, reason", [
    ((R.fold_batch_norm, R.fold_batch_norm), "fold_batch_norm", "no BatchNorm directly after"),
    ((R.warp_depth_split, R.warp_depth_split), "warp_depth_split", "no dense-motion mask Conv3d left"),
    ((R.warp_depth_split_all, R.warp_depth_split), "warp_depth_split", "no dense-motion mask Conv3d left"),
    ((R.warp_mask_fft, R.warp_mask_fft), "warp_mask_fft", "no dense-motion mask Conv3d left"),
    ((R.warp_depth_split, R.warp_mask_fft), "warp_mask_fft", "already split or in the frequency domain"),
    ((R.warp_mask_fft, R.warp_depth_split), "warp_depth_split", "no dense-motion mask Conv3d left"),
    ((R.warp_mask_fft, R.pad_warp_channels), "pad_warp_channels", "must come before those steps"),
    ((R.occlusion_as_taps, R.occlusion_as_taps), "occlusion_as_taps", "already rewritten"),
    ((R.batch_spade_modulations, R.batch_spade_modulations), "batch_spade_modulations", "already batched"),
    ((R.phase_split_upsampled_convs,), "phase_split_upsampled_convs", "batch_spade_modulations, which must run"),
    ((R.batch_spade_modulations, R.phase_split_upsampled_convs, R.phase_split_upsampled_convs),
     "phase_split_upsampled_convs", "already phase-split"),
    ((R.spade_norm_before_upsample,), "spade_norm_before_upsample", "batch_spade_modulations, which must run"),
    ((R.batch_spade_modulations, R.spade_norm_before_upsample, R.spade_norm_before_upsample),
     "spade_norm_before_upsample", "already normalise before upsampling"),
    ((R.phase_split_hourglass, R.phase_split_hourglass), "phase_split_hourglass", "already phase-split"),
    ((R.pad_warp_mask_input,), "pad_warp_mask_input", "warp_depth_split must run first"),
    ((R.warp_mask_fft, R.pad_warp_mask_input), "pad_warp_mask_input", "warp_depth_split must run first"),
    ((R.warp_depth_split, R.pad_warp_mask_input, R.pad_warp_mask_input), "pad_warp_mask_input", "already padded"),
    ((R.fold_batch_norm, R.pad_warp_channels), "pad_warp_channels", "must come before those steps"),
    ((R.warp_depth_split, R.pad_warp_channels), "pad_warp_channels", "must come before those steps"),
    ((R.occlusion_as_taps, R.pad_warp_channels), "pad_warp_channels", "must come before those steps"),
])
def test_rewrite_steps_say_why_they_cannot_apply(tiny_nets, steps, skipped, reason):
    engine = recipes.build(list(steps), tiny_nets, "cpu")
    assert reason in engine.skipped[skipped]
    assert engine.applied == list(steps[:-1])


def test_rewrite_steps_on_networks_without_the_layers():
    torch.manual_seed(0)
    nets = {"warping_module": models.build("warping_module", **models.TINY["warping_module"],
                                           estimate_occlusion_map=False),
            "spade_generator": models.build("spade_generator", **models.TINY["spade_generator"])}
    engine = recipes.build([R.occlusion_as_taps], nets, "cpu")
    assert "W estimates no occlusion map" in engine.skipped["occlusion_as_taps"]
    no_norms = recipes.build([R.fold_batch_norm], {"spade_generator": nets["spade_generator"]}, "cpu")
    assert "no BatchNorm directly after a plain convolution" in no_norms.skipped["fold_batch_norm"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_build_on_cuda_without_cuda_says_to_use_the_cpu(tiny_nets):
    with pytest.raises(RuntimeError, match=r"CUDA is not available.*device='cpu'"):
        recipes.build("fast", tiny_nets, "cuda")


def test_padded_warp_has_channels_in_multiples_of_eight(tiny_nets):
    engine = recipes.build([R.pad_warp_channels], tiny_nets, "cpu")
    dense = engine.nets["warping_module"].dense_motion_network
    convs = [dense.hourglass.encoder.down_blocks[0].conv, dense.hourglass.decoder.conv, dense.mask]
    assert all(c.in_channels % 8 == 0 and c.out_channels % 8 == 0 for c in convs)
    with pytest.raises(engine_module.StepNotApplicable, match="already padded"):
        R.pad_warp_channels(engine)


def test_build_leaves_the_given_networks_untouched(tiny_nets):
    before = {name: copy.deepcopy(net.state_dict()) for name, net in tiny_nets.items()}
    recipes.build("fast", tiny_nets, "cpu")
    for name, net in tiny_nets.items():
        after = net.state_dict()
        assert after.keys() == before[name].keys(), name
        assert all(torch.equal(after[key], before[name][key]) for key in after), name


def test_cuda_steps_are_skipped_with_the_reason_on_cpu(tiny_nets):
    engine = recipes.build("fast", tiny_nets, "cpu")
    for name in ("cudnn_benchmark", "half", "channels_last", "compile_step[reduce-overhead]"):
        assert "needs a CUDA device" in engine.skipped[name]
    assert "networks already run in float32" in engine.skipped["residual_float32"]
    assert {"inference_mode", "fold_spectral_norm", "warp_source_cache", "pad_warp_channels"} <= set(
        engine.report()["applied"])


def test_unknown_recipe_and_compile_mode_are_refused(tiny_nets):
    with pytest.raises(ValueError, match="unknown recipe 'turbo'; known recipes: fp32-eager"):
        recipes.build("turbo", tiny_nets, "cpu")
    with pytest.raises(ValueError, match="unknown torch.compile mode"):
        R.compile_step("fastest")
    with pytest.raises(ValueError, match="unknown step 'turbo'; known steps: compile_nets"):
        R.lookup("turbo")


def test_a_failing_compile_falls_back_to_eager_and_says_why(tiny_nets, driving, eager_frames, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("inductor exploded")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    engine = recipes.build([], tiny_nets, "cpu")
    engine.compile_step_mode = "default"  # as compile_step would set it on a GPU
    engine.applied.append(R.compile_step("default"))
    assert engine.compiled
    frames = _frames(engine, driving)
    torch.testing.assert_close(frames, eager_frames, rtol=1e-4, atol=1e-5)
    assert engine.applied == [] and not engine.compiled
    assert "inductor exploded" in engine.skipped["compile_step[default]"]
    assert engine.compile_seconds is not None


class _Recorder(torch.nn.Module):
    """Two convolutions that record what reaches them; a dict of a float map and an integer index out."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                         torch.nn.Conv2d(16, 4, 3, padding=1))
        self.seen = []

    def forward(self, image, keypoints):
        self.seen.append((image.dtype, image.is_contiguous(memory_format=torch.channels_last), keypoints.dtype))
        out = self.convs(image)
        return {"map": out, "index": out.flatten(1).argmax(1)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_boundary_runs_a_network_in_its_dtype_and_returns_float32(dtype, generator):
    """What Boundary promises: images reach the network in its dtype and layout, keypoints stay float32,
    floating outputs come back float32 (others untouched), and the values are the network's in that dtype
    up to that dtype's rounding. Not bit-equality with a contiguous run: which kernel a CPU picks for
    each layout (and so the order of its sums) is the CPU's choice, not the product's."""
    net = _Recorder().to(dtype)
    image = torch.rand(2, 3, 12, 12, generator=generator)
    keypoints = torch.rand(2, 21, 3, generator=generator)
    out = engine_module.Boundary(net, dtype, channels_last=True)(image, keypoints)
    assert net.seen == [(dtype, True, torch.float32)]
    assert out["map"].dtype == torch.float32 and out["index"].dtype == torch.int64
    expected = net(image.to(dtype), keypoints)["map"].float()
    exact = copy.deepcopy(net).double()(image.double(), keypoints)["map"].float()
    eps = torch.finfo(dtype).eps
    scale = exact.abs().max().item()
    # Each side is that dtype's rounding of the exact value: a few ulps of the output's scale apart at most.
    torch.testing.assert_close(out["map"], expected, rtol=0, atol=8 * eps * scale)
    torch.testing.assert_close(out["map"], exact, rtol=0, atol=8 * eps * scale)


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
    original = engine_module.OptimizedAnimator.step
    monkeypatch.setattr(engine_module.OptimizedAnimator, "step", lambda self, d, **kw: calls.append(d.shape[0])
                        or original(self, d, **kw))
    frames = [f for f in frame.driving_batch(3).split(1)]
    outputs = list(animator.animate(frames, batch_size=2))
    assert calls == [2, 1] and len(outputs) == 3
    assert isinstance(animator, pipeline.Animator)


def test_fastest_motion_ahead_is_fastest_with_m_batched_over_the_frames_ahead(tiny_nets):
    engine = recipes.build("fastest-motion-ahead", tiny_nets, "cpu")
    assert engine.motion_ahead == R.MOTION_AHEAD_FRAMES == 16 and R.motion_ahead in engine.applied
    animator = engine.animator(sample.portrait(), reference=frame.driving_batch(1))
    assert animator.motion_ahead == 16
    clip = frame.driving_batch(5, offset=1)
    streamed = torch.cat(list(animator.animate(clip, batch_size=2)))
    stepped = frame.run_frames(frame.sample_animator(recipes.build("fastest", tiny_nets, "cpu")), 5, offset=1)
    _assert_same_up_to_float32_reordering(streamed, stepped)  # batched convolutions sum in another order


def test_a_failing_compile_of_the_motion_ahead_calls_falls_back_to_eager(tiny_nets, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("inductor exploded")
        return compiled

    clip = frame.driving_batch(3, offset=1)
    expected = frame.sample_animator(recipes.build("fp32-eager", tiny_nets, "cpu")).step(clip)
    monkeypatch.setattr(torch, "compile", broken_compile)
    engine = recipes.build([R.motion_ahead], tiny_nets, "cpu")
    engine.compile_step_mode = "default"  # as compile_step would set it on a GPU
    engine.applied.append(R.compile_step("default"))
    animator = frame.sample_animator(engine)
    motion = animator.motion_template(clip)
    frames = animator.step_from_motion(motion)
    torch.testing.assert_close(frames, expected, rtol=1e-4, atol=1e-5)
    assert not engine.compiled and "inductor exploded" in engine.skipped["compile_step[default]"]
    assert animator.step(clip).shape == (3, 3, 512, 512)  # the step runs eager too


def test_held_addresses_copy_a_new_value_into_the_tensor_held_for_its_role():
    held = engine_module.HeldAddresses()
    first = torch.zeros(2, 3)
    assert held.hold("x", first) is first and first._dynamo_static_input_type == "unguarded"
    assert held.hold("x", torch.ones(2, 3)) is first and bool((first == 1).all())
    other_shape = torch.ones(3, 2)
    assert held.hold("x", other_shape) is other_shape  # a new shape: a new tensor, held from now on
    assert held.hold("y", torch.ones(2, 3)) is not first  # roles are apart
    motion = pipeline.Motion(*(torch.full((1, 2), float(i)) for i in range(5)))
    kept = held.hold_motion("m", motion)
    again = held.hold_motion("m", pipeline.Motion(*(torch.full((1, 2), 9.0) for _ in range(5))))
    assert all(a is b and bool((a == 9).all()) for a, b in zip(again.tensors(), kept.tensors()))


def test_an_animator_replaying_cuda_graphs_animates_a_new_source_in_the_same_tensors(tiny_nets, monkeypatch):
    monkeypatch.setattr(engine_module.Engine, "replays_graphs", property(lambda engine: True))
    animator = frame.sample_animator(recipes.build("fastest", tiny_nets, "cpu"))
    warp = animator.engine.nets[models.WARP_NET]
    before = [animator.source.feature, animator.source.keypoints, *animator.source.motion.tensors(),
              *warp.terms.values(), *animator.reference.tensors()]
    mirrored = sample.portrait().flip(-1)
    animator.set_source(mirrored)
    after = [animator.source.feature, animator.source.keypoints, *animator.source.motion.tensors(),
             *warp.terms.values(), *animator.reference.tensors()]
    assert all(a is b for a, b in zip(before, after))
    clip = frame.driving_batch(2, offset=1)
    fresh = recipes.build("fastest", tiny_nets, "cpu").animator(mirrored, reference=frame.driving_batch(1))
    # the same float32 function on the same values: agreement at float32 rounding; the old portrait's
    # frames, which a stale tensor would give, differ by orders of magnitude more
    torch.testing.assert_close(animator.step(clip), fresh.step(clip))


@pytest.mark.parametrize("step, setting", [("inductor_freezing", "freezing"),
                                           ("inductor_coordinate_descent", "coordinate_descent_tuning")])
def test_inductor_settings_are_compile_options_added_to_the_mode(tiny_nets, monkeypatch, step, setting):
    engine = recipes.build([R.lookup(step)], tiny_nets, "cpu")
    assert "needs a CUDA device" in engine.skipped[step]
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append(kwargs) or fn)
    engine.compile(len, "reduce-overhead")
    engine.inductor_settings[setting] = True  # as the step sets it on a CUDA engine
    engine.compile(len, "reduce-overhead")
    # as options, they are part of what dynamo matches a compiled program on (a patched config is not)
    assert compiled == [{"mode": "reduce-overhead"}, {"options": {"triton.cudagraphs": True, setting: True}}]


def test_a_program_compiled_without_the_engines_inductor_settings_is_not_reused():
    from torch._dynamo.utils import counters

    def scaled(x):
        return torch.relu(x) * 2 + 1

    x = torch.randn(8)
    plain = engine_module.Engine(nets={}, device=torch.device("cpu"))
    tuned = engine_module.Engine(nets={}, device=torch.device("cpu"),
                                 inductor_settings={"coordinate_descent_tuning": True})
    graphs = counters["stats"]["unique_graphs"]
    plain.compile(scaled, "default")(x)
    plain.compile(scaled, "default")(x)  # the same mode: dynamo reuses the program
    assert counters["stats"]["unique_graphs"] == graphs + 1
    torch.testing.assert_close(tuned.compile(scaled, "default")(x), scaled(x))
    assert counters["stats"]["unique_graphs"] == graphs + 2  # compiled again, under its settings
