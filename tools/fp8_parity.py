"""Which of W's and G's convolutions can run in FP8 (e4m3) and keep the frame within the fp16 parity
budget: each layer's own error and the whole frame's parity with groups of layers in FP8, simulated
exactly in float32 on the CPU (lpperf.optimize.fp8), before any FP8 kernel exists.

    python tools/fp8_parity.py --out DIR [--seeds 0 1] [--calibration-frames 2] [--frames 2] [--single-layers 10]
                               [--channel-block N]

Activation ranges are calibrated on the sample's first driving frames and the error is measured on
the frames after them, so a range that a later frame exceeds shows as clipping error. Each frame is
compared with the float32 frame of the same networks, as the suite compares fp16 recipes (40 dB, 12
levels). Writes DIR/fp8_parity.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from lpperf.animation import pipeline
from lpperf.measure import frame, parity
from lpperf.models import DECODER_NET, WARP_NET, sample, weights
from lpperf.optimize import fp8

NETS = {"W": WARP_NET, "G": DECODER_NET}


def animator_for(nets: dict) -> pipeline.Animator:
    animator = pipeline.Animator(nets)
    with torch.no_grad():
        animator.set_source(sample.portrait())
        animator.set_reference(frame.driving_batch(1))
    return animator


def layer_flops(net: torch.nn.Module, layers: list[str], run) -> dict[str, float]:
    """FLOPs each convolution does in `run()`: 2 x outputs x input channels per group x kernel taps."""
    counted = {name: 0.0 for name in layers}

    def count(name):
        def hook(module, args, output):
            counted[name] += 2.0 * output.numel() * (module.in_channels / module.groups) * math.prod(module.kernel_size)
        return hook

    fp8.run_with_hooks(net, {name: count(name) for name in layers}, run)
    return counted


def study(seed: int, calibration_frames: int, frames: int, single_layers: int, channel_block: int | None) -> dict:
    began = time.perf_counter()
    nets = weights.synthetic(seed, "cpu")
    animator = animator_for(nets)
    calibration = frame.driving_batch(calibration_frames, offset=1)
    evaluation = frame.driving_batch(frames, offset=1 + calibration_frames)
    result = {"seed": seed, "channel_block": channel_block, "layers": {}, "frames": {}}
    amax = {}
    with torch.no_grad():
        reference = animator.step(evaluation)
        for stage, name in NETS.items():
            layers = fp8.convolutions(nets[name])
            amax[stage] = fp8.input_amax(nets[name], layers, lambda: animator.run_stages(calibration))
            errors = fp8.layer_errors(nets[name], amax[stage], lambda: animator.run_stages(evaluation), channel_block)
            flops = layer_flops(nets[name], layers, lambda: animator.run_stages(evaluation[:1]))
            for layer in layers:
                result["layers"][f"{stage} {layer}"] = {"relative_error": errors[layer], "gflop": flops[layer] / 1e9,
                                                        "input_amax": amax[stage][layer]}
        # The whole networks in FP8, then each of the costliest layers alone in FP8: the frame's parity.
        costliest = sorted(result["layers"], key=lambda layer: -result["layers"][layer]["gflop"])[:single_layers]
        groups = {"W": {"W": amax["W"]}, "G": {"G": amax["G"]}, "W + G": amax}
        for layer in costliest:
            stage, name = layer.split(" ", 1)
            groups[layer] = {stage: {name: amax[stage][name]}}
        for label, chosen in groups.items():
            simulated = dict(nets)
            for stage, ranges in chosen.items():
                simulated[NETS[stage]] = fp8.with_fp8(nets[NETS[stage]], ranges, channel_block)
            candidate = animator_for(simulated).step(evaluation)
            compared = parity.compare_frames(candidate, reference)
            result["frames"][label] = {"psnr_db": compared.psnr_db, "max_level_diff": compared.max_level_diff,
                                       "nonfinite": parity.count_nonfinite(candidate)}
            print(f"seed {seed}, channel block {channel_block}: {label} in FP8: {compared.psnr_db:.2f} dB, "
                  f"{compared.max_level_diff} levels", flush=True)
    result["seconds"] = time.perf_counter() - began
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--calibration-frames", type=int, default=2)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--channel-block", type=int, default=None,
                        help="scale activations per pixel and block of this many channels (a large number: per "
                             "pixel) instead of per tensor")
    parser.add_argument("--single-layers", type=int, default=10,
                        help="also the frame with only one layer in FP8, for this many of the costliest layers")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    runs = [study(seed, args.calibration_frames, args.frames, args.single_layers, args.channel_block)
            for seed in args.seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fp8_parity.json").write_text(json.dumps({"torch": torch.__version__, "runs": runs}, indent=1))
    for run in runs:
        ranked = sorted(run["layers"].items(), key=lambda item: -item[1]["gflop"])[:12]
        print(f"seed {run['seed']}: the costliest layers, their own error in FP8")
        for name, layer in ranked:
            print(f"  {name:<60} {layer['gflop']:8.1f} GFLOP  {layer['relative_error']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
