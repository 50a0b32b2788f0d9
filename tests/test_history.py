"""lpperf.reports.history: reading runs, keeping cards apart, comparing runs (pure functions, hand-made inputs)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
from pytest_benchmark.storage.file import FileStorage

from lpperf.reports import history
from lpperf.reports.history import HistoryError, RunFormat, Verdict

MACHINE = "Linux-CPython-3.11-64bit"
H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"


def pytest_benchmark_run(card, medians, when="2026-11-28T08:00:00+00:00", commit="abc123"):
    """A run in pytest-benchmark's saved format, with the card field the lpperf plugin adds."""

    def stats(median):
        return {
            "min": median * 0.9, "max": median * 1.2, "mean": median * 1.01, "stddev": median * 0.05,
            "median": median, "iqr": median * 0.02, "q1": median * 0.99, "q3": median * 1.01,
            "outliers": "0;0", "rounds": 30, "iterations": 1, "ops": 1 / (median * 1.01),
        }  # fmt: skip

    return {
        "machine_info": {"node": "runner", "card": card, "torch": "2.11.0"},
        "commit_info": {"id": commit, "branch": "main"},
        "benchmarks": [{"name": name, "fullname": name, "stats": stats(m)} for name, m in medians.items()],
        "datetime": when,
        "version": "5.2.3",
    }


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("name", "slug"),
    [(H100, "nvidia-h100-80gb-hbm3"), (H200, "nvidia-h200"), ("  Tesla T4 ", "tesla-t4"), ("cpu", "cpu"), (None, "cpu")],
)
def test_card_slug(name, slug):
    assert history.card_slug(name) == slug


def test_card_slug_refuses_a_name_without_letters_or_digits():
    with pytest.raises(ValueError, match="no letters or digits"):
        history.card_slug(" -- ")


def test_read_run_reads_pytest_benchmark_json(tmp_path):
    path = write_json(tmp_path / "0001_x.json", pytest_benchmark_run(H100, {"test_frame": 0.007}))
    run = history.read_run(path)
    assert run.format is RunFormat.PYTEST_BENCHMARK
    assert (run.card, run.commit, run.datetime, run.source) == (H100, "abc123", "2026-11-28T08:00:00+00:00", str(path))
    [result] = run.results
    assert result.name == "test_frame"
    assert result.median_s == 0.007
    assert result.min_s == pytest.approx(0.0063)
    assert result.rounds == 30
    assert run.result("test_frame") is result
    assert run.result("absent") is None


def test_truncated_json_names_the_file_and_what_to_do(tmp_path):
    path = tmp_path / "0003_x.json"
    path.write_text(json.dumps(pytest_benchmark_run(H100, {"a": 0.01}))[:80])
    with pytest.raises(HistoryError) as error:
        history.read_run(path)
    message = str(error.value)
    assert str(path) in message
    assert "not valid JSON" in message
    assert "Delete or replace the file" in message
    assert "\n" not in message


def test_missing_file_is_a_history_error(tmp_path):
    with pytest.raises(HistoryError, match="no such benchmark file"):
        history.read_run(tmp_path / "nope.json")


def broken_runs():
    good = pytest_benchmark_run(H100, {"a": 0.01})

    def edited(change):
        data = json.loads(json.dumps(good))
        change(data)
        return data

    return [
        pytest.param([1, 2], "expected a JSON object", id="list"),
        pytest.param({"results": []}, "not a pytest-benchmark run", id="no-benchmarks"),
        pytest.param(edited(lambda d: d["benchmarks"][0].pop("fullname")), "has no 'fullname'", id="no-fullname"),
        pytest.param(edited(lambda d: d["benchmarks"][0].pop("stats")), "has no 'stats'", id="no-stats"),
        pytest.param(edited(lambda d: d["benchmarks"][0]["stats"].pop("median")), r"stats\.median", id="no-median"),
        pytest.param(edited(lambda d: d["benchmarks"][0]["stats"].update(median="fast")), "'fast'", id="text-median"),
        pytest.param(edited(lambda d: d["benchmarks"][0]["stats"].update(min=-1.0)), r"stats\.min", id="negative"),
        pytest.param(edited(lambda d: d["benchmarks"][0]["stats"].update(mean=math.nan)), r"stats\.mean", id="nan"),
        pytest.param(edited(lambda d: d["benchmarks"][0]["stats"].update(rounds=0)), r"stats\.rounds", id="no-rounds"),
        pytest.param(edited(lambda d: d["machine_info"].update(card=3)), r"machine_info\.card", id="card-not-text"),
    ]


