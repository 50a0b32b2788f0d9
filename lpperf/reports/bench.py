"""The recipe waterfall: each row adds one optimization; speed, memory and parity side by side.

Every row is measured in the same process on the same card, on the sample portrait and driving
sequence, against the float32 reference (TF32 off) on the same weights (lpperf.measure.frame):

    rows = bench.waterfall_rows("fastest") + bench.peer_rows() + bench.variant_rows()
    results = bench.run(rows, nets, device="cuda", config=bench.BenchConfig(batch=1))
    print(bench.format_table(results, title="batch 1 on an H200"))
    data = bench.report(results, environment, config, weights="synthetic")  # report.json

Per row: ms per frame (median and p90 of CUDA-event samples after warm-up; a row whose samples did
not settle is marked, and so is every speedup computed from its time), frames/s, speedup over the first
row and over the strongest peer (the fastest peer row of the run the row can fairly be compared with: one
given no more driving frames ahead than the row), achieved TFLOP/s (checked against the card's measured
peak: a faster-than-physics number raises), NVML process memory and torch's peak, parity (PSNR,
largest 8-bit difference, NaN/Inf count), compile time (kept apart) and the time of each stage run
alone (as lpperf.measure.frame.time_stages measures it, with whether it settled).

The peers are what a user gets from the official code: its app's autocast, its speed script's `.half()`
+ torch.compile per network, timed as a whole step (M, keypoint math, S, W, G) and, as the speed script
times them, as its modules M, W and G each alone on the frame's inputs, summed (the modules-only peer:
no work between the networks, so the smallest of the peer measures). A recipe that batches M over driving
frames known ahead (`fastest-motion-ahead`) is compared with the same modules given that batching
(`official-motion-ahead`). "vs peer" divides by whichever comparable peer row was fastest in the run, and
the table says which.

`lpperf bench` writes a report folder with report_folder(): report.json and the charts replace the
previous report's files as a set, or, if writing fails, the previous report stays as it was.

Over 400 lines as one module: rows, their measurement, the table and the report folder all describe one
RowResult.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lpperf.animation import pipeline
from lpperf.measure import frame, memory, parity, roofline, timing
from lpperf.optimize import recipes, steps
from lpperf.reports import charts, history
from lpperf.optimize.steps import Step
from lpperf.util.validation import check_positive_int

log = logging.getLogger(__name__)

BASELINE_ROW = "fp32 eager"
PEER_LABELS = {"autocast-fp16": "peer: autocast fp16 eager (official app)",
               "official-default": "peer: .half() + compile per net (official, mode=default)",
               "official-reduce-overhead": "peer: .half() + compile per net, reduce-overhead",
               "official-tuned": "peer: as above + cudnn.benchmark (tuned)"}
# The official speed script's measure: its networks, .half() + compile, each alone on the frame's inputs.
MODULES_PEER_RECIPE = "official-reduce-overhead"
MODULES_PEER_ROW = "peer: official modules M + W + G alone, reduce-overhead (speed-script measure)"
# The same given the driving frames ahead, as lpperf's motion-ahead recipe is: M over 16 frames in one call.
MODULES_AHEAD_PEER_RECIPE = "official-motion-ahead"
MODULES_AHEAD_PEER_ROW = "peer: official modules alone, M batched ahead over 16 frames (speed-script measure)"
VARIANT_RECIPES = ("fast-bf16", "fastest-motion-ahead")
BASELINE_RECIPE = "fp32-eager"  # always the first row: speedups are over it
CPU_DEFAULT_RECIPES = (BASELINE_RECIPE, "fast")
UNSETTLED = charts.UNSETTLED  # marks a time whose samples did not settle before the stopping rule's cap
GPU_RULE = timing.StoppingRule(min_repeats=20, min_seconds=0.5, max_rel_iqr=0.05, max_repeats=300, max_seconds=15.0)
CPU_RULE = timing.StoppingRule(min_repeats=5, min_seconds=0.0, max_rel_iqr=0.10, max_repeats=25, max_seconds=10.0)
CPU_STAGE_RULE = timing.StoppingRule(min_repeats=3, min_seconds=0.0, max_rel_iqr=0.10, max_repeats=10,
                                     max_seconds=2.0)
# Upper bounds of the sizes a run takes, refused before anything loads: past them a run only exhausts memory
# or time. A step holds its whole batch of driving frames, outputs and activations on the card at once.
MAX_BATCH = 256
# Each parity frame runs through the reference and every row and is kept on the host (3 MiB at 512x512).
MAX_PARITY_FRAMES = 64
MAX_REPEATS = 10_000  # timed samples per row and stage; the default rule takes 20-300
MAX_WARMUP = 1_000  # untimed calls per row and stage; the default is 5


@dataclasses.dataclass(frozen=True)
class Row:
    """One waterfall row: a name and the complete list of steps it runs."""

    name: str
    steps: tuple[Step, ...]
    recipe: str = ""  # the recipe the row measures whole; "" for a waterfall prefix
    peer: bool = False  # a measure of the official code: "vs peer" divides by the fastest such row
    # Networks timed each alone on the frame's inputs and summed (frame.modules_alone), instead of the step
    modules: tuple[str, ...] = ()


def recipe_row(name: str, label: str = "") -> Row:
    """The recipe's whole step as a row; the official code's recipes (PEER_LABELS) are peers."""
    return Row(label or name, recipes.lookup(name).steps, recipe=name, peer=name in PEER_LABELS)


def waterfall_rows(recipe: str = "fastest") -> list[Row]:
    """The segment-anything-fast style waterfall: fp32 eager, then each prefix of the recipe's steps
    (each row is the previous plus one step), the last row the whole recipe. A reduce-overhead compile
    (torch.compile plus CUDA graphs) is shown twice: its mode="default" twin first (the compile alone)."""
    chosen = recipes.lookup(recipe).steps
    rows, before = [recipe_row(BASELINE_RECIPE, BASELINE_ROW)], ()  # fp32-eager: no steps
    for step in chosen:
        if step.compile_mode == "reduce-overhead":
            twin = step.with_compile_mode("default")
            rows.append(Row(twin.label, before + (twin,)))
        before += (step,)
        rows.append(Row(step.label, before))
    if chosen:
        rows[-1] = Row(f"{rows[-1].name} = {recipe}", chosen, recipe=recipe)
    return rows


def peer_rows() -> list[Row]:
    """The official code's settings as whole steps (its app's, its speed script's and a tuning user's),
    then the modules-only peers: the speed script's compiled networks M, W, G each alone, summed, as
    shipped and with M batched ahead (the peer of lpperf's motion-ahead recipe)."""
    rows = [recipe_row(name, label) for name, label in PEER_LABELS.items()]
    return rows + [Row(label, recipes.lookup(recipe).steps, recipe=recipe, peer=True, modules=frame.PEER_MODULES)
                   for recipe, label in ((MODULES_PEER_RECIPE, MODULES_PEER_ROW),
                                         (MODULES_AHEAD_PEER_RECIPE, MODULES_AHEAD_PEER_ROW))]


def modules_peer_rows(motion_ahead: bool) -> list[Row]:
    """The modules-only peers: as shipped, then, where the measured recipes batch M ahead, given the same."""
    return [row for row in peer_rows() if row.modules and (motion_ahead or row.recipe != MODULES_AHEAD_PEER_RECIPE)]


def variant_rows() -> list[Row]:
    """lpperf's own recipes measured beside the waterfall: variants of the fastest one."""
    return [recipe_row(name) for name in VARIANT_RECIPES]


def default_rows(device: torch.device, names: Sequence[str] = ()) -> list[Row]:
    """What `lpperf bench` measures: the named recipes, fp32-eager first as the baseline, and on CUDA the
    modules-only peers last (with M batched ahead only where a named recipe batches it), so that "vs
    peer" divides by the strongest peer; without names the waterfall, peer and variant rows on CUDA,
    fp32-eager and fast on the CPU."""
    if names:
        names = list(dict.fromkeys(names))
        rows = [recipe_row(name) for name in ([] if BASELINE_RECIPE in names else [BASELINE_RECIPE]) + names]
        if device.type != "cuda":
            return rows
        return rows + modules_peer_rows(any(steps.motion_ahead in row.steps for row in rows))
    if device.type == "cuda":
        return waterfall_rows() + peer_rows() + variant_rows()
    return [recipe_row(name) for name in CPU_DEFAULT_RECIPES]


def default_config(device: torch.device, batch: int) -> BenchConfig:
    """The full stopping rule on CUDA; on the CPU a smoke run with few repeats, whose noise shows as
    "not converged" rows."""
    if device.type == "cuda":
        return BenchConfig(batch=batch)
    return BenchConfig(batch=batch, warmup=1, parity_frames=2, rule=CPU_RULE, stage_rule=CPU_STAGE_RULE)


@dataclasses.dataclass
class RowResult:
    """One measured row. Times are per frame (a timed round's median over the frames it makes: one step's
    batch, or with motion ahead that many frames); None where not measured."""

    name: str
    recipe: str
    batch: int
    precision: str
    applied: list[str]
    skipped: dict[str, str]
    timing: timing.TimingResult | None
    ms_per_frame: float
    p90_ms_per_frame: float
    frames_per_second: float
    converged: bool  # the samples settled (IQR/median within the rule) before a cap stopped them
    tflops: float | None
    compile_seconds: float | None
    memory: memory.MemoryReport | None  # while the step is timed: what running the row needs
    memory_unavailable: str  # why memory is None
    parity: parity.ParityReport | None
    parity_failures: list[str]
    stage_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # batch 1, see stage_clock
    stage_converged: dict[str, bool] = dataclasses.field(default_factory=dict)  # per stage of stage_ms
    stage_clock: str = ""  # what stage_ms measures (lpperf.measure.frame.stage_clock)
    peer: bool = False  # a measure of the official code (Row.peer)
    # driving frames the row's M ran over at once ahead of their steps (Engine.motion_ahead; 1 where the
    # batch is at least that: M then runs inside each step)
    motion_ahead: int = 1
    # A modules row (Row.modules): each network's median alone, per batch, in the order of the row's sum
    module_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    # build, parity frames and the first step at the timed shape: compile, cuDNN's algorithm search
    startup_memory: memory.MemoryReport | None = None
    speedup: float | None = None  # over the first row of the run
    speedup_vs_peer: float | None = None  # over the strongest peer row of the run (strongest_peer), if any
    # A ratio of two times is settled only if both are: False where the other time (the first row's, the
    # peer row's) did not settle either; set with the speedups.
    speedup_converged: bool = True
    speedup_vs_peer_converged: bool = True
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}


