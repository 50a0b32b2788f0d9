"""A/B of recipe variants in one process on one card: each variant is built once, then timed in
alternated rounds (ABAB..., the order reversed every other round), so that drift of clocks and
temperature falls on every variant alike. A round times the variant's frames as `lpperf bench` does
(lpperf.measure.frame.step_work) with CUDA events; a variant's ratio is the median of its per-round
ratios to the first variant, with their 5th and 95th percentiles. At batch 1 each variant's parity
against the float32 reference frames is printed too.

A variant is a label and edits of the recipe's steps: `-step` drops a step, `+step` appends one,
`+step@other` inserts it before `other`. The first variant is the base.

    python tools/step_ab.py --recipe fastest-motion-ahead --rounds 30 \\
        "base=" "without the phase split=-phase_split_hourglass" --out ab.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lpperf.measure import frame, parity, timing
from lpperf.models import weights
from lpperf.optimize import recipes, steps


def edited_steps(recipe: str, edits: str) -> list[steps.Step]:
    """The recipe's steps with the comma-separated edits applied, in order."""
    names = [step.name for step in recipes.lookup(recipe).steps]
    for edit in filter(None, (part.strip() for part in edits.split(","))):
        sign, name = edit[0], edit[1:]
        if sign == "-":
            if name not in names:
                raise SystemExit(f"{recipe} has no step {name!r} to drop; its steps: {', '.join(names)}")
            names.remove(name)
        elif sign == "+":
            step, _, before = name.partition("@")
            if before and before not in names:
                raise SystemExit(f"{recipe} has no step {before!r} to insert {step!r} before")
            names.insert(names.index(before) if before else len(names), step)
        else:
            raise SystemExit(f"an edit is -step, +step or +step@before, got {edit!r}")
    try:
        return [steps.lookup(name) for name in names]
    except ValueError as error:
        raise SystemExit(str(error)) from None


def round_ms(work: frame.FrameWork, device: torch.device) -> float:
    """One round of the variant's frames, ms per frame (CUDA events around the whole round)."""
    return timing.cuda_sample_s(lambda: [call() for call in work.calls.values()], device) * 1e3 / work.frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="LABEL=EDITS", help="the first is the base")
    parser.add_argument("--recipe", default="fastest")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_ab times frames with CUDA events: it needs a CUDA GPU (none is visible)")
    if args.batch < 1 or args.rounds < 2:
        raise SystemExit("--batch must be >= 1 and --rounds >= 2")
    variants = {}
    for spec in args.variants:
        label, equals, edits = spec.partition("=")
        if not equals or not label or label in variants:
            raise SystemExit(f"a variant is a new LABEL=EDITS, got {spec!r}")
        variants[label] = edited_steps(args.recipe, edits)

    device = torch.device("cuda")
    nets = weights.synthetic(0, "cpu")
    reference = frame.reference_frames(nets, device, frame.PARITY_FRAMES) if args.batch == 1 else None
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "recipe": args.recipe,
              "batch": args.batch, "rounds": args.rounds, "variants": {}}
    works = {}
    for label, chosen in variants.items():
        built = time.perf_counter()
        engine = recipes.build(chosen, nets, device)
        animator = frame.sample_animator(engine)
        row = {"steps": [step.name for step in engine.applied], "skipped": engine.skipped}
        if reference is not None:
            report = parity.compare_frames(frame.run_frames(animator, frame.PARITY_FRAMES), reference)
            row["parity"] = {"psnr_db": report.psnr_db, "max_levels": report.max_level_diff,
                             "nonfinite": report.nonfinite_actual}
        works[label] = frame.step_work(animator, args.batch)
        for _ in range(3):  # compile, capture and warm the variant before any round counts
            round_ms(works[label], device)
        row["build_and_warmup_s"] = time.perf_counter() - built
        result["variants"][label] = row
        print(label, json.dumps(row), flush=True)

    samples = {label: [] for label in works}
    for index in range(args.rounds):
        for label in (list(works) if index % 2 == 0 else reversed(list(works))):
            samples[label].append(round_ms(works[label], device))
    base = samples[next(iter(works))]
    for label, values in samples.items():
        ratios = sorted(value / first for value, first in zip(values, base))
        summary = {"median_ms": statistics.median(values), "ratio": statistics.median(ratios),
                   "ratio_5th": timing.percentile(ratios, 5), "ratio_95th": timing.percentile(ratios, 95),
                   "round_ms": values}
        result["variants"][label].update(summary)
        print(f"{label:32s} {summary['median_ms']:.4f} ms per frame, ratio {summary['ratio']:.4f} "
              f"({summary['ratio_5th']:.4f}-{summary['ratio_95th']:.4f})", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
