"""W, the warping module: estimates a dense 3-D flow from source and driving keypoints and
warps the source feature volume with it."""

import torch
import torch.nn.functional as F
from torch import nn

from lpperf.models.blocks import ConvBlock, Hourglass, coordinate_grid, keypoint_gaussians

KEYPOINT_VARIANCE = 0.01


def blend_motions(mask: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
    """The deformation: each voxel's K+1 candidate motions (B, K+1, D, H, W, 3) weighted by the mask
    (B, K+1, D, H, W) and summed over the candidates, as a product and a sum (the official form). As an
    einsum it became one batched matrix product per voxel (1 x (K+1) by (K+1) x 3) for cuBLAS: on an H100
    (torch 2.11, float32, batch 1) 140 us a frame inside the compiled step, where torch.compile fuses the
    product and sum into one reduction over the 23 MB of operands."""
    return (mask.unsqueeze(-1) * motions).sum(dim=1)


def sample_volumes(volume: torch.Tensor, grids: torch.Tensor, sample_dtype: torch.dtype,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """Each volume of `volume` (B, C, D, H, W) sampled at each of its K grids (B, K, Do, Ho, Wo, 3), as
    F.grid_sample samples (trilinear, zeros outside, align_corners=False) in `sample_dtype`:
    (B, K, C, Do, Ho, Wo) in `out_dtype`. The official code repeats the volume K times to sample it."""
    batch, candidates = grids.shape[:2]
    repeated = volume.unsqueeze(1).expand(batch, candidates, *volume.shape[1:])
    warped = F.grid_sample(repeated.reshape(batch * candidates, *volume.shape[1:]).to(sample_dtype),
                           grids.reshape(batch * candidates, *grids.shape[2:]).to(sample_dtype), align_corners=False)
    return warped.to(out_dtype).view(batch, candidates, *warped.shape[1:])


class DepthFoldedConv2d(nn.Conv2d):
    """A Conv2d over a volume (B, C, D, H, W) read as 2-D channels (B, C*D, H, W), channel c*D + d: the
    official occlusion layer, which sees the hourglass output with its depth folded into channels.
    Given the volume itself, a rewrite can read it where it lies (folding a channels-last volume is a
    copy). Parameters and state-dict keys are the Conv2d's."""

    def __init__(self, volume_channels: int, depth: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__(volume_channels * depth, out_channels, kernel_size, padding=padding)
        self.depth = depth

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return super().forward(volume.flatten(1, 2))


class DenseMotionNetwork(nn.Module):
    """Keypoints + compressed feature volume -> per-voxel mixture of K+1 candidate motions.

    Candidate 0 is the identity (background); candidate k moves each voxel by
    kp_source[k] - kp_driving[k]. A 3-D hourglass sees the feature warped by
    every candidate plus the keypoint heatmap difference and predicts the
    softmax mixing weights (and, optionally, an occlusion map).
    """

    def __init__(self, num_kp: int, feature_channel: int, block_expansion: int, num_blocks: int,
                 max_features: int, reshape_depth: int, compress: int, estimate_occlusion_map: bool = True):
        super().__init__()
        self.num_kp = num_kp
        self.num_blocks = num_blocks
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress)
        if estimate_occlusion_map:
            self.occlusion = DepthFoldedConv2d(self.hourglass.out_filters, reshape_depth, 1, kernel_size=7, padding=3)
        else:
            self.occlusion = None

    # grid_sample precision; None samples in the feature's dtype (the official behaviour). Set to
    # float32 to keep sub-voxel precision when the network runs in half precision.
    sample_dtype: torch.dtype | None = None
    # What samples the volumes, sample_volumes' signature and function; a recipe may give a kernel.
    sampler = staticmethod(sample_volumes)
    # Zero channels appended to the hourglass input. 0 is the official network; a recipe that pads
    # the 3-D convolutions' channels to multiples of 8 (exactly, with zero weights) sets it.
    input_padding: int = 0

    def source_terms(self, feature: torch.Tensor, kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        """What depends only on the source: the compressed, normalised feature and the source
        keypoint heatmaps. Computed once per source when the caller caches it."""
        _, _, depth, height, width = feature.shape
        grid = coordinate_grid(depth, height, width, dtype=kp_source.dtype, device=kp_source.device)
        return {"feature": F.relu(self.norm(self.compress(feature))),
                "heatmap": keypoint_gaussians(kp_source, grid, KEYPOINT_VARIANCE)}

    def hourglass_input(self, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                        terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The hourglass input (B, (K+1)(compress+1), D, H, W) and the candidate motions (B, K+1, D, H, W, 3)."""
        compressed = terms["feature"]
        batch = kp_driving.shape[0]
        depth, height, width = compressed.shape[2:]
        # Keypoint geometry stays in the keypoints' dtype; only the network's tensors take its dtype.
        compute_dtype = compressed.dtype
        sample_dtype = self.sample_dtype or compute_dtype

        grid = coordinate_grid(depth, height, width, dtype=kp_source.dtype, device=kp_source.device)
        shifted = grid + (kp_source - kp_driving)[:, :, None, None, None, :]  # (B, K, D, H, W, 3)
        motions = torch.cat([grid.expand(batch, 1, depth, height, width, 3), shifted], dim=1)

        warped = self.sampler(compressed, motions, sample_dtype, compute_dtype)  # (B, K+1, C, D, H, W)

        heatmap = keypoint_gaussians(kp_driving, grid, KEYPOINT_VARIANCE) - terms["heatmap"]
        heatmap = torch.cat([heatmap.new_zeros(batch, 1, depth, height, width), heatmap], dim=1)
        hourglass_input = torch.cat([heatmap.to(compute_dtype).unsqueeze(2), warped], dim=2)
        return hourglass_input.view(batch, -1, depth, height, width), motions

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                source_terms: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        terms = self.source_terms(feature, kp_source) if source_terms is None else source_terms
        hourglass_input, motions = self.hourglass_input(kp_driving, kp_source, terms)
        if self.input_padding:
            hourglass_input = F.pad(hourglass_input, (0, 0, 0, 0, 0, 0, 0, self.input_padding))
        prediction = self.hourglass(hourglass_input)
        # [:, :K+1] drops the zero channels a padded mask conv adds; a no-op on the official network.
        mask = F.softmax(self.mask(prediction)[:, :self.num_kp + 1], dim=1)  # (B, K+1, D, H, W)
        deformation = blend_motions(mask.to(motions.dtype), motions)
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))
        return out


class WarpingNetwork(nn.Module):
    """W(feature_3d, kp_driving, kp_source) -> {'occlusion_map', 'deformation', 'out'}.

    feature_3d (B, reshape_channel, D, H, W) from F; keypoints (B, num_kp, 3) in
    the [-1, 1] grid frame. out (B, block_expansion * 2^num_down_blocks, H, W),
    deformation (B, D, H, W, 3), occlusion_map (B, 1, H, W) or None when
    estimate_occlusion_map is off.
    """

    def __init__(self, num_kp: int, block_expansion: int, max_features: int, num_down_blocks: int,
                 reshape_channel: int, estimate_occlusion_map: bool, dense_motion_params: dict):
        super().__init__()
        depth = dense_motion_params["reshape_depth"]
        if reshape_channel * depth != max_features:
            raise ValueError(
                f"reshape_channel * dense_motion_params['reshape_depth'] must equal max_features (the warped "
                f"volume is read as 2-D channels); got {reshape_channel} * {depth} != {max_features}")
        self.num_kp = num_kp
        self.reshape_channel = reshape_channel
        self.reshape_depth = depth
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp, feature_channel=reshape_channel, estimate_occlusion_map=estimate_occlusion_map,
            **dense_motion_params)
        channels = block_expansion * 2 ** num_down_blocks
        self.third = ConvBlock(max_features, channels, negative_slope=0.01)
        self.fourth = nn.Conv2d(channels, channels, kernel_size=1)

    def _check_inputs(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> None:
        step = 2 ** self.dense_motion_network.num_blocks
        if (feature_3d.dim() != 5 or feature_3d.shape[1:3] != (self.reshape_channel, self.reshape_depth)
                or feature_3d.shape[3] % step or feature_3d.shape[4] % step):
            raise ValueError(
                f"feature_3d must be (B, {self.reshape_channel}, {self.reshape_depth}, H, W) with H and W "
                f"multiples of {step}; got shape {tuple(feature_3d.shape)}")
        expected = (feature_3d.shape[0], self.num_kp, 3)
        for name, kp in (("kp_driving", kp_driving), ("kp_source", kp_source)):
            if tuple(kp.shape) != expected:
                raise ValueError(f"{name} must have shape {expected} (reshape flat keypoints with "
                                 f".view(B, -1, 3)); got {tuple(kp.shape)}")

    @property
    def sample_dtype(self) -> torch.dtype | None:
        return self.dense_motion_network.sample_dtype

    @sample_dtype.setter
    def sample_dtype(self, dtype: torch.dtype | None) -> None:
        self.dense_motion_network.sample_dtype = dtype

    def source_terms(self, feature_3d: torch.Tensor, kp_source: torch.Tensor) -> dict[str, torch.Tensor]:
        """The source-only work of the dense-motion network, to pass back as `source_terms`."""
        return self.dense_motion_network.source_terms(feature_3d, kp_source)

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                source_terms: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor | None]:
        self._check_inputs(feature_3d, kp_driving, kp_source)
        dense_motion = self.dense_motion_network(feature_3d, kp_driving, kp_source, source_terms)
        deformation = dense_motion["deformation"]
        occlusion_map = dense_motion.get("occlusion_map")
        sample_dtype = self.sample_dtype or feature_3d.dtype
        out = self.dense_motion_network.sampler(feature_3d, deformation.unsqueeze(1), sample_dtype,
                                                feature_3d.dtype).squeeze(1)
        out = self.fourth(self.third(out.flatten(1, 2)))
        if occlusion_map is not None:
            out = out * occlusion_map
        return {"occlusion_map": occlusion_map, "deformation": deformation, "out": out}
