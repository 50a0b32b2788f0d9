"""The lpperf command end to end on the CPU, at small sizes: files written and every error path.

Networks: smaller than lpperf.models.TINY (tests/test_frame.py's small_networks), so a frame costs
about 0.3 s on 2 cores; the CLI's plumbing, not the networks, is under test here.
"""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lpperf import cli
from lpperf.animation import video
from lpperf.measure import memory, parity, timing
from lpperf.models import sample, weights
from lpperf.reports import bench, charts, history
from helpers import small_networks, write_media

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every command runs in a fresh folder: `lpperf bench` saves into ./.benchmarks by default."""
    monkeypatch.chdir(tmp_path)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file starts like a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND", f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


def error_line(capsys) -> str:
    """The single stderr line of a failed command (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lpperf")
    return lines[0]


def last_error_line(capsys) -> str:
    """The last stderr line of a command that failed after printing progress."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("lpperf: ")
    return line


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".partial")


# ------------------------------------------------------------------------------------------------ bench

def test_bench_cpu_end_to_end(tmp_path, capsys, small_nets):
    out = tmp_path / "report"
    code = cli.main(["bench", "--device", "cpu", "--recipes", "fp32-eager", "--repeats", "2", "--warmup", "0",
                     "--parity-frames", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "No GPU: running on the CPU" in captured.err and "Networks: TINY networks" in captured.err
    assert "meaningless" in captured.err
    assert "batch 1 on cpu: TINY networks" in captured.out and "fp32-eager" in captured.out

    report = json.loads((out / "report.json").read_text())
    assert {"kind", "version", "environment", "config", "rows", "benchmarks", "charts"} <= set(report)
    assert report["environment"]["device"] == "cpu"
    assert report["config"]["batches"] == [1]
    [row] = report["rows"]
    assert (row["name"], row["batch"], row["error"]) == ("fp32-eager", 1, "")
    assert row["speedup"] == 1.0  # the baseline row
    assert row["timing"]["stats"]["count"] == 2  # --repeats 2
    assert set(row["stage_ms"]) == {"F", "M", "S", "W", "G"} and row["stage_clock"].startswith("host time")
    assert row["ms_per_frame"] == pytest.approx(row["timing"]["stats"]["median_s"] * 1e3)
    assert row["parity"]["frame"]["max_level_diff"] == 0  # fp32 eager vs the fp32 reference on the CPU
    # The report is also a history run that compare/history read.
    run = history.read_run(out / "report.json")
    assert run.card == report["environment"]["device_name"]
    assert [r.name for r in run.results] == ["fp32-eager [batch 1]"]
    assert run.results[0].median_s == pytest.approx(row["ms_per_frame"] / 1e3)
    assert history.read_run(next((tmp_path / ".benchmarks").rglob("bench-*.json"))).results == run.results

    if charts.unavailable_reason():
        assert report["charts"]["written"] == []
    else:
        assert sorted(report["charts"]["written"]) == ["latency.png", "latency_per_stage.png", "speedup.png"]
        assert "memory" in report["charts"]["skipped"]  # no NVML on the CPU
        for name in report["charts"]["written"]:
            width, height = png_size(out / name)
            assert width > 100 and height > 50
    assert leftovers(out) == []


def test_bench_rows_per_batch(tmp_path, capsys, monkeypatch, small_nets):
    """Several --batch values: every row runs per batch size, speedups within each batch."""
    seen = []

    def fake_run(rows, nets, device, config, progress):
        seen.append((device.type, config.batch, [row.name for row in rows]))
        return [fake_result(row.name, config.batch, ms, 20.0 / ms)
                for row, ms in zip(rows, [20.0 / config.batch, 5.0 / config.batch])]

    monkeypatch.setattr(bench, "run", fake_run)
    assert cli.main(["bench", "--device", "cpu", "--recipes", "fast", "--batch", "1", "4", "--out", str(tmp_path)]) == 0
    assert seen == [("cpu", 1, ["fp32-eager", "fast"]), ("cpu", 4, ["fp32-eager", "fast"])]  # baseline added first
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(r["name"], r["batch"]) for r in report["rows"]] == [
        ("fp32-eager", 1), ("fast", 1), ("fp32-eager", 4), ("fast", 4)]
    assert [b["name"] for b in report["benchmarks"]] == [
        "fp32-eager [batch 1]", "fast [batch 1]", "fp32-eager [batch 4]", "fast [batch 4]"]
    assert [b["median_s"] for b in report["benchmarks"]] == pytest.approx([0.020, 0.005, 0.005, 0.00125])
    out = capsys.readouterr().out
    assert "batch 1 on cpu" in out and "batch 4 on cpu" in out


def fake_timing(ms: float, batch: int, converged: bool = True) -> timing.TimingResult:
    samples = [ms * batch / 1e3] * 5
    return timing.TimingResult(
        device="cpu", clock=timing.CLOCK_HOST, stats=timing.TimingStats.from_samples(samples), samples_s=samples,
        converged=converged, stop_reason="converged" if converged else "cap", first_call_s=0.1, warmup_s=0.0,
        warmup_calls=0, measurement_wall_s=0.1, rule=timing.StoppingRule(), clocks_before=None,
        clocks_after=None, clocks_unavailable_reason="test")


def fake_memory(mib: float) -> memory.MemoryReport:
    return memory.MemoryReport(method=memory.METHOD_PROCESS, device_index=0, process_peak_bytes=int(mib * 2**20),
                               samples=3, sample_interval_s=0.005, baseline_device_used_bytes=0,
                               device_total_bytes=2**35, torch_max_allocated_bytes=None,
                               torch_max_reserved_bytes=None, context_bytes=None)


def fake_result(name: str, batch: int, ms: float, speedup: float | None, memory_mib: float | None = None,
                psnr: float | None = None, stage_ms: dict | None = None, converged: bool = True,
                recipe: str = "") -> bench.RowResult:
    frames = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = (frames + 10 ** (-psnr / 20) * torch.ones_like(frames)).clamp(0, 1) if psnr else frames
    return bench.RowResult(
        name=name, recipe=recipe or name, batch=batch, precision="fp16", applied=[], skipped={},
        timing=fake_timing(ms, batch, converged), ms_per_frame=ms, p90_ms_per_frame=ms * 1.1,
        frames_per_second=1e3 / ms, converged=converged, tflops=None, compile_seconds=None,
        memory=None if memory_mib is None else fake_memory(memory_mib),
        memory_unavailable="" if memory_mib else "no NVML",
        parity=None if psnr is None else parity.compare({}, {}, noisy, frames), parity_failures=[],
        stage_ms=stage_ms or {}, stage_clock="host time of each stage run alone (eager call)" if stage_ms else "",
        speedup=speedup)


def test_bench_charts_skipped_without_matplotlib(tmp_path, capsys, monkeypatch, small_nets):
    monkeypatch.setattr(charts, "unavailable_reason", lambda: "matplotlib is not installed (test)")
    monkeypatch.setattr(bench, "run", lambda rows, nets, device, config, progress: [
        fake_result(row.name, config.batch, 10.0, 1.0) for row in rows])
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "charts skipped: matplotlib is not installed (test)" in capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["charts"] == {"written": [], "skipped": {"all": "matplotlib is not installed (test)"}}
    assert [row["name"] for row in report["rows"]] == list(bench.CPU_DEFAULT_RECIPES)
    assert not list(tmp_path.glob("*.png"))


def test_bench_charts_draw_memory_and_parity(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [fake_result("fp32 eager", 1, 20.0, 1.0, memory_mib=900, psnr=60.0),
            fake_result("fast", 1, 5.0, 4.0, memory_mib=500, psnr=45.0)]
    written, skipped = charts.bench_charts(rows, tmp_path, "test card")
    assert sorted(p.name for p in written) == ["latency.png", "memory.png", "parity.png", "speedup.png"]
    assert set(skipped) == {"latency_per_stage"}
    rows[1].stage_ms = {"M": 1.0, "S": 0.1, "W": 2.0, "G": 1.9}
    rows[1].stage_clock = "GPU time of each stage run alone"
    written, skipped = charts.bench_charts(rows, tmp_path, "test card")
    assert "latency_per_stage.png" in {p.name for p in written} and not skipped
    for path in written:
        png_size(path)


def chart_texts(figure) -> str:
    texts = [figure._suptitle.get_text() if figure._suptitle else ""]
    for axes in figure.axes:
        texts += [axes.get_title(), axes.get_xlabel()] + [label.get_text() for label in axes.get_yticklabels()]
    return "\n".join(texts)


def test_unconverged_rows_are_marked_in_the_table_and_hatched_in_the_charts(tmp_path, drawn):
    """A CPU run of 5 identical commands gave headline speedups from 0.95x to 2.24x; the noisy
    rows must say so wherever their numbers appear."""
    rows = [fake_result("fp32-eager", 1, 20.0, 1.0), fake_result("fast", 1, 9.0, 2.24, converged=False)]
    table = bench.format_table(rows, title="batch 1 on cpu")
    fast_line = next(line for line in table.splitlines() if line.startswith("fast"))
    assert "9.00~" in fast_line and "2.24x~" in fast_line
    assert "~" not in next(line for line in table.splitlines() if line.startswith("fp32-eager"))
    assert "~ not converged" in table and "noise" in table
    charts.bench_charts(rows, tmp_path, "test card")
    latency = next(figure for figure in drawn if "Latency per frame" in chart_texts(figure))
    bars = latency.axes[0].patches
    assert [bar.get_hatch() for bar in bars] == [None, "//"]
    assert "hatched: not converged" in chart_texts(latency)


def test_cpu_run_says_it_measured_the_tiny_networks(tmp_path, capsys, monkeypatch, small_nets, drawn):
    monkeypatch.setattr(bench, "run", lambda rows, nets, device, config, progress: [
        fake_result(row.name, config.batch, 10.0, 1.0, stage_ms={"M": 1.0}) for row in rows])
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    table_title = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("batch 1 on cpu"))
    assert "TINY networks" in table_title
    assert len(drawn) == 3 and all("TINY networks" in chart_texts(figure) for figure in drawn)


def test_stage_chart_says_what_it_measures(tmp_path, drawn):
    rows = [fake_result("fast", 1, 5.97, 1.0, stage_ms={"F": 1.3, "M": 4.2, "S": 0.2, "W": 4.5, "G": 7.4})]
    rows[0].stage_clock = "GPU time of each stage run alone (CUDA-graph replay, eager kernels)"
    charts.bench_charts(rows, tmp_path, "H200")
    [stages] = [figure for figure in drawn if figure._suptitle is not None]
    text = chart_texts(stages)
    assert "GPU time of each stage run alone" in text and "Not comparable with the frame latency" in text
    assert len(stages.axes) == 5 and "F (once per source)" in text  # one panel per stage: no stacked total


def test_bench_cuda_without_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU; the no-GPU error cannot happen")
    assert cli.main(["bench", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "asked for a CUDA GPU, but torch sees none" in error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_bench_unknown_recipe(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["bench", "--device", "cpu", "--recipes", "warp-speed", "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "unknown recipe 'warp-speed'" in line and "fp32-eager" in line
    assert not out.exists()


def test_bench_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["bench", "--device", "cpu", "--out", str(blocker / "report")]) == 2
    assert "cannot write to folder" in error_line(capsys)


@pytest.mark.parametrize("arguments, message", [
    (["--parity-frames", "0"], "argument --parity-frames: must be a whole number >= 1, got '0'"),
    (["--repeats", "0"], "argument --repeats: must be a whole number >= 1, got '0'"),
    (["--warmup", "-1"], "argument --warmup: must be a whole number >= 0, got '-1'"),
    (["--batch", "1", "0"], "argument --batch: must be a whole number >= 1, got '0'"),
    (["--device", "tpu"], "unsupported device 'tpu'; lpperf runs on auto, cpu, cuda or cuda:N"),
])
def test_bench_arguments_are_checked_before_anything_loads(tmp_path, capsys, no_loading, arguments, message):
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r"), *arguments]) == 2
    line = error_line(capsys)
    assert message in line and "min_repeats" not in line and "torch.cat" not in line
    assert not (tmp_path / "r").exists()


def test_bench_with_official_weights_on_the_cpu_says_so(tmp_path, capsys, monkeypatch):
    """--weights DIR on the CPU runs the full-size official checkpoints: the banner must not claim
    TINY networks and meaningless images."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in (*weights.OFFICIAL_FILES.values(), weights.RETARGETING_FILE):  # present; their reading is faked
        (folder / name).touch()
    monkeypatch.setattr(weights, "load_official", lambda directory, device: small_networks())
    monkeypatch.setattr(bench, "run", lambda rows, nets, device, config, progress: [
        fake_result(row.name, config.batch, 10.0, 1.0) for row in rows])
    assert cli.main(["bench", "--device", "cpu", "--weights", str(folder), "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert f"Networks: official checkpoints from {folder}, official sizes" in captured.err
    assert "seconds per frame on a CPU" in captured.err
    assert "TINY" not in captured.err + captured.out and "meaningless" not in captured.err


def test_out_of_memory_is_one_line_saying_what_to_do(tmp_path, capsys, monkeypatch, small_nets):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                          "capacity of 79.19 GiB of which 1.2 GiB is free.")

    monkeypatch.setattr(bench, "run", out_of_memory)
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in line and "ran out of memory: give a smaller --batch" in line
    assert "Tried to allocate 2.00 GiB" in line and "smaller --batch" in line and "nvidia-smi" in line


def test_bench_interrupted_leaves_no_report(tmp_path, capsys, monkeypatch, small_nets):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path)]) == 130
    assert "interrupted" in last_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_usage_error_is_one_line(capsys):
    assert cli.main(["bench", "--batch", "x"]) == 2
    assert "argument --batch: must be a whole number >= 1, got 'x'" in error_line(capsys)


