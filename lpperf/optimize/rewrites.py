"""Exact layer rewrites: the same function as the layers they replace, in cheaper or better-shaped
convolutions. "Exact" means equal up to floating-point summation order (float64 relative error
~1e-15; tests/test_rewrites.py holds each one to 1e-6).

Each rewrite edits a network in place and returns the names of what it changed (the SPADE one
returns the new decoder, which replaces the whole network):

- fold_batch_norms: eval-mode BatchNorm right after a convolution folded into its weights.
- batch_spade_modulations: G's SPADE hidden maps depend only on G's input, so all of them are
  computed up front, one concatenated convolution per resolution; then one gamma/beta convolution
  per SPADE.
- normalize_before_upsample: an instance norm of a nearest-upsampled map is the upsampled
  instance norm of the map (every value repeated alike), so G's upsampling stages take their
  statistics at the lower resolution.
- phase_split_upsampled_convs, phase_split_upsampling_blocks: a 3x3 convolution of an s-times
  nearest-upsampled map (G's SPADE hidden maps; W's hourglass decoder, upsampled in the plane) run at
  the low resolution as one 2x2 convolution to s*s phases plus pixel shuffle: 4/9 of the FLOPs.
- depth_split_conv3ds: a Conv3d (kd, k, k) as one Conv2d over the depth slices producing every
  depth tap, then a shifted sum over the taps.
- fft_conv3ds: a Conv3d with in-plane FFTs, one matmul per frequency and a shifted sum of the
  depth taps' spectra.
- occlusion_as_taps: a k x k convolution over a volume's depth-folded channels as a full-depth 1x1
  Conv3d to one map per tap, then the maps shifted by their tap offsets and summed.

Over 400 lines as one module: each rewrite is a layer class with its exactness argument, and they share
the tap and channel helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lpperf.models.blocks import ConvBlock, HourglassDecoder
from lpperf.models.spade import LEAKY_SLOPE, SPADE, SPADEDecoder, SPADEResnetBlock
from lpperf.models.warping import DenseMotionNetwork, DepthFoldedConv2d

# --------------------------------------------------------------------------------------
# BatchNorm folding


def fold_conv_batch_norm(conv: nn.Conv2d | nn.Conv3d, norm: _BatchNorm) -> None:
    """Rescale `conv`'s filters and shift its bias so that conv(x) equals norm(conv(x)) for the
    eval-mode `norm`. Computed in float64, stored in the convolution's dtype and layout."""
    if norm.training or norm.running_mean is None or norm.running_var is None:
        raise ValueError("only an eval-mode BatchNorm with running statistics can be folded; call .eval() first")
    if norm.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {norm.num_features} channels, the convolution {conv.out_channels} outputs")
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        weight = conv.weight
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
        weight.copy_(weight.double() * scale.view(-1, *[1] * (weight.dim() - 1)))
        folded_bias = (bias * scale + shift).to(weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(folded_bias)
        else:
            conv.bias.copy_(folded_bias)


def fold_batch_norms(net: nn.Module) -> list[str]:
    """Fold every eval-mode BatchNorm that directly follows a convolution (ConvBlock, the
    hourglass decoder's last conv + norm, W's compress + norm) into it; the norm becomes
    nn.Identity. Pre-activation norms (ResBlock3d: norm before conv) are left alone.
    Returns the names of the modules whose norm was folded."""
    folded = []
    for name, module in list(net.named_modules()):
        conv_name = _conv_before_norm(module)
        if conv_name is None:
            continue
        conv, norm = getattr(module, conv_name), module.norm
        if type(conv) in (nn.Conv2d, nn.Conv3d) and isinstance(norm, _BatchNorm):
            fold_conv_batch_norm(conv, norm)
            module.norm = nn.Identity()
            folded.append(name)
    return folded


def _conv_before_norm(module: nn.Module) -> str | None:
    """The attribute name of the convolution whose output `module.norm` normalises, if any."""
    if isinstance(module, (ConvBlock, HourglassDecoder)):
        return "conv"
    if isinstance(module, DenseMotionNetwork):
        return "compress"
    return None


# --------------------------------------------------------------------------------------
# G: SPADE hidden maps computed up front, one gamma/beta convolution per SPADE


def modulate(normalized: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
             slope: float | None = None) -> torch.Tensor:
    """What SPADE.forward computes once its input is normalised (F.instance_norm) and gamma and beta
    are known; then the leaky ReLU that follows it in a block, where a slope is given."""
    modulated = normalized * (1 + gamma) + beta
    return modulated if slope is None else F.leaky_relu(modulated, slope)


def concatenated_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One Conv2d computing all of `convs` (same input, same geometry), outputs concatenated."""
    first = convs[0]
    geometry = (first.in_channels, first.kernel_size, first.stride, first.padding, first.dilation, first.groups,
                first.padding_mode, first.bias is not None)
    for conv in convs:
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"expected plain nn.Conv2d layers, got {type(conv).__name__}")
        other = (conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                 conv.padding_mode, conv.bias is not None)
        if other != geometry:
            raise ValueError(f"convolutions to concatenate must share input and geometry; got {geometry} and {other}")
    weight = first.weight
    joined = nn.Conv2d(first.in_channels, sum(conv.out_channels for conv in convs), first.kernel_size,
                       stride=first.stride, padding=first.padding, dilation=first.dilation, groups=first.groups,
                       bias=first.bias is not None, padding_mode=first.padding_mode,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        joined.weight.copy_(torch.cat([conv.weight for conv in convs]))
        if first.bias is not None:
            joined.bias.copy_(torch.cat([conv.bias for conv in convs]))
    return joined


class NearestUpsampledConv(nn.Module):
    """conv(nearest-upsample(x, scale)): what a SPADE's mlp_shared computes on G's input when
    the SPADE runs at `scale` times G's input resolution."""

    def __init__(self, conv: nn.Conv2d, scale: int):
        super().__init__()
        self.conv = conv
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))  # as SPADE.forward resizes


