"""The GPU suite: frame benchmarks the history gate compares, the speedup over the strongest
official-style peer, parity, the NVML memory budget, and the roofline guard.

Runs on the card under test (CUDA_VISIBLE_DEVICES picks it); every test skips with the reason
where there is no CUDA GPU. Only timings that are steady from one process to the next are
pytest-benchmark benchmarks (and so gated by `--benchmark-compare-fail`): whole frames of the
CUDA-graph recipes, each round a block of back-to-back frames so that the host's per-call work
overlaps the GPU's (timed one frame per round, after a synchronize, the medians of identical runs
on H200s moved up to 11.5 %, because the host's part of every call was inside the clock). Eager
timings are launch-bound and moved 16-59 % between identical runs, so they are reported as
informational results (the `lpperf informational results` section of the summary) and gated only by
`lpperf gate`, which compares both versions in one job.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch

from lpperf.measure import FRAME_STAGES, STAGES, frame, memory, parity, roofline, timing
from lpperf.models import sample
from lpperf.optimize import recipes, rewrites, steps

pytestmark = pytest.mark.gpu

OPTIMIZED = "fastest"
# The official speed script's settings: .half() + compile(reduce-overhead) per network. Measured two ways,
# as a whole step and as its networks M, W, G each alone (frame.modules_alone); the faster is the peer.
PEER = "official-reduce-overhead"
BASELINE = "fp32-eager"
GATED_FRAMES = (OPTIMIZED, "fast")  # CUDA-graph recipes: steady across processes
BATCHED = "fastest-batched"  # W's mask in the frequency domain: parity checked here, speed by `lpperf bench`
# M batched over 16 driving frames known ahead, and the official modules given the same (its peer)
AHEAD, AHEAD_PEER = "fastest-motion-ahead", "official-motion-ahead"
EAGER_FRAMES = (BASELINE, "autocast-fp16")  # informational only
FRAMES_PER_ROUND = 8  # one timed round: ~35-50 ms of back-to-back frames, the GPU never idle between them
NEW_SOURCE_FRAMES = 4  # frames made from each source in the source-change test
RULE = timing.StoppingRule(min_repeats=30, min_seconds=0.3, max_rel_iqr=0.05, max_repeats=500, max_seconds=10.0)


class Session:
    """Animators built once per test session, one per recipe (compiling is costly)."""

    def __init__(self, nets: dict, device: torch.device):
        self.nets = nets
        self.device = device
        self._animators: dict[str, recipes.OptimizedAnimator] = {}
        self.driving = frame.driving_batch(1, offset=frame.PARITY_FRAMES).to(device)

    def animator(self, recipe: str) -> recipes.OptimizedAnimator:
        if recipe not in self._animators:
            animator = frame.sample_animator(recipes.build(recipe, self.nets, self.device))
            animator.step(self.driving)  # compile / autotune here, outside every measurement
            torch.cuda.synchronize(self.device)
            self._animators[recipe] = animator
        return self._animators[recipe]

    def time_frame(self, recipe: str) -> timing.TimingResult:
        animator = self.animator(recipe)
        return timing.time_callable(lambda: animator.step(self.driving), self.device, warmup=5, rule=RULE)

    def time_modules(self, recipe: str) -> timing.TimingResult:
        """The recipe's networks M, W and G each alone on the frame's inputs, summed per round."""
        work = frame.modules_alone(recipes.build(recipe, self.nets, self.device), batch=1)
        assert work.frames == 1, f"{recipe} batches M ahead: time it with ms_per_frame"
        return timing.time_parts(work.calls, self.device, warmup=5, rule=RULE)

    def ms_per_frame(self, recipe: str, modules: bool = False) -> tuple[float, timing.TimingResult]:
        """Median milliseconds per frame of the recipe's frames at batch 1 as it runs them (frame.step_work:
        with motion ahead, M over that many frames then their steps), or of its modules alone."""
        if modules:
            work = frame.modules_alone(recipes.build(recipe, self.nets, self.device), batch=1)
        else:
            work = frame.step_work(self.animator(recipe), batch=1)
        result = timing.time_parts(work.calls, self.device, warmup=5, rule=RULE)
        return result.median_ms / work.frames, result

    def release_all(self) -> None:
        """Drop every engine (compiled graphs and CUDA-graph pools too) so memory is measured alone."""
        self._animators.clear()
        memory.release_cached_memory()


@pytest.fixture(scope="session")
def gpu_session(lpperf_nets, cuda_device) -> Session:
    cpu_nets = {name: net.cpu() for name, net in lpperf_nets.items()}  # each engine copies to the card
    return Session(cpu_nets, cuda_device)


@pytest.fixture(scope="session")
def peak(cuda_device) -> roofline.PeakThroughput:
    return roofline.PeakCache().get(cuda_device)


@pytest.fixture(scope="session")
def flops_per_frame(gpu_session: Session) -> float:
    return frame.flops_per_frame(gpu_session.nets)


@pytest.fixture(scope="session")
def reference_frames(gpu_session: Session) -> torch.Tensor:
    return frame.reference_frames(gpu_session.nets, gpu_session.device, frame.PARITY_FRAMES)


@pytest.mark.parametrize("recipe", GATED_FRAMES)
def test_frame(benchmark, gpu_session, lpperf_card, lpperf_settings, flops_per_frame, peak, recipe):
    animator = gpu_session.animator(recipe)
    step = lambda: animator.step(gpu_session.driving)  # noqa: E731
    injected_ms = 0.0
    if lpperf_settings.inject_slowdown:
        step, injected_ms = _slowed(step, gpu_session, lpperf_settings.inject_slowdown)
    benchmark.group = "frame (M + keypoints + S + W + G), batch 1, CUDA graph"
    out = benchmark.pedantic(step, rounds=30, warmup_rounds=3, iterations=FRAMES_PER_ROUND)
    assert torch.isfinite(out).all(), f"{recipe} produced NaN/Inf"
    median = benchmark.stats.stats.median
    tflops = roofline.check(flops_per_frame, median, peak, label=f"frame benchmark {recipe!r}")
    benchmark.extra_info.update(card=lpperf_card.name, recipe=recipe, batch=1, flops=flops_per_frame, tflops=tflops,
                                applied=animator.engine.report()["applied"], skipped=animator.engine.skipped,
                                compile_seconds=animator.engine.compile_seconds, injected_ms=injected_ms)


def _slowed(step, session: Session, fraction: float):
    """Test-only: the step followed by GPU spinning for `fraction` of its measured time."""
    base_ms = timing.time_callable(step, session.device, warmup=3, rule=RULE).median_ms
    cycles_per_ms = _sleep_cycles_per_ms(session.device)
    cycles = int(fraction * base_ms * cycles_per_ms)

    def slowed():
        out = step()
        torch.cuda._sleep(cycles)
        return out

    return slowed, cycles / cycles_per_ms


def _sleep_cycles_per_ms(device: torch.device, cycles: int = 10_000_000) -> float:
    spin = lambda: torch.cuda._sleep(cycles)  # noqa: E731
    return cycles / timing.time_callable(spin, device, warmup=1).median_ms


def test_speedup_over_the_strongest_peer(gpu_session, lpperf_thresholds, lpperf_info, flops_per_frame, peak):
    """The optimized recipe against the strongest official-style peer measure of this session: the faster
    of the whole step of .half() + torch.compile(mode='reduce-overhead') per network (the work between
    the networks eager) and the same compiled networks M, W and G each timed alone on the frame's inputs
    and summed, as the official speed script measures them. All are CUDA-event times; fp32 eager beside
    them, informational.

    Each is built and timed alone, every other engine released first (as lpperf bench does): the
    peer's per-network CUDA graphs and the optimized step's graph share torch's CUDA-graph tree, and
    interleaved they re-record (an H200 run measured the optimized step at 83 ms that way, 4.5 ms alone)."""
    whole_step, modules = f"{PEER} (whole step)", f"{PEER} (modules M + W + G alone, summed)"
    measures = ((whole_step, lambda: gpu_session.time_frame(PEER)), (modules, lambda: gpu_session.time_modules(PEER)),
                (OPTIMIZED, lambda: gpu_session.time_frame(OPTIMIZED)),
                (BASELINE, lambda: gpu_session.time_frame(BASELINE)))
    timings = {}
    for name, measure in measures:
        gpu_session.release_all()
        timings[name] = measure()
    gpu_session.release_all()
    for name in (whole_step, OPTIMIZED, BASELINE):  # whole frames; the modules alone do part of a frame's work
        roofline.check(flops_per_frame, timings[name].stats.median_s, peak, label=f"{name} per-frame timing")
    parts = timings[modules].parts
    assert list(parts) == list(frame.PEER_MODULES), parts
    peers = (whole_step, modules)
    strongest = min(peers, key=lambda name: timings[name].stats.median_s)
    ms = {name: result.median_ms for name, result in timings.items()}
    speedup = ms[strongest] / ms[OPTIMIZED]
    lpperf_info["speedup"] = (
        f"{OPTIMIZED} {ms[OPTIMIZED]:.2f} ms, {speedup:.2f}x the strongest peer, {strongest} {ms[strongest]:.2f} ms; "
        + ", ".join(f"{name} {ms[name]:.2f} ms" for name in peers if name != strongest)
        + " (modules: " + ", ".join(f"{stage} {stats.median_s * 1e3:.2f}" for stage, stats in parts.items())
        + f" ms); {BASELINE} {ms[BASELINE]:.2f} ms ({ms[BASELINE] / ms[OPTIMIZED]:.2f}x)")
    lpperf_thresholds.min_speedup.check(speedup, OPTIMIZED, f"{ms[OPTIMIZED]:.2f} ms against {ms[strongest]:.2f} ms "
                                        f"per frame for the strongest peer, {strongest}")


def test_motion_ahead_speedup_over_the_strongest_peer_given_the_same_frames(gpu_session, lpperf_thresholds,
                                                                          lpperf_info, flops_per_frame, peak):
    """M batched over 16 driving frames known ahead, then each frame's step from its motion, against the
    official compiled modules alone given the same batching (M over the 16 frames, W and G per frame) and
    as shipped (M per frame): a ratio only over a peer given no less than the recipe. Each built and timed
    alone, as in test_speedup_over_the_strongest_peer."""
    ahead_peer, shipped_peer = f"{AHEAD_PEER} (modules alone)", f"{PEER} (modules alone)"
    measures = ((ahead_peer, lambda: gpu_session.ms_per_frame(AHEAD_PEER, modules=True)),
                (shipped_peer, lambda: gpu_session.ms_per_frame(PEER, modules=True)),
                (AHEAD, lambda: gpu_session.ms_per_frame(AHEAD)),
                (OPTIMIZED, lambda: gpu_session.ms_per_frame(OPTIMIZED)))
    ms = {}
    for name, measure in measures:
        gpu_session.release_all()
        ms[name], result = measure()
        assert result.stats.count >= RULE.min_repeats, f"{name}: only {result.stats.count} samples"
    gpu_session.release_all()
    for name in (AHEAD, OPTIMIZED):
        roofline.check(flops_per_frame, ms[name] / 1e3, peak, label=f"{name} per-frame timing")
    strongest = min((ahead_peer, shipped_peer), key=ms.get)
    speedup = ms[strongest] / ms[AHEAD]
    lpperf_info["speedup, frames known ahead"] = (
        f"{AHEAD} {ms[AHEAD]:.2f} ms per frame, {speedup:.2f}x the strongest peer given the same frames, {strongest} "
        f"{ms[strongest]:.2f} ms; "
        + ", ".join(f"{name} {ms[name]:.2f} ms" for name in ms if name not in (AHEAD, strongest)))
    lpperf_thresholds.min_speedup_ahead.check(speedup, AHEAD, f"{ms[AHEAD]:.2f} ms against {ms[strongest]:.2f} ms per "
                                              f"frame for the strongest peer given the same frames, {strongest}")


@pytest.mark.parametrize("recipe", EAGER_FRAMES)
def test_eager_frame_informational(gpu_session, lpperf_info, flops_per_frame, peak, recipe):
    result = gpu_session.time_frame(recipe)
    assert result.stats.count >= RULE.min_repeats, f"{recipe}: only {result.stats.count} samples ({result.stop_reason})"
    tflops = roofline.check(flops_per_frame, result.stats.median_s, peak, label=f"{recipe} per-frame timing")
    lpperf_info[f"frame {recipe}"] = (f"{result.median_ms:.2f} ms median, p90 {result.stats.p90_s * 1e3:.2f} ms, "
                                      f"{tflops:.0f} TFLOP/s (CUDA events; eager: launch-bound, not gated)")


@pytest.mark.parametrize("recipe", (BASELINE, OPTIMIZED))
def test_stages_informational(gpu_session, lpperf_info, flops_per_frame, peak, recipe):
    """Each stage alone, as GPU time; together the per-frame stages (M, S, W, G) do a frame's work, so
    their sum can no more beat the card's peak than the frame can."""
    stages = frame.time_stages(gpu_session.animator(recipe), gpu_session.driving, gpu_session.device)
    stage_ms = {stage: result.median_ms for stage, result in stages.items()}
    assert set(stage_ms) == set(STAGES) and all(ms > 0 for ms in stage_ms.values()), stage_ms
    per_frame_s = sum(stage_ms[stage] for stage in FRAME_STAGES) / 1e3
    roofline.check(flops_per_frame, per_frame_s, peak, label=f"{recipe}'s stages M + S + W + G")
    lpperf_info[f"stages {recipe}"] = ", ".join(f"{stage} {ms:.3f} ms" for stage, ms in stage_ms.items()) + \
        f" ({frame.stage_clock(gpu_session.device)})"


