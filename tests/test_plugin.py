"""The suite's pytest plugin (lpperf/suite/plugin.py) and lpperf.suite.multigpu, tested on CPU.

Plugin tests run pytest inside pytest (pytester) on a throw-away project holding the real
conftest.py and pytest.ini (the plugin itself comes from the installed package). Benchmarks there use a fake clock that advances a fixed step per
reading, so a pedantic round takes exactly one step and every median is known in advance.
"""

import configparser
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pytest_benchmark.utils import get_machine_id

from lpperf.models import weights
from lpperf.reports import history
from lpperf.suite import multigpu, plugin as pytest_plugin
from lpperf.util.cores import core_shares, describe_cores
from lpperf.measure.environment import cpu_model

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
STEP_S = 2.0**-10  # the fake clock's step: exact in binary, so medians compare exactly
NO_CUDA_REASON = f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__})"
H100 = "NVIDIA H100 80GB HBM3"
FAKE_TIMER = "--benchmark-timer=fakeclock.tick"
GATE = ("--benchmark-compare", "--benchmark-compare-fail=median:10%")

FAKE_CLOCK = f"""
import itertools

_readings = itertools.count()


def tick():
    return next(_readings) * {STEP_S!r}
"""

BENCHMARK_TEST = """
def test_frame(benchmark):
    benchmark.pedantic(lambda: None, rounds=5, iterations=1)
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    """A project with the real conftest.py and pytest.ini, a fake clock module, and tests under tests/."""
    # In an xdist worker, pytest-benchmark would see this variable and switch itself off in sub-runs.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makeconftest(ROOT.joinpath("conftest.py").read_text())
    pytester.makefile(".ini", pytest=ROOT.joinpath("pytest.ini").read_text())
    pytester.makepyfile(fakeclock=FAKE_CLOCK)
    pytester.syspathinsert()
    pytester.mkdir("tests")
    return pytester


def add_test(suite, source, name="test_sub"):
    suite.path.joinpath("tests", f"{name}.py").write_text(textwrap.dedent(source))


CPU_CARD = cpu_model()  # a run without CUDA is filed under the CPU's model, as `lpperf bench` files it
CPU_SLUG = history.card_slug(CPU_CARD)


def card_folder(suite, slug=CPU_SLUG):
    return suite.path / ".benchmarks" / slug / get_machine_id()


def output(result):
    return "\n".join(result.outlines + result.errlines)


def write_scaled_baseline(saved, factor, name="0002_fabricated.json"):
    """A copy of a real saved run whose times are ``factor`` times the measured ones."""
    data = json.loads(saved.read_text())
    for bench in data["benchmarks"]:
        stats = bench["stats"]
        for key in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "ld15iqr", "hd15iqr", "total"):
            stats[key] *= factor
        stats["ops"] /= factor
    path = saved.with_name(name)
    path.write_text(json.dumps(data))
    return path


def minimal_saved_run(card):
    """A valid pytest-benchmark saved run, written by hand (no sub-run needed)."""
    stats = {"min": 1.0, "max": 1.0, "mean": 1.0, "stddev": 0.0, "median": 1.0, "iqr": 0.0, "q1": 1.0, "q3": 1.0}
    stats.update(outliers="0;0", rounds=5, iterations=1, ops=1.0)
    return {
        "machine_info": {"card": card, "weights": "synthetic(seed=0)"},
        "commit_info": {"id": "abc"},
        "benchmarks": [{"name": "test_frame", "fullname": "tests/test_sub.py::test_frame", "stats": stats}],
        "datetime": "2026-11-28T08:00:00+00:00",
        "version": "5.2.3",
    }


def checkpoint_folder(folder: Path) -> Path:
    """A folder holding the five official checkpoint names (empty files: the option checks names only)."""
    folder.mkdir(parents=True)
    for name in (*weights.OFFICIAL_FILES.values(), weights.RETARGETING_FILE):
        folder.joinpath(name).touch()
    return folder


# --- options: one table, ini defaults, command line wins ---------------------------------------------

THRESHOLDS_TEST = """
import dataclasses, json