def _plain(value):
    return value.to_dict() if hasattr(value, "to_dict") else value


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    batch: int = 1
    warmup: int = 5
    rule: timing.StoppingRule = GPU_RULE
    parity_frames: int = frame.PARITY_FRAMES
    stages: bool = True  # also time F, M, S, W, G alone per row
    stage_rule: timing.StoppingRule = frame.STAGE_RULE

    def __post_init__(self) -> None:
        check_positive_int(self.batch, "BenchConfig.batch")
        check_positive_int(self.parity_frames, "BenchConfig.parity_frames (frames compared with the reference)")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"BenchConfig.warmup must be an int >= 0, got {self.warmup!r}")


def measure_row(row: Row, nets: dict, device: torch.device, config: BenchConfig, reference: torch.Tensor | None,
                flops_per_frame: float | None, peak: roofline.PeakThroughput | None) -> RowResult:
    """Build the row's engine, run the first frames for parity, time the per-frame step with NVML
    tracking the process's GPU memory (where NVML is usable), then time each stage alone. A row of
    modules times its networks each alone instead (frame.modules_alone): no frame, so no parity."""
    # The card's use before the row is built: where NVML does not list this process, both trackers count
    # the row's memory from here (its weights, compiled graphs, workspaces), not from their own start.
    before_row = _device_used_before(device)
    engine = recipes.build(row.steps, nets, device)
    precision = engine.precision
    # Start-up (compile, cuDNN's algorithm search at each shape, CUDA-graph recording) and the steady
    # state are tracked apart: the start-up's transients say nothing about what running the row needs.
    with contextlib.ExitStack() as stack:
        startup, memory_unavailable = _track_memory(stack, device, before_row)
        if row.modules:
            animator, outputs = None, None
            work = frame.modules_alone(engine, config.batch, row.modules, offset=config.parity_frames)
        else:
            animator = frame.sample_animator(engine)
            outputs = frame.run_frames(animator, config.parity_frames)
            work = frame.step_work(animator, config.batch, offset=config.parity_frames)
        first_calls_s = sum(timing.host_call_s(call, device) for call in work.calls.values())  # compile, timed shapes
    with contextlib.ExitStack() as stack:
        tracker, _ = _track_memory(stack, device, before_row)
        result = timing.time_parts(work.calls, device, warmup=config.warmup, rule=config.rule)
    driving = frame.driving_batch(1, offset=config.parity_frames).to(device)
    stages = (frame.time_stages(animator, driving, device, warmup=config.warmup, rule=config.stage_rule)
              if config.stages and animator is not None else {})

    parity_report, failures = None, []
    if reference is not None and outputs is not None:
        parity_report = parity.compare({}, {}, outputs, reference, precision=precision)
        failures = parity_report.failures(parity.Tolerance.for_precision(precision))
    per_frame_s = result.stats.median_s / work.frames
    tflops = None
    if flops_per_frame and not row.modules:  # the modules alone do only part of a frame's work
        tflops = (roofline.check(flops_per_frame, per_frame_s, peak, label=f"waterfall row {row.name!r}")
                  if peak is not None else roofline.achieved_tflops(flops_per_frame, per_frame_s))
    return RowResult(
        name=row.name, recipe=row.recipe, batch=config.batch, precision=precision, peer=row.peer,
        motion_ahead=engine.motion_ahead if pipeline.steps_per_template(engine.motion_ahead, config.batch) > 1 else 1,
        applied=engine.report()["applied"], skipped=dict(engine.skipped), timing=result,
        ms_per_frame=per_frame_s * 1e3, p90_ms_per_frame=result.stats.p90_s / work.frames * 1e3,
        frames_per_second=1.0 / per_frame_s, converged=result.converged, tflops=tflops,
        compile_seconds=engine.compile_seconds if animator is not None else first_calls_s,
        memory=None if tracker is None else tracker.report, memory_unavailable=memory_unavailable,
        startup_memory=None if startup is None else startup.report,
        parity=parity_report, parity_failures=failures,
        stage_ms={stage: measured.median_ms for stage, measured in stages.items()},
        stage_converged={stage: measured.converged for stage, measured in stages.items()},
        stage_clock=frame.stage_clock(device) if stages else "",
        module_ms={stage: stats.median_s / work.frames * 1e3 for stage, stats in result.parts.items()}
        if row.modules else {})


