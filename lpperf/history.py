"""Benchmark history: read runs, keep cards apart, compare two runs.

Two on-disk formats are read:

* pytest-benchmark JSON: what ``--benchmark-autosave`` / ``--benchmark-json`` write. The lpperf
  pytest plugin (the top-level conftest.py) adds ``card``, ``driver``, ``cuda``, ``torch`` and
  ``weights`` to its ``machine_info``.
* lpperf bench reports (``REPORT_KIND``, version ``REPORT_VERSION``)::

      {"kind": "lpperf-bench-report", "version": 1,
       "datetime": "2026-11-28T08:00:00+00:00", "commit": "abc123" or null,
       "machine_info": {"card": "NVIDIA H100 80GB HBM3", ...},
       "benchmarks": [{"name": "fp16 compiled frame", "median_s": 0.00715,
                       "mean_s": ..., "min_s": ..., "max_s": ..., "stddev_s": ..., "rounds": 30}]}

  ``median_s`` is required per benchmark, the other statistics are optional. ``report_dict`` writes
  this format from a ``Run``.

Everything here is pure (no pytest, no torch) so the ``lpperf compare`` / ``lpperf history`` commands
and the pytest plugin share it. Bad files raise ``HistoryError`` with one paragraph naming the file,
what is wrong and what to do.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPORT_KIND = "lpperf-bench-report"
REPORT_VERSION = 1

# pytest-benchmark names saved runs NNNN_<tag>.json; --benchmark-compare picks among these.
_SAVED_RUN_GLOB = "[0-9][0-9][0-9][0-9]_*.json"
# Statistics pytest-benchmark needs to display and gate a saved run without crashing.
_PYTEST_BENCHMARK_SECONDS = ("min", "max", "mean", "stddev", "median", "iqr")
_PYTEST_BENCHMARK_COUNTS = ("rounds", "iterations")
_FIX_HINT = (
    "Delete or replace the file (restore it from the main branch's benchmark history, or re-create it "
    "with `pytest -m gpu --benchmark-autosave` on main on the same card), then run again."
)


class HistoryError(ValueError):
    """A history file or report that cannot be used; the message says which file and what to do."""


class RunFormat(enum.Enum):
    PYTEST_BENCHMARK = "pytest-benchmark"
    LPPERF_REPORT = REPORT_KIND


class Verdict(enum.Enum):
    FASTER = "faster"
    SLOWER = "slower"
    SAME = "same"


@dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark of one run; ``name`` is the key that matches it across runs."""

    name: str
    median_s: float
    mean_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    stddev_s: float | None = None
    rounds: int | None = None


@dataclass(frozen=True)
class Run:
    """One benchmark run: where it came from, on which card, and its results."""

    source: str
    format: RunFormat
    card: str | None
    commit: str | None
    datetime: str | None
    machine_info: Mapping[str, object]
    results: tuple[BenchmarkResult, ...]

    def result(self, name: str) -> BenchmarkResult | None:
        return next((result for result in self.results if result.name == name), None)


@dataclass(frozen=True)
class Delta:
    """How one benchmark moved from the baseline run to the current one (ratio = new / old median)."""

    name: str
    old_median_s: float
    new_median_s: float
    ratio: float
    verdict: Verdict


@dataclass(frozen=True)
class Comparison:
    baseline: Run
    current: Run
    threshold: float
    deltas: tuple[Delta, ...]
    only_in_baseline: tuple[str, ...]
    only_in_current: tuple[str, ...]

    @property
    def regressions(self) -> tuple[Delta, ...]:
        return tuple(delta for delta in self.deltas if delta.verdict is Verdict.SLOWER)


def card_slug(card_name: str | None) -> str:
    """Folder-safe name of a card: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'; no card -> 'cpu'."""
    if card_name is None:
        return "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", card_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"card name {card_name!r} has no letters or digits to name a history folder after")
    return slug


