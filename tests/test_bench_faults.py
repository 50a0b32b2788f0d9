"""Faults a user can hit in `lpperf bench`, its charts and report folder, and `lpperf profile`: every
argument checked before anything loads, a report folder that is all-new or all-old, unsettled marks
carried into every ratio, charts whose text fits and reads plainly."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch

from lpperf import cli
from lpperf.measure import timing
from lpperf.models import weights
from lpperf.reports import bench, charts, history, profile
from lpperf.util import files

from helpers import TWO_SAMPLES, row_result, small_networks

LONG_TITLE = ("AMD EPYC, torch 2.13.0+cpu, TINY networks (lpperf.models.TINY: ~1/35 of the official FLOPs), "
              "synthetic weights (seeded default init)")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every command runs in a fresh folder: `lpperf bench` saves into ./.benchmarks by default."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_bench(monkeypatch):
    """`lpperf bench` with no networks and every row measured instantly (the plumbing is under test)."""
    monkeypatch.setattr(weights, "load_networks", lambda weights_dir, device: weights.Networks(
        {}, "TINY test networks, synthetic weights", reduced=True, official_weights=False))
    monkeypatch.setattr(bench, "run", lambda rows, nets, device, config, progress: [
        row_result(row.name, 10.0 * (index + 1), stage_ms={"M": 1.0}) for index, row in enumerate(rows)])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("lpperf")
    return line


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(".") or "partial" in path.name)


# ----------------------------------------------------------------------- unsettled marks in every ratio

def test_a_speedup_over_an_unsettled_baseline_is_marked_unsettled():
    """CPU run: fast's 1.03x was shown settled although the fp32-eager time it divides did not settle."""
    results = [row_result("fp32-eager", 20.6, converged=False), row_result("fast", 20.0, recipe="fast"),
               row_result("peer", 25.0, recipe="official-default", peer=True)]
    bench._set_speedups(results)
    assert [r.speedup_converged for r in results] == [False, False, False]
    assert [r.speedup_vs_peer_converged for r in results] == [False, True, True]
    table = bench.format_table(results)
    fast = next(line for line in table.splitlines() if line.startswith("fast"))
    assert fast.split()[1] == "20.00" and fast.split()[4:6] == ["1.03x~", "1.25x"]
    assert "treat that time and every ratio computed from it as noise" in table


def test_unsettled_speedups_are_hatched_and_marked_in_the_speedup_chart(tmp_path, drawn):
    results = [row_result("fp32-eager", 20.6, converged=False), row_result("fast", 20.0, recipe="fast")]
    bench._set_speedups(results)
    charts.bench_charts(results, tmp_path, "test card")
    speedup = next(figure for figure in drawn if "Speedup" in figure.axes[0].get_title())
    axes = speedup.axes[0]
    assert [bar.get_hatch() for bar in axes.patches] == ["//", "//"]
    assert [text.get_text() for text in axes.texts] == ["1.00~", "1.03~"]


def test_the_stage_chart_marks_stages_that_did_not_settle(tmp_path, drawn):
    results = [row_result("fp32-eager", 20.0, stage_ms={"M": 5.0, "W": 7.0},
                          stage_converged={"M": True, "W": False})]
    charts.bench_charts(results, tmp_path, "test card")
    [stages] = [figure for figure in drawn if figure._suptitle is not None]
    motion, warp = stages.axes
    assert [bar.get_hatch() for bar in motion.patches] == [None]
    assert [bar.get_hatch() for bar in warp.patches] == ["//"]
    assert [text.get_text() for text in warp.texts] == ["7.00~"]
    assert charts.UNSETTLED_LEGEND in stages._suptitle.get_text()


def test_measured_rows_record_whether_each_stage_settled():
    config = bench.BenchConfig(warmup=0, rule=TWO_SAMPLES, parity_frames=1, stage_rule=TWO_SAMPLES)
    [result] = bench.run([bench.recipe_row("fp32-eager")], small_networks(), "cpu", config, progress=lambda _: None)
    assert set(result.stage_converged) == set(result.stage_ms) == {"F", "M", "S", "W", "G"}
    assert all(isinstance(settled, bool) for settled in result.stage_converged.values())
    assert json.dumps(bench.report([result], {}, {}, weights="test")["rows"][0]["stage_converged"])


# ------------------------------------------------------------------------------------ the report folder