def _track_memory(stack: contextlib.ExitStack, device: torch.device,
                  baseline_bytes: int | None) -> tuple[memory.MemoryTracker | None, str]:
    """An NVML tracker entered on `stack`, or None and the reason there is none."""
    if device.type != "cuda":
        return None, "memory is measured through NVML on CUDA devices only"
    availability = memory.available()
    if not availability:
        return None, availability.reason
    return stack.enter_context(memory.track_peak_memory(device, baseline_bytes=baseline_bytes)), ""


def _device_used_before(device: torch.device) -> int | None:
    """The card's used memory now, or None where NVML cannot be read (the trackers then say why)."""
    if device.type != "cuda" or not memory.available():
        return None
    return memory.device_used_now(device)


def run(rows: Sequence[Row], nets: dict, device: str | torch.device = "cuda", config: BenchConfig = BenchConfig(),
        progress: Callable[[str], None] = log.info) -> list[RowResult]:
    """Measure every row in order; speedups are over the first row and the strongest peer of this one run."""
    device = torch.device(device)
    progress("counting FLOPs per frame")
    flops = frame.flops_per_frame(nets)
    peak = None
    if device.type == "cuda":
        progress("measuring the card's matmul peak")
        peak = roofline.measure_peak(device)
    progress("computing the float32 reference frames (TF32 off)")
    reference = frame.reference_frames(nets, device, config.parity_frames)
    memory.release_cached_memory()
    results = []
    for row in rows:
        progress(f"row: {row.name}")
        try:
            results.append(measure_row(row, nets, device, config, reference, flops, peak))
        except torch.cuda.OutOfMemoryError as error:
            results.append(_failed_row(row, config, f"out of GPU memory: {error}"))
        memory.release_cached_memory()
    _set_speedups(results)
    return results


