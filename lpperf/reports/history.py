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
                       "mean_s": ..., "min_s": ..., "max_s": ..., "stddev_s": ..., "rounds": 30,
                       "converged": false}],
       "rows": [{"name": "fp16 compiled", "batch": 1, "converged": true, ...}]}

  ``median_s`` is required per benchmark, the other statistics are optional. ``converged: false``
  marks a time that did not settle before sampling stopped (noise; ``report_dict`` writes the key
  only then); where a benchmark does not say, the bench row it came from (``rows``,
  ``"<name> [batch <batch>]"``) does, else it counts as settled. ``report_dict`` writes this format
  from a ``Run``.

Benchmark names are the keys that match results across runs, so a run may not repeat one. Medians
are seconds, finite and >= 0; a zero median compares equal to a zero median (ratio 1) and infinitely
faster than any other time.

Everything here is pure (no pytest, no torch) so the ``lpperf compare`` / ``lpperf history`` commands
and the pytest plugin share it. Bad files raise ``HistoryError`` with one paragraph naming the file,
what is wrong and what to do.

Over 400 lines as one module: both run formats are read into one Run, which comparing works on alone.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPORT_KIND = "lpperf-bench-report"
REPORT_VERSION = 1
UNSETTLED_MARK = "~"  # as lpperf bench marks a row whose timing did not settle
UNSETTLED_NOTE = ("a time that did not settle (the samples still varied when sampling stopped): the ratio is "
                  "noise; re-measure (more repeats, a quieter machine) before trusting it")

# pytest-benchmark names saved runs NNNN_<tag>.json; --benchmark-compare picks among these.
_SAVED_RUN_GLOB = "[0-9][0-9][0-9][0-9]_*.json"
# Statistics pytest-benchmark needs to display and gate a saved run without crashing.
_PYTEST_BENCHMARK_SECONDS = ("min", "max", "mean", "stddev", "median", "iqr")
_PYTEST_BENCHMARK_COUNTS = ("rounds", "iterations")
_FIX_HINT = (
    "Delete or replace the file (restore it from the main branch's benchmark history, or re-create it "
    "with `pytest -m gpu --benchmark-autosave` on main on the same card, or `lpperf bench` for a bench report), "
    "then run again."
)
_NAMES_SHOWN = 5  # names listed in a one-line message before "(N more)"


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
    converged: bool = True  # False: the samples still varied when sampling stopped, the time is noise


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
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> dict[str, BenchmarkResult]:
        # A lookup per name keeps comparing two runs, and a history of them, linear in their rows.
        by_name: dict[str, BenchmarkResult] = {}
        for result in self.results:
            by_name.setdefault(result.name, result)
        return by_name


@dataclass(frozen=True)
class Delta:
    """How one benchmark moved from the baseline run to the current one (ratio = new / old median)."""

    name: str
    old_median_s: float
    new_median_s: float
    ratio: float  # median_ratio: 1 for identical times (zeros included), inf from a zero baseline
    verdict: Verdict
    settled: bool = True  # False: one of the two times did not settle, so the ratio is noise
    unsettled_in: str = ""  # where the time did not settle: "A", "B" or "A and B"


@dataclass(frozen=True)
class Comparison:
    baseline: Run
    current: Run
    threshold: float
    deltas: tuple[Delta, ...]
    only_in_baseline: tuple[str, ...]
    only_in_current: tuple[str, ...]

    def missing_names(self) -> str:
        """The benchmarks of one run only, for a one-line message: 'only in A (2): x, y; only in B (1): z'."""
        sides = (("A", self.only_in_baseline), ("B", self.only_in_current))
        return "; ".join(f"only in {side} ({len(names)}): {names_text(names)}" for side, names in sides if names)


def names_text(names: Iterable[str]) -> str:
    """The first few names, comma-separated, then how many more: one line however long the list."""
    names = list(names)
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f", ... ({len(names) - _NAMES_SHOWN} more)" if len(names) > _NAMES_SHOWN else "")


