"""lpperf.models.weights: strict official-checkpoint loading (and each of its errors), the save/load round
trip, and the trained-like properties of the synthetic weights on the sample portrait."""

import math

import pytest
import torch
from filelock import FileLock

import lpperf.models as models
import lpperf.models.weights as weights
from lpperf.models.blocks import coordinate_grid
from lpperf.models.sample import driving_frames, portrait

OFFICIAL_FILENAMES = [*weights.OFFICIAL_FILES.values(), weights.RETARGETING_FILE]
# One xdist worker runs this file (conftest.py: loadgroup distribution), so the official-size networks are built
# once while the other workers run the rest of the suite.
pytestmark = pytest.mark.xdist_group("official-size-networks")

@pytest.fixture(scope="session")
def saved_dir(tmp_path_factory, worker_id):
    """The official-size synthetic networks saved as official checkpoints, once per test run: the first
    xdist worker that needs them builds and saves them (tens of seconds on two busy cores), the others
    wait for the files. Loading them back is exact (test_round_trip_through_official_files_is_exact)."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # shared by the workers of this run
    folder = root / "official-size-synthetic-seed-0"
    with FileLock(f"{folder}.lock"):
        if not (folder / "complete").exists():
            folder.mkdir(exist_ok=True)
            weights.save_official(weights.synthetic(seed=0), folder)
            (folder / "complete").touch()
    return folder


@pytest.fixture(scope="session")
def nets(saved_dir):
    return weights.load_official(saved_dir)


def variant_dir(tmp_path, saved_dir, replacements: dict, layout: str = "flat"):
    """A weights folder linking to saved_dir's files, with `replacements` (filename -> object to save) written.

    layout "release" puts the files in base_models/ and retargeting_models/ as the official release does.
    """
    for filename in OFFICIAL_FILENAMES:
        folder = tmp_path
        if layout == "release":
            folder = tmp_path / ("retargeting_models" if filename == weights.RETARGETING_FILE else "base_models")
            folder.mkdir(exist_ok=True)
        if filename in replacements:
            torch.save(replacements[filename], folder / filename)
        else:
            (folder / filename).symlink_to(saved_dir / filename)
    return tmp_path


def appearance_state(saved_dir) -> dict:
    return torch.load(saved_dir / "appearance_feature_extractor.pth", weights_only=True)


def small_inputs():
    generator = torch.Generator().manual_seed(0)
    kp = 0.3 * torch.randn(1, 21, 3, generator=generator)
    return {
        "appearance_feature_extractor": (torch.rand(1, 3, 64, 64, generator=generator),),
        "motion_extractor": (torch.rand(1, 3, 64, 64, generator=generator),),
        "warping_module": (torch.randn(1, 32, 16, 32, 32, generator=generator), kp, kp.flip(1)),
        "spade_generator": (torch.randn(1, 256, 8, 8, generator=generator),),
        "stitching": (torch.randn(2, 126, generator=generator),),
        "lip": (torch.randn(2, 65, generator=generator),),
        "eye": (torch.randn(2, 66, generator=generator),),
    }


def outputs(net, inputs) -> dict:
    with torch.no_grad():
        out = net(*inputs)
    return out if isinstance(out, dict) else {"out": out}


# ---- round trip and layout


def test_round_trip_through_official_files_is_exact_and_synthetic_is_deterministic(nets, saved_dir):
    """A fresh synthetic(seed=0), built in this process, against the networks saved (maybe by another
    process) and loaded back: same state, same outputs, bit for bit."""
    assert sorted(path.name for path in saved_dir.iterdir() if path.suffix == ".pth") == sorted(OFFICIAL_FILENAMES)
    bundle = torch.load(saved_dir / weights.RETARGETING_FILE, weights_only=True)
    assert sorted(bundle) == ["retarget_eye", "retarget_mouth", "retarget_shoulder"]

    built = weights.synthetic(seed=0)
    assert sorted(nets) == sorted(models.NAMES)
    for name, inputs in small_inputs().items():
        assert not nets[name].training
        original, reloaded = built[name].state_dict(), nets[name].state_dict()
        assert original.keys() == reloaded.keys()
        for key in original:
            assert torch.equal(original[key], reloaded[key]), f"{name}.{key}"
        expected, got = outputs(built[name], inputs), outputs(nets[name], inputs)
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name} output {key}"
    for name in set(models.NAMES) - set(small_inputs()):
        for key, value in built[name].state_dict().items():
            assert torch.equal(nets[name].state_dict()[key], value), f"{name}.{key}"


def test_release_layout_and_wrapper_prefix_are_accepted(nets, saved_dir, tmp_path):
    bundle = torch.load(saved_dir / weights.RETARGETING_FILE, weights_only=True)
    prefixed = {key: {"module." + k: v for k, v in state.items()} for key, state in bundle.items()}
    directory = variant_dir(tmp_path, saved_dir, {weights.RETARGETING_FILE: prefixed}, layout="release")
    loaded = weights.load_official(directory)
    for name in ("stitching", "lip", "eye"):
        for key, value in nets[name].state_dict().items():
            assert torch.equal(loaded[name].state_dict()[key], value)


def test_checkpoint_filter_fn_strips_only_the_wrapper_prefix():
    state = {"module.mlp.0.weight": 1, "mlp.2.bias": 2, "first.module.x": 3}
    assert weights.checkpoint_filter_fn(state) == {"mlp.0.weight": 1, "mlp.2.bias": 2, "first.module.x": 3}


def test_save_official_needs_every_network(nets, tmp_path):
    partial = {name: net for name, net in nets.items() if name != "eye"}
    with pytest.raises(ValueError, match="missing \\['eye'\\]"):
        weights.save_official(partial, tmp_path)


# ---- loading errors


def test_missing_directory_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.load_official(tmp_path / "nowhere")


def test_missing_file_is_named(saved_dir, tmp_path):
    directory = variant_dir(tmp_path, saved_dir, {})
    (directory / "spade_generator.pth").unlink()
    with pytest.raises(FileNotFoundError, match="spade_generator.pth not found") as error:
        weights.load_official(directory)
    assert "HuggingFace" in str(error.value)  # says where to get the files


def test_missing_keys_are_listed_and_truncated(saved_dir, tmp_path):
    state = appearance_state(saved_dir)
    removed = sorted(key for key in state if key.startswith("resblocks_3d."))
    for key in removed:
        del state[key]
    directory = variant_dir(tmp_path, saved_dir, {"appearance_feature_extractor.pth": state})
    with pytest.raises(RuntimeError) as error:
        weights.load_official(directory)
    message = str(error.value)
    assert "appearance_feature_extractor.pth" in message
    assert f"{len(removed)} missing key(s): {removed[0]}" in message
    assert f"... and {len(removed) - 8} more" in message
    assert removed[-1] not in message  # truncated


def test_unexpected_key_is_named(saved_dir, tmp_path):
    state = appearance_state(saved_dir)
    state["extra.weight"] = torch.zeros(3)
    directory = variant_dir(tmp_path, saved_dir, {"appearance_feature_extractor.pth": state})
    with pytest.raises(RuntimeError, match=r"appearance_feature_extractor\.pth.*1 unexpected key\(s\): extra\.weight"):
        weights.load_official(directory)


def test_shape_mismatch_is_named_with_both_shapes(saved_dir, tmp_path):
    state = appearance_state(saved_dir)
    state["first.conv.weight"] = torch.zeros(64, 4, 3, 3)
    directory = variant_dir(tmp_path, saved_dir, {"appearance_feature_extractor.pth": state})
    with pytest.raises(RuntimeError, match=r"first\.conv\.weight \(64, 4, 3, 3\) \(expected \(64, 3, 3, 3\)\)"):
        weights.load_official(directory)


def test_unreadable_file_is_named(saved_dir, tmp_path):
    directory = variant_dir(tmp_path, saved_dir, {})
    (directory / "appearance_feature_extractor.pth").unlink()
    (directory / "appearance_feature_extractor.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not read .*appearance_feature_extractor.pth"):
        weights.load_official(directory)


def test_retargeting_bundle_without_eye_network_is_explained(saved_dir, tmp_path):
    bundle = torch.load(saved_dir / weights.RETARGETING_FILE, weights_only=True)
    del bundle["retarget_eye"]
    directory = variant_dir(tmp_path, saved_dir, {weights.RETARGETING_FILE: bundle})
    with pytest.raises(RuntimeError, match=r"stitching_retargeting_module\.pth lacks .*retarget_eye"):
        weights.load_official(directory)


def test_mismatch_in_a_retargeting_network_names_file_and_entry(saved_dir, tmp_path):
    bundle = torch.load(saved_dir / weights.RETARGETING_FILE, weights_only=True)
    del bundle["retarget_mouth"]["mlp.6.bias"]
    directory = variant_dir(tmp_path, saved_dir, {weights.RETARGETING_FILE: bundle})
    with pytest.raises(RuntimeError, match=r"\['retarget_mouth'\].*missing key\(s\): mlp\.6\.bias"):
        weights.load_official(directory)


# ---- synthetic weights


def test_synthetic_rejects_bad_calibration_images():
    with pytest.raises(ValueError, match="calibration images"):
        weights.synthetic(calibration_images=torch.rand(3, 256, 256))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        weights.synthetic(calibration_images=torch.rand(1, 3, 256, 256) * 255)


@pytest.mark.parametrize("layer", ["G_middle_0.conv_0", "up_0.conv_s", "up_1.conv_1"])
def test_spectral_norm_sigma_is_the_true_largest_singular_value(nets, layer):
    conv = nets["spade_generator"].get_submodule(layer)
    matrix = conv.weight_orig.flatten(1).double()
    sigma = conv.weight_u.double() @ matrix @ conv.weight_v.double()  # what spectral norm divides by in eval
    largest_eigenvalue = torch.linalg.eigvalsh(matrix @ matrix.T)[-1]  # of the (smaller) Gram matrix
    assert sigma.item() == pytest.approx(largest_eigenvalue.sqrt().item(), rel=1e-5)


def test_batch_norm_statistics_are_those_of_the_portrait(nets):
    """Calibrated on the portrait, F's first BatchNorm outputs mean = bias and std = |weight| on it."""
    captured = {}
    net = nets["appearance_feature_extractor"]
    hook = net.first.norm.register_forward_hook(lambda m, args, out: captured.update(out=out))
    with torch.no_grad():
        net(portrait())
    hook.remove()
    out = captured["out"]
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), net.first.norm.bias, rtol=0, atol=1e-3)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), net.first.norm.weight.abs(), rtol=2e-3, atol=0)


