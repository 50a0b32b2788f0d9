"""Run the GPU suite on every visible card at once: one pytest process per card, none shared.

    python -m lpperf.suite.multigpu [--out DIR] [--gpus 0,1,...] [--history DIR] [--] PYTEST_ARGS...

e.g. ``python -m lpperf.suite.multigpu -- -m gpu --benchmark-compare --benchmark-compare-fail=median:10%``.

Why processes and not pytest-xdist: pytest-benchmark disables itself under xdist, and a card must
never be shared by two workers (timings would interfere). Worker ``i`` sees only card ``i``
(CUDA_VISIBLE_DEVICES) and writes its output under ``OUT/gpu<i>/`` (``OUT`` may be anywhere):
``pytest.log``, ``junit.xml`` and ``benchmark.json``. Its benchmark history is ``HISTORY/gpu<i>/``
(then the card model's folder inside, as for one card): the same folder on every run, so
``--benchmark-autosave`` on N cards followed by ``--benchmark-compare`` on N cards compares each card
with its own earlier run, never with another card's, and two workers never write one folder.
Each worker is kept on its own share of the host's CPU cores (``--no-pin`` turns that off), so one
card's compile cannot slow another card's launches while it measures.
``OUT/summary.json`` and the printed table give each card's exit code and test counts; the exit
status is 0 only if every worker exited 0. Nothing is deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from lpperf.util.cores import core_shares, describe_cores, pin
from lpperf.util.devices import visible_gpus

PYTEST = (sys.executable, "-m", "pytest")
# Set per worker by this module; passing them as well would make workers share files.
_RESERVED_PYTEST_OPTIONS = ("--benchmark-json", "--benchmark-storage", "--lpperf-history", "--junitxml", "--junit-xml")
_XDIST_OPTIONS = ("-n", "--numprocesses", "--dist")


@dataclass(frozen=True)
class WorkerResult:
    gpu: str
    exit_code: int
    folder: str
    card: str | None  # from the worker's benchmark JSON, when it wrote one
    tests: int | None  # counts from junit.xml; None when the worker wrote none
    passed: int | None
    failed: int | None
    errors: int | None
    skipped: int | None
    cores: str | None = None  # the CPU cores the worker was kept on (None: not pinned)


def check_pytest_args(pytest_args: Sequence[str]) -> None:
    """Refuse options that would make workers share files or turn benchmarking off."""
    for arg in pytest_args:
        name = arg.split("=", 1)[0]
        if name in _RESERVED_PYTEST_OPTIONS:
            raise ValueError(
                f"{name} is set per worker by lpperf.suite.multigpu (each card gets its own under OUT/gpu<i>/); "
                "remove it from the pytest arguments (multigpu's --history picks the history copied to each worker)."
            )
        if name in _XDIST_OPTIONS or (arg.startswith("-n") and not arg.startswith("--")):
            raise ValueError(
                f"{arg!r}: pytest-xdist turns pytest-benchmark off; lpperf.suite.multigpu already runs one process per card."
            )


def worker_command(gpu_folder: Path, history: Path, pytest_args: Sequence[str],
                   launcher: Sequence[str] = PYTEST) -> list[str]:
    return [
        *launcher,
        *pytest_args,
        f"--benchmark-json={gpu_folder / 'benchmark.json'}",
        f"--junitxml={gpu_folder / 'junit.xml'}",
        f"--lpperf-history={history}",
        "-o",
        f"cache_dir={gpu_folder / '.pytest_cache'}",
    ]


def worker_environment(gpu: str, worker_count: int, cores: Sequence[int] | None = None) -> dict[str, str]:
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    # N processes each using every core for host-side work would slow each other's kernel launches.
    threads = len(cores) if cores else max(1, (os.cpu_count() or 1) // worker_count)
    environment.setdefault("OMP_NUM_THREADS", str(threads))
    return environment


def run_workers(
    gpus: Sequence[str],
    pytest_args: Sequence[str],
    out_dir: Path,
    history_dir: Path = Path(".benchmarks"),
    launcher: Sequence[str] = PYTEST,
    pin_cores: bool = True,
) -> list[WorkerResult]:
    """Start one pytest per card at once, wait for all, and read back what each wrote. With pin_cores,
    each worker gets its own share of the CPU cores (core_shares)."""
    if not gpus:
        raise ValueError("no GPU to run on: CUDA_VISIBLE_DEVICES is empty or torch sees no CUDA device")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"each card may get only one worker; {list(gpus)} names a card twice")
    check_pytest_args(pytest_args)
    folders = [out_dir / f"gpu{gpu}" for gpu in gpus]
    for folder in folders:
        if folder.exists():
            raise ValueError(f"{folder} exists; results are never overwritten, choose a new --out")
        folder.mkdir(parents=True)
    shares = (core_shares(len(gpus)) if pin_cores else None) or [None] * len(gpus)
    running = []
    try:
        for gpu, folder, cores in zip(gpus, folders, shares):
            log = (folder / "pytest.log").open("wb")
            process = subprocess.Popen(
                worker_command(folder, history_dir / f"gpu{gpu}", pytest_args, launcher),
                env=worker_environment(gpu, len(gpus), cores),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            pin(process.pid, cores)  # before the interpreter has started any thread or process of its own
            running.append((gpu, folder, process, log))
        exit_codes = [process.wait() for _, _, process, _ in running]
    finally:
        for _, _, process, log in running:
            if process.poll() is None:  # interrupted: leave no orphan holding a card
                process.terminate()
                process.wait()
            log.close()
    return [replace(_read_worker(gpu, folder, code), cores=describe_cores(cores))
            for (gpu, folder, _, _), code, cores in zip(running, exit_codes, shares)]


def format_summary(results: Sequence[WorkerResult]) -> str:
    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines = [f"{'gpu':<5} {'card':<28} {'exit':>4} {'passed':>6} {'failed':>6} {'errors':>6} {'skipped':>7} "
             f"{'cores':>9}  folder"]
    for result in results:
        lines.append(
            f"{result.gpu:<5} {result.card or '?':<28} {result.exit_code:>4} {count(result.passed):>6} "
            f"{count(result.failed):>6} {count(result.errors):>6} {count(result.skipped):>7} "
            f"{result.cores or 'all':>9}  {result.folder}"
        )
    failed = [result.gpu for result in results if result.exit_code != 0]
    lines.append(f"FAILED on gpu {', '.join(failed)}" if failed else f"all {len(results)} workers passed")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, launcher: Sequence[str] = PYTEST) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lpperf.suite.multigpu",
        description="Run pytest on every visible GPU at once, one process per card. "
        "Arguments after `--` (or not recognised here) go to every pytest worker.",
        allow_abbrev=False,
    )
    parser.add_argument("--out", type=Path, help="output folder (default: out/multigpu/<UTC time>)")
    parser.add_argument("--gpus", help="comma-separated cards to use (default: all visible)")
    parser.add_argument(
        "--history", type=Path, default=Path(".benchmarks"),
        help="benchmark history root; card i keeps its runs in HISTORY/gpu<i>/ (default: .benchmarks; it must lie "
        "inside the current folder for --benchmark-compare)",
    )
    parser.add_argument("--no-pin", action="store_true",
                        help="let every worker use every CPU core (default: each gets its own share, so one card's "
                        "compile cannot slow another card's measurement)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        options, pytest_args = parser.parse_args(argv[:split]), argv[split + 1 :]
    else:
        options, pytest_args = parser.parse_known_args(argv)
    gpus = [gpu.strip() for gpu in options.gpus.split(",") if gpu.strip()] if options.gpus else visible_gpus()
    out_dir = options.out or Path("out", "multigpu", datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    try:
        results = run_workers(gpus, pytest_args, out_dir, options.history, launcher, pin_cores=not options.no_pin)
    except ValueError as error:
        parser.error(str(error))
    (out_dir / "summary.json").write_text(json.dumps([asdict(result) for result in results], indent=2))
    print(format_summary(results))
    return 0 if all(result.exit_code == 0 for result in results) else 1


def _read_worker(gpu: str, folder: Path, exit_code: int) -> WorkerResult:
    counts = _junit_counts(folder / "junit.xml")
    tests, failed, errors, skipped = counts if counts else (None, None, None, None)
    return WorkerResult(
        gpu=gpu,
        exit_code=exit_code,
        folder=str(folder),
        card=_benchmark_card(folder / "benchmark.json"),
        tests=tests,
        passed=None if counts is None else tests - failed - errors - skipped,
        failed=failed,
        errors=errors,
        skipped=skipped,
    )


def _junit_counts(path: Path) -> tuple[int, int, int, int] | None:
    """(tests, failures, errors, skipped) summed over the test suites of a junit XML file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (FileNotFoundError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return tuple(sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped"))


def _benchmark_card(path: Path) -> str | None:
    try:
        machine_info = json.loads(path.read_text()).get("machine_info", {})
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None
    card = machine_info.get("card") if isinstance(machine_info, dict) else None
    return card if isinstance(card, str) else None


if __name__ == "__main__":
    raise SystemExit(main())
