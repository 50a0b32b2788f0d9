"""Parity tolerances per compute precision: how far an optimized output may be from the float32
reference. Free of torch, so the pytest plugin can take its defaults from here at import time."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Pass thresholds. ``stage_rel_error`` overrides ``max_rel_error`` for named stages
    (flattened names such as ``"keypoints/exp"`` or a whole stage ``"keypoints"``)."""

    max_rel_error: float
    min_psnr_db: float
    max_level_diff: int
    stage_rel_error: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def rel_error_for(self, stage: str) -> float:
        if stage in self.stage_rel_error:
            return self.stage_rel_error[stage]
        top = stage.split("/", 1)[0]
        return self.stage_rel_error.get(top, self.max_rel_error)

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        """Default tolerance of a compute precision: fp32, tf32, bf16 or fp16.

        Why these numbers: a stage's relative error grows roughly as the unit
        roundoff u of the format times the depth of the network it went through
        (tens of layers, accumulations in fp32). fp32 (u = 6e-8): only summation
        order and kernel choice differ, 1e-4 leaves room for the deep SPADE
        decoder; the frame must agree to 60 dB and within 1 level (a value on a
        truncation boundary can flip by one). tf32 (10-bit mantissa, u = 4.9e-4,
        torch's default for cuDNN convolutions) and fp16 (u = 4.9e-4, but
        activations are also *stored* rounded): 1e-2 and 2e-2, frame 40 / 40 dB, 4 / 12
        levels (fp16 measured 8-10 on an H200 with synthetic weights, PSNR 46.5-47.3 dB; the GPU suite
        uses these fp16 limits as its defaults). bf16 (7-bit mantissa, u = 3.9e-3): 5e-2, 32 dB, 12 levels. A
        frame in [0, 1] with relative error r has PSNR near -20 log10(r / 2), so the
        PSNR floors match the stage budgets. Untrained (random) weights can blow
        far past these; docs/PERFORMANCE.md (numeric traps) explains why such parity numbers mean nothing.
        """
        table = {
            "fp32": cls(max_rel_error=1e-4, min_psnr_db=60.0, max_level_diff=1),
            "tf32": cls(max_rel_error=1e-2, min_psnr_db=40.0, max_level_diff=4),
            "fp16": cls(max_rel_error=2e-2, min_psnr_db=40.0, max_level_diff=12),
            "bf16": cls(max_rel_error=5e-2, min_psnr_db=32.0, max_level_diff=12),
        }
        if precision not in table:
            raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(table)}")
        return table[precision]
