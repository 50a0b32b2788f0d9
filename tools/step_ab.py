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

Each variant (and the peer) is built --builds times (default 2), and every build is timed in every
round. Two builds of the same steps differ by more than one build's rounds do (an A/A of two builds of
one program on an H100 resolved +0.32 %, 0.04 to 0.91 %), so a ratio pools the per-round ratios of
every pair of builds (build i of one side against build j of the other; against itself, i != j), and
each variant's line says how far its own builds lie apart. Builds in one process share the compiled
program and cuDNN's algorithm choices; what differs between processes is lpperf gate's to measure.

    python tools/step_ab.py --recipe fastest-motion-ahead --rounds 30 --peer \\
        "base=" "without the phase split=-phase_split_hourglass" --out ab.json
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
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


def pooled_summary(builds: list[list[float]], other_builds: list[list[float]],
                   same: bool = False) -> tuple[float, float, float]:
    """The median and 5th and 95th percentiles of the per-round ratios of every build of one side to every
    build of the other (each a list of round times, the same rounds); with `same` (a side against itself)
    only pairs of different builds, so the result is the spread between builds."""
    ratios = sorted(value / other
                    for i, values in enumerate(builds) for j, others in enumerate(other_builds) if not (same and i == j)
                    for value, other in zip(values, others, strict=True))
    if not ratios:
        raise ValueError("no pair of builds to compare: a side against itself needs two builds")
    return statistics.median(ratios), timing.percentile(ratios, 5), timing.percentile(ratios, 95)


def alternated_rounds(works: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each work's time in each of `rounds` rounds, every work once a round, the order reversed every other
    round, so that drift falls on every work alike."""
    samples = {label: [] for label in works}
    for index in range(rounds):
        for label in (list(works) if index % 2 == 0 else reversed(list(works))):
            samples[label].append(works[label]())
    return samples


def build_label(label: str, build: int) -> str:
    return f"{label}#{build + 1}"


def peer_work(chosen: list[steps.Step], nets: dict, device: torch.device, batch: int) -> tuple[str, frame.FrameWork]:
    """lpperf bench's modules-only peer for the base variant's steps: with M batched ahead where they batch it
    (the last of bench.modules_peer_rows, the strongest for such a recipe)."""
    peer = bench.modules_peer_rows(steps.motion_ahead in chosen)[-1].recipe
    return peer, frame.modules_alone(recipes.build(peer, nets, device), batch)


def warmed(work: frame.FrameWork, device: torch.device, since: float) -> tuple[frame.FrameWork, float]:
    """The work after three rounds (compile, capture, warm-up) that no measurement counts, and the seconds
    since `since` (its build included)."""
    for _ in range(3):
        round_ms(work, device)
    return work, time.perf_counter() - since


def measure(variants: dict[str, list[steps.Step]], nets: dict, device: torch.device, *, batch: int, rounds: int,
            builds: int, with_peer: bool) -> dict:
    """Build every variant (and the peer) `builds` times, time every build in alternated rounds and summarise
    each variant against the first, printing a line each as it goes; the record as a dict."""
    reference = frame.reference_frames(nets, device, frame.PARITY_FRAMES) if batch == 1 else None
    result = {"batch": batch, "rounds": rounds, "builds": builds, "variants": {}}
    works = {}  # build label -> its frames
    for label, chosen in variants.items():
        row = {"build_and_warmup_s": []}
        for build in range(builds):
            built = time.perf_counter()
            engine = recipes.build(chosen, nets, device)
            animator = frame.sample_animator(engine)
            row.update(steps=[step.name for step in engine.applied], skipped=engine.skipped)
            if reference is not None and build == 0:
                report = parity.compare_frames(frame.run_frames(animator, frame.PARITY_FRAMES), reference)
                row["parity"] = {"psnr_db": report.psnr_db, "max_levels": report.max_level_diff,
                                 "nonfinite": report.nonfinite_actual}
            works[build_label(label, build)], seconds = warmed(frame.step_work(animator, batch), device, built)
            row["build_and_warmup_s"].append(seconds)
        result["variants"][label] = row
        print(label, json.dumps(row), flush=True)
    peer = None
    if with_peer:
        result["peer"] = {"build_and_warmup_s": []}
        for build in range(builds):
            built = time.perf_counter()
            peer, work = peer_work(next(iter(variants.values())), nets, device, batch)
            works[build_label(PEER, build)], seconds = warmed(work, device, built)
            result["peer"]["build_and_warmup_s"].append(seconds)
        result["peer"]["recipe"] = peer
        print(f"{PEER}: {peer}, its networks alone", json.dumps(result["peer"]), flush=True)

    timed = alternated_rounds({name: (lambda work=work: round_ms(work, device)) for name, work in works.items()},
                              rounds)

    def by_build(label: str) -> list[list[float]]:
        return [timed[build_label(label, build)] for build in range(builds)]

    def apart(label: str, record: dict) -> str:
        """How far the label's own builds lie apart, recorded and as the end of its line."""
        if builds < 2:
            return ""
        ratio, low, high = record["builds_apart"] = pooled_summary(by_build(label), by_build(label), same=True)
        return f"; its builds apart {ratio:.4f} ({low:.4f}-{high:.4f})"

    base_label = next(iter(variants))
    base = by_build(base_label)
    if peer is not None:
        peer_samples = by_build(PEER)
        result["peer"].update(median_ms=statistics.median(sum(peer_samples, [])), round_ms_by_build=peer_samples)
        print(f"{PEER + ' (' + peer + ')':32s} {result['peer']['median_ms']:.4f} ms per frame"
              f"{apart(PEER, result['peer'])}", flush=True)
    for label in variants:
        values = by_build(label)
        ratio, low, high = pooled_summary(values, base, same=label == base_label and builds > 1)
        summary = {"median_ms": statistics.median(sum(values, [])), "ratio": ratio, "ratio_5th": low,
                   "ratio_95th": high, "round_ms_by_build": values}
        line = f"{label:32s} {summary['median_ms']:.4f} ms per frame, ratio {ratio:.4f} ({low:.4f}-{high:.4f})"
        if peer is not None:
            speedup, low, high = pooled_summary(peer_samples, values)
            summary.update(speedup_over_peer=speedup, speedup_5th=low, speedup_95th=high)
            line += f", {speedup:.3f}x the peer ({low:.3f}-{high:.3f})"
        line += apart(label, summary)
        result["variants"][label].update(summary)
        print(line, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="LABEL=EDITS", help="the first is the base")
    parser.add_argument("--recipe", default="fastest")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--builds", type=int, default=2, help="builds of each variant and of the peer (default 2)")
    parser.add_argument("--peer", action="store_true",
                        help="also time lpperf bench's modules-only peer and print each variant's speedup over it")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_ab times frames with CUDA events: it needs a CUDA GPU (none is visible)")
    if args.batch < 1 or args.rounds < 2 or args.builds < 1:
        raise SystemExit("--batch and --builds must be >= 1 and --rounds >= 2")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        # found now, not after minutes of a lent card's time
        raise SystemExit(f"--out {args.out}: give a file in an existing folder")
    variants = {}
    for spec in args.variants:
        label, equals, edits = spec.partition("=")
        if not equals or not label or label in variants or label == PEER:
            raise SystemExit(f"a variant is a new LABEL=EDITS (LABEL not {PEER!r}), got {spec!r}")
        variants[label] = edited_steps(args.recipe, edits)

    device = torch.device("cuda")
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "recipe": args.recipe,
              **measure(variants, weights.synthetic(0, "cpu"), device, batch=args.batch, rounds=args.rounds,
                        builds=args.builds, with_peer=args.peer)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
