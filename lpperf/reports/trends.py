"""Trends of one card's benchmark history: slow creep (the latest run against a pinned run and the
best of the runs before it) and change points (where a series moved to another level). Pure
Python, no torch: `lpperf history` prints both and draws the change points on its charts."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from lpperf.reports.history import UNSETTLED_MARK, UNSETTLED_NOTE, HistoryError, Run, card_slug, median_ratio


@dataclass(frozen=True)
class Creep:
    """One benchmark of the latest run against a pinned baseline and the best of the runs before it."""

    name: str
    latest_s: float
    pinned_s: float | None
    best_s: float | None  # the fastest median among the `best_of` runs before the latest
    limit: float
    settled: bool = True  # False: a time behind a ratio (latest, pinned or best) did not settle: noise

    @property
    def vs_pinned(self) -> float | None:
        return None if self.pinned_s is None else median_ratio(self.pinned_s, self.latest_s)

    @property
    def vs_best(self) -> float | None:
        return None if self.best_s is None else median_ratio(self.best_s, self.latest_s)

    @property
    def checked(self) -> bool:
        """Whether there was anything to hold the latest time against (a benchmark new in the latest run
        has neither a pinned nor an earlier time)."""
        return self.pinned_s is not None or self.best_s is not None

    @property
    def flagged(self) -> bool:
        """A cumulative slowdown past the limit: each merge may have stayed under the per-merge gate."""
        return any(ratio is not None and ratio - 1 > self.limit for ratio in (self.vs_pinned, self.vs_best))


def creep(runs: list[Run], pinned: Run | None = None, best_of: int = 10, limit: float = 0.05) -> list[Creep]:
    """Slow creep of one card's history (oldest run first): the latest run against `pinned` (a release
    or a recorded run) and against the best of the `best_of` runs before it."""
    if not runs:
        raise ValueError("no runs to check for creep")
    if best_of < 1 or not 0 <= limit < 1:
        raise ValueError(f"need best_of >= 1 and a limit fraction in [0, 1), got {best_of}, {limit}")
    cards = {card_slug(run.card) for run in runs + ([pinned] if pinned else []) if run.card is not None}
    if len(cards) > 1:
        raise HistoryError(f"creep is measured on one card's history; these runs come from {sorted(cards)}")
    latest, earlier = runs[-1], runs[:-1][-best_of:]
    findings = []
    for result in latest.results:
        previous = [found for run in earlier if (found := run.result(result.name)) is not None]
        best = min(previous, key=lambda found: found.median_s) if previous else None
        pinned_result = pinned.result(result.name) if pinned is not None else None
        compared = [found for found in (result, best, pinned_result) if found is not None]
        findings.append(Creep(result.name, result.median_s, pinned_result.median_s if pinned_result else None,
                              best.median_s if best else None, limit,
                              settled=all(found.converged for found in compared)))
    return findings


def format_creep(findings: list[Creep], best_of: int) -> str:
    width = max([len(item.name) for item in findings] + [len("benchmark")])
    lines = [f"{'benchmark':<{width}}  {'latest ms':>10}  {'vs pinned':>9}  {f'vs best of {best_of}':>14}  creep"]
    for item in findings:
        def ratio(value):
            return "-" if value is None else f"{(value - 1) * 100:+.1f}%"
        lines.append(f"{item.name:<{width}}  {item.latest_s * 1e3:>10.3f}  {ratio(item.vs_pinned):>9}  "
                     f"{ratio(item.vs_best):>14}  {_verdict(item)}"
                     f"{'' if item.settled else ' ' + UNSETTLED_MARK}")
    if not all(item.settled for item in findings):
        lines.append(f"{UNSETTLED_MARK} {UNSETTLED_NOTE}")
    return "\n".join(lines)


def _verdict(item: Creep) -> str:
    if not item.checked:
        return "not checked (new)"
    return "FLAGGED" if item.flagged else "ok"


# Change points by binary segmentation: the cut that splits a series best into two levels (least squares
# on log times) is a change point when at least CHANGE_MIN_RUNS runs lie on each side, their medians
# differ by at least CHANGE_MIN_SHIFT and CHANGE_MIN_ORDERED of all (before, after) pairs are ordered
# the same way (a rank statistic, so one outlier run neither makes nor hides a change); then both
# sides are searched again.
CHANGE_MIN_RUNS = 4
CHANGE_MIN_SHIFT = 0.02
CHANGE_MIN_ORDERED = 0.9


def change_points(values: list[float], min_runs: int = CHANGE_MIN_RUNS, min_shift: float = CHANGE_MIN_SHIFT,
                  min_ordered: float = CHANGE_MIN_ORDERED) -> list[int]:
    """Indices i where the series changes level between values[i - 1] and values[i], in order. A series
    holding a zero time has no level on the log scale the levels are measured on: no change points."""
    if any(not math.isfinite(value) or value < 0 for value in values):
        raise ValueError("change points need finite times >= 0")
    if any(value == 0 for value in values):
        return []
    values = [float(value) for value in values]
    logs = [math.log(value) for value in values]
    # Prefix sums of the log times (centred, against cancellation) give a segment's cost in O(1), so a
    # long history costs O(n log n) per level of segmentation rather than O(n^2).
    center = sum(logs) / len(logs) if logs else 0.0
    sums, squares = [0.0], [0.0]
    for value in logs:
        sums.append(sums[-1] + (value - center))
        squares.append(squares[-1] + (value - center) ** 2)

    def cost(lo: int, hi: int) -> float:  # squared deviations of the log times of values[lo:hi] from their mean
        total = sums[hi] - sums[lo]
        return squares[hi] - squares[lo] - total * total / (hi - lo)

    found = []
    segments = [(0, len(values))]  # a stack, not recursion: a long staircase of levels cannot overflow it
    while segments:
        lo, hi = segments.pop()
        # The cut that best explains the segment as two levels (least squares on log times) ...
        cuts = range(lo + min_runs, hi - min_runs + 1)
        if not cuts:
            continue
        cut = min(cuts, key=lambda c: cost(lo, c) + cost(c, hi))
        # ... counts only if the two sides really differ, in level and in order.
        before, after = values[lo:cut], values[cut:hi]
        shift = abs(math.log(_median(after) / _median(before)))
        if shift < math.log1p(min_shift) or _ordered(before, after) < min_ordered:
            continue
        found.append(cut)
        segments += [(lo, cut), (cut, hi)]
    return sorted(found)


def _ordered(before: list[float], after: list[float]) -> float:
    """|pairs with after > before - pairs with after < before| / all (before, after) pairs, by sorting and
    bisection rather than visiting every pair."""
    ranked = sorted(before)
    net = sum(bisect.bisect_left(ranked, value) - (len(ranked) - bisect.bisect_right(ranked, value)) for value in after)
    return abs(net) / (len(before) * len(after))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
