"""The recipe waterfall: each row adds one optimization; speed, memory and parity side by side.

Every row is measured in the same process on the same card, on the sample portrait and
driving sequence, against the float32 reference (TF32 off) on the same weights:

    rows = bench.waterfall(nets, device="cuda", batch=1)
    print(bench.format_table(rows))

Per row: ms per frame (median, p90 of CUDA-event samples after warm-up), frames/s,
speedup over the first row, achieved TFLOP/s (checked against the card's measured
peak: a faster-than-physics number raises), NVML process memory and torch's peak,
parity (PSNR, largest 8-bit difference, NaN/Inf count) and compile time, kept apart.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from lpperf import memory, parity, pipeline, recipes, roofline, sample, timing
from lpperf.recipes import Engine

log = logging.getLogger(__name__)

PARITY_FRAMES = 4


@dataclasses.dataclass(frozen=True)
class Row:
    """One waterfall row: a name and the complete list of steps it runs."""

    name: str
    steps: tuple[Callable[[Engine], None], ...]
    precision: str  # the parity tolerance class: fp32, tf32, fp16 or bf16


def waterfall_rows() -> list[Row]:
    """The segment-anything-fast style waterfall: each row is the previous plus one step."""
    r = recipes
    chain: list[tuple[str, Callable[[Engine], None] | None, str]] = [
        ("fp32 eager", None, "tf32"),
        ("+ inference_mode + cudnn.benchmark", None, "tf32"),
        ("+ fold spectral norm", r.fold_spectral_norm, "tf32"),
        ("+ W source cache", r.warp_source_cache, "tf32"),
        ("+ pad W's 3-D conv channels to x8", r.pad_warp_channels, "tf32"),
        ("+ fp16 weights (.half())", r.half, "fp16"),
        ("+ fp32 residual stream in G", r.residual_float32, "fp16"),
        ("+ channels_last", r.channels_last, "fp16"),
        ("+ compile whole step (default)", r.compile_step("default"), "fp16"),
        ("+ CUDA graph (reduce-overhead)", r.compile_step("reduce-overhead"), "fp16"),
    ]
    rows, steps = [], []
    for name, step, precision in chain:
        if name.startswith("+ inference_mode"):
            steps += [r.inference_mode, r.cudnn_benchmark]
        elif step is not None:
            if step.__name__ == "compile_step":
                steps = [s for s in steps if s.__name__ != "compile_step"]
            steps.append(step)
        rows.append(Row(name, tuple(steps), precision))
    return rows


def peer_rows() -> list[Row]:
    """Rows measured beside the waterfall: the official app's and speed script's settings,
    and the bf16 variant of the fastest recipe."""
    labels = {"autocast-fp16": "peer: autocast fp16 eager (official app)",
              "official-default": "peer: .half() + compile per net (official, mode=default)",
              "fast-bf16": "fast-bf16"}
    return [dataclasses.replace(recipe_row(name), name=label) for name, label in labels.items()]


def variant_rows() -> list[Row]:
    """The fast recipe with one step added or removed: what each of its choices is worth."""
    r = recipes
    fast = recipes.RECIPES["fast"].steps
    without = {step.__name__ for step in fast}
    rows = [Row("fast", fast, "fp16"), Row("fast + inductor freezing", fast + (r.inductor_freezing,), "fp16")]
    for removed in ("residual_float32", "channels_last", "warp_source_cache", "pad_warp_channels", "fold_spectral_norm"):
        if removed in without:
            rows.append(Row(f"fast - {removed}", tuple(s for s in fast if s.__name__ != removed), "fp16"))
    return rows


def profile_step(recipe: str, nets: dict, device: str | torch.device, steps: int = 20) -> str:
    """torch.profiler's table of the kernels of `steps` per-frame steps of `recipe` (after warm-up),
    sorted by total device time: where the remaining time goes."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    engine = recipes.build(recipe, nets, device)
    animator = engine.animator(sample.portrait(), reference=driving_batch(1))
    driving = driving_batch(1, offset=1).to(device)
    for _ in range(5):
        animator.step(driving)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            animator.step(driving)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=30, max_name_column_width=70)
    return f"recipe {recipe}, {steps} steps, batch 1, applied {engine.applied}\n{table}"