def percent(fraction: float) -> str:
    """A fraction as the percentage it is, small ones included: 0.1 -> '10%', 0.005 -> '0.5%'."""
    return f"{fraction * 100:.4g}%"


def median_ratio(old_s: float, new_s: float) -> float:
    """new / old; identical times are 1 (two zeros included) and a zero baseline against a time is infinite."""
    if new_s == old_s:
        return 1.0
    return new_s / old_s if old_s > 0 else math.inf


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
    """Read and validate one run file (either format); every failure is a HistoryError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise HistoryError(f"{path} is a folder, not a benchmark file; name a run file (*.json) inside it.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such benchmark file. Check the path, or list the history folder.") from None
    except UnicodeDecodeError as error:
        raise HistoryError(
            f"{path}: not UTF-8 text (byte {error.start}), so not a benchmark run (JSON). {_FIX_HINT}"
        ) from None
    except OSError as error:
        raise HistoryError(
            f"{path}: cannot read the file ({error.strerror or error}); check its permissions."
        ) from None
    if not text.strip():
        raise HistoryError(f"{path}: the file is empty (an interrupted write?). {_FIX_HINT}")
    try:
        data = json.loads(text)
    except ValueError as error:  # JSONDecodeError, or a number longer than Python converts
        raise HistoryError(
            f"{path}: not valid JSON ({error}); the file is probably truncated or was edited by hand. {_FIX_HINT}"
        ) from None
    except RecursionError:
        raise HistoryError(
            f"{path}: JSON nested too deeply to read, so not a benchmark run (a run is only a few levels deep). "
            f"{_FIX_HINT}"
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


def missing_stats(path: str | Path, fields: list[str]) -> str:
    """Which of `fields` the benchmarks of the pytest-benchmark run at `path` lack in their stats, as one
    phrase ("" where none does). For the statistics pytest-benchmark's table and gate read from a baseline
    beyond those read_run checks; call it on a file read_run accepted."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    gaps = [f"{bench['fullname']!r} lacks stats {', '.join(absent)}" for bench in data["benchmarks"]
            if (absent := [field for field in fields if bench["stats"].get(field) is None])]
    if not gaps:
        return ""
    return "; ".join(gaps[:3]) + (f" (and {len(gaps) - 3} more benchmark(s))" if len(gaps) > 3 else "")


def check_history_folder(root: str | Path) -> Path:
    """``root`` as a Path if it is a folder; else a HistoryError saying what it is and what to give."""
    root = Path(root)
    if root.is_dir():
        return root
    what = "is a file, not a history folder" if root.exists() else "no such history folder"
    raise HistoryError(
        f"{root}: {what}. Give the folder that holds the runs: benchmark history is written by "
        "`pytest -m gpu --benchmark-autosave` (into .benchmarks/<card>/ by default) and `lpperf bench`."
    )


def load_history(root: str | Path, on_skip: Callable[[HistoryError], None] | None = None) -> list[Run]:
    """Every run file (*.json) under ``root``, recursively, ordered by run time then file name.

    A file that is not a usable run raises its HistoryError, or with ``on_skip`` is passed to it and left out.
    """
    runs = []
    for path in sorted(check_history_folder(root).rglob("*.json")):
        try:
            runs.append(read_run(path))
        except HistoryError as error:
            if on_skip is None:
                raise
            on_skip(error)
    return sorted(runs, key=_chronological)