def degrees(bins: torch.Tensor) -> torch.Tensor:
    """Expected head angle of 66 pose bins 3 degrees apart, bin 0 at -97.5 degrees (LivePortrait's convention)."""
    return (torch.softmax(bins, dim=1) * torch.arange(bins.shape[1])).sum(dim=1) * 3 - 97.5


def posed_keypoints(motion: dict) -> torch.Tensor:
    """scale * (kp + exp) + t: the transformed keypoints without the (few-degree) rotation."""
    kp = motion["kp"].view(1, -1, 3) + motion["exp"].view(1, -1, 3)
    shift = torch.cat([motion["t"][:, :2], torch.zeros(1, 1)], dim=1)
    return motion["scale"].view(1, 1, 1) * kp + shift[:, None]


def animate(nets) -> dict:
    """One animated frame of the portrait, with the mean |activation| of every module on the way."""
    activity, finite = {}, {}

    def record(name):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                activity[name] = out.abs().float().mean().item()
                finite[name] = bool(torch.isfinite(out).all())
        return hook

    handles = [module.register_forward_hook(record(f"{net_name}.{name}"))
               for net_name, net in nets.items() for name, module in net.named_modules() if name]
    source = portrait()
    driving = list(driving_frames(num_frames=13))[-1]  # mouth open, head moved
    try:
        with torch.no_grad():
            feature = nets["appearance_feature_extractor"](source)
            source_motion = nets["motion_extractor"](source)
            driving_motion = nets["motion_extractor"](driving)
            kp_source, kp_driving = posed_keypoints(source_motion), posed_keypoints(driving_motion)
            warped = nets["warping_module"](feature, kp_driving, kp_source)
            image = nets["spade_generator"](warped["out"])
    finally:
        for handle in handles:
            handle.remove()
    return dict(activity=activity, finite=finite, feature=feature, motion=source_motion, kp_source=kp_source,
                kp_driving=kp_driving, warped=warped, image=image)