def _spades_of(block: SPADEResnetBlock) -> list[SPADE]:
    """The block's SPADEs in the order ModulatedResnetBlock consumes their hidden maps."""
    return [block.norm_0, block.norm_1] + ([block.norm_s] if block.learned_shortcut else [])


INSTANCE_NORM_EPS = 1e-5  # F.instance_norm's default, which SPADE uses


class NormalizedStream:
    """G's residual stream as a block's SPADEs read it: x normalised per channel (F.instance_norm), then
    nearest-upsampled by `upsample`. Each form is computed once, on first use, and shared by the SPADEs
    that read the same stream (norm_0 and norm_s)."""

    def __init__(self, x: torch.Tensor, upsample: int = 1):
        self.x = x
        self.upsample = upsample
        self._normalized: torch.Tensor | None = None
        self._statistics: tuple[torch.Tensor, torch.Tensor] | None = None

    def normalized(self) -> torch.Tensor:
        if self._normalized is None:
            self._normalized = _upsampled(F.instance_norm(self.x), self.upsample)
        return self._normalized

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, rstd), each (B, C), float32 or wider: what F.instance_norm normalises x with."""
        if self._statistics is None:
            wide = self.x.to(torch.promote_types(self.x.dtype, torch.float32))
            variance, mean = torch.var_mean(wide, dim=(2, 3), correction=0)
            self._statistics = mean, torch.rsqrt(variance + INSTANCE_NORM_EPS)
        return self._statistics


class SpadeModulation(nn.Module):
    """One SPADE given its hidden map: act(norm(x) * (1 + gamma) + beta), gamma and beta from one
    convolution (mlp_gamma and mlp_beta concatenated), act the leaky ReLU when a slope is given."""

    def __init__(self, spade: SPADE):
        super().__init__()
        self.gamma_beta = concatenated_conv([spade.mlp_gamma, spade.mlp_beta])

    def forward(self, stream: NormalizedStream, hidden: torch.Tensor, slope: float | None) -> torch.Tensor:
        gamma, beta = self.gamma_beta(hidden).chunk(2, dim=1)
        return modulate(stream.normalized(), gamma, beta, slope)


class SpadeHiddens(nn.Module):
    """The hidden maps (after mlp_shared's ReLU) of a group of SPADEs that all see G's input at `scale`
    times its size: one convolution for every mlp_shared of the group."""

    def __init__(self, spades: Sequence[SPADE], scale: int):
        super().__init__()
        for spade in spades:
            if not (isinstance(spade.mlp_shared, nn.Sequential) and len(spade.mlp_shared) == 2
                    and isinstance(spade.mlp_shared[1], nn.ReLU)):
                raise ValueError("a SPADE's mlp_shared must be (Conv2d, ReLU)")
        shared = concatenated_conv([spade.mlp_shared[0] for spade in spades])
        self.shared = shared if scale == 1 else NearestUpsampledConv(shared, scale)
        self.hidden_sizes = [spade.mlp_shared[0].out_channels for spade in spades]

    def forward(self, seg: torch.Tensor) -> list[torch.Tensor]:
        # ReLU per part: it writes each channel slice densely, which the gamma/beta conv needs anyway.
        return [F.relu(part) for part in self.shared(seg).split(self.hidden_sizes, dim=1)]


class ModulatedResnetBlock(nn.Module):
    """SPADEResnetBlock taking its SPADEs' hidden maps precomputed; same convolutions (the very
    modules, spectral norm included), same dtype casts. `spades` are its SPADEs' modulations in the
    order of `hiddens`: norm_0, norm_1, then norm_s if the shortcut is learned."""

    def __init__(self, block: SPADEResnetBlock):
        super().__init__()
        self.learned_shortcut = block.learned_shortcut
        self.conv_0 = block.conv_0
        self.conv_1 = block.conv_1
        if block.learned_shortcut:
            self.conv_s = block.conv_s
        self.spades = nn.ModuleList(SpadeModulation(spade) for spade in _spades_of(block))

    def forward(self, x: torch.Tensor, hiddens: Sequence[torch.Tensor], dtype: torch.dtype,
                upsample: int = 1) -> torch.Tensor:
        """The block on nearest-upsample(x, upsample). With upsample > 1 x is normalised before it is
        upsampled: a nearest upsampling repeats every value upsample**2 times, so the instance norm's
        mean and (biased) variance are those of x, and norm(up(x)) = up(norm(x)) exactly; the
        statistics are taken over 1/upsample**2 of the values."""
        # As SPADEResnetBlock.forward: convolutions run in `dtype` (the network's), x may be wider.
        stream = NormalizedStream(x, upsample)
        norm_0, norm_1, *norm_s = self.spades
        if self.learned_shortcut:
            shortcut = self.conv_s(norm_s[0](stream, hiddens[2], None).to(dtype))
        else:
            shortcut = _upsampled(x, upsample)
        dx = self.conv_0(norm_0(stream, hiddens[0], LEAKY_SLOPE).to(dtype))
        dx = self.conv_1(norm_1(NormalizedStream(dx), hiddens[1], LEAKY_SLOPE).to(dtype))
        return shortcut.to(x.dtype) + dx.to(x.dtype)


def _upsampled(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x if scale == 1 else F.interpolate(x, scale_factor=scale)


class ModulatedStage(nn.Module):
    """Residual blocks at one resolution (after a nearest x`upsample` of the stream) with the
    hidden maps of all their SPADEs computed by one SpadeHiddens. With normalize_first the
    stage's first block normalises the stream before the upsampling (ModulatedResnetBlock.forward:
    the same function, its statistics over 1/upsample**2 of the values)."""

    normalize_first: bool = False

    def __init__(self, blocks: Sequence[SPADEResnetBlock], upsample: int, scale: int):
        super().__init__()
        self.upsample = upsample
        self.blocks = nn.ModuleList(ModulatedResnetBlock(block) for block in blocks)
        self.hiddens = SpadeHiddens([spade for block in blocks for spade in _spades_of(block)], scale)

    def forward(self, x: torch.Tensor, hiddens: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        upsample = self.upsample
        if upsample != 1 and not self.normalize_first:
            x, upsample = F.interpolate(x, scale_factor=upsample), 1
        start = 0
        for block in self.blocks:
            x = block(x, hiddens[start:start + len(block.spades)], dtype, upsample)
            start += len(block.spades)
            upsample = 1
        return x


class BatchedSPADEDecoder(nn.Module):
    """SPADEDecoder with every SPADE's hidden map computed up front from the input feature: per
    resolution (the G_middle blocks at the feature's size, up_0 at 2x, up_1 at 4x) one
    convolution for all mlp_shared; then in each block one per SPADE for gamma and beta. Same function, same
    dtype behaviour (residual_dtype included); shares fc, the block convolutions and conv_img
    with the decoder it is built from."""

    residual_dtype: torch.dtype | None = None

    def __init__(self, decoder: SPADEDecoder):
        super().__init__()
        self.in_channels = decoder.in_channels
        self.upscale = decoder.upscale
        self.residual_dtype = decoder.residual_dtype
        self.fc = decoder.fc
        self.stages = nn.ModuleList([
            ModulatedStage(decoder.middle_blocks(), upsample=1, scale=1),
            ModulatedStage([decoder.up_0], upsample=2, scale=2),
            ModulatedStage([decoder.up_1], upsample=2, scale=4),
        ])
        self.conv_img = decoder.conv_img
        self.train(decoder.training)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if feature.dim() != 4 or feature.shape[1] != self.in_channels:
            raise ValueError(f"expected a feature batch (B, {self.in_channels}, H, W), got {tuple(feature.shape)}")
        # What depends on the feature alone first: the shared convolutions of all SPADEs.
        hiddens = [stage.hiddens(feature) for stage in self.stages]
        x = self.fc(feature)
        if self.residual_dtype is not None:
            x = x.to(self.residual_dtype)
        for stage, stage_hiddens in zip(self.stages, hiddens):
            x = stage(x, stage_hiddens, feature.dtype)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, LEAKY_SLOPE).to(feature.dtype)))


def batch_spade_modulations(decoder: SPADEDecoder) -> BatchedSPADEDecoder:
    """The BatchedSPADEDecoder computing what `decoder` computes (which it shares modules with)."""
    if not isinstance(decoder, SPADEDecoder):
        raise TypeError(f"expected a SPADEDecoder, got {type(decoder).__name__}")
    return BatchedSPADEDecoder(decoder)


def normalize_before_upsample(decoder: BatchedSPADEDecoder) -> list[str]:
    """Let every upsampling stage of `decoder` normalise its stream before upsampling it; the names
    of the stages changed (none if all already do)."""
    if not isinstance(decoder, BatchedSPADEDecoder):
        raise TypeError(f"expected a BatchedSPADEDecoder (batch_spade_modulations), got {type(decoder).__name__}")
    changed = [f"stages.{index}" for index, stage in enumerate(decoder.stages)
               if stage.upsample != 1 and not stage.normalize_first]
    for name in changed:
        decoder.get_submodule(name).normalize_first = True
    return changed


# --------------------------------------------------------------------------------------
# phase split: a 3x3 convolution of a nearest-upsampled map, computed at the low resolution


def _phase_taps(scale: int) -> torch.Tensor:
    """(scale, 2, 3) 0/1 matrix: for each output phase, in the channel order PhaseSplitConv uses,
    which of the 3 taps of one axis fall on each of the 2 low-resolution taps.

    Along one axis, high-res output i = scale*a + p reads upsampled pixels i-1, i, i+1, i.e.
    low-res pixels a + (p + k - 1) // scale for taps k = 0, 1, 2: two neighbouring pixels
    a + window - 1 and a + window with window 0 for the first half of the phases (they reach
    back to a - 1) and 1 for the others (they reach forward to a + 1). A 2-tap convolution with
    padding 1 computes z[j] = v0 x[j - 1] + v1 x[j], so phase p is z[a + window]. Listing the
    phases rotated by r = scale // 2 (channel q holds phase (q - r) % scale) makes every output
    pixel i the (i + r)-th pixel of the pixel-shuffled z: one slice instead of a gather."""
    rotation = scale // 2
    taps = torch.zeros(scale, 2, 3, dtype=torch.float64)
    for channel in range(scale):
        phase = (channel - rotation) % scale
        window = 0 if phase < scale - rotation else 1
        for k in range(3):
            low = (phase + k - 1) // scale  # -1, 0 or 1: which low-res neighbour tap k reads
            taps[channel, low - window + 1, k] = 1.0
    return taps


def phase_split_weight(weight: torch.Tensor, scale: int) -> torch.Tensor:
    """The (Cout * scale^2, Cin, *depth, 2, 2) weight of PhaseSplitConv for a (Cout, Cin, *depth, 3, 3)
    weight (depth: a Conv3d's depth kernel, kept as it is); output channel o * scale^2 + qy * scale + qx
    (pixel_shuffle's order), float64."""
    taps = _phase_taps(scale).to(weight.device)
    split = torch.einsum("ytk,xul,oi...kl->oyxi...tu", taps, taps, weight.double())
    return split.reshape(weight.shape[0] * scale * scale, *weight.shape[1:-2], 2, 2)


class PhaseSplitConv(nn.Module):
    """conv(nearest-upsample(x, scale)) for a convolution with a 3x3 plane kernel and padding 1 in the
    plane (a Conv2d, or a Conv3d with any depth kernel and padding, upsampled in the plane only),
    computed at x's resolution: one convolution with a 2x2 plane kernel (padding 1) to scale^2 phases
    per output channel, pixel shuffle, and a slice. Exact; 4/9 of the FLOPs of the convolution it
    replaces, with scale^2 times its output channels on 1/scale^2 of its pixels."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, scale: int):
        super().__init__()
        _check_plain_conv(conv, nn.Conv2d, nn.Conv3d)
        if conv.kernel_size[-2:] != (3, 3) or conv.padding[-2:] != (1, 1):
            raise ValueError(f"phase split needs a 3x3 plane kernel with padding 1 in the plane, got kernel "
                             f"{conv.kernel_size} padding {conv.padding}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
            raise ValueError(f"phase split needs an integer upsampling scale >= 2, got {scale!r}")
        self.scale = scale
        weight = conv.weight
        self.conv = type(conv)(conv.in_channels, conv.out_channels * scale * scale,
                               (*conv.kernel_size[:-2], 2, 2), padding=(*conv.padding[:-2], 1, 1),
                               bias=conv.bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(phase_split_weight(weight, scale))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.repeat_interleave(scale * scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        # pixel_shuffle takes the channels third from last: a volume's depth moves before them and back
        phases = self.conv(x).movedim(1, -3)
        shuffled = F.pixel_shuffle(phases, self.scale).movedim(-3, 1)  # (B, Cout, *D, s (H+1), s (W+1))
        start = self.scale // 2
        return shuffled[..., start:start + self.scale * height, start:start + self.scale * width]


def phase_split_upsampled_convs(net: nn.Module) -> list[str]:
    """Replace every NearestUpsampledConv (scale >= 2) in `net` with its PhaseSplitConv."""
    return _replace_children(net, lambda parent, name, child: isinstance(child, NearestUpsampledConv)
                             and child.scale >= 2,
                             lambda child: PhaseSplitConv(child.conv, child.scale))


def phase_split_upsampling_blocks(net: nn.Module) -> list[str]:
    """In every ConvBlock of `net` that upsamples its input (W's hourglass decoder) with a 3x3 plane
    kernel, the upsampling and convolution as one PhaseSplitConv on the input as it comes; the names of
    the blocks changed."""
    changed = []
    for name, block in net.named_modules():
        if (isinstance(block, ConvBlock) and block.upsample > 1 and type(block.conv) in (nn.Conv2d, nn.Conv3d)
                and block.conv.kernel_size[-2:] == (3, 3) and block.conv.padding[-2:] == (1, 1)):
            block.conv = PhaseSplitConv(block.conv, block.upsample)
            block.upsample = 1
            changed.append(name)
    return changed


# --------------------------------------------------------------------------------------
# Conv3d as a Conv2d over depth slices


class DepthSplitConv3d(nn.Module):
    """A stride-1 Conv3d with kernel (kd, kh, kw) and 'same' depth padding (kd // 2), as one
    Conv2d over the D depth slices (a batch of B*D images) computing all kd depth taps at once
    (kd * Cout channels), then out[:, :, d] = bias + sum_t Y[d + t - pd, t] over the slices that
    exist (the zero depth padding contributes nothing and is never computed). Same FLOPs as the
    Conv3d; the taps are summed in float32 at least."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        _check_plain_conv(conv, nn.Conv3d)
        depth_kernel, depth_padding = conv.kernel_size[0], conv.padding[0]
        if 2 * depth_padding != depth_kernel - 1:
            raise ValueError(f"DepthSplitConv3d needs 'same' depth padding (kernel_size[0] // 2 with an odd depth "
                             f"kernel), got depth kernel {depth_kernel} padding {depth_padding}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        with torch.no_grad():
            # (Cout, C, kd, kh, kw) -> (kd * Cout, C, kh, kw): output channel t * Cout + o is tap t of filter o
            weight = conv.weight.permute(2, 0, 1, 3, 4).reshape(depth_kernel * conv.out_channels,
                                                                 conv.in_channels, *conv.kernel_size[1:])
            self.weight = nn.Parameter(weight.clone())
            # Always a bias (zeros if the Conv3d had none): adding it also allocates the sum's
            # buffer in the taps' memory order, which a copy of the strided slice would not.
            bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)
            self.bias = nn.Parameter(bias.detach().clone())
        self.input_padding = 0

    def pad_input_channels(self, multiple: int) -> int:
        """Give the Conv2d zero filters for zero input channels appended up to a multiple of
        `multiple` (exact: they add nothing); the channels added. For the kernel's reduction tile."""
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
        pad = -self.weight.shape[1] % multiple
        if pad:
            with torch.no_grad():  # F.pad keeps the weight's memory format
                self.weight = nn.Parameter(F.pad(self.weight, (0, 0, 0, 0, 0, pad)))
            self.input_padding += pad
        return pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = x.shape
        # (B, C, D, H, W) -> (B*D, C, H, W): a view (channels-last 2-D) when x is channels_last_3d.
        slices = x.transpose(1, 2).reshape(batch * depth, channels, height, width)
        if self.input_padding:
            slices = F.pad(slices, (0, 0, 0, 0, 0, self.input_padding))
        taps = F.conv2d(slices, self.weight, padding=self.padding[1:])
        depth_kernel, depth_padding = self.kernel_size[0], self.padding[0]
        taps = taps.unflatten(0, (batch, depth)).unflatten(2, (depth_kernel, self.out_channels))
        # (B, D, kd, Cout, H', W'); sum in float32 at least, so half precision rounds once, as the Conv3d.
        accumulate = torch.promote_types(taps.dtype, torch.float32)
        out = taps[:, :, depth_padding] + self.bias.to(accumulate).view(-1, 1, 1)
        _add_shifted_depth_taps(out, taps, depth_dim=1, depth_padding=depth_padding)
        # (B, D, Cout, H, W) -> (B, Cout, D, H, W): channels_last_3d when x was.
        return out.to(taps.dtype).transpose(1, 2)


def _add_shifted_depth_taps(out: torch.Tensor, taps: torch.Tensor, depth_dim: int, depth_padding: int) -> None:
    """out[d] += taps[d + t - depth_padding, t] for every tap t but the centre one (out holds it
    already), over the slices that exist; taps has the tap index right after depth_dim."""
    depth = out.shape[depth_dim]
    for tap in range(taps.shape[depth_dim + 1]):
        shift = tap - depth_padding
        first, last = max(0, -shift), min(depth, depth - shift)
        if shift == 0 or last <= first:  # a volume shallower than the tap's reach: it touches no slice
            continue
        out.narrow(depth_dim, first, last - first).add_(
            taps.narrow(depth_dim, first + shift, last - first).select(depth_dim + 1, tap))


def depth_split_conv3ds(net: nn.Module, every_conv3d: bool = False) -> list[str]:
    """Replace the dense-motion `mask` Conv3d of `net` (W) with a DepthSplitConv3d; with
    every_conv3d, every nn.Conv3d whose depth kernel is > 1."""
    def selected(parent: nn.Module, name: str, child: nn.Module) -> bool:
        if type(child) is not nn.Conv3d:
            return False
        if every_conv3d:
            return child.kernel_size[0] > 1
        return isinstance(parent, DenseMotionNetwork) and name == "mask"

    return _replace_children(net, selected, DepthSplitConv3d)


# --------------------------------------------------------------------------------------
# Conv3d in the frequency domain


class FFTConv3d(nn.Module):
    """A stride-1 Conv3d with 'same' padding on (H, W) planes fixed at construction, computed
    in-plane by real FFTs: per frequency of the zero-padded (H + kh - 1) x (W + kw - 1) plane, one
    matmul of the depth slices' spectra (B*D x Cin) with the filters' conjugate spectra (Cin x kd*Cout:
    every depth tap), then the depth taps as a shifted sum of spectra and one inverse FFT per output
    channel. The planes are large enough that the circular correlation never wraps into the kept
    H x W outputs, so this is the convolution, rounded differently: in float32 (float64 for a float64
    convolution) whatever the input dtype. The product per frequency is a complex float32 matmul, so
    where TF32 matmuls are allowed (every recipe but `reference`) cuBLAS may round its inputs to
    TF32's 10-bit mantissa, the rounding of the half-precision Conv3d it replaces.

    Cost: the filters' spectra stay on the device (Cin * kd * Cout * (H + kh - 1) * ((W + kw - 1) // 2
    + 1) complex numbers: 447 MB for W's mask, 22 filters at 64 x 64) and each chunk of frames reads
    them once; the FLOPs fall to ~1/20 for W's mask (a complex multiply-add per input channel, tap and
    output at each of 70 x 36 frequencies, against 49 real ones at each of 64 x 64 pixels, plus the
    FFTs), so it pays where the direct convolution is compute-bound (batched frames).
    `frames_per_chunk` bounds the working memory (the input's and the taps' spectra) to that many
    frames at a time; `outputs` keeps only the first filters (a padded layer's zero filters need no
    spectra)."""

    def __init__(self, conv: nn.Conv3d, plane: tuple[int, int], frames_per_chunk: int = 8,
                 outputs: int | None = None):
        super().__init__()
        _check_plain_conv(conv, nn.Conv3d)
        if any(2 * pad != size - 1 for pad, size in zip(conv.padding, conv.kernel_size)):
            raise ValueError(f"FFTConv3d needs 'same' padding (kernel_size // 2 with odd kernels), got kernel "
                             f"{conv.kernel_size} padding {conv.padding}")
        if frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
        outputs = conv.out_channels if outputs is None else outputs
        if not 1 <= outputs <= conv.out_channels:
            raise ValueError(f"outputs must be 1..{conv.out_channels} (the convolution's filters), got {outputs}")
        self.in_channels, self.out_channels = conv.in_channels, outputs
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        self.plane = tuple(plane)
        self.fft_plane = tuple(size + kernel - 1 for size, kernel in zip(self.plane, conv.kernel_size[1:]))
        self.frames_per_chunk = frames_per_chunk
        with torch.no_grad():
            # On the CPU: the float64 transforms take ~2 GB for W's mask, which on the GPU would stay
            # reserved by the caching allocator and count in every NVML reading after the build.
            weight = conv.weight[:outputs].detach().cpu().double()
            filters = weight.new_zeros(*weight.shape[:3], *self.fft_plane)
            filters[..., :weight.shape[3], :weight.shape[4]] = weight
            # (Cout, Cin, kd, Fh, Fw) -> (Fh * Fw, Cin, kd * Cout): column t * Cout + o is tap t of filter o;
            # conjugated, since a convolution layer correlates.
            spectrum = torch.fft.rfft2(filters).conj().permute(3, 4, 1, 2, 0).reshape(
                -1, conv.in_channels, conv.kernel_size[0] * outputs)
            complex_dtype = torch.complex128 if conv.weight.dtype == torch.float64 else torch.complex64
            self.register_buffer("spectrum", spectrum.to(complex_dtype).contiguous().to(conv.weight.device))
            bias = conv.bias[:outputs] if conv.bias is not None else conv.weight.new_zeros(outputs)
            self.bias = nn.Parameter(bias.detach().clone())

    def _apply(self, fn, recurse=True):
        # A network cast must not reach the spectrum: Module.to(torch.float16) casts complex buffers too,
        # dropping their imaginary parts. Moves to another device still carry it.
        spectrum = self._buffers.pop("spectrum")
        try:
            super()._apply(fn, recurse)
        finally:
            device = fn(torch.zeros((), device=spectrum.device)).device
            self._buffers["spectrum"] = spectrum.to(device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels or tuple(x.shape[3:]) != self.plane:
            raise ValueError(f"FFTConv3d was built for (B, {self.in_channels}, D, {self.plane[0]}, {self.plane[1]}) "
                             f"inputs, got {tuple(x.shape)}; rebuild it for this plane size")
        chunks = [self._convolve(part) for part in x.split(self.frames_per_chunk)]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out.to(x.dtype)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = x.shape
        depth_kernel, depth_padding = self.kernel_size[0], self.padding[0]
        pad_h, pad_w = self.padding[1:]
        real = torch.float64 if self.spectrum.dtype == torch.complex128 else torch.float32
        planes = F.pad(x.to(real), (pad_w, pad_w, pad_h, pad_h))
        spectra = torch.fft.rfft2(planes)  # (B, Cin, D, Fh, Fw')
        fft_h, half_w = spectra.shape[-2:]
        # one (B*D x Cin) @ (Cin x kd*Cout) product per frequency
        rows = spectra.permute(3, 4, 0, 2, 1).reshape(fft_h * half_w, batch * depth, channels)
        taps = torch.bmm(rows, self.spectrum).view(fft_h * half_w, batch, depth, depth_kernel, self.out_channels)
        # The tap sum on the real and imaginary parts: inductor generates no code for complex tensors
        # (each complex add would be an ATen kernel of its own), for real ones it fuses the whole sum.
        taps = torch.view_as_real(taps)
        out = taps[:, :, :, depth_padding].clone()
        _add_shifted_depth_taps(out, taps, depth_dim=2, depth_padding=depth_padding)
        # (Fh * Fw', B, D, Cout) -> (B, Cout, D, Fh, Fw')
        out = torch.view_as_complex(out).view(fft_h, half_w, batch, depth, self.out_channels).permute(2, 4, 3, 0, 1)
        planes = torch.fft.irfft2(out, s=self.fft_plane)[..., :height, :width]
        return planes + self.bias.to(real).view(-1, 1, 1, 1)


def fft_conv3ds(net: nn.Module, plane: tuple[int, int], frames_per_chunk: int = 8) -> list[str]:
    """Replace the dense-motion `mask` Conv3d of `net` (W), whose input planes are `plane`, with an
    FFTConv3d of its K + 1 real filters (zero filters padded on by pad_warp_channels are dropped:
    W keeps only the first K + 1 mask channels anyway)."""
    dense = [module for module in net.modules() if isinstance(module, DenseMotionNetwork)]
    outputs = dense[0].num_kp + 1 if dense else None
    return _replace_children(net, lambda parent, name, child: isinstance(parent, DenseMotionNetwork)
                             and name == "mask" and type(child) is nn.Conv3d,
                             lambda conv: FFTConv3d(conv, plane, frames_per_chunk, outputs))


# --------------------------------------------------------------------------------------
# a wide k x k convolution to few outputs as per-tap maps


class TapSumConv2d(nn.Module):
    """A stride-1 k x k DepthFoldedConv2d (a volume's depth folded into channels) to few outputs, as
    one Conv3d with a full-depth 1 x 1 kernel to a map per (output, tap), which reads the volume where
    it lies, then each map shifted by its tap offset (zeros outside) and summed, plus the bias: k*k
    additions per output pixel instead of C*D*k*k MACs. Exact reordering of the original sum. The
    maps are padded to a multiple of 8 with zero filters, so the Conv3d's output rows stay aligned
    (at 49 maps cuDNN fell back to an unaligned GEMM: 34 us of W's frame on an H100, torch 2.11;
    docs/PERFORMANCE.md)."""

    MAPS_MULTIPLE = 8

    def __init__(self, conv: DepthFoldedConv2d):
        super().__init__()
        _check_plain_conv(conv, DepthFoldedConv2d)
        weight = conv.weight
        outputs, folded, kernel_h, kernel_w = weight.shape
        depth = conv.depth
        self.in_channels, self.out_channels = folded // depth, outputs
        self.kernel_size, self.padding = conv.kernel_size, conv.padding
        maps = outputs * kernel_h * kernel_w
        with torch.no_grad():
            # map o * k*k + i * kernel_w + j holds sum_{c,d} w[o, c*D + d, i, j] x[c, d]
            per_tap = weight.unflatten(1, (folded // depth, depth)).permute(0, 3, 4, 1, 2)
            per_tap = per_tap.reshape(maps, folded // depth, depth, 1, 1)
            self.weight = nn.Parameter(F.pad(per_tap, (0, 0, 0, 0, 0, 0, 0, 0, 0, -maps % self.MAPS_MULTIPLE)))
            bias = conv.bias if conv.bias is not None else weight.new_zeros(outputs)
            self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        kernel_h, kernel_w = self.kernel_size
        pad_h, pad_w = self.padding
        maps = F.conv3d(volume, self.weight)[:, :self.out_channels * kernel_h * kernel_w, 0]  # (B, O*k*k, H, W)
        height, width = maps.shape[-2] + 2 * pad_h - kernel_h + 1, maps.shape[-1] + 2 * pad_w - kernel_w + 1
        # summed in float32 at least, so that in half precision only the maps and the sum round
        accumulate = torch.promote_types(maps.dtype, torch.float32)
        shifted = F.pad(maps, (pad_w, pad_w, pad_h, pad_h)).unflatten(1, (self.out_channels, kernel_h * kernel_w))
        out = self.bias.to(accumulate).view(-1, 1, 1).expand(self.out_channels, height, width)
        for i in range(kernel_h):
            for j in range(kernel_w):
                out = out + shifted[:, :, i * kernel_w + j, i:i + height, j:j + width].to(accumulate)
        return out.to(maps.dtype)


def occlusion_as_taps(net: nn.Module) -> list[str]:
    """Replace W's dense-motion `occlusion` DepthFoldedConv2d with a TapSumConv2d."""
    return _replace_children(net, lambda parent, name, child: isinstance(parent, DenseMotionNetwork)
                             and name == "occlusion" and type(child) is DepthFoldedConv2d, TapSumConv2d)


# --------------------------------------------------------------------------------------
# helpers


def _check_plain_conv(conv: nn.Module, *kinds: type) -> None:
    """A convolution of one of `kinds` the rewrites handle: stride 1, no dilation, one group, zero
    padding given as sizes."""
    if type(conv) not in kinds:
        raise TypeError(f"expected a {' or '.join(kind.__name__ for kind in kinds)} layer, got {type(conv).__name__}")
    ones = (1,) * len(conv.kernel_size)
    if (conv.stride != ones or conv.dilation != ones or conv.groups != 1 or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str)):
        raise ValueError(f"only stride 1, dilation 1, groups 1, zero padding given as sizes can be rewritten; got "
                         f"stride {conv.stride}, dilation {conv.dilation}, groups {conv.groups}, "
                         f"padding {conv.padding!r} ({conv.padding_mode})")


def _replace_children(net: nn.Module, selected: Callable[[nn.Module, str, nn.Module], bool],
                      replacement: Callable[[nn.Module], nn.Module]) -> list[str]:
    """Swap each selected child module for replacement(child); the changed modules' names."""
    targets = [(parent_name, parent, name, child) for parent_name, parent in net.named_modules()
               for name, child in parent.named_children() if selected(parent, name, child)]
    for _, parent, name, child in targets:
        setattr(parent, name, replacement(child))
    return [f"{parent_name}.{name}" if parent_name else name for parent_name, parent, name, _ in targets]


# Rewritten layers that `lpperf profile` times as one layer (their inner convolutions are part of them).
LAYER_TYPES = (PhaseSplitConv, DepthSplitConv3d, FFTConv3d, TapSumConv2d)
