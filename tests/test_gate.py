"""lpperf gate on the CPU: the statistics, the decision, the worker protocol (with a fake worker
whose timings are known) and every way a run can fail without a verdict."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lpperf.measure import frame
from lpperf.models import weights
from lpperf.util.cores import available, describe_cores
from lpperf.gate import controller, report, stats
from lpperf.gate.workers import GateError

from helpers import fake_starter, run_fake

FRAME = "frame fast b1"


# ------------------------------------------------------------------------------------------ statistics

@pytest.mark.parametrize("n, alpha, k", [(8, 0.025, 4), (16, 0.025, 30), (10, 0.005, 4), (6, 0.025, 1), (5, 0.025, 0)])
def test_signed_rank_critical_values_match_the_published_table(n, alpha, k):
    # Tables give the largest T with P(T <= T_crit) <= alpha; our bound is the (T_crit + 1)-th Walsh average.
    assert stats.signed_rank_critical(n, alpha) == k


def test_normal_approximation_agrees_with_the_exact_distribution_where_they_meet():
    exact = stats.signed_rank_critical(stats.EXACT_LIMIT, 0.01)
    mean = stats.EXACT_LIMIT * (stats.EXACT_LIMIT + 1) / 4
    assert abs(stats.signed_rank_critical(stats.EXACT_LIMIT + 1, 0.01) - exact) / mean < 0.02


@pytest.mark.parametrize("rounds", [8, 16, 40])
def test_interval_bounds_hold_at_their_stated_level(rounds):
    rng = np.random.default_rng(rounds)
    true_shift, alpha, trials = 0.02, 0.05, 2000
    low_misses = high_misses = 0
    for _ in range(trials):
        values = true_shift + rng.standard_t(5, rounds) * 0.01  # heavy-ish tails, symmetric
        estimate = stats.estimate(values, alpha)
        low_misses += estimate.low > math.exp(true_shift)
        high_misses += estimate.high < math.exp(true_shift)
    # each bound may miss at most alpha of the time (binomial slack of 3 sd)
    slack = 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert low_misses / trials <= alpha + slack
    assert high_misses / trials <= alpha + slack
    assert low_misses > 0 and high_misses > 0  # and it is not absurdly wide


def test_hodges_lehmann_ignores_one_wild_round():
    values = np.full(15, math.log(1.05))
    values[3] = math.log(3.0)
    assert stats.estimate(values, 0.01).ratio == pytest.approx(1.05)


def test_verdicts_are_decided_by_the_whole_interval():
    threshold = 0.03
    assert stats.Estimate(16, 1.05, 1.04, 1.06, 0.01).verdict(threshold) is stats.Verdict.REGRESSED
    assert stats.Estimate(16, 1.00, 0.99, 1.01, 0.01).verdict(threshold) is stats.Verdict.SAME
    assert stats.Estimate(16, 1.03, 1.02, 1.04, 0.01).verdict(threshold) is stats.Verdict.UNDECIDED
    assert stats.Estimate(4, 1.20, 0.0, math.inf, 0.01).verdict(threshold) is stats.Verdict.UNDECIDED


def test_too_few_rounds_give_an_open_interval_not_a_verdict():
    estimate = stats.estimate([0.5, 0.5, 0.5], 0.001)
    assert estimate.low == 0 and estimate.high == math.inf


def test_bonferroni_over_metrics_and_looks():
    assert stats.per_test_alpha(0.01, 4, 3) == pytest.approx(0.01 / 12)
    with pytest.raises(ValueError):
        stats.per_test_alpha(0.01, 0, 1)


def test_log_ratios_refuse_bad_times():
    with pytest.raises(ValueError, match="finite and > 0"):
        stats.log_ratios([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="paired"):
        stats.log_ratios([1.0], [1.0, 2.0])


def test_smallest_detectable_grows_with_noise_and_shrinks_with_rounds():
    small = stats.smallest_detectable(0.01, 16, 0.03, 0.001)
    assert 0.03 < small < stats.smallest_detectable(0.02, 16, 0.03, 0.001)
    assert stats.smallest_detectable(0.01, 64, 0.03, 0.001) < small


# ---------------------------------------------------------------------------------- the fake worker

def test_a_a_passes(tmp_path):
    result = run_fake(tmp_path, {"noise": 0.01, "ms": {FRAME: 6.0}})
    assert result.exit_code == 0
    frame = result.metrics[0]
    assert frame.metric.name == FRAME and frame.verdict is stats.Verdict.SAME
    assert len(frame.base_ms) == 12  # decided at the first look
    assert frame.calls_per_block == 5  # 30 ms of 6 ms calls


def test_a_clear_regression_is_caught_and_attributed_to_its_stage(tmp_path):
    spec = {"noise": 0.005, "ms": {FRAME: 6.0, "stage fast W": 2.0},
            "head_factor": {FRAME: 1.10, "stage fast W": 1.30}}
    result = run_fake(tmp_path, spec)
    assert result.exit_code == 1
    assert [item.metric.name for item in result.regressed] == [FRAME]
    table = report.format_table(result)
    assert "regressed" in table and "accounted for by: W +0.6" in table
    stages = {item.metric.stage: item for item in result.metrics if item.metric.stage}
    assert stages["W"].estimate.low > 1 and stages["G"].estimate.high > 1 > stages["G"].estimate.low


def test_attribution_names_neither_f_nor_a_stage_with_a_small_process_offset(tmp_path):
    """As measured in A/A runs on an H200 (torch 2.11): F (run once per source, never in
    a frame) came out 9 % apart between two worker processes, S a few percent. A frame slowed outside
    every stage (the injected GPU spin after the step) must not be blamed on either."""
    spec = {"noise": 0.002, "ms": {FRAME: 6.0, "stage fast F": 0.9, "stage fast S": 0.04},
            "head_factor": {FRAME: 1.08, "stage fast F": 1.10, "stage fast S": 1.05}}
    result = run_fake(tmp_path, spec)
    assert result.exit_code == 1
    [line] = report.attribution(result)
    assert "no stage alone surely got slower by 10%" in line
    assert " F +" not in line and " S +" not in line


def test_the_table_says_which_frames_were_timed_as_cuda_graph_replays(tmp_path):
    replayed = run_fake(tmp_path, {"noise": 0.01, "replayed": [FRAME]})
    assert "timed as CUDA graph replays (uncompiled frames" in report.format_table(replayed)
    assert FRAME in report.replayed_frames(replayed)[0]
    assert report.replayed_frames(run_fake(tmp_path, {"noise": 0.01})) == []


def test_a_borderline_change_adds_rounds_then_reports_undecided(tmp_path):
    result = run_fake(tmp_path, {"noise": 0.03, "head_factor": 1.03}, rounds=8, max_rounds=24)
    assert len(result.metrics[0].base_ms) == 24
    assert result.metrics[0].verdict is stats.Verdict.UNDECIDED
    assert result.exit_code == 3
    allowed = run_fake(tmp_path, {"noise": 0.03, "head_factor": 1.03}, undecided_fails=False)
    assert allowed.exit_code == 0 and report.verdict_word(allowed) == "undecided (allowed to pass)"


def test_stages_are_not_gated_unless_asked(tmp_path):
    spec = {"noise": 0.005, "head_factor": {"stage fast G": 1.5}}
    assert run_fake(tmp_path, spec).exit_code == 0
    gated = controller.default_metrics(("fast",), (1,), gate_stages=True)
    assert run_fake(tmp_path, spec, metrics=gated).exit_code == 1


def test_metrics_are_sharded_by_recipe_and_never_split(tmp_path):
    metrics = controller.default_metrics(("fast", "fp32-eager", "fastest"), (1, 4))
    lanes = controller.shard(metrics, 2)
    assert len(lanes) == 2
    assert {m.recipe for m in lanes[0]} == {"fast", "fastest"} and {m.recipe for m in lanes[1]} == {"fp32-eager"}
    assert sorted(m.name for lane in lanes for m in lane) == sorted(m.name for m in metrics)


@pytest.mark.parametrize("head_first", [False, True])
def test_the_sides_prepare_one_at_a_time_in_the_asked_order(tmp_path, head_first):
    run_fake(tmp_path, {}, head_first=head_first)
    started = {role: float((tmp_path / "logs" / f"{role}-fast.log").read_text().split("prepare at ")[1].split()[0])
               for role in ("base", "head")}
    assert (started["head"] < started["base"]) == head_first


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity (Linux) and at least 2 cores")
def test_lanes_on_two_cards_keep_their_workers_on_their_own_cores(tmp_path):
    side = controller.Side("fake", tmp_path)
    metrics = controller.default_metrics(("fast", "fp32-eager"), (1,), stages=False)
    result = controller.run_gate(side, side, metrics, controller.GateConfig(rounds=4, max_rounds=4), ["0", "1"],
                                 tmp_path / "logs", start=fake_starter({}))
    cores = {lane["card"]: lane["cores"] for lane in result.setup.values()}
    assert set(cores) == {"gpu 0", "gpu 1"} and None not in cores.values() and cores["gpu 0"] != cores["gpu 1"]
    recipe_on = {"0": "fast", "1": "fp32-eager"}
    seen = {(role, gpu): describe_cores(json.loads(
                (tmp_path / "logs" / f"{role}-{recipe_on[gpu]}-gpu{gpu}.log").read_text().split("cores ")[1].split()[0]))
            for role in ("base", "head") for gpu in ("0", "1")}
    for gpu in ("0", "1"):
        assert seen[("base", gpu)] == seen[("head", gpu)] == cores[f"gpu {gpu}"]


def test_workers_loading_at_once_split_the_cores_between_them():
    assert controller.load_threads([0, 1, 2, 3, 4, 5, 6, 7], 4) == 2
    assert controller.load_threads([0, 1, 2], 8) == 1  # never none
    assert controller.load_threads(None, 1) == len(available())  # one worker: every core this process has


def test_each_worker_is_told_its_share_of_threads_for_loading(tmp_path):
    metrics = controller.default_metrics(("fast", "fp32-eager"), (1,), stages=False)
    run_fake(tmp_path, {}, metrics=metrics)
    told = {path.name: json.loads(path.read_text().split("load threads ")[1].split()[0])
            for path in (tmp_path / "logs").glob("*.log")}
    assert len(told) == 4 and set(told.values()) == {max(1, len(available()) // 4)}


def test_each_recipe_gets_its_own_pair_of_workers(tmp_path):
    # A compiled recipe's CUDA-graph trees and the hand-captured graphs of an eager recipe must not share
    # a process: each recipe's metrics are prepared and measured by that recipe's own workers only.
    metrics = controller.default_metrics(("fast", "fp32-eager"), (1,))
    result = run_fake(tmp_path, {"noise": 0.01}, metrics=metrics)
    assert result.exit_code == 0 and all(len(item.base_ms) == 12 for item in result.metrics)
    for recipe in ("fast", "fp32-eager"):
        for role in ("base", "head"):
            log = (tmp_path / "logs" / f"{role}-{recipe}.log").read_text()
            names = json.loads(log.split("prepared ")[1].splitlines()[0])
            assert names and all(recipe in name.split() for name in names)


def test_throttling_reasons_are_shown(tmp_path):
    result = run_fake(tmp_path, {"reasons": 0x40})
    assert "hw_thermal_slowdown" in report.clock_summary(result)
    assert len(result.clocks) == 12


def test_calibration_reports_noise_and_detectable_change(tmp_path):
    result = run_fake(tmp_path, {"noise": 0.01}, rounds=16, max_rounds=16)
    noise = {item.name: item for item in report.calibration(result)}
    assert 0.005 < noise[FRAME].sd < 0.02  # two blocks averaged per side: about 0.01
    assert noise[FRAME].detectable > 0.03
    assert FRAME in report.format_calibration(list(noise.values()), result)


def test_calibration_shows_a_steady_offset_between_the_two_processes(tmp_path):
    # Same code on both sides, but the head process is 5 % slower on one stage: seen on H200s for stage S.
    spec = {"noise": 0.002, "head_factor": {"stage fast S": 1.05}}
    result = run_fake(tmp_path, spec, rounds=16, max_rounds=16)
    noise = {item.name: item for item in report.calibration(result)}
    assert noise["stage fast S"].offset_is_real and 0.04 < noise["stage fast S"].offset < 0.06
    assert not noise[FRAME].offset_is_real and abs(noise[FRAME].offset) < 0.005
    text = report.format_calibration(list(noise.values()), result)
    assert f"{noise['stage fast S'].offset:+.2%} *" in text and "steady offset between the two worker processes" in text


def test_the_json_record_is_complete_and_strict(tmp_path):
    result = run_fake(tmp_path, {"noise": 0.01})
    record = report.to_dict(result)
    json.dumps(record, allow_nan=False)
    assert record["verdict"] == "pass" and len(record["metrics"]) == 6


# ------------------------------------------------------------------------------------------ failures

@pytest.mark.parametrize("how, message", [
    ("crash", "exited with code 7 during 'prepare'.*crashing on purpose"),
    ("oom", "ran out of GPU memory during 'prepare'"),
    ("garbage", "not JSON"),
])
def test_a_failing_worker_is_one_clear_error(tmp_path, how, message):
    with pytest.raises(GateError, match=message):
        run_fake(tmp_path, {"fail": {"role": "head", "op": "prepare", "how": how}})


def test_a_hung_worker_is_stopped_after_its_time_limit(tmp_path):
    start = time.monotonic()
    with pytest.raises(GateError, match="no answer to 'measure' within 1 s"):
        run_fake(tmp_path, {"fail": {"role": "base", "op": "measure", "how": "hang"}}, measure_timeout_s=1.0)
    assert time.monotonic() - start < 30


def test_no_worker_outlives_a_failed_gate(tmp_path):
    started = []

    def start(side, role, gpu, log_dir, recipe):
        worker = fake_starter({"fail": {"role": "head", "op": "load", "how": "crash"}})(side, role, gpu, log_dir, recipe)
        started.append(worker)
        return worker

    with pytest.raises(GateError):
        controller.run_gate(controller.Side("fake", tmp_path), controller.Side("fake", tmp_path),
                            controller.default_metrics(("fast",), (1,)), controller.GateConfig(rounds=4, max_rounds=4),
                            [None], tmp_path, start=start)
    assert len(started) == 2 and all(worker._process.poll() is not None for worker in started)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="fraction"):
        controller.GateConfig(threshold=3)
    with pytest.raises(ValueError, match="rounds"):
        controller.GateConfig(rounds=2)


# ---------------------------------------------------------------------------------- the command line

def gate(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lpperf", "gate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)


def test_a_base_ref_that_does_not_exist_is_exit_2(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    done = gate("--base", "no-such-ref-anywhere", "--device", "cpu", "--out", str(tmp_path), cwd=repo)
    assert done.returncode == 2
    assert "git ref 'no-such-ref-anywhere' does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_base_and_calibrate_together_is_exit_2(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    done = gate("--calibrate", "--base", "HEAD", "--device", "cpu", "--out", str(tmp_path), cwd=repo)
    assert done.returncode == 2 and "not both" in done.stderr


@pytest.mark.parametrize("args, message", [
    (("--batches", "0"), "argument --batches: must be a whole number in [1, 64]"),
    (("--recipes", "nope"), "unknown recipe 'nope'"),
    (("--threshold", "3"), "argument --threshold: must be a number in (0, 1)"),
])
def test_bad_arguments_are_exit_2_before_any_worker_starts(tmp_path, args, message):
    repo = Path(__file__).resolve().parents[1]
    done = gate("--base", ".", "--device", "cpu", "--out", str(tmp_path), *args, cwd=repo)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not list(tmp_path.glob("worker-*.log"))


def test_a_real_a_a_gate_runs_both_workers_end_to_end_on_the_cpu(tmp_path):
    """The real worker (TINY networks on the CPU, the working tree against itself): load, prepare, ABBA
    rounds, the decision and the record, with the fewest rounds and one recipe (one worker per recipe and
    side is covered with the fake worker). Four rounds cannot decide at the default alpha, so undecided is
    allowed to pass."""
    repo = Path(__file__).resolve().parents[1]
    done = gate("--base", ".", "--device", "cpu", "--recipes", "fp32-eager", "--batches", "1", "--no-stages",
                "--rounds", "4", "--max-rounds", "4", "--undecided", "pass", "--output-frames", "1",
                "--summary", str(tmp_path / "gate.md"), "--out", str(tmp_path), cwd=repo)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "gate.json").read_text())
    [metric] = record["metrics"]
    assert metric["name"] == "frame fp32-eager b1" and metric["verdict"] == "undecided"
    assert len(metric["base_ms"]) == len(metric["head_ms"]) == 4 and min(metric["base_ms"] + metric["head_ms"]) > 0
    loaded = record["setup"]["cpu"]["base_load"]
    assert loaded["lpperf"] == str(repo / "lpperf") and "TINY" in loaded["weights"]
    assert "frame fp32-eager b1" in done.stdout and "undecided (allowed to pass)" in done.stdout
    assert record["setup"]["cpu"]["base"]["timed_as"] == {"frame fp32-eager b1": "back-to-back calls"}
    assert sorted(path.name for path in tmp_path.glob("worker-*.log")) == [
        "worker-base-fp32-eager-cpu.log", "worker-head-fp32-eager-cpu.log"]
    assert "CUDA graph" not in done.stdout
    # beside time: the same frames from both processes, start-up measured, memory not on the CPU
    [output] = record["outputs"]
    assert output["judgment"] == "same" and output["head_vs_base"]["max_level_diff"] == 0
    assert output["frames"] == "1 frame(s) at batch 1 + one step at batch 1"
    assert output["base_parity"]["identical"]  # fp32-eager on a CPU computes what the float32 reference does
    [startup] = record["startup"]
    assert startup["recipe"] == "fp32-eager" and min(startup[key] for key in startup if key.endswith("_s")) > 0
    assert {entry["judgment"] for entry in record["memory"]} == {"not measured"}
    assert "### lpperf gate: ✅ undecided (allowed to pass)" in (tmp_path / "gate.md").read_text()
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("field, compiled", [(None, False), ("compile_step_mode", True), ("compile_nets_mode", True)])
def test_only_uncompiled_frames_are_captured_as_cuda_graphs(field, compiled):
    """On a card an uncompiled (launch-bound) frame is timed as a graph replay; a compiled one runs as is.
    What counts is what runs: the engine says so itself (a compile that fell back to eager clears it)."""
    from lpperf.optimize import recipes
    from lpperf.gate import worker

    animator = frame.sample_animator(recipes.build("fp32-eager", weights.tiny_networks(), "cpu"))
    if field is not None:
        setattr(animator.engine, field, "reduce-overhead")
    assert worker._compiled(animator) is compiled


@pytest.mark.parametrize("applied, compiled", [(["half", "channels_last"], False), (["half", "compile_step"], True),
                                               (["compile_nets"], True)])
def test_a_side_whose_engine_predates_engine_compiled_is_read_from_its_step_names(applied, compiled):
    from types import SimpleNamespace

    from lpperf.gate import worker

    assert worker._compiled(SimpleNamespace(engine=SimpleNamespace(applied=applied))) is compiled


def test_a_metric_that_cannot_be_captured_is_named_in_the_error():
    from lpperf.gate import worker

    with pytest.raises(RuntimeError, match="frame fp32-eager b1: could not capture it as a CUDA graph"):
        worker._captured(lambda: None, "cpu", "frame fp32-eager b1", str(Path(__file__).resolve().parents[1]))  # no CUDA: the capture fails


def test_the_real_worker_names_the_metric_whose_measurement_failed():
    # A measurement that fails (here: a metric never prepared) must say which metric, not only the op.
    import lpperf.gate.worker as worker_module

    request = json.dumps({"op": "measure", "metric": "frame fast b1", "calls": 1})
    done = subprocess.run([sys.executable, worker_module.__file__, "--tree", str(Path(worker_module.__file__).parents[2]),
                           "--device", "cpu"], input=request + "\n", capture_output=True, text=True, timeout=120)
    answer = json.loads(done.stdout.splitlines()[0])
    assert done.returncode == 1 and not answer["ok"]
    assert answer["error"].startswith("frame fast b1: KeyError")


def _frame_with_idle_gaps(gap_ms: float, cycles_per_ms: float, noise: float = 0.0, seed: int = 0):
    """What a spin adds to a frame whose GPU idles gap_ms per call waiting on the host: the spin runs in
    the gap first (lpperf.gate.worker.spin_for's model), plus measurement noise in ms."""
    rng = np.random.default_rng(seed)
    measured = []

    def added_ms(cycles: int) -> float:
        measured.append(cycles)
        return max(0.0, cycles / cycles_per_ms - gap_ms) + rng.normal(0.0, noise)
    return added_ms, measured


def test_an_injected_slowdown_is_sized_by_what_it_adds_not_by_the_spin():
    from lpperf.gate.worker import spin_for

    added_ms, measured = _frame_with_idle_gaps(gap_ms=0.14, cycles_per_ms=1e6)
    cycles, added = spin_for(added_ms, target_ms=0.30, cycles_per_ms=1e6)
    assert added == pytest.approx(0.30, rel=0.02)  # a spin of the target alone would add 0.16 ms
    assert cycles / 1e6 == pytest.approx(0.44, rel=0.02) and len(measured) == 2


def test_an_injection_that_the_frame_absorbs_is_reported_short_not_assumed():
    from lpperf.gate.worker import spin_for

    cycles, added = spin_for(lambda cycles: 0.0, target_ms=0.30, cycles_per_ms=1e6, tries=3)
    assert added == 0.0 and cycles > 0.30 * 1e6  # it grew, measured each time, and says what it got
    with pytest.raises(ValueError, match="target_ms > 0"):
        spin_for(lambda cycles: 0.0, target_ms=0.0, cycles_per_ms=1e6)


def test_the_report_says_what_an_injected_slowdown_added(tmp_path):
    result = run_fake(tmp_path, {"ms": {"frame fast b1": 6.0}, "head_factor": {"frame fast b1": 1.05}},
                      metrics=controller.default_metrics(("fast",), (1,), stages=False), inject_slowdown=0.05)
    text = report.format_table(result)
    assert "injected (test only) into the head's frame fast b1: +0.315 ms measured (+5.0%; asked +5.0%)" in text
    assert result.exit_code == 1
