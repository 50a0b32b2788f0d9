"""PNG charts of bench results and benchmark history, drawn with matplotlib (the `charts` extra).

matplotlib is optional: `unavailable_reason()` says why charts cannot be drawn ("" when they can),
and callers report that instead of failing. Figures are drawn with matplotlib's object API on the
Agg canvas (no pyplot, no global backend switch), each PNG written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from lpperf.video import atomic_path


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


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _bar_chart(labels: Sequence[str], values: Sequence[float], path: Path, title: str, xlabel: str,
               errors: Sequence[float] | None = None, reference_line: float | None = None) -> Path:
    figure = _figure(9, 1.2 + 0.38 * len(labels))
    axes = figure.add_subplot()
    positions = range(len(labels))
    axes.barh(positions, values, xerr=errors, color="#4C72B0", capsize=3)
    axes.set_yticks(list(positions), labels)
    axes.invert_yaxis()  # first row on top, as in the table
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    if reference_line is not None:
        axes.axvline(reference_line, color="grey", linestyle="--", linewidth=1)
    for position, value in zip(positions, values):
        axes.annotate(f"{value:.3g}", (value, position), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=8)
    return _save(figure, path)


def bench_charts(rows: Sequence[Mapping], out_dir: Path, title: str) -> tuple[list[Path], dict[str, str]]:
    """Charts of bench rows (RowResult.to_dict() dicts): latency, speedup, memory, parity.

    Returns (written PNG paths, {chart: why it was skipped}). Rows that failed (error set)
    are left out of every chart; a chart without any value to draw is skipped with the reason.
    """
    batches = {row["batch"] for row in rows}

    def label(row: Mapping) -> str:
        return row["name"] if len(batches) == 1 else f"{row['name']} (batch {row['batch']})"

    good = [row for row in rows if not row.get("error") and _finite(row.get("ms_per_frame"))]
    written, skipped = [], {}

    def chart(name: str, pairs: list, why_empty: str, **kwargs) -> None:
        if not pairs:
            skipped[name] = why_empty
            return
        labels, values = zip(*pairs)
        written.append(_bar_chart(labels, values, out_dir / f"{name}.png", **kwargs))

    latency = [(label(r), r["ms_per_frame"]) for r in good]
    errors = [max(r["p90_ms_per_frame"] - r["ms_per_frame"], 0.0) if _finite(r.get("p90_ms_per_frame")) else 0.0
              for r in good]
    if latency:
        labels, values = zip(*latency)
        written.append(_bar_chart(labels, values, out_dir / "latency.png",
                                  title=f"Latency per frame (median, bar to p90) - {title}",
                                  xlabel="ms per frame", errors=[[0.0] * len(errors), errors]))
    else:
        skipped["latency"] = "no row was measured successfully"
    staged = [r for r in good if r.get("stage_ms")]
    if staged:
        written.append(_stage_chart([label(r) for r in staged], [r["stage_ms"] for r in staged],
                                    out_dir / "latency_per_stage.png", title))
    else:
        skipped["latency_per_stage"] = "no row has per-stage timings (BenchConfig.stages was off)"
    chart("speedup", [(label(r), r["speedup"]) for r in good if _finite(r.get("speedup"))],
          "no speedups (the first row, the baseline, failed)",
          title=f"Speedup over the first row of its batch - {title}", xlabel="x faster", reference_line=1.0)
    chart("memory", [(label(r), r["memory"]["process_peak_bytes"] / 2**20) for r in good
                     if (r.get("memory") or {}).get("process_peak_bytes") is not None],
          next((r["memory_unavailable"] for r in good if r.get("memory_unavailable")), "no memory measured"),
          title=f"GPU memory, process peak (NVML) - {title}", xlabel="MiB")
    chart("parity", [(label(r), r["parity"]["frame"]["psnr_db"]) for r in good
                     if _finite(((r.get("parity") or {}).get("frame") or {}).get("psnr_db"))],
          "no finite PSNR (no parity measured, or outputs identical to the reference)",
          title=f"Parity vs the float32 reference (PSNR, higher is closer) - {title}", xlabel="PSNR dB")
    return written, skipped


def _stage_chart(labels: Sequence[str], stage_ms: Sequence[Mapping[str, float]], path: Path, title: str) -> Path:
    """Stacked bars: each stage's median ms (run alone, eagerly) per row."""
    figure = _figure(9, 0.45 * len(labels) + 1.6)
    axes = figure.add_subplot()
    positions = range(len(labels))
    left = [0.0] * len(labels)
    for stage in dict.fromkeys(stage for row in stage_ms for stage in row):
        widths = [row.get(stage, 0.0) for row in stage_ms]
        axes.barh(positions, widths, left=left, label=stage)
        left = [a + b for a, b in zip(left, widths)]
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("ms (each stage run alone, eagerly, in the row's precision)")
    axes.set_title(f"Latency per stage - {title}")
    axes.legend(fontsize=8, ncols=5)
    return _save(figure, path)


def trend_chart(name: str, series: Mapping[str, Sequence[tuple[str, float]]], path: Path) -> Path:
    """One benchmark's median over runs, one line per card: series = {card: [(run label, seconds)]}."""
    figure = _figure(9, 4.5)
    axes = figure.add_subplot()
    for card, points in series.items():
        labels = [point[0] for point in points]
        axes.plot(range(len(points)), [point[1] * 1e3 for point in points], marker="o", label=card)
        if len(series) == 1:
            axes.set_xticks(range(len(points)), labels, rotation=30, ha="right", fontsize=7)
    if len(series) > 1:
        axes.set_xlabel("run (oldest first)")
    axes.set_ylabel("median ms")
    axes.set_ylim(bottom=0)
    axes.set_title(name if len(name) <= 90 else name[:87] + "...", fontsize=9)
    axes.legend(fontsize=7)
    return _save(figure, path)
