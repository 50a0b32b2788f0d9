"""Inference optimizations: each one a small named step, composed into recipes.

A step edits an :class:`Engine` (lpperf.engine: its private copy of the networks plus how the
per-frame step runs). Steps that cannot apply on this machine (no CUDA, an
unsupported op, a compile error) are skipped or fall back to eager, and the
engine records which steps took effect and why the others did not:

    engine = recipes.build("fast", nets, device="cuda")
    animator = engine.animator(source)            # per-source work done here, once
    frames = animator.step(driving_batch)        # M + keypoint math + S + W + G
    engine.report()                               # {"applied": [...], "skipped": {...}, ...}

The networks given to :func:`build` are never modified (steps work on a deep copy).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from lpperf import kernels, rewrites
# Engine and its parts live in lpperf.engine; recipes.Engine, recipes.OptimizedAnimator ... stay valid.
from lpperf.engine import (HEAVY_NETS, MEMORY_FORMATS, Boundary, Engine, OptimizedAnimator,  # noqa: F401
                           SourceCachedWarp, StepNotApplicable)
from lpperf.models import DECODER_NET, FEATURE_NET, WARP_NET, SPADEDecoder
from lpperf.validation import IMAGE_SIZE

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# The in-plane size of W's volumes: F turns the 256 x 256 crop into 64 x 64 planes (two stride-2 blocks).
FEATURE_PLANE = (IMAGE_SIZE // 4, IMAGE_SIZE // 4)


# --------------------------------------------------------------------------------------
# the steps


def inference_mode(engine: Engine) -> None:
    """torch.inference_mode instead of no_grad: no version counters, no view tracking."""
    engine.inference_mode = True


def cudnn_benchmark(engine: Engine) -> None:
    """Let cuDNN time its algorithms per shape once and keep the fastest."""
    _require_cuda(engine)
    engine.cudnn_benchmark = True


def tf32_off(engine: Engine) -> None:
    """True float32 arithmetic in matmuls and convolutions: the parity reference."""
    engine.allow_tf32 = False


def autocast_fp16(engine: Engine) -> None:
    """torch.autocast to float16 (the official app's default); weights stay float32."""
    _require_cuda(engine)
    engine.autocast_dtype = torch.float16


def half(engine: Engine) -> None:
    """float16 weights and activations (the official speed script's .half())."""
    _require_cuda(engine)
    _cast_nets(engine, torch.float16)


def bfloat16(engine: Engine) -> None:
    """bfloat16 weights and activations: float32's range, so no overflow; 8 bits of mantissa."""
    _require_cuda(engine)
    _cast_nets(engine, torch.bfloat16)


def residual_float32(engine: Engine) -> None:
    """Keep G's SPADE residual stream (and its instance-norm statistics) in float32 while the
    convolutions run in half precision: the fp16 overflow past G_middle_4 cannot happen."""
    if engine.weight_dtype == torch.float32 and engine.autocast_dtype is None:
        raise StepNotApplicable("networks already run in float32")
    _inner(engine.nets[DECODER_NET]).residual_dtype = torch.float32
    _inner(engine.nets[WARP_NET]).sample_dtype = torch.float32


def fold_spectral_norm(engine: Engine) -> None:
    """Divide each spectral-norm weight by its sigma once (eval mode never updates u, v, so this is
    exact) instead of recomputing W / (u^T W v) on every forward."""
    folded = 0
    for net in engine.nets.values():
        for module in net.modules():
            if _has_spectral_norm(module):
                torch.nn.utils.remove_spectral_norm(module)
                folded += 1
    if not folded:
        raise StepNotApplicable("no spectral-norm layers left to fold")


def warp_source_cache(engine: Engine) -> None:
    """Inside W, compute what depends only on the source once per source: the compressed,
    normalised source feature and the source keypoint heatmaps."""
    warp = engine.nets[WARP_NET]
    if not hasattr(warp, "source_terms"):
        raise StepNotApplicable(f"{type(warp).__name__} cannot split off its source-only terms")
    engine.nets[WARP_NET] = SourceCachedWarp(warp)


def channels_last(engine: Engine) -> None:
    """NHWC (NDHWC for W's 3-D convolutions) so cuDNN's tensor-core kernels need no layout
    round-trips."""
    _require_cuda(engine)
    for net in engine.nets.values():
        for parameter in net.parameters():
            _set_memory_format(parameter)
    engine.channels_last = True


def pad_warp_channels(engine: Engine, multiple: int = 8) -> None:
    """Zero-pad the channels of W's dense-motion 3-D convolutions to multiples of 8 (110 -> 112 in,
    142 -> 144 through the hourglass end, 22 -> 24 mask outputs): exact, and cuDNN no longer pads
    those tensors on every call nor falls back to its slower kernels for odd channel counts."""
    dense = _inner(engine.nets[WARP_NET]).dense_motion_network
    glass = dense.hourglass
    first = glass.encoder.down_blocks[0].conv
    rewritten = [layer for layer in (first, glass.decoder.conv, dense.mask) if type(layer) is not nn.Conv3d]
    if rewritten or not isinstance(glass.decoder.norm, nn.BatchNorm3d) or (
            dense.occlusion is not None and type(dense.occlusion) is not nn.Conv2d):
        raise StepNotApplicable("W's dense-motion layers were already rewritten (fold_batch_norm, warp_depth_split "
                                "or occlusion_as_taps); pad_warp_channels must come before those steps")
    pad = -first.in_channels % multiple
    expansion = glass.out_filters - first.in_channels
    if dense.input_padding or pad == 0 or expansion % multiple:
        raise StepNotApplicable(f"hourglass channels ({first.in_channels} in, {glass.out_filters} out) "
                                f"are already padded or cannot be padded to multiples of {multiple} together")
    outputs = dense.mask.out_channels
    with torch.no_grad():
        _pad_conv(first, pad_in=pad)
        _pad_conv(glass.decoder.conv, pad_in=pad, pad_out=pad)
        glass.decoder.norm = _padded_batch_norm(glass.decoder.norm, pad)
        _pad_conv(dense.mask, pad_in=pad, pad_out=-outputs % multiple)
        if dense.occlusion is not None:  # its input is the hourglass output with depth folded into channels
            weight = dense.occlusion.weight
            per_channel = weight.unflatten(1, (glass.out_filters, -1))
            padded = torch.cat([per_channel, per_channel.new_zeros(weight.shape[0], pad, *per_channel.shape[2:])], 1)
            dense.occlusion.weight = nn.Parameter(padded.flatten(1, 2))
            dense.occlusion.in_channels = dense.occlusion.weight.shape[1]
    glass.out_filters = glass.decoder.out_filters = glass.out_filters + pad
    dense.input_padding = pad


def fold_batch_norm(engine: Engine) -> None:
    """Fold every BatchNorm that directly follows a convolution (W's hourglass and compress, F's
    conv blocks) into the convolution's weights and bias: exact, one pass over the output less."""
    folded = [name for net in engine.nets.values() for name in rewrites.fold_batch_norms(net)]
    if not folded:
        raise StepNotApplicable("no BatchNorm directly after a plain convolution left to fold")


def batch_spade_modulations(engine: Engine) -> None:
    """Compute all of G's SPADE modulations up front (they depend on G's input only): per
    resolution one convolution for every mlp_shared, then one for each SPADE's gamma and beta."""
    decoder = engine.nets[DECODER_NET]
    if not isinstance(decoder, SPADEDecoder):
        raise StepNotApplicable(f"G is a {type(decoder).__name__}, not a SPADEDecoder (already batched?)")
    engine.nets[DECODER_NET] = rewrites.batch_spade_modulations(decoder)


def phase_split_upsampled_convs(engine: Engine) -> None:
    """Run the batched shared SPADE convolutions of up_0 (2x) and up_1 (4x) at G's input resolution
    as 2x2 convolutions to every output phase plus pixel shuffle: exact, 4/9 of their FLOPs."""
    decoder = engine.nets[DECODER_NET]
    if not isinstance(decoder, rewrites.BatchedSPADEDecoder):
        raise StepNotApplicable(f"G is a {type(decoder).__name__}; phase splitting works on the shared "
                                "convolutions of batch_spade_modulations, which must run first")
    if not rewrites.phase_split_upsampled_convs(decoder):
        raise StepNotApplicable("G has no convolution of a nearest-upsampled input left (already phase-split)")


def triton_decoder_convs(engine: Engine) -> None:
    """The residual block of G's 256 x 256 stage (up_1: conv_0, conv_1 and the shortcut conv_s, 64
    outputs each at the official sizes) as lpperf.kernels.TritonConv2d: an implicit-GEMM Triton kernel
    on the card in half precision, F.conv2d elsewhere. Only those: alone at batch 1 on an H200 (torch
    2.11, 2026-11-30) the kernel beat cuDNN on them (-13, -23 and -26 %) and lost on the stage's SPADE
    gamma/beta convolutions (128 and 512 outputs: +9 and +16 %), and at batch 16 it lost on all. In the
    compiled frame its three kernels cost what cuDNN's did (kernel totals 3.864 against 3.858 ms), so
    the step is not part of `fastest`."""
    _require_cuda(engine)
    if not kernels.triton_available():
        raise StepNotApplicable("needs Triton (`import triton` fails here); CUDA builds of torch ship it")
    decoder = engine.nets[DECODER_NET]
    if not isinstance(decoder, rewrites.BatchedSPADEDecoder):
        raise StepNotApplicable(f"G is a {type(decoder).__name__}; the Triton kernel takes the residual block of "
                                "batch_spade_modulations' last stage, which must run first")
    if not kernels.triton_convs(decoder.stages[-1].blocks):
        raise StepNotApplicable("G's last residual block has no stride-1 'same' Conv2d left (already on the "
                                "Triton kernel?)")


def warp_depth_split(engine: Engine, every_conv3d: bool = False) -> None:
    """W's dense-motion mask Conv3d (7x7x7) as one Conv2d over the depth slices computing all 7 depth
    taps, then a shifted sum over the taps; with every_conv3d, all of W's Conv3d with depth kernel > 1."""
    replaced = rewrites.depth_split_conv3ds(engine.nets[WARP_NET], every_conv3d=every_conv3d)
    if not replaced:
        which = "Conv3d with a depth kernel > 1" if every_conv3d else "dense-motion mask Conv3d"
        raise StepNotApplicable(f"W has no {which} left to split (already split?)")


def warp_mask_fft(engine: Engine) -> None:
    """W's dense-motion mask Conv3d (7x7x7 on 16 x 64 x 64) with in-plane FFTs, one matmul per
    frequency and the depth taps summed as spectra, in float32 (TF32 products): ~1/20 of its FLOPs,
    but 447 MB of filter spectra kept on the device and read once per chunk of frames. For batched
    frames."""
    if not rewrites.fft_conv3ds(engine.nets[WARP_NET], FEATURE_PLANE):
        raise StepNotApplicable("W has no dense-motion mask Conv3d left (already split or in the frequency domain?)")


def warp_depth_split_all(engine: Engine) -> None:
    """warp_depth_split on every W Conv3d with depth kernel > 1 (hourglass blocks, its last conv, mask)."""
    warp_depth_split(engine, every_conv3d=True)


def occlusion_as_taps(engine: Engine) -> None:
    """W's occlusion convolution (all hourglass channels x depth -> 1, 7x7) as a 1x1 convolution to
    49 tap maps, then the maps shifted by their tap offsets and summed (a fixed one-hot 7x7 conv)."""
    dense = _inner(engine.nets[WARP_NET]).dense_motion_network
    if dense.occlusion is None:
        raise StepNotApplicable("W estimates no occlusion map")
    if not rewrites.occlusion_as_taps(engine.nets[WARP_NET]):
        raise StepNotApplicable(f"W's occlusion layer is a {type(dense.occlusion).__name__}, not a Conv2d "
                                "(already rewritten?)")


def compile_nets(mode: str) -> Callable[[Engine], None]:
    """torch.compile each heavy network separately (the official speed script's way)."""
    return _compile(mode, "compile_nets", "compile_nets_mode", "on M, W and G separately")


def compile_step(mode: str) -> Callable[[Engine], None]:
    """torch.compile the whole per-frame step (M + keypoint math + S + W + G) as one program;
    with mode='reduce-overhead' it replays as one CUDA graph."""
    return _compile(mode, "compile_step", "compile_step_mode", "on the whole per-frame step")


def _compile(mode: str, name: str, engine_field: str, scope: str) -> Callable[[Engine], None]:
    _check_compile_mode(mode)

    def step(engine: Engine) -> None:
        _require_cuda(engine)
        setattr(engine, engine_field, mode)

    step.__name__ = name
    step.__doc__ = f"torch.compile(mode={mode!r}) {scope}."
    return step


def inductor_freezing(engine: Engine) -> None:
    """Inductor treats the weights as constants: folds BatchNorm into convolutions and
    pre-packs weight layouts at compile time."""
    _require_cuda(engine)
    engine.inductor_freezing = True


# --------------------------------------------------------------------------------------
# helpers


def _require_cuda(engine: Engine) -> None:
    if not engine.is_cuda:
        raise StepNotApplicable(f"needs a CUDA device; the engine runs on {engine.device}")


def _check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; expected one of {COMPILE_MODES}")


def _cast_nets(engine: Engine, dtype: torch.dtype) -> None:
    if engine.weight_dtype != torch.float32:
        raise StepNotApplicable(f"networks are already {engine.weight_dtype}")
    for name in HEAVY_NETS + (FEATURE_NET,):
        engine.nets[name] = engine.nets[name].to(dtype)
    engine.weight_dtype = dtype
    engine.autocast_dtype = None


def _has_spectral_norm(module: nn.Module) -> bool:
    return any(isinstance(hook, SpectralNorm) for hook in module._forward_pre_hooks.values())


def _set_memory_format(parameter: torch.Tensor) -> None:
    if parameter.dim() in MEMORY_FORMATS:
        parameter.data = parameter.data.contiguous(memory_format=MEMORY_FORMATS[parameter.dim()])


def _inner(net: nn.Module) -> nn.Module:
    """The network inside a recipe wrapper (SourceCachedWarp)."""
    return getattr(net, "warp", net)


def _pad_conv(conv: nn.Module, pad_in: int = 0, pad_out: int = 0) -> None:
    """Append zero input channels and zero filters (with zero bias) to a convolution, in place."""
    weight = conv.weight
    weight = torch.cat([weight, weight.new_zeros(weight.shape[0], pad_in, *weight.shape[2:])], 1)
    weight = torch.cat([weight, weight.new_zeros(pad_out, *weight.shape[1:])], 0)
    conv.weight = nn.Parameter(weight)
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.cat([conv.bias, conv.bias.new_zeros(pad_out)]))
    conv.in_channels, conv.out_channels = weight.shape[1], weight.shape[0]


