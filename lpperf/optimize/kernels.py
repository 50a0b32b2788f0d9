"""Dedicated GPU kernels for convolutions that cuDNN runs far below the card's peak.

`TritonConv2d` computes a stride-1 'same' Conv2d as an implicit GEMM written in Triton: each program
owns a tile of output pixels x output channels and accumulates in float32 over every (tap, input
channel block), reading the channels-last input where it lies (no im2col buffer) and zeros past the
border. It runs on CUDA half/bfloat16 tensors; everywhere else (the CPU, float32/64) it is the plain
`F.conv2d` of the same weights, so the rewrite is exact off the card and the CPU tests hold it to the
original layer.

The kernel is reached through a custom op (`torch.ops.lpperf.conv2d_same`) so that torch.compile keeps
it as one opaque call inside the compiled step and CUDA-graph capture records its launch; Triton's
autotuner picks the tile shape per layer shape in the first (warm-up) calls, before any capture.
"""

import functools
import importlib.util
import os
from collections.abc import Collection
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from lpperf.optimize.rewrites import _replace_children

GPU_DTYPES = (torch.float16, torch.bfloat16)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


# Tile shapes the autotuner chooses from per layer shape: (BLOCK_M pixels, BLOCK_N outputs, BLOCK_K
# input channels, warps, pipeline stages). The winners of a 57-tile sweep on an H200 (torch 2.11)
# over G's 256x256-stage shapes at batch 1 and 16: the best tile of every shape is here.
TILES = ((256, 64, 32, 8, 3), (256, 64, 32, 8, 4), (128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (256, 128, 32, 8, 3),
         (128, 256, 32, 8, 3), (128, 256, 32, 8, 4), (128, 256, 64, 8, 3))


@functools.cache
def _kernels():
    """The Triton kernel, plain and autotuned over TILES, built once on first use (triton is imported
    only then)."""
    import triton
    import triton.language as tl

    # EVEN_K / EVEN_N drop the channel and output masks when the tile divides the layer (every layer of
    # G's last block): a mask that varies along the contiguous dimension can keep Triton from vectorising
    # the loads and stores. (Not resolvable alone on the card: in the frame the kernels already cost what
    # cuDNN's did; H200, torch 2.11.)
    @triton.heuristics({"EVEN_K": lambda args: args["CIN"] % args["BLOCK_K"] == 0,
                        "EVEN_N": lambda args: args["COUT"] % args["BLOCK_N"] == 0})
    @triton.jit
    def conv2d_same_nhwc(x_ptr, w_ptr, bias_ptr, out_ptr, PIXELS, HEIGHT, WIDTH, CIN, COUT,
                         KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
        pixels = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # b * H * W + h * W + w
        outputs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        channels = tl.arange(0, BLOCK_K)
        column = pixels % WIDTH
        row = (pixels // WIDTH) % HEIGHT
        image = pixels // (WIDTH * HEIGHT)
        pixel_ok = pixels < PIXELS
        output_ok = outputs < COUT
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # Taps unrolled outside, channel blocks inside: each tap's addresses and border mask are computed
        # once, not per channel block (6-31 % faster than one flat loop over both, same tiles; H200, torch
        # 2.11).
        for tap in tl.static_range(KH * KW):
            source_row = row + tap // KW - KH // 2
            source_column = column + tap % KW - KW // 2
            inside = pixel_ok & (source_row >= 0) & (source_row < HEIGHT) & (source_column >= 0) & (source_column < WIDTH)
            a_ptrs = x_ptr + (((image * HEIGHT + source_row) * WIDTH + source_column) * CIN)[:, None] + channels[None, :]
            b_ptrs = w_ptr + (tap * CIN + channels)[:, None] * COUT + outputs[None, :]
            for start in range(0, CIN, BLOCK_K):
                if EVEN_K:
                    a = tl.load(a_ptrs + start, mask=inside[:, None], other=0.0)
                    if EVEN_N:
                        b = tl.load(b_ptrs + start * COUT)
                    else:
                        b = tl.load(b_ptrs + start * COUT, mask=output_ok[None, :], other=0.0)
                else:
                    channel_ok = channels < CIN - start
                    a = tl.load(a_ptrs + start, mask=inside[:, None] & channel_ok[None, :], other=0.0)
                    b = tl.load(b_ptrs + start * COUT, mask=channel_ok[:, None] & output_ok[None, :], other=0.0)
                acc = tl.dot(a, b, acc)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + outputs, mask=output_ok, other=0.0).to(tl.float32)[None, :]
        out_ptrs = out_ptr + pixels[:, None] * COUT + outputs[None, :]
        if EVEN_N:
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=pixel_ok[:, None])
        else:
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=pixel_ok[:, None] & output_ok[None, :])

    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
               for m, n, k, w, s in TILES]
    if os.environ.get("TRITON_INTERPRET") == "1":
        configs = configs[:1]  # the CPU interpreter has no clock to choose by; one config is never timed
    key = ["PIXELS", "HEIGHT", "WIDTH", "CIN", "COUT", "KH", "KW"]
    return conv2d_same_nhwc, triton.autotune(configs=configs, key=key)(conv2d_same_nhwc)