def test_dump(lpperf_thresholds, lpperf_weights_dir):
    values = {field.name: getattr(lpperf_thresholds, field.name).bound
              for field in dataclasses.fields(lpperf_thresholds)}
    values["weights_dir"] = None if lpperf_weights_dir is None else str(lpperf_weights_dir)
    with open("settings.json", "w") as file:
        json.dump(values, file)
"""


def dumped_settings(suite):
    return json.loads(suite.path.joinpath("settings.json").read_text())


def test_thresholds_are_stated_once_in_the_plugin(suite):
    add_test(suite, THRESHOLDS_TEST)
    suite.runpytest().assert_outcomes(passed=1)
    defaults = {spec.name: spec.default for spec in pytest_plugin._OPTIONS}
    assert dumped_settings(suite) == {
        "min_speedup": float(defaults["min-speedup"]),
        "min_speedup_ahead": float(defaults["min-speedup-ahead"]),
        "memory_budget_mib": int(defaults["memory-budget-mib"]),
        "min_psnr_db": float(defaults["min-psnr"]),
        "max_level_diff": int(defaults["max-level-diff"]),
        "weights_dir": None,
    }
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    assert not [key for key in ini["pytest"] if key.startswith("lpperf_") and key != "lpperf_history"]


def test_the_space_form_of_a_folder_option_parses_outside_the_repository(suite, tmp_path):
    """The plugin is registered by its entry point before pytest parses the command line, so a folder
    after --lpperf-weights is not mistaken for a test path (pytest -p does the same as the entry point)."""
    weights = checkpoint_folder(tmp_path / "outside" / "checkpoints")
    add_test(suite, THRESHOLDS_TEST)
    suite.runpytest("-p", "lpperf.suite.plugin", "--lpperf-weights", str(weights)).assert_outcomes(passed=1)
    assert dumped_settings(suite)["weights_dir"] == str(weights)


def test_other_projects_are_left_alone(suite):
    """Without lpperf_history the plugin adds no header and leaves pytest-benchmark's storage as it is."""
    suite.path.joinpath("pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    add_test(suite, BENCHMARK_TEST)
    result = suite.runpytest(FAKE_TIMER, "--benchmark-autosave")
    result.assert_outcomes(passed=1)
    assert "lpperf:" not in output(result)
    assert list(suite.path.joinpath(".benchmarks").glob("*/0001_*.json"))


def test_the_header_names_this_run_s_card_and_clock_without_claiming_a_gpu(suite):
    add_test(suite, BENCHMARK_TEST)
    result = suite.runpytest()
    result.assert_outcomes(passed=1)
    header = [line for line in result.outlines if line.startswith("lpperf:")]
    assert f"lpperf: card {CPU_CARD} " in header[0]
    assert "benchmark clock perf_counter (no CUDA device: nothing to synchronise)" in header[1]
    assert "synchronize" not in "\n".join(header)


def write_ini(suite, **values):
    lines = ["[pytest]", "testpaths = tests", "addopts = --strict-markers -ra", "markers =", "    gpu: needs a GPU"]
    lines += [f"lpperf_{key} = {value}" for key, value in values.items()]
    suite.path.joinpath("pytest.ini").write_text("\n".join(lines) + "\n")


INI_VALUES = dict(history=".benchmarks", min_speedup=2.5, memory_budget_mib=1024, min_psnr=33.5, max_level_diff=3)


def test_ini_values_are_used_and_the_command_line_overrides_them(suite, tmp_path):
    write_ini(suite, **INI_VALUES)
    add_test(suite, THRESHOLDS_TEST)
    suite.runpytest().assert_outcomes(passed=1)
    assert dumped_settings(suite) == {
        "min_speedup": 2.5, "min_speedup_ahead": 1.55, "memory_budget_mib": 1024, "min_psnr_db": 33.5,
        "max_level_diff": 3, "weights_dir": None,
    }  # fmt: skip
    weights = checkpoint_folder(tmp_path / "checkpoints")
    suite.runpytest("--lpperf-min-speedup=4", "--lpperf-max-level-diff", "0", f"--lpperf-weights={weights}")
    assert dumped_settings(suite) == {
        "min_speedup": 4.0, "min_speedup_ahead": 1.55, "memory_budget_mib": 1024, "min_psnr_db": 33.5,
        "max_level_diff": 0, "weights_dir": str(weights),
    }  # fmt: skip


def test_every_option_is_both_a_flag_and_an_ini_key(suite):
    text = output(suite.runpytest("--help"))
    for name in [spec.name for spec in pytest_plugin._OPTIONS]:
        assert f"--lpperf-{name}" in text
        assert "lpperf_" + name.replace("-", "_") in text


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--lpperf-min-speedup=fast"], INI_VALUES, "--lpperf-min-speedup on the command line: expected a number > 0"),
        ([], {**INI_VALUES, "max_level_diff": 300}, "lpperf_max_level_diff in"),
        (["--lpperf-weights=/no/such/folder"], INI_VALUES, "'/no/such/folder' is not a directory"),
    ],
    ids=["not-a-number", "level-out-of-range", "no-weights-folder"],
)
def test_bad_settings_are_usage_errors(suite, args, ini, message):
    write_ini(suite, **ini)
    add_test(suite, THRESHOLDS_TEST)
    result = suite.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in output(result)
    assert "Traceback" not in output(result)