def recipe_row(name: str) -> Row:
    recipe = recipes.RECIPES.get(name)
    if recipe is None:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(recipes.RECIPES)}")
    return Row(name, recipe.steps, recipe.precision)


@dataclasses.dataclass
class RowResult:
    name: str
    batch: int
    applied: list[str]
    skipped: dict[str, str]
    timing: dict[str, Any]
    ms_per_frame: float
    p90_ms_per_frame: float
    frames_per_second: float
    speedup: float | None
    tflops: float | None
    compile_seconds: float | None
    memory: dict[str, Any] | None
    memory_unavailable: str
    parity: dict[str, Any] | None
    parity_failures: list[str]
    stage_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    batch: int = 1
    warmup: int = 5
    rule: timing.StoppingRule = timing.StoppingRule(min_repeats=20, min_seconds=0.5, max_rel_iqr=0.05,
                                                     max_repeats=300, max_seconds=15.0)
    parity_frames: int = PARITY_FRAMES
    stages: bool = True  # also time F, M, S, W, G alone per row


def driving_batch(batch: int, offset: int = 0) -> torch.Tensor:
    """`batch` consecutive frames of the sample driving sequence, starting at `offset`."""
    frames = itertools.islice(sample.driving_frames(), offset, offset + batch)
    return torch.cat(list(frames), dim=0)


def reference_frames(nets: dict, device: torch.device, count: int) -> torch.Tensor:
    """The float32, TF32-off frames every row is compared with (driving frames 0..count-1)."""
    engine = recipes.build("reference", nets, device)
    animator = engine.animator(sample.portrait(), reference=driving_batch(1))
    outputs = [animator.step(frame.to(device)).float().cpu()
               for frame in itertools.islice(sample.driving_frames(), count)]
    return torch.cat(outputs)


STAGE_NAMES = ("f_s", "keypoints", "deformation", "warped")
STAGES = ("F", "M", "S", "W", "G")  # F runs once per source; M + S + W + G once per frame
STAGE_RULE = timing.StoppingRule(min_repeats=10, min_seconds=0.05, max_rel_iqr=0.05, max_repeats=100, max_seconds=1.0)


def stage_calls(animator: recipes.OptimizedAnimator, driving: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Zero-argument callables running each stage alone on the animator's networks (in its
    precision and layout, eagerly: compilation applies to the whole step), inputs prepared once."""
    source = animator.source
    nets = animator.nets
    kp_driving = animator.driving_keypoints(pipeline.motion_from_extractor(nets[pipeline.MOTION_NET](driving)))
    warped = nets[pipeline.WARP_NET](source.feature, kp_driving=kp_driving, kp_source=source.keypoints)
    return {
        "F": lambda: nets[pipeline.FEATURE_NET](source.image),
        "M": lambda: nets[pipeline.MOTION_NET](driving),
        "S": lambda: pipeline.stitch(nets[pipeline.STITCHING_NET], source.keypoints, kp_driving),
        "W": lambda: nets[pipeline.WARP_NET](source.feature, kp_driving=kp_driving, kp_source=source.keypoints),
        "G": lambda: nets[pipeline.DECODER_NET](warped["out"]),
    }


def measure_stages(animator: recipes.OptimizedAnimator, driving: torch.Tensor, device: torch.device,
                   rule: timing.StoppingRule = STAGE_RULE) -> dict[str, float]:
    """Median ms of each stage at batch 1 (eager; see stage_calls)."""
    with animator.engine.context():
        calls = stage_calls(animator, driving[:1])
        return {stage: timing.time_callable(call, device, warmup=2, rule=rule).median_ms
                for stage, call in calls.items()}


def stage_outputs(animator: recipes.OptimizedAnimator, driving: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each stage's output for one driving batch, run stage by stage (eagerly) in the animator's
    precision and layout, as float32 on the CPU: the source volume f_s, the driving keypoints,
    W's deformation and warped feature, and the frame."""
    with animator.engine.context():
        source = animator.source
        batch = driving.shape[0]
        motion = pipeline.motion_from_extractor(animator.nets[pipeline.MOTION_NET](driving))
        keypoints = animator.driving_keypoints(motion)
        warped = animator.nets[pipeline.WARP_NET](
            source.feature.expand(batch, *source.feature.shape[1:]), kp_driving=keypoints,
            kp_source=source.keypoints.expand(batch, -1, -1))
        frame = animator.nets[pipeline.DECODER_NET](warped["out"])
    outputs = {"f_s": source.feature, "keypoints": keypoints, "deformation": warped["deformation"],
               "warped": warped["out"], "frame": frame}
    return {name: value.float().cpu() for name, value in outputs.items()}


