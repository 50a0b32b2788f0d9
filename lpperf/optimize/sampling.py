"""W's volume sampling (`warping.sample_volumes`) as a Triton kernel.

W samples two volumes per frame with F.grid_sample: the compressed source feature (4 channels) at
each of the K+1 candidate motions, and the source feature volume (32 channels) at the deformation.
PyTorch's kernel gives each thread one output point and loops over its channels; for the second
volume that is 65 536 threads at batch 1, too few to hide the gathers' latency, and for the first
the official code materialises the volume K+1 times (repeat) before sampling it. This kernel gives
each program a block of points x every channel, reads each volume where it lies (any strides, no
repeat) and writes the output dtype directly.

It computes what F.grid_sample computes: trilinear, zeros outside the volume, align_corners=False,
the source coordinate ((g + 1) * size - 1) / 2, the eight corner weights formed and summed in
PyTorch's order, in float32 (float16/bfloat16 volumes are read exactly into float32). Off the card,
or for a sample dtype other than float32, it is `warping.sample_volumes` itself.
"""

import functools

import torch

from lpperf.models.warping import sample_volumes

VOLUME_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_POINTS = 128


@functools.cache
def _kernel():
    """The Triton kernel, built on first use (triton is imported only then)."""
    import triton
    import triton.language as tl

    @triton.jit
    def sample_trilinear(volume_ptr, grid_ptr, out_ptr, POINTS, CANDIDATES, CHANNELS, DEPTH, HEIGHT, WIDTH,
                         stride_b, stride_c, stride_d, stride_h, stride_w,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        sample = tl.program_id(1)  # b * CANDIDATES + k: grid k of volume b
        points = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        channels = tl.arange(0, BLOCK_C)
        point_ok = points < POINTS
        channel_ok = channels < CHANNELS
        coordinates = grid_ptr + (sample.to(tl.int64) * POINTS + points) * 3
        ix = ((tl.load(coordinates, mask=point_ok, other=0.0) + 1) * WIDTH - 1) / 2
        iy = ((tl.load(coordinates + 1, mask=point_ok, other=0.0) + 1) * HEIGHT - 1) / 2
        iz = ((tl.load(coordinates + 2, mask=point_ok, other=0.0) + 1) * DEPTH - 1) / 2
        x0 = tl.floor(ix)
        y0 = tl.floor(iy)
        z0 = tl.floor(iz)
        x1 = x0 + 1
        y1 = y0 + 1
        z1 = z0 + 1
        volume = volume_ptr + (sample // CANDIDATES).to(tl.int64) * stride_b + (channels * stride_c)[None, :]
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        # F.grid_sample's order: tnw, tne, tsw, tse, bnw, bne, bsw, bse (t/b: z0/z1, n/s: y0/y1, w/e: x0/x1),
        # i.e. corner bits (x, y, z); each corner weighted by the product of its distances to the opposite faces.
        for corner in tl.static_range(8):
            if corner % 2:
                cx, weight_x = x1, ix - x0
            else:
                cx, weight_x = x0, x1 - ix
            if corner // 2 % 2:
                cy, weight_y = y1, iy - y0
            else:
                cy, weight_y = y0, y1 - iy
            if corner // 4:
                cz, weight_z = z1, iz - z0
            else:
                cz, weight_z = z0, z1 - iz
            inside = point_ok & (cx >= 0) & (cx < WIDTH) & (cy >= 0) & (cy < HEIGHT) & (cz >= 0) & (cz < DEPTH)
            # Clamped before the integer cast: a point far outside must not overflow its address.
            offset = (tl.minimum(tl.maximum(cz, 0), DEPTH - 1).to(tl.int32) * stride_d
                      + tl.minimum(tl.maximum(cy, 0), HEIGHT - 1).to(tl.int32) * stride_h
                      + tl.minimum(tl.maximum(cx, 0), WIDTH - 1).to(tl.int32) * stride_w)
            mask = inside[:, None] & channel_ok[None, :]
            value = tl.load(volume + offset[:, None], mask=mask, other=0.0).to(tl.float32)
            weight = weight_x * weight_y * weight_z
            acc = acc + tl.where(mask, value * weight[:, None], 0.0)  # a corner outside adds nothing, as in PyTorch
        out = out_ptr + sample.to(tl.int64) * CHANNELS * POINTS + (channels * POINTS)[None, :] + points[:, None]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=point_ok[:, None] & channel_ok[None, :])

    return sample_trilinear


@torch.library.custom_op("lpperf::sample_volumes", mutates_args=())
def sample_volumes_kernel(volume: torch.Tensor, grids: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The Triton kernel: volume (B, C, D, H, W) at float32 grids (B, K, Do, Ho, Wo, 3) -> (B, K, C, Do, Ho,
    Wo), contiguous, in out_dtype."""
    import triton

    batch, channels = volume.shape[:2]
    candidates, out_size = grids.shape[1], grids.shape[2:5]
    grids = grids.contiguous()
    out = torch.empty((batch, candidates, channels, *out_size), device=volume.device, dtype=out_dtype)
    points = out_size[0] * out_size[1] * out_size[2]
    launch = (triton.cdiv(points, BLOCK_POINTS), batch * candidates)
    _kernel()[launch](volume, grids, out, points, candidates, channels, *volume.shape[2:], *volume.stride(),
                      BLOCK_P=BLOCK_POINTS, BLOCK_C=triton.next_power_of_2(channels), num_warps=4)
    return out


@sample_volumes_kernel.register_fake
def _(volume, grids, out_dtype):
    return volume.new_empty((volume.shape[0], grids.shape[1], volume.shape[1], *grids.shape[2:5]), dtype=out_dtype)


def kernel_applies(volume: torch.Tensor, grids: torch.Tensor, sample_dtype: torch.dtype) -> bool:
    """Whether the kernel computes sample_volumes for these tensors: a CUDA volume of a float dtype
    sampled in float32 at float32 grids, with 32-bit offsets within one volume, one grid and one output."""
    if not (volume.is_cuda and grids.is_cuda and volume.dtype in VOLUME_DTYPES and grids.dtype == torch.float32
            and sample_dtype == torch.float32 and volume.dim() == 5 and grids.dim() == 6 and grids.shape[-1] == 3
            and grids.shape[0] == volume.shape[0]):
        return False
    points = grids.shape[2] * grids.shape[3] * grids.shape[4]
    farthest = sum((size - 1) * abs(stride) for size, stride in zip(volume.shape[1:], volume.stride()[1:]))
    return max(farthest, volume.shape[1] * points) < 2 ** 31


def sample_volumes_on_kernel(volume: torch.Tensor, grids: torch.Tensor, sample_dtype: torch.dtype,
                             out_dtype: torch.dtype) -> torch.Tensor:
    """warping.sample_volumes, on the Triton kernel where it applies (kernel_applies), else itself."""
    if kernel_applies(volume, grids, sample_dtype):
        return sample_volumes_kernel(volume, grids, out_dtype)
    return sample_volumes(volume, grids, sample_dtype, out_dtype)
