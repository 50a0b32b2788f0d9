"""`lpperf gate`: compare the working tree (or --head REF) with --base REF on this card, in one job.

    lpperf gate --base origin/main                    # exit 0 pass, 1 regressed, 2 error, 3 undecided
    lpperf gate --calibrate                           # A/A: this card's noise and what the gate can detect
    lpperf gate --base v0.1.0 --gpus 0,1              # metrics sharded over two identical cards

Refs are exported with `git archive` into a scratch folder (nothing in the checkout changes).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lpperf.gate import checks, controller, report
from lpperf.gate.refs import repository, side
from lpperf.gate.workers import GateError, run_to_the_end
from lpperf.util.devices import device_name
from lpperf.util.exits import Exit
from lpperf.util.files import termination_as_interrupt, write_json

_DEFAULTS = controller.GateConfig()  # the gate's defaults are GateConfig's, stated once


def add_parser(commands) -> None:
    gate = commands.add_parser(
        "gate", help="A/B the working tree against a base ref on this card, in one job (merge gate)",
        description="Both versions run in their own worker process on the same card; their per-frame times "
                    "are interleaved in ABBA rounds and compared with a paired, distribution-free interval. "
                    "Exit codes: 0 pass, 1 regressed, 2 error or interrupted (Ctrl-C, SIGTERM, SIGHUP), "
                    "3 undecided at --max-rounds.")
    gate.add_argument("--base", metavar="REF", help="git ref of the baseline (e.g. origin/main), or a folder holding "
                                                    "another lpperf checkout (`--base .` is an A/A run)")
    gate.add_argument("--head", metavar="REF", help="git ref to test (default: the working tree as it is)")
    gate.add_argument("--calibrate", action="store_true",
                      help="A/A: the head against itself; prints and writes each metric's noise and the smallest "
                           "regression the gate detects")
    gate.add_argument("--recipes", nargs="+", default=list(controller.DEFAULT_RECIPES), metavar="NAME",
                      help="recipes whose whole frames are gated (default: %(default)s)")
    gate.add_argument("--batches", nargs="+", type=_number(int, 1, controller.MAX_BATCH),
                      default=list(controller.DEFAULT_BATCHES), metavar="N",
                      help=f"batch sizes of the gated frames, 1 to {controller.MAX_BATCH} (default: %(default)s)")
    gate.add_argument("--no-stages", action="store_true", help="skip the per-stage metrics (no attribution)")
    gate.add_argument("--gate-stages", action="store_true", help="gate the stages too, not only whole frames")
    gate.add_argument("--threshold", type=_number(float, 0, 1, open_ends=True), default=_DEFAULTS.threshold,
                      help="regression threshold, a fraction in (0, 1) (default %(default)s)")
    gate.add_argument("--alpha", type=_number(float, 0, 0.5, open_ends=True), default=_DEFAULTS.alpha,
                      help="family-wise error per side, in (0, 0.5) (default %(default)s)")
    gate.add_argument("--rounds", type=_number(int, controller.MIN_ROUNDS, controller.MAX_ROUNDS),
                      default=_DEFAULTS.rounds,
                      help=f"ABBA rounds per look, {controller.MIN_ROUNDS} to {controller.MAX_ROUNDS} "
                           "(default %(default)s)")
    gate.add_argument("--max-rounds", type=_number(int, controller.MIN_ROUNDS, controller.MAX_ROUNDS),
                      help=f"stop adding rounds here, at most {controller.MAX_ROUNDS} (default "
                           f"{_DEFAULTS.max_rounds}, or --rounds if larger)")
    gate.add_argument("--processes", type=_number(int, 1, controller.MAX_PROCESSES), default=_DEFAULTS.processes,
                      metavar="K", help="worker pairs per recipe, alternated round by round, so that an offset "
                                        "between two processes widens each interval instead of moving it; each pair "
                                        "needs enough rounds of its own (use --rounds 24 with 2) (default %(default)s)")
    gate.add_argument("--undecided", choices=("fail", "pass"),
                      help="exit code when still undecided at --max-rounds: fail = 3 (default), pass = 0")
    gate.add_argument("--device", default="auto", type=device_name,
                      help="auto, cuda, cuda:N or cpu (the CPU runs are for testing the gate)")
    gate.add_argument("--gpus", help="comma-separated cards to shard the metrics over (default: the first card)")
    gate.add_argument("--weights", metavar="DIR", help="official checkpoints (default: synthetic weights)")
    gate.add_argument("--out", default="lpperf-gate", metavar="DIR",
                      help="folder for gate.json and worker logs (default %(default)s)")
    budgets = gate.add_argument_group("memory, output and start-up, head against base")
    budgets.add_argument("--memory-threshold", type=_number(float, 0, 1, open_ends=(False, True)),
                         default=_DEFAULTS.memory.fraction, metavar="FRACTION",
                         help="memory regressed when the head needs this fraction more than the base (default "
                              "%(default)s) ...")
    budgets.add_argument("--memory-floor-mib", type=_number(float, 0, 1e6), default=_DEFAULTS.memory.floor_mib,
                         metavar="MIB", help="... and more than this many MiB (default %(default)s)")
    budgets.add_argument("--output-frames", type=_number(int, 0, controller.MAX_OUTPUT_FRAMES),
                         default=_DEFAULTS.output_frames, metavar="N",
                         help="batch-1 frames per recipe whose output is compared, plus one batched step; 0 turns "
                              "the output comparison off (default %(default)s)")
    budgets.add_argument("--min-output-psnr", type=_number(float, 0, 1000, open_ends=(True, False)),
                         default=_DEFAULTS.output.min_psnr_db, metavar="DB",
                         help="output changed when the head's frames are below this PSNR against the base's "
                              "(default %(default)s) ...")
    budgets.add_argument("--max-output-levels", type=_number(int, 0, 255), default=_DEFAULTS.output.max_level_diff,
                         metavar="LEVELS", help="... or a pixel moves more than this many 8-bit levels (default "
                                                "%(default)s)")
    budgets.add_argument("--accept-output-change", action="store_true",
                         help="the head is meant to change the output: report the change, do not fail on it (NaN/Inf "
                              "still fails)")
    budgets.add_argument("--startup-threshold", type=_number(float, 0, 10, open_ends=(False, True)),
                         default=_DEFAULTS.startup.fraction, metavar="FRACTION",
                         help="start-up regressed when the head's second build takes this fraction longer than the "
                              "base's (default %(default)s) ...")
    budgets.add_argument("--startup-floor-s", type=_number(float, 0, 3600), default=_DEFAULTS.startup.floor_s,
                         metavar="SECONDS", help="... and more than this many seconds longer (default %(default)s)")
    gate.add_argument("--summary", metavar="FILE",
                      help="also write the verdict tables as Markdown to FILE (with $GITHUB_STEP_SUMMARY set they "
                           "are appended there as well)")
    gate.add_argument("--inject-memory-mib", type=_number(float, 0, 1e6), default=0.0, metavar="MIB",
                      help="TEST ONLY: the head holds this much more GPU memory (checks the memory comparison)")
    gate.add_argument("--inject-output-levels", type=_number(float, 0, 255), default=0.0, metavar="LEVELS",
                      help="TEST ONLY: the head's output frames get noise of this many 8-bit levels (checks the output "
                           "comparison)")
    gate.add_argument("--inject-slowdown", type=_number(float, 0, 1, open_ends=(False, True)), default=0.0,
                      metavar="FRACTION",
                      help="TEST ONLY: the head's frames are made this fraction slower by a GPU spin after each, "
                           "sized by measuring what it adds (checks the gate detects a known regression)")
    gate.add_argument("--prepare-head-first", action="store_true",
                      help="DIAGNOSTIC: build and compile the head before the base (in A/A runs, an offset that "
                           "follows the order, not the side, comes from the preparation)")
    gate.set_defaults(handler=cmd_gate)


def _number(kind, low: float, high: float, open_ends: bool | tuple[bool, bool] = False):
    """An argparse type: a number of `kind` (int or float) within [low, high]; `open_ends` excludes
    both ends, or (low, high) each."""
    low_open, high_open = (open_ends, open_ends) if isinstance(open_ends, bool) else open_ends

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            what = "a whole number" if kind is int else "a number"
            span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {what} in {span}, got {text!r}")
        return value
    return parse


def cmd_gate(args) -> int:
    """Run the gate. Everything that prevents a verdict is a GateError (exit 2, one line): a bad argument
    or ref, a worker that failed, an interruption (Ctrl-C, SIGTERM, SIGHUP) or any unexpected exception;
    exit 1 means regressed only."""
    with termination_as_interrupt(ctrl_c=True, once=True):
        try:
            return _gate(args)
        except GateError:
            raise
        except KeyboardInterrupt as interruption:
            raise GateError(f"interrupted ({str(interruption) or 'Ctrl-C'}); no worker was left running and no verdict "
                            "was written") from None
        except Exception as error:  # noqa: BLE001 - a crash is never a verdict: one line, exit 2
            raise GateError(f"the gate failed, no verdict: {type(error).__name__}: {error} (lpperf --traceback "
                            "gate ... shows where)") from error


def _gate(args) -> int:
    config, metrics, gpus = _checked(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GateError(f"--out {out} is a file; --out must be a folder (gate.json and the worker logs go into it)")
    repo = repository()
    scratch = Path(tempfile.mkdtemp(prefix="lpperf-gate-"))
    try:
        head = side(args.head, repo, scratch)
        base = head if args.calibrate else side(args.base, repo, scratch)
        record_path = out / ("calibration.json" if args.calibrate else "gate.json")
        _prepare_out(out, record_path)
        say = _clock()
        say(f"gate: base {base.label} vs head {head.label} on {', '.join(g or 'cpu' for g in gpus)}; "
            f"{sum(m.gated for m in metrics)} gated metrics, threshold {config.threshold:.1%}")
        result = controller.run_gate(base, head, metrics, config, gpus, out, progress=say)
    finally:
        run_to_the_end(lambda: shutil.rmtree(scratch, ignore_errors=True))
    record = report.to_dict(result)
    if args.calibrate:
        noise = report.calibration(result)
        record["calibration"] = report.calibration_record(noise)
        print(report.format_calibration(noise, result))
        write_json(record, record_path)
        print(f"\ncalibration: {record_path} (gate wall time {result.wall_s:.0f} s)")
        return Exit.PASS
    print(report.format_table(result))
    write_json(record, record_path)
    _write_summary(report.format_markdown(result), args.summary)
    print(f"\ngate: {report.verdict_word(result)} in {result.wall_s:.0f} s; record: {record_path}")
    return result.exit_code


def _write_summary(markdown: str, path: str | None) -> None:
    """The Markdown tables to --summary (replaced) and to GitHub's job summary (appended), if set."""
    import os

    targets = [(Path(path), "w")] if path else []
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        targets.append((Path(os.environ["GITHUB_STEP_SUMMARY"]), "a"))
    for target, mode in targets:
        try:
            with open(target, mode, encoding="utf-8") as handle:
                handle.write(markdown)
        except OSError as error:
            raise GateError(f"cannot write the Markdown summary to {target} ({error.strerror or error}); the verdict "
                            "was measured and is in gate.json") from None


