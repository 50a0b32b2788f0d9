"""lpperf gate beside time, on the CPU with the fake worker: memory, output and start-up of each side
judged against their budgets, the failure paths that leave no verdict, and the Markdown tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lpperf.gate import checks, command, controller, report
from lpperf.gate.workers import GateError
from lpperf.util.exits import Exit

from helpers import run_fake

FAST = dict(noise=0.005)


def kinds(result) -> dict[str, set[str]]:
    beside = result.beside
    return {"memory": {item.judgment.value for item in beside.memory},
            "output": {item.judgment.value for item in beside.outputs},
            "start-up": {item.judgment.value for item in beside.startup}}


def test_a_a_is_same_on_memory_output_and_start_up(tmp_path):
    result = run_fake(tmp_path, FAST)
    assert result.exit_code == Exit.PASS and report.verdict_word(result) == "pass"
    assert kinds(result) == {"memory": {"same"}, "output": {"same"}, "start-up": {"same"}}
    [output] = result.beside.outputs
    assert output.head_vs_base.psnr_db == math.inf and output.head_vs_base.max_level_diff == 0
    assert output.frames == "2 frame(s) at batch 1 + one step at batch 4"
    assert output.base_parity.psnr_db == output.head_parity.psnr_db and output.base_parity.psnr_db < math.inf
    assert {item.measure for item in result.beside.memory} == set(checks.MEMORY_MEASURES.values())
    assert not (tmp_path / "logs" / "outputs").exists()  # the frames are compared, then removed


def test_the_head_holding_256_mib_more_is_a_memory_regression(tmp_path):
    result = run_fake(tmp_path, dict(FAST, head_memory_mib=256))
    assert result.exit_code == Exit.REGRESSED and report.verdict_word(result) == "regressed: memory"
    assert kinds(result)["memory"] == {"regressed"} and not result.regressed  # time itself is same
    table = report.format_table(result)
    assert "+25.6%" in table and "regressed above +5% and +32 MiB" in table


@pytest.mark.parametrize("memory_mib, added, judgment", [
    (1000, 40, "same"),  # 4 %: under the fraction
    (200, 30, "same"),  # 15 %, but under the 32 MiB floor
    (200, 40, "regressed"),  # over both
])
def test_memory_needs_both_the_fraction_and_the_floor(tmp_path, memory_mib, added, judgment):
    result = run_fake(tmp_path, dict(FAST, memory_mib=memory_mib, head_memory_mib=added))
    assert {item.judgment.value for item in result.beside.memory if item.measure == "torch peak allocated"} == {judgment}


def test_one_level_of_noise_in_the_head_output_is_a_change_unless_accepted(tmp_path):
    changed = run_fake(tmp_path, dict(FAST, head_output_levels=1))
    assert changed.exit_code == Exit.REGRESSED and report.verdict_word(changed) == "regressed: output"
    [output] = changed.beside.outputs
    assert 47 < output.head_vs_base.psnr_db < 49 and output.head_vs_base.max_level_diff <= 1  # 20 log10(255)
    accepted = run_fake(tmp_path, dict(FAST, head_output_levels=1), output=checks.OutputBudget(accept_change=True))
    assert accepted.exit_code == Exit.PASS and kinds(accepted)["output"] == {"changed (accepted)"}


def test_output_frames_zero_compares_no_output(tmp_path):
    result = run_fake(tmp_path, dict(FAST, head_output_levels=50), output_frames=0)
    assert result.exit_code == Exit.PASS and result.beside.outputs == []


def test_a_slower_second_build_is_a_start_up_regression_and_a_slower_first_build_is_not(tmp_path):
    slower = run_fake(tmp_path, dict(FAST, startup_s={"first_s": 47.0, "warm_s": 30.0}, head_startup_factor=1.5))
    assert kinds(slower)["start-up"] == {"regressed"} and report.verdict_word(slower) == "regressed: start-up"
    [startup] = slower.beside.startup
    assert (startup.base_warm_s, startup.head_warm_s) == (30.0, 45.0)
    first_only = run_fake(tmp_path, dict(FAST, startup_s={"first_s": 10.0, "warm_s": 5.0}, head_startup_factor=1.2))
    assert kinds(first_only)["start-up"] == {"same"}  # +1 s: under both budgets


def test_a_warm_build_that_doubles_by_seconds_is_within_the_floor_unless_the_floor_is_lowered(tmp_path):
    # Two processes of the same code built `fast` warm in 3.1 and 6.4 s (H200): no regression by default.
    doubled = dict(FAST, startup_s={"first_s": 12.0, "warm_s": 3.1}, head_startup_factor=6.4 / 3.1)
    assert kinds(run_fake(tmp_path, doubled))["start-up"] == {"same"}
    assert kinds(run_fake(tmp_path, doubled, startup=checks.StartupBudget(0.25, 2.0)))["start-up"] == {"regressed"}


def test_a_side_that_cannot_report_memory_is_an_error_not_a_verdict(tmp_path):
    with pytest.raises(GateError, match="the head side could not report its torch peak allocated memory"):
        run_fake(tmp_path, dict(FAST, no_memory=["head"]))


def test_where_neither_side_measures_memory_it_is_reported_not_measured(tmp_path):
    result = run_fake(tmp_path, dict(FAST, no_memory=True))
    assert result.exit_code == Exit.PASS and kinds(result)["memory"] == {"not measured"}
    assert "not measured (fake worker without memory)" in report.format_table(result)


def test_frames_of_different_shapes_are_an_error_not_a_verdict(tmp_path):
    with pytest.raises(GateError, match="frames of different shapes"):
        run_fake(tmp_path, dict(FAST, head_output_size=8))


def test_nan_in_the_head_output_is_a_change_even_when_changes_are_accepted():
    frames = np.zeros((1, 3, 4, 4), dtype=np.float32)
    broken = frames.copy()
    broken[0, 0, 0, 0] = np.nan
    base = {"frames": frames, "batched": frames, "reference": frames}
    head = {"frames": broken, "batched": frames, "reference": frames}
    comparison = checks.compare_outputs("fast", base, head, checks.OutputBudget(accept_change=True))
    assert comparison.judgment is checks.Judgment.CHANGED and comparison.head_vs_base.nonfinite == 1
    assert report._parity(comparison.head_vs_base) == "1 NaN/Inf"


def test_the_record_carries_every_comparison_and_stays_strict_json(tmp_path):
    record = report.to_dict(run_fake(tmp_path, dict(FAST, head_memory_mib=256)))
    text = json.dumps(record, allow_nan=False)
    data = json.loads(text)
    assert {entry["judgment"] for entry in data["memory"]} == {"regressed"}
    assert data["outputs"][0]["head_vs_base"] == {"psnr_db": None, "identical": True, "max_level_diff": 0,
                                                   "nonfinite": 0}
    assert data["startup"][0]["head_warm_s"] == 5.0 and data["config"]["memory"]["floor_mib"] == 32.0


def test_the_markdown_summary_has_every_table(tmp_path):
    result = run_fake(tmp_path, dict(FAST, head_output_levels=1))
    markdown = report.format_markdown(result)
    assert markdown.startswith(report.MARKDOWN_MARKER) and "### lpperf gate: ❌ regressed: output" in markdown
    assert "| frame fast b1 | yes |" in markdown
    for title in ("**memory after warm-up", "**output, head frames against base frames", "**start-up, build"):
        assert title in markdown
    assert "| fast | 2 frame(s) at batch 1 + one step at batch 4 |" in markdown and "| changed |" in markdown


def test_the_summary_goes_to_the_file_and_is_appended_to_the_job_summary(tmp_path, monkeypatch):
    job = tmp_path / "step-summary.md"
    job.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(job))
    command._write_summary("| table |\n", str(tmp_path / "gate.md"))
    assert (tmp_path / "gate.md").read_text() == "| table |\n"
    assert job.read_text() == "earlier step\n| table |\n"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing" / "summary.md"))
    with pytest.raises(GateError, match="cannot write the Markdown summary .* the verdict was measured"):
        command._write_summary("x", None)


def test_budgets_are_checked():
    with pytest.raises(ValueError, match="output_frames must be 0 to 16"):
        controller.GateConfig(output_frames=17)
    assert checks.StartupBudget().judge(1.0, 2.9) is checks.Judgment.SAME  # +190 %, but under 2 s
    assert checks.MemoryBudget().judge(10_000, 10_400) is checks.Judgment.SAME  # +4 %