@pytest.mark.parametrize("recipe", GATED_FRAMES + (BATCHED, AHEAD))
def test_parity(gpu_session, reference_frames, lpperf_thresholds, recipe):
    animator = gpu_session.animator(recipe)
    frames = frame.run_frames(animator, frame.PARITY_FRAMES)  # with motion ahead, M over the frames first
    report = parity.compare({}, {}, frames, reference_frames, precision=animator.engine.precision)
    assert not report.has_nonfinite, f"{recipe} produced NaN/Inf"
    lpperf_thresholds.min_psnr_db.check(report.frame.psnr_db, recipe)
    lpperf_thresholds.max_level_diff.check(report.frame.max_level_diff, recipe)


@pytest.mark.parametrize("recipe", (OPTIMIZED, AHEAD))
def test_a_new_source_is_animated_not_the_old_one(gpu_session, reference_frames, lpperf_thresholds, recipe):
    """The compiled step replays a CUDA graph that reads the source's cached tensors (F's volume, W's
    source terms) where they lie. After set_source the frames must be the new portrait's, within the
    parity budget, and after setting the first portrait again, its frames once more."""
    device = gpu_session.device
    portrait = sample.portrait().to(device)
    mirrored = portrait.flip(-1)
    reference = frame.sample_animator(recipes.build("reference", gpu_session.nets, device))
    reference.set_source(mirrored)
    expected = frame.run_frames(reference, NEW_SOURCE_FRAMES)
    animator = gpu_session.animator(recipe)
    try:
        animator.set_source(mirrored)
        got = frame.run_frames(animator, NEW_SOURCE_FRAMES)
    finally:
        animator.set_source(portrait)
    again = frame.run_frames(animator, NEW_SOURCE_FRAMES)
    precision = animator.engine.precision
    for frames, wanted, label in ((got, expected, f"{recipe}, the mirrored portrait"),
                                  (again, reference_frames[:NEW_SOURCE_FRAMES], f"{recipe}, the portrait again")):
        report = parity.compare({}, {}, frames, wanted, precision=precision)
        assert not report.has_nonfinite, f"{label}: NaN/Inf"
        lpperf_thresholds.min_psnr_db.check(report.frame.psnr_db, label)
        lpperf_thresholds.max_level_diff.check(report.frame.max_level_diff, label)
    stale = parity.compare({}, {}, got, reference_frames[:NEW_SOURCE_FRAMES], precision=precision)
    assert stale.frame.psnr_db < 30, f"{recipe}: the mirrored portrait's frames look like the first portrait's"