def _checked(args) -> tuple[controller.GateConfig, list[controller.Metric], list[str | None]]:
    """Every argument checked, and conflicts refused, before anything is exported or started."""
    if args.calibrate == bool(args.base):
        raise GateError("give --base REF (compare the working tree or --head with it) or --calibrate (A/A), "
                        "not both and not neither")
    if args.calibrate:
        for option, value in (("--max-rounds", args.max_rounds), ("--undecided", args.undecided),
                              ("--inject-slowdown", args.inject_slowdown or None),
                              ("--inject-memory-mib", args.inject_memory_mib or None),
                              ("--inject-output-levels", args.inject_output_levels or None),
                              ("--accept-output-change", args.accept_output_change or None)):
            if value is not None:
                raise GateError(f"{option} does not apply to --calibrate (an A/A run of exactly --rounds rounds); "
                                f"drop {option}")
    if args.gate_stages and args.no_stages:
        raise GateError("--gate-stages gates the stages that --no-stages skips; give one of them")
    max_rounds = args.max_rounds or max(_DEFAULTS.max_rounds, args.rounds)
    if max_rounds < args.rounds:
        raise GateError(f"--max-rounds {max_rounds} is below --rounds {args.rounds}; give --max-rounds >= --rounds")
    config = controller.GateConfig(
        threshold=args.threshold, alpha=args.alpha, rounds=args.rounds,
        max_rounds=args.rounds if args.calibrate else max_rounds, undecided_fails=args.undecided != "pass",
        weights=args.weights, head_first=args.prepare_head_first,
        memory=checks.MemoryBudget(args.memory_threshold, args.memory_floor_mib),
        output=checks.OutputBudget(args.min_output_psnr, args.max_output_levels, args.accept_output_change),
        startup=checks.StartupBudget(args.startup_threshold, args.startup_floor_s),
        output_frames=args.output_frames, processes=args.processes, inject_slowdown=args.inject_slowdown,
        inject_memory_mib=args.inject_memory_mib, inject_output_levels=args.inject_output_levels)
    if args.weights not in (None, "synthetic"):
        _check_weights_folder(args.weights)
    _check_recipes(args.recipes)
    metrics = controller.default_metrics(args.recipes, args.batches, stages=not args.no_stages,
                                         gate_stages=args.gate_stages)
    if config.processes > 1 and not args.calibrate:
        _check_rounds_per_pair(config, sum(metric.gated for metric in metrics))
    gpus = _gpus(args.device, args.gpus)
    if args.inject_slowdown and gpus == [None]:
        raise GateError("--inject-slowdown spins the GPU, and this run is on the CPU; drop it or run on a card")
    if args.inject_memory_mib and gpus == [None]:
        raise GateError("--inject-memory-mib holds GPU memory, and this run is on the CPU, where memory is not "
                        "compared; drop it or run on a card")
    if args.inject_output_levels and not args.output_frames:
        raise GateError("--inject-output-levels changes the output frames that --output-frames 0 does not compare; "
                        "give --output-frames 1 or more")
    if args.summary and Path(args.summary).is_dir():
        raise GateError(f"--summary {args.summary} is a folder; give a file for the Markdown tables")
    return config, metrics, gpus


