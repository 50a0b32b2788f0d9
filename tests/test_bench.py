"""lpperf.reports.bench on the CPU: the rows (waterfall from a recipe's steps, peers), the speedups over the first
row and the peer row, the table of typed results, the report, and one real run on small networks."""

import json

import pytest
import torch

from lpperf.measure import frame
from lpperf.optimize import recipes, steps
from lpperf.reports import bench, history
from lpperf.optimize.engine import CONVOLUTIONAL_NETS, Engine
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
        row.name for row in bench.waterfall_rows() + bench.peer_rows() + bench.variant_rows()]
    peers = bench.peer_rows()
    assert all(row.peer for row in peers) and not any(row.peer for row in bench.waterfall_rows() + bench.variant_rows())
    assert [row.recipe for row in peers if not row.modules] == list(bench.PEER_LABELS)
    assert [(row.recipe, row.modules) for row in peers if row.modules] == [
        ("official-reduce-overhead", ("M", "W", "G")), ("official-motion-ahead", ("M", "W", "G"))]
    assert bench.recipe_row("official-default").peer and not bench.recipe_row("fastest").peer
    modules_peers = [row.name for row in peers if row.modules]
    assert [row.name for row in bench.default_rows(cuda, ["fastest"])] == ["fp32-eager", "fastest", modules_peers[0]]
    assert [row.name for row in bench.default_rows(cuda, ["fastest-motion-ahead"])][2:] == modules_peers
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

def test_speedups_over_the_first_row_and_the_strongest_peer():
    whole_step = row_result("peer: whole step", 10.0, recipe="official-default", peer=True)
    modules = row_result("peer: modules alone", 8.0, recipe="official-default", peer=True)
    results = [row_result("fp32 eager", 20.0), whole_step, modules, row_result("fast", 5.0, recipe="fast"),
               row_result("broken", 1.0, error="out of GPU memory")]
    bench._set_speedups(results)
    assert bench.strongest_peer(results) is modules  # the fastest peer measure, whichever recipe it times
    assert [r.speedup for r in results] == [1.0, 2.0, 2.5, 4.0, None]
    assert [r.speedup_vs_peer for r in results] == [0.4, 0.8, 1.0, 1.6, None]
    table = bench.format_table(results, title="batch 1 on a test card")
    lines = table.splitlines()
    assert lines[0] == "batch 1 on a test card" and lines[1].split()[:6] == [
        "recipe", "ms/frame", "p90", "frames/s", "speedup", "vs"]
    fast = next(line for line in lines if line.startswith("fast"))
    assert fast.split()[1:6] == ["5.00", "6.00", "200.0", "4.00x", "1.60x"]  # p90: row_result takes it as 1.2 x the median
    assert next(line for line in lines if line.startswith("broken")).split()[1:3] == ["-", "-"]
    assert "vs peer: speedup over the strongest (fastest) peer measure of this run, 'peer: modules alone' (8.00 " \
           "ms/frame)" in table


def test_a_row_with_motion_ahead_is_compared_with_peers_given_no_more_frames_ahead():
    """A peer batching M over known frames is faster, but only a row that batches the same may be divided by it."""
    shipped = row_result("peer: modules alone", 8.0, recipe="official-reduce-overhead", peer=True)
    ahead_peer = row_result("peer: modules, M ahead", 6.8, recipe="official-motion-ahead", peer=True, motion_ahead=16)
    fastest = row_result("fastest", 4.4, recipe="fastest")
    ahead = row_result("fastest-motion-ahead", 3.4, recipe="fastest-motion-ahead", motion_ahead=16)
    results = [row_result("fp32 eager", 20.0), shipped, ahead_peer, fastest, ahead]
    bench._set_speedups(results)
    assert bench.strongest_peer(results) is ahead_peer  # of all peers
    assert bench.strongest_peer(results, fastest) is shipped and bench.strongest_peer(results, ahead) is ahead_peer
    assert fastest.speedup_vs_peer == pytest.approx(8.0 / 4.4) and ahead.speedup_vs_peer == pytest.approx(2.0)
    note = bench.peer_note(results)
    assert "for rows stepping frame by frame, 'peer: modules alone' (8.00 ms/frame)" in note
    assert "for rows with M batched ahead over 16 frames, 'peer: modules, M ahead' (6.80 ms/frame)" in note


def test_without_a_peer_the_peer_column_is_empty_and_says_why():
    results = [row_result("fp32 eager", 20.0), row_result("fast", 5.0, recipe="fast"),
               row_result("failed peer", 1.0, error="out of GPU memory", peer=True)]  # a failed peer is no measure
    bench._set_speedups(results)
    assert bench.strongest_peer(results) is None and [r.speedup_vs_peer for r in results] == [None, None, None]
    table = bench.format_table(results)
    assert next(line for line in table.splitlines() if line.startswith("fast")).split()[5] == "-"
    assert "vs peer: '-', no peer row was measured in this run" in table