# --- GPU tests skip with the reason on CPU ----------------------------------------------------------

GPU_TESTS = """
import pytest

@pytest.mark.gpu
def test_marked():
    pass

def test_asks_for_the_card(cuda_device):
    pass

def test_plain():
    pass
"""


def test_gpu_tests_skip_with_the_reason_and_minus_m_gpu_exits_0(suite):
    add_test(suite, GPU_TESTS)
    result = suite.runpytest("-m", "gpu")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(skipped=2, deselected=1)
    assert output(result).count(NO_CUDA_REASON) == 2


def test_a_test_asking_for_cuda_device_counts_as_a_gpu_test(suite):
    add_test(suite, GPU_TESTS)
    suite.runpytest("-m", "not gpu").assert_outcomes(passed=1, deselected=2)


# --- the synchronising clock ------------------------------------------------------------------------


def test_sync_clock_synchronises_only_once_cuda_is_initialised(lpperf_sync_clock, monkeypatch):
    synchronised = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda index=None: synchronised.append(index))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    first = lpperf_sync_clock()
    assert synchronised == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    second = lpperf_sync_clock()
    assert synchronised == [0, 1]  # every visible card
    assert second >= first


@pytest.mark.gpu
def test_sync_clock_covers_the_queued_gpu_work(cuda_device, lpperf_sync_clock):
    matrix = torch.randn(4096, 4096, device=cuda_device)
    product = torch.empty_like(matrix)
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start = lpperf_sync_clock()
    start_event.record()
    for _ in range(50):
        torch.mm(matrix, matrix, out=product)
    end_event.record()
    host_s = lpperf_sync_clock() - start
    gpu_s = start_event.elapsed_time(end_event) / 1e3
    assert gpu_s > 0.005, "too little GPU work to tell a synchronised clock from an unsynchronised one"
    # The two readings bracket the two events, so the host interval holds all the GPU work.
    assert host_s >= gpu_s * 0.999
    assert host_s < gpu_s + 0.05


# --- per-card history, machine_info, the default clock ----------------------------------------------