def _chronological(run: Run) -> tuple:
    """A run's place in time: its recorded instant in UTC (a stamp without a zone read as UTC, as both
    pytest-benchmark and lpperf bench write UTC), so runs of different zones order by when they ran, not
    by their text; a stamp that is not an ISO date (or none) orders by its text, before every dated run,
    so it never becomes the latest over a run that can be placed."""
    try:
        moment = dt.datetime.fromisoformat(run.datetime or "")
    except ValueError:
        return (0, 0.0, run.datetime or "", run.source)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (1, moment.timestamp(), "", run.source)


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
    if (baseline.card is None) != (current.card is None):
        recorded, unrecorded = (baseline, current) if current.card is None else (current, baseline)
        raise HistoryError(
            f"{unrecorded.source} records no card, {recorded.source} was measured on {recorded.card!r}; a run "
            "without a card cannot be matched to one. Compare runs of the same card, or give --any-card "
            "(lpperf compare, history) to compare them anyway"
        )
    if baseline.card is not None and current.card is not None and card_slug(baseline.card) != card_slug(current.card):
        raise HistoryError(
            f"{baseline.source} was measured on {baseline.card!r} but {current.source} on {current.card!r}; "
            "timings of different cards are not comparable. Compare runs of the same card, or give --any-card "
            "(lpperf compare, history) to compare them anyway"
        )
    deltas = []
    for new in current.results:
        old = baseline.result(new.name)
        if old is None:
            continue
        ratio = median_ratio(old.median_s, new.median_s)
        unsettled_in = " and ".join(side for side, result in (("A", old), ("B", new)) if not result.converged)
        deltas.append(Delta(new.name, old.median_s, new.median_s, ratio, _verdict(ratio, threshold),
                            settled=not unsettled_in, unsettled_in=unsettled_in))
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
        f"threshold: {percent(comparison.threshold)}",
    ]
    width = max([len(delta.name) for delta in comparison.deltas] + [len("benchmark")])
    lines.append(f"{'benchmark':<{width}}  {'old ms':>10}  {'new ms':>10}  {'new/old':>8}  verdict")
    for delta in comparison.deltas:
        lines.append(
            f"{delta.name:<{width}}  {delta.old_median_s * 1e3:>10.3f}  {delta.new_median_s * 1e3:>10.3f}"
            f"  {delta.ratio:>8.3f}  {delta.verdict.value}{'' if delta.settled else ' ' + UNSETTLED_MARK}"
        )
    if not comparison.deltas:
        lines.append("(no benchmark is in both runs)")
    if not all(delta.settled for delta in comparison.deltas):
        lines.append(f"{UNSETTLED_MARK} {UNSETTLED_NOTE}")
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
                # Only a time that did not settle says so: where it is absent the bench row decides.
                **({} if result.converged else {"converged": False}),
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
        where = f"{where} ({bench['fullname']!r})"
        stats = bench.get("stats")
        if not isinstance(stats, dict):
            raise HistoryError(f"{where} has no 'stats' object ({schema}). {_FIX_HINT}")
        seconds = {key: _seconds(stats.get(key), f"{where} stats.{key}", _FIX_HINT)
                   for key in _PYTEST_BENCHMARK_SECONDS}
        for key in _PYTEST_BENCHMARK_COUNTS:
            _count(stats.get(key), f"{where} stats.{key}", _FIX_HINT)
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
        card=_card(machine_info.get("card"), f"{source}: machine_info.card", _FIX_HINT),
        commit=_optional_str(commit, f"{source}: commit_info.id", _FIX_HINT),
        datetime=_optional_str(data.get("datetime"), f"{source}: datetime", _FIX_HINT),
        machine_info=machine_info,
        results=_unique_names(results, source, _FIX_HINT),
    )


