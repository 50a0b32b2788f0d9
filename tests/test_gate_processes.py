"""lpperf gate with several worker pairs per recipe (--processes K): the interval over processes, on
synthetic rounds and with the fake worker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lpperf.gate import report, stats

from helpers import run_fake

ALPHA = 0.01 / 12  # the default: alpha 0.01 over 4 gated metrics x 3 looks
FRAME = "frame fast b1"


def test_one_pair_is_the_plain_estimate():
    values = np.random.default_rng(0).normal(0.01, 0.005, 24)
    assert stats.estimate_over_processes(values, [0] * 24, ALPHA) == stats.estimate(values, ALPHA)


def test_an_offset_of_one_pair_widens_the_interval_instead_of_moving_it():
    rng = np.random.default_rng(1)
    calm = rng.normal(0.0, 0.002, 16)
    offset = rng.normal(np.log(1.04), 0.002, 16)  # one pair's head process 4 % slower, the code the same
    values = np.empty(32)
    values[0::2], values[1::2] = calm, offset
    pairs = [0, 1] * 16
    combined = stats.estimate_over_processes(values, pairs, ALPHA)
    alone = stats.estimate(offset, ALPHA)
    assert alone.verdict(0.03) is stats.Verdict.REGRESSED  # one pair alone: a false alarm
    assert combined.verdict(0.03) is stats.Verdict.UNDECIDED  # both: the interval spans the two processes
    assert combined.low < 1.0 < 1.03 < combined.high
    assert combined.process_ratios == pytest.approx((1.0, 1.04), abs=0.003)


def test_a_real_change_shows_in_every_pair():
    rng = np.random.default_rng(2)
    values = rng.normal(np.log(1.10), 0.003, 32)
    combined = stats.estimate_over_processes(values, [0, 1] * 16, ALPHA)
    assert combined.verdict(0.03) is stats.Verdict.REGRESSED and len(combined.process_ratios) == 2


def test_pair_indices_must_match_the_rounds():
    with pytest.raises(ValueError, match="one pair index per round"):
        stats.estimate_over_processes([0.0, 0.1], [0], ALPHA)


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_every_pair_alternates_abba_and_baab_over_its_own_rounds(processes):
    from lpperf.gate.controller import block_order

    for pair in range(processes):
        orders = [block_order(number, processes) for number in range(pair, 8 * processes, processes)]
        assert orders[0::2] == [("base", "head", "head", "base")] * 4
        assert orders[1::2] == [("head", "base", "base", "head")] * 4


def test_pairs_with_too_few_rounds_each_are_refused_before_any_worker_starts(capsys, tmp_path):
    from lpperf import cli

    code = cli.main(["gate", "--base", ".", "--device", "cpu", "--recipes", "fast", "--batches", "1", "--no-stages",
                     "--processes", "2", "--rounds", "8", "--max-rounds", "8", "--out", str(tmp_path / "out")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "each worker pair gets 4 of the 8 rounds" in line and "--max-rounds" in line
    assert not (tmp_path / "out").exists()


def test_the_gate_alternates_pairs_and_a_process_offset_is_not_a_regression(tmp_path):
    spec = {"noise": 0.003, "pair_offset": {"fast-2": 1.045}}
    result = run_fake(tmp_path, spec, processes=2, rounds=24, max_rounds=48)
    frame = next(item for item in result.metrics if item.metric.name == FRAME)
    assert frame.pair_of_round[:4] == [0, 1, 0, 1] and len(frame.pair_of_round) == len(frame.base_ms)
    assert frame.verdict is not stats.Verdict.REGRESSED and result.exit_code != 1
    assert frame.estimate.process_ratios == pytest.approx((1.0, 1.045), abs=0.006)
    logs = sorted(path.name for path in (tmp_path / "logs").glob("*.log"))
    assert logs == ["base-fast-1.log", "base-fast-2.log", "head-fast-1.log", "head-fast-2.log"]
    assert "2 worker pairs per recipe, alternated round by round" in report.format_table(result)
    record = json.loads(json.dumps(report.to_dict(result), allow_nan=False))
    entry = next(item for item in record["metrics"] if item["name"] == FRAME)
    assert entry["pair_of_round"][:2] == [0, 1] and len(entry["pair_ratios"]) == 2


def test_the_same_offset_with_one_pair_is_a_false_alarm(tmp_path):
    """What --processes is for: a single pair whose head process happens to run 4.5 % slower."""
    result = run_fake(tmp_path, {"noise": 0.003, "pair_offset": {"fast": 1.045}}, rounds=24, max_rounds=48)
    assert next(item for item in result.metrics if item.metric.name == FRAME).verdict is stats.Verdict.REGRESSED


def test_a_real_regression_is_caught_with_two_pairs(tmp_path):
    result = run_fake(tmp_path, {"noise": 0.003, "head_factor": {FRAME: 1.10}}, processes=2, rounds=24,
                      max_rounds=48)
    assert result.exit_code == 1 and [item.metric.name for item in result.regressed] == [FRAME]


def test_calibration_reports_each_pairs_offset(tmp_path):
    result = run_fake(tmp_path, {"noise": 0.003, "pair_offset": {"fast-2": 1.02}}, processes=2, rounds=24,
                      max_rounds=24)
    noise = {item.name: item for item in report.calibration(result)}
    assert noise[FRAME].pair_offsets == pytest.approx((0.0, 0.02), abs=0.004)
    text = report.format_calibration(list(noise.values()), result)
    assert "pair offsets (process offset = their spread)" in text
    assert json.dumps(report.calibration_record(list(noise.values())), allow_nan=False)


def test_only_the_first_pair_times_start_up(tmp_path):
    """Start-up is judged on the first pair; a throwaway build in every other pair would only cost time."""
    result = run_fake(tmp_path, {"noise": 0.003}, processes=2, rounds=8, max_rounds=8)
    logs = {path.name: path.read_text() for path in (tmp_path / "logs").glob("*.log")}
    assert {name: "startup timed true" in text for name, text in logs.items()} == {
        "base-fast-1.log": True, "head-fast-1.log": True, "base-fast-2.log": False, "head-fast-2.log": False}
    assert [item.recipe for item in result.beside.startup] == ["fast"]