@pytest.mark.parametrize(("data", "problem"), broken_runs())
def test_wrong_schema_is_a_history_error_naming_the_file(tmp_path, data, problem):
    path = write_json(tmp_path / "0001_x.json", data)
    with pytest.raises(HistoryError, match=problem) as error:
        history.read_run(path)
    assert str(path) in str(error.value)


def test_lpperf_report_round_trip(tmp_path):
    run = history.read_run(write_json(tmp_path / "a.json", pytest_benchmark_run(H200, {"x": 0.002, "y": 0.5})))
    report = history.report_dict(run)
    assert report["kind"] == history.REPORT_KIND
    back = history.read_run(write_json(tmp_path / "report.json", report))
    assert back.format is RunFormat.LPPERF_REPORT
    assert (back.card, back.commit, back.datetime, back.results) == (run.card, run.commit, run.datetime, run.results)


def test_lpperf_report_with_only_medians(tmp_path):
    report = {
        "kind": "lpperf-bench-report",
        "version": 1,
        "machine_info": {"card": H100},
        "benchmarks": [{"name": "frame", "median_s": 0.00715}],
    }
    run = history.parse_run(report, "report")
    assert run.card == H100
    assert run.results == (history.BenchmarkResult("frame", 0.00715),)


def test_lpperf_report_of_another_version_is_refused():
    report = {"kind": "lpperf-bench-report", "version": 2, "machine_info": {}, "benchmarks": []}
    with pytest.raises(HistoryError, match="version 2"):
        history.parse_run(report, "report.json")


def test_compare_runs_verdicts_against_hand_computed_ratios():
    baseline = history.parse_run(pytest_benchmark_run(H100, {"a": 0.010, "b": 0.020, "c": 0.005, "gone": 1.0}), "old")
    current = history.parse_run(pytest_benchmark_run(H100, {"a": 0.0125, "b": 0.021, "c": 0.004, "new": 1.0}), "new")
    comparison = history.compare_runs(baseline, current, threshold=0.10)
    by_name = {delta.name: delta for delta in comparison.deltas}
    assert sorted(by_name) == ["a", "b", "c"]
    assert by_name["a"].ratio == pytest.approx(1.25)
    assert by_name["a"].verdict is Verdict.SLOWER
    assert by_name["b"].ratio == pytest.approx(1.05)
    assert by_name["b"].verdict is Verdict.SAME
    assert by_name["c"].ratio == pytest.approx(0.8)
    assert by_name["c"].verdict is Verdict.FASTER
    assert (by_name["a"].old_median_s, by_name["a"].new_median_s) == (0.010, 0.0125)
    assert [delta for delta in comparison.deltas if delta.verdict is Verdict.SLOWER] == [by_name["a"]]
    assert comparison.only_in_baseline == ("gone",)
    assert comparison.only_in_current == ("new",)


def test_compare_runs_threshold_is_strict_like_pytest_benchmark():
    # 1.0 -> 1.25 is exactly 25 % slower (exact in binary): not beyond a 25 % threshold, beyond 24 %.
    baseline = history.parse_run(pytest_benchmark_run(H100, {"a": 1.0}), "old")
    current = history.parse_run(pytest_benchmark_run(H100, {"a": 1.25}), "new")
    assert history.compare_runs(baseline, current, threshold=0.25).deltas[0].verdict is Verdict.SAME
    assert history.compare_runs(baseline, current, threshold=0.24).deltas[0].verdict is Verdict.SLOWER


def test_compare_runs_refuses_two_cards():
    baseline = history.parse_run(pytest_benchmark_run(H100, {"a": 1.0}), "old.json")
    current = history.parse_run(pytest_benchmark_run(H200, {"a": 1.0}), "new.json")
    with pytest.raises(HistoryError, match="not comparable"):
        history.compare_runs(baseline, current)


def test_compare_runs_refuses_a_run_without_a_card_against_one_with_a_card():
    carded = history.parse_run(pytest_benchmark_run(H100, {"a": 0.007}), "h100.json")
    bare = dataclasses.replace(history.parse_run(pytest_benchmark_run(H100, {"a": 0.5}), "bare.json"), card=None)
    for baseline, current in ((bare, carded), (carded, bare)):
        with pytest.raises(HistoryError, match="bare.json records no card, h100.json was measured on"):
            history.compare_runs(baseline, current)
    assert history.compare_runs(bare, bare).deltas[0].verdict is Verdict.SAME  # neither records one: as before


