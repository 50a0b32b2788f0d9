"""The gate's statistics: paired per-round log-ratios, the Hodges-Lehmann estimate of their centre,
a distribution-free confidence interval from the Wilcoxon signed-rank distribution, and the
three-way verdict. Pure numpy, no GPU: tested on the CPU with synthetic rounds.

Why these: one ABBA round gives one paired log-ratio log(head / base), with slow drift (clocks,
temperature) cancelled inside the round. Rounds are close to symmetric around the true log-ratio but
have occasional outliers (a host hiccup in one block), so the centre is estimated with the
Hodges-Lehmann estimator (median of the Walsh averages: about 95 % as efficient as the mean on
normal data, robust to a few bad rounds), and its interval is the exact signed-rank inversion (no
random resampling, so the same rounds always give the same verdict; exact for up to
EXACT_LIMIT rounds, normal approximation above).

Processes. Each side runs in a worker process, and two processes of the same code differ by small
steady offsets (measured up to ~1 % on whole frames, 10 % on a small stage): round r of a pair of
workers estimates mu + delta_p, where delta_p = d_head,p - d_base,p is that pair's offset, which no
number of rounds inside the pair reveals. With K pairs alternated (round r on pair r mod K), let
[L_p, H_p] be pair p's interval for mu + delta_p, each at the same one-sided level. The gate uses

    [L, H] = [min_p L_p, max_p H_p]

and calls a metric regressed only if L > 1 + threshold, i.e. every pair's interval lies above it.
If mu <= 1 + threshold, a false "regressed" needs L_p > 1 + threshold for every p, and for any pair
whose offset does not itself exceed the gap (mu + delta_p <= 1 + threshold) that has probability at
most alpha: a single process offset can no longer carry the verdict, it widens [L, H] by the
spread of the pairs' centres instead of moving the estimate. "same" is symmetric. The centre shown
is the Hodges-Lehmann estimate of all rounds together, and each pair's centre is kept: their spread
is the measured process offset.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

EXACT_LIMIT = 200
# Efficiency of Hodges-Lehmann relative to the mean on normal data is 3/pi: its standard error is
# sigma * sqrt(pi / 3) / sqrt(n). Used only to predict the smallest detectable change.
HL_STANDARD_ERROR_FACTOR = math.sqrt(math.pi / 3)


class Verdict(enum.Enum):
    REGRESSED = "regressed"  # the whole interval lies above the threshold
    SAME = "same"  # the whole interval lies below the threshold (faster counts as same)
    UNDECIDED = "undecided"  # the interval straddles the threshold: more rounds, or report it


@dataclass(frozen=True)
class Estimate:
    """The centre and interval of per-round log-ratios, as ratios head / base."""

    rounds: int
    ratio: float
    low: float
    high: float
    one_sided_alpha: float
    process_ratios: tuple[float, ...] = ()  # each worker pair's own centre, when rounds alternate over pairs

    def verdict(self, threshold: float) -> Verdict:
        if self.low > 1 + threshold:
            return Verdict.REGRESSED
        if self.high < 1 + threshold:
            return Verdict.SAME
        return Verdict.UNDECIDED


def log_ratios(base: np.ndarray | list[float], head: np.ndarray | list[float]) -> np.ndarray:
    """Per-round log(head / base) of paired per-call times; every time must be finite and > 0."""
    base, head = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    if base.shape != head.shape or base.ndim != 1:
        raise ValueError(f"base and head must be paired 1-D samples, got shapes {base.shape} and {head.shape}")
    for name, values in (("base", base), ("head", head)):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"{name} times must be finite and > 0, got {values.tolist()}")
    return np.log(head) - np.log(base)


def walsh_averages(values: np.ndarray) -> np.ndarray:
    """All pairwise means (x_i + x_j) / 2 for i <= j, sorted."""
    values = np.asarray(values, dtype=float)
    i, j = np.triu_indices(len(values))
    return np.sort((values[i] + values[j]) / 2)


@functools.lru_cache(maxsize=None)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T <= t) for t = 0 .. n(n+1)/2, T the Wilcoxon signed-rank statistic of n untied values."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for rank in range(1, n + 1):
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    return np.cumsum(counts) / 2.0**n


def signed_rank_critical(n: int, alpha: float) -> int:
    """The largest k with P(T < k) <= alpha: the interval's bound is the k-th smallest Walsh average
    (0 when even the most extreme value is more likely than alpha: no bound at that level)."""
    if n < 1:
        raise ValueError("need at least one round")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if n <= EXACT_LIMIT:
        cdf = _signed_rank_cdf(n)
        # P(T < k) = cdf[k - 1]; k = number of t with cdf[t] <= alpha
        return int(np.searchsorted(cdf, alpha, side="right"))
    mean = n * (n + 1) / 4
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return max(0, int(math.floor(mean - NormalDist().inv_cdf(1 - alpha) * sd + 0.5)))


def fewest_rounds(one_sided_alpha: float) -> int:
    """The fewest rounds whose interval has both bounds at this level (fewer leave it open)."""
    rounds = 1
    while signed_rank_critical(rounds, one_sided_alpha) == 0:
        rounds += 1
    return rounds


def estimate(values: np.ndarray | list[float], one_sided_alpha: float) -> Estimate:
    """Hodges-Lehmann centre of the log-ratios and its interval: each bound holds with probability
    at least 1 - one_sided_alpha. A bound that the rounds cannot support yet is +-inf."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"need a non-empty 1-D array of finite log-ratios, got {values!r}")
    walsh = walsh_averages(values)
    k = signed_rank_critical(len(values), one_sided_alpha)
    low = walsh[k - 1] if k >= 1 else -math.inf
    high = walsh[len(walsh) - k] if k >= 1 else math.inf
    return Estimate(rounds=len(values), ratio=math.exp(float(np.median(walsh))), low=math.exp(low),
                    high=math.exp(high), one_sided_alpha=one_sided_alpha)