def _check_rounds_per_pair(config: controller.GateConfig, gated: int) -> None:
    """Each worker pair's interval needs a least number of its own rounds to close at the per-test alpha;
    with K pairs taking rounds in turn, fewer than K times that number leave every verdict undecided, which
    --rounds alone does not show (one pair with few rounds is the caller's plain choice)."""
    from lpperf.gate import stats

    need = stats.fewest_rounds(stats.per_test_alpha(config.alpha, gated, config.looks))
    per_pair = config.max_rounds // config.processes
    if per_pair < need:
        raise GateError(
            f"with --processes {config.processes}, each worker pair gets {per_pair} of the {config.max_rounds} "
            f"rounds, fewer than the {need} its interval needs at this alpha: every verdict would be undecided; "
            f"give --max-rounds {need * config.processes} or more (and --rounds to match)")


def _check_weights_folder(folder: str) -> None:
    """The five official checkpoint files present (nothing read), before --out is touched or a worker starts."""
    from lpperf.models import weights

    try:
        weights.official_files(folder)
    except (FileNotFoundError, ValueError) as error:
        raise GateError(f"--weights: {error} (or leave --weights out for synthetic weights)") from None


def _check_recipes(names) -> None:
    from lpperf.optimize import recipes

    for name in names:
        try:
            recipes.lookup(name)
        except ValueError as error:
            raise GateError(str(error)) from None


