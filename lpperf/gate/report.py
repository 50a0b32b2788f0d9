"""What a gate run says: the verdict table, which stages account for a regressed frame, memory, output
and start-up head against base, the card's clocks over the run, the JSON record, the same as Markdown
for a pull request, and the noise calibration table (A/A)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lpperf.gate import checks, stats
from lpperf.gate.controller import BesideTime, GateConfig, GateResult, MetricResult
from lpperf.measure import FRAME_STAGES
from lpperf.measure.timing import decode_clock_reasons
from lpperf.util.exits import Exit

# Clock-event reasons that mean the card slowed itself down (idle and application-clock bits do not).
SLOWDOWN_REASONS = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                    "hw_power_brake_slowdown")
POWER = 0.9  # for the smallest detectable regression in the calibration table
MIN_SHARE = 0.10  # of a regressed frame's added time, for a stage to be named as its cause


def _percent(ratio: float) -> str:
    if math.isinf(ratio) or ratio == 0:
        return "open"
    return f"{(ratio - 1) * 100:+.2f}%"


def format_table(result: GateResult) -> str:
    config = result.config
    header = ("metric", "gated", "base ms", "head ms", "change", "interval", "verdict", "rounds")
    rows = [header]
    for item in result.metrics:
        estimate = item.estimate
        rows.append((item.metric.name, "yes" if item.metric.gated else "no",
                     f"{np.median(item.base_ms):.3f}", f"{np.median(item.head_ms):.3f}",
                     _percent(estimate.ratio), f"[{_percent(estimate.low)}, {_percent(estimate.high)}]",
                     item.verdict.value if item.metric.gated else _attributed(item, config.threshold),
                     str(estimate.rounds)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) if i in (0, 6) else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"base: {result.base.label}; head: {result.head.label}; threshold {config.threshold:.1%}; "
                 f"each bound holds at 1 - {result.one_sided_alpha:.2g} (family-wise {config.alpha:g} per side "
                 f"over {len(result.gated)} gated metrics x {config.looks} looks, Bonferroni)"
                 f"{'; head prepared first' if config.head_first else ''}")
    if config.processes > 1:
        lines.append(f"{config.processes} worker pairs per recipe, alternated round by round: each interval spans "
                     "every pair's own interval, so an offset between processes widens it; pair centres: "
                     + "; ".join(f"{item.metric.name} " + ", ".join(_percent(r) for r in item.estimate.process_ratios)
                                 for item in result.metrics if item.metric.gated))
    lines += replayed_frames(result)
    lines += injected_lines(result)
    lines += attribution(result)
    lines += beside_time_lines(result.beside, config)
    lines.append(clock_summary(result))
    return "\n".join(lines)


def _change(base: float, head: float) -> str:
    return f"{(head / base - 1) * 100:+.1f}%" if base > 0 else "-"


def _parity(comparison: checks.FrameComparison | None) -> str:
    if comparison is None:
        return "-"
    if comparison.nonfinite:
        return f"{comparison.nonfinite} NaN/Inf"
    if comparison.psnr_db == math.inf:
        return "identical"
    return f"{comparison.psnr_db:.1f} dB, {comparison.max_level_diff} level{'s' * (comparison.max_level_diff != 1)}"


def beside_rows(beside: BesideTime) -> dict[str, list[tuple[str, ...]]]:
    """The memory, output and start-up comparisons as table rows (a header first), for text and Markdown."""
    memory = [("frame", "measure", "base MiB", "head MiB", "change", "verdict")] + [
        (item.metric, item.measure, f"{item.base_mib:.0f}" if item.base_mib is not None else "-",
         f"{item.head_mib:.0f}" if item.head_mib is not None else "-",
         _change(item.base_mib, item.head_mib) if item.base_mib is not None else "-",
         item.judgment.value + (f" ({item.why_unmeasured})" if item.why_unmeasured else ""))
        for item in beside.memory]
    outputs = [("recipe", "compared", "head vs base", "base vs fp32 ref", "head vs fp32 ref", "verdict")] + [
        (item.recipe, item.frames, _parity(item.head_vs_base), _parity(item.base_parity), _parity(item.head_parity),
         item.judgment.value) for item in beside.outputs]
    startup = [("recipe", "first build base s", "head s", "second build base s", "head s", "change", "verdict")] + [
        (item.recipe, f"{item.base_first_s:.1f}", f"{item.head_first_s:.1f}", f"{item.base_warm_s:.1f}",
         f"{item.head_warm_s:.1f}", _change(item.base_warm_s, item.head_warm_s), item.judgment.value)
        for item in beside.startup]
    return {"memory": memory, "output": outputs, "start-up": startup}


def beside_titles(config: GateConfig) -> dict[str, str]:
    """What each comparison measures and its budget, in one line."""
    return {
        "memory": f"memory after warm-up, head against base: regressed above +{config.memory.fraction:.0%} and "
                  f"+{config.memory.floor_mib:g} MiB",
        "output": f"output, head frames against base frames (same inputs and weights): changed below "
                  f"{config.output.min_psnr_db:g} dB or above {config.output.max_level_diff} levels, or with NaN/Inf"
                  + ("; an intended change is accepted (--accept-output-change)" if config.output.accept_change
                     else ""),
        "start-up": f"start-up, build + compile + first frame: judged on a second build as in a new process (each "
                    f"side's code in the file caches), regressed above +{config.startup.fraction:.0%} and "
                    f"+{config.startup.floor_s:g} s; the first build is as the runner's caches had it",
    }


def beside_time_lines(beside: BesideTime, config: GateConfig) -> list[str]:
    lines = []
    titles = beside_titles(config)
    for kind, rows in beside_rows(beside).items():
        if len(rows) == 1:
            continue
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["", titles[kind]]
        lines += ["  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return lines


def _attributed(item: MetricResult, threshold: float) -> str:
    """Stages are not gated; the column still says where they moved."""
    estimate = item.estimate
    if estimate.low > 1:
        return "(slower)"
    if estimate.high < 1:
        return "(faster)"
    return "(no change shown)"


def attribution(result: GateResult) -> list[str]:
    """For each regressed frame: the per-frame stages (M, S, W, G; F runs once per source) of that
    recipe that surely got slower and account for at least MIN_SHARE of the frame's added time,
    largest first. The share floor keeps small steady offsets between two worker processes (measured
    A/A on an H200, torch 2.11: up to 5 % of a 0.04 ms stage) from being named as the cause."""
    lines = []
    for frame in result.regressed:
        if frame.metric.stage is not None:
            continue
        added_ms = _added_ms(frame) / frame.metric.batch
        stages = [item for item in result.metrics
                  if item.metric.stage in FRAME_STAGES and item.metric.recipe == frame.metric.recipe]
        slower = sorted((item for item in stages
                         if item.estimate.low > 1 and _added_ms(item) >= MIN_SHARE * added_ms),
                        key=_added_ms, reverse=True)
        if not stages:
            lines.append(f"{frame.metric.name}: +{added_ms:.3f} ms per frame; stages were not measured "
                         "(run without --no-stages to attribute it)")
        elif not slower:
            lines.append(f"{frame.metric.name}: +{added_ms:.3f} ms per frame; no stage alone surely got slower by "
                         f"{MIN_SHARE:.0%} of that: the time went between or around the stages (launches, the "
                         "step's own code)")
        else:
            parts = [f"{item.metric.stage} +{_added_ms(item):.3f} ms ({_added_ms(item) / added_ms:.0%})"
                     for item in slower]
            lines.append(f"{frame.metric.name}: +{added_ms:.3f} ms per frame; accounted for by: {', '.join(parts)}")
    return lines


def replayed_frames(result: GateResult) -> list[str]:
    """Which whole frames the workers timed as CUDA graph replays (the uncompiled recipes')."""
    names = sorted({name for lane in result.setup.values() for side in ("base", "head")
                    for name, form in ((lane.get(side) or {}).get("timed_as") or {}).items()
                    if form == "cuda graph replay" and name.startswith("frame ")})
    if not names:
        return []
    return [f"timed as CUDA graph replays (uncompiled frames: launched eagerly they time the host, not the "
            f"card): {', '.join(names)}"]


def injected_lines(result: GateResult) -> list[str]:
    """What a test-only slowdown added to each of the head's frames, as the head measured it."""
    lines = []
    for lane in result.setup.values():
        for name, injected in sorted(((lane.get("head") or {}).get("injected_ms") or {}).items()):
            lines.append(f"injected (test only) into the head's {name}: +{injected['added_ms']:.3f} ms measured "
                         f"({injected['added_ms'] / injected['frame_ms']:+.1%}; asked "
                         f"{injected['target_ms'] / injected['frame_ms']:+.1%}), a GPU spin of "
                         f"{injected['spin_ms']:.3f} ms after each frame")
    return lines


def _added_ms(item: MetricResult) -> float:
    return float(np.median(item.base_ms)) * (item.estimate.ratio - 1)


def clock_summary(result: GateResult) -> str:
    if not result.clocks:
        return "card clocks: not read (no NVML, or the CPU)"
    mhz = [reading["sm_mhz"] for reading in result.clocks]
    seen = sorted({name for reading in result.clocks for name in decode_clock_reasons(reading["reasons"])
                   if name in SLOWDOWN_REASONS})
    slowed = f"; SLOWDOWN reasons seen: {', '.join(seen)} (the card throttled: repeat on a cooler card)" if seen else \
        "; no power or thermal slowdown seen"
    return f"card clocks over {len(result.clocks)} round readings: SM {min(mhz)}-{max(mhz)} MHz{slowed}"


def verdict_word(result: GateResult) -> str:
    failing = (["time"] if result.regressed else []) + result.beside.failing
    if failing:
        return "regressed: " + ", ".join(failing)
    if result.undecided:
        return "undecided" if result.config.undecided_fails else "undecided (allowed to pass)"
    return "pass"


def to_dict(result: GateResult) -> dict:
    return {
        "kind": "lpperf-gate",
        "version": 1,
        "base": {"label": result.base.label, "tree": str(result.base.tree)},
        "head": {"label": result.head.label, "tree": str(result.head.tree)},
        "config": dataclasses.asdict(result.config),
        "one_sided_alpha": result.one_sided_alpha,
        "exit_code": result.exit_code,
        "verdict": verdict_word(result),
        "metrics": [{
            "name": item.metric.name, "recipe": item.metric.recipe, "batch": item.metric.batch,
            "stage": item.metric.stage, "gated": item.metric.gated, "calls_per_block": item.calls_per_block,
            "base_ms": item.base_ms, "head_ms": item.head_ms, "ratio": item.estimate.ratio,
            "low": _finite(item.estimate.low), "high": _finite(item.estimate.high),
            "pair_of_round": item.pair_of_round, "pair_ratios": list(item.estimate.process_ratios),
            "verdict": item.verdict.value, "log_ratio_sd": float(np.std(item.log_ratios, ddof=1)),
        } for item in result.metrics],
        "attribution": attribution(result),
        "memory": [dict(vars(item), judgment=item.judgment.value) for item in result.beside.memory],
        "outputs": [{"recipe": item.recipe, "frames": item.frames, "head_vs_base": item.head_vs_base.to_dict(),
                     "base_parity": item.base_parity.to_dict() if item.base_parity else None,
                     "head_parity": item.head_parity.to_dict() if item.head_parity else None,
                     "judgment": item.judgment.value} for item in result.beside.outputs],
        "startup": [dict(vars(item), judgment=item.judgment.value) for item in result.beside.startup],
        "clocks": result.clocks,
        "setup": result.setup,
        "wall_s": result.wall_s,
    }


def format_markdown(result: GateResult) -> str:
    """The gate's tables as GitHub Markdown, for the job summary and the pull request: every number of
    gate.json's verdict, none that it lacks."""
    config = result.config
    word = verdict_word(result)
    icon = {Exit.PASS: "✅", Exit.REGRESSED: "❌", Exit.UNDECIDED: "⚠️"}.get(result.exit_code, "")
    lines = [MARKDOWN_MARKER, f"### lpperf gate: {icon} {word}", "",
             f"base `{result.base.label}`, head `{result.head.label}`; time threshold {config.threshold:.1%}, each "
             f"bound at 1 - {result.one_sided_alpha:.2g}; {result.wall_s:.0f} s", ""]
    time_rows = [("metric", "gated", "base ms", "head ms", "change", "interval", "verdict")] + [
        (item.metric.name, "yes" if item.metric.gated else "no", f"{np.median(item.base_ms):.3f}",
         f"{np.median(item.head_ms):.3f}", _percent(item.estimate.ratio),
         f"[{_percent(item.estimate.low)}, {_percent(item.estimate.high)}]",
         item.verdict.value if item.metric.gated else _attributed(item, config.threshold))
        for item in result.metrics]
    lines += _markdown_table(time_rows)
    lines += [f"- {line}" for line in attribution(result)]
    titles = beside_titles(config)
    for kind, rows in beside_rows(result.beside).items():
        if len(rows) > 1:
            lines += ["", f"**{titles[kind]}**", ""] + _markdown_table(rows)
    lines += ["", clock_summary(result)]
    return "\n".join(lines) + "\n"


MARKDOWN_MARKER = "<!-- lpperf-gate -->"  # lets the workflow find and update its own pull-request comment


def _markdown_table(rows: list[tuple[str, ...]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")
    return (["| " + " | ".join(map(cell, rows[0])) + " |", "|" + "---|" * len(rows[0])]
            + ["| " + " | ".join(map(cell, row)) + " |" for row in rows[1:]])


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class Noise:
    """A/A noise of one metric and the smallest regression the gate would catch with it."""

    name: str
    gated: bool
    rounds: int
    sd: float  # standard deviation of the per-round log-ratios
    robust_sd: float
    half_width: float  # of the interval, as a fraction
    detectable: float  # regression flagged with probability POWER at the configured threshold
    offset: float  # head / base - 1: zero in truth, since both sides are the same code
    offset_is_real: bool  # the interval excludes zero: a steady difference between the two processes
    pair_offsets: tuple[float, ...] = ()  # with several worker pairs: each pair's head / base - 1

    @property
    def offset_text(self) -> str:
        return f"{self.offset:+.2%}{' *' if self.offset_is_real else ''}"


def calibration(result: GateResult) -> list[Noise]:
    config = result.config
    noise = []
    for item in result.metrics:
        values = item.log_ratios
        sd = float(np.std(values, ddof=1))
        estimate = item.estimate
        half = (math.log(estimate.high) - math.log(estimate.low)) / 2 if math.isfinite(estimate.high) and \
            estimate.low > 0 else math.inf
        noise.append(Noise(item.metric.name, item.metric.gated, len(values), sd, stats.robust_sd(values),
                           math.expm1(half), stats.smallest_detectable(
                               max(sd, stats.robust_sd(values)), max(1, config.rounds // config.processes),
                               config.threshold, result.one_sided_alpha, POWER),
                           estimate.ratio - 1, not estimate.low <= 1 <= estimate.high,
                           tuple(ratio - 1 for ratio in estimate.process_ratios)))
    return noise


def calibration_record(noise: list[Noise]) -> list[dict]:
    """The calibration as JSON: a fraction that is unbounded (too few rounds for a closed interval) is
    null, so the file stays valid JSON."""
    return [{key: _finite(value) if isinstance(value, float) else value for key, value in vars(item).items()}
            for item in noise]  # pair_offsets are finite: each pair's centre is a median of its rounds


def _fraction(value: float) -> str:
    return f"{value:.2%}" if math.isfinite(value) else "open"


def format_calibration(noise: list[Noise], result: GateResult) -> str:
    config = result.config
    lines = [f"A/A noise, {noise[0].rounds if noise else 0} ABBA rounds; detectable = the regression flagged with "
             f"probability {POWER:.0%} after {config.rounds} rounds at threshold {config.threshold:.1%}",
             f"{'metric':<24} {'gated':>5} {'sd/round':>9} {'robust sd':>9} {'interval +-':>11} {'detectable':>10} "
             f"{'A/A offset':>10}"]
    pairs = any(item.pair_offsets for item in noise)
    if pairs:
        lines[-1] += "  pair offsets (process offset = their spread)"
    for item in noise:
        lines.append(f"{item.name:<24} {'yes' if item.gated else 'no':>5} {item.sd:>9.2%} {item.robust_sd:>9.2%} "
                     f"{_fraction(item.half_width):>11} {_fraction(item.detectable):>10} {item.offset_text:>10}"
                     + (f"  {', '.join(f'{offset:+.2%}' for offset in item.pair_offsets)}"
                        f" ({max(item.pair_offsets) - min(item.pair_offsets):.2%})" if item.pair_offsets else ""))
    if any(not math.isfinite(item.half_width) for item in noise):
        lines.append(f"open: {noise[0].rounds} rounds cannot bound an interval at 1 - {result.one_sided_alpha:.2g}; "
                     f"calibrate with --rounds {stats.fewest_rounds(result.one_sided_alpha) * config.processes} or more"
                     + (f" ({config.processes} pairs, each its own rounds)" if config.processes > 1 else ""))
    if any(item.offset_is_real for item in noise):
        lines.append("* the interval excludes zero although both sides ran the same code: a steady offset between "
                     "the two worker processes, which a gate's interval cannot see; a gated metric needs it well "
                     "under the threshold")
    beside = beside_time_lines(result.beside, config)
    if beside:
        lines += ["", "Memory, output and start-up between two processes of the same code: each budget must sit "
                      "beyond what moves here"] + beside
    lines.append(clock_summary(result))
    return "\n".join(lines)
