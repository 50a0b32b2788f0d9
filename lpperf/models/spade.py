"""G, the SPADE decoder: warped feature (B, C, H, W) -> image (B, 3, 8H, 8W) in [0, 1].

Residual blocks whose normalisation is modulated by the input feature
(SPADE), spectral-normalised convolutions, two nearest x2 upsamplings and a
pixel-shuffle x2 output layer.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

SPADE_HIDDEN = 128
LEAKY_SLOPE = 0.2
NUM_MIDDLE_BLOCKS = 6


class SPADE(nn.Module):
    """Instance norm (no affine) modulated per pixel: norm(x) * (1 + gamma(seg)) + beta(seg)."""

    def __init__(self, norm_channels: int, label_channels: int, hidden: int = SPADE_HIDDEN):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        hidden = self.mlp_shared(seg)
        return F.instance_norm(x) * (1 + self.mlp_gamma(hidden)) + self.mlp_beta(hidden)


class SPADEResnetBlock(nn.Module):
    """Two SPADE -> leaky ReLU -> spectral-norm 3x3 conv stages plus a shortcut
    (a SPADE + spectral-norm 1x1 conv when the channel count changes)."""

    def __init__(self, fin: int, fout: int, label_channels: int, hidden: int = SPADE_HIDDEN):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = SPADE(fin, label_channels, hidden)
        self.norm_1 = SPADE(fmiddle, label_channels, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_channels, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        # seg carries the network's dtype; x (the residual stream) may be kept wider than it.
        # With one dtype throughout every cast below is a no-op.
        dtype = seg.dtype
        shortcut = self.conv_s(self.norm_s(x, seg).to(dtype)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LEAKY_SLOPE).to(dtype))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LEAKY_SLOPE).to(dtype))
        return shortcut.to(x.dtype) + dx.to(x.dtype)


class SPADEDecoder(nn.Module):
    """Feature (B, C, H, W) with C = min(max_features, block_expansion * 2^num_down_blocks)
    -> image (B, 3, 4H * s, 4W * s) in [0, 1], s = 2 when upscale == 2 (pixel shuffle) else 1."""

    def __init__(self, upscale: int = 1, max_features: int = 256, block_expansion: int = 64,
                 out_channels: int = 64, num_down_blocks: int = 2, spade_hidden: int = SPADE_HIDDEN):
        super().__init__()
        if upscale not in (1, 2):
            raise ValueError(f"upscale must be 1 or 2 (the output layer only knows pixel shuffle x2); got {upscale}")
        channels = min(max_features, block_expansion * 2 ** num_down_blocks)
        self.in_channels = channels
        self.upscale = upscale
        self.fc = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        for index in range(NUM_MIDDLE_BLOCKS):
            self.add_module(f"G_middle_{index}", SPADEResnetBlock(2 * channels, 2 * channels, channels, spade_hidden))
        self.up_0 = SPADEResnetBlock(2 * channels, channels, channels, spade_hidden)
        self.up_1 = SPADEResnetBlock(channels, out_channels, channels, spade_hidden)
        if upscale == 2:
            self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * 4, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.conv_img = nn.Conv2d(out_channels, 3, 3, padding=1)

    def middle_blocks(self) -> list[SPADEResnetBlock]:
        return [getattr(self, f"G_middle_{index}") for index in range(NUM_MIDDLE_BLOCKS)]

    # dtype of the residual stream between blocks; None keeps the input's (the official
    # behaviour). float32 under half-precision weights keeps fp16 overflow out of the stream.
    residual_dtype: torch.dtype | None = None

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if feature.dim() != 4 or feature.shape[1] != self.in_channels:
            raise ValueError(f"expected a feature batch (B, {self.in_channels}, H, W), got {tuple(feature.shape)}")
        x = self.fc(feature)
        if self.residual_dtype is not None:
            x = x.to(self.residual_dtype)
        for block in self.middle_blocks():
            x = block(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, LEAKY_SLOPE).to(feature.dtype)))
