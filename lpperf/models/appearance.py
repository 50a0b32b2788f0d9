"""F, the appearance feature extractor: source image -> 3-D appearance feature volume."""

import torch
from torch import nn

from lpperf.models.blocks import ConvBlock, ResBlock3d


class AppearanceFeatureExtractor(nn.Module):
    """Image (B, image_channel, H, W) -> features (B, reshape_channel, reshape_depth, H/2^n, W/2^n).

    A 2-D encoder with n = num_down_blocks halvings; its max_features channels
    are then read as a reshape_channel x reshape_depth volume and refined by
    num_resblocks 3-D residual blocks.
    """

    def __init__(self, image_channel: int, block_expansion: int, num_down_blocks: int, max_features: int,
                 reshape_channel: int, reshape_depth: int, num_resblocks: int):
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError(
                f"reshape_channel * reshape_depth must equal max_features to fold the 2-D features into a volume; "
                f"got {reshape_channel} * {reshape_depth} != {max_features}")
        self.image_channel = image_channel
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth

        self.first = ConvBlock(image_channel, block_expansion)
        blocks = []
        channels = block_expansion
        for level in range(num_down_blocks):
            out_channels = min(max_features, block_expansion * 2 ** (level + 1))
            blocks.append(ConvBlock(channels, out_channels, pool=(2, 2)))
            channels = out_channels
        self.down_blocks = nn.ModuleList(blocks)
        self.second = nn.Conv2d(channels, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for index in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{index}", ResBlock3d(reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != self.image_channel:
            raise ValueError(f"expected an image batch (B, {self.image_channel}, H, W), got shape {tuple(image.shape)}")
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        batch, _, height, width = out.shape
        volume = out.view(batch, self.reshape_channel, self.reshape_depth, height, width)
        return self.resblocks_3d(volume)