def strongest_peer(results: Sequence[RowResult], row: RowResult | None = None) -> RowResult | None:
    """The fastest measured peer row that `row` can fairly be compared with: one given no more driving
    frames ahead than `row` (a peer batching M over known frames is no measure for a row that steps frame
    by frame). What "vs peer" divides by; without `row`, the fastest peer of all. None if there is none."""
    ahead = math.inf if row is None else row.motion_ahead
    peers = [result for result in results if result.peer and not result.error and result.motion_ahead <= ahead]
    return min(peers, key=lambda result: result.ms_per_frame, default=None)


def _set_speedups(results: Sequence[RowResult]) -> None:
    measured = [result for result in results if not result.error]
    baseline = results[0] if results and not results[0].error else None
    for result in measured:
        peer_result = strongest_peer(results, result)
        result.speedup = None if baseline is None else baseline.ms_per_frame / result.ms_per_frame
        result.speedup_vs_peer = None if peer_result is None else peer_result.ms_per_frame / result.ms_per_frame
        result.speedup_converged = result.converged and (baseline is None or baseline.converged)
        result.speedup_vs_peer_converged = result.converged and (peer_result is None or peer_result.converged)


def _failed_row(row: Row, config: BenchConfig, error: str) -> RowResult:
    return RowResult(name=row.name, recipe=row.recipe, batch=config.batch, precision="", peer=row.peer, applied=[],
                     skipped={},
                     timing=None, ms_per_frame=math.nan, p90_ms_per_frame=math.nan, frames_per_second=math.nan,
                     converged=False, tflops=None, compile_seconds=None, memory=None, memory_unavailable="",
                     parity=None, parity_failures=[], error=error)


