"""PNG charts of bench results and benchmark history, drawn with matplotlib (the `charts` extra).

matplotlib is optional: `unavailable_reason()` says why charts cannot be drawn ("" when they can),
and callers report that instead of failing. Figures are drawn with matplotlib's object API on the
Agg canvas (no pyplot, no global backend switch), each PNG written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lpperf.reports.history import Run
from lpperf.reports.trends import change_points
from lpperf.util.files import atomic_path

if TYPE_CHECKING:
    from lpperf.reports.bench import RowResult


def unavailable_reason() -> str:
    """Why charts cannot be drawn here, or "" if they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (install the charts extra: pip install 'lpperf[charts]')"
    return ""


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def slug(text: str) -> str:
    """A file-name-safe version of a benchmark or recipe name."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80] or "unnamed"


def distinct_slugs(names: Iterable[str]) -> dict[str, str]:
    """slug() of each name, with a short hash of the name added where two names share a slug (slug folds
    case and cuts at 80 characters), so one chart never overwrites another."""
    slugs = {name: slug(name) for name in names}
    shared = Counter(slugs.values())
    return {name: text if shared[text] == 1 else f"{text[:71]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
            for name, text in slugs.items()}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plain_number(value: float, significant: int = 3) -> str:
    """`value` with about `significant` digits and never in exponent form: 13303, 172, 4.60, 0.325,
    0.0000123; "-" for NaN or infinity."""
    if not _finite(value):
        return "-"
    if value == 0:
        return "0"
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def shorten_middle(text: str, width: int) -> str:
    """`text` cut to `width` characters in the middle, so its start and end (a layer's or benchmark's
    distinguishing tail) both stay."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return f"{text[:head]}...{text[len(text) - (width - 3 - head):]}"


UNSETTLED = "~"  # marks a time whose samples did not settle, and every ratio computed from it
UNSETTLED_NOTE = "not converged (the samples still varied too much when sampling stopped): noise"
UNSETTLED_LEGEND = f"hatched: {UNSETTLED_NOTE}; its value marked {UNSETTLED}"
HATCH = "//"
LABEL_GAP_POINTS = 3  # between a bar's end (or its whisker's) and its value


def _hatch(bar, color: str) -> None:
    bar.set_facecolor("#E4E4E4")
    bar.set_edgecolor(color)
    bar.set_hatch(HATCH)


def _label_bars(axes, ends: Sequence[float], positions: Sequence[float], labels: Sequence[str],
                fontsize: float) -> None:
    """Each value written just past its bar's end or whisker, never through it; non-finite ends get none."""
    for end, position, label in zip(ends, positions, labels):
        if _finite(end):
            axes.annotate(label, (end, position), xytext=(LABEL_GAP_POINTS, 0), textcoords="offset points",
                          va="center", fontsize=fontsize,
                          bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})  # readable over lines


def _widen_to_fit_labels(figure) -> None:
    """Widen each panel's x range until the value labels past its bars end inside it (laid out once to
    measure them)."""
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    for axes in figure.axes:
        if not axes.texts:
            continue
        low, high = axes.get_xlim()
        width = axes.get_window_extent(renderer).width
        needed = high
        for text in axes.texts:
            room = width - text.get_window_extent(renderer).width - LABEL_GAP_POINTS * figure.dpi / 72 - 4
            if room > 0:
                needed = max(needed, low + (text.xy[0] - low) * width / room)
        axes.set_xlim(low, needed)


def _bar_chart(labels: Sequence[str], values: Sequence[float], path: Path, title: str, xlabel: str,
               errors: Sequence[float] | None = None, reference_line: float | None = None,
               unsettled: Sequence[bool] = ()) -> Path:
    """Horizontal bars, first row on top, each value written past its bar (and its p90 whisker, `errors`);
    bars flagged in `unsettled` are hatched, their values marked ~, and both explained."""
    figure = _figure(9, 1.2 + 0.38 * len(labels))
    axes = figure.add_subplot()
    positions = list(range(len(labels)))
    flagged = list(unsettled) + [False] * (len(labels) - len(unsettled))
    bars = axes.barh(positions, values, xerr=None if errors is None else [[0.0] * len(errors), errors],
                     color="#4C72B0", capsize=3)
    for bar, unsure in zip(bars, flagged):
        if unsure:
            _hatch(bar, "#4C72B0")
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()  # first row on top, as in the table
    axes.set_xlabel(xlabel + (f"\n{UNSETTLED_LEGEND}" if any(flagged) else ""), wrap=True)
    axes.set_title(title, fontsize=10, wrap=True)
    if reference_line is not None:
        axes.axvline(reference_line, color="grey", linestyle="--", linewidth=1)
    ends = [value + (errors[index] if errors is not None else 0.0) for index, value in enumerate(values)]
    _label_bars(axes, ends, positions, [plain_number(value) + UNSETTLED * unsure
                                        for value, unsure in zip(values, flagged)], fontsize=8)
    _widen_to_fit_labels(figure)
    return _save(figure, path)