def test_stage_parity(gpu_session):
    """Relative error per stage (F's volume, driving keypoints, deformation, warped feature)."""
    reference = frame.stage_outputs(gpu_session.animator("reference"), gpu_session.driving)
    animator = gpu_session.animator(OPTIMIZED)
    optimized = frame.stage_outputs(animator, gpu_session.driving)
    precision = animator.engine.precision
    report = parity.compare({k: optimized[k] for k in frame.STAGE_OUTPUT_NAMES},
                            {k: reference[k] for k in frame.STAGE_OUTPUT_NAMES}, precision=precision)
    failures = report.failures(parity.Tolerance.for_precision(precision))
    assert not failures, "stage parity against the fp32 reference failed:\n" + "\n".join(failures)


def test_memory_budget(gpu_session, lpperf_thresholds):
    if not memory.available():
        pytest.skip(f"NVML unavailable: {memory.available().reason}")
    gpu_session.release_all()
    with memory.track_peak_memory(gpu_session.device) as tracker:
        animator = gpu_session.animator(OPTIMIZED)
        for _ in range(10):
            animator.step(gpu_session.driving)
    report = tracker.report
    lpperf_thresholds.memory_budget_mib.check(report.process_peak_bytes / 2**20, OPTIMIZED,
                                              f"{report.method}; torch reserved "
                                              f"{(report.torch_max_reserved_bytes or 0) / 2**20:.0f} MiB")


