"""Parity of recipes against the float32 reference (TF32 off) on several synthetic-weight seeds.

    python tools/parity_seeds.py --recipes fast fastest --seeds 0 1 [--frames 4] [--device cuda]

Prints PSNR, the largest 8-bit difference and NaN/Inf per recipe and seed; exits 1 if any row
misses its precision's tolerance (lpperf.measure.parity.Tolerance).
"""

from __future__ import annotations

import argparse

import torch

from lpperf.measure import frame, memory, parity
from lpperf.models import weights
from lpperf.optimize import recipes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["fast", "fastest"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--frames", type=int, default=frame.PARITY_FRAMES)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    failed = False
    print(f"{'seed':>4}  {'recipe':<28} {'PSNR dB':>8} {'max lvl':>7} {'NaN/Inf':>7}  verdict")
    for seed in args.seeds:
        nets = weights.synthetic(seed, "cpu")
        reference = frame.reference_frames(nets, device, args.frames)
        for name in args.recipes:
            engine = recipes.build(name, nets, device)
            frames = frame.run_frames(frame.sample_animator(engine), args.frames)
            report = parity.compare({}, {}, frames, reference, precision=engine.precision)
            failures = report.failures(parity.Tolerance.for_precision(engine.precision))
            failed |= bool(failures)
            print(f"{seed:>4}  {name:<28} {report.frame.psnr_db:>8.2f} {report.frame.max_level_diff:>7} "
                  f"{report.frame.nonfinite_actual:>7}  {'FAIL: ' + '; '.join(failures) if failures else 'ok'}")
            memory.release_cached_memory()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
