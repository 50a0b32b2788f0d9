"""Recipes: named lists of optimization steps (lpperf.optimize.steps), and build(), which applies one to a
private copy of the networks:

    engine = recipes.build("fast", nets, device="cuda")
    animator = engine.animator(source)            # per-source work done here, once
    frames = animator.step(driving_batch)        # M + keypoint math + S + W + G
    engine.report()                               # {"applied": [...], "skipped": {...}, ...}

A recipe is data: the names of its steps, in order. Steps that cannot apply here (no CUDA, a layer
already rewritten) are skipped with the reason; a compile that fails falls back to eager on the first
step, and says so. The networks given to build() are never modified (steps work on a deep copy).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence

import torch
from torch import nn

from lpperf.optimize import steps
from lpperf.optimize.engine import Engine, StepNotApplicable
from lpperf.optimize.steps import Step

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]


def _recipe(name: str, *step_names: str) -> Recipe:
    return Recipe(name, tuple(steps.lookup(step) for step in step_names))


def _before_half(step_names: tuple[str, ...], inserted: tuple[str, ...]) -> tuple[str, ...]:
    """Insert steps just before `half`: exact rewrites run in float32, before half and channels_last
    cast and re-lay out their weights."""
    at = step_names.index("half")
    return step_names[:at] + inserted + step_names[at:]


def _swapped(step_names: tuple[str, ...], swaps: dict[str, str]) -> tuple[str, ...]:
    """The steps with each one named in `swaps` replaced by its counterpart, in its place."""
    return tuple(swaps.get(name, name) for name in step_names)


OFFICIAL = ("half",)
FAST = ("inference_mode", "cudnn_benchmark", "fold_spectral_norm", "warp_source_cache", "pad_warp_channels", "half",
        "residual_float32", "channels_last", "compile_step[reduce-overhead]")
# W's channels padded to x32 rather than x8: -0.023 ms per frame at batch 1 (H100, torch 2.11,
# docs/PERFORMANCE.md). The depth-split mask's input is then 160 channels already, so pad_warp_mask_input,
# an exact rewrite under the x8 padding, has nothing left to do and is not among these.
FASTEST_PADDING = {"pad_warp_channels": "pad_warp_channels_x32"}
EXACT_REWRITES = ("fold_batch_norm", "phase_split_hourglass", "warp_depth_split", "occlusion_as_taps",
                  "batch_spade_modulations", "spade_norm_before_upsample", "phase_split_upsampled_convs")
FASTEST = _before_half(_swapped(FAST, FASTEST_PADDING), EXACT_REWRITES + ("triton_volume_sampling",))
# batched, W's mask runs in the frequency domain, not split over depth, and its work grows with its input
# channels: the x8 padding (x32 is unmeasured at batch 16)
BATCHED_MASK = {"warp_depth_split": "warp_mask_fft", "pad_warp_channels_x32": "pad_warp_channels"}

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    # float32, eager, torch defaults (TF32 convolutions on): every speedup's baseline
    _recipe("fp32-eager"),
    # float32, eager, TF32 off: the parity reference
    _recipe("reference", "tf32_off"),
    # the official app's default: autocast float16, eager
    _recipe("autocast-fp16", "inference_mode", "cudnn_benchmark", "autocast_fp16"),
    # .half() + torch.compile per network, as the official speed script does (max-autotune compiles for minutes)
    _recipe("official", *OFFICIAL, "compile_nets[max-autotune]"),
    _recipe("official-default", *OFFICIAL, "compile_nets[default]"),
    # each network replayed as a CUDA graph: the strongest official-style whole-step recipe
    _recipe("official-reduce-overhead", *OFFICIAL, "compile_nets[reduce-overhead]"),
    # plus the flags a tuning user adds (the official code leaves cuDNN to its heuristics)
    _recipe("official-tuned", "inference_mode", "cudnn_benchmark", *OFFICIAL, "compile_nets[reduce-overhead]"),
    # fp16 with a float32 residual stream, NHWC, source caching, the whole step as one CUDA graph
    _recipe("fast", *FAST),
    # as fast in bfloat16: float32's range, so no residual-stream placement is needed
    _recipe("fast-bf16", *(("bfloat16" if name == "half" else name) for name in FAST if name != "residual_float32")),
    # fast plus the exact layer rewrites
    _recipe("fastest", *FASTEST),
    # W's mask Conv3d in the frequency domain instead of split over depth: for batched frames (447 MB of spectra)
    _recipe("fastest-batched", *_swapped(FASTEST, BATCHED_MASK)),
    # driving frames known ahead (a video file): M over 16 of them in one call, then each step from its motion
    _recipe("fastest-motion-ahead", *FASTEST, "motion_ahead"),
    # the official speed script's networks given the same: its modules-only measure with M batched likewise
    _recipe("official-motion-ahead", *OFFICIAL, "compile_nets[reduce-overhead]", "motion_ahead"),
    # G's last residual block on lpperf's Triton kernel: opt-in, it costs what cuDNN does in the frame
    _recipe("fastest-triton", *_before_half(FASTEST, ("triton_decoder_convs",))),
    # each SPADE's gamma/beta conv and modulation as one Triton kernel: opt-in, slower in the frame
    _recipe("fastest-fused-spade", *_before_half(FASTEST, ("triton_spade_modulations",))),
)}


def lookup(name: str) -> Recipe:
    """The recipe called `name`, or a ValueError naming the known ones."""
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def build(recipe: str | Recipe | Sequence[Step], nets: dict[str, nn.Module],
          device: str | torch.device = "cuda") -> Engine:
    """Deep-copy `nets` to `device` and apply the recipe's steps, skipping those that cannot apply."""
    chosen = _resolve(recipe)
    if not isinstance(nets, dict) or not nets:
        raise ValueError(f"nets must be a non-empty dict name -> network, got {type(nets).__name__}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} was asked for but CUDA is not available here (torch "
                           f"{torch.__version__}, no usable GPU); build the engine with device='cpu'")
    engine = Engine(nets={name: copy.deepcopy(net).to(device).eval() for name, net in nets.items()},
                    device=device)
    for step in chosen:
        try:
            step(engine)
        except StepNotApplicable as reason:
            engine.skipped[step.name] = str(reason)
            log.info("step %s skipped: %s", step.name, reason)
        else:
            engine.applied.append(step)
    return engine


def _resolve(recipe: str | Recipe | Sequence[Step]) -> tuple[Step, ...]:
    if isinstance(recipe, str):
        return lookup(recipe).steps
    if isinstance(recipe, Recipe):
        return recipe.steps
    if isinstance(recipe, Sequence) and all(isinstance(step, Step) for step in recipe):
        return tuple(recipe)
    raise TypeError(f"recipe must be a recipe name, a Recipe or a sequence of lpperf.optimize.steps.Step, got {recipe!r}")
