"""FP8 (e4m3) convolutions, simulated exactly in float32: which layers can run in FP8 and keep the frame
within the fp16 parity budget, decided before an FP8 kernel is written for them.

The format. `torch.float8_e4m3fn` has 3 mantissa bits and a largest value of 448. Rounding a value
in its normal range to the nearest e4m3 number moves it by at most half a unit in the last place, a
relative error of at most 2^-4; below 2^-6 (subnormals) the error is absolute, at most 2^-10.

The scheme (what Hopper's FP8 tensor cores compute, accumulating in float32):

    y = conv(q(x / s_x), q(W / s_w)) * s_x * s_w[o] + b

with one weight scale per output channel, s_w[o] = max|W[o]| / 448 (no weight is clipped), and the
activations scaled in one of two ways:

* per tensor (`channel_block=None`): s_x = a / 448, a the largest |x| the layer saw on calibration
  frames; an input beyond it on another frame is clipped to +-a;
* per input pixel and block of `channel_block` channels: s_x = max |x| over the block / 448, from the
  input itself (nothing clipped). An implicit-GEMM kernel that loops over the kernel's taps can apply
  it: each tap's partial sum over a channel block is scaled by that block's s_x before it is added.

Here q rounds to e4m3 and back, and the convolution runs in float32 on the rounded values: up to
float32's own rounding of the sum, the same numbers an FP8 kernel with float32 accumulation produces.

    amax = input_amax(net, layers, lambda: run(calibration_frames))
    simulated = with_fp8(net, amax)                  # a copy; those layers simulate FP8
    errors = layer_errors(net, amax, lambda: run(frame))  # each layer's own relative error
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lpperf.models.warping import DepthFoldedConv2d

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
CONVOLUTIONS = (nn.Conv2d, nn.Conv3d)


def round_to_e4m3(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """x / scale rounded to the nearest e4m3 value (clipped to +-448), times scale, in x's dtype."""
    scaled = (x / scale).clamp(-E4M3_MAX, E4M3_MAX)
    return scaled.to(E4M3).to(x.dtype) * scale


def round_blocks_to_e4m3(x: torch.Tensor, channel_block: int) -> torch.Tensor:
    """x (N, C, *spatial) rounded to e4m3 with one scale per pixel and block of `channel_block` channels,
    max |x| over the block / 448 (1 where the block is all zeros)."""
    if channel_block < 1:
        raise ValueError(f"channel_block must be >= 1, got {channel_block}")
    channels = x.shape[1]
    padded = -channels % channel_block
    if padded:
        x = F.pad(x, [0, 0] * (x.dim() - 2) + [0, padded])
    blocks = x.unflatten(1, (x.shape[1] // channel_block, channel_block))
    amax = blocks.abs().amax(dim=2, keepdim=True)
    rounded = round_to_e4m3(blocks, torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax)))
    return rounded.flatten(1, 2)[:, :channels]


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """One scale per output channel, shaped to broadcast over the weight: max |W[o]| / 448 (1 where a
    channel is all zeros, which any scale keeps at zero)."""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    scales = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return scales.view(-1, *([1] * (weight.dim() - 1)))


class Fp8SimulatedConv(nn.Module):
    """A convolution computed as an FP8 kernel computes it (the module docstring's scheme)."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, input_amax: float | None = None,
                 channel_block: int | None = None):
        super().__init__()
        if not isinstance(conv, CONVOLUTIONS):
            raise TypeError(f"Fp8SimulatedConv takes an nn.Conv2d or nn.Conv3d, got {type(conv).__name__}")
        if (input_amax is None) == (channel_block is None):
            raise ValueError("give input_amax (one calibrated scale per tensor) or channel_block (a scale per pixel "
                             "and block of channels), not both and not neither")
        if input_amax is not None and not input_amax > 0:
            raise ValueError(f"input_amax must be > 0 (the largest |input| seen in calibration), got {input_amax}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is simulated, got padding_mode={conv.padding_mode!r}")
        self.conv = conv
        self.input_scale = None if input_amax is None else input_amax / E4M3_MAX
        self.channel_block = channel_block
        self.register_buffer("weight", round_to_e4m3(conv.weight.detach(), weight_scales(conv.weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        function = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv3d
        if isinstance(conv, DepthFoldedConv2d):  # given the volume; the convolution sees it folded
            x = x.flatten(1, 2)
        rounded = (round_to_e4m3(x, self.input_scale) if self.channel_block is None
                   else round_blocks_to_e4m3(x, self.channel_block))
        return function(rounded, self.weight.to(x.dtype), conv.bias, conv.stride, conv.padding, conv.dilation,
                        conv.groups)


def convolutions(net: nn.Module) -> list[str]:
    """The names of the convolutions in `net` (nn.Module.named_modules order)."""
    return [name for name, module in net.named_modules() if isinstance(module, CONVOLUTIONS)]


def run_with_hooks(net: nn.Module, hooks: dict[str, Callable], run: Callable[[], object], *,
                   before: bool = False) -> None:
    """`run()` without autograd, with each hook on the layer of `net` it is named for: a forward hook
    (module, args, output), or with `before` a forward pre-hook (module, args). Removed afterwards."""
    modules = dict(net.named_modules())
    register = "register_forward_pre_hook" if before else "register_forward_hook"
    handles = [getattr(modules[name], register)(hook) for name, hook in hooks.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()


def input_amax(net: nn.Module, layers: Iterable[str], run: Callable[[], object]) -> dict[str, float]:
    """The largest |input| each named layer of `net` sees while `run()` runs (the calibration)."""
    seen = {name: 0.0 for name in layers}

    def record(name):
        def hook(module, args):
            seen[name] = max(seen[name], float(args[0].detach().abs().max()))
        return hook

    run_with_hooks(net, {name: record(name) for name in seen}, run, before=True)
    return seen


def with_fp8(net: nn.Module, amax: dict[str, float], channel_block: int | None = None) -> nn.Module:
    """A copy of `net` whose layers named in `amax` simulate FP8: with those calibrated input ranges, or,
    given `channel_block`, with a scale per pixel and block of that many channels (capped at the layer's
    input channels: `channel_block` larger than any layer means one scale per pixel)."""
    net = copy.deepcopy(net)
    for name, largest in amax.items():
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        conv = getattr(parent, child)
        simulated = (Fp8SimulatedConv(conv, largest) if channel_block is None
                     else Fp8SimulatedConv(conv, channel_block=min(channel_block, conv.in_channels)))
        setattr(parent, child, simulated)
    return net


def layer_errors(net: nn.Module, amax: dict[str, float], run: Callable[[], object],
                 channel_block: int | None = None) -> dict[str, float]:
    """Each named layer's own relative error, ||y_fp8 - y|| / ||y||, on the inputs it gets while `run()`
    runs `net` unchanged (every other layer exact): the error FP8 adds at that layer alone, scaled as
    with_fp8 scales it."""
    modules = dict(net.named_modules())
    squared = {name: [0.0, 0.0] for name in amax}

    def compare(name):
        simulated = with_fp8(nn.Sequential(modules[name]), {"0": amax[name]}, channel_block)[0]

        def hook(module, args, output):
            difference = simulated(args[0]).double() - output.double()
            squared[name][0] += float(difference.square().sum())
            squared[name][1] += float(output.double().square().sum())
        return hook

    run_with_hooks(net, {name: compare(name) for name in amax}, run)
    return {name: (error / total) ** 0.5 if total > 0 else 0.0 for name, (error, total) in squared.items()}
