"""`lpperf compare` and `lpperf history` on the inputs that used to give a wrong verdict or a traceback:
runs with no benchmark in common, zero or impossible medians, many rows, unsettled timings, broken
history files and conflicting options."""

import json
import math
import re
from pathlib import Path

import pytest

from lpperf import cli
from lpperf.reports import bench, charts, history, trends

CARD = "NVIDIA H100 80GB HBM3"


def pytest_benchmark_data(medians: dict, card=CARD, when="2026-11-28T08:00:00") -> dict:
    """A run in pytest-benchmark's saved format (the fields lpperf.reports.history reads)."""
    def stats(median):
        return {"min": median, "max": median, "mean": median, "stddev": 0.0, "median": median, "iqr": 0.0,
                "rounds": 5, "iterations": 1}

    return {"machine_info": {"card": card}, "commit_info": {"id": "c"}, "datetime": when,
            "benchmarks": [{"fullname": name, "stats": stats(median)} for name, median in medians.items()]}


def bench_report_data(rows: dict, card=CARD, when="2026-11-28T08:00:00+00:00") -> dict:
    """An lpperf bench report.json: rows = {recipe: (ms per frame, converged)}, batch 1, as bench.report() writes
    it (the settling is recorded in `rows`, the comparable times in `benchmarks`)."""
    return {
        "kind": history.REPORT_KIND, "version": history.REPORT_VERSION, "datetime": when, "commit": None,
        "machine_info": {"card": card},
        "benchmarks": [{"name": f"{name} [batch 1]", "median_s": ms / 1e3, "rounds": 5}
                       for name, (ms, _) in rows.items()],
        "rows": [{"name": name, "batch": 1, "converged": converged, "ms_per_frame": ms}
                 for name, (ms, converged) in rows.items()],
    }


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def one_error_line(capsys) -> str:
    """The single stderr line of a refused command (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------- names that do not match

def test_compare_refuses_runs_with_no_benchmark_in_common(tmp_path, capsys):
    """All renamed and 100x slower used to print `passed: no benchmark more than 5% slower` and exit 0."""
    a = write(tmp_path / "a.json", pytest_benchmark_data({"frame": 0.01, "source": 0.02}))
    b = write(tmp_path / "b.json", pytest_benchmark_data({"frame_v2": 1.0, "source_v2": 2.0}))
    for gate in ([], ["--fail-above", "0.05"]):
        assert cli.main(["compare", str(a), str(b), *gate]) == 2
        line = one_error_line(capsys)
        assert "no benchmark" in line and str(a) in line and str(b) in line
        assert "only in A (2): frame, source" in line and "only in B (2): frame_v2, source_v2" in line


def test_compare_lists_a_long_list_of_missing_names_in_one_short_line(tmp_path, capsys):
    a = write(tmp_path / "a.json", pytest_benchmark_data({f"old{index}": 0.01 for index in range(500)}))
    b = write(tmp_path / "b.json", pytest_benchmark_data({f"new{index}": 0.01 for index in range(500)}))
    assert cli.main(["compare", str(a), str(b)]) == 2
    line = one_error_line(capsys)
    assert "only in A (500): old0," in line and "(495 more)" in line and len(line) < 600


def test_a_partial_overlap_compares_what_matches_and_names_the_rest(tmp_path, capsys):
    a = write(tmp_path / "a.json", pytest_benchmark_data({"frame": 0.01, "renamed": 0.02}))
    b = write(tmp_path / "b.json", pytest_benchmark_data({"frame": 0.01, "renamed_v2": 2.0}))
    assert cli.main(["compare", str(a), str(b)]) == 0  # reporting only
    out = capsys.readouterr().out
    assert "only in baseline: renamed" in out and "only in current:  renamed_v2" in out
    # a gate does not let a renamed (or dropped) benchmark slip through unchecked ...
    assert cli.main(["compare", str(a), str(b), "--fail-above", "0.05"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 benchmark(s) of A are not in B: renamed" in line and "--allow-missing" in line
    # ... unless told to gate only the benchmarks in both runs
    assert cli.main(["compare", str(a), str(b), "--fail-above", "0.05", "--allow-missing"]) == 0
    assert "passed: no benchmark more than 5% slower" in capsys.readouterr().out


def test_a_benchmark_new_in_b_does_not_stop_the_gate(tmp_path, capsys):
    a = write(tmp_path / "a.json", pytest_benchmark_data({"frame": 0.01}))
    b = write(tmp_path / "b.json", pytest_benchmark_data({"frame": 0.01, "added": 0.5}))
    assert cli.main(["compare", str(a), str(b), "--fail-above", "0.05"]) == 0
    assert "only in current:  added" in capsys.readouterr().out


def test_a_regression_is_a_verdict_even_when_a_benchmark_is_missing(tmp_path, capsys):
    a = write(tmp_path / "a.json", pytest_benchmark_data({"frame": 0.01, "gone": 0.02}))
    b = write(tmp_path / "b.json", pytest_benchmark_data({"frame": 0.02}))
    assert cli.main(["compare", str(a), str(b), "--fail-above", "0.05"]) == 1
    err = capsys.readouterr().err
    assert "FAILED: 1 benchmark(s) more than 5% slower" in err and "not in B: gone" in err


# ------------------------------------------------------------------------------------------ zero medians

def test_identical_zero_medians_are_the_same(tmp_path, capsys):
    """Two identical runs with zero medians used to FAIL as more than 5% slower."""
    a = write(tmp_path / "a.json", pytest_benchmark_data({"noop": 0.0}))
    assert cli.main(["compare", str(a), str(a), "--fail-above", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "within 10%: 1" in out and "passed" in out


def test_a_zero_median_against_a_time_is_reported_plainly(tmp_path, capsys):
    zero = write(tmp_path / "zero.json", pytest_benchmark_data({"noop": 0.0}))
    some = write(tmp_path / "some.json", pytest_benchmark_data({"noop": 0.002}))
    assert cli.main(["compare", str(zero), str(some)]) == 0
    assert "noop: 0.000 ms -> 2.000 ms (the time in A is zero: no ratio)" in capsys.readouterr().out
    assert cli.main(["compare", str(some), str(zero)]) == 0
    assert "noop: 2.000 ms -> 0.000 ms (the time in B is zero: no ratio)" in capsys.readouterr().out
    assert cli.main(["compare", str(zero), str(some), "--fail-above", "0.05"]) == 1  # from nothing to 2 ms


@pytest.mark.parametrize("median", ["-0.001", "NaN", "Infinity", "1" + "0" * 400, '"fast"', "true", "null"])
def test_a_median_that_cannot_be_a_time_names_the_file_and_the_benchmark(tmp_path, capsys, median):
    good = write(tmp_path / "good.json", pytest_benchmark_data({"frame": 0.01}))
    text = json.dumps(pytest_benchmark_data({"frame": 0.01})).replace('"median": 0.01', f'"median": {median}')
    bad = write(tmp_path / "bad.json", text)
    assert cli.main(["compare", str(good), str(bad)]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and "'frame'" in line and "stats.median" in line and "seconds" in line


def test_repeated_benchmark_names_are_refused():
    data = pytest_benchmark_data({"frame": 0.01})
    data["benchmarks"].append(dict(data["benchmarks"][0]))
    with pytest.raises(history.HistoryError, match=r"run.json: benchmarks\[1\] repeats the name 'frame'"):
        history.parse_run(data, "run.json")


# ------------------------------------------------------------------------------------------ linear time

class CountedName(str):
    """A benchmark name that counts how often it is compared with another (a list scan compares it with
    every name before the match; a dict lookup with one)."""

    comparisons = 0

    def __eq__(self, other):
        CountedName.comparisons += 1
        return str.__eq__(self, other)

    def __lt__(self, other):
        CountedName.comparisons += 1
        return str.__lt__(self, other)

    __hash__ = str.__hash__


def counted_run(count: int, median_s: float, fmt=history.RunFormat.PYTEST_BENCHMARK) -> history.Run:
    results = tuple(history.BenchmarkResult(CountedName(f"bench {index}"), median_s) for index in range(count))
    return history.Run("run", fmt, CARD, None, None, {}, results)


def test_comparing_runs_takes_linear_time():
    """Compare time grew with the square of the row count (20k rows: 15 s). Counting name comparisons
    (not the clock) tells a list scan from a dict lookup: about n*n/2 against a few per row."""
    count = 4000
    baseline, current = counted_run(count, 0.010), counted_run(count, 0.011)
    CountedName.comparisons = 0
    comparison = history.compare_runs(baseline, current, 0.05)
    history.format_comparison(comparison)
    trends.creep([baseline, current], pinned=baseline, best_of=10, limit=0.05)
    assert len(comparison.deltas) == count
    assert CountedName.comparisons < 30 * count  # sorting the names is n log n (about 12 n here)


def test_reading_a_run_takes_linear_time():
    count = 4000
    report = bench_report_data({f"row {index}": (1.0, True) for index in range(count)})
    for benchmark, row in zip(report["benchmarks"], report["rows"]):
        benchmark["name"], row["name"] = CountedName(benchmark["name"]), CountedName(row["name"])
    CountedName.comparisons = 0
    run = history.parse_run(report, "report.json")
    assert len(run.results) == count
    assert CountedName.comparisons < 30 * count


# ------------------------------------------------------------------------------------------ unsettled rows

def test_a_ratio_from_an_unsettled_time_says_it_is_noise(tmp_path, capsys):
    """`lpperf compare` of runs whose timing did not settle said "7.86x faster" with no caveat."""
    a = write(tmp_path / "a.json", bench_report_data({"fp32-eager": (786.0, False), "fast": (100.0, True)}))
    b = write(tmp_path / "b.json", bench_report_data({"fp32-eager": (100.0, True), "fast": (100.0, True)}))
    run = history.read_run(a)
    assert [result.converged for result in run.results] == [False, True]
    assert cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "fp32-eager [batch 1]: 786.000 ms -> 100.000 ms, 7.86x faster (87.3% less time) ~ did not settle in A" \
           in out
    assert "faster (beyond 10%): 1 (1 from a time that did not settle: noise)" in out
    assert "~ 1 benchmark(s) compared with a time that did not settle" in out
    table_row = next(line for line in out.splitlines() if line.startswith("fp32-eager [batch 1]  "))
    assert table_row.endswith("faster ~")


def test_the_gate_counts_unsettled_times_and_marks_them(tmp_path, capsys):
    a = write(tmp_path / "a.json", bench_report_data({"fast": (100.0, True)}))
    b = write(tmp_path / "b.json", bench_report_data({"fast": (150.0, False)}))
    assert cli.main(["compare", str(a), str(b), "--fail-above", "0.05"]) == 1
    err = capsys.readouterr().err
    assert "FAILED: 1 benchmark(s) more than 5% slower" in err and "fast [batch 1] ~" in err
    assert "did not settle" in err
    same = write(tmp_path / "same.json", bench_report_data({"fast": (100.0, False)}))
    assert cli.main(["compare", str(a), str(same), "--fail-above", "0.05"]) == 0
    assert "passed: no benchmark more than 5% slower (1 compared time(s) did not settle: noise" in \
           capsys.readouterr().out


def test_a_report_written_by_lpperf_bench_keeps_the_settling_of_its_rows():
    from helpers import row_result

    results = [row_result("fp32 eager", 20.0, converged=False), row_result("fast", 9.0, recipe="fast")]
    data = bench.report(results, {"device": "cpu", "device_name": "Test CPU", "torch_version": "2.x"},
                        {"batches": [1]}, weights="TINY networks")
    run = history.parse_run(json.loads(json.dumps(data, allow_nan=False)), "report.json")
    assert [(item.name, item.converged) for item in run.results] == [("fp32 eager [batch 1]", False),
                                                                       ("fast [batch 1]", True)]


def test_the_settling_mark_survives_a_round_trip_and_an_explicit_field_wins(tmp_path):
    report = bench_report_data({"fast": (100.0, True)})
    report["benchmarks"][0]["converged"] = False
    run = history.parse_run(report, "report.json")
    assert not run.results[0].converged
    back = history.parse_run(json.loads(json.dumps(history.report_dict(run))), "copy.json")
    assert back.results == run.results
    report["benchmarks"][0]["converged"] = "no"
    with pytest.raises(history.HistoryError, match="converged"):
        history.parse_run(report, "report.json")


def test_creep_marks_a_ratio_from_an_unsettled_time():
    def run(ms, converged):
        return history.Run("r", history.RunFormat.LPPERF_REPORT, CARD, None, None, {},
                           (history.BenchmarkResult("fast", ms / 1e3, converged=converged),))

    [finding] = trends.creep([run(10.0, True), run(12.0, False)], limit=0.05)
    assert finding.flagged and not finding.settled
    text = trends.format_creep([finding], 10)
    assert "FLAGGED ~" in text and "did not settle" in text


# ---------------------------------------------------------------------------------------- history files

def broken_files():
    good = json.dumps(pytest_benchmark_data({"frame": 0.01}))
    return [
        pytest.param(b"\xff\xfe{\x00}\x00", "not UTF-8 text", id="utf-16"),
        pytest.param(("[" * 200_000 + "]" * 200_000).encode(), "nested too deeply", id="deep"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"  \n", "empty", id="blank"),
        pytest.param(good[:40].encode(), "not valid JSON", id="truncated"),
        pytest.param(b'{"machine_info": {}, "benchmarks": {"frame": 1}}', "not a pytest-benchmark run", id="shape"),
        pytest.param(b'"a string"', "expected a JSON object", id="string"),
        pytest.param(good.replace('"card": "NVIDIA H100 80GB HBM3"', '"card": "--"').encode(), "machine_info.card",
                     id="card-without-letters"),
    ]


@pytest.mark.parametrize(("content", "problem"), broken_files())
def test_a_broken_run_file_is_one_line_naming_it(tmp_path, capsys, content, problem):
    good = write(tmp_path / "good.json", pytest_benchmark_data({"frame": 0.01}))
    broken = tmp_path / "broken.json"
    broken.write_bytes(content)
    with pytest.raises(history.HistoryError, match=problem) as error:
        history.read_run(broken)
    assert str(broken) in str(error.value) and "\n" not in str(error.value)
    assert cli.main(["compare", str(good), str(broken)]) == 2
    line = one_error_line(capsys)
    assert str(broken) in line and problem in line
    # named on its own, as the pinned run: an error before the history is read
    store = write(tmp_path / "store" / "0001_a.json", pytest_benchmark_data({"frame": 0.01})).parent
    assert cli.main(["history", str(store), "--out", str(tmp_path / "charts"), "--creep-limit", "0.05",
                     "--pinned", str(broken)]) == 2
    assert str(broken) in one_error_line(capsys)


def test_a_run_file_that_is_a_folder_or_unreadable_is_named(tmp_path):
    with pytest.raises(history.HistoryError, match="is a folder") as error:
        history.read_run(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_history_skips_broken_files_with_a_warning_and_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(charts, "unavailable_reason", lambda: "not needed here")
    store = tmp_path / "store"
    write(store / "0001_a.json", pytest_benchmark_data({"frame": 0.010}, when="2026-11-28T08:00"))
    write(store / "0002_b.json", pytest_benchmark_data({"frame": 0.020}, when="2026-11-28T09:00"))
    for index, (content, _problem) in enumerate(param.values for param in broken_files()):
        (store / f"broken{index}.json").write_bytes(content)
    assert cli.main(["history", str(store)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: skipped ")]
    assert len(warnings) == len(broken_files())
    assert all("Traceback" not in line and str(store / "broken") in line for line in warnings)
    assert "frame: 10.000 ms -> 20.000 ms, 2.00x slower" in captured.out
    with pytest.raises(history.HistoryError):  # the library stays strict unless told to skip
        history.load_history(store)


def test_a_creep_check_over_an_unreadable_file_is_no_verdict(tmp_path, capsys, monkeypatch):
    """The file skipped may be the very run the check should judge: exit 2, not a pass over the rest."""
    monkeypatch.setattr(charts, "unavailable_reason", lambda: "not needed here")
    store = tmp_path / "store"
    write(store / "0001_a.json", pytest_benchmark_data({"frame": 0.010}, when="2026-11-28T08:00"))
    write(store / "0002_b.json", pytest_benchmark_data({"frame": 0.010}, when="2026-11-28T09:00"))
    write(store / "0003_c.json", '{"machine_info": ')
    assert cli.main(["history", str(store), "--creep-limit", "0.05"]) == 2
    err = capsys.readouterr().err
    assert f"warning: skipped {store / '0003_c.json'}" in err
    line = err.strip().splitlines()[-1]
    assert "no creep verdict" in line and "1 file(s)" in line and "repair or remove" in line
    assert cli.main(["history", str(store)]) == 0  # without a creep check the charts and tables still come
    write(store / "0004_d.json", pytest_benchmark_data({"frame": 0.020}, when="2026-11-28T10:00"))
    assert cli.main(["history", str(store), "--creep-limit", "0.05"]) == 1  # a creep among the readable runs stands
    assert "FAILED: 1 benchmark(s) crept" in capsys.readouterr().err


@pytest.mark.parametrize("later", [None, "renamed"], ids=["one run", "no benchmark in common"])
def test_a_creep_check_with_nothing_to_hold_the_latest_run_against_is_no_verdict(tmp_path, capsys, monkeypatch,
                                                                                  later):
    monkeypatch.setattr(charts, "unavailable_reason", lambda: "not needed here")
    store = tmp_path / "store"
    write(store / "0001_a.json", pytest_benchmark_data({"frame": 0.010}, when="2026-11-28T08:00"))
    if later:
        write(store / "0002_b.json", pytest_benchmark_data({later: 0.010}, when="2026-11-28T09:00"))
    assert cli.main(["history", str(store), "--creep-limit", "0.05"]) == 2
    captured = capsys.readouterr()
    assert "no creep verdict" in captured.err.strip().splitlines()[-1]
    if later:
        assert "not checked (new)" in captured.out


def test_a_benchmark_new_in_the_latest_run_is_not_checked_while_the_rest_are(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(charts, "unavailable_reason", lambda: "not needed here")
    store = tmp_path / "store"
    write(store / "0001_a.json", pytest_benchmark_data({"frame": 0.010}, when="2026-11-28T08:00"))
    write(store / "0002_b.json", pytest_benchmark_data({"frame": 0.010, "added": 0.5}, when="2026-11-28T09:00"))
    assert cli.main(["history", str(store), "--creep-limit", "0.05"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"added .* not checked \(new\)", out) and re.search(r"frame .* ok", out)


def test_history_with_only_broken_files_says_so(tmp_path, capsys):
    store = tmp_path / "store"
    write(store / "broken.json", "")
    assert cli.main(["history", str(store), "--out", str(tmp_path / "charts")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no usable benchmark runs" in line and "1 file(s) skipped" in line


# ---------------------------------------------------------------------------------- options, checked first

@pytest.fixture
def nothing_read(monkeypatch):
    """Any attempt to read a run fails the test: the options must be refused before that."""
    def read(*args, **kwargs):
        raise AssertionError("a run was read before the options were checked")

    monkeypatch.setattr(history, "read_run", read)
    monkeypatch.setattr(history, "load_history", read)


@pytest.mark.parametrize(("argv", "problem"), [
    (["history", "{store}", "--pinned", "{file}"], "--pinned needs --creep-limit"),
    (["history", "{store}", "--threshold", "-5"], "argument --threshold: must be a number"),
    (["history", "{store}", "--threshold", "nan"], "argument --threshold: must be a number"),
    (["history", "{store}", "--threshold", "10"], "argument --threshold: must be a fraction below 1"),
    (["history", "{store}", "--creep-limit", "5"], "argument --creep-limit: must be a fraction below 1"),
    (["history", "{store}", "--creep-limit", "0.05", "--best-of", "0"], "argument --best-of: must be a whole number"),
    (["history", "{store}", "--creep-limit", "0.05", "--any-card"], "--any-card"),
    (["history", "{file}"], "is a file, not a history folder"),
    (["history", "{missing}"], "no such history folder"),
    (["history", "{store}", "--out", "{file}"], "--out"),
    (["compare", "{file}", "{file}", "--threshold", "-5"], "argument --threshold: must be a number"),
    (["compare", "{file}", "{file}", "--threshold", "inf"], "argument --threshold: must be a number"),
    (["compare", "{file}", "{file}", "--fail-above", "5"], "argument --fail-above: must be a fraction below 1"),
    (["compare", "{file}", "{file}", "--allow-missing"], "--allow-missing needs --fail-above"),
])
def test_conflicting_or_invalid_options_are_refused_before_anything_is_read(tmp_path, capsys, nothing_read, argv,
                                                                           problem):
    store = tmp_path / "store"
    store.mkdir()
    run_file = write(tmp_path / "run.json", pytest_benchmark_data({"frame": 0.01}))
    paths = {"store": store, "file": run_file, "missing": tmp_path / "missing"}
    assert cli.main([part.format(**paths) for part in argv]) == 2
    line = one_error_line(capsys)
    assert problem in line
    if "{file}" in argv and argv[0] == "history" and "--out" in argv:
        assert str(run_file) in line


def test_a_pinned_run_applies_to_its_own_card_only(tmp_path, capsys, monkeypatch):
    """With two cards in the history, --pinned (one card's release) used to stop the other card's creep
    check with "creep is measured on one card's history"."""
    monkeypatch.setattr(charts, "unavailable_reason", lambda: "not needed here")
    store = tmp_path / "store"
    for index in range(2):
        write(store / "h100" / f"000{index}.json", pytest_benchmark_data({"frame": 0.01}, when=f"2026-11-2{index}"))
        write(store / "h200" / f"000{index}.json", pytest_benchmark_data({"frame": 0.01}, "NVIDIA H200",
                                                                        when=f"2026-11-2{index}"))
    pinned = write(tmp_path / "release.json", pytest_benchmark_data({"frame": 0.005}))
    assert cli.main(["history", str(store), "--creep-limit", "0.05", "--pinned", str(pinned)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("and vs the pinned run") == 1
    assert f"{CARD}: frame" in captured.err and "NVIDIA H200: frame" not in captured.err
    other = write(tmp_path / "t4.json", pytest_benchmark_data({"frame": 0.005}, "Tesla T4"))
    assert cli.main(["history", str(store), "--creep-limit", "0.05", "--pinned", str(other)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(other) in line and "Tesla T4" in line and "no run of that card" in line


def test_the_docstring_lists_every_compare_and_history_option():
    subcommands = next(action for action in cli.build_parser()._actions if action.dest == "command").choices
    for name in ("compare", "history"):
        for action in subcommands[name]._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in cli.__doc__, f"lpperf {name} {option} is missing from cli's docstring"


# ------------------------------------------------------------------------------------------ other faults

def test_creep_against_a_zero_time_is_no_traceback():
    def run(ms):
        return history.Run("r", history.RunFormat.PYTEST_BENCHMARK, CARD, None, None, {},
                           (history.BenchmarkResult("noop", ms / 1e3),))

    [same] = trends.creep([run(0.0), run(0.0)], pinned=run(0.0), limit=0.05)
    assert same.vs_best == 1 and same.vs_pinned == 1 and not same.flagged
    [grew] = trends.creep([run(0.0), run(1.0)], limit=0.05)
    assert grew.vs_best == math.inf and grew.flagged
    assert "inf" in trends.format_creep([grew], 10)


def test_change_points_of_a_series_with_a_zero_time_are_none():
    assert trends.change_points([0.0] * 4 + [1.0] * 4) == []
    with pytest.raises(ValueError, match="finite"):
        trends.change_points([1.0, math.nan])


def test_history_with_zero_medians_draws_its_charts(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    store = tmp_path / "store"
    for index in range(2):
        write(store / f"000{index}.json", pytest_benchmark_data({"noop": 0.0}, when=f"2026-11-2{index}"))
    assert cli.main(["history", str(store), "--out", str(tmp_path / "charts"), "--creep-limit", "0.05"]) == 0
    assert (tmp_path / "charts" / "trend-noop.png").is_file()


def test_change_points_of_a_long_history_take_near_linear_time():
    """Every (cut, pair of runs) was visited: a 2000-run series took about a second per benchmark chart and
    grew with the cube of the runs. The ratio of two sizes, best of five, is robust to the CPU's speed."""
    import random
    import time

    def seconds(count: int) -> float:
        rng = random.Random(0)
        series = [1.0 + rng.random() * 0.01 for _ in range(count)]
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            trends.change_points(series)
            best = min(best, time.perf_counter() - start)
            if best > 1.0:  # already far too slow: no need to repeat
                break
        return best

    assert seconds(4_000) / seconds(500) < 30  # 8x the runs: about 10x the time; quadratic would be 64x


def test_a_threshold_below_one_percent_is_shown_as_given(tmp_path, capsys):
    """--fail-above 0.005 printed "more than 0% slower": the gate said something else than it checked."""
    a = write(tmp_path / "a.json", pytest_benchmark_data({"frame": 1.000}))
    b = write(tmp_path / "b.json", pytest_benchmark_data({"frame": 1.007}))
    assert cli.main(["compare", str(a), str(b), "--threshold", "0.005", "--fail-above", "0.005"]) == 1
    captured = capsys.readouterr()
    assert "threshold: 0.5%" in captured.out and "slower (beyond 0.5%): 1" in captured.out
    assert "FAILED: 1 benchmark(s) more than 0.5% slower" in captured.err


def test_a_number_too_long_for_python_is_named_as_not_valid_json(tmp_path):
    path = write(tmp_path / "run.json", '{"machine_info": {}, "benchmarks": [], "x": ' + "1" * 5000 + "}")
    with pytest.raises(history.HistoryError, match="not valid JSON") as error:
        history.read_run(path)
    assert str(path) in str(error.value)