def estimate_over_processes(values: np.ndarray | list[float], pairs: np.ndarray | list[int],
                            one_sided_alpha: float) -> Estimate:
    """The estimate of rounds that alternate over worker pairs (`pairs[r]` ran round r): the centre of all
    rounds, the interval the union of the pairs' own intervals (see the module's docstring). With one
    pair it is `estimate`."""
    values, pairs = np.asarray(values, dtype=float), np.asarray(pairs)
    if pairs.shape != values.shape:
        raise ValueError(f"one pair index per round: {pairs.shape} indices for {values.shape} rounds")
    groups = list(dict.fromkeys(pairs.tolist()))
    whole = estimate(values, one_sided_alpha)
    if len(groups) == 1:
        return whole
    each = [estimate(values[pairs == group], one_sided_alpha) for group in groups]
    return Estimate(rounds=whole.rounds, ratio=whole.ratio, low=min(e.low for e in each),
                    high=max(e.high for e in each), one_sided_alpha=one_sided_alpha,
                    process_ratios=tuple(e.ratio for e in each))


def per_test_alpha(alpha: float, gated_metrics: int, looks: int) -> float:
    """Bonferroni: the family-wise error alpha (per side) split over every gated metric and every look
    at the data (the gate may add rounds and decide again), so the gate as a whole keeps it."""
    if gated_metrics < 1 or looks < 1:
        raise ValueError("need at least one gated metric and one look")
    return alpha / (gated_metrics * looks)


def robust_sd(values: np.ndarray | list[float]) -> float:
    """Standard deviation estimated from the median absolute deviation (1.4826 * MAD)."""
    values = np.asarray(values, dtype=float)
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def smallest_detectable(sd: float, rounds: int, threshold: float, one_sided_alpha: float,
                        power: float = 0.9) -> float:
    """The regression (a fraction, e.g. 0.05) that the gate flags as regressed with probability
    `power`, given the per-round log-ratio spread `sd` (normal approximation of the HL interval)."""
    if rounds < 1 or sd < 0:
        raise ValueError("need rounds >= 1 and sd >= 0")
    z = NormalDist().inv_cdf(1 - one_sided_alpha) + NormalDist().inv_cdf(power)
    return (1 + threshold) * math.exp(z * sd * HL_STANDARD_ERROR_FACTOR / math.sqrt(rounds)) - 1
