"""Weights for the seven networks: the official LivePortrait checkpoints, or trained-like synthetic ones.

    nets = load_official("pretrained_weights/liveportrait")   # the official human model
    nets = synthetic(seed=0)                                  # no download needed
    save_official(nets, "some/folder")                        # the official file layout
    networks = load_networks(None, torch.device("cpu"))       # what `lpperf bench` runs, described

Every function returns / takes a dict name -> nn.Module keyed by lpperf.models.NAMES,
networks in eval mode.

Over 400 lines as one module: the strict loader, the saver and the synthetic builder share the
checkpoint layout and its checks.
"""

import contextlib
import dataclasses
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lpperf import models
from lpperf.models import DECODER_NET, EYE_NET, FEATURE_NET, LIP_NET, MOTION_NET, STITCHING_NET, WARP_NET
from lpperf.util.validation import check_int, check_path

# Network -> official file (plain state dicts).
OFFICIAL_FILES = {
    FEATURE_NET: "appearance_feature_extractor.pth",
    MOTION_NET: "motion_extractor.pth",
    WARP_NET: "warping_module.pth",
    DECODER_NET: "spade_generator.pth",
}
# The retargeting MLPs share one file: a dict of three state dicts.
RETARGETING_FILE = "stitching_retargeting_module.pth"
RETARGETING_KEYS = {STITCHING_NET: "retarget_shoulder", LIP_NET: "retarget_mouth", EYE_NET: "retarget_eye"}
# The official release keeps the files in these sub-folders of pretrained_weights/liveportrait.
_OFFICIAL_SUBFOLDERS = {RETARGETING_FILE: "retargeting_models"}
_DEFAULT_SUBFOLDER = "base_models"
_WRAPPER_PREFIX = "module."  # added by torch.nn.DataParallel / DistributedDataParallel
_LISTED_KEYS = 8  # keys named in an error before "... and N more"
_HOW_TO_GET = ("Use the official LivePortrait *human* checkpoints (HuggingFace KwaiVGI/LivePortrait, folder "
               "liveportrait/: base_models/*.pth and retargeting_models/stitching_retargeting_module.pth), "
               "not the animal model or a modified network.")


# ---------------------------------------------------------------------------------------------- loading


def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict:
    """Map an official state dict onto lpperf's layout (timm convention: filter, then strict load).

    The layouts are identical except that checkpoints saved from a
    DataParallel-wrapped network carry a `module.` prefix, which is removed.
    `model` is accepted for the timm signature; the mapping does not need it.
    """
    return {(key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX) else key): value
            for key, value in state_dict.items()}


