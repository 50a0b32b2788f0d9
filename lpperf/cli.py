"""The `lpperf` command: bench, compare, history, animate (and gate, profile: their own modules).

    lpperf bench [--device auto|cpu|cuda|cuda:N] [--recipes NAME ...] [--batch N ...] [--weights DIR]
                 [--out DIR] [--history DIR | --no-history]
    lpperf compare A.json B.json [--threshold FRACTION] [--fail-above FRACTION [--allow-missing]] [--any-card]
    lpperf history [DIR] [--out DIR] [--threshold FRACTION]
                   [--any-card | --creep-limit FRACTION [--best-of K] [--pinned FILE]]
    lpperf animate --source IMAGE --driving VIDEO_OR_FOLDER --weights DIR|synthetic --out OUT.mp4

Errors a user can fix (bad arguments, paths, unreadable files, unknown recipe, no GPU, Ctrl-C) end with
one line on stderr and a non-zero exit code, no traceback (--traceback shows it); arguments are checked
before anything is loaded. Files are written under a temporary name and renamed when complete, so a
failed run never leaves a file that looks finished.

Over 400 lines as one module: the commands' argument parsers and their thin handlers (gate and profile
keep theirs beside their code).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from lpperf.animation import video
from lpperf.models import weights
from lpperf.reports import charts, history, profile, trends
from lpperf.gate import command as gate_command
from lpperf.util import files
from lpperf.util.arguments import at_least
from lpperf.util.devices import DEVICES, device_name, resolve_device
from lpperf.util.exits import Exit
from lpperf.util.files import write_json

DEFAULT_HISTORY = ".benchmarks"  # pytest-benchmark's runs (per card, conftest.py) and lpperf bench's copies
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


# ------------------------------------------------------------------------------------- argument types

# ----------------------------------------------------------------------------------------------- output

def prepare_out_dir(path: Path, option: str = "--out", create: bool = True) -> Path:
    """Check that files can be written into the folder `path` (given as `option`), and create it. With
    create=False only check, before a run: the folder, or the nearest one above it that exists, must be
    writable, and nothing is left behind."""
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        which = "it" if existing == path else str(existing)
        raise OSError(f"cannot write to folder {path}: {which} is a file, not a folder; choose another {option}")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        folder = path if create else existing
        with files.atomic_path(folder / ".lpperf-write-check") as probe:
            probe.write_bytes(b"")
        (folder / ".lpperf-write-check").unlink()
    except OSError as error:
        raise OSError(f"cannot write to folder {path} ({error.strerror or error}); choose a writable {option}") \
            from None
    return path


def save_to_history(report: dict, root: Path) -> Path:
    """A copy of a bench report where `lpperf history ROOT` reads it: ROOT/<card>/lpperf-bench/bench-<time>.json.
    The name has no NNNN_ prefix, so pytest-benchmark never takes it for one of its saved runs."""
    stamp = re.sub(r"[^0-9]", "", report["datetime"])[:20]
    folder = prepare_out_dir(root / history.card_slug(report["machine_info"].get("card")) / "lpperf-bench",
                             "--history")
    return write_json(report, folder / f"bench-{stamp}.json")


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

def _bench_config(device: torch.device, batch: int, args):
    from lpperf.reports import bench

    config = bench.default_config(device, batch)
    changes = {}
    if args.warmup is not None:
        changes["warmup"] = args.warmup
    if args.parity_frames is not None:
        changes["parity_frames"] = args.parity_frames
    if args.repeats is not None:  # exactly N samples; "converged" still says whether they settled
        exactly = dict(min_repeats=args.repeats, max_repeats=args.repeats, min_seconds=0.0,
                       max_seconds=REPEATS_TIME_CAP_S)
        changes["rule"] = dataclasses.replace(config.rule, **exactly)
        changes["stage_rule"] = dataclasses.replace(config.stage_rule, **exactly)
    return dataclasses.replace(config, **changes)


def bench_banner(device: torch.device, networks: weights.Networks) -> list[str]:
    """What a bench run measures, said before it starts."""
    lines = []
    if device.type == "cpu":
        cost = "" if networks.reduced else " Official-size networks take seconds per frame on a CPU."
        lines += ["!" * 78, "! No GPU: running on the CPU with few repeats. These numbers say nothing about GPU speed.",
                  f"! Networks: {networks.description}.{cost}", "!" * 78]
    if not networks.official_weights:
        lines.append(MEANINGLESS)
    return lines


def cmd_bench(args) -> int:
    from lpperf.reports import bench
    from lpperf.measure.environment import environment_info

    device = resolve_device(args.device)
    rows = bench.default_rows(device, args.recipes or ())  # an unknown name raises, naming the known recipes
    configs = [_bench_config(device, batch, args) for batch in dict.fromkeys(args.batch)]
    if args.weights not in (None, "synthetic"):
        weights.official_files(args.weights)  # before --out is made: a wrong folder leaves nothing behind
    if args.history:  # checked now, created only when the report is saved: a failed run leaves none behind
        prepare_out_dir(Path(args.history), "--history", create=False)
    out_dir = prepare_out_dir(Path(args.out))
    progress = Progress(1 + (2 + (device.type == "cuda") + len(rows)) * len(configs))
    progress(f"loading networks ({args.weights or 'synthetic'}) for {device}")
    networks = weights.load_networks(args.weights, device)
    for line in bench_banner(device, networks):
        _say(line)

    results = []
    for config in configs:
        batch_results = bench.run(rows, networks.nets, device, config,
                                  progress=lambda message, b=config.batch: progress(f"batch {b}: {message}"))
        results += batch_results
        print("\n" + bench.format_table(batch_results, f"batch {config.batch} on {device}: {networks.description}"))
        for result in batch_results:
            problems = [f"FAILED: {result.error}"] * bool(result.error)
            problems += [f"parity: {failure}" for failure in result.parity_failures]
            print("".join(f"  {result.name}: {problem}\n" for problem in problems), end="")

    environment = environment_info(device)
    config_record = {"device": str(device), "batches": [config.batch for config in configs],
                     "rows": [row.name for row in rows], "per_batch": [dataclasses.asdict(c) for c in configs]}
    report = bench.report(results, environment, config_record, weights=networks.description)
    title = f"{environment.get('device_name')}, torch {torch.__version__}, {networks.description}"
    # SIGTERM, SIGHUP: the unfinished report is removed and the previous one kept, as on Ctrl-C
    with files.termination_as_interrupt():
        with bench.report_folder(out_dir) as staging:  # the report and its charts replace the previous ones as a set
            written, skipped = charts.bench_charts(results, staging, title)
            report["charts"] = {"written": [path.name for path in written], "skipped": skipped}
            write_json(report, staging / bench.REPORT_JSON)
        for name, why in skipped.items():
            _say(f"chart{'s' if name == 'all' else ' ' + name} skipped: {why}")
        print(f"\nreport: {out_dir / bench.REPORT_JSON}"
              + "".join(f"\nchart:  {out_dir / name}" for name in report["charts"]["written"]))
        if args.history:
            print(f"history: {save_to_history(report, Path(args.history))} (lpperf history {args.history})")
    return 0


# ------------------------------------------------------------------------------------- compare, history

def _fraction_below_one(text: str) -> float:
    """An argparse type: a fraction in [0, 1); refusing 1 and more catches 10 meant as 10%."""
    value = at_least(0, float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction below 1 (0.10 = 10%), got {text!r}")
    return value


def _change(delta: history.Delta) -> str:
    times = f"{delta.name}: {delta.old_median_s * 1e3:.3f} ms -> {delta.new_median_s * 1e3:.3f} ms"
    if delta.old_median_s == 0 or delta.new_median_s == 0:
        amount = f" (the time in {'A' if delta.old_median_s == 0 else 'B'} is zero: no ratio)"
    elif delta.ratio < 1:
        amount = f", {1 / delta.ratio:.2f}x faster ({(1 - delta.ratio):.1%} less time)"
    else:
        amount = f", {delta.ratio:.2f}x slower ({(delta.ratio - 1):.1%} more time)"
    unsettled = "" if delta.settled else f" {history.UNSETTLED_MARK} did not settle in {delta.unsettled_in}: noise"
    return times + amount + unsettled


def _unsettled_count(deltas) -> int:
    return sum(not delta.settled for delta in deltas)


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
        unsettled = _unsettled_count(moved)
        print(f"{verdict.value} (beyond {history.percent(comparison.threshold)}): {len(moved) or 'none'}"
              + (f" ({unsettled} from a time that did not settle: noise)" if unsettled else ""))
        for delta in moved:
            print("  " + _change(delta))
    same = sum(delta.verdict is history.Verdict.SAME for delta in comparison.deltas)
    print(f"within {history.percent(comparison.threshold)}: {same}")
    unsettled = _unsettled_count(comparison.deltas)
    if unsettled:
        print(f"{history.UNSETTLED_MARK} {unsettled} benchmark(s) compared with a time that did not settle: their "
              "ratios are noise; re-measure them before trusting a verdict")


def cmd_compare(args) -> int:
    if args.allow_missing and args.fail_above is None:
        raise UsageError("lpperf compare: --allow-missing needs --fail-above (it only changes what the gate checks)")
    baseline, current = history.read_run(args.baseline), history.read_run(args.current)
    comparison = _compare(baseline, current, args.threshold, args.any_card)
    if not comparison.deltas:
        raise history.HistoryError(
            f"no benchmark of {args.baseline} (A) is in {args.current} (B), so nothing can be compared "
            f"({comparison.missing_names() or 'both runs are empty'}); compare two runs of the same benchmarks")
    print_comparison(comparison)
    if args.fail_above is None:
        return 0
    # A renamed or dropped benchmark is not checked, so a gate does not pass over it unless told to.
    missing = () if args.allow_missing else comparison.only_in_baseline
    missing_text = f"{len(missing)} benchmark(s) of A are not in B: {history.names_text(missing)}"
    # Unsettled times are gated like settled ones (a slowdown hidden in noise is not let through) and marked.
    regressed = [delta for delta in comparison.deltas if delta.ratio - 1 > args.fail_above]
    if regressed:
        names = history.names_text(delta.name + ("" if delta.settled else " " + history.UNSETTLED_MARK)
                                   for delta in regressed)
        noise = f" ({history.UNSETTLED_MARK}: did not settle, noise: re-measure)" if _unsettled_count(regressed) else ""
        _say(f"lpperf compare: FAILED: {len(regressed)} benchmark(s) more than {history.percent(args.fail_above)} "
             f"slower than in {args.baseline}: {names}{noise}"
             + (f"; also {missing_text} (renamed or dropped: not checked)" if missing else ""))
        return Exit.REGRESSED
    if missing:
        raise history.HistoryError(
            f"cannot pass the gate: {missing_text} (renamed or dropped: not checked); compare runs of the same "
            "benchmarks, or add --allow-missing to gate only the benchmarks in both")
    unsettled = _unsettled_count(comparison.deltas)
    print(f"passed: no benchmark more than {history.percent(args.fail_above)} slower"
          + (f" ({unsettled} compared time(s) did not settle: noise, re-measure before trusting)" if unsettled else ""))
    return 0


def _pinned_applies(pinned: history.Run | None, runs: list[history.Run]) -> bool:
    """Whether the pinned run is compared with the latest of `runs` (one card's runs of one kind): if it is of
    that card and kind."""
    return (pinned is not None and pinned.format is runs[-1].format
            and history.card_slug(pinned.card) == history.card_slug(runs[-1].card))


def cmd_history(args) -> int:
    # Options first, then the paths, then the files: nothing is read before the command line is known good.
    if args.pinned and args.creep_limit is None:
        raise UsageError("lpperf history: --pinned needs --creep-limit (the pinned run is only compared for creep)")
    if args.any_card and args.creep_limit is not None:
        raise UsageError("lpperf history: --any-card puts all cards in one series, but creep is measured per card; "
                         "drop --any-card or --creep-limit")
    folder = history.check_history_folder(args.dir)
    reason = charts.unavailable_reason()
    out_dir = None if reason else prepare_out_dir(Path(args.out))
    pinned = history.read_run(args.pinned) if args.pinned else None
    skipped = []

    def skip(error: history.HistoryError) -> None:
        skipped.append(error)
        _say(f"warning: skipped {error}")

    runs = history.load_history(folder, on_skip=skip)
    if not runs:
        raise FileNotFoundError(f"no usable benchmark runs (*.json) under {args.dir}"
                                + (f" ({len(skipped)} file(s) skipped above)" if skipped else "")
                                + f"; run `pytest -m gpu --benchmark-autosave` or `lpperf bench` (which saves into "
                                f"{DEFAULT_HISTORY}) first")
    groups: dict[str, list[history.Run]] = {}
    for run in runs:
        groups.setdefault("all cards" if args.any_card else (run.card or "no card recorded"), []).append(run)
    kinds = {card: {run_format: [run for run in card_runs if run.format is run_format]  # pytest runs, bench reports
                    for run_format in dict.fromkeys(run.format for run in card_runs)}
             for card, card_runs in groups.items()}
    if pinned is not None and not any(_pinned_applies(pinned, same_kind) for by_kind in kinds.values()
                                      for same_kind in by_kind.values()):
        raise history.HistoryError(
            f"--pinned {args.pinned} is a {pinned.format.value} run of {pinned.card or 'no card recorded'}, and "
            f"{args.dir} holds no run of that card and kind to compare with it; pin a run of a card in the history")
    crept, checked = [], 0
    for card, by_kind in kinds.items():
        print(f"== {card}: {len(groups[card])} run(s)")
        for run in groups[card]:
            print(f"   {run.datetime or '?'}  {run.commit or '-'}  {run.source}")
        for run_format, same_kind in by_kind.items():
            if len(same_kind) < 2:
                print(f"   (one {run_format.value} run: nothing to compare yet)")
                continue
            print(f"-- latest {run_format.value} run vs the one before ({card}):")
            print_comparison(_compare(same_kind[-2], same_kind[-1], args.threshold, args.any_card))
            if args.creep_limit is not None:
                kept = pinned if _pinned_applies(pinned, same_kind) else None
                findings = trends.creep(same_kind, pinned=kept, best_of=args.best_of, limit=args.creep_limit)
                print(f"-- creep: latest {run_format.value} run vs the best of the {args.best_of} before it"
                      + (f" and vs the pinned run {kept.source}:" if kept else ":"))
                print(trends.format_creep(findings, args.best_of))
                crept += [f"{card}: {item.name}" for item in findings if item.flagged]
                checked += sum(item.checked for item in findings)

    if reason:
        _say(f"trend charts skipped: {reason}")
    else:
        written = charts.trend_charts(groups, out_dir)
        print(f"\n{len(written)} trend chart(s) in {args.out} (dashed lines: change points)")
    if args.creep_limit is not None and not crept:  # a creep measured among the readable runs stands
        _require_creep_verdict(skipped, checked)
    if crept:
        _say(f"lpperf history: FAILED: {len(crept)} benchmark(s) crept more than {history.percent(args.creep_limit)} "
             f"above the best of the {args.best_of} runs before or the pinned run: " + history.names_text(crept))
        return Exit.REGRESSED
    return 0


def _require_creep_verdict(skipped: list, checked: int) -> None:
    """A creep check that flagged nothing passes only where it read the whole history and held a benchmark
    against an earlier time; otherwise it stops with exit 2, saying why."""
    if skipped:
        raise history.HistoryError(
            f"no creep verdict: {len(skipped)} file(s) of the history could not be read (named above), and the "
            "latest run may be among them; repair or remove them, then run again")
    if not checked:
        raise history.HistoryError(
            "no creep verdict: no benchmark of a latest run has an earlier run (or the pinned run) to hold it "
            "against: creep needs two runs of a card and kind with a benchmark in common; record another run "
            "first, or leave out --creep-limit until the history has one")


# ---------------------------------------------------------------------------------------------- animate

def cmd_animate(args) -> int:
    import itertools

    from lpperf.animation import pipeline
    from lpperf.models import sample
    from lpperf.optimize import recipes

    recipes.lookup(args.recipe)
    if args.synthetic and args.weights is not None:
        raise UsageError("lpperf animate: --synthetic and --weights both choose the weights; give one of them "
                         "(--synthetic is --weights synthetic)")
    if args.sample and (args.source or args.driving):
        raise UsageError("lpperf animate: --sample uses the shipped portrait and driving frames; give either "
                         "--sample or --source and --driving")
    if not args.sample and not (args.source and args.driving):
        raise UsageError("lpperf animate: give --source IMAGE and --driving VIDEO_OR_FOLDER, or --sample (the "
                         "portrait and driving frames that ship with lpperf)")
    weights_source = "synthetic" if args.synthetic or (args.sample and args.weights is None) else args.weights
    if weights_source is None:
        raise UsageError("lpperf animate: give --weights DIR (official checkpoints) or --weights synthetic "
                         "(or --synthetic)")
    pipeline.check_batch_size(args.batch, "--batch")
    device = resolve_device(args.device)
    video.check_video_support()
    out = video.check_video_path(args.out)
    if not args.sample:
        driving_kind = "the driving folder" if Path(args.driving).is_dir() else "the driving video"
        video.check_not_an_input(out, {"the source image": Path(args.source), driving_kind: Path(args.driving)})
    if weights_source != "synthetic":
        weights.official_files(weights_source)
    if args.sample:
        length = args.frames or (sample.DEMO_FRAMES if device.type == "cuda" else sample.CPU_DEMO_FRAMES)
        source, frames, fps = sample.portrait(), sample.driving_frames(length), sample.FRAMES_PER_SECOND
        _say(f"source and driving frames: the shipped sample (lpperf.models.sample: a portrait, and {length} frames of "
             "head motion, blinks and mouth movement made from it; --frames N for another length)")
    else:
        source = video.read_image(args.source)
        driving = video.DrivingSource(args.driving)
        frames, fps = driving.frames(), driving.fps
    if args.frames is not None:
        frames = itertools.islice(frames, args.frames)

    with files.termination_as_interrupt():  # SIGTERM, SIGHUP: the partial video is removed as on Ctrl-C
        networks = weights.load_networks(weights_source, device)
        if not networks.official_weights:
            _say(MEANINGLESS)
        _say(f"networks: {networks.description}")
        engine = recipes.build(args.recipe, networks.nets, device)
        del networks
        animator = engine.animator(source)
        report = engine.report()
        _say(f"recipe {args.recipe} on {device}: applied {report['applied'] or 'nothing'}"
             + "".join(f"; skipped {name}: {why}" for name, why in report["skipped"].items()))

        start = time.perf_counter()
        with video.VideoWriter(out, fps) as writer:
            for frame in animator.animate(frames, batch_size=args.batch):
                writer.write(video.frame_to_array(frame))
                if writer.frames_written % 25 == 0:
                    _say(f"{writer.frames_written} frames, "
                         f"{writer.frames_written / (time.perf_counter() - start):.1f} frames/s")
    elapsed = time.perf_counter() - start
    print(f"wrote {out}: {writer.frames_written} frames at {float(fps):g} frames/s; "
          f"{writer.frames_written / elapsed:.2f} frames/s end to end on {device} (decode + animate + encode)")
    return 0


# ------------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lpperf", description="Fast, honestly measured LivePortrait inference.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    device_help = f"{DEVICES} (auto: CUDA if available, else the CPU)"

    from lpperf.reports.bench import MAX_BATCH, MAX_PARITY_FRAMES, MAX_REPEATS, MAX_WARMUP

    bench = commands.add_parser("bench", help="measure fp32 eager and the recipes on the sample data")
    bench.add_argument("--device", default="auto", type=device_name, help=device_help)
    bench.add_argument("--recipes", nargs="+", metavar="NAME",
                       help="recipes to measure (fp32-eager is added first as the baseline; on CUDA the "
                            "modules-only peers last, so that 'vs peer' divides by the strongest peer); default: "
                            "the waterfall and peer rows on CUDA, fp32-eager and fast on the CPU")
    bench.add_argument("--batch", nargs="+", type=at_least(1, most=MAX_BATCH), default=[1], metavar="N",
                       help=f"driving frames per step, at most {MAX_BATCH} (a step holds its whole batch of frames, "
                            "outputs and activations on the card at once); several values run every row per "
                            "batch size")
    bench.add_argument("--weights", metavar="DIR", help="official checkpoints (default: synthetic weights)")
    bench.add_argument("--out", default="lpperf-report", metavar="DIR",
                       help="report folder (default %(default)s): report.json and the charts replace the previous "
                            "report's as a set (all new or, if writing fails, all old); other files there are kept")
    history_choice = bench.add_mutually_exclusive_group()
    history_choice.add_argument("--history", default=DEFAULT_HISTORY, metavar="DIR",
                                help="also save the report under DIR/<card>/lpperf-bench/, where `lpperf history` "
                                     "reads it (default %(default)s)")
    history_choice.add_argument("--no-history", dest="history", action="store_const", const="",
                                help="do not save the report into the history")
    bench.add_argument("--repeats", type=at_least(1, most=MAX_REPEATS), metavar="N",
                       help=f"exactly N timed repeats per row and stage, at most {MAX_REPEATS} (the default rule "
                            "stops between 20 and 300 on a GPU)")
    bench.add_argument("--warmup", type=at_least(0, most=MAX_WARMUP), metavar="N",
                       help=f"warm-up calls per row and stage, at most {MAX_WARMUP} (default 5 on a GPU, 1 on the "
                            "CPU)")
    bench.add_argument("--parity-frames", type=at_least(1, most=MAX_PARITY_FRAMES), metavar="N",
                       help=f"frames compared with the float32 reference, at most {MAX_PARITY_FRAMES} (each "
                            "runs through the reference and every row, and is kept in host memory)")
    bench.set_defaults(handler=cmd_bench)

    compare = commands.add_parser("compare", help="compare two benchmark runs (pytest-benchmark JSON or "
                                                   "lpperf bench report)")
    compare.add_argument("baseline", metavar="A", help="the older run")
    compare.add_argument("current", metavar="B", help="the newer run")
    compare.add_argument("--threshold", type=_fraction_below_one, default=0.10, metavar="FRACTION",
                         help="change reported as faster/slower, in [0, 1) (default 0.10 = 10%%)")
    compare.add_argument("--fail-above", type=_fraction_below_one, metavar="FRACTION",
                         help="exit with status 1 when any benchmark's median is more than FRACTION slower in B "
                              "than in A (0.10 = 10%%), a time that did not settle (~) included; status 2 when a "
                              "benchmark of A is not in B (renamed or dropped); without it compare only reports "
                              "and exits 0 (2 when no benchmark is in both runs)")
    compare.add_argument("--allow-missing", action="store_true",
                         help="with --fail-above: gate only the benchmarks in both runs (those of A not in B are "
                              "listed)")
    compare.add_argument("--any-card", action="store_true", help="allow runs of different cards")
    compare.set_defaults(handler=cmd_compare)

    hist = commands.add_parser("history", help="trends of the benchmark history, per card")
    hist.add_argument("dir", nargs="?", default=DEFAULT_HISTORY,
                      help="history folder: pytest-benchmark runs and lpperf bench reports (default %(default)s)")
    hist.add_argument("--out", default="lpperf-history", metavar="DIR", help="chart folder (default %(default)s)")
    hist.add_argument("--threshold", type=_fraction_below_one, default=0.10, metavar="FRACTION",
                      help="change counted as real, in [0, 1) (default 0.10 = 10%%)")
    hist.add_argument("--any-card", action="store_true", help="put all cards in one series (not with --creep-limit)")
    hist.add_argument("--creep-limit", type=_fraction_below_one, metavar="FRACTION",
                      help="exit with status 1 when a benchmark of a card's latest run is more than FRACTION slower "
                           "than the best of the --best-of runs before it (slow creep past each merge's gate); with "
                           "none flagged, status 2 (no verdict) when a history file could not be read or no benchmark "
                           "had an earlier time")
    hist.add_argument("--best-of", type=at_least(1), default=10, metavar="K", help="runs --creep-limit "
                      "compares with (default %(default)s)")
    hist.add_argument("--pinned", metavar="FILE", help="with --creep-limit: a recorded run (a release's) that the "
                      "latest run of the same card and kind is also compared with")
    hist.set_defaults(handler=cmd_history)

    from lpperf.animation import pipeline
    from lpperf.models import sample

    animate = commands.add_parser("animate", help="animate a pre-cropped 256x256 portrait with a driving video")
    animate.add_argument("--source", metavar="IMAGE", help="the portrait: a 256x256 crop around the face (lpperf "
                         "never crops or resizes)")
    animate.add_argument("--driving", metavar="VIDEO_OR_FOLDER", help="a video or a folder of frame images, "
                         "256x256 crops like the source")
    animate.add_argument("--sample", action="store_true", help="animate the shipped sample portrait with the "
                         "shipped driving frames (instead of --source and --driving; synthetic weights unless "
                         "--weights is given)")
    animate.add_argument("--weights", metavar="DIR", help="official checkpoints folder, or 'synthetic'")
    animate.add_argument("--synthetic", action="store_true", help="synthetic weights (meaningless output): the "
                         "same as --weights synthetic")
    animate.add_argument("--out", required=True, metavar="OUT.mp4", help="video to write (.mp4 only: 512x512 "
                         "H.264); never one of the inputs")
    animate.add_argument("--recipe", default="fast", help="optimization recipe (default %(default)s)")
    animate.add_argument("--device", default="auto", type=device_name, help=device_help)
    animate.add_argument("--batch", type=at_least(1), default=1, help="driving frames per step, 1 to "
                         f"{pipeline.MAX_BATCH_SIZE} (default 1)")
    animate.add_argument("--frames", type=at_least(1), metavar="N", help="animate only the first N driving "
                         f"frames (default: all; with --sample, {sample.DEMO_FRAMES} on a GPU and "
                         f"{sample.CPU_DEMO_FRAMES} on the CPU)")
    animate.set_defaults(handler=cmd_animate)

    gate_command.add_parser(commands)  # lpperf gate (lpperf/gate/command.py)
    profile.add_parser(commands)  # lpperf profile (lpperf/reports/profile.py)
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
        return exit_request.code if isinstance(exit_request.code, int) else Exit.ERROR
    except UsageError as error:
        _say(_one_line(error))
        return Exit.ERROR
    except KeyboardInterrupt:
        _say("lpperf: interrupted (Ctrl-C); unfinished output files were removed")
        return Exit.INTERRUPTED
    except torch.cuda.OutOfMemoryError as error:
        if show_traceback:
            raise
        _say(f"lpperf: error: the card ran out of memory: give a smaller --batch where the command has one, or free "
             f"the card (nvidia-smi lists what holds it), then run again. torch said: {_one_line(error)}")
        return Exit.ERROR
    except (OSError, ValueError, RuntimeError, history.HistoryError) as error:
        if show_traceback:
            raise
        _say(f"lpperf: error: {_one_line(error)}")
        return Exit.ERROR
    except Exception as error:  # noqa: BLE001 - a crash is exit 2: exit 1 means regressed (compare, history, gate)
        if show_traceback:
            raise
        command = next((word for word in argv if not word.startswith("-")), "")
        _say(f"lpperf {command}: unexpected {type(error).__name__}: {_one_line(error)} (a failure, not a verdict; "
             f"lpperf --traceback {command} ... shows where)")
        return Exit.ERROR


if __name__ == "__main__":
    raise SystemExit(main())