# ------------------------------------------------------------------------------------------ the table

COLUMNS = ("recipe", "ms/frame", "p90", "frames/s", "speedup", "vs peer", "TFLOP/s", "NVML MiB", "torch MiB",
           "start MiB",
           "PSNR dB", "max lvl", "NaN/Inf", "compile s")
MEMORY_METHODS = {
    memory.METHOD_PROCESS: "NVML's entry for this process",
    memory.METHOD_DEVICE_DELTA: "the card's used memory minus that before the row was built, other processes "
                                "included, the CUDA context made before not",
}


def format_table(results: Sequence[RowResult], title: str = "") -> str:
    """The rows as a text table, `title` above it and what its marks and memory columns mean below it."""
    # Below 1 TFLOP/s (a CPU run) the column is in GFLOP/s: in TFLOP/s every row would read 0.0.
    achieved = [r.tflops for r in results if r.tflops is not None and math.isfinite(r.tflops)]
    flops_scale, flops_unit = (1.0, "TFLOP/s") if not achieved or max(achieved) >= 1 else (1e3, "GFLOP/s")
    lines = [tuple(flops_unit if column == "TFLOP/s" else column for column in COLUMNS)]
    for r in results:
        frame_parity = r.parity.frame if r.parity is not None else None
        tflops = None if r.tflops is None else r.tflops * flops_scale
        lines.append((
            r.name, _fmt(r.ms_per_frame, 2, _mark(r.converged or bool(r.error))), _fmt(r.p90_ms_per_frame, 2),
            _fmt(r.frames_per_second, 1), _fmt(r.speedup, 2, "x" + _mark(r.converged and r.speedup_converged)),
            _fmt(r.speedup_vs_peer, 2, "x" + _mark(r.converged and r.speedup_vs_peer_converged)), _fmt(tflops, 1),
            _fmt(_mib(r.memory.process_peak_bytes if r.memory else None), 0),
            _fmt(_mib(r.memory.torch_max_reserved_bytes if r.memory else None), 0),
            _fmt(_mib(r.startup_memory.process_peak_bytes if r.startup_memory else None), 0),
            _fmt(frame_parity.psnr_db if frame_parity else None, 1),
            _fmt(frame_parity.max_level_diff if frame_parity else None, 0),
            _fmt(frame_parity.nonfinite_actual if frame_parity else None, 0), _fmt(r.compile_seconds, 1)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    rendered = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line))
                for line in lines]
    rendered.insert(1, "-" * len(rendered[0]))
    notes = [peer_note(results)]
    if any(not (r.converged or r.error) for r in results):
        notes.append(f"{UNSETTLED} not converged: the samples still varied by more than the stopping rule allows "
                     "when it stopped (a speedup is marked when either of its two times is); treat that time and "
                     "every ratio computed from it as noise")
    notes.append(memory_note(results))
    return "\n".join(([title] if title else []) + rendered + notes)


