"""The LivePortrait networks (human model), re-implemented; state dicts match the official checkpoints.

    net = lpperf.models.build("warping_module")                      # official sizes, eval mode
    tiny = lpperf.models.build("warping_module", block_expansion=8,  # smaller, for tests
                               dense_motion_params={"num_blocks": 2})
"""

import copy
import inspect
import json
from pathlib import Path

from torch import nn

from lpperf.models.appearance import AppearanceFeatureExtractor
from lpperf.models.motion import MotionExtractor
from lpperf.models.spade import SPADEDecoder
from lpperf.models.stitching import RetargetingMLP
from lpperf.models.warping import WarpingNetwork

# The seven networks' names: keys of every nets dict in lpperf (and of the official checkpoints' layout).
FEATURE_NET = "appearance_feature_extractor"  # F
MOTION_NET = "motion_extractor"  # M
WARP_NET = "warping_module"  # W
DECODER_NET = "spade_generator"  # G
STITCHING_NET = "stitching"  # S
LIP_NET = "lip"  # lip retargeting MLP
EYE_NET = "eye"  # eye retargeting MLP
NAMES = (FEATURE_NET, MOTION_NET, WARP_NET, DECODER_NET, STITCHING_NET, LIP_NET, EYE_NET)

_CONFIG_PATH = Path(__file__).with_name("config.json")

# name -> (class, path of its hyper-parameters in config.json)
_REGISTRY = {
    FEATURE_NET: (AppearanceFeatureExtractor, ("appearance_feature_extractor_params",)),
    MOTION_NET: (MotionExtractor, ("motion_extractor_params",)),
    WARP_NET: (WarpingNetwork, ("warping_module_params",)),
    DECODER_NET: (SPADEDecoder, ("spade_generator_params",)),
    STITCHING_NET: (RetargetingMLP, ("stitching_retargeting_module_params", "stitching")),
    LIP_NET: (RetargetingMLP, ("stitching_retargeting_module_params", "lip")),
    EYE_NET: (RetargetingMLP, ("stitching_retargeting_module_params", "eye")),
}


# A consistent small configuration of all seven networks (same interfaces, 21 keypoints, 256x256 in,
# 512x512 out) for CPU tests and the CPU run of `lpperf bench`: about 1/35 of the official FLOPs.
TINY: dict[str, dict] = {
    FEATURE_NET: dict(block_expansion=8, max_features=16, reshape_channel=4, reshape_depth=4, num_resblocks=1),
    WARP_NET: dict(block_expansion=8, max_features=16, reshape_channel=4,
                   dense_motion_params=dict(block_expansion=8, max_features=32, num_blocks=2, compress=1,
                                            reshape_depth=4)),
    DECODER_NET: dict(block_expansion=8, max_features=32, out_channels=16, spade_hidden=16),
}


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown network {name!r}; expected one of {NAMES}")


def default_config(name: str) -> dict:
    """The official hyper-parameters of network `name` (a fresh copy, safe to modify)."""
    _check_name(name)
    config = json.loads(_CONFIG_PATH.read_text())
    for key in _REGISTRY[name][1]:
        config = config[key]
    return copy.deepcopy(config)


def build(name: str, **overrides) -> nn.Module:
    """Network `name` with the official hyper-parameters, `overrides` replacing any of them.

    A dict-valued override (dense_motion_params) is merged into the default
    dict, so only the changed entries need naming. Weights are PyTorch's
    default initialisation (see lpperf.models.weights for loading or synthesising
    real ones). Returned in eval mode, float32, on the CPU.
    """
    _check_name(name)
    cls = _REGISTRY[name][0]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(f"{name} has no hyper-parameter(s) {unknown}; accepted: {sorted(accepted)}")
    config = default_config(name)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            unknown = sorted(set(value) - set(config[key]))
            if unknown:
                raise ValueError(f"{name}.{key} has no entries {unknown}; accepted: {sorted(config[key])}")
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return cls(**config).eval()


__all__ = ["NAMES", "FEATURE_NET", "MOTION_NET", "WARP_NET", "DECODER_NET", "STITCHING_NET", "LIP_NET", "EYE_NET",
           "TINY", "build", "default_config", "AppearanceFeatureExtractor", "MotionExtractor",
           "WarpingNetwork", "SPADEDecoder", "RetargetingMLP"]
