"""The `lpperf` command: bench, compare, history, animate.

    lpperf bench [--device auto|cuda|cpu] [--recipes NAME ...] [--batch N ...] [--weights DIR] [--out DIR]
    lpperf compare A.json B.json [--any-card] [--threshold 0.1]
    lpperf history [DIR] [--out DIR] [--any-card]
    lpperf animate --source IMAGE --driving VIDEO_OR_FOLDER --weights DIR|synthetic --out OUT.mp4

Errors a user can fix (bad paths, unreadable files, unknown recipe, no GPU, Ctrl-C) end with one line
on stderr and a non-zero exit code, no traceback (--traceback shows it). Files are written under a
temporary name and renamed when complete, so a failed run never leaves a file that looks finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lpperf import charts, history, video

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
CPU_DEFAULT_RECIPES = ("fp32-eager", "fast")
BASELINE_RECIPE = "fp32-eager"
TINY_SEED = 0
REPEATS_TIME_CAP_S = 3600.0  # --repeats N means N samples; the time cap only guards against a hang
MEANINGLESS = ("NOTE: synthetic weights - the output images are meaningless; only the speed and the "
               "parity against the float32 reference on the same weights are measured.")


class UsageError(Exception):
    """A command-line mistake; argparse's usage block is replaced by one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- devices

