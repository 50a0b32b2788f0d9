"""What a recipe builds: an Engine (its own copy of the networks plus how the per-frame step runs),
the float32 Boundary around half-precision networks, W with its source terms cached, and the
OptimizedAnimator whose step runs under the engine's settings (compiled, with an eager fallback).
The steps that edit an Engine, and the recipes, are in lpperf.optimize.recipes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator

import torch
from torch import nn

from lpperf.animation import pipeline
from lpperf.models import DECODER_NET, FEATURE_NET, MOTION_NET, WARP_NET

log = logging.getLogger(__name__)

CONVOLUTIONAL_NETS = (FEATURE_NET, MOTION_NET, WARP_NET, DECODER_NET)
HEAVY_NETS = (MOTION_NET, WARP_NET, DECODER_NET)  # the per-frame networks
MEMORY_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


class StepNotApplicable(RuntimeError):
    """A step cannot apply here; the engine records the reason and carries on without it."""


@dataclasses.dataclass
class Engine:
    """Networks plus the settings of the per-frame step; what a recipe builds."""

    nets: dict[str, nn.Module]
    device: torch.device
    weight_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    inference_mode: bool = False
    cudnn_benchmark: bool = False
    allow_tf32: bool = True
    channels_last: bool = False
    compile_nets_mode: str | None = None
    compile_step_mode: str | None = None
    # torch._inductor.config settings the engine's compiles run under (see Engine.compile)
    inductor_settings: dict[str, object] = dataclasses.field(default_factory=dict)
    # driving frames whose motion animate() extracts in one M call ahead of their steps (1: M in each step);
    # a measure times that many frames as one unit (lpperf.measure.frame.step_work)
    motion_ahead: int = 1
    applied: list = dataclasses.field(default_factory=list)  # the lpperf.optimize.steps.Step objects that took effect
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # step name -> why it did not apply
    compile_seconds: float | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def replays_graphs(self) -> bool:
        """Whether the compiled step runs as CUDA graphs (torch.compile's reduce-overhead)."""
        return self.is_cuda and "reduce-overhead" in (self.compile_step_mode, self.compile_nets_mode)

    @property
    def compiled(self) -> bool:
        """Whether the step runs through torch.compile (whole, or network by network). A compile that
        failed on the first step fell back to eager and is no longer counted."""
        return self.compile_step_mode is not None or self.compile_nets_mode is not None

    @property
    def precision(self) -> str:
        """The parity tolerance class (lpperf.measure.parity.Tolerance.for_precision) of what the engine computes:
        read from what runs, so a recipe whose half-precision steps were skipped on the CPU is float32."""
        dtype = self.autocast_dtype or self.weight_dtype
        if dtype == torch.float16:
            return "fp16"
        if dtype == torch.bfloat16:
            return "bf16"
        return "tf32" if self.is_cuda and self.allow_tf32 else "fp32"

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Grad mode, cuDNN/TF32 flags and autocast for the step, restored afterwards."""
        grad = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with contextlib.ExitStack() as stack:
            stack.enter_context(grad)
            stack.enter_context(torch.backends.cudnn.flags(
                enabled=True, benchmark=self.cudnn_benchmark, deterministic=False, allow_tf32=self.allow_tf32))
            stack.enter_context(_matmul_tf32(self.allow_tf32))
            if self.autocast_dtype is not None:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
            yield

    def compile(self, fn, mode: str):
        """torch.compile(fn, mode=mode), with the engine's inductor settings added to the mode's. They go in as
        torch.compile's options, not as a config patched around the first call: the options are part of
        what dynamo matches a compiled program on, so a function another engine of this process compiled
        without them is compiled again, not reused."""
        if not self.inductor_settings:
            return torch.compile(fn, mode=mode)
        from torch._inductor import list_mode_options

        return torch.compile(fn, options={**list_mode_options(mode), **self.inductor_settings})

    def animator(self, source: torch.Tensor, reference: torch.Tensor | None = None,
                 **options) -> "OptimizedAnimator":
        """An Animator over this engine's networks with `source` set (and the relative-motion
        `reference` driving frame, if given); its step runs as the recipe says."""
        if not isinstance(source, torch.Tensor):
            raise ValueError(f"source must be an image tensor (1, 3, 256, 256) in [0, 1], got {type(source).__name__}")
        nets = dict(self.nets)
        if self.weight_dtype != torch.float32 or self.channels_last:
            for name in CONVOLUTIONAL_NETS:
                nets[name] = Boundary(nets[name], self.weight_dtype, self.channels_last).eval()
        eager_nets = dict(nets)
        if self.compile_nets_mode is not None:
            for name in HEAVY_NETS:
                nets[name] = self.compile(nets[name], self.compile_nets_mode)
        options.setdefault("motion_ahead", self.motion_ahead)
        animator = OptimizedAnimator(nets, self, eager_nets=eager_nets, **options)
        animator.set_source(source.to(self.device))
        if reference is not None:
            animator.set_reference(reference.to(self.device))
        return animator

    def report(self) -> dict:
        return {"applied": [step.name for step in self.applied], "skipped": dict(self.skipped),
                "compile_seconds": self.compile_seconds}


class Boundary(nn.Module):
    """Runs `net` in `dtype` (and channels-last layout): floating inputs are cast on the way in,
    floating outputs come back as float32, so the keypoint math between networks stays float32."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.net = net
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, *args, **kwargs):
        args = [self._cast_in(a) for a in args]
        kwargs = {key: self._cast_in(value) for key, value in kwargs.items()}
        out = self.net(*args, **kwargs)
        if isinstance(out, dict):
            return {key: _float32(value) for key, value in out.items()}
        return _float32(out)

    def _cast_in(self, value):
        # Images and feature volumes take the network's dtype; keypoints (3-D) stay float32.
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() < 4:
            return value
        value = value.to(self.dtype)
        if self.channels_last and value.dim() in MEMORY_FORMATS:
            value = value.contiguous(memory_format=MEMORY_FORMATS[value.dim()])
        return value