@pytest.fixture(scope="session")
def animated(nets):
    return animate(nets)


def test_official_size_output_shapes(animated):
    assert animated["feature"].shape == (1, 32, 16, 64, 64)
    assert {key: tuple(value.shape) for key, value in animated["motion"].items()} == {
        "pitch": (1, 66), "yaw": (1, 66), "roll": (1, 66), "t": (1, 3), "exp": (1, 63), "scale": (1, 1), "kp": (1, 63)}
    assert {key: tuple(value.shape) for key, value in animated["warped"].items()} == {
        "occlusion_map": (1, 1, 64, 64), "deformation": (1, 16, 64, 64, 3), "out": (1, 256, 64, 64)}
    assert animated["image"].shape == (1, 3, 512, 512)


def test_no_activation_is_vanishing_exploding_or_non_finite(animated):
    activity = animated["activity"]
    assert len(activity) > 300  # every module of the networks run reported
    assert all(animated["finite"].values()), [name for name, ok in animated["finite"].items() if not ok]
    out_of_range = {name: value for name, value in activity.items() if not 1e-3 <= value <= 1e2}
    assert not out_of_range
    # The SPADE residual stream stays O(1) all the way down (random u, v: ~3e4 by G_middle_5).
    assert activity["spade_generator.G_middle_5"] < 10