SMALL_CARD_GIB = 22  # a 24 GB card less its CUDA context and cuDNN/cuBLAS handles


def test_cudnn_benchmarking_keeps_no_trial_workspace_and_fits_a_24_gb_card(gpu_session, reference_frames,
                                                                          lpperf_thresholds):
    """The float32 waterfall row with G's modulations batched runs cuDNN's benchmark over convolutions with
    up to 1536 outputs; its trial workspaces once stayed reserved after the first frame (67 GB by NVML on an
    H100). Under a 24 GB card's allocator limit the row must run, keep parity, and hold no more than it needs."""
    fastest = recipes.lookup("fastest").steps
    prefix = fastest[:fastest.index(steps.batch_spade_modulations) + 1]
    gpu_session.release_all()
    device = gpu_session.device
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, SMALL_CARD_GIB * 2**30 / total), device)
    try:
        animator = frame.sample_animator(recipes.build(prefix, gpu_session.nets, device))
        frames = frame.run_frames(animator, frame.PARITY_FRAMES)
        reserved_gib = torch.cuda.memory_reserved(device) / 2**30
        del animator
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        gpu_session.release_all()
    report = parity.compare({}, {}, frames, reference_frames, precision="tf32")
    assert not report.has_nonfinite
    lpperf_thresholds.min_psnr_db.check(report.frame.psnr_db, "the batched-modulation row under a 24 GB limit")
    assert reserved_gib <= 4, f"{reserved_gib:.1f} GiB still reserved after the first frames (the step needs ~1.5)"


