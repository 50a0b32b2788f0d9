"""A/B of recipe variants in one process on one card: each variant is built once, then timed in
alternated rounds (ABAB..., the order reversed every other round), so that drift of clocks and
temperature falls on every variant alike. A round times the variant's frames as `lpperf bench` does
(lpperf.measure.frame.step_work), each call alone between CUDA events after a synchronize, summed
(the sample of lpperf.measure.timing.time_parts); a variant's ratio is the median of its per-round
ratios to the first variant, with their 5th and 95th percentiles. At batch 1 each variant's parity
against the float32 reference frames is printed too.

A variant is a label and edits of the recipe's steps: `-step` drops a step, `+step` appends one,
`+step@other` inserts it before `other`. The first variant is the base.

With --peer the rounds also time the modules-only peer of `lpperf bench` (the official networks,
.half() + compile(reduce-overhead), M, W and G each alone on the frame's inputs; with M batched ahead
when the recipe batches it), and each variant's speedup over it is printed the same way: the median
of its per-round ratios, with their 5th and 95th percentiles.

    python tools/step_ab.py --recipe fastest-motion-ahead --rounds 30 --peer \\
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
from lpperf.reports import bench

PEER = "peer"  # the label of the modules-only peer among the timed works


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
    """One round of the variant's frames, ms per frame: each call alone between CUDA events, summed."""
    return sum(timing.cuda_sample_s(call, device) for call in work.calls.values()) * 1e3 / work.frames


def ratio_summary(values: list[float], others: list[float]) -> tuple[float, float, float]:
    """The median of the per-round ratios values / others, and their 5th and 95th percentiles."""
    ratios = sorted(value / other for value, other in zip(values, others))
    return statistics.median(ratios), timing.percentile(ratios, 5), timing.percentile(ratios, 95)


def peer_work(chosen: list[steps.Step], nets: dict, device: torch.device, batch: int) -> tuple[str, frame.FrameWork]:
    """lpperf bench's modules-only peer for the base variant's steps: with M batched ahead where they batch it
    (the last of bench.modules_peer_rows, the strongest for such a recipe)."""
    peer = bench.modules_peer_rows(steps.motion_ahead in chosen)[-1].recipe
    return peer, frame.modules_alone(recipes.build(peer, nets, device), batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="LABEL=EDITS", help="the first is the base")
    parser.add_argument("--recipe", default="fastest")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--peer", action="store_true",
                        help="also time lpperf bench's modules-only peer and print each variant's speedup over it")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_ab times frames with CUDA events: it needs a CUDA GPU (none is visible)")
    if args.batch < 1 or args.rounds < 2:
        raise SystemExit("--batch must be >= 1 and --rounds >= 2")
    variants = {}
    for spec in args.variants:
        label, equals, edits = spec.partition("=")
        if not equals or not label or label in variants or label == PEER:
            raise SystemExit(f"a variant is a new LABEL=EDITS (LABEL not {PEER!r}), got {spec!r}")
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
    peer = None
    if args.peer:
        built = time.perf_counter()
        peer, works[PEER] = peer_work(next(iter(variants.values())), nets, device, args.batch)
        for _ in range(3):
            round_ms(works[PEER], device)
        result["peer"] = {"recipe": peer, "build_and_warmup_s": time.perf_counter() - built}
        print(f"{PEER}: {peer}, its networks alone", json.dumps(result["peer"]), flush=True)

    samples = {label: [] for label in works}
    for index in range(args.rounds):
        for label in (list(works) if index % 2 == 0 else reversed(list(works))):
            samples[label].append(round_ms(works[label], device))
    base = samples[next(iter(variants))]
    if peer is not None:
        peer_samples = samples.pop(PEER)
        result["peer"].update(median_ms=statistics.median(peer_samples), round_ms=peer_samples)
        print(f"{PEER + ' (' + peer + ')':32s} {result['peer']['median_ms']:.4f} ms per frame", flush=True)
    for label, values in samples.items():
        ratio, low, high = ratio_summary(values, base)
        summary = {"median_ms": statistics.median(values), "ratio": ratio, "ratio_5th": low, "ratio_95th": high,
                   "round_ms": values}
        line = f"{label:32s} {summary['median_ms']:.4f} ms per frame, ratio {ratio:.4f} ({low:.4f}-{high:.4f})"
        if peer is not None:
            speedup, low, high = ratio_summary(peer_samples, values)
            summary.update(speedup_over_peer=speedup, speedup_5th=low, speedup_95th=high)
            line += f", {speedup:.3f}x the peer ({low:.3f}-{high:.3f})"
        result["variants"][label].update(summary)
        print(line, flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
