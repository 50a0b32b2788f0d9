"""The gate's error rates, measured: many independent `lpperf gate` runs, each with a fresh pair of
workers, both sides the same code; some with a real, calibrated slowdown injected into the head.

    python tools/gate_study.py --out DIR --aa 10 --inject 0.05:5 0.02:5 0.10:1 [--gpus 0,1] [-- GATE ARGS]

Runs are spread over the cards (one run per card at a time, each pinned with CUDA_VISIBLE_DEVICES).
Every run reads the same synthetic seed-0 weights, written once as official checkpoints (pass
`--weights DIR` after `--` for others). Each card's runs are kept on their own share of the CPU
cores (lpperf.suite.multigpu.core_shares): a compile for one card must not slow the launches of a
launch-bound (eager) frame measured on the other. Nothing else should run on the host meanwhile.
Prints, per injected slowdown, how many runs ended regressed / same / undecided and their wall
times, and writes DIR/study.json; every run's gate.json and worker logs stay in DIR/run-NN/.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from lpperf.suite import multigpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--aa", type=int, default=10, help="A/A runs (nothing injected)")
    parser.add_argument("--inject", nargs="*", default=[], metavar="FRACTION:RUNS")
    parser.add_argument("--gpus", default="0", help="cards to spread the runs over")
    parser.add_argument("--deadline", type=float, default=float("inf"), metavar="SECONDS",
                        help="finish by this much wall time: a run starts only if the longest run so far "
                             "(--first-run-guess before any) still fits")
    parser.add_argument("--first-run-guess", type=float, default=180.0, metavar="SECONDS")
    parser.add_argument("--alternate-order", action="store_true",
                        help="every other run prepares the head first (--prepare-head-first): tells an offset "
                             "that follows the preparation order from one that follows the side")
    args, gate_args = parser.parse_known_args()
    gate_args = [arg for arg in gate_args if arg != "--"]
    plan = [0.0] * args.aa
    for item in args.inject:
        fraction, runs = item.split(":")
        plan += [float(fraction)] * int(runs)
    jobs: queue.Queue = queue.Queue()
    for number, fraction in enumerate(plan):
        jobs.put((number, fraction))
    results, lock = [], threading.Lock()
    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if "--weights" not in gate_args:
        gate_args += ["--weights", str(synthetic_checkpoints(args.out / "synthetic-weights"))]

    def fits() -> bool:
        with lock:
            longest = max((item["wall_s"] for item in results), default=args.first_run_guess)
        return time.perf_counter() - began + longest < args.deadline

    cards = args.gpus.split(",")
    shares = dict(zip(cards, multigpu.core_shares(len(cards)) or [None] * len(cards)))

    def card(gpu: str) -> None:
        while fits():
            try:
                number, fraction = jobs.get_nowait()
            except queue.Empty:
                return
            folder = args.out / f"run-{number:02d}"
            command = [sys.executable, "-m", "lpperf", "gate", "--base", ".", "--out", str(folder),
                       "--device", "cuda", *gate_args]
            if fraction:
                command += ["--inject-slowdown", str(fraction)]
            head_first = args.alternate_order and number % 2 == 1
            if head_first:
                command.append("--prepare-head-first")
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            with open(folder / "output.txt", "w") as output:  # written as it goes: a killed run still tells
                process = subprocess.Popen(command, env=dict(os.environ, CUDA_VISIBLE_DEVICES=gpu), stdout=output,
                                           stderr=subprocess.STDOUT)
                multigpu.pin(process.pid, shares[gpu])  # one card's compile must not slow the other's launches
                returncode = process.wait()
            wall = time.perf_counter() - start
            record = json.loads((folder / "gate.json").read_text()) if (folder / "gate.json").exists() else None
            with lock:
                results.append({"run": number, "gpu": gpu, "inject": fraction, "head_first": head_first,
                                "exit_code": returncode,
                                "wall_s": wall, "verdicts": None if record is None else
                                {m["name"]: m["verdict"] for m in record["metrics"] if m["gated"]},
                                "ratios": None if record is None else
                                {m["name"]: m["ratio"] for m in record["metrics"]}})
                (args.out / "study.json").write_text(json.dumps(sorted(results, key=lambda r: r["run"]), indent=2))
            print(f"run {number:02d} gpu {gpu} inject {fraction:.0%}: exit {returncode} in {wall:.0f} s "
                  f"{'' if record is None else record['verdict']}", flush=True)

    threads = [threading.Thread(target=card, args=(gpu,)) for gpu in cards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.sort(key=lambda item: item["run"])
    print(summary(results) if results else "no run finished")
    return 0


def synthetic_checkpoints(folder: Path) -> Path:
    """Synthetic seed-0 weights written once as official checkpoints: every worker of every run then
    reads the same files (seconds) instead of generating them again (20-30 s per run on the GPU host)."""
    if not folder.is_dir():
        from lpperf.models import weights

        weights.save_official(weights.synthetic(0, "cpu"), folder)
    return folder


def summary(results: list[dict]) -> str:
    lines = ["inject  runs  regressed  same  undecided  errors  wall s (min-max)"]
    for fraction in sorted({item["inject"] for item in results}):
        group = [item for item in results if item["inject"] == fraction]
        codes = [item["exit_code"] for item in group]
        walls = [item["wall_s"] for item in group]
        lines.append(f"{fraction:>6.0%}  {len(group):>4}  {codes.count(1):>9}  {codes.count(0):>4}  "
                     f"{codes.count(3):>9}  {codes.count(2):>6}  {min(walls):.0f}-{max(walls):.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
