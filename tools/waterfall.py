"""Measure the recipe waterfall on this machine's GPU and write it as JSON (one run, one card).

    python tools/waterfall.py --out DIR [--batch 1 16] [--rows waterfall peers]

Used to produce the numbers in docs/PERFORMANCE.md; `lpperf bench` is the user-facing command.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from lpperf import bench, environment, weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--rows", nargs="+", default=["waterfall", "peers"],
                        help="row sets (waterfall, peers, variants) and/or recipe names")
    parser.add_argument("--profile", metavar="RECIPE", help="also write a kernel profile of RECIPE's step")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not torch.cuda.is_available():
        print("no CUDA GPU: this script measures the GPU waterfall", file=sys.stderr)
        return 2
    start = time.perf_counter()
    nets = weights.synthetic(0, "cpu")
    print(f"synthetic weights in {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    for name in args.rows:
        sets = {"waterfall": bench.waterfall_rows, "peers": bench.peer_rows, "variants": bench.variant_rows}
        rows += sets[name]() if name in sets else [bench.recipe_row(name)]
    report = {"environment": environment.environment_info("cuda"), "runs": []}
    for batch in args.batch:
        results = bench.run(rows, nets, "cuda", bench.BenchConfig(batch=batch), progress=print)
        print(f"\nbatch {batch}\n" + bench.format_table(results), flush=True)
        report["runs"].append({"batch": batch, "rows": [r.to_dict() for r in results]})
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "waterfall.json").write_text(json.dumps(report, indent=1, default=str))
    if args.profile:
        (args.out / f"profile-{args.profile}.txt").write_text(bench.profile_step(args.profile, nets, "cuda"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
