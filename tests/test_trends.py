"""lpperf.reports.trends: creep against a pinned run and the best of the last runs, and change points."""

import numpy as np
import pytest

from lpperf.reports import history, trends


# --- creep and change points ------------------------------------------------------------------------

def make_run(medians_ms: dict, card="NVIDIA H200", when="2026-11-29T00:00:00"):
    results = tuple(history.BenchmarkResult(name, ms / 1e3) for name, ms in medians_ms.items())
    return history.Run("mem", history.RunFormat.LPPERF_REPORT, card, None, when, {}, results)


def test_creep_below_the_per_merge_gate_is_flagged_cumulatively():
    # 2 % slower per merge: a 10 % per-merge gate never fires, the cumulative check does.
    runs = [make_run({"frame": 6.0 * 1.02**index}) for index in range(6)]
    [finding] = trends.creep(runs, pinned=runs[0], best_of=10, limit=0.05)
    assert finding.vs_pinned == pytest.approx(1.02**5)
    assert finding.vs_best == pytest.approx(1.02**5)
    assert finding.flagged
    [steady] = trends.creep([make_run({"frame": 6.0}), make_run({"frame": 6.1})], limit=0.05)
    assert not steady.flagged and steady.vs_pinned is None
    assert "FLAGGED" in trends.format_creep([finding], 10) and "+10.4%" in trends.format_creep([finding], 10)


def test_creep_refuses_runs_of_two_cards():
    with pytest.raises(history.HistoryError, match="one card"):
        trends.creep([make_run({"f": 1.0}), make_run({"f": 1.0}, card="NVIDIA H100 80GB HBM3")])


def test_change_points_find_a_step_and_ignore_noise_and_one_outlier():
    rng = np.random.default_rng(0)
    flat = list(6.0 * np.exp(rng.normal(0, 0.005, 12)))
    assert trends.change_points(flat) == []
    step = flat[:8] + [value * 1.06 for value in flat[8:]]
    assert trends.change_points(step) == [8]
    outlier = list(flat)
    outlier[5] *= 1.5
    assert trends.change_points(outlier) == []
    two_steps = flat[:6] + [v * 1.05 for v in flat[6:]] + [v * 1.10 for v in flat]
    assert trends.change_points(two_steps) == [6, 12]
