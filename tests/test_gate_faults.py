"""lpperf gate's faults on the CPU: a crash, an interruption (Ctrl-C, SIGTERM, SIGHUP), an unsafe export,
a bad argument or a worker that misbehaves is exit 2 with one line, never a verdict, and leaves no
worker process and no scratch folder behind. Workers are the fake (tests/fake_gate_worker.py)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpperf import cli
from lpperf.gate import command, controller, refs, report
from lpperf.gate.workers import GateError
from lpperf.util.exits import Exit
from helpers import run_fake

REPO = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).with_name("fake_gate_worker.py")
FRAME = "frame fast b1"
FRAME_ONLY = controller.default_metrics(("fast",), (1,), stages=False)
# `lpperf gate` with the fake worker in place of the real one (role "base" on both sides: an A/A run).
FAKE_GATE = (f"import sys; from lpperf import cli; from lpperf.gate import controller; "
             f"controller.worker_command = lambda tree, device: [sys.executable, {str(FAKE)!r}, 'base']; "
             f"sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture
def fake_workers(monkeypatch):
    """The command's workers are the fake; returns the trees they were started for."""
    started = []

    def command_line(tree, device):
        started.append(tree)
        return [sys.executable, str(FAKE), "base"]

    monkeypatch.setattr(controller, "worker_command", command_line)
    monkeypatch.setenv("LPPERF_FAKE_WORKER", json.dumps({"noise": 0.01}))
    monkeypatch.chdir(REPO)
    return started


