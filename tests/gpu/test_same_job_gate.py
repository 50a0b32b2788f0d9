"""The same-job A/B gate as a pytest test: `pytest -m gpu --lpperf-gate-base=origin/main` compares the
working tree with that ref on this card (lpperf gate, default metrics) and fails with the verdict
table on a regression; undecided at the cap fails too. Skipped unless the option is given."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from lpperf.gate import controller, refs, report
from lpperf.util.devices import visible_gpus

pytestmark = pytest.mark.gpu


def test_no_regression_against_the_base(lpperf_settings, lpperf_card, tmp_path):
    if not lpperf_card.cuda_available:
        pytest.skip(lpperf_card.no_cuda_reason)
    if lpperf_settings.gate_base is None:
        pytest.skip("same-job A/B not asked for: give --lpperf-gate-base=REF (e.g. origin/main)")
    repo = refs.repository()
    with tempfile.TemporaryDirectory(prefix="lpperf-gate-") as scratch:
        base = refs.side(lpperf_settings.gate_base, repo, Path(scratch))
        head = refs.side(None, repo, Path(scratch))
        weights = None if lpperf_settings.weights_dir is None else str(lpperf_settings.weights_dir)
        result = controller.run_gate(base, head, controller.default_metrics(), controller.GateConfig(weights=weights),
                                     visible_gpus()[:1], tmp_path)
    assert result.exit_code == 0, f"lpperf gate: {report.verdict_word(result)}\n{report.format_table(result)}"