class OptimizedAnimator(pipeline.Animator):
    """A pipeline.Animator whose source, reference and per-frame work run under the engine's context.
    If the recipe compiles the step, each of the three entry points (step; motion_template and
    step_from_motion, for frames known ahead) is compiled as its own program, falling back to eager
    (and recording why) if a compilation fails. animate() streams through them."""

    def __init__(self, nets: dict, engine: Engine, eager_nets: dict | None = None, **options):
        super().__init__(nets, **options)
        self.engine = engine
        self.eager_nets = dict(nets if eager_nets is None else eager_nets)  # the networks, not compiled
        self._eager_calls = {"step": super().step, "motion": self._motion_tensors,
                             "from_motion": self._frames_from_motion_tensors}
        self._calls = dict(self._eager_calls)
        if engine.compile_step_mode is not None:
            self._calls = {name: engine.compile(call, engine.compile_step_mode)
                           for name, call in self._eager_calls.items()}
        compiling = engine.compile_step_mode is not None or engine.compile_nets_mode is not None
        self._compiled_once: set[str] = set() if compiling else set(self._calls)
        self._benchmarked_shapes: set[tuple[str, torch.Size]] = set()
        self._held = HeldAddresses()

    def set_source(self, image: torch.Tensor, **kwargs) -> pipeline.SourceState:
        with self.engine.context():
            state = super().set_source(image, **kwargs)
            warp = self.engine.nets[WARP_NET]
            if isinstance(warp, SourceCachedWarp):
                Boundary(warp.prepare, self.engine.weight_dtype, self.engine.channels_last)(
                    state.feature, state.keypoints)
            if self.engine.replays_graphs:
                for name in ("image", "feature", "keypoints"):
                    setattr(state, name, self._held.hold(f"source.{name}", getattr(state, name)))
                state.motion = self._held.hold_motion("source.motion", state.motion)
                if state.lip_delta is not None:
                    state.lip_delta = self._held.hold("source.lip_delta", state.lip_delta)
                if isinstance(warp, SourceCachedWarp):
                    warp.terms = {name: self._held.hold(f"warp.{name}", value) for name, value in warp.terms.items()}
        return state

    def set_reference(self, frame: torch.Tensor) -> pipeline.Motion:
        with self.engine.context():
            reference = super().set_reference(frame)
            if self.engine.replays_graphs:
                self.reference = reference = self._held.hold_motion("reference", reference)
        return reference

    def step(self, driving: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._call("step", driving.shape, driving, **kwargs)

    def motion_template(self, frames: torch.Tensor) -> pipeline.Motion:
        # A copy: a CUDA-graph replay overwrites its outputs, and the motion outlives the next replays.
        return pipeline.Motion(*self._call("motion", frames.shape, frames)).copy()

    def step_from_motion(self, motion: pipeline.Motion, **kwargs) -> torch.Tensor:
        if not isinstance(motion, pipeline.Motion):  # checked again inside, where the tensors are known
            raise ValueError(f"motion must be a lpperf.animation.pipeline.Motion (from motion_template), "
                             f"got {type(motion).__name__}")
        return self._call("from_motion", motion.canonical.shape, *motion.tensors(), **kwargs)

    def _motion_tensors(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return pipeline.Animator.motion_template(self, frames).tensors()

    def _frames_from_motion_tensors(self, *tensors: torch.Tensor, **kwargs) -> torch.Tensor:
        return pipeline.Animator.step_from_motion(self, pipeline.Motion(*tensors), **kwargs)

    def _call(self, name: str, shape: torch.Size, *args, **kwargs):
        with self.engine.context():
            if self.engine.compile_nets_mode == "reduce-overhead" or (
                    name != "step" and self.engine.compile_step_mode == "reduce-overhead"):
                # Each compiled program is its own CUDA graph: say that a new call begins, so the graphs
                # may reuse their output buffers (else they refuse and the call silently runs eager).
                torch.compiler.cudagraph_mark_step_begin()
            if name in self._compiled_once:
                out = self._calls[name](*args, **kwargs)
            else:
                out = self._first_compiled_call(name, *args, **kwargs)
        self._release_benchmark_workspaces((name, shape))
        return out

    def _release_benchmark_workspaces(self, key: tuple[str, torch.Size]) -> None:
        """With cudnn.benchmark, the first call at each input shape times cuDNN's algorithms for every
        convolution; their trial workspaces go through torch's caching allocator and stay reserved
        afterwards (measured on an H200: 66 GB for one of G's batched modulation convolutions in float32,
        where the whole step needs 1.5 GB). Hand them back once that call is done."""
        if (self.engine.cudnn_benchmark and self.engine.is_cuda and key not in self._benchmarked_shapes
                and not torch.cuda.is_current_stream_capturing()):
            self._benchmarked_shapes.add(key)
            torch.cuda.synchronize(self.engine.device)
            torch.cuda.empty_cache()

    def _first_compiled_call(self, name: str, *args, **kwargs):
        start = time.perf_counter()
        try:
            out = self._calls[name](*args, **kwargs)
            if self.engine.is_cuda:
                torch.cuda.synchronize(self.engine.device)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: run eager, say why
            reason = f"torch.compile failed, running eager: {type(error).__name__}: {str(error)[:300]}"
            log.warning(reason)
            for step in [step for step in self.engine.applied if step.compile_scope is not None]:
                self.engine.applied.remove(step)
                self.engine.skipped[step.name] = reason
            self.engine.compile_step_mode = self.engine.compile_nets_mode = None
            self.nets.update(self.eager_nets)
            self._calls = dict(self._eager_calls)
            self._compiled_once = set(self._calls)
            out = self._calls[name](*args, **kwargs)
        # every program compiled so far: the step, and motion_template and step_from_motion where used
        self.engine.compile_seconds = (self.engine.compile_seconds or 0.0) + time.perf_counter() - start
        self._compiled_once.add(name)
        return out


class HeldAddresses:
    """Tensors that a CUDA graph reads where they lie, one address per role for as long as the animator
    lives. A new value of the same shape, dtype and layout is copied into the tensor held for its role.
    Each held tensor is marked static, so the graph's replays copy nothing in (unmarked, torch copies
    every input that is not a parameter into the graph's own buffer on every replay), and a new source
    never makes torch re-record the graph (after 128 re-records torch stops replaying it, silently)."""

    def __init__(self):
        self._held: dict[str, torch.Tensor] = {}

    def hold(self, role: str, value: torch.Tensor) -> torch.Tensor:
        held = self._held.get(role)
        if held is not None and (held.shape, held.dtype, held.device, held.stride()) == (
                value.shape, value.dtype, value.device, value.stride()):
            held.copy_(value)
            return held
        torch._dynamo.mark_static_address(value, guard=False)
        self._held[role] = value
        return value

    def hold_motion(self, role: str, motion: pipeline.Motion) -> pipeline.Motion:
        return pipeline.Motion(*(self.hold(f"{role}.{field}", value)
                                 for field, value in zip(pipeline.Motion.__dataclass_fields__, motion.tensors())))


class SourceCachedWarp(nn.Module):
    """W whose source-only terms are computed by prepare() once per source, then reused."""

    def __init__(self, warp: nn.Module):
        super().__init__()
        self.warp = warp
        self.terms: dict[str, torch.Tensor] | None = None
        self.train(warp.training)

    def prepare(self, feature_3d: torch.Tensor, kp_source: torch.Tensor) -> None:
        self.terms = self.warp.source_terms(feature_3d, kp_source)

    def forward(self, feature_3d, kp_driving, kp_source):
        if self.terms is None:
            raise RuntimeError("SourceCachedWarp.prepare(feature, kp_source) must run once per source first")
        return self.warp(feature_3d, kp_driving, kp_source, source_terms=self.terms)


def _float32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


@contextlib.contextmanager
def _matmul_tf32(allow: bool) -> Iterator[None]:
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous

