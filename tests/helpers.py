"""What several test files build: networks smaller than lpperf.models.TINY, bench rows made by hand,
gate runs on the fake worker (tests/fake_gate_worker.py), and the checks the rewrite and kernel tests share."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

from lpperf import models
from lpperf.gate import controller
from lpperf.gate.workers import Worker
from lpperf.measure import memory, timing
from lpperf.reports import bench

# Smaller than TINY (a shallower volume, narrower W and G, a small M): a frame costs ~0.3 s on 2 cores.
SMALL = {
    models.FEATURE_NET: dict(block_expansion=8, max_features=8, reshape_channel=4, reshape_depth=2, num_resblocks=1),
    models.MOTION_NET: dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
    models.WARP_NET: dict(block_expansion=4, max_features=8, reshape_channel=4,
                          dense_motion_params=dict(block_expansion=4, max_features=8, num_blocks=1, compress=1,
                                                   reshape_depth=2)),
    models.DECODER_NET: dict(block_expansion=4, max_features=16, out_channels=4, spade_hidden=4),
}
# Exactly two samples: the time cap only guards against a hang (a loaded 2-core machine took 7 s a frame).
TWO_SAMPLES = timing.StoppingRule(min_repeats=2, min_seconds=0.0, max_rel_iqr=1.0, max_repeats=2, max_seconds=300.0)
FAKE_WORKER = Path(__file__).with_name("fake_gate_worker.py")


def small_networks() -> dict:
    """The seven networks at SMALL sizes, PyTorch's default initialisation from seed 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return {name: models.build(name, **SMALL.get(name, {})) for name in models.NAMES}


def row_result(name: str, ms: float, converged: bool = True, recipe: str | None = None, error: str = "",
               stage_ms: dict | None = None, stage_converged: dict | None = None,
               memory_mib: float | None = None, peer: bool = False, motion_ahead: int = 1) -> bench.RowResult:
    """A measured bench row (or, with `error`, a failed one) with three samples of `ms`."""
    samples = [ms / 1e3] * 3
    measured = timing.TimingResult(
        device="cpu", clock=timing.CLOCK_HOST, stats=timing.TimingStats.from_samples(samples), samples_s=samples,
        converged=converged, stop_reason="test", first_call_s=0.0, warmup_s=0.0, warmup_calls=0,
        measurement_wall_s=0.0, rule=TWO_SAMPLES, clocks_before=None, clocks_after=None,
        clocks_unavailable_reason="test")
    measured_memory = None if memory_mib is None else memory.MemoryReport(
        method=memory.METHOD_PROCESS, device_index=0, process_peak_bytes=int(memory_mib * 2**20), samples=3,
        sample_interval_s=0.005, baseline_device_used_bytes=0, device_total_bytes=2**35,
        torch_max_allocated_bytes=None, torch_max_reserved_bytes=int(memory_mib * 0.9 * 2**20), context_bytes=None)
    failed = bool(error)
    return bench.RowResult(
        name=name, recipe=name if recipe is None else recipe, batch=1, precision="fp32", peer=peer,
        motion_ahead=motion_ahead, applied=[],
        skipped={},
        timing=None if failed else measured, ms_per_frame=math.nan if failed else ms,
        p90_ms_per_frame=math.nan if failed else ms * 1.2, frames_per_second=math.nan if failed else 1e3 / ms,
        converged=converged, tflops=None, compile_seconds=None, memory=measured_memory,
        memory_unavailable="" if memory_mib else "no NVML (test)", parity=None, parity_failures=[], error=error,
        stage_ms=stage_ms or {}, stage_converged=stage_converged or {},
        stage_clock="host time of each stage run alone (eager call)" if stage_ms else "")


def fake_starter(spec: dict, env: dict | None = None):
    """A controller WorkerFactory starting the fake worker, which answers as `spec` says."""
    def start(side, role, gpu, log_dir, recipe):
        variables = dict(os.environ, LPPERF_FAKE_WORKER=json.dumps(spec), **(env or {}))
        return Worker(f"{role} {recipe} ({side.label})", [sys.executable, str(FAKE_WORKER), role, recipe], variables,
                      log_dir / (f"{role}-{recipe}.log" if gpu is None else f"{role}-{recipe}-gpu{gpu}.log"))
    return start


def run_fake(tmp_path, spec, metrics=None, **config):
    """A whole gate run on the fake worker (an A/A of one folder), CPU lane."""
    side = controller.Side("fake", tmp_path)
    metrics = metrics or controller.default_metrics(("fast",), (1,))
    config.setdefault("rounds", 12)
    config.setdefault("max_rounds", 36)
    return controller.run_gate(side, side, metrics, controller.GateConfig(**config), [None], tmp_path / "logs",
                               start=fake_starter(spec))


def write_media(folder: Path, count: int) -> dict[str, Path]:
    """In `folder`: the sample portrait as source.png, `count` sample driving frames as driving.mp4 and as
    frames/000.png ... (needs the video extra)."""
    from PIL import Image

    from lpperf.animation import video
    from lpperf.models import sample

    frames = [video.frame_to_array(frame) for frame in sample.driving_frames(count)]
    source = folder / "source.png"
    Image.fromarray(video.frame_to_array(sample.portrait())).save(source)
    frame_folder = folder / "frames"
    frame_folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(frame_folder / f"{index:03d}.png")
    driving = folder / "driving.mp4"
    with video.VideoWriter(driving, 25) as writer:
        for frame in frames:
            writer.write(frame)
    return {"source": source, "driving": driving, "folder": frame_folder}


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(out - expected) / torch.linalg.vector_norm(expected)).item()


def tiny_decoder() -> nn.Module:
    torch.manual_seed(2)
    return models.build("spade_generator", **models.TINY["spade_generator"]).double()


def interpreter_runs_runtime_loops() -> bool:
    """Triton 3.5's interpreter turns runtime ints into 1-element arrays that NumPy 2 refuses to index
    with; 3.9's runs the kernels. The card compiles them either way."""
    from importlib.metadata import version
    return tuple(int(part) for part in version("triton").split(".")[:2]) >= (3, 9)