def _gpus(device: str, listed: str | None) -> list[str | None]:
    if device == "cpu":
        if listed:
            raise GateError("--gpus goes with --device cuda or auto, not cpu")
        return [None]
    if device.startswith("cuda:") and listed:
        raise GateError(f"--device {device} names one card and --gpus names cards; give --device cuda --gpus LIST, "
                        "or --device cuda:N alone")
    from lpperf.util.devices import visible_gpus

    visible = visible_gpus()
    if not visible:
        if device != "auto" or listed:
            raise GateError("no CUDA GPU is visible (torch sees none); use --device cpu to exercise the gate")
        return [None]
    if device.startswith("cuda:"):
        index = int(device.split(":")[1])
        if index >= len(visible):
            raise GateError(f"--device {device}: {len(visible)} card(s) are visible, cuda:0 to cuda:{len(visible) - 1}")
        return [visible[index]]
    if not listed:
        return visible[:1]
    chosen = [entry.strip() for entry in listed.split(",") if entry.strip()]
    if len(set(chosen)) != len(chosen):
        raise GateError(f"--gpus names a card twice: {listed}")
    unknown = [entry for entry in chosen if entry not in visible]
    if unknown or not chosen:
        raise GateError(f"--gpus {listed}: {', '.join(unknown) or 'no card'} not among the visible cards "
                        f"({', '.join(visible)})")
    return chosen


def _prepare_out(out: Path, record_path: Path) -> None:
    """The output folder, writable, without an earlier run's record: a run that fails leaves none that
    could be read as its verdict."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        record_path.unlink(missing_ok=True)
    except OSError as error:
        raise GateError(f"--out {out}: cannot write there ({error.strerror or error}); choose a writable folder") \
            from None


def _clock():
    """Progress lines on stderr, each with the seconds since the gate began (where its time goes)."""
    began = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    return say