def measure_row(row: Row, nets: dict, device: torch.device, config: BenchConfig,
                reference: torch.Tensor | None, flops_per_frame: float | None,
                peak: roofline.PeakThroughput | None) -> RowResult:
    """Build the row's engine, run the first frames for parity, then time the per-frame step,
    with NVML tracking the process's GPU memory throughout (where NVML is usable)."""
    engine = recipes.build(row.steps, nets, device)
    memory_report, memory_reason = None, "memory is measured through NVML on CUDA devices only"
    with contextlib.ExitStack() as stack:
        tracker = None
        if device.type == "cuda":
            availability = memory.available()
            memory_reason = availability.reason
            if availability:
                tracker = stack.enter_context(memory.track_peak_memory(device))
        animator = engine.animator(sample.portrait(), reference=driving_batch(1))
        outputs = [animator.step(frame.to(device)).float().cpu()
                   for frame in itertools.islice(sample.driving_frames(), config.parity_frames)]
        driving = driving_batch(config.batch, offset=config.parity_frames).to(device)
        result = timing.time_callable(lambda: animator.step(driving), device,
                                      warmup=config.warmup, rule=config.rule)
        stage_ms = measure_stages(animator, driving, device) if config.stages else {}
    if tracker is not None:
        memory_report, memory_reason = tracker.report.to_dict(), ""

    parity_dict, failures = None, []
    if reference is not None:
        report = parity.compare({}, {}, torch.cat(outputs), reference, precision=row.precision)
        parity_dict = report.to_dict()
        failures = report.failures(parity.Tolerance.for_precision(row.precision))
    per_frame_s = result.stats.median_s / config.batch
    tflops = None
    if flops_per_frame:
        tflops = (roofline.check(flops_per_frame, per_frame_s, peak, label=f"waterfall row {row.name!r}")
                  if peak is not None else roofline.achieved_tflops(flops_per_frame, per_frame_s))
    return RowResult(
        name=row.name, batch=config.batch, applied=list(engine.applied), skipped=dict(engine.skipped),
        timing=result.to_dict(), ms_per_frame=per_frame_s * 1e3,
        p90_ms_per_frame=result.stats.p90_s / config.batch * 1e3,
        frames_per_second=1.0 / per_frame_s, speedup=None, tflops=tflops,
        compile_seconds=engine.compile_seconds, memory=memory_report, memory_unavailable=memory_reason,
        parity=parity_dict, parity_failures=failures, stage_ms=stage_ms)