def test_runs_are_saved_per_card_with_card_fields_and_the_sync_clock(suite, monkeypatch):
    add_test(suite, BENCHMARK_TEST)
    with monkeypatch.context() as fake_card:
        fake_card.setattr(torch.cuda, "is_available", lambda: True)
        fake_card.setattr(torch.cuda, "current_device", lambda: 0)
        fake_card.setattr(torch.cuda, "get_device_name", lambda index: H100)
        suite.runpytest("--benchmark-autosave").assert_outcomes(passed=1)
    [saved] = card_folder(suite, "nvidia-h100-80gb-hbm3").glob("0001_*.json")
    data = json.loads(saved.read_text())
    assert {key: data["machine_info"][key] for key in ("card", "cuda", "torch", "weights")} == {
        "card": H100, "cuda": torch.version.cuda, "torch": torch.__version__, "weights": "synthetic(seed=0)",
    }  # fmt: skip
    assert "driver" in data["machine_info"]
    assert data["benchmarks"][0]["options"]["timer"].endswith("synchronized_perf_counter")
    assert not (suite.path / ".benchmarks" / CPU_SLUG).exists()

    # The same project on another card (this CPU) finds no baseline: cards never compare.
    result = suite.runpytest(FAKE_TIMER, *GATE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"No benchmark baseline for card {CPU_CARD!r}" in output(result)


# pytest-benchmark warns, with the whole machine_info of both runs, before lpperf's hook refuses them.
@pytest.mark.filterwarnings("ignore:Benchmark machine_info is different:pytest_benchmark.logger.PytestBenchmarkWarning")
def test_an_explicit_storage_with_another_card_s_baseline_is_refused(suite):
    storage = suite.path / "shared"
    storage.joinpath(get_machine_id()).mkdir(parents=True)
    storage.joinpath(get_machine_id(), "0001_h100.json").write_text(json.dumps(minimal_saved_run(H100)))
    add_test(suite, BENCHMARK_TEST)
    result = suite.runpytest(FAKE_TIMER, f"--benchmark-storage={storage}", *GATE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"measured with card {H100!r}, this run has card {CPU_CARD!r}" in output(result)
    assert "Traceback" not in output(result)


@pytest.mark.filterwarnings("ignore:Benchmark machine_info is different:pytest_benchmark.logger.PytestBenchmarkWarning")
def test_a_baseline_saved_without_the_plugin_is_named_as_such(suite):
    add_test(suite, BENCHMARK_TEST)
    bare = minimal_saved_run(CPU_CARD)
    del bare["machine_info"]["card"]
    write_baseline(suite, bare)
    result = suite.runpytest(FAKE_TIMER, *GATE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "records no card (it was saved without lpperf's plugin" in output(result)
    assert "--benchmark-storage" not in output(result).split("records no card")[1].splitlines()[0]


def test_comparing_against_history_outside_the_current_directory_is_refused(suite, tmp_path):
    add_test(suite, BENCHMARK_TEST)
    result = suite.runpytest(FAKE_TIMER, f"--lpperf-history={tmp_path / 'elsewhere'}", *GATE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "outside the current directory" in output(result)


def write_baseline(suite, data, name="0001_baseline.json"):
    folder = card_folder(suite)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("extra, problem", [
    (("-n", "2"), "pytest-benchmark turns benchmarks off under xdist (-n)"),
    (("--benchmark-disable",), "--benchmark-disable leaves none to gate"),
    (("--benchmark-skip",), "--benchmark-skip leaves none to gate"),
], ids=["xdist", "disabled", "skipped"])
def test_a_gate_over_benchmarks_that_will_not_run_is_refused(suite, extra, problem):
    """pytest-benchmark switches benchmarks off under xdist and when told to; the gate then passed over nothing."""
    pytest.importorskip("xdist")
    add_test(suite, BENCHMARK_TEST)
    write_baseline(suite, minimal_saved_run(CPU_CARD))
    result = suite.runpytest(FAKE_TIMER, *GATE, *extra)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    assert problem in output(result) and "Traceback" not in output(result)


@pytest.mark.filterwarnings("ignore:Benchmark machine_info is different:pytest_benchmark.logger.PytestBenchmarkWarning")
@pytest.mark.parametrize("extra", [("--benchmark-disable", "--benchmark-enable"), ("--benchmark-skip",
                                                                                   "--benchmark-only")])
def test_flags_that_pytest_benchmark_overrides_do_not_stop_a_gate(suite, extra):
    add_test(suite, BENCHMARK_TEST)
    write_baseline(suite, minimal_saved_run(CPU_CARD))
    result = suite.runpytest(FAKE_TIMER, *GATE, *extra)
    assert result.ret == pytest.ExitCode.OK, output(result)


@pytest.mark.filterwarnings("ignore:Benchmark machine_info is different:pytest_benchmark.logger.PytestBenchmarkWarning")
def test_a_gate_that_compared_nothing_is_no_verdict(suite):
    add_test(suite, BENCHMARK_TEST)
    other = minimal_saved_run(CPU_CARD)
    other["benchmarks"][0]["fullname"] = "tests/test_sub.py::test_renamed"
    write_baseline(suite, other)
    result = suite.runpytest(FAKE_TIMER, *GATE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    assert "lpperf gate: no verdict" in output(result) and "nothing was compared" in output(result)
    write_baseline(suite, minimal_saved_run(CPU_CARD), "0002_same_names.json")  # the same benchmark: compared
    assert suite.runpytest(FAKE_TIMER, *GATE).ret == pytest.ExitCode.OK


def test_a_baseline_without_the_statistics_pytest_benchmark_shows_is_refused_before_the_run(suite):
    add_test(suite, BENCHMARK_TEST)
    data = minimal_saved_run(CPU_CARD)
    del data["benchmarks"][0]["stats"]["ops"], data["benchmarks"][0]["stats"]["outliers"]
    path = write_baseline(suite, data)
    result = suite.runpytest(FAKE_TIMER, *GATE)
    text = output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "Traceback" not in text
    assert f"{path}: 'tests/test_sub.py::test_frame' lacks stats outliers, ops" in text
    assert "1 passed" not in text  # refused before any test ran


def test_a_bench_report_among_the_saved_runs_is_refused(suite):
    add_test(suite, BENCHMARK_TEST)
    write_baseline(suite, minimal_saved_run(CPU_CARD))
    bench_report = {"kind": history.REPORT_KIND, "version": history.REPORT_VERSION, "commit": None,
                    "machine_info": {"card": CPU_CARD}, "datetime": "2026-11-28T09:00:00+00:00", "rows": [],
                    "benchmarks": []}
    report = write_baseline(suite, bench_report, "0002_report.json")
    result = suite.runpytest(FAKE_TIMER, *GATE)
    text = output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert f"{report} is a" in text and "not a pytest-benchmark run" in text


def test_history_that_is_a_file_and_weights_without_checkpoints_are_refused_at_the_start(suite, tmp_path):
    add_test(suite, BENCHMARK_TEST)
    taken = tmp_path / "histfile"
    taken.write_text("")
    result = suite.runpytest(f"--lpperf-history={taken}", "--benchmark-autosave")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "is a file, not a history folder" in output(result)
    empty = tmp_path / "weights"
    empty.mkdir()
    result = suite.runpytest(f"--lpperf-weights={empty}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "lacks 5 of the 5 official checkpoint files" in output(result) and "Traceback" not in output(result)


def test_an_empty_threshold_on_the_command_line_is_refused_not_the_default(suite):
    write_ini(suite, **INI_VALUES)
    add_test(suite, THRESHOLDS_TEST)
    result = suite.runpytest("--lpperf-min-speedup=")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--lpperf-min-speedup was given an empty value" in output(result)
    suite.runpytest("--lpperf-weights=").assert_outcomes(passed=1)  # an empty folder option is "off"
    assert dumped_settings(suite)["min_speedup"] == 2.5


def test_a_relative_history_folder_in_the_ini_file_is_the_ini_file_s(suite, monkeypatch):
    add_test(suite, BENCHMARK_TEST)
    monkeypatch.chdir(suite.path / "tests")
    suite.runpytest(FAKE_TIMER, "--benchmark-autosave", "-c", str(suite.path / "pytest.ini"),
                    "test_sub.py").assert_outcomes(passed=1)
    assert list(card_folder(suite).glob("0001_*.json"))
    assert not (suite.path / "tests" / ".benchmarks").exists()


# --- the gate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("baseline_factor", "passes"),
    [(0.8, False), (1.0, True), (1 / 1.05, True)],
    ids=["now-25pct-slower-fails", "equal-passes", "now-5pct-slower-passes"],
)
def test_the_gate_fails_only_beyond_the_threshold(suite, baseline_factor, passes):
    add_test(suite, BENCHMARK_TEST)
    suite.runpytest(FAKE_TIMER, "--benchmark-autosave").assert_outcomes(passed=1)
    [saved] = card_folder(suite).glob("0001_*.json")
    assert json.loads(saved.read_text())["benchmarks"][0]["stats"]["median"] == STEP_S
    fabricated = write_scaled_baseline(saved, baseline_factor)

    result = suite.runpytest(FAKE_TIMER, *GATE)
    text = output(result)
    assert f"Comparing against benchmarks from: {get_machine_id()}/{fabricated.name}" in text
    assert "Traceback" not in text
    if passes:
        assert result.ret == pytest.ExitCode.OK
        assert "Performance has regressed" not in text
    else:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        assert "Field 'median' has failed PercentageRegressionCheck: 25.000000000 > 10.000000000" in text
        assert "lpperf gate FAILED" in text


def test_no_baseline_is_a_clear_usage_error(suite):
    add_test(suite, BENCHMARK_TEST)
    result = suite.runpytest(FAKE_TIMER, *GATE)
    text = output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"No benchmark baseline for card {CPU_CARD!r}" in text
    assert str(Path(".benchmarks", CPU_SLUG, get_machine_id())) in text
    assert "pytest -m gpu --benchmark-autosave" in text
    assert "Traceback" not in text


@pytest.mark.filterwarnings("ignore:Can't compare:pytest_benchmark.logger.PytestBenchmarkWarning")
def test_no_baseline_without_a_gate_warns_and_runs(suite):
    add_test(suite, BENCHMARK_TEST)
    result = suite.runpytest(FAKE_TIMER, "--benchmark-compare")
    result.assert_outcomes(passed=1, warnings=1)
    assert f"No benchmark baseline for card {CPU_CARD!r}" in output(result)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (json.dumps(minimal_saved_run(CPU_CARD))[:100], "not valid JSON"),
        (json.dumps({"machine_info": {}, "benchmarks": [{"fullname": "t", "stats": {"median": 1.0}}]}), "stats.min"),
        (json.dumps({"results": []}), "not a pytest-benchmark run"),
    ],
    ids=["truncated", "stats-missing", "wrong-schema"],
)
def test_a_corrupt_baseline_is_a_clear_usage_error(suite, content, problem):
    folder = card_folder(suite)
    folder.mkdir(parents=True)
    folder.joinpath("0001_ok.json").write_text(json.dumps(minimal_saved_run(CPU_CARD)))
    folder.joinpath("0002_broken.json").write_text(content)  # the latest: the one --benchmark-compare picks
    add_test(suite, BENCHMARK_TEST)
    result = suite.runpytest(FAKE_TIMER, *GATE)
    text = output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "0002_broken.json" in text
    assert problem in text
    assert "Delete or replace the file" in text
    assert "Traceback" not in text


# --- lpperf.suite.multigpu --------------------------------------------------------------------------------

FAKE_PYTEST = """
import json, os, sys

args = dict(arg.split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
gpu = os.environ["CUDA_VISIBLE_DEVICES"]
with open(args["--benchmark-json"], "w") as file:
    json.dump({"machine_info": {"card": "fake card " + gpu}, "argv": sys.argv[1:],
               "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}, file)
failed = 1 if gpu == "1" else 0
with open(args["--junitxml"], "w") as file:
    file.write(f'<testsuites><testsuite tests="4" failures="{failed}" errors="0" skipped="1"/></testsuites>')
print("worker on", gpu)
sys.exit(failed)
"""


@pytest.fixture
def fake_pytest(tmp_path):
    script = tmp_path / "fake_pytest.py"
    script.write_text(FAKE_PYTEST)
    return (sys.executable, str(script))


def test_multigpu_gives_each_worker_its_own_card_and_files(tmp_path, fake_pytest):
    history_dir = tmp_path / "history"
    out = tmp_path / "out"
    results = multigpu.run_workers(["0", "2"], ["-m", "gpu"], out, history_dir, launcher=fake_pytest)
    assert [(r.gpu, r.exit_code, r.card, r.passed, r.failed, r.skipped) for r in results] == [
        ("0", 0, "fake card 0", 3, 0, 1),
        ("2", 0, "fake card 2", 3, 0, 1),
    ]
    for gpu in ("0", "2"):
        folder = out / f"gpu{gpu}"
        argv = json.loads(folder.joinpath("benchmark.json").read_text())["argv"]
        assert argv[:2] == ["-m", "gpu"]
        # each card keeps one history slot of its own, the same on every run (autosave, then compare)
        assert f"--lpperf-history={history_dir / f'gpu{gpu}'}" in argv
        assert folder.joinpath("pytest.log").read_text() == f"worker on {gpu}\n"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity (Linux) and at least 2 cores")
@pytest.mark.parametrize("pin_cores", [True, False])
def test_multigpu_keeps_each_worker_on_its_own_cores(tmp_path, fake_pytest, pin_cores):
    results = multigpu.run_workers(["0", "2"], [], tmp_path / "out", tmp_path / "history", launcher=fake_pytest,
                                   pin_cores=pin_cores)
    seen = [json.loads((tmp_path / "out" / f"gpu{gpu}" / "benchmark.json").read_text())["cores"] for gpu in ("0", "2")]
    everything = sorted(os.sched_getaffinity(0))
    if pin_cores:
        assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == everything
        assert [result.cores for result in results] == [describe_cores(cores) for cores in seen]
    else:
        assert seen == [everything, everything] and [result.cores for result in results] == [None, None]


def test_core_shares_split_the_cores_evenly_and_refuse_too_few():
    shares = core_shares(1)
    if shares is None:
        pytest.skip("no CPU affinity on this platform")
    assert shares == [sorted(os.sched_getaffinity(0))]
    assert core_shares(len(shares[0]) + 1) is None
    assert describe_cores([4, 5, 6]) == "4-6" and describe_cores([1, 3]) == "1,3"
    assert describe_cores([2]) == "2" and describe_cores(None) is None


MULTIGPU_SUITE_TEST = """
def test_frame(benchmark):
    benchmark.pedantic(lambda: None, rounds=5, iterations=1)
"""


def test_multigpu_autosave_then_compare_finds_each_card_s_own_baseline(suite, tmp_path, monkeypatch):
    """The flow that broke: autosave on N cards, then compare with a gate on N cards, OUT outside the checkout."""
    add_test(suite, MULTIGPU_SUITE_TEST)
    monkeypatch.chdir(suite.path)
    launcher = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider")
    first = multigpu.run_workers(["0", "1"], [FAKE_TIMER, "--benchmark-autosave"], tmp_path / "out1", launcher=launcher)
    assert [r.exit_code for r in first] == [0, 0], [Path(r.folder, "pytest.log").read_text() for r in first]
    second = multigpu.run_workers(["0", "1"], [FAKE_TIMER, *GATE], tmp_path / "out2", launcher=launcher)
    logs = [Path(r.folder, "pytest.log").read_text() for r in second]
    assert [r.exit_code for r in second] == [0, 0], logs
    assert all("Comparing against benchmarks from" in log for log in logs), logs
    assert sorted(p.parent.parent.parent.name for p in suite.path.joinpath(".benchmarks").rglob("0001_*.json")) == [
        "gpu0", "gpu1"]


def test_multigpu_main_propagates_a_failure_and_keeps_every_result(tmp_path, fake_pytest, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")  # three "visible cards" on this CPU machine
    out = tmp_path / "out"
    exit_code = multigpu.main(["--out", str(out), "--history", str(tmp_path / "none"), "--", "-m", "gpu"], fake_pytest)
    assert exit_code == 1
    printed = capsys.readouterr().out
    assert "FAILED on gpu 1" in printed
    summary = json.loads(out.joinpath("summary.json").read_text())
    assert [(worker["gpu"], worker["exit_code"], worker["failed"]) for worker in summary] == [
        ("0", 0, 0),
        ("1", 1, 1),
        ("3", 0, 0),
    ]
    cards = {json.loads(out.joinpath(f"gpu{gpu}", "benchmark.json").read_text())["machine_info"]["card"] for gpu in "013"}
    assert cards == {"fake card 0", "fake card 1", "fake card 3"}


def test_multigpu_all_passing_exits_0_and_reused_out_is_refused(tmp_path, fake_pytest, capsys):
    out = tmp_path / "out"
    assert multigpu.main(["--out", str(out), "--gpus", "0,2", "-m", "gpu"], fake_pytest) == 0
    assert "all 2 workers passed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="never overwritten"):
        multigpu.run_workers(["0"], [], out, launcher=fake_pytest)


@pytest.mark.parametrize(
    "args",
    [["--benchmark-json=x.json"], ["--benchmark-storage", "s"], ["-n", "auto"], ["-n4"], ["--numprocesses=2"]],
)
def test_multigpu_refuses_shared_files_and_xdist(args):
    with pytest.raises(ValueError):
        multigpu.check_pytest_args(["-m", "gpu", *args])


def test_multigpu_refuses_a_card_twice(tmp_path, fake_pytest):
    with pytest.raises(ValueError, match="only one worker"):
        multigpu.run_workers(["0", "0"], [], tmp_path / "out", launcher=fake_pytest)


def test_the_suite_s_parity_defaults_are_the_fp16_tolerance():
    """One set of fp16 parity limits: the plugin's defaults are lpperf.measure.parity's fp16 tolerance."""
    from lpperf.measure import parity

    defaults = {spec.name: spec.default for spec in pytest_plugin._OPTIONS}
    fp16 = parity.Tolerance.for_precision("fp16")
    assert float(defaults["min-psnr"]) == fp16.min_psnr_db
    assert int(defaults["max-level-diff"]) == fp16.max_level_diff


def test_a_limit_checks_its_side_refuses_nan_and_says_where_it_was_set():
    least = pytest_plugin.Limit("PSNR against the fp32 reference", 40.0, "dB", True, "--lpperf-min-psnr on the command line")
    most = pytest_plugin.Limit("GPU memory", 4096, "MiB", False, "the default of --lpperf-memory-budget-mib")
    least.check(40.0, "fastest")
    most.check(4096, "fastest")
    assert not least.holds(float("nan")) and not most.holds(float("nan"))
    with pytest.raises(AssertionError, match=r"^fastest: PSNR against the fp32 reference 39.5 dB, below the least "
                                             r"allowed 40 dB \(--lpperf-min-psnr on the command line\); seed 1$"):
        least.check(39.5, "fastest", "seed 1")
    with pytest.raises(AssertionError, match=r"GPU memory 5000 MiB, above the most allowed 4096 MiB"):
        most.check(5000, "fastest")