def old_report(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    files = {"report.json": b'{"old": true}\n', "latency.png": b"old latency", "memory.png": b"old memory",
             "notes.txt": b"the user's own file"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_full_disk_while_writing_charts_leaves_the_previous_report_unchanged(tmp_path, capsys, monkeypatch,
                                                                               fake_bench):
    """A full disk during bench left a new latency.png beside the old report.json, and named no path."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    before = old_report(out)
    saved = []
    real_save = charts._save

    def save_then_fill_the_disk(figure, path):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        saved.append(path)
        return real_save(figure, path)

    monkeypatch.setattr(charts, "_save", save_then_fill_the_disk)
    assert cli.main(["bench", "--device", "cpu", "--out", str(out), "--no-history"]) == 2
    line = error_line(capsys)
    assert f"cannot write the report into {out}" in line and "No space left on device" in line
    assert "previous report there is unchanged" in line and "free some space or choose another --out" in line
    assert saved, "the first chart was written before the disk filled"
    assert contents(out) == before
    assert hidden_leftovers(out) == []


def test_a_new_report_replaces_the_previous_one_as_a_set_and_keeps_other_files(tmp_path, capsys, fake_bench):
    out = tmp_path / "report"
    old_report(out)
    assert cli.main(["bench", "--device", "cpu", "--out", str(out), "--no-history"]) == 0
    after = contents(out)
    assert after["notes.txt"] == b"the user's own file"  # not lpperf's: left alone
    assert "memory.png" not in after  # the previous run's chart: not part of this report
    report = json.loads(after["report.json"])
    assert set(after) == {"report.json", "notes.txt", *report["charts"]["written"]}
    assert hidden_leftovers(out) == []


def test_ctrl_c_while_writing_the_report_leaves_the_previous_one(tmp_path, capsys, monkeypatch, fake_bench):
    out = tmp_path / "report"
    before = old_report(out)

    def interrupted(data, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_json", interrupted)
    assert cli.main(["bench", "--device", "cpu", "--out", str(out), "--no-history"]) == 130
    assert contents(out) == before and hidden_leftovers(out) == []


def test_a_failed_swap_puts_the_previous_files_back(tmp_path, monkeypatch):
    folder = tmp_path / "report"
    before = old_report(folder)
    real_replace = os.replace

    def fail_moving_in_the_new_report_json(source, destination):
        if Path(source).parent.name.endswith(".partial") and Path(source).name == "report.json":
            raise OSError(errno.EIO, "Input/output error", str(destination))
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", fail_moving_in_the_new_report_json)
    with pytest.raises(OSError, match="Input/output error, writing report.json\\); the previous report there is "
                                      "unchanged"):
        with bench.report_folder(folder) as staging:
            (staging / "report.json").write_text("new")
            (staging / "latency.png").write_bytes(b"new latency")  # moved in first, then taken out again
    assert contents(folder) == before and hidden_leftovers(folder) == []


def test_a_file_of_another_name_is_refused_in_the_report_folder(tmp_path):
    with pytest.raises(ValueError, match="notes.txt is not one of the files an lpperf report holds"):
        with bench.report_folder(tmp_path) as staging:
            (staging / "notes.txt").write_text("x")


def test_out_that_is_a_file_is_refused_before_anything_loads(tmp_path, capsys, no_loading):
    (tmp_path / "taken").write_text("a file")
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "taken")]) == 2
    assert f"cannot write to folder {tmp_path / 'taken'}: it is a file, not a folder; choose another --out" in \
        error_line(capsys)


def test_a_weights_folder_without_the_checkpoints_is_refused_before_out_is_made(tmp_path, capsys, no_loading):
    (tmp_path / "weights").mkdir()
    assert cli.main(["bench", "--device", "cpu", "--no-history", "--weights", str(tmp_path / "weights"), "--out",
                     str(tmp_path / "report")]) == 2
    assert "lacks 5 of the 5 official checkpoint files" in error_line(capsys)
    assert not (tmp_path / "report").exists()


def test_a_report_json_that_cannot_be_written_names_its_path(tmp_path, monkeypatch):
    def full(self, text, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'report.json'} \\(No space left on device\\)"):
        files.write_json({"a": 1}, tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- arguments checked before loading

def test_history_that_is_a_file_fails_before_anything_loads(tmp_path, capsys, no_loading):
    """It used to run the whole benchmark, write report.json, then fail."""
    (tmp_path / "history.json").write_text("{}")
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r"), "--history",
                     str(tmp_path / "history.json")]) == 2
    assert f"{tmp_path / 'history.json'}: it is a file, not a folder; choose another --history" in error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_history_under_a_file_fails_before_anything_loads(tmp_path, capsys, no_loading):
    (tmp_path / "a-file").write_text("x")
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r"), "--history",
                     str(tmp_path / "a-file" / "history")]) == 2
    assert f"{tmp_path / 'a-file'} is a file, not a folder; choose another --history" in error_line(capsys)


def test_the_default_history_folder_is_not_created_before_the_run(tmp_path, capsys, fake_bench, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r")]) == 130
    assert not (tmp_path / ".benchmarks").exists()


@pytest.mark.parametrize("arguments", [["--no-history", "--history", "x"], ["--history", "x", "--no-history"]])
def test_no_history_with_a_history_folder_is_refused(arguments, tmp_path, capsys, no_loading):
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r"), *arguments]) == 2
    line = error_line(capsys)
    assert "--no-history" in line and "--history" in line and "not allowed with" in line


@pytest.mark.parametrize("option, value, most", [
    ("--batch", "100000000", bench.MAX_BATCH), ("--parity-frames", "1000000000", bench.MAX_PARITY_FRAMES),
    ("--repeats", "100000000", bench.MAX_REPEATS), ("--warmup", "100000000", bench.MAX_WARMUP)])
def test_sizes_above_their_stated_bound_fail_before_anything_loads(option, value, most, tmp_path, capsys,
                                                                  no_loading):
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r"), option, value]) == 2
    least = 0 if option == "--warmup" else 1
    assert f"argument {option}: must be a whole number from {least} to {most}, got '{value}'" in error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_the_bounds_are_explained_in_the_help(capsys):
    assert cli.main(["bench", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for option, most in (("--batch", bench.MAX_BATCH), ("--parity-frames", bench.MAX_PARITY_FRAMES),
                         ("--repeats", bench.MAX_REPEATS), ("--warmup", bench.MAX_WARMUP)):
        assert f"at most {most}" in help_text, option


def test_an_empty_recipes_list_is_refused(tmp_path, capsys, no_loading):
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r"), "--recipes"]) == 2
    assert "--recipes" in error_line(capsys)
    assert cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "r"), "--recipes", ""]) == 2
    assert "unknown recipe ''" in error_line(capsys)


# ---------------------------------------------------------------------------------------------- profile

@pytest.mark.parametrize("device, message", [
    ("meta", "unsupported device 'meta'"), ("tpu", "unsupported device 'tpu'")])
def test_profile_refuses_unsupported_devices_before_anything_loads(device, message, capsys, no_loading):
    assert cli.main(["profile", "--device", device, "--split"]) == 2
    assert message in error_line(capsys)


def test_profile_on_a_missing_gpu_fails_before_anything_loads(capsys, no_loading):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert cli.main(["profile", "--device", "cuda:0"]) == 2
    assert "asked for a CUDA GPU, but torch sees none" in error_line(capsys)


def test_profile_that_would_measure_nothing_is_refused(capsys, no_loading):
    """`profile --device meta --no-layers` used to exit 0 having measured nothing."""
    assert cli.main(["profile", "--device", "cpu", "--no-layers"]) == 2
    assert "--no-layers leaves nothing to measure: add --split or --kernels" in error_line(capsys)


def test_profile_batch_above_its_bound_fails_before_anything_loads(capsys, no_loading):
    assert cli.main(["profile", "--device", "cpu", "--batch", "100000000"]) == 2
    assert f"argument --batch: must be a whole number from 1 to {bench.MAX_BATCH}" in error_line(capsys)


def layer(name: str, flops: int, ms: float, kind: str = "Conv2d") -> profile.Layer:
    return profile.Layer(name, kind, "(1, 8, 64, 64)", flops, ms)


def test_profile_on_the_cpu_shows_its_figures_in_a_unit_that_shows_them():
    """On the CPU every row used to read 0.0 TFLOP/s (and small layers 0.0 GFLOP)."""
    layers = [layer("warping_module.a", 5_900_000_000, 35.3), layer("stitching.mlp.0", 16_000, 0.013)]
    text = profile.format_layers(layers, peak_tflops=None, top=10)
    header, _, big, small, total = text.splitlines()
    assert "GFLOP/s" in header and "TFLOP/s" not in header
    assert big.split()[2:5] == ["5.90", "35.300", "167"]  # GFLOP, ms, GFLOP/s
    assert small.split()[2:5] == ["0.0000160", "0.013", "1.23"]
    assert "GFLOP/s overall" in total


def test_profile_keeps_tflops_where_the_figures_are_large():
    text = profile.format_layers([layer("a", 10**12, 10.0)], peak_tflops=500.0, top=10)
    assert "TFLOP/s" in text.splitlines()[0] and text.splitlines()[2].split()[4] == "100"


def test_profile_layer_names_stay_distinct():
    """Cut at 58 characters, two different layers read the same."""
    prefix = "warping_module.warp.dense_motion_network.hourglass."
    names = [prefix + "decoder.conv", prefix + "decoder.up_blocks.0.conv", prefix + "encoder.down_blocks.0.conv"]
    text = profile.format_layers([layer(name, 10**6, 1.0) for name in names], peak_tflops=None, top=10)
    shown = [line.split()[0] for line in text.splitlines()[2:5]]
    assert len(set(shown)) == 3
    assert all(name.endswith(".conv") for name in shown) and all(len(name) <= 58 for name in shown)


# ------------------------------------------------------------------------------------------------ charts

@pytest.mark.parametrize("value, text", [
    (5220.3, "5220"), (1960.0, "1960"), (13302.88, "13303"), (172.0, "172"), (4.6, "4.60"), (0.325, "0.325"),
    (0.0000123, "0.0000123"), (0.0, "0"), (1.0, "1.00"), (67910.0, "67910"), (math.nan, "-")])
def test_chart_values_print_plainly(value, text):
    assert charts.plain_number(value) == text


def rendered(figure):
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def assert_text_inside(figure) -> None:
    renderer = rendered(figure)
    box = figure.bbox
    texts = [figure._suptitle] if figure._suptitle is not None else []
    for axes in figure.axes:
        texts += [axes.title, axes.xaxis.label, *axes.texts, *axes.get_yticklabels()]
    for text in texts:
        if text.get_text():
            extent = text.get_window_extent(renderer)
            assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, f"cut at the edge: {text.get_text()!r}"


def test_chart_text_fits_the_figure(tmp_path, drawn):
    """Subtitles were cut at the right edge."""
    results = [row_result("fp32-eager", 13302.88, converged=False, stage_ms={"F": 172.0, "M": 4600.0},
                          memory_mib=1964),
               row_result("+ G's SPADE modulations batched = a long recipe name", 9517.7, stage_ms={"F": 469.0},
                          memory_mib=67910)]
    bench._set_speedups(results)
    charts.bench_charts(results, tmp_path, LONG_TITLE)
    assert len(drawn) == 4
    for figure in drawn:
        assert_text_inside(figure)
        everything = " ".join(text.get_text() for text in figure.findobj(lambda a: hasattr(a, "get_text")))
        assert "seeded default init" in " ".join(everything.split())  # wrapped, not cut
        assert "e+0" not in everything


def test_value_labels_sit_clear_of_the_p90_whiskers(tmp_path, drawn):
    results = [row_result("fp32-eager", 5220.0), row_result("fast", 1960.0)]
    bench._set_speedups(results)
    charts.bench_charts(results, tmp_path, "test card")
    latency = next(figure for figure in drawn if "Latency" in figure.axes[0].get_title())
    renderer = rendered(latency)
    axes = latency.axes[0]
    assert [text.get_text() for text in axes.texts] == ["5220", "1960"]
    for text, result in zip(axes.texts, results):
        whisker_end = axes.transData.transform((result.p90_ms_per_frame, 0))[0]
        extent = text.get_window_extent(renderer)
        assert extent.x0 >= whisker_end
        assert extent.x1 <= axes.get_window_extent(renderer).x1


def test_the_memory_chart_says_what_its_figure_is(tmp_path, drawn):
    results = [row_result("fp32-eager", 20.0, memory_mib=1964)]
    charts.bench_charts(results, tmp_path, "test card")
    [memory_chart] = [figure for figure in drawn if "memory" in figure.axes[0].get_title()]
    text = " ".join((memory_chart.axes[0].get_title() + " " + memory_chart.axes[0].get_xlabel()).split())
    assert "process peak" in text and "NVML" in text and "CUDA context" in text


def pytest_run(card: str, weights_label: str, median_s: float, when: str) -> history.Run:
    return history.Run(source=f"{when}.json", format=history.RunFormat.PYTEST_BENCHMARK, card=card, commit=None,
                       datetime=when, machine_info={"card": card, "weights": weights_label},
                       results=(history.BenchmarkResult("test_frame", median_s),))


def test_trend_charts_name_the_card_networks_and_weights(tmp_path, drawn):
    groups = {"NVIDIA H100": [pytest_run("NVIDIA H100", "synthetic(seed=0)", 0.010, "2026-01-01"),
                              pytest_run("NVIDIA H100", "synthetic(seed=0)", 0.011, "2026-01-02")]}
    charts.trend_charts(groups, tmp_path)
    [figure] = drawn
    title = " ".join(figure.axes[0].get_title().split())
    assert "test_frame" in title and "card: NVIDIA H100" in title
    assert "networks and weights: synthetic(seed=0)" in title
    assert_text_inside(figure)


def test_bench_reports_record_their_networks_and_weights_for_the_trends():
    data = bench.report([row_result("fp32-eager", 20.0)], {"device_name": "Test CPU"}, {}, weights=LONG_TITLE)
    run = history.parse_run(json.loads(json.dumps(data)), "report.json")
    assert run.machine_info["weights"] == LONG_TITLE


# ------------------------------------------------------------------------------------- the memory notes

def test_the_table_says_what_its_memory_figures_are():
    results = [row_result("fp32-eager", 20.0, memory_mib=1964)]
    table = bench.format_table(results)
    assert "NVML MiB: the process's peak GPU memory while the step is timed, sampled through NVML" in table
    assert "torch MiB: torch's peak reserved memory" in table
    assert "start MiB: the NVML peak of the start-up" in table
    without = bench.format_table([dataclasses.replace(results[0], memory=None,
                                                           memory_unavailable="no NVML (test)")])
    assert "NVML MiB, torch MiB, start MiB: not measured (no NVML (test))" in without


def test_start_up_and_steady_state_memory_are_tracked_apart(monkeypatch):
    """cuDNN's algorithm search and compiling allocate transients (tens of GB for one convolution on an
    H200) that running the row never needs: the row's memory figure covers the timed calls only."""
    events = []

    class FakeTracker:
        def __init__(self, phase):
            self.phase, self.report = phase, f"report {phase}"

    @contextlib.contextmanager
    def fake_track(device):
        phase = sum(event.startswith("start") for event in events)
        events.append(f"start {phase}")
        yield FakeTracker(phase)
        events.append(f"stop {phase}")

    real_time_parts = timing.time_parts

    def recording_time_parts(*args, **kwargs):
        events.append("timed")
        return real_time_parts(*args, **kwargs)

    monkeypatch.setattr(timing, "time_parts", recording_time_parts)
    cpu = torch.device("cpu")
    baselines = []
    monkeypatch.setattr(bench, "_device_used_before", lambda device: events.append("baseline") or 777)
    monkeypatch.setattr(bench, "_track_memory", lambda stack, device, baseline: (
        baselines.append(baseline), stack.enter_context(fake_track(device)), "")[1:])
    config = bench.BenchConfig(batch=2, warmup=0, parity_frames=1, rule=TWO_SAMPLES, stages=False)
    result = bench.measure_row(bench.recipe_row("fp32-eager"), small_networks(), cpu, config, None, None, None)
    assert events == ["baseline", "start 0", "stop 0", "start 1", "timed", "stop 1"]
    # both count from the card's use before the build, where NVML lists no process (the device delta)
    assert baselines == [777, 777]
    assert (result.startup_memory, result.memory) == ("report 0", "report 1")


def test_sigterm_while_writing_the_report_leaves_the_previous_one(tmp_path, capsys, monkeypatch, fake_bench):
    import signal

    out = tmp_path / "report"
    before = old_report(out)

    def terminated(data, path):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "write_json", terminated)
    assert cli.main(["bench", "--device", "cpu", "--out", str(out), "--no-history"]) == 130
    assert contents(out) == before and hidden_leftovers(out) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_flops_column_of_a_cpu_run_shows_its_figures():
    """On the CPU every row read 0.0 TFLOP/s."""
    results = [dataclasses.replace(row_result("fp32-eager", 20.0), tflops=0.0123),
               dataclasses.replace(row_result("fast", 10.0), tflops=0.0246)]
    header, _, eager, fast = bench.format_table(results).splitlines()[:4]
    assert "GFLOP/s" in header and "TFLOP/s" not in header
    assert "12.3" in eager.split() and "24.6" in fast.split()
    on_a_card = bench.format_table([dataclasses.replace(results[0], tflops=123.4)]).splitlines()[0]
    assert "TFLOP/s" in on_a_card


@pytest.mark.parametrize("option", ["--out", "--history"])
def test_a_folder_without_write_permission_is_named_before_anything_loads(option, tmp_path, capsys, monkeypatch,
                                                                         no_loading):
    """As root a chmod'ed folder stays writable, so the refusal is simulated where lpperf probes the folder."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_atomic_path = files.atomic_path

    def refuse_in_locked(destination):
        if Path(destination).parent == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(destination))
        return real_atomic_path(destination)

    monkeypatch.setattr(files, "atomic_path", refuse_in_locked)
    out = tmp_path / "r" if option == "--history" else locked
    history = locked if option == "--history" else tmp_path / "h"
    assert cli.main(["bench", "--device", "cpu", "--out", str(out), "--history", str(history)]) == 2
    assert f"cannot write to folder {locked} (Permission denied); choose a writable {option}" in error_line(capsys)