def frame_flops(nets: dict, batch: int = 1) -> float:
    """FLOPs of one per-frame step: M(driving) + S + W + G (keypoint math is negligible),
    counted with torch's flop counter on meta tensors, so nothing is computed."""
    with torch.device("meta"):
        meta = {name: copy.deepcopy(net).to("meta") for name, net in nets.items()}
        images = torch.empty(batch, 3, sample.PORTRAIT_SIZE, sample.PORTRAIT_SIZE)

        def one_frame() -> None:
            motion = meta[pipeline.MOTION_NET](images)
            keypoints = motion["kp"].view(batch, -1, 3)
            feature = meta[pipeline.FEATURE_NET](images)
            stitching = meta.get(pipeline.STITCHING_NET)
            if stitching is not None:
                stitching(torch.cat([keypoints.flatten(1), keypoints.flatten(1)], dim=1))
            warped = meta[pipeline.WARP_NET](feature, keypoints, keypoints)
            meta[pipeline.DECODER_NET](warped["out"])

        with torch.no_grad():
            feature_flops = roofline.count_flops(meta[pipeline.FEATURE_NET], images).total
            total = roofline.count_flops(one_frame).total
    return (total - feature_flops) / batch


def run(rows: Sequence[Row], nets: dict, device: str | torch.device = "cuda", config: BenchConfig = BenchConfig(),
        progress: Callable[[str], None] = log.info) -> list[RowResult]:
    """Measure every row in order; speedups are over the first row, all in this one run."""
    device = torch.device(device)
    progress("counting FLOPs per frame")
    flops = frame_flops(nets)
    peak = None
    if device.type == "cuda":
        progress("measuring the card's matmul peak")
        peak = roofline.measure_peak(device)
    progress("computing the float32 reference frames (TF32 off)")
    reference = reference_frames(nets, device, config.parity_frames)
    _release()
    results = []
    for row in rows:
        progress(f"row: {row.name}")
        try:
            results.append(measure_row(row, nets, device, config, reference, flops, peak))
        except torch.cuda.OutOfMemoryError as error:
            results.append(_failed_row(row, config, f"out of GPU memory: {error}"))
        _release()
    baseline = results[0].ms_per_frame if results and not results[0].error else None
    for result in results:
        if baseline and not result.error:
            result.speedup = baseline / result.ms_per_frame
    return results


def format_table(results: Iterable[RowResult]) -> str:
    header = ("recipe", "ms/frame", "p90", "frames/s", "speedup", "TFLOP/s", "NVML MiB", "torch MiB",
              "PSNR dB", "max lvl", "NaN/Inf", "compile s")
    lines = [header]
    for r in results:
        frame = (r.parity or {}).get("frame") or {}
        mem = r.memory or {}
        lines.append((
            r.name, _fmt(r.ms_per_frame, 2), _fmt(r.p90_ms_per_frame, 2), _fmt(r.frames_per_second, 1),
            _fmt(r.speedup, 2, "x"), _fmt(r.tflops, 1),
            _fmt(_mib(mem.get("process_peak_bytes")), 0), _fmt(_mib(mem.get("torch_max_reserved_bytes")), 0),
            _fmt(frame.get("psnr_db"), 1), str(frame.get("max_level_diff", "-")),
            str(frame.get("nonfinite_actual", "-")), _fmt(r.compile_seconds, 1)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line))
                for line in lines]
    rendered.insert(1, "-" * len(rendered[0]))
    return "\n".join(rendered)


def _fmt(value: Any, digits: int, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if value == math.inf else "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}{suffix}"


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def _memory_tracker(device: torch.device):
    if device.type != "cuda":
        return None
    return memory.track_peak_memory(device)


def _failed_row(row: Row, config: BenchConfig, error: str) -> RowResult:
    return RowResult(name=row.name, batch=config.batch, applied=[], skipped={}, timing={}, ms_per_frame=math.nan,
                     p90_ms_per_frame=math.nan, frames_per_second=math.nan, speedup=None, tflops=None,
                     compile_seconds=None, memory=None, memory_unavailable="", parity=None, parity_failures=[],
                     error=error)


def _release() -> None:
    """Free the last configuration's GPU memory (compiled graphs and CUDA-graph pools too) before
    the next; call it once that configuration's objects are out of scope."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
