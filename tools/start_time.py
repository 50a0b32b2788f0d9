"""Time a cold or warm start of a recipe: load weights + build + compile + warm-up, to the first
steady frame. Run it twice with the same TORCHINDUCTOR_CACHE_DIR: the first run is cold (empty
cache), the second warm (inductor's FX-graph and autotune caches hit).

    TORCHINDUCTOR_CACHE_DIR=/tmp/c python tools/start_time.py --recipe fast --out start.json
"""

import argparse
import json
import os
import time
from pathlib import Path

PROCESS_START = time.perf_counter()

import torch  # noqa: E402  (timed: importing torch is part of a start)

from lpperf.measure import frame
from lpperf.models import weights
from lpperf.optimize import recipes  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    marks = {"import": time.perf_counter() - PROCESS_START}
    nets = weights.synthetic(0, "cpu")
    marks["weights"] = time.perf_counter() - PROCESS_START
    engine = recipes.build(args.recipe, nets, "cuda")
    animator = frame.sample_animator(engine)
    driving = frame.driving_batch(1, offset=1).cuda()
    animator.step(driving)
    torch.cuda.synchronize()
    marks["first_frame"] = time.perf_counter() - PROCESS_START
    for _ in range(3):
        animator.step(driving)
    torch.cuda.synchronize()
    marks["warm"] = time.perf_counter() - PROCESS_START
    result = {"recipe": args.recipe, "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
              "seconds_since_process_start": marks,
              **engine.report()}
    print(json.dumps(result))
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