def test_table_marks_unconverged_rows():
    results = [row_result("fp32 eager", 20.0), row_result("fast", 9.0, recipe="fast", converged=False, peer=True)]
    bench._set_speedups(results)
    table = bench.format_table(results)
    fast = next(line for line in table.splitlines() if line.startswith("fast"))
    assert fast.split()[1] == "9.00~" and fast.split()[4:6] == ["2.22x~", "1.00x~"]
    assert "~ not converged" in table and "vs peer: speedup over the strongest (fastest) peer measure of this " \
                                          "run, 'fast' (9.00 ms/frame)" in table


# ---- the report

def test_report_is_a_history_run_with_every_row():
    results = [row_result("fp32 eager", 20.0), row_result("broken", 1.0, error="out of GPU memory")]
    bench._set_speedups(results)
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
    modules = bench.Row("peer: modules alone", (), recipe="fp32-eager", peer=True, modules=("M", "W", "G"))
    rows = [bench.recipe_row("fp32-eager"), bench.recipe_row("reference"), modules]
    config = bench.BenchConfig(warmup=0, rule=TWO_SAMPLES, parity_frames=1, stages=False)
    messages = []
    results = bench.run(rows, small_networks(), "cpu", config, progress=messages.append)
    assert messages == ["counting FLOPs per frame", "computing the float32 reference frames (TF32 off)",
                        "row: fp32-eager", "row: reference", "row: peer: modules alone"]
    eager, reference, alone = results
    assert (eager.precision, reference.precision) == ("fp32", "fp32")  # no TF32 on a CPU
    assert reference.parity.frame.max_level_diff == 0 and not reference.parity_failures
    assert eager.timing.stats.count == 2 and eager.ms_per_frame == pytest.approx(eager.timing.stats.median_s * 1e3)
    assert eager.speedup == 1.0 and alone.speedup_vs_peer == 1.0 and bench.strongest_peer(results) is alone
    assert eager.speedup_vs_peer == pytest.approx(alone.ms_per_frame / eager.ms_per_frame)
    assert eager.tflops > 0 and eager.memory is None and "CUDA devices only" in eager.memory_unavailable
    # the modules row: M, W and G timed alone and summed; no frame, so no parity, no FLOP rate, no stages
    assert list(alone.module_ms) == ["M", "W", "G"] and all(ms > 0 for ms in alone.module_ms.values())
    assert alone.timing.stats.count == 2 and alone.ms_per_frame == pytest.approx(alone.timing.stats.median_s * 1e3)
    assert alone.parity is None and alone.tflops is None and alone.stage_ms == {} and alone.compile_seconds > 0
    assert not eager.module_ms


def test_modules_alone_run_each_network_on_the_frames_own_inputs_in_its_dtype():
    """The speed script's measure: the networks' outputs in their own dtype, keypoints cast too."""
    nets = small_networks()
    engine = recipes.build("fp32-eager", nets, "cpu")
    engine.weight_dtype = torch.float64  # a dtype the CPU runs every layer in, standing in for fp16
    for name in CONVOLUTIONAL_NETS:  # as the half step casts them; S stays float32
        engine.nets[name].double()
    driving = frame.driving_batch(2)
    work = frame.modules_alone(engine, 2, offset=0)
    calls = work.calls
    assert list(calls) == ["M", "W", "G"] and work.frames == 2
    warped = calls["W"]()
    assert warped["out"].dtype == torch.float64 and warped["out"].shape[0] == 2
    assert calls["G"]().dtype == torch.float64 and calls["G"]().shape == (2, 3, 512, 512)
    expected = frame.sample_animator(recipes.build("fp32-eager", nets, "cpu")).run_stages(driving)
    torch.testing.assert_close(warped["out"].float(), expected.warped["out"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="stages M, W, G; got \\['S'\\]"):
        frame.modules_alone(engine, 2, ("S",))


def test_modules_alone_with_motion_ahead_runs_m_once_over_the_frames_and_the_rest_per_step():
    """The peer given the recipe's batching: M over all the frames ahead at once, W and G once per step."""
    engine = recipes.build([steps.lookup("motion_ahead")], small_networks(), "cpu")
    assert engine.motion_ahead == 16
    seen = {name: [] for name in ("M", "W", "G")}
    for stage, name in (("M", "motion_extractor"), ("W", "warping_module"), ("G", "spade_generator")):
        engine.nets[name].register_forward_hook(
            lambda module, args, kwargs, out, stage=stage: seen[stage].append(
                (args or tuple(kwargs.values()))[0].shape[0]), with_kwargs=True)
    work = frame.modules_alone(engine, 4, offset=1)
    for name in seen:
        seen[name].clear()
    for call in work.calls.values():
        call()
    assert work.frames == 16 and seen == {"M": [16], "W": [4] * 4, "G": [4] * 4}
    assert frame.modules_alone(engine, 16).frames == 16  # as many frames per step as ahead: one plain step


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
