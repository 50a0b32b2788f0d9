"""What one animated frame is made of, for everything that measures frames: lpperf bench, the GPU
suite and the `lpperf gate` worker.

A frame is one per-frame step of lpperf.animation.pipeline.Animator (written there once, in run_stages): M,
keypoint math + S, W, G; F runs once per source. This module runs that step on the sample data and
takes it apart:

    animator = sample_animator(recipes.build("fast", nets, "cuda"))
    frames = run_frames(animator, PARITY_FRAMES)                # the parity frame loop
    reference = reference_frames(nets, "cuda", PARITY_FRAMES)   # float32, TF32 off
    stages = time_stages(animator, driving_batch(1), "cuda")  # each stage alone, GPU time
    work = step_work(animator, batch=1)                         # what one timed round runs, and its frames
    modules = modules_alone(recipes.build("official-reduce-overhead", nets, "cuda"), batch=1)
    timing.time_parts(work.calls, "cuda").stats.median_s / work.frames   # seconds per frame
    flops = flops_per_frame(nets)

Each stage alone runs eagerly and uncompiled: a compiled step fuses work across stage boundaries, so its
frame time is not the sum of its stages' times.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from collections.abc import Callable

import torch

from lpperf.animation import pipeline
from lpperf.measure import roofline, timing
from lpperf.models import DECODER_NET, MOTION_NET, WARP_NET, sample
from lpperf.optimize import recipes
from lpperf.optimize.engine import HEAVY_NETS, MEMORY_FORMATS, Engine, OptimizedAnimator
from lpperf.util.validation import check_positive_int

# The stages whose networks the official speed script times, each alone: the per-frame ones (its S,
# retargeting MLPs, take microseconds and are left out, so the sum is the smallest this measure can be).
PEER_MODULES = ("M", "W", "G")
_MODULE_NETS = {"M": MOTION_NET, "W": WARP_NET, "G": DECODER_NET}
STAGE_OUTPUT_NAMES = ("f_s", "keypoints", "deformation", "warped")  # the stages' outputs compared for parity
PARITY_FRAMES = 4  # driving frames compared with the float32 reference
STAGE_RULE = timing.StoppingRule(min_repeats=10, min_seconds=0.05, max_rel_iqr=0.05, max_repeats=100,
                                 max_seconds=1.0)


@dataclasses.dataclass(frozen=True)
class FrameWork:
    """One timed round of a recipe's frames: callables timed each alone and summed per round
    (timing.time_parts), making `frames` frames between them; a round's time / frames is per frame."""

    calls: dict[str, Callable[[], object]]
    frames: int


def step_work(animator: OptimizedAnimator, batch: int, offset: int = PARITY_FRAMES) -> FrameWork:
    """The recipe's frames at `batch` as it runs them: one step on `batch` driving frames from `offset`;
    with motion ahead (Engine.motion_ahead frames, more than `batch`), M over that many frames in one
    call, then their steps from their motion, `batch` at a time (what animate() does)."""
    check_positive_int(batch, "batch")
    if animator.source is None:
        raise RuntimeError("the animator has no source image: set one first (sample_animator does)")
    device = animator.source.image.device
    steps = pipeline.steps_per_template(animator.motion_ahead, batch)
    if steps == 1:
        driving = driving_batch(batch, offset).to(device)
        return FrameWork({"step": lambda: animator.step(driving)}, batch)
    frames = driving_batch(steps * batch, offset).to(device)

    def frames_from_motion():
        for out in animator.steps_from_template(frames, batch):
            pass
        return out
    return FrameWork({"motion ahead + steps": frames_from_motion}, steps * batch)


def driving_batch(batch: int, offset: int = 0) -> torch.Tensor:
    """`batch` consecutive frames of the sample driving sequence, starting at frame `offset`."""
    check_positive_int(batch, "batch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0 (the first driving frame), got {offset!r}")
    return torch.cat(list(itertools.islice(sample.driving_frames(), offset, offset + batch)))


def sample_animator(engine: Engine) -> OptimizedAnimator:
    """The engine's animator for the sample portrait, with driving frame 0 as the motion reference."""
    return engine.animator(sample.portrait(), reference=driving_batch(1))