@pytest.mark.parametrize("batch, candidates, channels, volume_dtype, layout", [
    (1, 22, 4, torch.float16, "contiguous"),  # the compressed feature at the K+1 candidate motions
    (1, 1, 32, torch.float16, "channels_last_3d"),  # the feature volume at the deformation
    (3, 2, 5, torch.float32, "contiguous"),  # odd channels, several volumes
])
def test_triton_volume_sampling_matches_a_float64_grid_sample(cuda_device, batch, candidates, channels,
                                                              volume_dtype, layout):
    """The volume-sampling kernel against F.grid_sample in float64 at the official volume (16 x 64 x 64),
    points inside, on the border and outside (zeros), eager and inside torch.compile; and against
    warping.sample_volumes in float32 on the card, which it replaces."""
    from lpperf.models import warping
    from lpperf.optimize import kernels, sampling
    if not kernels.triton_available():
        pytest.skip("Triton is not installed with this torch")
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn(batch, channels, 16, 64, 64, generator=generator).to(volume_dtype)
    grids = torch.rand(batch, candidates, 16, 64, 64, 3, generator=generator) * 2.4 - 1.2  # ~1/6 outside
    grids[:, :, 0, 0, :7] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1.2, 0.5, 0.0], [0.0, 0.0, 1.03],
                                          [-1.0 - 1 / 64, 0.0, 0.0], [1.0 + 1 / 64, 0.0, 0.0], [5e6, 0.0, 0.0]])
    expected = warping.sample_volumes(volume.double(), grids.double(), torch.float64, torch.float64)
    volume = volume.to(cuda_device)
    if layout == "channels_last_3d":
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
    grids = grids.to(cuda_device)
    with torch.inference_mode():
        out = sampling.sample_volumes_on_kernel(volume, grids, torch.float32, torch.float32)
        official = warping.sample_volumes(volume, grids, torch.float32, torch.float32)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(sampling.sample_volumes_on_kernel)(volume, grids, torch.float32, volume_dtype)
        torch._dynamo.reset()
        compiled = torch.compile(sampling.sample_volumes_on_kernel)(volume, grids, torch.float32, volume_dtype)
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]
    assert sampling.kernel_applies(volume, grids, torch.float32)
    assert out.shape == expected.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    error = (out.double().cpu() - expected).abs().max().item()
    assert error <= 1e-5 * max(1.0, expected.abs().max().item()), error  # float32 arithmetic, same formula
    assert torch.allclose(out, official, rtol=1e-5, atol=1e-6)
    assert compiled.dtype == volume_dtype and torch.equal(compiled, out.to(volume_dtype))