def test_decoded_frame_is_not_saturated(animated):
    image = animated["image"]
    assert image.shape == (1, 3, 512, 512)
    saturated = ((image == 0) | (image == 1)).float().mean().item()
    assert saturated < 0.05
    assert 0.2 < image.mean().item() < 0.8 and image.std().item() > 0.05  # a spread of grey levels


def test_motion_outputs_are_plausible(animated):
    motion = animated["motion"]
    assert motion["kp"].abs().max() < 1.0
    assert 1.0 < motion["scale"].item() < 2.0
    assert motion["exp"].abs().max() < 0.1
    assert motion["t"].abs().max() < 0.2
    for key in ("pitch", "yaw", "roll"):
        angle = degrees(motion[key])
        assert torch.isfinite(angle).all() and angle.abs().max() < 30, (key, angle)
    for kp in (animated["kp_source"], animated["kp_driving"]):
        assert kp.abs().max() < 1.0  # inside the feature volume


def test_warp_is_a_mild_deformation(animated):
    warped = animated["warped"]
    identity = coordinate_grid(16, 64, 64, dtype=torch.float32)
    displacement = (warped["deformation"] - identity).abs()
    assert displacement.max() < 0.5  # no voxel fetched from across the volume
    assert 1e-4 < displacement.mean() < 0.1  # it moves, a little
    occlusion = warped["occlusion_map"]
    assert 0.5 < occlusion.mean() < 1.0 and occlusion.min() > 0.05
    assert warped["out"].abs().mean() > 1e-2


def test_retargeting_corrections_are_small(nets, animated):
    kp = animated["kp_source"].flatten(1)
    with torch.no_grad():
        delta = nets["stitching"](torch.cat([kp, animated["kp_driving"].flatten(1)], dim=1))
    assert delta.shape == (1, 65)
    assert 1e-4 < delta.abs().mean() < 0.1
    assert not math.isnan(delta.sum().item())


# ---- what a command runs


def test_tiny_networks_are_deterministic_and_not_degenerate():
    first, second = weights.tiny_networks(), weights.tiny_networks()
    for name in models.NAMES:
        for (key, a), b in zip(first[name].state_dict().items(), second[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} differs between two builds"
    assert not torch.equal(first["stitching"].mlp[0].weight, weights.tiny_networks(seed=1)["stitching"].mlp[0].weight)
    weight = first["spade_generator"].state_dict()
    assert not all(math.isclose(float(v.float().std()), 0.0) for v in weight.values() if v.numel() > 1)


def test_load_networks_says_what_it_loaded(saved_dir, tmp_path, monkeypatch):
    tiny = weights.load_networks(None, "cpu")
    assert (tiny.reduced, tiny.official_weights) == (True, False) and tiny.description.startswith("TINY networks")
    assert weights.load_networks("synthetic", "cpu").reduced
    monkeypatch.setattr(weights, "synthetic", lambda seed, device: {"seed": seed})
    on_gpu = weights.load_networks(None, "cuda", seed=3)  # nothing touches the GPU: networks load on the CPU
    assert on_gpu.nets == {"seed": 3} and (on_gpu.reduced, on_gpu.official_weights) == (False, False)
    assert "official sizes" in on_gpu.description
    official = weights.load_networks(saved_dir, "cpu")
    assert (official.reduced, official.official_weights) == (False, True)
    assert official.description == f"official checkpoints from {saved_dir}, official sizes"
    assert sorted(official.nets) == sorted(models.NAMES)
    with pytest.raises(FileNotFoundError, match="weights folder .*nowhere does not exist"):
        weights.load_networks(tmp_path / "nowhere", "cpu")
