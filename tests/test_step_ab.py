"""tools/step_ab.py's parts that run without a card: the recipe edits, the ratio summary, the peer it
picks and its per-round sample."""

import importlib.util
import re
from pathlib import Path

import pytest

from lpperf.reports import bench
from helpers import small_networks

_spec = importlib.util.spec_from_file_location("step_ab", Path(__file__).parents[1] / "tools" / "step_ab.py")
step_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_ab)


def names(edits: str, recipe: str = "fast") -> list[str]:
    return [step.name for step in step_ab.edited_steps(recipe, edits)]


def test_edits_drop_insert_before_and_append_in_order():
    fast = names("")
    assert names("-pad_warp_channels") == [name for name in fast if name != "pad_warp_channels"]
    inserted = names("-pad_warp_channels,+pad_warp_channels_x32@half,+motion_ahead")
    at = fast.index("pad_warp_channels")
    assert inserted == fast[:at] + ["pad_warp_channels_x32"] + fast[at + 1:] + ["motion_ahead"]


@pytest.mark.parametrize("edits, message", [
    ("-half_precision", "fast has no step 'half_precision' to drop"),
    ("+fold_batch_norm@nowhere", "fast has no step 'nowhere' to insert 'fold_batch_norm' before"),
    ("fold_batch_norm", "an edit is -step, +step or +step@before"),
    ("+no_such_step", "unknown step 'no_such_step'"),
])
def test_a_wrong_edit_stops_with_what_was_wrong(edits, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        step_ab.edited_steps("fast", edits)


def test_ratio_summary_is_the_median_of_per_round_ratios_and_its_percentiles():
    values, others = [2.0, 3.0, 4.0, 10.0], [1.0, 2.0, 2.0, 2.0]
    ratio, low, high = step_ab.ratio_summary(values, others)
    assert ratio == pytest.approx(2.0)  # per round 2, 1.5, 2, 5: not the ratio of the medians (3.5 / 2)
    assert low == pytest.approx(1.5 + 0.15 * 0.5) and high == pytest.approx(5 - 0.15 * 3)


def test_the_peer_is_the_modules_only_measure_with_m_ahead_only_where_the_recipe_batches_it():
    nets = small_networks()
    peer, work = step_ab.peer_work(step_ab.edited_steps("fastest-motion-ahead", ""), nets, "cpu", 1)
    assert peer == bench.MODULES_AHEAD_PEER_RECIPE and work.frames == 16
    peer, work = step_ab.peer_work(step_ab.edited_steps("fastest-motion-ahead", "-motion_ahead"), nets, "cpu", 1)
    assert peer == bench.MODULES_PEER_RECIPE and work.frames == 1 and list(work.calls) == ["M", "W", "G"]


def test_a_round_is_each_call_timed_alone_summed_per_frame(monkeypatch):
    timed = []
    monkeypatch.setattr(step_ab.timing, "cuda_sample_s", lambda call, device: timed.append(call()) or 0.004)
    work = step_ab.frame.FrameWork(calls={"M": lambda: "M", "step 1": lambda: "1", "step 2": lambda: "2"}, frames=2)
    assert step_ab.round_ms(work, "cuda") == pytest.approx(3 * 4.0 / 2)
    assert timed == ["M", "1", "2"]