def _padded_batch_norm(norm: nn.Module, pad: int) -> nn.Module:
    """The BatchNorm with `pad` extra channels that map zeros to zeros (weight 0, bias 0)."""
    padded = type(norm)(norm.num_features + pad, eps=norm.eps).to(norm.weight.device, norm.weight.dtype).eval()
    for name, fill in (("weight", 0.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        value = getattr(norm, name)
        getattr(padded, name).copy_(torch.cat([value, value.new_full((pad,), fill)]))
    return padded


# --------------------------------------------------------------------------------------
# recipes

@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Callable[[Engine], None], ...]
    description: str
    precision: str  # the parity tolerance class of its output (lpperf.parity.Tolerance.for_precision)


def _recipe(name: str, precision: str, description: str, *steps: Callable[[Engine], None]) -> Recipe:
    return Recipe(name, tuple(steps), description, precision)


FAST_STEPS = (inference_mode, cudnn_benchmark, fold_spectral_norm, warp_source_cache, pad_warp_channels, half,
              residual_float32, channels_last, compile_step("reduce-overhead"))

# Exact rewrites, in float32 before half and channels_last cast and re-layout their weights.
EXACT_REWRITES = (fold_batch_norm, warp_depth_split, occlusion_as_taps, batch_spade_modulations,
                  phase_split_upsampled_convs)
FASTEST_STEPS = FAST_STEPS[:FAST_STEPS.index(half)] + EXACT_REWRITES + FAST_STEPS[FAST_STEPS.index(half):]
FASTEST_BATCHED_STEPS = tuple(warp_mask_fft if step is warp_depth_split else step for step in FASTEST_STEPS)
FASTEST_TRITON_STEPS = FASTEST_STEPS[:FASTEST_STEPS.index(half)] + (triton_decoder_convs,) + FASTEST_STEPS[
    FASTEST_STEPS.index(half):]

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    _recipe("fp32-eager", "tf32", "float32, eager, torch defaults (TF32 convolutions on)"),
    _recipe("reference", "fp32", "float32, eager, TF32 off: the parity reference", tf32_off),
    _recipe("autocast-fp16", "fp16", "the official app's default: autocast float16, eager",
            inference_mode, cudnn_benchmark, autocast_fp16),
    _recipe("official", "fp16", ".half() + torch.compile(mode='max-autotune') per network: the official "
            "speed script", half, compile_nets("max-autotune")),
    _recipe("official-default", "fp16", ".half() + torch.compile(mode='default') per network: the official "
            "recipe with a compile that finishes in minutes", half, compile_nets("default")),
    _recipe("official-reduce-overhead", "fp16", ".half() + torch.compile(mode='reduce-overhead') per network: "
            "the official recipe with each network replayed as a CUDA graph", half, compile_nets("reduce-overhead")),
    _recipe("official-tuned", "fp16", "official-reduce-overhead plus the one flag a tuning user adds: "
            "cudnn.benchmark (the official code leaves cuDNN to its heuristics) and inference_mode",
            inference_mode, cudnn_benchmark, half, compile_nets("reduce-overhead")),
    _recipe("fast", "fp16", "fp16 with a float32 residual stream, NHWC, source caching, whole step as one "
            "CUDA graph", *FAST_STEPS),
    _recipe("fast-bf16", "bf16", "as fast, in bfloat16 (float32's range: no residual-stream placement needed)",
            *(bfloat16 if step is half else step for step in FAST_STEPS if step is not residual_float32)),
    _recipe("fastest", "fp16", "fast plus exact layer rewrites: BatchNorm folded, W's mask Conv3d split over depth, "
            "occlusion conv as tap maps, G's SPADE modulations batched and phase-split", *FASTEST_STEPS),
    _recipe("fastest-batched", "fp16", "fastest with W's mask Conv3d in the frequency domain (float32 FFTs) "
            "instead of split over depth: for batched frames; keeps 447 MB of filter spectra", *FASTEST_BATCHED_STEPS),
    _recipe("fastest-triton", "fp16", "fastest with the residual block of G's 256x256 stage on lpperf's Triton "
            "implicit-GEMM kernel instead of cuDNN (CUDA only; elsewhere the same as fastest). Opt-in: on an "
            "H200 its kernels cost what cuDNN's do in the frame (docs/PERFORMANCE.md)", *FASTEST_TRITON_STEPS),
)}


def build(recipe: str | Recipe | Sequence[Callable[[Engine], None]], nets: dict[str, nn.Module],
          device: str | torch.device = "cuda") -> Engine:
    """Deep-copy `nets` to `device` and apply the recipe's steps, skipping those that cannot apply."""
    steps = _resolve(recipe)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(device)!r} was asked for but CUDA is not available here (torch "
                           f"{torch.__version__}, no usable GPU); build the engine with device='cpu'")
    engine = Engine(nets={name: copy.deepcopy(net).to(device).eval() for name, net in nets.items()},
                    device=device)
    for step in steps:
        try:
            step(engine)
        except StepNotApplicable as reason:
            engine.skipped[step.__name__] = str(reason)
            log.info("step %s skipped: %s", step.__name__, reason)
        else:
            engine.applied.append(step.__name__)
    return engine


def lookup(name: str) -> Recipe:
    """The recipe called `name`, or a ValueError naming the known ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def _resolve(recipe: str | Recipe | Sequence[Callable[[Engine], None]]) -> tuple:
    if isinstance(recipe, str):
        return lookup(recipe).steps
    if isinstance(recipe, Recipe):
        return recipe.steps
    return tuple(recipe)