def _listed(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (f", ... and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else "")


def official_files(directory: str | Path) -> dict[str, Path]:
    """The five official checkpoint files in `directory` (side by side, or in the release's base_models/
    and retargeting_models/ sub-folders): file name -> path. Cheap (nothing is read), so a command
    checks its --weights folder with it before loading anything; a missing file is named."""
    directory = check_path(directory, "directory").expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"weights folder {directory} does not exist or is not a folder. " + _HOW_TO_GET)
    filenames = [*OFFICIAL_FILES.values(), RETARGETING_FILE]
    found, missing = {}, []
    for filename in filenames:
        candidates = [directory / filename,
                      directory / _OFFICIAL_SUBFOLDERS.get(filename, _DEFAULT_SUBFOLDER) / filename]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            missing.append(f"{filename} not found (looked for {', '.join(map(str, candidates))})")
        else:
            found[filename] = path
    if missing:
        raise FileNotFoundError(
            f"weights folder {directory} lacks {len(missing)} of the {len(filenames)} official checkpoint files: "
            f"{'; '.join(missing)}. Put all {len(filenames)} files ({', '.join(filenames)}) in {directory}. "
            + _HOW_TO_GET)
    return found


def _why_unreadable(error: Exception) -> str:
    """What is wrong with a file torch.load(weights_only=True) refused, in lpperf's words.

    torch's own message is not repeated: it advises turning weights_only off, which runs whatever
    code the file holds and must never be suggested for a file from elsewhere.
    """
    text = str(error)
    marker = "WeightsUnpickler error:"  # what torch found, after its advice
    if marker in text:
        detail = text.split(marker, 1)[1].strip().split("\n")[0].split(" was not an allowed global")[0]
    else:
        detail = "" if "weights_only" in text else text.split(". ")[0].strip()
    if "TorchScript" in text:
        return ("it is a TorchScript archive (a scripted or traced model), not a state dict; lpperf loads plain "
                "state dicts only. Use the official file, or save the network's state_dict() (torch.save("
                "model.state_dict(), path)) where the model was made")
    if detail.startswith("Unsupported global"):
        return (f"it holds pickled Python objects, not only tensors ({detail}); lpperf loads plain state "
                "dicts only and never runs code from a checkpoint. Use the official file, or save the network's "
                "state_dict() (torch.save(model.state_dict(), path)) where the model was made")
    reason = type(error).__name__ + (f": {detail}" if detail else "")
    return (f"it is not a PyTorch checkpoint or is damaged ({reason}). Re-download the file: a truncated "
            "download cannot be used")


def _read_checkpoint(path: Path) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns of a TorchScript archive before refusing it: said below
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any file content: torch.load raises KeyError, EOFError, ... on garbage
        raise RuntimeError(f"could not read {path}: {_why_unreadable(error)}.") from None
    if not isinstance(checkpoint, dict):
        raise RuntimeError(f"{path} holds a {type(checkpoint).__name__}, expected a state dict (a dict of tensors). "
                           + _HOW_TO_GET)
    _check_keys_are_names(checkpoint, str(path))
    return checkpoint


def _check_keys_are_names(state_dict: dict, source: str) -> None:
    odd = [key for key in state_dict if not isinstance(key, str)]
    if odd:
        shown = ", ".join(f"{key!r} of type {type(key).__name__}" for key in odd[:_LISTED_KEYS])
        raise RuntimeError(f"{source} has key(s) that are not names ({shown}): it is not a state dict "
                           "(a dict of parameter names to tensors). " + _HOW_TO_GET)


def _check_values(state_dict: dict, expected: dict, source: str) -> None:
    """Every tensor of `state_dict` has the kind of dtype its network expects (real floating point for
    parameters, integer for counters) and holds finite values: a complex, NaN or infinite weight
    would load without a word (a torch warning at most) and make every frame NaN."""
    for key, value in state_dict.items():
        if value.is_meta:
            raise RuntimeError(f"{source}: {key} is a tensor without data (the meta device: saved from a model "
                               "that was never given its weights). " + _HOW_TO_GET)
        if value.is_floating_point() != expected[key].is_floating_point() or value.is_complex():
            kind = "a real floating dtype" if expected[key].is_floating_point() else "an integer dtype"
            raise RuntimeError(f"{source}: {key} has dtype {value.dtype}, expected {kind}. " + _HOW_TO_GET)
        if value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise RuntimeError(f"{source}: {key} holds {bad} NaN or infinite value(s) of {value.numel()}; "
                                   "the file is damaged or was saved from a diverged training run. " + _HOW_TO_GET)


def _load_into(net: nn.Module, state_dict: dict, source: str) -> None:
    """Strictly load `state_dict` into `net`, explaining any mismatch with the keys involved."""
    _check_keys_are_names(state_dict, source)
    state_dict = checkpoint_filter_fn(state_dict, net)
    expected = net.state_dict()
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    not_tensors = [key for key in state_dict.keys() & expected.keys() if not isinstance(state_dict[key], torch.Tensor)]
    mismatched = [f"{key} {tuple(state_dict[key].shape)} (expected {tuple(expected[key].shape)})"
                  for key in state_dict.keys() & expected.keys()
                  if key not in not_tensors and state_dict[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if not_tensors:
        problems.append(f"{len(not_tensors)} value(s) that are not tensors: {_listed(not_tensors)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
    if problems:
        raise RuntimeError(f"{source} does not match the official layout: " + "; ".join(problems) + ". "
                           + _HOW_TO_GET)
    _check_values(state_dict, expected, source)
    net.load_state_dict(state_dict, strict=True)


def _uninitialised_float32_nets() -> dict[str, nn.Module]:
    """The seven networks on the CPU in float32 (whatever the default dtype), values not initialised.

    Built on the meta device: PyTorch's default initialisation would only be overwritten.
    """
    with torch.device("meta"):
        nets = {name: models.build(name).float() for name in models.NAMES}
    return {name: net.to_empty(device="cpu") for name, net in nets.items()}


def load_official(directory: str | Path, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """The seven networks with the official LivePortrait (human) weights, float32, in eval mode on `device`.

    `directory` holds the five official files, either side by side or in the
    release's layout (base_models/ and retargeting_models/ sub-folders).
    Loading is strict: a missing file or any missing, unexpected or
    mis-shaped key raises an error naming the file and the keys.
    """
    files = official_files(directory)
    paths = {name: files[filename] for name, filename in OFFICIAL_FILES.items()}
    retargeting_path = files[RETARGETING_FILE]
    nets = _uninitialised_float32_nets()  # strict loading overwrites every parameter and buffer
    for name, path in paths.items():
        _load_into(nets[name], _read_checkpoint(path), str(path))
    bundle = checkpoint_filter_fn(_read_checkpoint(retargeting_path))
    absent = [key for key in RETARGETING_KEYS.values() if not isinstance(bundle.get(key), dict)]
    if absent:
        raise RuntimeError(f"{retargeting_path} lacks the state dict(s) {absent}; it should map "
                           f"{list(RETARGETING_KEYS.values())} to state dicts (found keys: {_listed(map(str, bundle))}). "
                           + _HOW_TO_GET)
    for name, key in RETARGETING_KEYS.items():
        _load_into(nets[name], bundle[key], f"{retargeting_path} [{key!r}]")
    return {name: net.to(device).eval() for name, net in nets.items()}


def save_official(nets: dict[str, nn.Module], directory: str | Path) -> None:
    """Write `nets` (all seven) as the five official checkpoint files in `directory` (created if needed)."""
    if not isinstance(nets, dict):
        raise ValueError(f"nets must be a dict name -> network, got {type(nets).__name__}")
    directory = check_path(directory, "directory").expanduser()
    missing = [name for name in models.NAMES if name not in nets]
    if missing:
        raise ValueError(f"save_official needs all of {models.NAMES}; missing {missing}")
    directory.mkdir(parents=True, exist_ok=True)

    def cpu_state(net: nn.Module) -> dict:
        return {key: value.detach().to("cpu", copy=True) for key, value in net.state_dict().items()}

    for name, filename in OFFICIAL_FILES.items():
        torch.save(cpu_state(nets[name]), directory / filename)
    torch.save({key: cpu_state(nets[name]) for name, key in RETARGETING_KEYS.items()}, directory / RETARGETING_FILE)


# -------------------------------------------------------------------------------------------- synthetic
#
# Default initialisation is nothing like trained weights (docs/PERFORMANCE.md, numeric traps): spectral-norm vectors
# u, v start random, so W / sigma is far too large and G's activations explode; BatchNorm running
# statistics of 0 / 1 do not match the activations. synthetic() fixes both, and gives the motion
# heads outputs of the size real ones have, so W sees a sensible, mild deformation.

RESIDUAL_GAIN = 0.5  # scale of residual-branch outputs relative to a variance-preserving layer
CANONICAL_KP_EXTENT = 0.35  # canonical keypoints x, y within +-this (z within a third of it)
HEAD_SCALE = 1.6  # typical keypoint scale predicted by M
POSE_SPREAD_BINS = 3.0  # width (in 3-degree bins) of the predicted head-pose distributions
OCCLUSION_BIAS = 2.0  # most of the face is visible: occlusion map ~0.9
BACKGROUND_MASK_BIAS = 1.0  # the dense-motion mask slightly prefers the identity motion
IMAGE_LOGIT_STD = 1.2  # G's pre-sigmoid output spread: a full, unsaturated range of grey levels
CALIBRATION_ROLL_DEGREES = 5.0  # driving motion used while calibrating W: a small head roll
# 2^10 power-iteration steps: (sigma_2 / sigma_1)^2 is at most ~0.995 for these random layers, so
# sigma ends within ~1e-7 of the largest singular value.
_GRAM_SQUARINGS = 10
_POLISH_STEPS = 3  # ordinary power-iteration steps after the squarings

_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, models.motion.ChannelsFirstLayerNorm)


def _top_singular_vectors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) of the largest singular value: the fixed point of spectral norm's power iteration.

    The Gram matrix of the short side, squared repeatedly (each squaring
    doubles the number of power-iteration steps), converges to u u^T; a few
    ordinary steps polish it. v = M^T u / |M^T u|, so spectral norm's
    sigma = u . M v = |M^T u| is the largest singular value.
    """
    wide = matrix.shape[0] <= matrix.shape[1]
    short = matrix if wide else matrix.T
    gram = short @ short.T
    for _ in range(_GRAM_SQUARINGS):
        gram = gram @ gram
        gram /= gram.norm()
    a = F.normalize(gram[:, gram.norm(dim=0).argmax()], dim=0)
    for _ in range(_POLISH_STEPS):
        a = F.normalize(short @ (short.T @ a), dim=0)
    u = a if wide else F.normalize(matrix @ a, dim=0)
    return u, F.normalize(matrix.T @ u, dim=0)


def _init_layer(layer: nn.Module, generator: torch.Generator, gain: float = 1.0, bias_std: float = 0.02) -> None:
    """Variance-preserving weights, std gain / sqrt(fan_in) (gain sqrt(2) where the input is ReLU-halved);
    spectral-norm layers also get their converged u, v."""
    spectral = hasattr(layer, "weight_orig")
    weight = layer.weight_orig if spectral else layer.weight
    weight.normal_(0.0, gain / math.sqrt(weight[0].numel()), generator=generator)
    if layer.bias is not None:
        layer.bias.normal_(0.0, bias_std, generator=generator)
    if spectral:
        u, v = _top_singular_vectors(weight.flatten(1))
        layer.weight_u.copy_(u)
        layer.weight_v.copy_(v)


def _init_generic(net: nn.Module, generator: torch.Generator) -> None:
    """Give every parameter and buffer of `net` a value: layers variance-preserving, norms near identity.

    The networks are built on the meta device (no default initialisation, which
    would be thrown away), so a tensor without a rule here would hold garbage:
    that is checked.
    """
    covered = set()
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            _init_layer(module, generator, gain=math.sqrt(2))
        elif isinstance(module, _NORMS):
            module.weight.normal_(1.0, 0.1, generator=generator)
            module.bias.normal_(0.0, 0.1, generator=generator)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()  # measured later on calibration images
        elif isinstance(module, models.motion.GlobalResponseNorm):
            module.gamma.normal_(0.0, 0.1, generator=generator)
            module.beta.normal_(0.0, 0.1, generator=generator)
        else:
            continue
        covered.update(id(t) for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)])
    missed = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if id(t) not in covered]
    if missed:
        raise RuntimeError(f"synthetic weights have no initialisation rule for {_listed(missed)}")


def _init_appearance(net: models.AppearanceFeatureExtractor, generator: torch.Generator) -> None:
    _init_generic(net, generator)
    for block in net.resblocks_3d:
        _init_layer(block.conv2, generator, gain=math.sqrt(2) * RESIDUAL_GAIN)


def _init_motion(net: models.MotionExtractor, generator: torch.Generator) -> None:
    _init_generic(net, generator)
    detector = net.detector
    for stage in detector.stages:
        for block in stage:
            _init_layer(block.pwconv2, generator, gain=math.sqrt(2) * RESIDUAL_GAIN)
    width = detector.norm.normalized_shape[0]
    num_kp = detector.fc_kp.out_features // 3
    num_bins = detector.fc_pitch.out_features

    def head(layer: nn.Linear, output_std: float, bias: torch.Tensor) -> None:
        # The head input is LayerNorm-ed (about unit variance), so the output varies by about output_std.
        layer.weight.normal_(0.0, output_std / math.sqrt(width), generator=generator)
        layer.bias.copy_(bias)

    # Explicit float32 throughout: the same numbers whatever torch's default dtype.
    f32 = dict(dtype=torch.float32)
    extent = torch.tensor([1.0, 1.0, 1 / 3], **f32) * CANONICAL_KP_EXTENT
    canonical = (2 * torch.rand(num_kp, 3, generator=generator, **f32) - 1) * extent
    head(detector.fc_kp, 0.03, canonical.flatten())
    head(detector.fc_scale, 0.05, torch.tensor([HEAD_SCALE], **f32))
    head(detector.fc_t, 0.02, 0.02 * torch.randn(3, generator=generator, **f32))
    head(detector.fc_exp, 0.01, 0.005 * torch.randn(3 * num_kp, generator=generator, **f32))
    bins = torch.arange(num_bins, **f32)
    for layer in (detector.fc_pitch, detector.fc_yaw, detector.fc_roll):
        centre = (num_bins - 1) / 2 + torch.randn((), generator=generator, **f32)  # within a few degrees of frontal
        head(layer, 0.3, -0.5 * ((bins - centre) / POSE_SPREAD_BINS) ** 2)


def _init_warping(net: models.WarpingNetwork, generator: torch.Generator) -> None:
    _init_generic(net, generator)
    dense = net.dense_motion_network
    _init_layer(dense.mask, generator, gain=1.0)
    dense.mask.bias[0] += BACKGROUND_MASK_BIAS
    if dense.occlusion is not None:
        _init_layer(dense.occlusion, generator, gain=1.0)
        dense.occlusion.bias.fill_(OCCLUSION_BIAS)
    _init_layer(net.fourth, generator, gain=1.0)


def _init_spade(net: models.SPADEDecoder, generator: torch.Generator) -> None:
    _init_generic(net, generator)
    _init_layer(net.fc, generator, gain=1.0)
    for module in net.modules():
        if isinstance(module, models.spade.SPADE):
            # Moderate modulation: (1 + gamma) mostly within [0.5, 1.5].
            _init_layer(module.mlp_gamma, generator, gain=0.3, bias_std=0.0)
            _init_layer(module.mlp_beta, generator, gain=0.3, bias_std=0.0)


def _init_retargeting(net: models.RetargetingMLP, generator: torch.Generator) -> None:
    _init_generic(net, generator)
    # Stitching and retargeting predict small corrections to keypoints.
    _init_layer(net.mlp[-1], generator, gain=0.1, bias_std=0.0)


def _calibration_images(images: torch.Tensor | None) -> torch.Tensor:
    if images is None:
        from lpperf.models.sample import portrait  # lazily: only synthetic weights need the sample data
        images = portrait()
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1:] != (3, 256, 256):
        raise ValueError("calibration images must be a tensor (N, 3, 256, 256) in [0, 1] (the networks' input "
                         "size), got " + (str(tuple(images.shape)) if isinstance(images, torch.Tensor)
                                          else type(images).__name__))
    if not images.is_floating_point() or images.min() < 0 or images.max() > 1:
        raise ValueError("calibration images must be floating point with values in [0, 1]")
    return images.detach().float().cpu()


@contextlib.contextmanager
def _recording_batch_norm_statistics(net: nn.Module):
    """BatchNorm layers of `net` normalise with batch statistics and keep them as their running statistics.

    Downstream layers thus see normalised activations while recording, so the
    statistics they record are the ones they see in eval mode. One batch per layer.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        norm.train()
    try:
        yield
    finally:
        for norm in norms:
            norm.momentum = 0.1
            norm.eval()


def _rest_keypoints(motion: models.MotionExtractor) -> torch.Tensor:
    """The keypoints M predicts for an average face: scale * (canonical + exp) + t, as (1, K, 3)."""
    detector = motion.detector
    kp = (detector.fc_kp.bias + detector.fc_exp.bias).view(1, -1, 3)
    shift = torch.cat([detector.fc_t.bias[:2], detector.fc_t.bias.new_zeros(1)])
    return detector.fc_scale.bias * kp + shift


def _calibrate_warping(net: models.WarpingNetwork, feature: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
    """Record W's BatchNorm statistics for a small head roll; returns about what W outputs for it.

    The hourglass is calibrated at half the feature's height and width (a
    quarter of the work; its statistics are close to full size), the other
    layers at full size. For so small a motion the warped volume is close to
    the source volume, which stands in for it (no mask or occlusion needed).
    """
    angle = math.radians(CALIBRATION_ROLL_DEGREES)
    roll = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]], dtype=kp_source.dtype)
    kp_driving = kp_source @ roll.T
    dense = net.dense_motion_network
    with _recording_batch_norm_statistics(net):
        terms = dense.source_terms(feature, kp_source)
        hourglass_input, _ = dense.hourglass_input(kp_driving, kp_source, terms)
        dense.hourglass(F.avg_pool3d(hourglass_input, (1, 2, 2)))
        net.third(feature.flatten(1, 2))
    typical_occlusion = 1 / (1 + math.exp(-OCCLUSION_BIAS))
    return net.fourth(net.third(feature.flatten(1, 2))) * typical_occlusion


def _calibrate_output_layer(decoder: models.SPADEDecoder, feature: torch.Tensor) -> None:
    """Scale G's last conv so its pre-sigmoid output has mean 0 and spread IMAGE_LOGIT_STD per channel.

    Every path into that layer starts with an instance norm, so its input
    statistics barely depend on resolution: an 8x smaller feature map suffices.
    """
    conv = decoder.conv_img[0] if isinstance(decoder.conv_img, nn.Sequential) else decoder.conv_img
    captured = {}
    hook = conv.register_forward_hook(lambda module, args, out: captured.update(out=out))
    try:
        decoder(F.avg_pool2d(feature, 8))
    finally:
        hook.remove()
    logits = captured["out"]
    scale = IMAGE_LOGIT_STD / logits.std(dim=(0, 2, 3))
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias.copy_((conv.bias - logits.mean(dim=(0, 2, 3))) * scale)


def synthetic(seed: int = 0, device: torch.device | str = "cpu",
              calibration_images: torch.Tensor | None = None) -> dict[str, nn.Module]:
    """The seven networks with deterministic, trained-like random weights, in eval mode on `device`.

    - variance-preserving initialisation, residual branches damped;
    - spectral-norm u, v at their converged values (sigma is the true spectral norm);
    - BatchNorm running statistics measured on `calibration_images`
      (N x 3 x 256 x 256 in [0, 1]; default lpperf.models.sample.portrait()): F's on
      all N, W's on the first image under a small head roll;
    - motion heads predicting keypoints within about [-0.6, 0.6], scale ~1.6,
      small expression and translation, near-frontal head poses;
    - G's output layer scaled so the decoded frame spans grey levels unsaturated.
    Built on the CPU in float32 (the same values whatever `device`), then moved.
    """
    check_int(seed, "seed")
    images = _calibration_images(calibration_images)
    generator = torch.Generator().manual_seed(seed)
    nets = _uninitialised_float32_nets()
    with torch.no_grad():
        _init_appearance(nets[FEATURE_NET], generator)
        _init_motion(nets[MOTION_NET], generator)
        _init_warping(nets[WARP_NET], generator)
        _init_spade(nets[DECODER_NET], generator)
        for name in RETARGETING_KEYS:
            _init_retargeting(nets[name], generator)

        appearance = nets[FEATURE_NET]
        with _recording_batch_norm_statistics(appearance):
            feature = appearance(images)[:1]  # as in eval mode: the running statistics are this batch's
        warped = _calibrate_warping(nets[WARP_NET], feature, _rest_keypoints(nets[MOTION_NET]))
        _calibrate_output_layer(nets[DECODER_NET], warped)
    return {name: net.to(device).eval() for name, net in nets.items()}


# ----------------------------------------------------------------------------------- what a run uses


@dataclasses.dataclass(frozen=True)
class Networks:
    """The networks a command runs, and what they are: for banners, table and chart titles, reports."""

    nets: dict[str, nn.Module]
    description: str
    reduced: bool  # lpperf.models.TINY sizes: about 1/35 of the official FLOPs
    official_weights: bool  # the official checkpoints: the output images mean something


def tiny_networks(seed: int = 0) -> dict[str, nn.Module]:
    """The seven networks at lpperf.models.TINY sizes, for CPU runs.

    Weights are PyTorch's default initialisation drawn from a generator seeded with `seed`
    (torch's global RNG is left as it was), so runs are repeatable; they are not trained-like
    (synthetic() builds official sizes only) and the output images mean nothing.
    """
    check_int(seed, "seed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {name: models.build(name, **models.TINY.get(name, {})) for name in models.NAMES}


def load_networks(weights: str | Path | None, device: str | torch.device, seed: int = 0) -> Networks:
    """The networks, on the CPU, that a command run on `device` uses.

    weights: a folder of official checkpoints (full size on any device), or None / "synthetic" for
    synthetic weights from `seed`: TINY sizes on the CPU, official sizes (trained-like) elsewhere.
    """
    if weights is not None:
        check_path(weights, "weights")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a torch.device or a name such as 'cpu', got {device!r}")
    if weights is not None and str(weights) != "synthetic":
        folder = Path(weights).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"weights folder {folder} does not exist; give the folder holding the official "
                                    "LivePortrait checkpoints (base_models/, retargeting_models/) or 'synthetic'")
        return Networks(load_official(folder, "cpu"), f"official checkpoints from {folder}, official sizes",
                        reduced=False, official_weights=True)
    if torch.device(device).type == "cpu":
        return Networks(tiny_networks(seed), "TINY networks (lpperf.models.TINY: ~1/35 of the official FLOPs), "
                        "synthetic weights (seeded default init)", reduced=True, official_weights=False)
    return Networks(synthetic(seed, device="cpu"), f"synthetic weights (lpperf.models.weights.synthetic, seed {seed}), "
                    "official sizes", reduced=False, official_weights=False)