def parse_run(data: object, source: str) -> Run:
    """A run from decoded JSON: an lpperf bench report if it says so, else pytest-benchmark JSON."""
    if not isinstance(data, dict):
        raise HistoryError(
            f"{source}: expected a JSON object (pytest-benchmark run or lpperf bench report), "
            f"got a JSON {type(data).__name__}. {_FIX_HINT}"
        )
    if data.get("kind") == REPORT_KIND:
        return _parse_lpperf_report(data, source)
    return _parse_pytest_benchmark(data, source)


def read_run(path: str | Path) -> Run:
    """Read and validate one run file (either format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such benchmark file. Check the path, or list the history folder.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise HistoryError(
            f"{path}: not valid JSON ({error}); the file is probably truncated or was edited by hand. {_FIX_HINT}"
        ) from None
    return parse_run(data, str(path))


def saved_run_files(storage_dir: str | Path, machine_id: str | None = None) -> list[Path]:
    """Saved runs (NNNN_*.json) of a pytest-benchmark file storage, oldest first, as pytest-benchmark orders them.

    pytest-benchmark keeps them in ``<storage>/<machine_id>/``; files directly in ``<storage>`` count too.
    """
    return _query(Path(storage_dir), machine_id or "*", _SAVED_RUN_GLOB)


def baseline_files(storage_dir: str | Path, machine_id: str, compare: bool | str) -> list[Path]:
    """The files ``--benchmark-compare`` (``compare=True``) or ``--benchmark-compare=NUM`` would compare against.

    Mirrors pytest-benchmark's selection so the plugin can validate them before pytest-benchmark
    silently skips a corrupt one (and falls back to an older run, or to no baseline at all).
    """
    storage_dir = Path(storage_dir)
    if compare is True:
        return saved_run_files(storage_dir, machine_id)[-1:]
    if not isinstance(compare, str) or not compare:
        raise ValueError(f"compare must be True or a run number / file name prefix, got {compare!r}")
    if Path(compare).is_file():
        return [Path(compare)]
    parts = Path(compare).parts
    if len(parts) > 2:
        raise HistoryError(
            f"--benchmark-compare={compare!r} is neither an existing file nor 'NUM' / 'machine-id/NUM'."
        )
    platform_glob, name = parts if len(parts) == 2 else (machine_id, parts[0])
    return _query(storage_dir, platform_glob, name.rstrip("*") + "*.json")


def load_history(root: str | Path) -> list[Run]:
    """Every run file (*.json) under ``root``, recursively, ordered by run time then file name."""
    root = Path(root)
    if not root.is_dir():
        raise HistoryError(
            f"{root}: no such history folder. Benchmark history is written by "
            "`pytest -m gpu --benchmark-autosave` (into .benchmarks/<card>/ by default)."
        )
    runs = [read_run(path) for path in sorted(root.rglob("*.json"))]
    return sorted(runs, key=lambda run: (run.datetime or "", run.source))


def runs_for_card(runs: Iterable[Run], card: str) -> list[Run]:
    """The runs measured on ``card`` (a card name or its slug); runs with no card recorded never match."""
    wanted = card_slug(card)
    return [run for run in runs if run.card is not None and card_slug(run.card) == wanted]


def compare_runs(baseline: Run, current: Run, threshold: float = 0.10) -> Comparison:
    """Per benchmark present in both runs: old and new median, ratio new/old and a verdict.

    SLOWER when new/old - 1 > threshold (the same rule as pytest-benchmark's ``median:10%`` gate),
    FASTER when 1 - new/old > threshold, SAME otherwise.
    """
    if not (0 <= threshold < 1):
        raise ValueError(f"threshold is a fraction in [0, 1), e.g. 0.10 for 10%; got {threshold!r}")
    if baseline.card is not None and current.card is not None and card_slug(baseline.card) != card_slug(current.card):
        raise HistoryError(
            f"{baseline.source} was measured on {baseline.card!r} but {current.source} on {current.card!r}; "
            "timings of different cards are not comparable. Compare runs of the same card (runs_for_card)."
        )
    deltas = []
    for new in current.results:
        old = baseline.result(new.name)
        if old is None:
            continue
        ratio = new.median_s / old.median_s if old.median_s > 0 else math.inf
        deltas.append(Delta(new.name, old.median_s, new.median_s, ratio, _verdict(ratio, threshold)))
    current_names = {result.name for result in current.results}
    baseline_names = {result.name for result in baseline.results}
    return Comparison(
        baseline=baseline,
        current=current,
        threshold=threshold,
        deltas=tuple(deltas),
        only_in_baseline=tuple(sorted(baseline_names - current_names)),
        only_in_current=tuple(sorted(current_names - baseline_names)),
    )


def format_comparison(comparison: Comparison) -> str:
    """A plain-text table of a comparison, for the terminal."""
    lines = [
        f"baseline: {comparison.baseline.source} ({comparison.baseline.card or 'no card recorded'})",
        f"current:  {comparison.current.source} ({comparison.current.card or 'no card recorded'})",
        f"threshold: {comparison.threshold:.0%}",
    ]
    width = max([len(delta.name) for delta in comparison.deltas] + [len("benchmark")])
    lines.append(f"{'benchmark':<{width}}  {'old ms':>10}  {'new ms':>10}  {'new/old':>8}  verdict")
    for delta in comparison.deltas:
        lines.append(
            f"{delta.name:<{width}}  {delta.old_median_s * 1e3:>10.3f}  {delta.new_median_s * 1e3:>10.3f}"
            f"  {delta.ratio:>8.3f}  {delta.verdict.value}"
        )
    lines += [f"only in baseline: {name}" for name in comparison.only_in_baseline]
    lines += [f"only in current:  {name}" for name in comparison.only_in_current]
    return "\n".join(lines)


def report_dict(run: Run) -> dict:
    """A run as an lpperf bench report (JSON-ready); ``parse_run`` reads back the same card, commit and results."""
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "datetime": run.datetime,
        "commit": run.commit,
        "machine_info": {**run.machine_info, "card": run.card},
        "benchmarks": [
            {
                "name": result.name,
                "median_s": result.median_s,
                "mean_s": result.mean_s,
                "min_s": result.min_s,
                "max_s": result.max_s,
                "stddev_s": result.stddev_s,
                "rounds": result.rounds,
            }
            for result in run.results
        ],
    }


def _verdict(ratio: float, threshold: float) -> Verdict:
    if ratio - 1 > threshold:
        return Verdict.SLOWER
    if 1 - ratio > threshold:
        return Verdict.FASTER
    return Verdict.SAME


def _query(storage_dir: Path, platform_glob: str, name_glob: str) -> list[Path]:
    files = [path for folder in storage_dir.glob(platform_glob) for path in folder.glob(name_glob)]
    files += list(storage_dir.glob(name_glob))
    return sorted({path for path in files if path.is_file()}, key=lambda path: (path.name, str(path.parent)))


def _parse_pytest_benchmark(data: dict, source: str) -> Run:
    schema = (
        "a pytest-benchmark run has 'machine_info' (object) and 'benchmarks' (list of objects with "
        "'fullname' and 'stats')"
    )
    machine_info = data.get("machine_info")
    benchmarks = data.get("benchmarks")
    if not isinstance(machine_info, dict) or not isinstance(benchmarks, list):
        raise HistoryError(
            f"{source}: not a pytest-benchmark run or lpperf bench report ({schema}; found keys "
            f"{sorted(data)}). {_FIX_HINT}"
        )
    results = []
    for index, bench in enumerate(benchmarks):
        where = f"{source}: benchmarks[{index}]"
        if not isinstance(bench, dict) or not isinstance(bench.get("fullname"), str):
            raise HistoryError(f"{where} has no 'fullname' ({schema}). {_FIX_HINT}")
        stats = bench.get("stats")
        if not isinstance(stats, dict):
            raise HistoryError(f"{where} ({bench['fullname']}) has no 'stats' object ({schema}). {_FIX_HINT}")
        seconds = {key: _seconds(stats.get(key), f"{where} stats.{key}") for key in _PYTEST_BENCHMARK_SECONDS}
        for key in _PYTEST_BENCHMARK_COUNTS:
            _count(stats.get(key), f"{where} stats.{key}")
        results.append(
            BenchmarkResult(
                name=bench["fullname"],
                median_s=seconds["median"],
                mean_s=seconds["mean"],
                min_s=seconds["min"],
                max_s=seconds["max"],
                stddev_s=seconds["stddev"],
                rounds=stats["rounds"],
            )
        )
    commit_info = data.get("commit_info")
    commit = commit_info.get("id") if isinstance(commit_info, dict) else None
    return Run(
        source=source,
        format=RunFormat.PYTEST_BENCHMARK,
        card=_optional_str(machine_info.get("card"), f"{source}: machine_info.card"),
        commit=_optional_str(commit, f"{source}: commit_info.id"),
        datetime=_optional_str(data.get("datetime"), f"{source}: datetime"),
        machine_info=machine_info,
        results=tuple(results),
    )


def _parse_lpperf_report(data: dict, source: str) -> Run:
    if data.get("version") != REPORT_VERSION:
        raise HistoryError(
            f"{source}: lpperf bench report version {data.get('version')!r}, this lpperf reads version "
            f"{REPORT_VERSION}. Re-create the report with this lpperf (`lpperf bench`)."
        )
    machine_info = data.get("machine_info")
    benchmarks = data.get("benchmarks")
    if not isinstance(machine_info, dict) or not isinstance(benchmarks, list):
        raise HistoryError(
            f"{source}: an lpperf bench report needs 'machine_info' (object) and 'benchmarks' (list). "
            "Re-create it with `lpperf bench`."
        )
    results = []
    for index, bench in enumerate(benchmarks):
        where = f"{source}: benchmarks[{index}]"
        if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
            raise HistoryError(f"{where} needs a 'name' string. Re-create the report with `lpperf bench`.")
        rounds = bench.get("rounds")
        results.append(
            BenchmarkResult(
                name=bench["name"],
                median_s=_seconds(bench.get("median_s"), f"{where}.median_s"),
                mean_s=_optional_seconds(bench.get("mean_s"), f"{where}.mean_s"),
                min_s=_optional_seconds(bench.get("min_s"), f"{where}.min_s"),
                max_s=_optional_seconds(bench.get("max_s"), f"{where}.max_s"),
                stddev_s=_optional_seconds(bench.get("stddev_s"), f"{where}.stddev_s"),
                rounds=None if rounds is None else _count(rounds, f"{where}.rounds"),
            )
        )
    return Run(
        source=source,
        format=RunFormat.LPPERF_REPORT,
        card=_optional_str(machine_info.get("card"), f"{source}: machine_info.card"),
        commit=_optional_str(data.get("commit"), f"{source}: commit"),
        datetime=_optional_str(data.get("datetime"), f"{source}: datetime"),
        machine_info=machine_info,
        results=tuple(results),
    )


def _seconds(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise HistoryError(f"{where}: expected a finite number of seconds >= 0, got {value!r}. {_FIX_HINT}")
    return float(value)


def _optional_seconds(value: object, where: str) -> float | None:
    return None if value is None else _seconds(value, where)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HistoryError(f"{where}: expected a whole number >= 1, got {value!r}. {_FIX_HINT}")
    return value


def _optional_str(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise HistoryError(f"{where}: expected a string or null, got {value!r}. {_FIX_HINT}")
    return value


__all__ = (
    "REPORT_KIND",
    "REPORT_VERSION",
    "BenchmarkResult",
    "Comparison",
    "Delta",
    "HistoryError",
    "Run",
    "RunFormat",
    "Verdict",
    "baseline_files",
    "card_slug",
    "compare_runs",
    "format_comparison",
    "load_history",
    "parse_run",
    "read_run",
    "report_dict",
    "runs_for_card",
    "saved_run_files",
)
