"""lpperf.models: layouts, shapes, pinned outputs and hand-checked pieces of the networks.

The pinned outputs in tests/data/model_reference.pt were produced by this
implementation after it was checked against the official LivePortrait modules
(float64, worst relative error ~1e-15, with a comparison script kept outside
the repo). Regenerate them only on purpose:
    python tests/test_models.py --regenerate
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lpperf.models as models  # noqa: E402
from lpperf.models.blocks import coordinate_grid, keypoint_gaussians  # noqa: E402
from lpperf.models.motion import ChannelsFirstLayerNorm, GlobalResponseNorm  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
REFERENCE_FILE = DATA / "model_reference.pt"
MANIFEST_FILE = DATA / "state_dict_manifest.json"
MANIFEST_KEY = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}

# Small but structurally complete configurations (every block type present).
SMALL = {
    "appearance_feature_extractor": dict(block_expansion=8, num_down_blocks=2, max_features=32, reshape_channel=4,
                                         reshape_depth=8, num_resblocks=2),
    "motion_extractor": dict(num_kp=4, num_bins=6, depths=(1, 1, 2, 1), dims=(8, 8, 16, 16)),
    "warping_module": dict(num_kp=3, block_expansion=8, max_features=16, num_down_blocks=1, reshape_channel=4,
                           dense_motion_params=dict(block_expansion=4, max_features=16, num_blocks=2,
                                                    reshape_depth=4, compress=2)),
    "spade_generator": dict(block_expansion=4, max_features=8, num_down_blocks=2, out_channels=8),
    # The retargeting MLPs are small at their official sizes.
    "stitching": {},
    "lip": {},
    "eye": {},
}

# Expected output shapes of SMALL on small_inputs(), worked out by hand from the architecture.
SMALL_SHAPES = {
    # 32x32 image, two halvings -> 8x8; 32 channels read as 4 x depth 8.
    "appearance_feature_extractor": {"out": (2, 4, 8, 8, 8)},
    "motion_extractor": {"pitch": (2, 6), "yaw": (2, 6), "roll": (2, 6), "t": (2, 3), "exp": (2, 12),
                         "scale": (2, 1), "kp": (2, 12)},
    # out channels = block_expansion * 2^num_down_blocks = 16.
    "warping_module": {"occlusion_map": (2, 1, 8, 8), "deformation": (2, 4, 8, 8, 3), "out": (2, 16, 8, 8)},
    # 4x4 feature -> two x2 upsamplings -> 16x16 -> pixel shuffle -> 32x32.
    "spade_generator": {"out": (2, 3, 32, 32)},
    "stitching": {"out": (2, 65)},
    "lip": {"out": (2, 63)},
    "eye": {"out": (2, 63)},
}


def small_inputs(name: str, seed: int = 0) -> list[torch.Tensor]:
    """Inputs for SMALL[name], float64, from numpy's frozen legacy generator."""
    rng = np.random.RandomState(seed)

    def uniform(*shape, low=0.0, high=1.0):
        return torch.from_numpy(rng.uniform(low, high, size=shape))

    if name == "appearance_feature_extractor":
        return [uniform(2, 3, 32, 32)]
    if name == "motion_extractor":
        return [uniform(2, 3, 64, 64)]
    if name == "warping_module":
        return [uniform(2, 4, 4, 8, 8, low=-1.0), uniform(2, 3, 3, low=-0.7, high=0.7),
                uniform(2, 3, 3, low=-0.7, high=0.7)]
    if name == "spade_generator":
        return [uniform(2, 8, 4, 4, low=-1.0)]
    return [uniform(2, models.default_config(name)["input_size"], low=-1.0)]


