"""A SPADE's modulation as one Triton kernel: its gamma/beta convolution with the modulation in the
epilogue.

A SPADE computes act(norm(x) * (1 + gamma) + beta), gamma and beta being 3x3 convolutions of the
same hidden map. Done as PyTorch ops, the convolution writes gamma and beta (twice the channels of x)
and a pointwise kernel reads them back with x; at G's 256 x 256 stage that is 64 MB written and read
again per SPADE at batch 1 in fp16, to produce a 32 MB activation. This kernel computes gamma and
beta for a tile of pixels x channels in registers (an implicit GEMM over the channels-last hidden
map, as `kernels.TritonConv2d`, one accumulator each) and applies the modulation there: it reads x
(through a nearest upsampling, any strides) and x's instance-norm statistics, and writes only the
activation.

The arithmetic is SPADE's in float32: normalized = (x - mean) * rstd with rstd = 1 / sqrt(var + eps)
(the biased variance, as F.instance_norm), then normalized * (1 + gamma) + beta, then the leaky ReLU
if a slope is given. gamma and beta stay in float32 from the accumulator (the PyTorch path rounds
them to the network's dtype first), so the kernel differs from that path by that rounding only.
"""

import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from lpperf.optimize.kernels import GPU_DTYPES
from lpperf.optimize.rewrites import NormalizedStream, SpadeModulation, _replace_children, modulate

# (BLOCK_M pixels, BLOCK_N channels of gamma and of beta each, BLOCK_K hidden channels, warps, stages): a first
# sweep, each compiled and timed per new shape; not pruned to per-shape winners while the kernel is opt-in
# (slower than cuDNN's convolution plus the modulation in the frame, docs/PERFORMANCE.md)
TILES = ((128, 64, 64, 8, 3), (128, 64, 64, 4, 3), (128, 64, 32, 4, 4), (128, 128, 64, 8, 3), (64, 64, 64, 4, 3),
         (256, 64, 64, 8, 3), (128, 32, 64, 4, 4), (64, 128, 64, 4, 3), (128, 128, 32, 8, 4), (64, 64, 32, 4, 4))


