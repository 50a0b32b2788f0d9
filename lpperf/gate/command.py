"""`lpperf gate`: compare the working tree (or --head REF) with --base REF on this card, in one job.

    lpperf gate --base origin/main                    # exit 0 pass, 1 regressed, 2 error, 3 undecided
    lpperf gate --calibrate                           # A/A: this card's noise and what the gate can detect
    lpperf gate --base v0.1.0 --gpus 0,1              # metrics sharded over two identical cards

Refs are exported with `git archive` into a scratch folder (nothing in the checkout changes).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from lpperf.gate import controller, report
from lpperf.gate.workers import GateError

EXIT_PASS, EXIT_REGRESSED, EXIT_ERROR, EXIT_UNDECIDED = 0, 1, 2, 3


def add_parser(commands) -> None:
    gate = commands.add_parser(
        "gate", help="A/B the working tree against a base ref on this card, in one job (merge gate)",
        description="Both versions run in their own worker process on the same card; their per-frame times "
                    "are interleaved in ABBA rounds and compared with a paired, distribution-free interval. "
                    "Exit codes: 0 pass, 1 regressed, 2 error or interrupted, 3 undecided at --max-rounds.")
    gate.add_argument("--base", metavar="REF", help="git ref of the baseline (e.g. origin/main), or a folder holding "
                                                    "another lpperf checkout (`--base .` is an A/A run)")
    gate.add_argument("--head", metavar="REF", help="git ref to test (default: the working tree as it is)")
    gate.add_argument("--calibrate", action="store_true",
                      help="A/A: the head against itself; prints and writes each metric's noise and the smallest "
                           "regression the gate detects")
    gate.add_argument("--recipes", nargs="+", default=list(controller.DEFAULT_RECIPES), metavar="NAME",
                      help="recipes whose whole frames are gated (default: %(default)s)")
    gate.add_argument("--batches", nargs="+", type=int, default=list(controller.DEFAULT_BATCHES), metavar="N",
                      help="batch sizes of the gated frames (default: %(default)s)")
    gate.add_argument("--no-stages", action="store_true", help="skip the per-stage metrics (no attribution)")
    gate.add_argument("--gate-stages", action="store_true", help="gate the stages too, not only whole frames")
    gate.add_argument("--threshold", type=float, default=0.03, help="regression threshold (default 0.03 = 3%%)")
    gate.add_argument("--alpha", type=float, default=0.01, help="family-wise error per side (default 0.01)")
    gate.add_argument("--rounds", type=int, default=16, help="ABBA rounds per look (default 16)")
    gate.add_argument("--max-rounds", type=int, default=48, help="stop adding rounds here (default 48)")
    gate.add_argument("--undecided", choices=("fail", "pass"), default="fail",
                      help="exit code when still undecided at --max-rounds: fail = 3 (default), pass = 0")
    gate.add_argument("--device", default="auto", help="auto, cuda or cpu (the CPU runs are for testing the gate)")
    gate.add_argument("--gpus", help="comma-separated cards to shard the metrics over (default: the first card)")
    gate.add_argument("--weights", metavar="DIR", help="official checkpoints (default: synthetic weights)")
    gate.add_argument("--out", default="lpperf-gate", metavar="DIR", help="gate.json and worker logs (default %(default)s)")
    gate.add_argument("--inject-slowdown", type=float, default=0.0, metavar="FRACTION",
                      help="TEST ONLY: the head spins the GPU for this fraction of each frame (checks the gate "
                           "detects a known regression)")
    gate.add_argument("--prepare-head-first", action="store_true",
                      help="DIAGNOSTIC: build and compile the head before the base (in A/A runs, an offset that "
                           "follows the order, not the side, comes from the preparation)")
    gate.set_defaults(handler=cmd_gate)


def cmd_gate(args) -> int:
    """Run the gate; GateError (exit 2) for everything that prevents a verdict."""
    if args.calibrate == bool(args.base):
        raise GateError("give --base REF (compare the working tree or --head with it) or --calibrate (A/A), "
                        "not both and not neither")
    config = controller.GateConfig(threshold=args.threshold, alpha=args.alpha, rounds=args.rounds,
                                   max_rounds=args.rounds if args.calibrate else args.max_rounds,
                                   undecided_fails=args.undecided == "fail", weights=args.weights,
                                   inject_slowdown=args.inject_slowdown, head_first=args.prepare_head_first)
    if any(batch < 1 for batch in args.batches):
        raise GateError(f"--batches must be whole numbers >= 1, got {args.batches}")
    metrics = controller.default_metrics(args.recipes, args.batches, stages=not args.no_stages,
                                         gate_stages=args.gate_stages)
    _check_recipes(args.recipes)
    gpus = _gpus(args.device, args.gpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repo = repository()
    with tempfile.TemporaryDirectory(prefix="lpperf-gate-") as scratch:
        head = side(args.head, repo, Path(scratch))
        base = head if args.calibrate else side(args.base, repo, Path(scratch))
        say = _clock()
        say(f"gate: base {base.label} vs head {head.label} on {', '.join(g or 'cpu' for g in gpus)}; "
             f"{sum(m.gated for m in metrics)} gated metrics, threshold {config.threshold:.1%}")
        result = controller.run_gate(base, head, metrics, config, gpus, out, progress=say)
    record = report.to_dict(result)
    if args.calibrate:
        noise = report.calibration(result)
        record["calibration"] = [vars(item) for item in noise]
        print(report.format_calibration(noise, result))
        _write_json(record, out / "calibration.json")
        print(f"\ncalibration: {out / 'calibration.json'} (gate wall time {result.wall_s:.0f} s)")
        return EXIT_PASS
    print(report.format_table(result))
    _write_json(record, out / "gate.json")
    print(f"\ngate: {report.verdict_word(result)} in {result.wall_s:.0f} s; record: {out / 'gate.json'}")
    return result.exit_code


def _check_recipes(names) -> None:
    from lpperf import recipes

    for name in names:
        try:
            recipes.lookup(name)
        except ValueError as error:
            raise GateError(str(error)) from None


def _gpus(device: str, listed: str | None) -> list[str | None]:
    if device not in ("auto", "cuda", "cpu"):
        raise GateError(f"--device must be auto, cuda or cpu, got {device!r} (pick cards with --gpus)")
    if device == "cpu":
        if listed:
            raise GateError("--gpus goes with --device cuda or auto, not cpu")
        return [None]
    from lpperf.multigpu import visible_gpus

    visible = visible_gpus()
    if not visible:
        if device == "cuda" or listed:
            raise GateError("no CUDA GPU is visible (torch sees none); use --device cpu to exercise the gate")
        return [None]
    if not listed:
        return visible[:1]
    chosen = [entry.strip() for entry in listed.split(",") if entry.strip()]
    if len(set(chosen)) != len(chosen):
        raise GateError(f"--gpus names a card twice: {listed}")
    return chosen


def _git(repo: Path, *args: str, binary: bool = False):
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GateError(f"git {' '.join(args)} failed: {error}") from None
    if done.returncode != 0:
        raise GateError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip() or 'failed'}")
    return done.stdout if binary else done.stdout.decode().strip()


def repository() -> Path:
    root = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))
    if not (root / "lpperf" / "__init__.py").is_file():
        raise GateError(f"{root} is not an lpperf checkout (no lpperf/__init__.py); run the gate from one")
    return root


def side(ref: str | None, repo: Path, scratch: Path) -> controller.Side:
    if ref is None:
        return controller.Side(f"working tree {repo}", repo)
    folder = Path(ref)
    if folder.is_dir() and (folder / "lpperf" / "__init__.py").is_file():  # another checkout, as it is
        return controller.Side(f"folder {folder.resolve()}", folder.resolve())
    try:
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except GateError:
        raise GateError(f"git ref {ref!r} does not exist in {repo}; fetch it first (e.g. git fetch origin main) "
                        "or name another") from None
    folder = scratch / sha[:12]
    if not folder.exists():
        archive = _git(repo, "archive", "--format=tar", sha, binary=True)
        folder.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    if not (folder / "lpperf" / "__init__.py").is_file():
        raise GateError(f"{ref} ({sha[:10]}) has no lpperf package at its top level; it cannot be measured")
    return controller.Side(f"{ref} {sha[:10]}", folder)


def _write_json(data: dict, path: Path) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    temporary.replace(path)


def _clock():
    """Progress lines on stderr, each with the seconds since the gate began (where its time goes)."""
    began = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    return say