def resolve_device(name: str) -> torch.device:
    """auto: CUDA if available, else the CPU. cuda without a usable GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for a CUDA GPU, but torch sees none (torch "
                           f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu or auto")
    return device


def tiny_networks(seed: int = TINY_SEED) -> dict:
    """The seven networks at lpperf.models.TINY sizes, for CPU runs.

    Weights are PyTorch's default initialisation drawn from a generator seeded with `seed`
    (torch's global RNG is left as it was), so runs are repeatable; they are not trained-like
    (lpperf.weights.synthetic builds official sizes only) and the output images mean nothing.
    """
    from lpperf import models

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {name: models.build(name, **models.TINY.get(name, {})) for name in models.NAMES}


def load_networks(weights: str | None, device: torch.device) -> tuple[dict, str]:
    """(networks on the CPU, a description). weights: a folder of official checkpoints, or None /
    'synthetic' for synthetic ones (TINY sizes on the CPU, official sizes on a GPU)."""
    from lpperf import weights as weights_module

    if weights not in (None, "synthetic"):
        folder = Path(weights)
        if not folder.is_dir():
            raise FileNotFoundError(f"weights folder {folder} does not exist; give the folder holding the official "
                                    "LivePortrait checkpoints (base_models/, retargeting_models/) or 'synthetic'")
        return weights_module.load_official(folder, "cpu"), f"official checkpoints from {folder}"
    if device.type == "cpu":
        return tiny_networks(), "synthetic, TINY sizes (lpperf.models.TINY, seeded default init)"
    return weights_module.synthetic(seed=0, device="cpu"), "synthetic, official sizes (lpperf.weights.synthetic)"


# ----------------------------------------------------------------------------------------------- output

def prepare_out_dir(path: Path) -> Path:
    """Create `path` if needed and check that files can be written into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with video.atomic_path(path / ".lpperf-write-check") as probe:
            probe.write_bytes(b"")
        (path / ".lpperf-write-check").unlink()
    except OSError as error:
        raise OSError(f"cannot write to output folder {path} ({error.strerror or error}); choose a writable --out")
    return path


def write_json(data: dict, path: Path) -> Path:
    with video.atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n")
    return path


def _json_default(value):
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _finite_or_none(value):
    """NaN/inf are not JSON; they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


class Progress:
    """Numbered progress lines on stderr with the elapsed time: `[ 3/9   12.4s] row: fp32 eager`."""

    def __init__(self, total: int):
        self.total = total
        self.count = 0
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        self.count += 1
        elapsed = time.perf_counter() - self.start
        width = len(str(self.total))
        _say(f"[{self.count:>{width}}/{self.total} {elapsed:7.1f}s] {message}")


# ------------------------------------------------------------------------------------------------ bench

def _bench_rows(device: torch.device, names: Sequence[str] | None) -> list:
    from lpperf import bench

    if names:
        names = list(dict.fromkeys(names))
        rows = [bench.recipe_row(name) for name in names]  # raises ValueError naming the known recipes
        if BASELINE_RECIPE not in names:
            rows.insert(0, bench.recipe_row(BASELINE_RECIPE))
        return rows
    if device.type == "cuda":
        return bench.waterfall_rows() + bench.peer_rows()
    return [bench.recipe_row(name) for name in CPU_DEFAULT_RECIPES]


def _bench_config(device: torch.device, batch: int, args) -> "object":
    from lpperf import bench, timing

    if device.type == "cuda":
        config = bench.BenchConfig(batch=batch)
    else:  # a CPU run is a smoke run: few repeats, no convergence needed
        config = bench.BenchConfig(batch=batch, warmup=1, parity_frames=2,
                                   rule=timing.StoppingRule(min_repeats=3, min_seconds=0.0, max_rel_iqr=1.0,
                                                            max_repeats=10, max_seconds=5.0))
    if args.warmup is not None:
        config = dataclasses.replace(config, warmup=args.warmup)
    if args.parity_frames is not None:
        config = dataclasses.replace(config, parity_frames=args.parity_frames)
    if args.repeats is not None:
        config = dataclasses.replace(config, rule=timing.StoppingRule(
            min_repeats=args.repeats, min_seconds=0.0, max_rel_iqr=1.0, max_repeats=args.repeats,
            max_seconds=REPEATS_TIME_CAP_S))
    return config


def bench_report(results: Sequence, environment: dict, config: dict, weights: str) -> dict:
    """The JSON report: an lpperf bench report (lpperf.history reads its `benchmarks`) plus the full rows."""
    card = environment.get("device_name")
    benchmarks = []
    for result in results:
        stats = (result.timing or {}).get("stats") or {}
        if result.error or not math.isfinite(result.ms_per_frame):
            continue  # failed rows stay in `rows` with their error, not in the comparable benchmarks

        def per_frame(key):
            return None if stats.get(key) is None else stats[key] / result.batch

        benchmarks.append(history.BenchmarkResult(
            name=f"{result.name} [batch {result.batch}]", median_s=result.ms_per_frame / 1e3,
            mean_s=per_frame("mean_s"), min_s=per_frame("min_s"), max_s=per_frame("max_s"),
            rounds=stats.get("count")))
    run = history.Run(source="lpperf bench", format=history.RunFormat.LPPERF_REPORT, card=card,
                      commit=_git_commit(), datetime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                      machine_info={"device": environment.get("device"), "torch": environment.get("torch_version")},
                      results=tuple(benchmarks))
    report = history.report_dict(run)
    report.update(environment=environment, config=config, weights=weights,
                  rows=[_finite_or_none(result.to_dict()) for result in results])
    return report


def cmd_bench(args) -> int:
    from lpperf import bench
    from lpperf.environment import environment_info

    device = resolve_device(args.device)
    rows = _bench_rows(device, args.recipes)
    batches = list(dict.fromkeys(args.batch))
    if any(batch < 1 for batch in batches):
        raise ValueError(f"--batch values must be >= 1, got {batches}")
    out_dir = prepare_out_dir(Path(args.out))
    if device.type == "cpu":
        _say("!" * 78)
        _say("! No GPU: running on the CPU with the TINY networks (~1/35 of the FLOPs) and few repeats.")
        _say("! These numbers say nothing about GPU speed; the output images are meaningless.")
        _say("!" * 78)
    steps_per_batch = 2 + (device.type == "cuda") + len(rows)
    progress = Progress(1 + steps_per_batch * len(batches))
    progress(f"loading networks ({'synthetic' if args.weights is None else args.weights}) for {device}")
    nets, weights_description = load_networks(args.weights, device)
    if args.weights is None:
        _say(MEANINGLESS)

    results, configs = [], []
    for batch in batches:
        config = _bench_config(device, batch, args)
        configs.append(dataclasses.asdict(config))
        batch_results = bench.run(rows, nets, device, config,
                                  progress=lambda message, b=batch: progress(f"batch {b}: {message}"))
        results += batch_results
        print(f"\nbatch {batch} on {device}:")
        print(bench.format_table(batch_results))
        for result in batch_results:
            for line in ([f"  {result.name}: FAILED: {result.error}"] if result.error else []) + \
                    [f"  {result.name}: parity: {failure}" for failure in result.parity_failures]:
                print(line)

    environment = environment_info(device)
    report = bench_report(results, environment,
                          config={"device": str(device), "batches": batches, "rows": [row.name for row in rows],
                                  "per_batch": configs},
                          weights=weights_description)
    title = f"{environment.get('device_name')}, torch {torch.__version__}"
    reason = charts.unavailable_reason()
    if reason:
        _say(f"charts skipped: {reason}")
        report["charts"] = {"written": [], "skipped": {"all": reason}}
    else:
        written, skipped = charts.bench_charts(report["rows"], out_dir, title)
        report["charts"] = {"written": [path.name for path in written], "skipped": skipped}
        for name, why in skipped.items():
            _say(f"chart {name} skipped: {why}")
    # The report goes last: its presence means the run finished.
    path = write_json(report, out_dir / "report.json")
    print(f"\nreport: {path}" + "".join(f"\nchart:  {out_dir / name}" for name in report["charts"]["written"]))
    return 0


# ------------------------------------------------------------------------------------- compare, history

def _change(delta: history.Delta) -> str:
    if delta.ratio == 0 or math.isinf(delta.ratio):
        return f"{delta.name}: {delta.old_median_s * 1e3:.3f} ms -> {delta.new_median_s * 1e3:.3f} ms"
    if delta.ratio < 1:
        amount = f"{1 / delta.ratio:.2f}x faster ({(1 - delta.ratio):.1%} less time)"
    else:
        amount = f"{delta.ratio:.2f}x slower ({(delta.ratio - 1):.1%} more time)"
    return f"{delta.name}: {delta.old_median_s * 1e3:.3f} ms -> {delta.new_median_s * 1e3:.3f} ms, {amount}"


def _compare(baseline: history.Run, current: history.Run, threshold: float, any_card: bool) -> history.Comparison:
    """compare_runs, which refuses different cards; with --any-card the cards are set aside for it."""
    if any_card and baseline.card != current.card:
        _say(f"warning: comparing different cards ({baseline.card} vs {current.card}); timings are not comparable")
        baseline, current = dataclasses.replace(baseline, card=None), dataclasses.replace(current, card=None)
    return history.compare_runs(baseline, current, threshold)


def print_comparison(comparison: history.Comparison) -> None:
    print(history.format_comparison(comparison))
    for verdict in (history.Verdict.FASTER, history.Verdict.SLOWER):
        moved = [delta for delta in comparison.deltas if delta.verdict is verdict]
        print(f"{verdict.value} (beyond {comparison.threshold:.0%}): {len(moved) or 'none'}")
        for delta in moved:
            print("  " + _change(delta))
    same = sum(delta.verdict is history.Verdict.SAME for delta in comparison.deltas)
    print(f"within {comparison.threshold:.0%}: {same}")


def cmd_compare(args) -> int:
    baseline, current = history.read_run(args.baseline), history.read_run(args.current)
    print_comparison(_compare(baseline, current, args.threshold, args.any_card))
    return 0


def cmd_history(args) -> int:
    runs = history.load_history(args.dir)
    if not runs:
        raise FileNotFoundError(f"no benchmark runs (*.json) under {args.dir}; run `pytest -m gpu "
                                "--benchmark-autosave` or `lpperf bench` first")
    groups: dict[str, list[history.Run]] = {}
    for run in runs:
        groups.setdefault("all cards" if args.any_card else (run.card or "no card recorded"), []).append(run)
    for card, card_runs in groups.items():
        print(f"== {card}: {len(card_runs)} run(s)")
        for run in card_runs:
            print(f"   {run.datetime or '?'}  {run.commit or '-'}  {run.source}")
        if len(card_runs) >= 2:
            print(f"-- latest run vs the one before ({card}):")
            print_comparison(_compare(card_runs[-2], card_runs[-1], args.threshold, args.any_card))
        else:
            print("   (one run: nothing to compare yet)")

    reason = charts.unavailable_reason()
    if reason:
        _say(f"trend charts skipped: {reason}")
        return 0
    out_dir = prepare_out_dir(Path(args.out))
    names = list(dict.fromkeys(result.name for run in runs for result in run.results))
    written = []
    for name in names:
        series = {card: [(_run_label(run), run.result(name).median_s) for run in card_runs if run.result(name)]
                  for card, card_runs in groups.items()}
        series = {card: points for card, points in series.items() if points}
        written.append(charts.trend_chart(name, series, out_dir / f"trend-{charts.slug(name)}.png"))
    print(f"\n{len(written)} trend chart(s) in {out_dir}")
    return 0


def _run_label(run: history.Run) -> str:
    return (run.datetime or "")[:16] or Path(run.source).stem


# ---------------------------------------------------------------------------------------------- animate

def cmd_animate(args) -> int:
    from lpperf import recipes

    if args.recipe not in recipes.RECIPES:
        raise ValueError(f"unknown recipe {args.recipe!r}; known recipes: {', '.join(recipes.RECIPES)}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    weights = "synthetic" if args.synthetic else args.weights
    if weights is None:
        raise UsageError("lpperf animate: give --weights DIR (official checkpoints) or --weights synthetic")
    device = resolve_device(args.device)
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the path of the .mp4 file to write")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {out.parent} does not exist; create it or choose another --out")
    source = video.read_image(args.source)
    driving = video.DrivingSource(args.driving)
    nets, description = load_networks(weights, device)
    if weights == "synthetic":
        _say(MEANINGLESS)
        _say(f"weights: {description}")
    engine = recipes.build(args.recipe, nets, device)
    del nets
    animator = engine.animator(source)
    report = engine.report()
    _say(f"recipe {args.recipe} on {device}: applied {report['applied'] or 'nothing'}"
         + "".join(f"; skipped {name}: {why}" for name, why in report["skipped"].items()))

    start = time.perf_counter()
    with video.VideoWriter(out, driving.fps) as writer:
        for frame in animator.animate(driving.frames(), batch_size=args.batch):
            writer.write(video.frame_to_array(frame))
            if writer.frames_written % 25 == 0:
                _say(f"{writer.frames_written} frames, {writer.frames_written / (time.perf_counter() - start):.1f} "
                     "frames/s")
    elapsed = time.perf_counter() - start
    print(f"wrote {out}: {writer.frames_written} frames at {float(driving.fps):g} frames/s; "
          f"{writer.frames_written / elapsed:.2f} frames/s end to end on {device} (decode + animate + encode)")
    return 0


# ------------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lpperf", description="Fast, honestly measured LivePortrait inference.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    bench = commands.add_parser("bench", help="measure fp32 eager and the recipes on the sample data")
    bench.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")
    bench.add_argument("--recipes", nargs="+", metavar="NAME",
                       help="recipes to measure (fp32-eager is added first as the baseline); default: the "
                            "waterfall and peer rows on CUDA, fp32-eager and fast on the CPU")
    bench.add_argument("--batch", nargs="+", type=int, default=[1], metavar="N",
                       help="driving frames per step; several values run every row per batch size")
    bench.add_argument("--weights", metavar="DIR", help="official checkpoints (default: synthetic weights)")
    bench.add_argument("--out", default="lpperf-report", metavar="DIR", help="report folder (default %(default)s)")
    bench.add_argument("--repeats", type=int, metavar="N", help="exactly N timed repeats per row")
    bench.add_argument("--warmup", type=int, metavar="N", help="warm-up calls per row")
    bench.add_argument("--parity-frames", type=int, metavar="N", help="frames compared with the reference")
    bench.set_defaults(handler=cmd_bench)

    compare = commands.add_parser("compare", help="compare two benchmark runs (pytest-benchmark JSON or "
                                                   "lpperf bench report)")
    compare.add_argument("baseline", metavar="A", help="the older run")
    compare.add_argument("current", metavar="B", help="the newer run")
    compare.add_argument("--threshold", type=float, default=0.10, help="change counted as real (default 0.10)")
    compare.add_argument("--any-card", action="store_true", help="allow runs of different cards")
    compare.set_defaults(handler=cmd_compare)

    hist = commands.add_parser("history", help="trends of the benchmark history, per card")
    hist.add_argument("dir", nargs="?", default=".benchmarks", help="history folder (default %(default)s)")
    hist.add_argument("--out", default="lpperf-history", metavar="DIR", help="chart folder (default %(default)s)")
    hist.add_argument("--threshold", type=float, default=0.10, help="change counted as real (default 0.10)")
    hist.add_argument("--any-card", action="store_true", help="put all cards in one series")
    hist.set_defaults(handler=cmd_history)

    animate = commands.add_parser("animate", help="animate a pre-cropped 256x256 portrait with a driving video")
    animate.add_argument("--source", required=True, metavar="IMAGE", help="256x256 portrait crop")
    animate.add_argument("--driving", required=True, metavar="VIDEO_OR_FOLDER", help="256x256 driving frames")
    animate.add_argument("--weights", metavar="DIR", help="official checkpoints folder, or 'synthetic'")
    animate.add_argument("--synthetic", action="store_true", help="synthetic weights (meaningless output)")
    animate.add_argument("--out", required=True, metavar="OUT.mp4", help="video to write (512x512 H.264)")
    animate.add_argument("--recipe", default="fast", help="optimization recipe (default %(default)s)")
    animate.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")
    animate.add_argument("--batch", type=int, default=1, help="driving frames per step (default 1)")
    animate.set_defaults(handler=cmd_animate)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except SystemExit as exit_request:  # --help
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_ERROR
    except UsageError as error:
        _say(_one_line(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say("lpperf: interrupted (Ctrl-C); unfinished output files were removed")
        return EXIT_INTERRUPTED
    except (OSError, ValueError, RuntimeError, history.HistoryError) as error:
        if show_traceback:
            raise
        _say(f"lpperf: error: {_one_line(error)}")
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