@functools.cache
def _kernels():
    """The Triton kernel, plain and autotuned over TILES, built once on first use."""
    import triton
    import triton.language as tl

    @triton.heuristics({"EVEN_K": lambda args: args["CIN"] % args["BLOCK_K"] == 0,
                        "EVEN_N": lambda args: args["CHANNELS"] % args["BLOCK_N"] == 0})
    @triton.jit
    def spade_modulate_nhwc(hidden_ptr, w_gamma_ptr, w_beta_ptr, b_gamma_ptr, b_beta_ptr, x_ptr, mean_ptr, rstd_ptr,
                            out_ptr, PIXELS, HEIGHT, WIDTH, CIN, CHANNELS, stride_xb, stride_xc, stride_xh, stride_xw,
                            slope, UPSAMPLE: tl.constexpr, HAS_SLOPE: tl.constexpr, KH: tl.constexpr,
                            KW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
        pixels = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # b * H * W + h * W + w
        outputs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # channels of x, of gamma and of beta
        channels = tl.arange(0, BLOCK_K)
        column = pixels % WIDTH
        row = (pixels // WIDTH) % HEIGHT
        image = pixels // (WIDTH * HEIGHT)
        pixel_ok = pixels < PIXELS
        output_ok = outputs < CHANNELS
        gamma = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        beta = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # Taps unrolled outside, channel blocks inside, as kernels.TritonConv2d (faster there than one flat loop).
        for tap in tl.static_range(KH * KW):
            source_row = row + tap // KW - KH // 2
            source_column = column + tap % KW - KW // 2
            inside = pixel_ok & (source_row >= 0) & (source_row < HEIGHT) & (source_column >= 0) \
                & (source_column < WIDTH)
            a_ptrs = hidden_ptr + (((image * HEIGHT + source_row) * WIDTH + source_column) * CIN)[:, None] \
                + channels[None, :]
            weight_offsets = (tap * CIN + channels)[:, None] * CHANNELS + outputs[None, :]
            for start in range(0, CIN, BLOCK_K):
                if EVEN_K:
                    a = tl.load(a_ptrs + start, mask=inside[:, None], other=0.0)
                    if EVEN_N:
                        b_gamma = tl.load(w_gamma_ptr + weight_offsets + start * CHANNELS)
                        b_beta = tl.load(w_beta_ptr + weight_offsets + start * CHANNELS)
                    else:
                        b_gamma = tl.load(w_gamma_ptr + weight_offsets + start * CHANNELS,
                                          mask=output_ok[None, :], other=0.0)
                        b_beta = tl.load(w_beta_ptr + weight_offsets + start * CHANNELS,
                                         mask=output_ok[None, :], other=0.0)
                else:
                    channel_ok = channels < CIN - start
                    a = tl.load(a_ptrs + start, mask=inside[:, None] & channel_ok[None, :], other=0.0)
                    weight_ok = channel_ok[:, None] & output_ok[None, :]
                    b_gamma = tl.load(w_gamma_ptr + weight_offsets + start * CHANNELS, mask=weight_ok, other=0.0)
                    b_beta = tl.load(w_beta_ptr + weight_offsets + start * CHANNELS, mask=weight_ok, other=0.0)
                gamma = tl.dot(a, b_gamma, gamma)
                beta = tl.dot(a, b_beta, beta)
        gamma += tl.load(b_gamma_ptr + outputs, mask=output_ok, other=0.0).to(tl.float32)[None, :]
        beta += tl.load(b_beta_ptr + outputs, mask=output_ok, other=0.0).to(tl.float32)[None, :]

        tile_ok = pixel_ok[:, None] & output_ok[None, :]
        x_offsets = (image * stride_xb + (row // UPSAMPLE) * stride_xh + (column // UPSAMPLE) * stride_xw)[:, None] \
            + (outputs * stride_xc)[None, :]
        x = tl.load(x_ptr + x_offsets, mask=tile_ok, other=0.0).to(tl.float32)
        statistics = (image * CHANNELS)[:, None] + outputs[None, :]
        mean = tl.load(mean_ptr + statistics, mask=tile_ok, other=0.0)
        rstd = tl.load(rstd_ptr + statistics, mask=tile_ok, other=0.0)
        modulated = (x - mean) * rstd * (1 + gamma) + beta
        if HAS_SLOPE:
            modulated = tl.where(modulated > 0, modulated, modulated * slope)
        out_ptrs = out_ptr + pixels[:, None] * CHANNELS + outputs[None, :]
        tl.store(out_ptrs, modulated.to(out_ptr.dtype.element_ty), mask=tile_ok)

    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
               for m, n, k, w, s in TILES]
    if os.environ.get("TRITON_INTERPRET") == "1":
        configs = configs[:1]  # the CPU interpreter has no clock to choose by
    key = ["PIXELS", "HEIGHT", "WIDTH", "CIN", "CHANNELS", "UPSAMPLE", "HAS_SLOPE", "KH", "KW"]
    return spade_modulate_nhwc, triton.autotune(configs=configs, key=key)(spade_modulate_nhwc)


def spade_modulate_reference(hidden: torch.Tensor, weight_gamma: torch.Tensor, weight_beta: torch.Tensor,
                             bias_gamma: torch.Tensor, bias_beta: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                             rstd: torch.Tensor, upsample: int, slope: Optional[float]) -> torch.Tensor:
    """What the kernel computes, as PyTorch ops on any device: weights in nn.Conv2d's (C, Cin, kh, kw)."""
    padding = weight_gamma.shape[-1] // 2
    gamma = F.conv2d(hidden, weight_gamma, bias_gamma, padding=padding)
    beta = F.conv2d(hidden, weight_beta, bias_beta, padding=padding)
    normalized = (x - mean[:, :, None, None]) * rstd[:, :, None, None]
    if upsample != 1:
        normalized = F.interpolate(normalized, scale_factor=upsample)
    return modulate(normalized, gamma, beta, slope)


def spade_modulate_triton(hidden: torch.Tensor, w_gamma_taps: torch.Tensor, w_beta_taps: torch.Tensor,
                          bias_gamma: torch.Tensor, bias_beta: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                          rstd: torch.Tensor, upsample: int, slope: Optional[float], kernel_w: int,
                          tile: Optional[tuple[int, int, int, int, int]] = None) -> torch.Tensor:
    """The kernel: hidden (B, Cin, H, W) in the network's dtype, weights as (kh * kw, Cin, C), x (B, C, H /
    upsample, W / upsample) of any float dtype and strides, mean and rstd (B, C) float32 -> the activation
    (B, C, H, W) in hidden's dtype, channels-last."""
    batch, cin, height, width = hidden.shape
    taps, _, channels = w_gamma_taps.shape
    plain, autotuned = _kernels()
    hidden = hidden.contiguous(memory_format=torch.channels_last)
    out = torch.empty((batch, channels, height, width), device=hidden.device, dtype=hidden.dtype,
                      memory_format=torch.channels_last)
    pixels = batch * height * width
    args = (hidden, w_gamma_taps.contiguous(), w_beta_taps.contiguous(), bias_gamma, bias_beta, x,
            mean.contiguous(), rstd.contiguous(), out, pixels, height, width, cin, channels, *x.stride(),
            0.0 if slope is None else slope)
    shape = {"UPSAMPLE": upsample, "HAS_SLOPE": slope is not None, "KH": taps // kernel_w, "KW": kernel_w}
    if tile is None:
        autotuned[lambda meta: (_blocks(pixels, meta["BLOCK_M"]), _blocks(channels, meta["BLOCK_N"]))](*args, **shape)
    else:
        block_m, block_n, block_k, warps, stages = tile
        plain[(_blocks(pixels, block_m), _blocks(channels, block_n))](
            *args, **shape, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def _blocks(size: int, block: int) -> int:
    return -(-size // block)


@torch.library.custom_op("lpperf::spade_modulate", mutates_args=())
def spade_modulate(hidden: torch.Tensor, w_gamma_taps: torch.Tensor, w_beta_taps: torch.Tensor,
                   bias_gamma: torch.Tensor, bias_beta: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                   rstd: torch.Tensor, upsample: int, slope: Optional[float], kernel_w: int) -> torch.Tensor:
    return spade_modulate_triton(hidden, w_gamma_taps, w_beta_taps, bias_gamma, bias_beta, x, mean, rstd, upsample,
                                 slope, kernel_w)


@spade_modulate.register_fake
def _(hidden, w_gamma_taps, w_beta_taps, bias_gamma, bias_beta, x, mean, rstd, upsample, slope, kernel_w):
    return hidden.new_empty((hidden.shape[0], w_gamma_taps.shape[2], *hidden.shape[2:])).contiguous(
        memory_format=torch.channels_last)


@register_flop_formula(torch.ops.lpperf.spade_modulate)
def _spade_modulate_flops(hidden_shape, w_gamma_shape, *args, **kwargs) -> int:
    batch, cin, height, width = hidden_shape
    taps, _, channels = w_gamma_shape
    return 2 * batch * height * width * cin * 2 * channels * taps


def kernel_applies(hidden: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, upsample: int) -> bool:
    """Whether the kernel computes the modulation of these tensors: CUDA half-precision hidden maps in the
    weights' dtype, x the stream at 1/upsample of the hidden map's size, every offset within 32 bits."""
    return (hidden.is_cuda and x.is_cuda and hidden.dtype in GPU_DTYPES and hidden.dtype == weight.dtype
            and x.is_floating_point() and shapes_fit(hidden.shape, weight.shape[2], x.shape, x.stride(), upsample))


def shapes_fit(hidden_shape: torch.Size, channels: int, x_shape: torch.Size, x_stride: tuple[int, ...],
               upsample: int) -> bool:
    """Whether the kernel's indexing covers these shapes: a (B, Cin, H, W) hidden map, x (B, channels, H /
    upsample, W / upsample) with H and W multiples of upsample, and every offset within 32 bits."""
    if len(hidden_shape) != 4 or len(x_shape) != 4:
        return False
    batch, cin, height, width = hidden_shape
    if tuple(x_shape) != (batch, channels, height // upsample, width // upsample) or height % upsample \
            or width % upsample:
        return False
    farthest = sum((size - 1) * abs(stride) for size, stride in zip(x_shape, x_stride))
    return max(batch * height * width * max(cin, channels), farthest + 1) < 2 ** 31


class TritonSpadeModulation(nn.Module):
    """A SpadeModulation on the fused kernel on the card (where kernel_applies); elsewhere the same
    convolution and modulation as PyTorch ops. The weights are kept as (kh * kw, Cin, C) for gamma and
    for beta, the kernel's order (three dimensions: a network-wide channels_last conversion leaves them
    alone)."""

    def __init__(self, modulation: SpadeModulation):
        super().__init__()
        conv = modulation.gamma_beta
        if type(conv) is not nn.Conv2d or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 \
                or conv.padding_mode != "zeros" or conv.padding != tuple(k // 2 for k in conv.kernel_size) \
                or any(k % 2 == 0 for k in conv.kernel_size):
            raise ValueError("the fused SPADE kernel computes a stride-1, ungrouped gamma/beta Conv2d with an odd "
                             "kernel and 'same' zero padding")
        self.kernel_size, self.in_channels = conv.kernel_size, conv.in_channels
        self.channels = conv.out_channels // 2
        weight = conv.weight.detach()
        taps = weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels, conv.out_channels)
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(conv.out_channels)
        self.w_gamma_taps = nn.Parameter(taps[:, :, :self.channels].contiguous(), requires_grad=False)
        self.w_beta_taps = nn.Parameter(taps[:, :, self.channels:].contiguous(), requires_grad=False)
        self.bias_gamma = nn.Parameter(bias[:self.channels].clone(), requires_grad=False)
        self.bias_beta = nn.Parameter(bias[self.channels:].clone(), requires_grad=False)

    def conv_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma's and beta's weights in nn.Conv2d's (C, Cin, kh, kw) order."""
        return tuple(taps.view(*self.kernel_size, self.in_channels, self.channels).permute(3, 2, 0, 1)
                     for taps in (self.w_gamma_taps, self.w_beta_taps))

    def forward(self, stream: NormalizedStream, hidden: torch.Tensor, slope: Optional[float]) -> torch.Tensor:
        if kernel_applies(hidden, self.w_gamma_taps, stream.x, stream.upsample):
            mean, rstd = stream.statistics()
            return spade_modulate(hidden.contiguous(memory_format=torch.channels_last), self.w_gamma_taps,
                                  self.w_beta_taps, self.bias_gamma, self.bias_beta, stream.x, mean, rstd,
                                  stream.upsample, slope, self.kernel_size[1])
        weight_gamma, weight_beta = self.conv_weights()
        padding = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        gamma = F.conv2d(hidden, weight_gamma, self.bias_gamma, padding=padding)
        beta = F.conv2d(hidden, weight_beta, self.bias_beta, padding=padding)
        return modulate(stream.normalized(), gamma, beta, slope)


def fused_spade_modulations(net: nn.Module) -> list[str]:
    """Replace every SpadeModulation of `net` with a TritonSpadeModulation; the replaced names."""
    return _replace_children(net, lambda parent, name, child: type(child) is SpadeModulation, TritonSpadeModulation)
