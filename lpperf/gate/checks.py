"""The gate's judgments beside time: memory, output and start-up, head against base.

Time is judged by an interval over many paired rounds (lpperf.gate.stats) because a single timing
is noisy. These three are different: each side measures each once, in the same worker processes
that are timed, and the head's value is compared with the base's against a budget stated here.

* **Memory** (per gated frame: recipe and batch): torch's peak of allocated memory over a few steady
  steps, and the process's GPU memory as NVML lists it after warm-up. Within a process both repeat
  exactly; between processes they move only where cuDNN's algorithm search picks another algorithm,
  and a workspace is a few MiB. Regressed where the head needs more than the base by more than
  `fraction` AND more than `floor_mib`: the floor keeps a small allocator rounding from failing a
  merge, the fraction a large frame's normal spread.
* **Output** (per recipe): the head's frames against the base's for the same inputs and weights,
  PSNR and the largest 8-bit difference, the official rounding (lpperf.measure.parity). Changed
  where PSNR falls below `min_psnr_db` or a pixel moves more than `max_level_diff` levels, or the
  head makes NaN/Inf. The budget is the variation between two processes of the same code
  (`lpperf gate --calibrate` reports it); a change meant to move the output is accepted with
  `--accept-output-change`, and still reported. Each side's parity against its own float32
  reference is reported beside it.
* **Start-up** (per recipe, at its first metric's batch): build + compile + first frame. Two figures
  per side: the first build, with the compile caches as the runner has them (the base usually finds
  its code in them and the head its changed code not), reported only; and a second build after
  torch.compile's in-process state is reset as in a new process, so that each side finds only the
  file caches, now holding its own code: comparable, and judged. Regressed where the head takes
  longer by more than `fraction` AND more than `floor_s`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from pathlib import Path

import numpy as np

from lpperf.gate.workers import GateError

MIB = 2**20


class Judgment(enum.Enum):
    SAME = "same"
    REGRESSED = "regressed"  # memory or start-up grew beyond its budget
    CHANGED = "changed"  # the output moved beyond its budget
    ACCEPTED = "changed (accepted)"  # ... and the run was told the change is intended
    UNMEASURED = "not measured"  # neither side could measure it here (the CPU, no NVML)

    @property
    def fails(self) -> bool:
        return self in (Judgment.REGRESSED, Judgment.CHANGED)


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    fraction: float = 0.05
    floor_mib: float = 32.0

    def judge(self, base_mib: float, head_mib: float) -> Judgment:
        return _growth(base_mib, head_mib, self.fraction, self.floor_mib)


@dataclasses.dataclass(frozen=True)
class OutputBudget:
    # Two processes of `fast` (cudnn.benchmark may pick other algorithms) on an H100, torch 2.11: 59.2 dB, 3
    # levels apart; every pixel moved by one level: 48.1 dB (docs/GPU_SUITE.md).
    min_psnr_db: float = 55.0
    max_level_diff: int = 6
    accept_change: bool = False

    def judge(self, psnr_db: float, level_diff: int, head_nonfinite: int) -> Judgment:
        moved = head_nonfinite > 0 or not psnr_db >= self.min_psnr_db or level_diff > self.max_level_diff
        if not moved:
            return Judgment.SAME
        return Judgment.ACCEPTED if self.accept_change and head_nonfinite == 0 else Judgment.CHANGED


@dataclasses.dataclass(frozen=True)
class StartupBudget:
    # A warm build of `fast` took 3.1 s in one process and 6.4 s in another running the same code (H200,
    # torch 2.11), 3.0 and 6.0 s on an H100; the floor sits well above that. A change that defeats the
    # compile caches (a cold build: 47 s on the H200, 42.5 s on the H100) still fails.
    fraction: float = 0.25
    floor_s: float = 10.0

    def judge(self, base_s: float, head_s: float) -> Judgment:
        return _growth(base_s, head_s, self.fraction, self.floor_s)


def _growth(base: float, head: float, fraction: float, floor: float) -> Judgment:
    """Regressed where the head exceeds the base by more than `fraction` of it AND more than `floor`."""
    grew = head - base
    return Judgment.REGRESSED if grew > fraction * base and grew > floor else Judgment.SAME


# What the workers measure, by name (the keys of a prepare answer's "memory" entries)
MEMORY_MEASURES = {"torch_peak_mib": "torch peak allocated", "nvml_mib": "NVML process"}


@dataclasses.dataclass(frozen=True)
class MemoryComparison:
    metric: str  # the frame metric, e.g. "frame fast b1"
    measure: str  # a value of MEMORY_MEASURES
    base_mib: float | None
    head_mib: float | None
    judgment: Judgment
    why_unmeasured: str = ""


@dataclasses.dataclass(frozen=True)
class FrameComparison:
    """Two sets of frames of the same shape: PSNR, largest 8-bit difference, non-finite values of the first."""

    psnr_db: float
    max_level_diff: int
    nonfinite: int

    def to_dict(self) -> dict:
        return {"psnr_db": self.psnr_db if math.isfinite(self.psnr_db) else None,
                "identical": self.psnr_db == math.inf, "max_level_diff": self.max_level_diff,
                "nonfinite": self.nonfinite}


@dataclasses.dataclass(frozen=True)
class OutputComparison:
    recipe: str
    frames: str  # what was compared, e.g. "2 frames at batch 1 + one step at batch 4"
    head_vs_base: FrameComparison
    base_parity: FrameComparison | None  # each side against its own float32 reference
    head_parity: FrameComparison | None
    judgment: Judgment


@dataclasses.dataclass(frozen=True)
class StartupComparison:
    recipe: str
    base_first_s: float
    head_first_s: float
    base_warm_s: float
    head_warm_s: float
    judgment: Judgment  # of the warm figures


def compare_memory(base: dict, head: dict, budget: MemoryBudget, sides: tuple[str, str]) -> list[MemoryComparison]:
    """`base` and `head`: metric -> {measure key: MiB or None, "why": reason where None}. A measure both sides
    lack is not measured (with the reason); one that only one side reports cannot be compared: an error."""
    if set(base) != set(head):
        raise GateError(f"the sides measured memory for different frames: base {sorted(base)}, head {sorted(head)}")
    comparisons = []
    for metric in base:
        for key, measure in MEMORY_MEASURES.items():
            base_mib, head_mib = base[metric].get(key), head[metric].get(key)
            if base_mib is None and head_mib is None:
                why = base[metric].get("why") or head[metric].get("why") or "not reported"
                comparisons.append(MemoryComparison(metric, measure, None, None, Judgment.UNMEASURED, why))
                continue
            for label, own, other in ((sides[0], base_mib, head_mib), (sides[1], head_mib, base_mib)):
                if own is None:
                    why = (base if label == sides[0] else head)[metric].get("why") or "no reason given"
                    raise GateError(f"{metric}: the {label} side could not report its {measure} memory ({why}) while "
                                    f"the other side did ({other:.0f} MiB); the two cannot be compared")
                if not (isinstance(own, (int, float)) and math.isfinite(own) and own >= 0):
                    raise GateError(f"{metric}: the {label} side reported {own!r} MiB of {measure} memory, not a size")
            comparisons.append(MemoryComparison(metric, measure, float(base_mib), float(head_mib),
                                                budget.judge(float(base_mib), float(head_mib))))
    return comparisons


def compare_frames(actual: np.ndarray, expected: np.ndarray, what: str) -> FrameComparison:
    from lpperf.measure import parity

    if actual.shape != expected.shape:
        raise GateError(f"{what}: frames of different shapes, {actual.shape} and {expected.shape}; the sides did not "
                        "make the same frames, so their outputs cannot be compared")
    nonfinite = parity.count_nonfinite(actual)
    if nonfinite or parity.count_nonfinite(expected):
        return FrameComparison(math.nan, 255, nonfinite)
    return FrameComparison(parity.psnr(actual, expected), parity.max_level_difference(actual, expected), 0)


def load_outputs(path: Path, label: str) -> dict[str, np.ndarray]:
    """A worker's output file (frames, batched, reference), or a GateError naming the side."""
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as error:
        raise GateError(f"the {label} side's output frames {path} cannot be read ({error})") from None