# ------------------------------------------------------------------------------------- compare, history

def pytest_benchmark_run(path: Path, card: str, medians: dict, when: str) -> Path:
    """A minimal pytest-benchmark JSON file (the fields lpperf.reports.history reads)."""
    def stats(median):
        return {"min": median, "max": median, "mean": median, "stddev": 0.0, "median": median, "iqr": 0.0,
                "rounds": 5, "iterations": 1}

    data = {"machine_info": {"card": card}, "commit_info": {"id": "c" + when}, "datetime": when,
            "benchmarks": [{"fullname": name, "stats": stats(median)} for name, median in medians.items()]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_compare_reports_faster_and_slower(tmp_path, capsys):
    a = pytest_benchmark_run(tmp_path / "a.json", "H100", {"frame": 0.010, "source": 0.020, "gone": 1.0}, "1")
    b = pytest_benchmark_run(tmp_path / "b.json", "H100", {"frame": 0.007, "source": 0.025, "new": 1.0}, "2")
    assert cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    # 10 ms -> 7 ms: 1/0.7 = 1.43x faster, 30% less time; 20 ms -> 25 ms: 1.25x slower, 25% more time
    assert "frame: 10.000 ms -> 7.000 ms, 1.43x faster (30.0% less time)" in out
    assert "source: 20.000 ms -> 25.000 ms, 1.25x slower (25.0% more time)" in out
    assert "only in baseline: gone" in out and "only in current:  new" in out


def test_compare_fails_past_the_threshold_only_when_asked(tmp_path, capsys):
    """A 50 % regression used to print and exit 0; with --fail-above it is a gate."""
    a = pytest_benchmark_run(tmp_path / "a.json", "H100", {"frame": 0.010, "source": 0.020}, "1")
    b = pytest_benchmark_run(tmp_path / "b.json", "H100", {"frame": 0.015, "source": 0.021}, "2")
    assert cli.main(["compare", str(a), str(b)]) == 0  # reporting only
    assert "frame: 10.000 ms -> 15.000 ms, 1.50x slower (50.0% more time)" in capsys.readouterr().out
    assert cli.main(["compare", str(a), str(b), "--fail-above", "0.10"]) == 1
    err = capsys.readouterr().err
    assert "FAILED: 1 benchmark(s) more than 10% slower" in err and "frame" in err and "source" not in err
    assert cli.main(["compare", str(a), str(b), "--fail-above", "0.6"]) == 0
    assert "passed: no benchmark more than 60% slower" in capsys.readouterr().out
    assert cli.main(["compare", str(a), str(b), "--fail-above", "ten"]) == 2
    assert "argument --fail-above: must be a number (a fraction: 0.10 = 10%) >= 0, got 'ten'" in error_line(capsys)


def test_compare_help_documents_the_gate(capsys):
    assert cli.main(["compare", "--help"]) == 0
    assert "--fail-above FRACTION" in capsys.readouterr().out


def test_compare_other_card_needs_any_card(tmp_path, capsys):
    a = pytest_benchmark_run(tmp_path / "a.json", "H100", {"frame": 0.010}, "1")
    b = pytest_benchmark_run(tmp_path / "b.json", "H200", {"frame": 0.008}, "2")
    assert cli.main(["compare", str(a), str(b)]) == 2
    assert "not comparable" in error_line(capsys)
    assert cli.main(["compare", str(a), str(b), "--any-card"]) == 0
    captured = capsys.readouterr()
    assert "comparing different cards" in captured.err
    assert "frame: 10.000 ms -> 8.000 ms, 1.25x faster (20.0% less time)" in captured.out


def test_compare_bad_files(tmp_path, capsys):
    good = pytest_benchmark_run(tmp_path / "a.json", "H100", {"frame": 0.010}, "1")
    broken = tmp_path / "broken.json"
    broken.write_text('{"machine_info": {}, "benchm')
    assert cli.main(["compare", str(good), str(broken)]) == 2
    assert "not valid JSON" in error_line(capsys)
    assert cli.main(["compare", str(good), str(tmp_path / "missing.json")]) == 2
    assert "no such benchmark file" in error_line(capsys)


def test_history_trends_per_card(tmp_path, capsys):
    store = tmp_path / ".benchmarks"
    for index, median in enumerate([0.010, 0.011, 0.015]):
        pytest_benchmark_run(store / "h100" / f"000{index}_run.json", "H100", {"frame": median}, f"2026-0{index + 1}")
    pytest_benchmark_run(store / "h200" / "0000_run.json", "H200", {"frame": 0.005}, "2026-01")
    charts_dir = tmp_path / "charts"
    assert cli.main(["history", str(store), "--out", str(charts_dir)]) == 0
    out = capsys.readouterr().out
    assert "== H100: 3 run(s)" in out and "== H200: 1 run(s)" in out
    # latest vs previous on the H100: 11 ms -> 15 ms, the H200 run never enters it
    assert "frame: 11.000 ms -> 15.000 ms, 1.36x slower (36.4% more time)" in out
    if not charts.unavailable_reason():
        assert [p.name for p in charts_dir.iterdir()] == ["trend-frame.png"]
        png_size(charts_dir / "trend-frame.png")


def test_history_draws_one_chart_per_benchmark_where_names_share_a_file_name(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    prefix = "tests/gpu/test_frames.py::test_frame_latency_of_each_recipe_at_each_batch_size_on_this_card"
    names = [f"{prefix}[fast-batch1]", f"{prefix}[Fast-Batch1]", f"{prefix}[fastest-batch1]"]  # one slug: cut at 80
    assert len({charts.slug(name) for name in names}) == 1
    store = tmp_path / ".benchmarks"
    pytest_benchmark_run(store / "0000_run.json", "H100", dict.fromkeys(names, 0.01), "2026-01")
    charts_dir = tmp_path / "charts"
    assert cli.main(["history", str(store), "--out", str(charts_dir)]) == 0
    assert "3 trend chart(s)" in capsys.readouterr().out
    assert len(list(charts_dir.glob("trend-*.png"))) == 3
    assert charts.distinct_slugs(["frame", "other"]) == {"frame": "frame", "other": "other"}  # unshared: plain


def test_history_reads_bench_reports(tmp_path, capsys, monkeypatch):
    """`lpperf history` (default folder) after two `lpperf bench` runs (default history) shows both and
    compares them; it used to say to run `lpperf bench` first, which wrote where it never looked."""
    timings = iter([10.0, 12.0])

    def fake_run(rows, nets, device, config, progress):
        ms = next(timings)
        return [fake_result(row.name, config.batch, ms, 1.0) for row in rows]

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(weights, "load_networks", lambda weights_dir, device: weights.Networks({}, "test", True, False))
    monkeypatch.setattr(charts, "unavailable_reason", lambda: "not needed here")
    for out in ("first", "second"):
        assert cli.main(["bench", "--device", "cpu", "--recipes", "fp32-eager", "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["history"]) == 0
    out = capsys.readouterr().out
    assert "2 run(s)" in out and "latest lpperf-bench-report run vs the one before" in out
    assert "fp32-eager [batch 1]: 10.000 ms -> 12.000 ms, 1.20x slower" in out


def test_history_flags_creep_and_marks_change_points(tmp_path, capsys, drawn):
    store = tmp_path / "history"
    medians = [0.010] * 4 + [0.0125] * 4  # each step under a 10 % gate would not show; the level moved 25 %
    for index, median in enumerate(medians):
        pytest_benchmark_run(store / "h100" / f"000{index}_run.json", "H100", {"frame": median}, f"2026-0{index + 1}")
    assert cli.main(["history", str(store), "--out", str(tmp_path / "charts")]) == 0  # reports only
    assert cli.main(["history", str(store), "--out", str(tmp_path / "charts"), "--creep-limit", "0.05",
                     "--best-of", "8"]) == 1
    captured = capsys.readouterr()
    assert "creep: latest pytest-benchmark run vs the best of the 8 before it" in captured.out
    assert "FAILED: 1 benchmark(s) crept more than 5% above the best of the 8 runs before or the pinned run: " \
           "H100: frame" in captured.err
    dashed = [line for line in drawn[-1].axes[0].lines if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in dashed] == [[3.5, 3.5]]  # between runs 3 and 4
    # a pinned release run: the latest run against it too (here it is as fast as the latest: no creep)
    pinned = tmp_path / "release.json"
    pytest_benchmark_run(pinned, "H100", {"frame": 0.0125}, "2026-01")
    assert cli.main(["history", str(store), "--out", str(tmp_path / "charts"), "--creep-limit", "0.05",
                     "--best-of", "1", "--pinned", str(pinned)]) == 0
    assert "and vs the pinned run" in capsys.readouterr().out


def test_history_missing_folder(tmp_path, capsys):
    assert cli.main(["history", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert "no such history folder" in error_line(capsys)


# ---------------------------------------------------------------------------------------------- animate

@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 256x256 source PNG, a 3-frame driving MP4 and the same frames as a folder of PNGs (made once)."""
    av = pytest.importorskip("av", reason="animate needs the video extra (PyAV)")
    Image = pytest.importorskip("PIL.Image", reason="animate needs the video extra (Pillow)")
    return {**write_media(tmp_path_factory.mktemp("media"), 3), "av": av, "Image": Image}


def read_back(av, path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return len(decoded), decoded[0].shape[:2]


def test_animate_end_to_end(tmp_path, capsys, media, small_nets):
    out = tmp_path / "out" / "animated.mp4"
    out.parent.mkdir()
    code = cli.main(["animate", "--source", str(media["source"]), "--driving", str(media["driving"]),
                     "--weights", "synthetic", "--device", "cpu", "--batch", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "meaningless" in captured.err
    assert "3 frames" in captured.out and "frames/s" in captured.out
    assert read_back(media["av"], out) == (3, (512, 512))
    assert leftovers(out.parent) == []


def test_driving_folder_and_video_read_back(media):
    expected = sample.driving_clip(3)
    from_folder = torch.cat(list(video.DrivingSource(media["folder"]).frames()))
    assert from_folder.shape == (3, 3, 256, 256)
    assert (from_folder - expected).abs().max() <= 0.5 / 255 + 1e-6  # PNG keeps 8-bit levels exactly
    from_video = torch.cat(list(video.DrivingSource(media["driving"]).frames()))
    assert from_video.shape == (3, 3, 256, 256)
    assert (from_video - expected).abs().mean() < 0.02  # H.264 at crf 18: close, not exact


def animate_args(media, tmp_path, **changes) -> list[str]:
    options = {"--source": str(media["source"]), "--driving": str(media["driving"]), "--weights": "synthetic",
               "--device": "cpu", "--out": str(tmp_path / "out.mp4"), **changes}
    return ["animate", *[item for pair in options.items() for item in pair]]


def test_animate_source_wrong_size(tmp_path, capsys, media):
    wrong = tmp_path / "wide.png"
    media["Image"].new("RGB", (300, 200)).save(wrong)
    assert cli.main(animate_args(media, tmp_path, **{"--source": str(wrong)})) == 2
    line = error_line(capsys)
    assert "is 300x200 pixels, expected 256x256" in line and "pre-cropped" in line
    assert not (tmp_path / "out.mp4").exists()


def test_animate_driving_wrong_size_leaves_no_video(tmp_path, capsys, media, small_nets):
    wrong = tmp_path / "wrong.mp4"
    with video.VideoWriter(wrong, 25) as writer:
        writer.write(np.zeros((128, 128, 3), np.uint8))
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(wrong)})) == 2
    assert "frame 0 of driving video" in last_error_line(capsys)
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("option, value, message", [
    ("--source", "garbage.png", "cannot read image"),
    ("--source", "missing.png", "does not exist"),
    ("--driving", "garbage.mp4", "cannot read driving video"),
    ("--driving", "missing.mp4", "does not exist"),
    ("--weights", "no-such-weights", "weights folder"),
    ("--recipe", "warp-speed", "unknown recipe 'warp-speed'"),
    ("--out", "no-such-folder/out.mp4", "output folder"),
    ("--out", "out.avi", "must end in .mp4"),
    ("--device", "tpu", "unsupported device 'tpu'"),
])
def test_animate_bad_input(tmp_path, capsys, media, option, value, message):
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    (tmp_path / "garbage.mp4").write_bytes(b"not a video")
    value = value if option in ("--recipe", "--device") else str(tmp_path / value)
    assert cli.main(animate_args(media, tmp_path, **{option: value})) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "out.mp4").exists()


def test_animate_interrupted_removes_partial_video(tmp_path, capsys, media, monkeypatch, small_nets):
    real_frames = video.DrivingSource.frames

    def interrupted_after_one(self):
        for number, frame in enumerate(real_frames(self)):
            if number == 1:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(video.DrivingSource, "frames", interrupted_after_one)
    assert cli.main(animate_args(media, tmp_path)) == 130
    assert "interrupted" in last_error_line(capsys)
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []

