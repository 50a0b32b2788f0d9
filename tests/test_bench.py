"""lpperf.reports.bench on the CPU: the rows (waterfall from a recipe's steps, peers), the speedups over the first
row and the peer row, the table of typed results, the report, and one real run on small networks."""

import json

import pytest
import torch

from lpperf.optimize import recipes, steps
from lpperf.reports import bench, history
from lpperf.optimize.engine import Engine
from helpers import TWO_SAMPLES, row_result, small_networks



# ---- rows

def test_waterfall_is_each_prefix_of_the_recipe_with_the_compile_shown_twice():
    chosen = recipes.lookup("fast").steps
    rows = bench.waterfall_rows("fast")
    assert rows[0] == bench.Row("fp32 eager", (), recipe="fp32-eager")
    compile_at = next(index for index, step in enumerate(chosen) if step.compile_scope is not None)
    assert [row.steps for row in rows[:compile_at + 1]] == [chosen[:count] for count in range(compile_at + 1)]
    assert [row.name for row in rows[1:4]] == ["+ inference_mode", "+ cudnn.benchmark", "+ fold spectral norm"]
    twin = rows[compile_at + 1]  # the compile alone, before its CUDA graphs
    assert twin.name == "+ compile whole step (default)" and twin.steps[:-1] == chosen[:compile_at]
    assert twin.steps[-1] is steps.compile_step("default")
    assert rows[-1] == bench.Row("+ CUDA graph (reduce-overhead) = fast", chosen, recipe="fast")
    assert len(rows) == len(chosen) + 2


def test_a_new_recipe_with_a_new_step_appears_without_editing_bench(monkeypatch):
    def brand_new_step(engine):
        engine.inference_mode = True

    monkeypatch.setitem(steps.STEPS, "brand_new_step", steps.Step("brand_new_step", "+ a brand new step",
                                                                   brand_new_step))
    recipe = recipes.Recipe("brand-new", (steps.half, steps.lookup("brand_new_step"),
                                          steps.compile_nets("reduce-overhead")))
    monkeypatch.setitem(recipes.RECIPES, "brand-new", recipe)
    assert [row.name for row in bench.waterfall_rows("brand-new")] == [
        "fp32 eager", "+ fp16 weights (.half())", "+ a brand new step", "+ compile each network (default)",
        "+ CUDA graph (reduce-overhead) = brand-new"]


def test_default_rows_and_unknown_recipes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [row.recipe for row in bench.default_rows(cpu)] == list(bench.CPU_DEFAULT_RECIPES)
    assert [row.recipe for row in bench.default_rows(cpu, ["fast", "fast"])] == ["fp32-eager", "fast"]
    assert [row.recipe for row in bench.default_rows(cpu, ["fast", "fp32-eager"])] == ["fast", "fp32-eager"]
    assert [row.name for row in bench.default_rows(cuda)] == [
        row.name for row in bench.waterfall_rows() + bench.peer_rows()]
    assert {row.recipe for row in bench.peer_rows()} == set(bench.PEER_LABELS)
    with pytest.raises(ValueError, match="unknown recipe 'warp-speed'; known recipes: fp32-eager, reference"):
        bench.default_rows(cpu, ["warp-speed"])


def test_precision_is_what_the_engine_computes():
    def engine(device="cuda", **settings):
        return Engine(nets={}, device=torch.device(device), **settings)

    assert engine().precision == "tf32"
    assert engine("cpu").precision == "fp32"  # no TF32 on a CPU
    assert engine(allow_tf32=False).precision == "fp32"
    assert engine(weight_dtype=torch.float16).precision == "fp16"
    assert engine(autocast_dtype=torch.bfloat16).precision == "bf16"


def test_config_is_checked():
    assert bench.default_config(torch.device("cpu"), 2).rule == bench.CPU_RULE
    assert bench.default_config(torch.device("cuda"), 2) == bench.BenchConfig(batch=2)
    with pytest.raises(ValueError, match=r"parity_frames \(frames compared with the reference\) must be an int >= 1"):
        bench.BenchConfig(parity_frames=0)
    with pytest.raises(ValueError, match="BenchConfig.warmup must be an int >= 0, got -1"):
        bench.BenchConfig(warmup=-1)


# ---- speedups and the table

def test_speedups_over_the_first_row_and_the_peer_row():
    results = [row_result("fp32 eager", 20.0), row_result("peer", 10.0, recipe="official-default"),
               row_result("fast", 5.0, recipe="fast"), row_result("broken", 1.0, error="out of GPU memory")]
    bench._set_speedups(results, peer="official-default")
    assert [r.speedup for r in results] == [1.0, 2.0, 4.0, None]
    assert [r.speedup_vs_peer for r in results] == [0.5, 1.0, 2.0, None]
    bench._set_speedups(results, peer="official-reduce-overhead")  # not in this run
    assert [r.speedup_vs_peer for r in results] == [None, None, None, None]
    table = bench.format_table(results, title="batch 1 on a test card", peer="official-reduce-overhead")
    lines = table.splitlines()
    assert lines[0] == "batch 1 on a test card" and lines[1].split()[:6] == [
        "recipe", "ms/frame", "p90", "frames/s", "speedup", "vs"]
    fast = next(line for line in lines if line.startswith("fast"))
    assert fast.split()[1:6] == ["5.00", "6.00", "200.0", "4.00x", "-"]  # p90: row_result takes it as 1.2 x the median
    assert next(line for line in lines if line.startswith("broken")).split()[1:3] == ["-", "-"]
    assert "vs peer: speedup over the official-reduce-overhead row (not in this run: '-')" in table


def test_table_marks_unconverged_rows():
    results = [row_result("fp32 eager", 20.0), row_result("fast", 9.0, recipe="fast", converged=False)]
    bench._set_speedups(results, peer="fast")
    table = bench.format_table(results, peer="fast")
    fast = next(line for line in table.splitlines() if line.startswith("fast"))
    assert fast.split()[1] == "9.00~" and fast.split()[4:6] == ["2.22x~", "1.00x~"]
    assert "~ not converged" in table and "vs peer: speedup over the fast row\n" in table + "\n"


# ---- the report

def test_report_is_a_history_run_with_every_row():
    results = [row_result("fp32 eager", 20.0), row_result("broken", 1.0, error="out of GPU memory")]
    bench._set_speedups(results, peer="official-default")
    data = bench.report(results, {"device": "cpu", "device_name": "Test CPU", "torch_version": "2.x"},
                        {"batches": [1]}, weights="TINY networks")
    text = json.dumps(data, allow_nan=False)  # NaN became null
    run = history.parse_run(json.loads(text), "report.json")
    assert run.card == "Test CPU" and [(b.name, b.median_s, b.rounds) for b in run.results] == [
        ("fp32 eager [batch 1]", pytest.approx(0.020), 3)]
    assert [row["name"] for row in data["rows"]] == ["fp32 eager", "broken"]
    assert data["rows"][1]["ms_per_frame"] is None and data["rows"][1]["error"] == "out of GPU memory"
    assert data["rows"][0]["timing"]["stats"]["count"] == 3 and data["weights"] == "TINY networks"


# ---- a real run

def test_run_on_small_networks_on_the_cpu(monkeypatch):
    rows = [bench.recipe_row("fp32-eager"), bench.recipe_row("reference")]
    config = bench.BenchConfig(warmup=0, rule=TWO_SAMPLES, parity_frames=1, stages=False, peer="reference")
    messages = []
    results = bench.run(rows, small_networks(), "cpu", config, progress=messages.append)
    assert messages == ["counting FLOPs per frame", "computing the float32 reference frames (TF32 off)",
                        "row: fp32-eager", "row: reference"]
    eager, reference = results
    assert (eager.precision, reference.precision) == ("fp32", "fp32")  # no TF32 on a CPU
    assert reference.parity.frame.max_level_diff == 0 and not reference.parity_failures
    assert eager.timing.stats.count == 2 and eager.ms_per_frame == pytest.approx(eager.timing.stats.median_s * 1e3)
    assert eager.speedup == 1.0 and reference.speedup_vs_peer == 1.0
    assert eager.speedup_vs_peer == pytest.approx(reference.ms_per_frame / eager.ms_per_frame)
    assert eager.tflops > 0 and eager.memory is None and "CUDA devices only" in eager.memory_unavailable


def test_a_row_out_of_gpu_memory_is_reported_and_the_others_still_run(monkeypatch):
    monkeypatch.setattr(bench.frame, "flops_per_frame", lambda nets: 1.0)
    monkeypatch.setattr(bench.frame, "reference_frames", lambda nets, device, count: None)

    def measure_row(row, *args):
        if row.recipe == "fast":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return row_result(row.name, 10.0, recipe=row.recipe)

    monkeypatch.setattr(bench, "measure_row", measure_row)
    results = bench.run([bench.recipe_row("fp32-eager"), bench.recipe_row("fast"), bench.recipe_row("reference")],
                        {}, "cpu", bench.BenchConfig(), progress=lambda message: None)
    assert [r.error for r in results] == ["", "out of GPU memory: CUDA out of memory (test)", ""]
    assert [r.speedup for r in results] == [1.0, None, 1.0]
