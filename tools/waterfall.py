"""Measure the recipe waterfall on this machine's GPU and write it as JSON (one run, one card).

    python tools/waterfall.py --out DIR [--batch 1 16] [--rows waterfall peers variants] [--recipe fast]

Used to produce the numbers in docs/PERFORMANCE.md; `lpperf bench` is the user-facing command.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from lpperf.measure import environment, frame
from lpperf.models import weights
from lpperf.optimize import recipes
from lpperf.reports import bench, profile
from lpperf.optimize import steps as registry


def variant_rows(recipe: str) -> list[bench.Row]:
    """The recipe with one step added or removed: what each of its choices is worth."""
    chosen = recipes.lookup(recipe).steps
    names = {step.name for step in chosen}
    rows = [bench.recipe_row(recipe),
            bench.Row(f"{recipe} + inductor freezing", chosen + (registry.inductor_freezing,))]
    removable = ("residual_float32", "channels_last", "warp_source_cache", "pad_warp_channels", "fold_spectral_norm")
    for removed in removable:
        if removed in names:
            rows.append(bench.Row(f"{recipe} - {removed}", tuple(s for s in chosen if s.name != removed)))
    return rows


def profile_step(recipe: str, nets: dict, device: str | torch.device, steps: int = 20) -> str:
    """torch.profiler's table of the kernels of `steps` per-frame steps of `recipe` (after warm-up),
    sorted by total device time: where the remaining time goes."""
    device = torch.device(device)
    engine = recipes.build(recipes.lookup(recipe), nets, device)
    animator = frame.sample_animator(engine)
    driving = frame.driving_batch(1, offset=1).to(device)
    for _ in range(5):
        animator.step(driving)
    table = profile.kernel_table(animator, driving, device, steps)
    return f"recipe {recipe}, {steps} steps, batch 1, applied {engine.report()['applied']}\n{table}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--rows", nargs="+", default=["waterfall", "peers"],
                        help="row sets (waterfall, peers, variants) and/or recipe names")
    parser.add_argument("--recipe", default="fast", help="the recipe of the waterfall and variants rows")
    parser.add_argument("--profile", metavar="RECIPE", help="also write a kernel profile of RECIPE's step")
    parser.add_argument("--eager-only", action="store_true", help="leave out the rows that compile (minutes each)")
    parser.add_argument("--no-stages", action="store_true", help="do not time each stage alone per row")
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
        sets = {"waterfall": lambda: bench.waterfall_rows(args.recipe), "peers": bench.peer_rows,
                "variants": lambda: bench.variant_rows() + variant_rows(args.recipe)}
        rows += sets[name]() if name in sets else [bench.recipe_row(name)]
    if args.eager_only:
        rows = [row for row in rows if not any(step.compile_scope for step in row.steps)]
    report = {"environment": environment.environment_info("cuda"), "runs": []}
    for batch in args.batch:
        config = bench.BenchConfig(batch=batch, stages=not args.no_stages)
        results = bench.run(rows, nets, "cuda", config, progress=print)
        print("\n" + bench.format_table(results, f"batch {batch}"), flush=True)
        report["runs"].append({"batch": batch, "rows": [r.to_dict() for r in results]})
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "waterfall.json").write_text(json.dumps(report, indent=1, default=str))
    if args.profile:
        (args.out / f"profile-{args.profile}.txt").write_text(profile_step(args.profile, nets, "cuda"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