@pytest.mark.parametrize("cin, cout, kernel, size", [(256, 64, 3, 128), (128, 512, 3, 64), (256, 64, 1, 64),
                                                     (48, 32, (3, 5), 37)])
def test_triton_conv_matches_a_float64_convolution(cuda_device, cin, cout, kernel, size):
    """The Triton implicit-GEMM kernel in fp16 on the card, eager and inside torch.compile (as the recipes
    run it), against the float64 convolution: G's shapes (up_1's conv_0, the batched gamma/beta, a
    shortcut) and an odd one (a 3x5 kernel, partial tiles)."""
    from lpperf.optimize import kernels
    if not kernels.triton_available():
        pytest.skip("Triton is not installed with this torch")
    generator = torch.Generator().manual_seed(0)
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    conv = torch.nn.Conv2d(cin, cout, kernel, padding=(kernel[0] // 2, kernel[1] // 2))
    x = torch.randn(2, cin, size, size, generator=generator)
    expected = conv.double().to(cuda_device)(x.double().to(cuda_device))
    layer = kernels.TritonConv2d(conv.float()).to(cuda_device).half()
    x = x.half().to(cuda_device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = layer(x)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(layer)(x)
        torch._dynamo.reset()
        compiled = torch.compile(layer)(x)
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]

    def error(value):
        return (torch.linalg.vector_norm(value.double() - expected) / torch.linalg.vector_norm(expected)).item()
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(out).all()
    assert error(out) <= 2e-3, error(out)  # fp16 inputs and output, float32 accumulation: cuDNN's rounding
    assert torch.equal(compiled, out)
    with torch.inference_mode():  # an NCHW input: the layer makes it channels-last before the op
        assert torch.equal(layer(x.contiguous()), out)


@pytest.mark.parametrize("batch, channels, size, upsample, x_dtype, slope", [
    (1, 256, 256, 2, torch.float32, 0.2),  # up_1's norm_0: the float32 stream read through the 2x upsampling
    (1, 256, 256, 2, torch.float32, None),  # up_1's norm_s: no activation
    (2, 64, 256, 1, torch.float16, 0.2),  # up_1's norm_1: conv_0's fp16 output, two frames
    (1, 512, 64, 1, torch.float32, 0.2),  # a G_middle block
    (1, 40, 37, 1, torch.float32, 0.2),  # partial tiles everywhere
])
def test_fused_spade_modulation_matches_a_float64_spade(cuda_device, batch, channels, size, upsample, x_dtype,
                                                        slope):
    """The fused SPADE kernel in fp16 on the card, eager and inside torch.compile (one graph, as the
    recipes run it), against the SPADE's float64 modulation (plain module, float64 weights) at G's shapes."""
    from lpperf.models.spade import SPADE
    from lpperf.optimize import kernels, modulation, rewrites
    if not kernels.triton_available():
        pytest.skip("Triton is not installed with this torch")
    generator = torch.Generator().manual_seed(0)
    plain = rewrites.SpadeModulation(SPADE(channels, 4, 128))
    with torch.no_grad():
        plain.gamma_beta.weight.mul_(0.3)
    hidden = torch.relu(torch.randn(batch, 128, size, size, generator=generator))
    x = torch.randn(batch, channels, size // upsample, size // upsample, generator=generator) * 3 + 1
    x = x.to(x_dtype)
    expected = copy.deepcopy(plain).double().to(cuda_device)(
        rewrites.NormalizedStream(x.double().to(cuda_device), upsample), hidden.double().to(cuda_device), slope)
    fused = modulation.TritonSpadeModulation(plain).to(cuda_device).half()
    hidden = hidden.half().to(cuda_device).contiguous(memory_format=torch.channels_last)
    x = x.to(cuda_device).contiguous(memory_format=torch.channels_last)

    def run(hidden, x):
        return fused(rewrites.NormalizedStream(x, upsample), hidden, slope)
    with torch.inference_mode():
        assert modulation.kernel_applies(hidden, fused.w_gamma_taps, x, upsample)
        out = run(hidden, x)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(run)(hidden, x)
        torch._dynamo.reset()
        compiled = torch.compile(run)(hidden, x)
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()
    error = (torch.linalg.vector_norm(out.double() - expected) / torch.linalg.vector_norm(expected)).item()
    assert error <= 2e-3, error  # fp16 weights, hidden map and output, float32 arithmetic
    compiled_error = (torch.linalg.vector_norm(compiled.double() - out.double()) / torch.linalg.vector_norm(expected))
    assert compiled_error.item() <= 1e-3  # the compiled graph's own statistics reduction may sum in another order


def test_fft_mask_conv_matches_a_float64_convolution(cuda_device):
    """W's mask layer at its official shape (144 -> 22 channels, 7x7x7, 16 x 64 x 64) in the frequency
    domain on the card (cuFFT, a complex batched matmul) against the float64 convolution."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(144, 22, 7, padding=3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / (144 * 343) ** 0.5)
        conv.bias.copy_(torch.randn(22, generator=generator))
    x = torch.randn(1, 144, 16, 64, 64, generator=generator)
    expected = conv.double().to(cuda_device)(x.double().to(cuda_device))
    conv = conv.float()
    fft = rewrites.FFTConv3d(conv, (64, 64)).to(cuda_device)
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        out = fft(x.to(cuda_device))
        out_half = fft.half()(x.half().to(cuda_device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32

    def error(value):
        return (torch.linalg.vector_norm(value.double() - expected) / torch.linalg.vector_norm(expected)).item()
    assert error(out) <= 1e-5, error(out)
    assert torch.isfinite(out_half).all() and error(out_half) <= 2e-3, error(out_half)


def test_unsynchronised_host_timing_is_rejected(cuda_device, peak):
    """The seed's mistake, made on purpose: a host clock around asynchronous GPU work times the launches
    only. 20 bf16 8192^3 products (22 TFLOP, ~28 ms of work at the card's peak) are launched in well
    under a millisecond, so the implied throughput is ~100x the peak every time: the guard must trip."""
    size, count = 8192, 20
    a, b, out = (torch.randn(size, size, device=cuda_device, dtype=torch.bfloat16) for _ in range(3))
    torch.mm(a, b, out=out)  # warm: library handles and kernels loaded
    torch.cuda.synchronize(cuda_device)
    start = time.perf_counter()
    for _ in range(count):
        torch.mm(a, b, out=out)
    host_seconds = time.perf_counter() - start  # deliberately no synchronize
    torch.cuda.synchronize(cuda_device)
    with pytest.raises(roofline.ImpossibleTimingError, match="measurement error"):
        roofline.check(count * roofline.matmul_flops(size, size, size), host_seconds, peak,
                       label="unsynchronised host timing")


def test_a_captured_matmul_survives_cleared_cublas_workspaces(cuda_device):
    """timing.graph_replay's graphs must not use a cuBLAS workspace they do not own: CUDA-graph trees clear
    the workspaces on every recording, and a replay then wrote into freed memory (an illegal memory
    access in `lpperf gate` on an H200 once eager frames were replayed beside a compiled recipe)."""
    weight = torch.randn(4096, 4096, device=cuda_device)
    row = torch.randn(8, 4096, device=cuda_device)  # skinny, long K: cuBLAS splits K into its workspace
    expected = row @ weight
    capture_stream = torch.cuda.graph(torch.cuda.CUDAGraph()).capture_stream  # the stream captures run on
    with torch.cuda.stream(capture_stream):
        row @ weight  # the stream's workspace now exists outside any graph: the hazard's set-up
    torch.cuda.synchronize(cuda_device)
    out = torch.empty_like(expected)
    replay = timing.graph_replay(lambda: torch.matmul(row, weight, out=out), cuda_device)
    torch._C._cuda_clearCublasWorkspaces()  # what a CUDA-graph tree recording does
    torch.cuda.empty_cache()
    filler = torch.full((64, 1 << 20), 7.0, device=cuda_device)  # reoccupies whatever was freed
    for _ in range(3):
        replay()
    torch.cuda.synchronize(cuda_device)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
    assert bool((filler == 7.0).all()), "a replay wrote into memory it does not own"