def compare_outputs(recipe: str, base: dict[str, np.ndarray], head: dict[str, np.ndarray],
                    budget: OutputBudget) -> OutputComparison:
    """The head's frames against the base's, the batch-1 frames and the batched step each (the worse of
    the two counts), and each side's batch-1 frames against its own float32 reference."""
    for label, outputs in (("base", base), ("head", head)):
        missing = {"frames", "batched"} - set(outputs)
        if missing:
            raise GateError(f"{recipe}: the {label} side's output file lacks {sorted(missing)}")
    parts = [compare_frames(head[key], base[key], f"{recipe} ({key})") for key in ("frames", "batched")]
    psnrs = [part.psnr_db for part in parts]
    head_vs_base = FrameComparison(math.nan if any(map(math.isnan, psnrs)) else min(psnrs),
                                   max(part.max_level_diff for part in parts), sum(part.nonfinite for part in parts))
    parity = [compare_frames(outputs["frames"], outputs["reference"], f"{recipe} (reference)")
              if "reference" in outputs else None for outputs in (base, head)]
    described = f"{len(head['frames'])} frame(s) at batch 1 + one step at batch {len(head['batched'])}"
    return OutputComparison(recipe, described, head_vs_base, parity[0], parity[1],
                            budget.judge(head_vs_base.psnr_db, head_vs_base.max_level_diff, head_vs_base.nonfinite))


def compare_startup(recipe: str, base: dict, head: dict, budget: StartupBudget) -> StartupComparison:
    """`base`, `head`: {"first_s", "warm_s"} of the recipe's start-up on each side."""
    values = {}
    for label, side in (("base", base), ("head", head)):
        for key in ("first_s", "warm_s"):
            value = side.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise GateError(f"{recipe}: the {label} side reported a start-up {key} of {value!r}, not a time > 0")
            values[f"{label}_{key}"] = float(value)
    return StartupComparison(recipe, values["base_first_s"], values["head_first_s"], values["base_warm_s"],
                             values["head_warm_s"], budget.judge(values["base_warm_s"], values["head_warm_s"]))