def conv2d_same_triton(x: torch.Tensor, weight_taps: torch.Tensor, bias: Optional[torch.Tensor], kernel_w: int,
                       tile: Optional[tuple[int, int, int, int, int]] = None) -> torch.Tensor:
    """The Triton kernel on `x` (B, Cin, H, W) with weights laid out as (kh * kw, Cin, Cout), on any device
    Triton runs on (a CUDA card, or the CPU under TRITON_INTERPRET=1); the output is channels-last. The
    autotuner picks the tile unless `tile` (one of TILES' form) is given."""
    batch, cin, height, width = x.shape
    taps, _, cout = weight_taps.shape
    if not fits_int32_offsets(x.shape, cout):
        raise ValueError(f"the Triton conv kernel addresses its tensors with 32-bit offsets; input {tuple(x.shape)} "
                         f"with {cout} outputs is too large: split the batch")
    plain, autotuned = _kernels()
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty((batch, cout, height, width), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    pixels = batch * height * width
    args = (x, weight_taps.contiguous(), bias if bias is not None else weight_taps, out, pixels, height, width, cin, cout)
    shape = {"KH": taps // kernel_w, "KW": kernel_w, "HAS_BIAS": bias is not None}
    if tile is None:
        autotuned[lambda meta: (_blocks(pixels, meta["BLOCK_M"]), _blocks(cout, meta["BLOCK_N"]))](*args, **shape)
    else:
        block_m, block_n, block_k, warps, stages = tile
        plain[(_blocks(pixels, block_m), _blocks(cout, block_n))](*args, **shape, BLOCK_M=block_m, BLOCK_N=block_n,
                                                                 BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def fits_int32_offsets(x_shape: torch.Size, out_channels: int) -> bool:
    batch, cin, height, width = x_shape
    return batch * height * width * max(cin, out_channels) < 2 ** 31


def _blocks(size: int, block: int) -> int:
    return -(-size // block)


@torch.library.custom_op("lpperf::conv2d_same", mutates_args=())
def conv2d_same(x: torch.Tensor, weight_taps: torch.Tensor, bias: Optional[torch.Tensor],
                kernel_w: int) -> torch.Tensor:
    return conv2d_same_triton(x, weight_taps, bias, kernel_w)


@conv2d_same.register_fake
def _(x, weight_taps, bias, kernel_w):
    return x.new_empty((x.shape[0], weight_taps.shape[2], *x.shape[2:])).contiguous(memory_format=torch.channels_last)


@register_flop_formula(torch.ops.lpperf.conv2d_same)
def _conv2d_same_flops(x_shape, weight_shape, bias_shape, kernel_w, *args, **kwargs) -> int:
    batch, cin, height, width = x_shape
    taps, _, cout = weight_shape
    return 2 * batch * height * width * cin * cout * taps


class TritonConv2d(nn.Module):
    """A stride-1, 'same'-padded Conv2d (odd kernel, one group) as the Triton implicit-GEMM kernel on
    CUDA half/bfloat16 inputs, `F.conv2d` elsewhere. The weights are kept as (kh * kw, Cin, Cout), the
    kernel's order: three dimensions, so a network-wide channels_last conversion leaves them alone."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if not _same_stride_one(conv):
            raise ValueError(f"TritonConv2d computes stride-1, ungrouped convolutions with odd kernels and 'same' "
                             f"zero padding; got kernel {conv.kernel_size}, stride {conv.stride}, padding "
                             f"{conv.padding!r} ({conv.padding_mode}), dilation {conv.dilation}, groups {conv.groups}")
        kernel_h, kernel_w = conv.kernel_size
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        weight = conv.weight.detach()
        self.weight_taps = nn.Parameter(weight.permute(2, 3, 1, 0).reshape(kernel_h * kernel_w, *weight.shape[1::-1])
                                        .contiguous(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def conv_weight(self) -> torch.Tensor:
        """The weights in nn.Conv2d's (Cout, Cin, kh, kw) order."""
        return self.weight_taps.view(*self.kernel_size, self.in_channels, self.out_channels).permute(3, 2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.is_cuda and x.dtype in GPU_DTYPES and x.dtype == self.weight_taps.dtype
                and fits_int32_offsets(x.shape, self.out_channels)):
            # Channels-last here, in the traced graph, so that torch.compile writes the producer's output in
            # that layout; left to the op, it was an extra copy of each input (4 copy kernels, 0.24 ms of a
            # 4.9 ms frame at batch 1 on an H200, torch 2.11).
            return conv2d_same(x.contiguous(memory_format=torch.channels_last), self.weight_taps, self.bias,
                               self.kernel_size[1])
        return F.conv2d(x, self.conv_weight(), self.bias, padding=self.padding)


def _same_stride_one(conv: nn.Conv2d) -> bool:
    return (conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and all(k % 2 == 1 for k in conv.kernel_size) and conv.padding == tuple(k // 2 for k in conv.kernel_size))


def eligible(conv: nn.Module) -> bool:
    """A plain Conv2d that TritonConv2d computes: stride 1, odd kernel, 'same' zero padding, one group."""
    return type(conv) is nn.Conv2d and _same_stride_one(conv)


def triton_convs(net: nn.Module, names: Optional[Collection[str]] = None) -> list[str]:
    """Replace every eligible Conv2d of `net` (only children called one of `names`, if given) with a
    TritonConv2d; the replaced names."""
    return _replace_children(net, lambda parent, name, child: eligible(child) and (names is None or name in names),
                             TritonConv2d)