BENCH_CHARTS = ("latency", "latency_per_stage", "speedup", "memory", "parity")  # the PNG names bench_charts writes
MEMORY_TITLE = "GPU memory: process peak through NVML (CUDA context and workspaces included)"


def bench_charts(results: Sequence[RowResult], out_dir: Path, title: str) -> tuple[list[Path], dict[str, str]]:
    """Charts of bench results (lpperf.reports.bench.RowResult): latency, per-stage time, speedup, memory, parity
    (BENCH_CHARTS, each NAME.png).

    Returns (written PNG paths, {chart: why it was skipped}; {"all": why} without matplotlib). Rows that
    failed (error set) are left out of every chart; a time that did not converge, and every speedup
    computed from one, is hatched and marked ~. A chart without any value to draw is skipped with the
    reason. `title` should say what ran (card, networks); every chart carries it.
    """
    reason = unavailable_reason()
    if reason:
        return [], {"all": reason}
    batches = {r.batch for r in results}

    def label(r: RowResult) -> str:
        return r.name if len(batches) == 1 else f"{r.name} (batch {r.batch})"

    good = [r for r in results if not r.error and _finite(r.ms_per_frame)]
    written, skipped = [], {}

    def chart(name: str, rows: list, values: list, why_empty: str, **kwargs) -> None:
        if not rows:
            skipped[name] = why_empty
            return
        written.append(_bar_chart([label(r) for r in rows], values, out_dir / f"{name}.png", **kwargs))

    chart("latency", good, [r.ms_per_frame for r in good], "no row was measured successfully",
          title=f"Latency per frame (median, bar to p90)\n{title}", xlabel="ms per frame",
          errors=[max(r.p90_ms_per_frame - r.ms_per_frame, 0.0) if _finite(r.p90_ms_per_frame) else 0.0
                  for r in good],
          unsettled=[not r.converged for r in good])
    staged = [r for r in good if r.stage_ms]
    if staged:
        written.append(_stage_chart([label(r) for r in staged], staged, staged[0].stage_clock,
                                    out_dir / "latency_per_stage.png", title))
    else:
        skipped["latency_per_stage"] = "no row has per-stage timings (BenchConfig.stages was off)"
    sped = [r for r in good if _finite(r.speedup)]
    chart("speedup", sped, [r.speedup for r in sped], "no speedups (the first row, the baseline, failed)",
          title=f"Speedup over the first row of its batch\n{title}", xlabel="x faster", reference_line=1.0,
          unsettled=[not (r.converged and r.speedup_converged) for r in sped])
    measured = [r for r in good if r.memory is not None]
    chart("memory", measured, [r.memory.process_peak_bytes / 2**20 for r in measured],
          next((r.memory_unavailable for r in good if r.memory_unavailable), "no memory measured"),
          title=f"{MEMORY_TITLE}\n{title}",
          xlabel="MiB, sampled peak of everything the process holds on the card, torch's cache included (torch's own "
                 "peak reserved: the table and report.json)")
    compared = [r for r in good if r.parity is not None and r.parity.frame is not None
                and _finite(r.parity.frame.psnr_db)]
    chart("parity", compared, [r.parity.frame.psnr_db for r in compared],
          "no finite PSNR (no parity measured, or outputs identical to the reference)",
          title=f"Parity vs the float32 reference (PSNR, higher is closer)\n{title}", xlabel="PSNR dB")
    return written, skipped


