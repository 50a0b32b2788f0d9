"""tools/step_ab.py's parts that run without a card: the recipe edits, the ratio summaries over builds,
the alternated rounds, the peer it picks and its per-round sample."""

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


def test_a_ratio_is_the_median_of_per_round_ratios_and_its_percentiles():
    values, others = [2.0, 3.0, 4.0, 10.0], [1.0, 2.0, 2.0, 2.0]
    ratio, low, high = step_ab.pooled_summary([values], [others])
    assert ratio == pytest.approx(2.0)  # per round 2, 1.5, 2, 5: not the ratio of the medians (3.5 / 2)
    assert low == pytest.approx(1.5 + 0.15 * 0.5) and high == pytest.approx(5 - 0.15 * 3)


def test_a_pooled_ratio_pairs_every_build_of_one_side_with_every_build_of_the_other():
    a = [[2.0, 2.0], [3.0, 3.0]]  # two builds, two rounds each
    b = [[1.0, 1.0], [2.0, 2.0]]
    ratio, low, high = step_ab.pooled_summary(a, b)
    # per round: 2/1, 2/2, 3/1, 3/2 -> 1, 1.5, 2, 3 twice over
    assert ratio == pytest.approx(1.75) and low == pytest.approx(1.0) and high == pytest.approx(3.0)


def test_a_side_against_itself_is_the_spread_between_its_builds():
    builds = [[1.00, 1.00], [1.01, 1.01]]
    ratio, low, high = step_ab.pooled_summary(builds, builds, same=True)  # 1.01 and 1/1.01, never a build / itself
    assert low == pytest.approx(1 / 1.01) and high == pytest.approx(1.01) and ratio == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="needs two builds"):
        step_ab.pooled_summary([[1.0]], [[1.0]], same=True)
    with pytest.raises(ValueError):  # builds timed over different rounds are not paired
        step_ab.pooled_summary([[1.0, 2.0]], [[1.0]])


def test_rounds_alternate_their_order_and_time_every_work_once_a_round():
    order = []
    works = {name: (lambda name=name: order.append(name) or len(order)) for name in ("a#1", "a#2", "peer#1")}
    samples = step_ab.alternated_rounds(works, 3)
    assert order == ["a#1", "a#2", "peer#1", "peer#1", "a#2", "a#1", "a#1", "a#2", "peer#1"]
    assert samples == {"a#1": [1, 6, 7], "a#2": [2, 5, 8], "peer#1": [3, 4, 9]}


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


def test_measure_builds_every_variant_and_the_peer_and_pools_their_rounds(monkeypatch, capsys):
    """The whole measurement on the CPU, its clock faked: every build warmed then timed in every round."""
    clock = iter(range(1, 1000))
    monkeypatch.setattr(step_ab, "round_ms", lambda work, device: [call() for call in work.calls.values()] and
                        float(next(clock)))
    variants = {"base": step_ab.edited_steps("fast", ""), "fewer": step_ab.edited_steps("fast", "-pad_warp_channels")}
    result = step_ab.measure(variants, small_networks(), "cpu", batch=1, rounds=2, builds=2, with_peer=True)
    assert (result["builds"], result["rounds"]) == (2, 2) and result["peer"]["recipe"] == bench.MODULES_PEER_RECIPE
    for row in result["variants"].values():
        assert len(row["build_and_warmup_s"]) == 2 and len(row["round_ms_by_build"]) == 2
        assert all(len(rounds) == 2 for rounds in row["round_ms_by_build"]) and "psnr_db" in row["parity"]
        assert row["ratio_5th"] <= row["ratio"] <= row["ratio_95th"] and "speedup_over_peer" in row
        assert len(row["builds_apart"]) == 3
    assert "pad_warp_channels" not in result["variants"]["fewer"]["steps"]
    base = result["variants"]["base"]  # against itself: only its two builds against each other
    assert (base["ratio"], base["ratio_5th"], base["ratio_95th"]) == tuple(base["builds_apart"])
    assert base["ratio_5th"] < 1 < base["ratio_95th"]  # the faked clock puts one build above the other
    times = sorted(t for row in [*result["variants"].values(), result["peer"]] for rounds in row["round_ms_by_build"]
                   for t in rounds)
    assert times == [float(t) for t in range(3 * 6 + 1, 3 * 6 + 13)]  # 6 builds x 3 warm-ups, then 2 x 6 timed
    out = capsys.readouterr().out
    assert "its builds apart" in out and "x the peer" in out