def test_history_orders_runs_by_their_instant_not_their_text(tmp_path):
    stamps = {"a": "2026-11-28T09:30:00+02:00",  # 07:30 UTC: the oldest, though its text sorts last
              "b": "2026-11-28T08:00:00+00:00", "c": "2026-11-28T08:10:00Z", "d": "2026-11-28T08:20:00",
              "e": "not a date"}
    for name, stamp in stamps.items():
        data = pytest_benchmark_run(H100, {"f": 0.01})
        data["datetime"] = stamp
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    order = [Path(run.source).stem for run in history.load_history(tmp_path)]
    assert order == ["e", "a", "b", "c", "d"]  # an undated run never becomes the latest


def test_compare_runs_rejects_a_percentage_threshold():
    run = history.parse_run(pytest_benchmark_run(H100, {"a": 1.0}), "run")
    with pytest.raises(ValueError, match="fraction"):
        history.compare_runs(run, run, threshold=10)


def test_format_comparison_shows_milliseconds_and_verdicts():
    baseline = history.parse_run(pytest_benchmark_run(H100, {"frame": 0.010}), "old.json")
    current = history.parse_run(pytest_benchmark_run(H100, {"frame": 0.0125}), "new.json")
    text = history.format_comparison(history.compare_runs(baseline, current))
    assert "old.json" in text and "new.json" in text
    assert "10.000" in text and "12.500" in text and "1.250" in text and "slower" in text


def test_load_history_and_runs_for_card(tmp_path):
    write_json(tmp_path / "nvidia-h100" / MACHINE / "0001_a.json", pytest_benchmark_run(H100, {"a": 1.0}, "2026-11-28T10:00"))
    write_json(tmp_path / "nvidia-h100" / MACHINE / "0002_b.json", pytest_benchmark_run(H100, {"a": 1.0}, "2026-11-28T09:00"))
    write_json(tmp_path / "nvidia-h200" / MACHINE / "0001_c.json", pytest_benchmark_run(H200, {"a": 1.0}, "2026-11-28T08:00"))
    runs = history.load_history(tmp_path)
    assert [run.datetime for run in runs] == ["2026-11-28T08:00", "2026-11-28T09:00", "2026-11-28T10:00"]
    h100_runs = history.runs_for_card(runs, H100)
    assert [run.source.rsplit("/", 1)[1] for run in h100_runs] == ["0002_b.json", "0001_a.json"]
    assert history.runs_for_card(runs, "nvidia-h200") == [runs[0]]
    assert history.runs_for_card(runs, "Tesla T4") == []


def test_load_history_of_a_missing_folder(tmp_path):
    with pytest.raises(HistoryError, match="benchmark-autosave"):
        history.load_history(tmp_path / "none")


@pytest.fixture
def storage(tmp_path):
    """A pytest-benchmark storage folder: this machine's runs, another machine's, and a stray file."""
    for name in ("0001_a.json", "0002_b.json", "0010_c.json", "notes.json"):
        write_json(tmp_path / MACHINE / name, pytest_benchmark_run(H100, {"a": 1.0}))
    write_json(tmp_path / "Windows-CPython-3.12-64bit" / "0099_z.json", pytest_benchmark_run(H100, {"a": 1.0}))
    return tmp_path


class QuietLogger:
    def warning(self, text):
        raise AssertionError(text)


def test_baseline_files_selects_what_pytest_benchmark_compares(storage):
    pytest_benchmark_storage = FileStorage(storage, logger=QuietLogger(), default_machine_id=MACHINE)
    latest = [path for path, _ in pytest_benchmark_storage.load()][-1:]
    chosen = history.baseline_files(storage, MACHINE, True)
    assert [path.relative_to(storage) for path in chosen] == latest
    assert [path.name for path in chosen] == ["0010_c.json"]
    numbered = [path for path, _ in pytest_benchmark_storage.load("0002")]
    assert [path.relative_to(storage) for path in history.baseline_files(storage, MACHINE, "0002")] == numbered
    assert [path.name for path in history.baseline_files(storage, MACHINE, "0002")] == ["0002_b.json"]


def test_baseline_files_of_an_explicit_file_and_of_an_empty_storage(storage, tmp_path):
    explicit = storage / MACHINE / "notes.json"
    assert history.baseline_files(storage, MACHINE, str(explicit)) == [explicit]
    assert history.baseline_files(tmp_path / "empty", MACHINE, True) == []
    assert history.saved_run_files(storage, "Windows-CPython-3.12-64bit")[0].name == "0099_z.json"