def _stage_chart(labels: Sequence[str], rows: Sequence[RowResult], clock: str, path: Path, title: str) -> Path:
    """One panel per stage, a bar per row: each stage's median run alone, hatched and marked ~ where its
    samples did not settle. Deliberately not stacked: the stages of a compiled step are fused, so their
    times alone do not add up to its frame time."""
    stages = list(dict.fromkeys(stage for row in rows for stage in row.stage_ms))
    figure = _figure(2.5 + 2.1 * len(stages), 2.1 + 0.32 * len(labels))
    panels = figure.subplots(1, len(stages), sharey=True, squeeze=False)[0]
    positions = list(range(len(labels)))
    any_unsettled = False
    for axes, stage in zip(panels, stages):
        values = [row.stage_ms.get(stage, math.nan) for row in rows]
        unsettled = [not row.stage_converged.get(stage, True) for row in rows]
        any_unsettled |= any(unsettled)
        for bar, unsure in zip(axes.barh(positions, values, color="#55A868"), unsettled):
            if unsure:
                _hatch(bar, "#55A868")
        _label_bars(axes, values, positions, [plain_number(value) + UNSETTLED * unsure
                                              for value, unsure in zip(values, unsettled)], fontsize=7)
        axes.set_title(f"{stage} (once per source)" if stage == "F" else stage, fontsize=9)
        axes.set_xlabel("ms", fontsize=8)
        axes.tick_params(labelsize=7)
    panels[0].set_yticks(positions, labels, fontsize=7)
    panels[0].invert_yaxis()
    figure.suptitle(f"{clock}, batch 1, ms\n{title}\nNot comparable with the frame latency: each stage runs alone "
                    "and uncompiled, while compiled rows fuse work across stages"
                    + (f"\n{UNSETTLED_LEGEND}" if any_unsettled else ""), fontsize=9, wrap=True)
    _widen_to_fit_labels(figure)
    return _save(figure, path)


def trend_charts(groups: Mapping[str, Sequence[Run]], out_dir: Path) -> list[Path]:
    """trend_chart for every benchmark of the runs, one line per group (card), runs oldest first; each
    title names the cards and the networks and weights its runs recorded."""
    names = dict.fromkeys(result.name for runs in groups.values() for run in runs for result in run.results)
    files = distinct_slugs(names)
    written = []
    for name in names:
        series = {card: [(_run_label(run), run.result(name).median_s) for run in runs if run.result(name)]
                  for card, runs in groups.items()}
        series = {card: points for card, points in series.items() if points}
        measured = [run for runs in groups.values() for run in runs if run.result(name)]
        written.append(trend_chart(name, series, out_dir / f"trend-{files[name]}.png", what_ran(measured)))
    return written


def what_ran(runs: Sequence[Run]) -> str:
    """The cards and the networks and weights of `runs`, as the runs recorded them (machine_info's weights:
    lpperf bench reports record the networks with them; pytest-benchmark runs of the GPU suite the weights)."""
    cards = list(dict.fromkeys(run.card or "no card recorded" for run in runs))
    recorded = list(dict.fromkeys(str(run.machine_info.get("weights") or "not recorded") for run in runs))
    return (f"card{'s' if len(cards) > 1 else ''}: {', '.join(cards)}; "
            f"networks and weights: {'; '.join(recorded)}")


def _run_label(run: Run) -> str:
    return (run.datetime or "")[:16] or Path(run.source).stem


def trend_chart(name: str, series: Mapping[str, Sequence[tuple[str, float]]], path: Path, subtitle: str = "") -> Path:
    """One benchmark's median over runs, one line per card: series = {card: [(run label, seconds)]}; a
    dashed line marks each change point of a card's series (lpperf.reports.trends.change_points). `subtitle` says
    what ran (what_ran)."""
    figure = _figure(9, 4.5)
    axes = figure.add_subplot()
    for card, points in series.items():
        labels = [point[0] for point in points]
        line, = axes.plot(range(len(points)), [point[1] * 1e3 for point in points], marker="o", label=card)
        for index in change_points([point[1] for point in points]):  # between runs index - 1 and index
            axes.axvline(index - 0.5, color=line.get_color(), linestyle="--", linewidth=1)
        if len(series) == 1:
            axes.set_xticks(range(len(points)), labels, rotation=30, ha="right", fontsize=7)
    if len(series) > 1:
        axes.set_xlabel("run (oldest first)")
    axes.set_ylabel("median ms")
    axes.set_ylim(bottom=0)
    axes.set_title(shorten_middle(name, 90) + (f"\n{subtitle}" if subtitle else ""), fontsize=9, wrap=True)
    axes.legend(fontsize=7)
    return _save(figure, path)
