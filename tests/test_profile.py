"""lpperf profile on the CPU: every convolution and matmul of one frame timed alone, with FLOPs."""

from __future__ import annotations

import pytest

from lpperf import cli, frame, profile, recipes
from test_frame import small_networks


@pytest.fixture(scope="module")
def layers():
    animator = frame.sample_animator(recipes.build("fastest", small_networks(), "cpu"))
    driving = frame.driving_batch(1, offset=frame.PARITY_FRAMES)
    return profile.profile_layers(animator, driving, animator.source.image.device)


def test_every_per_frame_layer_is_timed_once_with_its_flops(layers):
    names = [layer.name for layer in layers]
    assert len(names) == len(set(names))
    assert not [name for name in names if name.startswith("appearance_feature_extractor")]  # F: once per source
    # the rewritten layers are timed as one (their inner convolutions are not listed again)
    assert {"DepthSplitConv3d", "TapSumConv2d", "PhaseSplitConv"} <= {layer.kind for layer in layers}
    assert not [name for name in names if name.endswith("mask.weight") or ".mask." in name]
    assert all(layer.ms > 0 for layer in layers)
    convolutions = [layer for layer in layers if "Conv" in layer.kind]
    assert convolutions and all(layer.flops > 0 for layer in convolutions)
    assert layers == sorted(layers, key=lambda layer: layer.ms, reverse=True)


def test_the_table_reports_time_flops_and_share_of_the_peak(layers):
    text = profile.format_layers(layers, peak_tflops=100.0, top=3)
    assert len(text.splitlines()) == 2 + 3 + 1
    assert f"{len(layers)} layers timed alone" in text and "card peak 100 TFLOP/s" in text


def test_an_unknown_recipe_fails_before_anything_loads(capsys):
    assert cli.main(["profile", "--recipe", "no-such-recipe", "--device", "cpu"]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err
