"""M, the motion extractor: a ConvNeXt-V2 backbone with linear heads for pose, translation,
expression, scale and canonical keypoints. Parameters live under `detector.` as in the
official checkpoint."""

import torch
import torch.nn.functional as F
from torch import nn

# (blocks per stage, channels per stage)
BACKBONES = {
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
}
LAYER_NORM_EPS = 1e-6


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an (N, C, H, W) tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, LAYER_NORM_EPS)
        return x.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on channels-last input: x + gamma * x * (spatial L2 norm / its channel mean) + beta."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_norm = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        relative = spatial_norm / (spatial_norm.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * relative) + self.beta + x


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, 4x MLP with GELU and GRN, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.grn = GlobalResponseNorm(4 * channels)
        self.pwconv2 = nn.Linear(4 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """Backbone plus the LivePortrait heads; returns the raw head outputs."""

    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], num_kp: int, num_bins: int, in_chans: int = 3):
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXtV2 has four stages; got depths {depths} and dims {dims}")
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0]))
        downsamplers = [stem] + [
            nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            for i in range(3)]
        self.downsample_layers = nn.ModuleList(downsamplers)
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)]) for depth, dim in zip(depths, dims))
        self.norm = nn.LayerNorm(dims[-1], eps=LAYER_NORM_EPS)
        width = dims[-1]
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        x = self.norm(x.mean(dim=(-2, -1)))
        return {
            "pitch": self.fc_pitch(x),
            "yaw": self.fc_yaw(x),
            "roll": self.fc_roll(x),
            "t": self.fc_t(x),
            "exp": self.fc_exp(x),
            "scale": self.fc_scale(x),
            "kp": self.fc_kp(x),
        }


class MotionExtractor(nn.Module):
    """Image (B, 3, H, W) -> dict of pitch/yaw/roll bin logits (B, num_bins), t (B, 3),
    exp (B, 3*num_kp), scale (B, 1), kp (B, 3*num_kp).

    `backbone` names the stage layout; `depths` / `dims` override it (small test configs).
    """

    def __init__(self, num_kp: int, backbone: str = "convnextv2_tiny", num_bins: int = 66,
                 depths: tuple[int, ...] | None = None, dims: tuple[int, ...] | None = None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown motion backbone {backbone!r}; known: {sorted(BACKBONES)}")
        default_depths, default_dims = BACKBONES[backbone]
        self.detector = ConvNeXtV2(tuple(depths or default_depths), tuple(dims or default_dims), num_kp, num_bins)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an image batch (B, 3, H, W), got shape {tuple(image.shape)}")
        return self.detector(image)