def peer_note(results: Sequence[RowResult]) -> str:
    """What the "vs peer" column divides by: the strongest comparable peer of the run, named."""
    measured = [result for result in results if not result.error]
    peers = {}  # the peer a row is divided by -> how many frames ahead the rows it serves batch M over
    for result in measured:
        peer = strongest_peer(results, result)
        if peer is not None:
            peers.setdefault(id(peer), (peer, set()))[1].add(result.motion_ahead)
    if not peers:
        return "vs peer: '-', no peer row was measured in this run (the peers are rows named 'peer: ...')"
    if len(peers) == 1:
        (peer, _), = peers.values()
        return (f"vs peer: speedup over the strongest (fastest) peer measure of this run, {peer.name!r} "
                f"({peer.ms_per_frame:.2f} ms/frame)")
    parts = []
    for peer, aheads in peers.values():
        rows = ("rows stepping frame by frame" if aheads == {1} else
                "rows with M batched ahead over " + ", ".join(str(n) for n in sorted(aheads) if n > 1) + " frames")
        parts.append(f"for {rows}, {peer.name!r} ({peer.ms_per_frame:.2f} ms/frame)")
    return ("vs peer: speedup over the strongest (fastest) peer measure of this run given no more driving "
            "frames ahead than the row: " + "; ".join(parts))


def memory_note(results: Sequence[RowResult]) -> str:
    """What the memory columns (and the memory chart) hold, or why they are empty."""
    methods = list(dict.fromkeys(r.memory.method for r in results if r.memory is not None))
    if not methods:
        reason = next((r.memory_unavailable for r in results if r.memory_unavailable), "no row was measured")
        return f"NVML MiB, torch MiB, start MiB: not measured ({reason})"
    how = "; ".join(MEMORY_METHODS.get(method, method) for method in methods)
    return (f"NVML MiB: the process's peak GPU memory while the step is timed, sampled through NVML ({how}): "
            "everything it holds on the card, the CUDA context, cuDNN and cuBLAS workspaces and torch's cache "
            "included; torch MiB: torch's peak reserved memory over the same calls (torch.cuda.max_memory_reserved: "
            "its caching allocator only); start MiB: the NVML peak of the start-up (build, parity frames, the first "
            "step at the timed shape: compile and cuDNN's algorithm search, whose trial workspaces are handed back "
            "after it)")


def _mark(settled: bool) -> str:
    return "" if settled else UNSETTLED