def reference_weights(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill `net` with deterministic, well-scaled float64 weights (numpy's frozen RandomState stream).

    Norm parameters near 1 / 0, positive running variances, fan-in scaled
    weights, non-zero GRN terms, and spectral-norm vectors u random with
    v = W^T u / |W^T u| (so sigma = |W^T u| is a moderate, deterministic value).
    """
    rng = np.random.RandomState(seed)
    state = {}
    for name, tensor in net.state_dict().items():
        if not tensor.is_floating_point():
            state[name] = tensor
            continue
        shape = tuple(tensor.shape)
        if name.endswith("running_var"):
            value = 0.5 + rng.random_sample(shape)
        elif name.endswith("running_mean"):
            value = 0.1 * rng.standard_normal(shape)
        elif name.endswith("weight_u"):
            value = rng.standard_normal(shape)
            value /= np.linalg.norm(value)
        elif name.endswith("weight_v"):
            stem = name[: -len("_v")]
            value = state[stem + "_orig"].flatten(1).numpy().T @ state[stem + "_u"].numpy()
            value /= np.linalg.norm(value)
        elif len(shape) <= 1:  # biases and norm affine parameters
            value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * rng.standard_normal(shape)
        elif name.endswith(("gamma", "beta")):  # GRN
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / math.sqrt(tensor[0].numel())
        state[name] = torch.from_numpy(np.asarray(value, dtype=np.float64))
    net = net.double()
    net.load_state_dict(state, strict=True)
    return net


def small_net(name: str, seed: int = 0) -> torch.nn.Module:
    return reference_weights(models.build(name, **SMALL[name]), seed)


def as_dict(output) -> dict:
    return output if isinstance(output, dict) else {"out": output}


def run_small(name: str) -> tuple[list[torch.Tensor], dict]:
    inputs = small_inputs(name)
    with torch.no_grad():
        return inputs, as_dict(small_net(name)(*inputs))


# ---- layouts


@pytest.mark.parametrize("name", models.NAMES)
def test_state_dict_layout_matches_official_manifest(name):
    manifest = json.loads(MANIFEST_FILE.read_text())
    expected = (manifest["stitching_retargeting_module"][MANIFEST_KEY[name]] if name in MANIFEST_KEY
                else manifest[name])
    got = [(key, list(value.shape)) for key, value in models.build(name).state_dict().items()]
    assert got == list(expected.items())


def test_network_names_are_the_official_layouts_names():
    """The seven names are defined once (lpperf.models) and key the official checkpoint layout."""
    assert models.NAMES == (models.FEATURE_NET, models.MOTION_NET, models.WARP_NET, models.DECODER_NET,
                            models.STITCHING_NET, models.LIP_NET, models.EYE_NET)
    manifest = json.loads(MANIFEST_FILE.read_text())
    assert set(models.NAMES) == (set(manifest) - {"stitching_retargeting_module"}) | set(MANIFEST_KEY)


def test_build_returns_eval_mode_and_rejects_bad_requests():
    assert not models.build("lip").training
    with pytest.raises(ValueError, match="unknown network"):
        models.build("decoder")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        models.build("lip", hidden=[3])
    with pytest.raises(ValueError, match="no entries"):
        models.build("warping_module", dense_motion_params={"blocks": 2})
    with pytest.raises(ValueError, match="max_features"):
        models.build("appearance_feature_extractor", reshape_depth=8)
    with pytest.raises(ValueError, match="upscale"):
        models.build("spade_generator", upscale=4)


def test_default_config_is_a_copy_of_the_official_values():
    config = models.default_config("warping_module")
    assert config["num_kp"] == 21 and config["dense_motion_params"]["num_blocks"] == 5
    config["dense_motion_params"]["num_blocks"] = 1
    assert models.default_config("warping_module")["dense_motion_params"]["num_blocks"] == 5


def test_nested_override_merges_into_defaults():
    net = models.build("warping_module", dense_motion_params={"num_blocks": 2, "max_features": 64})
    assert len(net.dense_motion_network.hourglass.encoder.down_blocks) == 2
    assert net.dense_motion_network.compress.out_channels == 4  # default compress kept


# ---- shapes


@pytest.mark.parametrize("name", models.NAMES)
def test_small_output_shapes(name):
    _, outputs = run_small(name)
    assert {key: tuple(value.shape) for key, value in outputs.items()} == SMALL_SHAPES[name]
    for value in outputs.values():
        assert torch.isfinite(value).all()


def test_full_size_shapes_float32():
    """F, M and the MLPs at official size; W and G at official size run in test_weights (synthetic weights)."""
    torch.manual_seed(0)
    with torch.no_grad():
        feature = models.build("appearance_feature_extractor")(torch.rand(1, 3, 256, 256))
        assert feature.shape == (1, 32, 16, 64, 64)
        motion = models.build("motion_extractor")(torch.rand(1, 3, 256, 256))
        assert {k: tuple(v.shape) for k, v in motion.items()} == {
            "pitch": (1, 66), "yaw": (1, 66), "roll": (1, 66), "t": (1, 3), "exp": (1, 63), "scale": (1, 1),
            "kp": (1, 63)}
        for name, size in (("stitching", 126), ("lip", 65), ("eye", 66)):
            assert models.build(name)(torch.rand(3, size)).shape == (3, 65 if name == "stitching" else 63)


def test_input_shape_errors_are_explained():
    warp = models.build("warping_module", **SMALL["warping_module"])
    feature = torch.zeros(1, 4, 4, 8, 8)
    with pytest.raises(ValueError, match="kp_driving must have shape"):
        warp(feature, torch.zeros(1, 9), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="multiples of 4"):
        warp(torch.zeros(1, 4, 4, 6, 8), torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="image batch"):
        models.build("appearance_feature_extractor", **SMALL["appearance_feature_extractor"])(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="feature batch"):
        models.build("spade_generator", **SMALL["spade_generator"])(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"expected \(B, 65\)"):
        models.build("lip")(torch.zeros(2, 64))


# ---- pinned function


@pytest.mark.parametrize("name", models.NAMES)
def test_outputs_match_pinned_reference(name):
    reference = torch.load(REFERENCE_FILE, weights_only=True)[name]
    inputs = small_inputs(name)
    for given, stored in zip(inputs, reference["inputs"]):
        torch.testing.assert_close(given, stored, rtol=0, atol=0)
    with torch.no_grad():
        outputs = as_dict(small_net(name)(*inputs))
    assert outputs.keys() == reference["outputs"].keys()
    for key, expected in reference["outputs"].items():
        assert expected.abs().max() > 1e-3  # the pinned value is not trivially zero
        torch.testing.assert_close(outputs[key], expected, rtol=1e-9, atol=1e-12, msg=f"{name} output {key}")


# ---- hand-checked pieces


def test_coordinate_grid_layout():
    grid = coordinate_grid(3, 4, 5, dtype=torch.float64)
    assert grid.shape == (3, 4, 5, 3)
    # last axis is (x, y, z); x runs along width, y along height, z along depth, ends at -1 and 1
    torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(grid[0, :, 0, 1], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(grid[:, 0, 0, 2], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        coordinate_grid(1, 4, 4, dtype=torch.float64)


def test_keypoint_gaussians_values():
    grid = coordinate_grid(3, 3, 3, dtype=torch.float64)  # points at -1, 0, 1 per axis
    kp = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]]], dtype=torch.float64)
    heat = keypoint_gaussians(kp, grid, 0.5)
    assert heat.shape == (1, 2, 3, 3, 3)
    assert heat[0, 0, 1, 1, 1] == 1.0  # at the keypoint
    assert heat[0, 0, 1, 1, 2].item() == pytest.approx(math.exp(-1.0))  # distance 1: exp(-1 / (2 * 0.5))
    assert heat[0, 1, 1, 0, 2] == 1.0  # second keypoint at x=1, y=-1, z=0 -> index [z=1, y=0, x=2]
    assert heat[0, 1, 0, 2, 0].item() == pytest.approx(math.exp(-9.0 / 1.0))  # squared distance 4+4+1


def test_warp_with_equal_keypoints_is_the_identity_grid():
    net = small_net("warping_module")
    feature, kp, _ = small_inputs("warping_module")
    with torch.no_grad():
        out = net(feature, kp, kp)
    # Every candidate motion is the identity, and the mixing weights sum to one.
    expected = coordinate_grid(4, 8, 8, dtype=torch.float64).expand(2, 4, 8, 8, 3)
    torch.testing.assert_close(out["deformation"], expected, rtol=0, atol=1e-14)


def test_warp_moves_the_feature_with_the_keypoints():
    """With a single keypoint and its mask weight forced to 1, W samples the source at p + (kp_s - kp_d)."""
    net = small_net("warping_module")
    dense = net.dense_motion_network
    with torch.no_grad():
        dense.mask.weight.zero_()
        dense.mask.bias.copy_(torch.tensor([-1e3, 1e3, -1e3, -1e3]))  # candidate 1 = keypoint 0 everywhere
        feature, kp_driving, kp_source = small_inputs("warping_module")
        deformation = net(feature, kp_driving, kp_source)["deformation"]
    grid = coordinate_grid(4, 8, 8, dtype=torch.float64)
    expected = grid + (kp_source[:, 0] - kp_driving[:, 0])[:, None, None, None, :]
    torch.testing.assert_close(deformation, expected, rtol=0, atol=1e-12)


def test_spectral_norm_divides_by_sigma_from_stored_vectors_without_iterating():
    net = small_net("spade_generator")
    conv = net.G_middle_0.conv_0
    u_before = conv.weight_u.clone()
    with torch.no_grad():
        net(*small_inputs("spade_generator"))
    assert torch.equal(conv.weight_u, u_before)  # eval mode: no power iteration
    sigma = conv.weight_u @ conv.weight_orig.flatten(1) @ conv.weight_v
    torch.testing.assert_close(conv.weight, conv.weight_orig / sigma)


def test_channels_first_layer_norm_and_grn_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    norm = ChannelsFirstLayerNorm(5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        mean = x.mean(1, keepdim=True)
        var = ((x - mean) ** 2).mean(1, keepdim=True)
        expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + norm.bias[:, None, None]
        torch.testing.assert_close(norm(x), expected)

        grn = GlobalResponseNorm(5).double()
        grn.gamma.uniform_(-1, 1)
        grn.beta.uniform_(-1, 1)
        y = x.permute(0, 2, 3, 1)  # channels last
        spatial = (y ** 2).sum(dim=(1, 2), keepdim=True).sqrt()
        expected = grn.gamma * y * spatial / (spatial.mean(-1, keepdim=True) + 1e-6) + grn.beta + y
        torch.testing.assert_close(grn(y), expected)


def regenerate() -> None:
    reference = {}
    for name in models.NAMES:
        inputs, outputs = run_small(name)
        reference[name] = {"inputs": inputs, "outputs": outputs}
    torch.save(reference, REFERENCE_FILE)
    print(f"wrote {REFERENCE_FILE} ({REFERENCE_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        raise SystemExit("usage: python tests/test_models.py --regenerate")
    regenerate()