def _parse_lpperf_report(data: dict, source: str) -> Run:
    fix = "Re-create the report with `lpperf bench`."
    if data.get("version") != REPORT_VERSION:
        raise HistoryError(
            f"{source}: lpperf bench report version {data.get('version')!r}, this lpperf reads version "
            f"{REPORT_VERSION}. {fix}"
        )
    machine_info = data.get("machine_info")
    benchmarks = data.get("benchmarks")
    if not isinstance(machine_info, dict) or not isinstance(benchmarks, list):
        raise HistoryError(
            f"{source}: an lpperf bench report needs 'machine_info' (object) and 'benchmarks' (list). {fix}"
        )
    row_converged = _rows_converged(data.get("rows"))
    results = []
    for index, bench in enumerate(benchmarks):
        where = f"{source}: benchmarks[{index}]"
        if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
            raise HistoryError(f"{where} needs a 'name' string. {fix}")
        name = bench["name"]
        where = f"{where} ({name!r})"
        rounds = bench.get("rounds")
        converged = bench.get("converged", row_converged.get(name, True))
        if not isinstance(converged, bool):
            raise HistoryError(f"{where}.converged: expected true or false, got {converged!r}. {fix}")
        results.append(
            BenchmarkResult(
                name=name,
                median_s=_seconds(bench.get("median_s"), f"{where}.median_s", fix),
                mean_s=_optional_seconds(bench.get("mean_s"), f"{where}.mean_s", fix),
                min_s=_optional_seconds(bench.get("min_s"), f"{where}.min_s", fix),
                max_s=_optional_seconds(bench.get("max_s"), f"{where}.max_s", fix),
                stddev_s=_optional_seconds(bench.get("stddev_s"), f"{where}.stddev_s", fix),
                rounds=None if rounds is None else _count(rounds, f"{where}.rounds", fix),
                converged=converged,
            )
        )
    return Run(
        source=source,
        format=RunFormat.LPPERF_REPORT,
        card=_card(machine_info.get("card"), f"{source}: machine_info.card", fix),
        commit=_optional_str(data.get("commit"), f"{source}: commit", fix),
        datetime=_optional_str(data.get("datetime"), f"{source}: datetime", fix),
        machine_info=machine_info,
        results=_unique_names(results, source, fix),
    )


def _rows_converged(rows: object) -> dict[str, bool]:
    """Whether each bench row settled, by the name its benchmark has ("<row> [batch <batch>]"). The rows
    are the bench's full record, not part of the comparable format: rows of another shape say nothing."""
    if not isinstance(rows, list):
        return {}
    return {
        f"{row['name']} [batch {row['batch']}]": row["converged"]
        for row in rows
        if isinstance(row, dict) and isinstance(row.get("name"), str) and isinstance(row.get("batch"), int)
        and isinstance(row.get("converged"), bool)
    }


def _unique_names(results: list[BenchmarkResult], source: str, fix: str) -> tuple[BenchmarkResult, ...]:
    first_index: dict[str, int] = {}
    for index, result in enumerate(results):
        earlier = first_index.setdefault(result.name, index)
        if earlier != index:
            raise HistoryError(
                f"{source}: benchmarks[{index}] repeats the name {result.name!r} of benchmarks[{earlier}]; a name "
                f"matches a benchmark across runs, so each must be unique. {fix}"
            )
    return tuple(results)


def _seconds(value: object, where: str, fix: str) -> float:
    seconds = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float
            seconds = math.inf
    if not (math.isfinite(seconds) and seconds >= 0):
        raise HistoryError(f"{where}: expected a finite number of seconds >= 0, got {_short(value)}. {fix}")
    return seconds


def _optional_seconds(value: object, where: str, fix: str) -> float | None:
    return None if value is None else _seconds(value, where, fix)


def _count(value: object, where: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HistoryError(f"{where}: expected a whole number >= 1, got {_short(value)}. {fix}")
    return value


def _optional_str(value: object, where: str, fix: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise HistoryError(f"{where}: expected a string or null, got {_short(value)}. {fix}")
    return value


def _card(value: object, where: str, fix: str) -> str | None:
    card = _optional_str(value, where, fix)
    try:
        card_slug(card)  # runs are kept apart and filed by card slug
    except ValueError as error:
        raise HistoryError(f"{where}: {error}. {fix}") from None
    return card


def _short(value: object) -> str:
    """repr of a value from a file, cut to one readable line."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    "check_history_folder",
    "compare_runs",
    "format_comparison",
    "load_history",
    "median_ratio",
    "names_text",
    "parse_run",
    "percent",
    "read_run",
    "report_dict",
    "runs_for_card",
    "saved_run_files",
)