def _fmt(value: Any, digits: int, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if value == math.inf else "-"
    return f"{value:.{digits}f}{suffix}"


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


# ----------------------------------------------------------------------------------------- the report

REPORT_JSON = "report.json"
# The files of one report: replaced as a set, so a report folder never mixes two runs. Other files in the
# folder are not lpperf's and are left alone.
REPORT_FILES = frozenset({REPORT_JSON, *(f"{name}.png" for name in charts.BENCH_CHARTS)})


@contextlib.contextmanager
def report_folder(folder: Path) -> Iterator[Path]:
    """A hidden staging folder inside `folder` to write one report's files (REPORT_FILES) into.

    When the block succeeds they replace the previous report's files as a set: a file of the previous
    report that this one lacks goes too, files that are not a report's stay. When it fails (a full disk,
    Ctrl-C) the previous report is left exactly as it was and nothing of the new one remains. An OSError
    is raised again naming the folder, the file and what to do.
    """
    folder = Path(folder)
    try:
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".lpperf-report-", suffix=".partial"))
    except OSError as error:
        raise _report_error(folder, error) from None
    try:
        yield staging
        _replace_report_files(folder, staging)
    except OSError as error:
        raise _report_error(folder, error) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_report_files(folder: Path, staging: Path) -> None:
    """Moves the previous report's files aside, the new ones in, then drops the previous ones; a failure
    on the way (renames need no free space, but a folder can vanish or turn read-only) puts them back."""
    new = sorted(path.name for path in staging.iterdir())
    strangers = [name for name in new if name not in REPORT_FILES]
    if strangers:  # a file lpperf would never replace or remove again
        raise ValueError(f"{strangers[0]} is not one of the files an lpperf report holds "
                         f"({', '.join(sorted(REPORT_FILES))}); add it to bench.REPORT_FILES")
    previous = Path(tempfile.mkdtemp(dir=folder, prefix=".lpperf-report-", suffix=".previous"))
    moved_aside, moved_in = [], []
    try:
        for name in sorted(REPORT_FILES):
            if (folder / name).exists():
                os.replace(folder / name, previous / name)
                moved_aside.append(name)
        for name in new:
            os.replace(staging / name, folder / name)
            moved_in.append(name)
    except BaseException:
        for name in moved_in:
            os.replace(folder / name, staging / name)
        for name in moved_aside:
            os.replace(previous / name, folder / name)
        previous.rmdir()
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _report_error(folder: Path, error: OSError) -> OSError:
    what = error.strerror or str(error)
    if error.filename:
        what += f", writing {Path(error.filename).name}"
    return OSError(f"cannot write the report into {folder} ({what}); the previous report there is unchanged; "
                   "free some space or choose another --out")


def report(results: Sequence[RowResult], environment: dict, config: dict, weights: str) -> dict:
    """The JSON report: a run lpperf.reports.history reads (its `benchmarks`, one per measured row and batch)
    plus every row in full. NaN and infinity become null."""
    benchmarks = []
    for result in results:
        if result.error or result.timing is None:
            continue  # failed rows stay in `rows` with their error, not in the comparable benchmarks
        stats = result.timing.stats
        benchmarks.append(history.BenchmarkResult(
            name=f"{result.name} [batch {result.batch}]", median_s=result.ms_per_frame / 1e3,
            mean_s=stats.mean_s / result.batch, min_s=stats.min_s / result.batch, max_s=stats.max_s / result.batch,
            rounds=stats.count))
    run_record = history.Run(
        source="lpperf bench", format=history.RunFormat.LPPERF_REPORT, card=environment.get("device_name"),
        commit=_git_commit(), datetime=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        machine_info={"device": environment.get("device"), "torch": environment.get("torch_version"),
                      "weights": weights},  # the networks and weights, for history's trend charts
        results=tuple(benchmarks))
    data = history.report_dict(run_record)
    data.update(environment=environment, config=config, weights=weights,
                rows=[_finite_or_none(result.to_dict()) for result in results])
    return data


def _finite_or_none(value):
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