def gate(capsys, *args) -> tuple[int, list[str]]:
    code = cli.main(["gate", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def throwaway(tmp_path):
    """A git repository shaped like an lpperf checkout, with one commit."""
    repo = tmp_path / "repo"
    (repo / "lpperf").mkdir(parents=True)
    (repo / "lpperf" / "__init__.py").write_text("")
    (repo / "tests").mkdir()
    (repo / "tests" / "note.txt").write_text("a blob\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def commit_link(repo: Path, name: str, target: str) -> str:
    (repo / name).symlink_to(target)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", f"link {name}")
    return git(repo, "rev-parse", "HEAD")


# --------------------------------------------------------------------------- a crash is never a verdict

def test_an_unexpected_exception_in_the_gate_is_exit_2_with_one_line(fake_workers, monkeypatch, capsys, tmp_path):
    def broken(*args):
        raise LookupError("injected fault")

    monkeypatch.setattr(command, "repository", broken)
    code, lines = gate(capsys, "--base", ".", "--device", "cpu", "--out", str(tmp_path))
    assert code == 2
    assert len(lines) == 1 and "LookupError: injected fault" in lines[0] and "no verdict" in lines[0]
    with pytest.raises(GateError):  # --traceback still shows where
        cli.main(["--traceback", "gate", "--base", ".", "--device", "cpu", "--out", str(tmp_path)])


def test_an_unexpected_exception_in_any_command_is_exit_2_naming_it(monkeypatch, capsys, tmp_path):
    def broken(args):
        raise LookupError("injected fault")

    monkeypatch.setattr(cli, "cmd_compare", broken)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", "a.json", "b.json"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lpperf compare: ") and "LookupError: injected fault" in line and "--traceback" in line
    with pytest.raises(LookupError):
        cli.main(["--traceback", "compare", "a.json", "b.json"])


def test_help_still_exits_0_and_ctrl_c_in_bench_keeps_its_message(monkeypatch, capsys):
    assert cli.main(["gate", "--help"]) == 0

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_bench", interrupted)
    assert cli.main(["bench", "--device", "cpu"]) == Exit.INTERRUPTED
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err


def test_ctrl_c_before_the_rounds_start_is_exit_2(fake_workers, monkeypatch, capsys, tmp_path):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "side", interrupted)  # during the export
    code, lines = gate(capsys, "--base", ".", "--device", "cpu", "--out", str(tmp_path))
    assert code == 2 and "interrupted (Ctrl-C)" in lines[-1]


# ------------------------------------------------------------------------ SIGTERM, SIGHUP and Ctrl-C

def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits for a parent


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
@pytest.mark.parametrize("signal_number, named", [(signal.SIGTERM, "terminated by SIGTERM"),
                                                  (signal.SIGHUP, "terminated by SIGHUP"), (signal.SIGINT, "Ctrl-C")])
def test_a_signal_stops_every_worker_and_removes_the_scratch_folder(tmp_path, signal_number, named):
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    out = tmp_path / "out"
    env = dict(os.environ, TMPDIR=str(scratch_root),
               LPPERF_FAKE_WORKER=json.dumps({"child": True, "fail": {"role": "base", "op": "prepare", "how": "hang"}}))
    process = subprocess.Popen([sys.executable, "-c", FAKE_GATE, "gate", "--base", ".", "--device", "cpu",
                                "--recipes", "fast", "--out", str(out)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any("hanging in prepare" in log.read_text() for log in out.glob("worker-*.log")):
            assert process.poll() is None and time.monotonic() < deadline, "the gate never reached the workers"
            time.sleep(0.2)
        assert list(scratch_root.glob("lpperf-gate-*"))  # the scratch folder exists while the gate runs
        pids = [int(line.split()[-1]) for log in out.glob("worker-*.log")
                for line in log.read_text().splitlines() if line.startswith(("pid ", "child pid "))]
        assert len(pids) == 4 and all(alive(pid) for pid in pids)  # two workers, each with a child
        began = time.monotonic()
        process.send_signal(signal_number)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2
    assert time.monotonic() - began < 30  # no sequential grace period per busy worker
    lines = err.strip().splitlines()
    assert "Traceback" not in err and f"interrupted ({named})" in lines[-1], err
    assert not [pid for pid in pids if alive(pid)]
    assert not list(scratch_root.glob("lpperf-gate-*"))


# ---------------------------------------------------------------------------------- calibration file

def test_calibration_with_few_rounds_writes_valid_json_with_open_ends_as_null(fake_workers, capsys, tmp_path):
    code, _ = gate(capsys, "--calibrate", "--rounds", "4", "--device", "cpu", "--recipes", "fast", "--out",
                   str(tmp_path))
    assert code == 0
    text = (tmp_path / "calibration.json").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in calibration.json"))
    frame = next(item for item in record["calibration"] if item["name"] == FRAME)
    assert frame["rounds"] == 4 and frame["half_width"] is None  # four rounds: the interval is open


def test_the_calibration_table_says_open_for_an_unbounded_interval(tmp_path):
    result = run_fake(tmp_path, {}, metrics=FRAME_ONLY, rounds=4, max_rounds=4)
    noise = report.calibration(result)
    assert math.isinf(noise[0].half_width)
    table = report.format_calibration(noise, result)
    assert "inf" not in table and "open: 4 rounds cannot bound an interval" in table
    assert "--rounds 7 or more" in table  # the fewest whose most extreme outcome is rarer than alpha: 2**-7 < 0.01
    json.dumps(report.calibration_record(noise), allow_nan=False)


# ------------------------------------------------------------------------------------- the export

@pytest.mark.parametrize("target, says", [("/etc/passwd", "absolute"), ("../../outside", "outside")])
def test_an_export_with_an_unsafe_link_is_refused_naming_the_ref_and_the_member(throwaway, tmp_path, target, says):
    sha = commit_link(throwaway, "evil", target)
    with pytest.raises(GateError) as refused:
        refs.side(sha, throwaway, tmp_path / "scratch")
    message = str(refused.value)
    assert sha[:10] in message and "'evil'" in message and says in message and target in message


def test_an_absolute_symlink_in_the_base_is_exit_2_not_regressed(throwaway, fake_workers, monkeypatch, capsys,
                                                                 tmp_path):
    commit_link(throwaway, "evil", "/etc/passwd")
    git(throwaway, "tag", "abs-symlink")
    monkeypatch.chdir(throwaway)
    code, lines = gate(capsys, "--base", "abs-symlink", "--device", "cpu", "--out", str(tmp_path / "out"))
    assert code == 2 and "abs-symlink" in lines[-1] and "'evil'" in lines[-1]
    assert not fake_workers


# ------------------------------------------------------------------------------------ clear messages

def test_a_folder_that_is_not_an_lpperf_checkout_says_so(throwaway, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GateError, match="is not an lpperf checkout"):
        refs.side(str(plain), throwaway, tmp_path / "scratch")


@pytest.mark.parametrize("kind, spec", [("tree", "HEAD^{tree}"), ("blob", "HEAD:tests/note.txt")])
def test_a_tree_or_blob_hash_is_named_as_such(throwaway, tmp_path, kind, spec):
    object_id = git(throwaway, "rev-parse", spec)
    with pytest.raises(GateError, match=f"names a {kind}, not a commit"):
        refs.side(object_id, throwaway, tmp_path / "scratch")


def test_a_missing_ref_still_says_fetch_it(throwaway, tmp_path):
    with pytest.raises(GateError, match="does not exist.*fetch it first"):
        refs.side("no-such-ref", throwaway, tmp_path / "scratch")


def test_a_file_is_neither_a_ref_nor_a_checkout(throwaway, tmp_path):
    with pytest.raises(GateError, match="is a file; give a git ref or a folder"):
        refs.side(str(throwaway / "tests" / "note.txt"), throwaway, tmp_path / "scratch")


@pytest.mark.parametrize("device, listed, expected", [
    ("cuda", None, ["5"]), ("cuda:1", None, ["7"]), ("cuda", "7,5", ["7", "5"]), ("cpu", None, [None]),
    ("cuda:2", None, "cuda:0 to cuda:1"), ("cuda", "3", "3 not among the visible cards (5, 7)"),
    ("cuda", "5,5", "names a card twice"), ("cpu", "5", "--gpus goes with --device cuda"),
])
def test_cards_are_checked_against_the_visible_ones(monkeypatch, device, listed, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    if isinstance(expected, list):
        assert command._gpus(device, listed) == expected
    else:
        with pytest.raises(GateError, match=re.escape(expected)):
            command._gpus(device, listed)


def test_dot_in_a_sub_folder_is_the_checkout_root(throwaway, tmp_path, monkeypatch):
    monkeypatch.chdir(throwaway / "tests")
    assert refs.repository() == throwaway.resolve()
    side = refs.side(".", refs.repository(), tmp_path / "scratch")
    assert side.tree == throwaway.resolve()


def test_a_folder_that_is_also_a_ref_is_refused_as_ambiguous(throwaway, tmp_path, monkeypatch):
    git(throwaway, "branch", "tests")
    monkeypatch.chdir(throwaway)
    with pytest.raises(GateError, match="both a folder and a git ref"):
        refs.side("tests", throwaway, tmp_path / "scratch")


def test_out_that_is_a_file_says_it_must_be_a_folder(fake_workers, capsys, tmp_path):
    existing = tmp_path / "gate.txt"
    existing.write_text("keep me\n")
    code, lines = gate(capsys, "--base", ".", "--device", "cpu", "--out", str(existing))
    assert code == 2 and "--out" in lines[-1] and "must be a folder" in lines[-1] and str(existing) in lines[-1]
    assert existing.read_text() == "keep me\n" and not fake_workers


@pytest.mark.parametrize("args, message", [
    (("--device", "tpu"), "unsupported device 'tpu'"),
    (("--device", "cuda:0"), "no CUDA GPU is visible"),
    (("--device", "cuda:0", "--gpus", "1"), "--gpus"),
    (("--batches", "0"), "--batches"),
    (("--batches", "100000"), "--batches"),
    (("--rounds", "3"), "--rounds"),
    (("--rounds", "100000"), "--rounds"),
    (("--rounds", "8", "--max-rounds", "4"), "--max-rounds"),
    (("--max-rounds", "1000000"), "--max-rounds"),
    (("--threshold", "0"), "--threshold"),
    (("--threshold", "nan"), "--threshold"),
    (("--alpha", "0.6"), "--alpha"),
    (("--alpha", "0"), "--alpha"),
    (("--inject-slowdown", "0.1"), "--inject-slowdown"),
    (("--gate-stages", "--no-stages"), "--gate-stages"),
    (("--startup-floor-s", "-1"), "--startup-floor-s"),
    (("--startup-floor-s", "nan"), "--startup-floor-s"),
    (("--weights", "/nonexistent/weights"), "--weights: weights folder /nonexistent/weights does not exist"),
])
def test_bad_arguments_are_refused_before_any_worker_starts(fake_workers, capsys, tmp_path, args, message):
    code, lines = gate(capsys, "--base", ".", "--device", "cpu", "--out", str(tmp_path / "out"), *args)
    assert code == 2 and message in lines[-1], lines
    assert not fake_workers and not (tmp_path / "out").exists()


def test_a_weights_folder_without_the_checkpoints_is_refused_before_any_worker_starts(fake_workers, capsys,
                                                                                      tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gate.json").write_text("{}")  # an earlier verdict stays until a run can start
    code, lines = gate(capsys, "--base", ".", "--device", "cpu", "--weights", str(empty), "--out",
                       str(tmp_path / "out"))
    assert code == 2 and "lacks 5 of the 5 official checkpoint files" in lines[-1], lines
    assert "stitching_retargeting_module.pth" in lines[-1] and "synthetic weights" in lines[-1]
    assert not fake_workers and (tmp_path / "out" / "gate.json").is_file()


def test_a_long_worker_error_keeps_its_end():
    from lpperf.gate import worker

    text = "load: FileNotFoundError: " + "x" * 5000 + " Put all 5 files in the folder."
    short = worker._shortened(text)
    assert len(short) == 2000 and short.startswith("load: FileNotFoundError") and short.endswith("in the folder.")
    assert worker._shortened("short") == "short"


@pytest.mark.parametrize("args, message", [(("--max-rounds", "32"), "--max-rounds"),
                                           (("--undecided", "pass"), "--undecided")])
def test_calibrate_refuses_options_it_would_ignore(fake_workers, capsys, tmp_path, args, message):
    code, lines = gate(capsys, "--calibrate", "--device", "cpu", "--out", str(tmp_path / "out"), *args)
    assert code == 2 and message in lines[-1] and "--calibrate" in lines[-1]
    assert not fake_workers


# --------------------------------------------------------------------------- other ways to a wrong verdict

def test_a_failed_run_leaves_no_earlier_verdict_behind(fake_workers, monkeypatch, capsys, tmp_path):
    (tmp_path / "gate.json").write_text(json.dumps({"verdict": "pass", "exit_code": 0}))
    monkeypatch.setenv("LPPERF_FAKE_WORKER", json.dumps({"fail": {"role": "base", "op": "prepare", "how": "crash"}}))
    code, lines = gate(capsys, "--base", ".", "--device", "cpu", "--recipes", "fast", "--out", str(tmp_path))
    assert code == 2 and "exited with code 7" in lines[-1]
    assert not (tmp_path / "gate.json").exists()


def test_a_worker_that_dies_while_its_child_holds_the_pipe_is_reported_at_once(tmp_path):
    """Compile workers inherit the worker's stdout: the pipe stays open after the worker dies."""
    spec = {"child": True, "fail": {"role": "head", "op": "prepare", "how": "crash"}}
    start = time.monotonic()
    with pytest.raises(GateError, match="exited with code 7 during 'prepare'"):
        run_fake(tmp_path, spec, metrics=FRAME_ONLY, rounds=4, max_rounds=4, prepare_timeout_s=300)
    assert time.monotonic() - start < 60


def test_a_time_that_is_not_a_positive_number_names_the_side(tmp_path):
    spec = {"fail": {"role": "head", "op": "measure", "how": "bad-ms"}}
    with pytest.raises(GateError, match=r"head fast.*'measure' of frame fast b1 with -1.0 ms, not a time > 0"):
        run_fake(tmp_path, spec, metrics=FRAME_ONLY, rounds=4, max_rounds=4)


def test_repeated_recipes_and_batches_are_measured_once(fake_workers, capsys, tmp_path):
    code, _ = gate(capsys, "--base", ".", "--device", "cpu", "--recipes", "fast", "fast", "--batches", "1", "1",
                   "--no-stages", "--rounds", "4", "--max-rounds", "4", "--undecided", "pass", "--out", str(tmp_path))
    assert code == 0
    record = json.loads((tmp_path / "gate.json").read_text())
    assert [metric["name"] for metric in record["metrics"]] == [FRAME]
    assert record["one_sided_alpha"] == pytest.approx(record["config"]["alpha"])  # one gated metric, one look



# ------------------------------------------------------------------------------------ the real worker

def test_what_the_measured_code_prints_never_reaches_the_protocol(tmp_path):
    """The side's code, and the processes it starts (compile workers), print where they like; only answers
    reach the controller's pipe, and the CPU worker runs torch on one thread."""
    from lpperf.gate import worker

    package = tmp_path / "lpperf"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "weights.py").write_text(
        "import os, sys, types\n"
        "import torch\n"
        "def load_networks(weights, device, seed=0):\n"
        "    os.system('echo from a child process')\n"
        "    print('from python')\n"
        "    print(f'threads {torch.get_num_threads()}', file=sys.stderr)\n"
        "    return types.SimpleNamespace(nets={}, description='fake')\n")
    request = json.dumps({"op": "load", "weights": None, "seed": 0})
    done = subprocess.run([sys.executable, worker.__file__, "--tree", str(tmp_path), "--device", "cpu"],
                          input=request + "\n", capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert json.loads(line)["ok"] and json.loads(line)["weights"] == "fake"
    assert "from a child process" in done.stderr and "from python" in done.stderr and "threads 1" in done.stderr


class FakeClock:
    """time.perf_counter for the worker: each call of the metric takes `ms`."""

    def __init__(self, ms: float):
        self.ms, self.now, self.calls = ms, 0.0, 0

    def perf_counter(self) -> float:
        return self.now

    def call(self) -> None:
        self.calls += 1
        self.now += self.ms / 1e3


def cpu_side():
    import torch

    from lpperf.gate import worker

    side = worker.Side(str(REPO), "cpu")
    side.device = torch.device("cpu")
    return side


def test_a_slow_call_is_sampled_until_a_second_of_samples_not_five_times(monkeypatch):
    from lpperf.gate import worker

    clock = FakeClock(400.0)
    monkeypatch.setattr(worker.time, "perf_counter", clock.perf_counter)
    assert cpu_side()._warm_ms(clock.call) == pytest.approx(400.0)
    assert clock.calls == 2 + 3  # two warm-up calls, then samples until they add up to a second
    fast = FakeClock(5.0)
    monkeypatch.setattr(worker.time, "perf_counter", fast.perf_counter)
    cpu_side()._warm_ms(fast.call)
    assert fast.calls == 2 + worker.WARM_CALLS


def test_a_cpu_block_runs_only_its_timed_calls(monkeypatch):
    from lpperf.gate import worker

    clock = FakeClock(1300.0)
    monkeypatch.setattr(worker.time, "perf_counter", clock.perf_counter)
    side = cpu_side()
    side.calls["frame"] = clock.call
    assert side.measure("frame", 2) == pytest.approx(1300.0)
    assert clock.calls == 2


def test_a_recipe_with_motion_ahead_is_timed_per_step_like_every_other_metric(monkeypatch):
    """One call of a motion-ahead recipe makes 16 steps at batch 1: its times are answered per step."""
    from lpperf.gate import worker
    from lpperf.measure import frame
    from lpperf.models import weights
    from lpperf.optimize import recipes, steps

    animator = frame.sample_animator(recipes.build([steps.motion_ahead], weights.tiny_networks(0), "cpu"))
    driving = frame.driving_batch(1, offset=frame.PARITY_FRAMES)
    call, steps = worker._frames_call(frame, animator, driving)
    assert steps == 16 and call().shape == (1, 3, 512, 512)
    plain_call, plain_steps = worker._frames_call(frame, frame.sample_animator(recipes.build("fp32-eager",
                                                  weights.tiny_networks(0), "cpu")), driving)
    assert plain_steps == 1
    clock = FakeClock(1600.0)
    monkeypatch.setattr(worker.time, "perf_counter", clock.perf_counter)
    side = cpu_side()
    side.calls["frame"], side.steps_per_call["frame"] = clock.call, steps
    assert side.measure("frame", 2) == pytest.approx(100.0)


@pytest.mark.parametrize("layout", ["layer folders", "flat"])
def test_the_worker_imports_each_module_from_the_sides_tree_even_with_lpperf_installed(tmp_path, layout):
    """A base from before the layer folders has lpperf/frame.py, not lpperf/measure/frame.py. With lpperf
    installed in editable mode (as CI and the GPU runner install it), its import hook answered for
    lpperf.measure.frame and ran the head's module against the base's: an ImportError, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    tree = tmp_path / "side"
    package = tree / "lpperf"
    (package / "measure" if layout == "layer folders" else package).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models").mkdir()
    (package / "models" / "__init__.py").write_text("")  # both layouts had it; neither with what frame needs now
    if layout == "layer folders":
        (package / "measure" / "__init__.py").write_text("")
    (package / ("measure/frame.py" if layout == "layer folders" else "frame.py")).write_text(f"LAYOUT = {layout!r}\n")
    worker = Path(__file__).resolve().parents[1] / "lpperf" / "gate" / "worker.py"
    script = (f"import importlib.util, sys; sys.path.insert(0, {str(tree)!r})\n"
              f"spec = importlib.util.spec_from_file_location('side_worker', {str(worker)!r})\n"
              "worker = importlib.util.module_from_spec(spec); spec.loader.exec_module(worker)\n"
              f"frame = worker._side_module({str(tree)!r}, 'measure.frame', 'frame')\n"
              "outside = [name for name, module in sys.modules.items() if name.startswith('lpperf') and\n"
              f"           not (getattr(module, '__file__', None) or {str(tree)!r}).startswith({str(tree)!r})]\n"
              "print(frame.LAYOUT, outside)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{layout} []"  # the side's module, and no module of any other lpperf ran