def run_frames(animator: pipeline.Animator, count: int, offset: int = 0) -> torch.Tensor:
    """Driving frames offset .. offset+count-1 made one at a time as the animator makes them (animate at
    batch 1: a step each, or with motion ahead M over the frames first, then a step each from its motion):
    count x 3 x 512 x 512, float32 on the CPU (the frames compared with reference_frames)."""
    check_positive_int(count, "count (driving frames to run)")
    if animator.source is None:
        raise RuntimeError("the animator has no source image: set one first (sample_animator does)")
    frames = driving_batch(count, offset)
    # each output copied before the next frame: a CUDA-graph replay overwrites the previous one
    return torch.cat([out.float().cpu() for out in animator.animate(frames, batch_size=1, check_values=False)])


def reference_frames(nets: dict, device: str | torch.device, count: int) -> torch.Tensor:
    """The first `count` frames of the float32, TF32-off reference recipe on `nets`: what every
    optimization is compared with."""
    return run_frames(sample_animator(recipes.build("reference", nets, device)), count)


def stage_calls(animator: pipeline.Animator, driving: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Zero-argument callables running each stage alone on the animator's networks, in their precision
    and layout (the recipe's context), eagerly and uncompiled; their inputs are prepared here, once."""
    eager = uncompiled(animator)
    with _context(animator):
        values = eager.run_stages(driving)

    def alone(run: Callable, *args) -> Callable[[], object]:
        def call():
            with _context(animator):
                return run(*args)
        return call

    return {
        "F": alone(eager.extract_feature, eager.source.image),
        "M": alone(eager.extract_motion, driving),
        "S": alone(eager.driving_keypoints, values.motion),
        "W": alone(eager.warp, values.keypoints),
        "G": alone(eager.decode, values.warped["out"]),
    }


def modules_alone(engine: Engine, batch: int, stages: tuple[str, ...] = PEER_MODULES,
                  offset: int = PARITY_FRAMES) -> FrameWork:
    """Callables, by stage, running each stage's network alone on a frame's own inputs, as the official
    speed script times its networks (it feeds random tensors): the engine's networks in their own dtype
    and layout, each compiled as the engine compiles networks (Engine.compile_nets_mode), the inputs cast
    to that dtype beforehand, keypoints included, and nothing between the calls: no keypoint math, no
    stitching, no cast of the outputs back to float32. Summed (timing.time_parts) this is the
    modules-only peer measure: the least a frame of those compiled networks can cost.

    `batch` driving frames from `offset` make one step's inputs. With motion ahead
    (Engine.motion_ahead frames, more than `batch`), M runs once over that many frames and each other
    network as many times as their steps take, so the peer gets the same batching as the recipe.

    With a reduce-overhead compile each call starts a new CUDA-graph step, so the networks replay their
    graphs without re-recording whatever order they are called in."""
    check_positive_int(batch, "batch")
    unknown = [stage for stage in stages if stage not in _MODULE_NETS]
    if unknown:
        raise ValueError(f"modules_alone times the networks of stages {', '.join(_MODULE_NETS)}; got {unknown}")
    steps = pipeline.steps_per_template(engine.motion_ahead, batch)
    # The frame's inputs from the same networks uncompiled (the same objects: a cached source term of W
    # is prepared on the network the calls run), so nothing is compiled but the timed networks.
    eager = sample_animator(dataclasses.replace(engine, compile_nets_mode=None, compile_step_mode=None))
    arguments = network_inputs(eager, driving_batch(batch, offset).to(engine.device))
    if steps > 1:  # M's only input is the frames
        arguments[MOTION_NET] = ((driving_batch(steps * batch, offset).to(engine.device),), {})

    def cast(value):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return value
        value = value.to(engine.weight_dtype)
        if engine.channels_last and value.dim() in MEMORY_FORMATS:
            value = value.contiguous(memory_format=MEMORY_FORMATS[value.dim()])
        return value

    new_graph_step = engine.compile_nets_mode == "reduce-overhead"

    def alone(stage: str) -> Callable[[], object]:
        net = engine.nets[_MODULE_NETS[stage]]
        if engine.compile_nets_mode is not None:
            net = torch.compile(net, mode=engine.compile_nets_mode)
        args, kwargs = arguments[_MODULE_NETS[stage]]
        args = tuple(cast(value) for value in args)
        kwargs = {key: cast(value) for key, value in kwargs.items()}

        calls = 1 if stage == "M" else steps

        def call():
            with engine.context():
                for _ in range(calls):
                    if new_graph_step:
                        torch.compiler.cudagraph_mark_step_begin()
                    out = net(*args, **kwargs)
            return out
        return call

    return FrameWork({stage: alone(stage) for stage in stages}, steps * batch)


def network_inputs(animator: OptimizedAnimator, driving: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """(args, kwargs) each heavy network got in one frame. Recorded on the uncompiled step: its tensors
    are plain (not CUDA-graph output buffers that a later replay overwrites), and inductor keeps eager
    output strides, so a compiled network sees the same shapes, strides and dtypes in the real step."""
    eager = uncompiled(animator)
    inputs: dict[str, tuple[tuple, dict]] = {}

    def recording(name: str, net: Callable) -> Callable:
        def call(*args, **kwargs):
            inputs[name] = (args, kwargs)
            return net(*args, **kwargs)
        return call

    eager.nets = {name: recording(name, net) if name in HEAVY_NETS else net for name, net in eager.nets.items()}
    with animator.engine.context():
        eager.run_stages(driving)
    return {name: inputs[name] for name in HEAVY_NETS}


def stage_outputs(animator: pipeline.Animator, driving: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each stage's output for one driving batch (STAGE_OUTPUT_NAMES plus "frame"), run eagerly in the
    animator's precision and layout, as float32 on the CPU."""
    eager = uncompiled(animator)
    with _context(animator):
        values = eager.run_stages(driving)
    outputs = {"f_s": eager.source.feature, "keypoints": values.keypoints, "deformation": values.warped["deformation"],
               "warped": values.warped["out"], "frame": values.frame}
    return {name: value.float().cpu() for name, value in outputs.items()}


def time_stages(animator: pipeline.Animator, driving: torch.Tensor, device: str | torch.device, *,
                warmup: int = 2, rule: timing.StoppingRule = STAGE_RULE) -> dict[str, timing.TimingResult]:
    """The timing of each stage run alone (stage_calls): its median and whether it settled. On CUDA each stage's kernels are captured once
    as a CUDA graph and its replays timed with CUDA events: the GPU time of that stage alone, without
    launch overhead. On the CPU, host time of the eager call."""
    device = torch.device(device)
    times = {}
    for stage, call in stage_calls(animator, driving).items():
        run = timing.graph_replay(call, device) if device.type == "cuda" else call
        times[stage] = timing.time_callable(run, device, warmup=warmup, rule=rule)
    return times


def stage_clock(device: str | torch.device) -> str:
    """What time_stages measures on `device`, in words (for tables and charts)."""
    if torch.device(device).type == "cuda":
        return "GPU time of each stage run alone (CUDA-graph replay, eager kernels)"
    return "host time of each stage run alone (eager call)"


def flops_per_frame(nets: dict, batch: int = 1) -> float:
    """FLOPs of one frame of the per-frame step (M, keypoint math, S, W, G; F runs once per source),
    counted with torch's flop counter on meta tensors, so nothing is computed."""
    check_positive_int(batch, "batch")
    meta = {name: copy.deepcopy(net).to("meta") for name, net in nets.items()}
    animator = pipeline.Animator(meta, stitching=pipeline.STITCHING_NET in meta)
    size = sample.PORTRAIT_SIZE
    with torch.no_grad():
        animator.set_source(torch.empty(1, 3, size, size, device="meta"))
        animator.set_reference(torch.empty(1, 3, size, size, device="meta"))
        driving = torch.empty(batch, 3, size, size, device="meta")
        return roofline.count_flops(animator.run_stages, driving).total / batch


def uncompiled(animator: pipeline.Animator) -> pipeline.Animator:
    """The animator (same source, reference and settings) over its networks unwrapped from
    torch.compile: a recipe that compiles each network would otherwise run (and capture) its own
    compiled graphs."""
    eager = copy.copy(animator)
    if isinstance(animator, OptimizedAnimator):
        eager.nets = dict(animator.eager_nets)
    return eager


def _context(animator: pipeline.Animator) -> contextlib.AbstractContextManager:
    """A recipe's grad mode, backend flags and autocast; no_grad for a plain Animator."""
    if isinstance(animator, OptimizedAnimator):
        return animator.engine.context()
    return torch.no_grad()
