"""Inference optimizations: each one a registered step that edits an Engine (lpperf.optimize.engine: its private
copy of the networks plus how the per-frame step runs). A step says what it is; the registry answers:

    @register("+ fold BatchNorm into convs")
    def fold_batch_norm(engine): ...          # raises StepNotApplicable where it cannot apply

    STEPS["fold_batch_norm"].label           # the waterfall's row label
    compile_step("reduce-overhead")          # the step compiling the whole per-frame step that way
    lookup("half")                           # a ValueError naming the known steps otherwise

A step that cannot apply on this machine (no CUDA, an unsupported layer, already rewritten) raises
StepNotApplicable with the reason; lpperf.optimize.recipes.build records it and carries on. What an engine ends
up doing (compiled or not, in which precision) is read from the engine, never from step names.

Over 400 lines on purpose: every step sits beside the registry that describes it (each is ~10 lines).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from lpperf.optimize import kernels, modulation, rewrites, sampling
from lpperf.optimize.engine import HEAVY_NETS, MEMORY_FORMATS, Engine, SourceCachedWarp, StepNotApplicable
from lpperf.models import DECODER_NET, FEATURE_NET, WARP_NET, SPADEDecoder
from lpperf.models.warping import DepthFoldedConv2d
from lpperf.util.validation import IMAGE_SIZE

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# motion_ahead's frames per M call: at 16, M cost 0.149 ms per frame against 0.93 ms one frame at a time
# (H100, torch 2.11, fastest's precision; docs/PERFORMANCE.md): more frames could save at most that 0.149 ms.
MOTION_AHEAD_FRAMES = 16

# The in-plane size of W's volumes: F turns the 256 x 256 crop into 64 x 64 planes (two stride-2 blocks).
FEATURE_PLANE = (IMAGE_SIZE // 4, IMAGE_SIZE // 4)


class CompileScope(enum.Enum):
    """What a compile step hands to torch.compile."""

    NETS = "each network"  # M, W and G separately (the official speed script's way)
    STEP = "whole step"  # M + keypoint math + S + W + G as one program


@dataclasses.dataclass(frozen=True, eq=False)
class Step:
    """One optimization: its registry name, its waterfall label and what applying it does. Steps are
    registered once and compared by identity; comparing one with a string is a mistake and raises."""

    name: str
    label: str
    apply: Callable[[Engine], None] = dataclasses.field(repr=False, compare=False)
    compile_scope: CompileScope | None = None
    compile_mode: str | None = None

    def __call__(self, engine: Engine) -> None:
        self.apply(engine)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            raise TypeError(f"step {self.name!r} compared with the string {other!r}: compare steps "
                            f"(lpperf.optimize.steps.lookup({other!r})) or names (step.name)")
        return self is other

    __hash__ = object.__hash__

    def with_compile_mode(self, mode: str) -> "Step":
        """The same compile step with another torch.compile mode (the waterfall shows a reduce-overhead
        compile first in mode 'default': the compile alone, then the CUDA graphs)."""
        if self.compile_scope is None:
            raise ValueError(f"step {self.name!r} does not compile")
        return _compile_steps[self.compile_scope][mode]


STEPS: dict[str, Step] = {}


def register(label: str) -> Callable[[Callable[[Engine], None]], Step]:
    """Register the decorated function as the step of its name, shown as `label` in the waterfall."""
    def wrap(apply: Callable[[Engine], None]) -> Step:
        return _add(Step(apply.__name__, label, apply))
    return wrap


def _add(step: Step) -> Step:
    if step.name in STEPS:
        raise ValueError(f"a step named {step.name!r} is already registered")
    STEPS[step.name] = step
    return step


def lookup(name: str) -> Step:
    """The registered step called `name`, or a ValueError naming the known ones."""
    if name not in STEPS:
        raise ValueError(f"unknown step {name!r}; known steps: {', '.join(STEPS)}")
    return STEPS[name]


def _compile_step(scope: CompileScope, mode: str) -> Step:
    field = "compile_nets_mode" if scope is CompileScope.NETS else "compile_step_mode"

    def apply(engine: Engine) -> None:
        _require_cuda(engine)
        setattr(engine, field, mode)

    apply.__doc__ = f"torch.compile(mode={mode!r}) on {scope.value}."
    label = "+ CUDA graph (reduce-overhead)" if mode == "reduce-overhead" else f"+ compile {scope.value} ({mode})"
    name = f"compile_{'nets' if scope is CompileScope.NETS else 'step'}[{mode}]"
    return _add(Step(name, label, apply, compile_scope=scope, compile_mode=mode))


_compile_steps = {scope: {mode: _compile_step(scope, mode) for mode in COMPILE_MODES} for scope in CompileScope}


def compile_nets(mode: str) -> Step:
    """torch.compile each heavy network separately (the official speed script's way)."""
    return _compile_steps[CompileScope.NETS][_checked_mode(mode)]


def compile_step(mode: str) -> Step:
    """torch.compile the whole per-frame step (M + keypoint math + S + W + G) as one program;
    with mode='reduce-overhead' it replays as one CUDA graph."""
    return _compile_steps[CompileScope.STEP][_checked_mode(mode)]


def _checked_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; expected one of {COMPILE_MODES}")
    return mode


# --------------------------------------------------------------------------------------
# the steps


@register('+ inference_mode')
def inference_mode(engine: Engine) -> None:
    """torch.inference_mode instead of no_grad: no version counters, no view tracking."""
    engine.inference_mode = True


@register('+ cudnn.benchmark')
def cudnn_benchmark(engine: Engine) -> None:
    """Let cuDNN time its algorithms per shape once and keep the fastest."""
    _require_cuda(engine)
    engine.cudnn_benchmark = True


@register('+ TF32 off')
def tf32_off(engine: Engine) -> None:
    """True float32 arithmetic in matmuls and convolutions: the parity reference."""
    engine.allow_tf32 = False


@register('+ autocast fp16')
def autocast_fp16(engine: Engine) -> None:
    """torch.autocast to float16 (the official app's default); weights stay float32."""
    _require_cuda(engine)
    engine.autocast_dtype = torch.float16


@register('+ fp16 weights (.half())')
def half(engine: Engine) -> None:
    """float16 weights and activations (the official speed script's .half())."""
    _require_cuda(engine)
    _cast_nets(engine, torch.float16)


@register('+ bf16 weights')
def bfloat16(engine: Engine) -> None:
    """bfloat16 weights and activations: float32's range, so no overflow; 8 bits of mantissa."""
    _require_cuda(engine)
    _cast_nets(engine, torch.bfloat16)


@register('+ fp32 residual stream in G')
def residual_float32(engine: Engine) -> None:
    """Keep G's SPADE residual stream (and its instance-norm statistics) in float32 while the
    convolutions run in half precision: the fp16 overflow past G_middle_4 cannot happen."""
    if engine.weight_dtype == torch.float32 and engine.autocast_dtype is None:
        raise StepNotApplicable("networks already run in float32")
    _inner(engine.nets[DECODER_NET]).residual_dtype = torch.float32
    _inner(engine.nets[WARP_NET]).sample_dtype = torch.float32


@register('+ fold spectral norm')
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


@register('+ W source cache')
def warp_source_cache(engine: Engine) -> None:
    """Inside W, compute what depends only on the source once per source: the compressed,
    normalised source feature and the source keypoint heatmaps."""
    warp = engine.nets[WARP_NET]
    if not hasattr(warp, "source_terms"):
        raise StepNotApplicable(f"{type(warp).__name__} cannot split off its source-only terms")
    engine.nets[WARP_NET] = SourceCachedWarp(warp)


@register('+ channels_last')
def channels_last(engine: Engine) -> None:
    """NHWC (NDHWC for W's 3-D convolutions) so cuDNN's tensor-core kernels need no layout
    round-trips."""
    _require_cuda(engine)
    for net in engine.nets.values():
        for parameter in net.parameters():
            _set_memory_format(parameter)
    engine.channels_last = True


# W's mask outputs padded to 24, whatever the hourglass's channel multiple: 7 depth taps x 32 outputs
# took 611 us against 465 for 7 x 24 alone (H100, torch 2.11)
MASK_OUTPUT_MULTIPLE = 8


@register("+ pad W's 3-D conv channels to x8")
def pad_warp_channels(engine: Engine) -> None:
    """Zero-pad the channels of W's dense-motion 3-D convolutions to multiples of 8 (110 -> 112 in,
    142 -> 144 through the hourglass end, 22 -> 24 mask outputs): exact, and cuDNN no longer pads
    those tensors on every call nor falls back to its slower kernels for odd channel counts."""
    _pad_dense_motion_channels(engine, 8)


@register("+ pad W's 3-D conv channels to x32")
def pad_warp_channels_x32(engine: Engine) -> None:
    """pad_warp_channels to multiples of 32 (110 -> 128 in, 142 -> 160 through the hourglass end; the
    mask's outputs still 22 -> 24): the first conv's reduction fills whole 32-channel tiles, and the
    depth-split mask then reads its 160 input channels without padding them (pad_warp_mask_input has
    nothing left to do)."""
    _pad_dense_motion_channels(engine, 32)


def _pad_dense_motion_channels(engine: Engine, multiple: int) -> None:
    dense = _inner(engine.nets[WARP_NET]).dense_motion_network
    glass = dense.hourglass
    first = glass.encoder.down_blocks[0].conv
    rewritten = [layer for layer in (first, glass.decoder.conv, dense.mask) if type(layer) is not nn.Conv3d]
    if rewritten or not isinstance(glass.decoder.norm, nn.BatchNorm3d) or (
            dense.occlusion is not None and type(dense.occlusion) is not DepthFoldedConv2d):
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
        _pad_conv(dense.mask, pad_in=pad, pad_out=-outputs % MASK_OUTPUT_MULTIPLE)
        if dense.occlusion is not None:  # its input is the hourglass output with depth folded into channels
            weight = dense.occlusion.weight
            per_channel = weight.unflatten(1, (glass.out_filters, -1))
            padded = torch.cat([per_channel, per_channel.new_zeros(weight.shape[0], pad, *per_channel.shape[2:])], 1)
            dense.occlusion.weight = nn.Parameter(padded.flatten(1, 2))
            dense.occlusion.in_channels = dense.occlusion.weight.shape[1]
    glass.out_filters = glass.decoder.out_filters = glass.out_filters + pad
    dense.input_padding = pad


@register('+ fold BatchNorm into convs')
def fold_batch_norm(engine: Engine) -> None:
    """Fold every BatchNorm that directly follows a convolution (W's hourglass and compress, F's
    conv blocks) into the convolution's weights and bias: exact, one pass over the output less."""
    folded = [name for net in engine.nets.values() for name in rewrites.fold_batch_norms(net)]
    if not folded:
        raise StepNotApplicable("no BatchNorm directly after a plain convolution left to fold")


@register("+ G's SPADE modulations batched")
def batch_spade_modulations(engine: Engine) -> None:
    """Compute all of G's SPADE modulations up front (they depend on G's input only): per
    resolution one convolution for every mlp_shared, then one for each SPADE's gamma and beta."""
    decoder = engine.nets[DECODER_NET]
    if not isinstance(decoder, SPADEDecoder):
        raise StepNotApplicable(f"G is a {type(decoder).__name__}, not a SPADEDecoder (already batched?)")
    engine.nets[DECODER_NET] = rewrites.batch_spade_modulations(decoder)


@register("+ G's norms before the upsampling")
def spade_norm_before_upsample(engine: Engine) -> None:
    """G's up_0 and up_1 stages normalise the residual stream before its nearest upsampling instead
    of after (the same statistics, every value being repeated alike): the norm's reduction runs over
    a quarter of the values, and the upsampled stream itself is never written."""
    decoder = _batched_decoder(engine, "the norms move within the stages")
    if not rewrites.normalize_before_upsample(decoder):
        raise StepNotApplicable("G's upsampling stages already normalise before upsampling")


@register("+ G's upsampled convs phase-split")
def phase_split_upsampled_convs(engine: Engine) -> None:
    """Run the batched shared SPADE convolutions of up_0 (2x) and up_1 (4x) at G's input resolution
    as 2x2 convolutions to every output phase plus pixel shuffle: exact, 4/9 of their FLOPs."""
    decoder = _batched_decoder(engine, "phase splitting works on the shared convolutions")
    if not rewrites.phase_split_upsampled_convs(decoder):
        raise StepNotApplicable("G has no convolution of a nearest-upsampled input left (already phase-split)")


@register("+ W's hourglass upsampling phase-split")
def phase_split_hourglass(engine: Engine) -> None:
    """Each of W's hourglass decoder blocks (nearest 2x upsampling of the plane, then a 3x3x3 Conv3d)
    as one Conv3d with a 3x2x2 kernel at the input's resolution to the four phases of every output
    channel, plus pixel shuffle: exact, 4/9 of their FLOPs, and four times the output channels on a
    quarter of the voxels; the upsampled input is never written."""
    if not rewrites.phase_split_upsampling_blocks(engine.nets[WARP_NET]):
        raise StepNotApplicable("W has no upsampling conv block left (already phase-split)")


# a SPADE residual block's own convolutions (its SPADEs' gamma/beta convolutions are not among them)
RESIDUAL_CONVS = ("conv_0", "conv_1", "conv_s")


@register("+ G's last block on a Triton kernel")
def triton_decoder_convs(engine: Engine) -> None:
    """The residual block of G's 256 x 256 stage (up_1: conv_0, conv_1 and the shortcut conv_s, 64
    outputs each at the official sizes) as lpperf.optimize.kernels.TritonConv2d: an implicit-GEMM Triton kernel
    on the card in half precision, F.conv2d elsewhere. Only those: alone at batch 1 on an H200 (torch
    2.11) the kernel beat cuDNN on them (-13, -23 and -26 %) and lost on the stage's SPADE gamma/beta
    convolutions (+9 and +16 %), and at batch 16 it lost on all. In the compiled frame its kernels cost
    what cuDNN's did (kernel totals 3.864 against 3.858 ms), so the step is not part of `fastest`."""
    _require_triton(engine)
    decoder = _batched_decoder(engine, "the Triton kernel takes the residual block of the last stage")
    if not kernels.triton_convs(decoder.stages[-1].blocks, names=RESIDUAL_CONVS):
        raise StepNotApplicable("G's last residual block has no stride-1 'same' Conv2d left (already on the "
                                "Triton kernel?)")


@register("+ G's SPADE modulations fused on a Triton kernel")
def triton_spade_modulations(engine: Engine) -> None:
    """Each of G's SPADEs as one Triton kernel (lpperf.optimize.modulation): its gamma/beta convolution
    with the modulation (and the leaky ReLU after it) applied to the accumulators, so gamma and beta
    are never written to memory; only the activation is. On the card in half precision; the same
    PyTorch ops elsewhere. Alone it beat cuDNN plus the modulation only at 256 x 256 (H100, torch 2.11),
    and even that stage cost the frame 0.16 ms, so the step is not part of `fastest`."""
    _require_triton(engine)
    decoder = _batched_decoder(engine, "the kernel takes the SPADEs' gamma/beta convolutions")
    if not modulation.fused_spade_modulations(decoder):
        raise StepNotApplicable("G's SPADE modulations are already on the fused kernel")


@register("+ W's mask Conv3d split over depth")
def warp_depth_split(engine: Engine) -> None:
    """W's dense-motion mask Conv3d (7x7x7) as one Conv2d over the depth slices computing all 7 depth
    taps, then a shifted sum over the taps."""
    _depth_split(engine, every_conv3d=False)


@register("+ W's mask input padded to x32")
def pad_warp_mask_input(engine: Engine, multiple: int = 32) -> None:
    """Zero input channels for W's depth-split mask convolution up to a multiple of 32 (144 -> 160
    at the official sizes): exact, and the convolution's reduction then fills whole 32-channel tiles
    per filter tap instead of splitting one across two taps."""
    mask = _inner(engine.nets[WARP_NET]).dense_motion_network.mask
    if not isinstance(mask, rewrites.DepthSplitConv3d):
        raise StepNotApplicable(f"W's mask is a {type(mask).__name__}; its input is padded once it is split over "
                                "depth (warp_depth_split must run first)")
    if mask.input_padding or not mask.pad_input_channels(multiple):
        raise StepNotApplicable(f"W's mask input is already padded to a multiple of {multiple} channels")


@register("+ W's volume sampling on a Triton kernel")
def triton_volume_sampling(engine: Engine) -> None:
    """W's two 5-D grid_samples (the compressed feature at every candidate motion, the feature volume at
    the deformation) on lpperf.optimize.sampling's Triton kernel: the same trilinear arithmetic in
    float32, a block of points x every channel per program, the volume read where it lies instead of
    repeated per candidate. Where it cannot apply (sampled in half precision, off the card) W samples
    as before."""
    _require_triton(engine)
    dense = _inner(engine.nets[WARP_NET]).dense_motion_network
    if dense.sampler is sampling.sample_volumes_on_kernel:
        raise StepNotApplicable("W already samples on the Triton kernel")
    dense.sampler = sampling.sample_volumes_on_kernel


@register("+ W's mask Conv3d via FFT")
def warp_mask_fft(engine: Engine) -> None:
    """W's dense-motion mask Conv3d (7x7x7 on 16 x 64 x 64) with in-plane FFTs, one matmul per
    frequency and the depth taps summed as spectra, in float32 (TF32 products): ~1/20 of its FLOPs,
    but 447 MB of filter spectra kept on the device and read once per chunk of frames. For batched
    frames."""
    if not rewrites.fft_conv3ds(engine.nets[WARP_NET], FEATURE_PLANE):
        raise StepNotApplicable("W has no dense-motion mask Conv3d left (already split or in the frequency domain?)")


@register("+ W's Conv3d split over depth")
def warp_depth_split_all(engine: Engine) -> None:
    """warp_depth_split on every W Conv3d with depth kernel > 1 (hourglass blocks, its last conv, mask)."""
    _depth_split(engine, every_conv3d=True)


def _depth_split(engine: Engine, every_conv3d: bool) -> None:
    if not rewrites.depth_split_conv3ds(engine.nets[WARP_NET], every_conv3d=every_conv3d):
        which = "Conv3d with a depth kernel > 1" if every_conv3d else "dense-motion mask Conv3d"
        raise StepNotApplicable(f"W has no {which} left to split (already split?)")


@register('+ occlusion conv as tap maps')
def occlusion_as_taps(engine: Engine) -> None:
    """W's occlusion convolution (all hourglass channels x depth -> 1, 7x7) as a full-depth 1x1 Conv3d
    to 49 tap maps that reads the hourglass output where it lies, then the maps shifted by their tap
    offsets and summed."""
    dense = _inner(engine.nets[WARP_NET]).dense_motion_network
    if dense.occlusion is None:
        raise StepNotApplicable("W estimates no occlusion map")
    if not rewrites.occlusion_as_taps(engine.nets[WARP_NET]):
        raise StepNotApplicable(f"W's occlusion layer is a {type(dense.occlusion).__name__}, not a DepthFoldedConv2d "
                                "(already rewritten?)")


@register('+ M batched ahead over 16 driving frames')
def motion_ahead(engine: Engine) -> None:
    """For driving frames known ahead (a video file, not a live camera): M runs over MOTION_AHEAD_FRAMES of
    them in one call before their steps, as the official pipeline extracts a video's motion template
    first (one frame at a time there). The same function; M's small kernels fill the card at a batch."""
    engine.motion_ahead = MOTION_AHEAD_FRAMES


@register('+ inductor freezing')
def inductor_freezing(engine: Engine) -> None:
    """Inductor treats the weights as constants: folds BatchNorm into convolutions and
    pre-packs weight layouts at compile time."""
    _require_cuda(engine)
    engine.inductor_settings["freezing"] = True


@register("+ inductor's kernels tuned by coordinate descent")
def inductor_coordinate_descent(engine: Engine) -> None:
    """Inductor times each Triton kernel it generates at neighbouring block sizes, warp counts and stages
    (coordinate descent from its heuristic choice) at compile time and keeps the fastest. The frame's
    inductor kernels are its norms and modulations, memory-bound, where the block shape decides how much
    of the card's bandwidth they reach. Same arithmetic per element; a reduction's tile may change its
    summation order. Lengthens the compile."""
    _require_cuda(engine)
    engine.inductor_settings["coordinate_descent_tuning"] = True


# --------------------------------------------------------------------------------------
# helpers


def _require_cuda(engine: Engine) -> None:
    if not engine.is_cuda:
        raise StepNotApplicable(f"needs a CUDA device; the engine runs on {engine.device}")


def _require_triton(engine: Engine) -> None:
    _require_cuda(engine)
    if not kernels.triton_available():
        raise StepNotApplicable("needs Triton (`import triton` fails here); CUDA builds of torch ship it")


def _batched_decoder(engine: Engine, why: str) -> rewrites.BatchedSPADEDecoder:
    """G as batch_spade_modulations makes it, which the step needs; `why` says what of it the step takes."""
    decoder = engine.nets[DECODER_NET]
    if not isinstance(decoder, rewrites.BatchedSPADEDecoder):
        raise StepNotApplicable(f"G is a {type(decoder).__name__}; {why} of batch_spade_modulations, which "
                                "must run first")
    return decoder


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


