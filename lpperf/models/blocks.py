"""Building blocks shared by the LivePortrait networks.

Convolution + BatchNorm blocks (2-D and 3-D), the pre-activation 3-D residual
block, the 3-D hourglass of the dense-motion network, the normalised
coordinate grid and keypoint gaussians. Attribute names follow the official
checkpoints so that their state dicts load unchanged.
"""

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _activate(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope) if negative_slope else F.relu(x)


class ConvBlock(nn.Module):
    """Optional nearest upsampling -> Conv -> BatchNorm -> ReLU (leaky if negative_slope > 0) ->
    optional average pool.

    `dims` is 2 or 3; `upsample` scales the last two axes (the plane) before the convolution (1: none;
    the hourglass decoder's blocks use 2, as the official UpBlock3d's scale_factor (1, 2, 2));
    `pool` is the pooling kernel (None: no pooling). The convolution is 'same'-padded.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int = 2, kernel_size: int = 3,
                 negative_slope: float = 0.0, pool: tuple[int, ...] | None = None, upsample: int = 1):
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"ConvBlock supports dims 2 or 3, got {dims}")
        self.conv = _CONV[dims](in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = _BATCH_NORM[dims](out_channels)
        self.negative_slope = negative_slope
        self.pool = pool
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=(1,) * (x.dim() - 4) + (self.upsample, self.upsample))
        x = _activate(self.norm(self.conv(x)), self.negative_slope)
        if self.pool is not None:
            pool = F.avg_pool2d if len(self.pool) == 2 else F.avg_pool3d
            x = pool(x, self.pool)
        return x


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv(relu(bn(conv(relu(bn(x))))))."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv3d(channels, channels, kernel_size, padding=padding)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv1(F.relu(self.norm1(x)))
        branch = self.conv2(F.relu(self.norm2(branch)))
        return x + branch


def hourglass_width(level: int, block_expansion: int, max_features: int) -> int:
    """Channels of the hourglass at `level` (level 0 is the full-resolution end)."""
    return min(max_features, block_expansion * 2 ** level)


class HourglassEncoder(nn.Module):
    """3-D encoder: each block halves H and W (depth is kept); returns every level's output."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for level in range(num_blocks):
            cin = in_features if level == 0 else hourglass_width(level, block_expansion, max_features)
            cout = hourglass_width(level + 1, block_expansion, max_features)
            blocks.append(ConvBlock(cin, cout, dims=3, pool=(1, 2, 2)))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]
        for block in self.down_blocks:
            levels.append(block(levels[-1]))
        return levels


class HourglassDecoder(nn.Module):
    """3-D decoder: nearest x2 upsampling of H and W, conv block, concatenation with the skip."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for level in reversed(range(num_blocks)):
            deeper = hourglass_width(level + 1, block_expansion, max_features)
            # Every level but the deepest receives [upsampled, skip], twice the channels.
            cin = deeper if level == num_blocks - 1 else 2 * deeper
            blocks.append(ConvBlock(cin, hourglass_width(level, block_expansion, max_features), dims=3, upsample=2))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        out = levels[-1]
        for block, skip in zip(self.up_blocks, reversed(levels[:-1])):
            out = block(out)
            out = torch.cat([out, skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """U-Net style 3-D hourglass; output has block_expansion + in_features channels."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def coordinate_grid(depth: int, height: int, width: int, *, dtype: torch.dtype,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Identity sampling grid, shape (depth, height, width, 3), last axis (x, y, z) in [-1, 1].

    x grows to the right, y downwards, z inwards; the end points sit on the
    first and last sample, as grid_sample expects for these networks.
    """
    if min(depth, height, width) < 2:
        raise ValueError(f"coordinate_grid needs every size >= 2, got {(depth, height, width)}")

    def axis(n: int) -> torch.Tensor:
        return torch.arange(n, dtype=dtype, device=device) * (2.0 / (n - 1)) - 1.0

    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def keypoint_gaussians(kp: torch.Tensor, grid: torch.Tensor, variance: float) -> torch.Tensor:
    """Isotropic gaussians exp(-|p - kp|^2 / (2 variance)) at every grid point.

    kp (B, K, 3), grid (D, H, W, 3) -> (B, K, D, H, W).
    """
    offset = grid - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * offset.square().sum(-1) / variance)
