"""One side of an lpperf gate: a long-lived process that builds what it measures once and then
times it on request. Started by lpperf.gate.controller as a script:

    python path/to/lpperf/gate/worker.py --tree SIDE_TREE --device cuda:0

This file is always the controller's own copy, so both sides speak the same protocol and time the
same way; everything that is measured (networks, recipes, the frame) comes from the lpperf package
in SIDE_TREE, which goes first on sys.path. Protocol: one JSON object per line. The controller
writes a request to stdin, the worker answers with one line on its real stdout (anything the
measured code prints goes to stderr):

    {"op": "load", "weights": null | "DIR", "seed": 0, "threads": n | null}
                                                             -> {"ok": true, "lpperf": path, "torch": version}
    {"op": "prepare", "metrics": [{"name", "recipe", "batch", "stage"}], "inject_slowdown": 0.0,
     "outputs": {"frames": n, "folder": DIR} | null, "inject_memory_mib": 0, "inject_output_levels": 0,
     "startup": true (time a first build, then reset)}
        -> {"ok": true, "warm_ms": {name: ms}, "timed_as": ..., "memory": {frame name: {...}},
            "startup": {recipe: {"first_s", "warm_s"}}, "outputs": {recipe: DIR/recipe.npz}}
    {"op": "measure", "metric": name, "calls": n}           -> {"ok": true, "ms": per-call ms}
    {"op": "quit"}                                           -> exits 0

A failure answers {"ok": false, "error": one line, "kind": "oom" | "error"}; the controller stops.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

WARM_CALLS = 5  # after the first (compiling) call, to estimate each metric's time per call
# ... or fewer once they add up to this: calls that long fill a block (10-30 ms) alone, and more
# samples would not change that (a CPU frame of the TINY networks takes over a second).
WARM_SAMPLES_MS = 1000.0
SLEEP_CALIBRATION_CYCLES = 10_000_000
INJECT_BLOCK_MS = 30.0  # a block as the rounds time one (GateConfig.frame_block_ms)
INJECT_PAIRS = 15  # slowed and plain blocks, alternated, per measurement of what a spin adds
INJECT_CLOSE_ENOUGH = 0.9  # of the target slowdown
MEMORY_CALLS = 3  # steady calls whose peak memory is read (after warm-up, each call needs the same)
MIB = 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, help="folder holding the lpperf package to measure")
    parser.add_argument("--device", required=True, help="cpu or cuda:N")
    args = parser.parse_args()
    # Nothing but answers may reach the controller's pipe: the protocol gets its own copy of it, and
    # stdout becomes the log, for this process's prints, C code and the children it starts (compile
    # workers), which would otherwise also keep the pipe open after this process ended.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    if os.path.dirname(os.path.abspath(__file__)) in (os.path.abspath(p) for p in sys.path[:1]):
        sys.path.pop(0)  # this script's folder must not shadow anything
    sys.path.insert(0, os.path.abspath(args.tree))
    side = Side(args.tree, args.device)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            return 0
        try:
            answer = {"ok": True, **side.handle(request)}
        except Exception as error:  # noqa: BLE001 - every failure goes back to the controller as one line
            kind = "oom" if type(error).__name__ == "OutOfMemoryError" else "error"
            traceback.print_exc()
            metric = f"{request['metric']}: " if request.get("metric") else ""  # which call failed, for the log
            answer = {"ok": False, "kind": kind,
                      "error": _shortened(f"{metric}{type(error).__name__}: {' '.join(str(error).split())}")}
        protocol_out.write(json.dumps(answer) + "\n")
        protocol_out.flush()
        if not answer["ok"]:
            return 1
    return 0


class Side:
    """The networks and one zero-argument call per metric, built from the side's lpperf."""

    def __init__(self, tree: str, device: str):
        self.tree = os.path.abspath(tree)
        self.device_name = device
        self.nets = None
        self.calls: dict[str, object] = {}
        # steps of its metric's batch that one call makes (a recipe with motion ahead makes several per
        # call): the times answered are per step, as every other metric's
        self.steps_per_call: dict[str, int] = {}

    def handle(self, request: dict) -> dict:
        operation = request.get("op")
        if operation == "load":
            return self.load(request.get("weights"), int(request.get("seed", 0)), request.get("threads"))
        if operation == "prepare":
            return self.prepare(request["metrics"], float(request.get("inject_slowdown", 0.0)),
                                outputs=request.get("outputs"),
                                inject_memory_mib=float(request.get("inject_memory_mib", 0.0)),
                                inject_output_levels=float(request.get("inject_output_levels", 0.0)),
                                startup=bool(request.get("startup", True)))
        if operation == "measure":
            answer = {"ms": self.measure(request["metric"], int(request["calls"]))}
            if request.get("clock"):
                answer["clock"] = self.clock()
            return answer
        raise ValueError(f"unknown request {operation!r}")

    def load(self, weights: str | None, seed: int, threads: int | None = None) -> dict:
        import torch

        import lpperf

        weights_module = _side_module(self.tree, "models.weights", "weights")

        package = os.path.dirname(os.path.abspath(lpperf.__file__))
        if os.path.commonpath([package, self.tree]) != self.tree:
            raise RuntimeError(f"imported lpperf from {package}, not from the side's tree {self.tree}; "
                               "an installed copy shadows it (check PYTHONPATH)")
        self.torch = torch
        self.device = torch.device(self.device_name)
        if self.device.type == "cpu":
            # CPU runs exercise the gate; several workers, and whatever else runs, share the cores. One
            # thread each: with two per worker on 2 busy cores, OpenMP's threads waited for each other and
            # a TINY frame took 11.9 s instead of 2.8 s (torch 2.13).
            torch.set_num_threads(1)
        start = time.perf_counter()
        everyone = torch.get_num_threads()
        if threads and self.device.type == "cuda":
            # Every worker loads at once, on the CPU: at torch's default each would use every core, and
            # OpenMP threads oversubscribed that way wait on each other (4 workers loading at once on a
            # 2-core CPU host, torch 2.13: 19-20 s each at 2 threads, 12 s at one).
            torch.set_num_threads(min(everyone, int(threads)))
        try:
            loaded = weights_module.load_networks(weights, self.device, seed=seed)
        finally:
            torch.set_num_threads(everyone)
        self.nets, description = loaded.nets, loaded.description
        self.nvml = _nvml_handle(torch, self.device)
        return {"lpperf": package, "torch": torch.__version__, "weights": description,
                "load_s": time.perf_counter() - start}

    def prepare(self, metrics: list[dict], inject_slowdown: float, outputs: dict | None = None,
                inject_memory_mib: float = 0.0, inject_output_levels: float = 0.0, startup: bool = True) -> dict:
        frame = _side_module(self.tree, "measure.frame", "frame")
        recipes = _side_module(self.tree, "optimize.recipes", "recipes")
        if inject_memory_mib > 0:  # test-only: memory the head holds for as long as it runs
            self.held = self.torch.empty(int(inject_memory_mib * MIB), dtype=self.torch.uint8, device=self.device)

        # Start-up, per recipe at its first metric's batch: a first build with the compile caches as the
        # runner has them, thrown away; then the compiled state is reset as in a new process, and the
        # metric's own build below finds only the file caches, now holding this side's code.
        # Without `startup` (a second or later worker pair, which only times) neither happens.
        first_batch = {}
        for metric in metrics:
            first_batch.setdefault(metric["recipe"], metric["batch"])
        measured = {recipe: {"first_s": self._startup_s(frame, recipes, recipe, batch)}
                    for recipe, batch in first_batch.items()} if startup else {}
        if startup:
            self._as_in_a_new_process()

        animators, warm_ms, compile_s, timed_as = {}, {}, {}, {}
        for metric in metrics:
            key = (metric["recipe"], metric["batch"])
            if key not in animators:
                began = time.perf_counter()
                animator = frame.sample_animator(recipes.build(metric["recipe"], self.nets, self.device))
                driving = frame.driving_batch(metric["batch"], offset=frame.PARITY_FRAMES).to(self.device)
                frames_call, steps = _frames_call(frame, animator, driving)
                start = time.perf_counter()
                frames_call()  # compile, autotune and CUDA-graph recording happen here
                self._synchronize()
                compile_s[f"{key[0]} batch {key[1]}"] = time.perf_counter() - start
                if key[0] in measured and "warm_s" not in measured[key[0]]:
                    measured[key[0]]["warm_s"] = time.perf_counter() - began
                animators[key] = (animator, driving, frames_call, steps)
            animator, driving, frames_call, steps = animators[key]
            if metric.get("stage"):
                call, steps = frame.stage_calls(animator, driving[:1])[metric["stage"]], 1  # in the recipe's context
                replay = self.device.type == "cuda"
            else:
                call = frames_call
                replay = self.device.type == "cuda" and not _compiled(animator)
            if replay:
                call = _captured(call, self.device, metric["name"], self.tree)
            timed_as[metric["name"]] = "cuda graph replay" if replay else "back-to-back calls"
            self.calls[metric["name"]] = call
            self.steps_per_call[metric["name"]] = steps
            warm_ms[metric["name"]] = self._warm_ms(call) / steps
        memory = {metric["name"]: self._memory(self.calls[metric["name"]])
                  for metric in metrics if not metric.get("stage")}
        written = {}
        if outputs:
            written = self._outputs(frame, animators, int(outputs["frames"]), outputs["folder"], inject_output_levels)
        injected = {}
        if inject_slowdown > 0:
            injected = self._inject(metrics, warm_ms, inject_slowdown)
        return {"warm_ms": warm_ms, "compile_s": compile_s, "injected_ms": injected, "timed_as": timed_as,
                "memory": memory, "startup": measured, "outputs": written}

    def _memory(self, call) -> dict:
        """Torch's peak allocated memory over a few steady calls, and the process's GPU memory as NVML
        lists it; on the CPU neither, with the reason."""
        if self.device.type != "cuda":
            return {"torch_peak_mib": None, "nvml_mib": None, "why": "memory is measured on CUDA cards only"}
        torch = self.torch
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(MEMORY_CALLS):
            call()
        torch.cuda.synchronize(self.device)
        answer = {"torch_peak_mib": torch.cuda.max_memory_allocated(self.device) / MIB, "nvml_mib": None}
        if self.nvml is None:
            answer["why"] = "NVML is not usable here"
            return answer
        pynvml, handle = self.nvml
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory is not None:
                answer["nvml_mib"] = process.usedGpuMemory / MIB
                return answer
        answer["why"] = "NVML does not list this process (another PID namespace?)"
        return answer

    def _outputs(self, frame, animators: dict, count: int, folder: str, inject_levels: float) -> dict:
        """Per recipe: its first `count` frames at batch 1 (the sample's driving frames 0..count-1), one
        step at its largest batch, and the same batch-1 frames of the float32 reference on this side's
        networks, saved to FOLDER/RECIPE.npz for the controller to compare."""
        import numpy as np

        written = {}
        for recipe in dict.fromkeys(key[0] for key in animators):
            batches = sorted(batch for name, batch in animators if name == recipe)
            frames = frame.run_frames(animators[(recipe, batches[0])][0], count)
            animator, driving, _, _ = animators[(recipe, batches[-1])]
            batched = animator.step(driving).float().cpu()
            if inject_levels > 0:  # test-only: every pixel of the head's output moved up or down by this many levels
                noise = self.torch.Generator().manual_seed(0)
                frames, batched = (value + (self.torch.randint(0, 2, value.shape, generator=noise) * 2 - 1)
                                   * inject_levels / 255 for value in (frames, batched))
            reference = frame.reference_frames(self.nets, self.device, count)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{recipe}.npz")
            np.savez(path, frames=frames.numpy(), batched=batched.numpy(), reference=reference.numpy())
            written[recipe] = path
        return written

    def _startup_s(self, frame, recipes, recipe: str, batch: int) -> float:
        """Build + compile + first step of `recipe` at `batch`; the engine is dropped afterwards."""
        began = time.perf_counter()
        animator = frame.sample_animator(recipes.build(recipe, self.nets, self.device))
        animator.step(frame.driving_batch(batch, offset=frame.PARITY_FRAMES).to(self.device))
        self._synchronize()
        return time.perf_counter() - began

    def _as_in_a_new_process(self) -> None:
        """torch.compile's in-process state (compiled code, CUDA-graph trees) reset as in a new process;
        the compile caches on disk stay. Only before anything that is measured has been built."""
        import gc

        self.torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def measure(self, name: str, calls: int) -> float:
        """Per-step ms of `calls` back-to-back calls of the metric."""
        call = self.calls[name]
        if self.device.type != "cuda":
            # No untimed call first, unlike on a card: a call short enough for the caches to matter runs
            # many times per block, and one that fills a block alone streams more than any CPU cache
            # holds (a TINY frame reads M's 112 MB of weights), so an untimed call would only double it.
            start = time.perf_counter()
            for _ in range(calls):
                call()
            call_ms = (time.perf_counter() - start) * 1e3 / calls
        else:
            call_ms = self._block_ms(call, calls)
        return call_ms / self.steps_per_call.get(name, 1)

    def clock(self) -> dict | None:
        """The card's SM clock and NVML clock-event reasons right now (None without NVML)."""
        if self.nvml is None:
            return None
        pynvml, handle = self.nvml
        reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons",
                          getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        return {"sm_mhz": int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
                "reasons": int(reasons(handle)) if reasons else 0}

    def _warm_ms(self, call) -> float:
        for _ in range(2):
            call()
        self._synchronize()
        samples = []
        while len(samples) < WARM_CALLS and sum(samples) < WARM_SAMPLES_MS:
            start = time.perf_counter()
            call()
            self._synchronize()
            samples.append((time.perf_counter() - start) * 1e3)
        return sorted(samples)[len(samples) // 2]

    def _inject(self, metrics: list[dict], warm_ms: dict, fraction: float) -> dict:
        """Test-only: after each frame, spin the GPU until the frame, timed as the rounds time it, takes
        `fraction` longer (a real slowdown outside the compiled step). Stages are left alone.

        A spin of `fraction` of the frame's time is not that slowdown where the frame leaves the GPU idle
        (a compiled frame waiting on the host between kernels): the spin then partly runs in those gaps.
        Measured on an H200 (torch 2.11), a spin of 5.0 % of `fast`'s frame made it 2.8 % slower. So the
        spin is sized by measuring what it adds (`spin_for`)."""
        if self.device.type != "cuda":
            raise ValueError("inject_slowdown spins the GPU; it needs a CUDA device")
        torch = self.torch
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CALIBRATION_CYCLES)  # warm
        begin.record()
        torch.cuda._sleep(SLEEP_CALIBRATION_CYCLES)
        end.record()
        end.synchronize()
        cycles_per_ms = SLEEP_CALIBRATION_CYCLES / begin.elapsed_time(end)
        injected = {}
        for metric in metrics:
            if metric.get("stage"):
                continue
            name, plain = metric["name"], self.calls[metric["name"]]
            call_ms = warm_ms[name] * self.steps_per_call.get(name, 1)
            calls = max(1, math.ceil(INJECT_BLOCK_MS / max(call_ms, 1e-3)))

            def added_ms(cycles: int, plain=plain, calls=calls) -> float:
                slowed = _slowed(plain, torch, cycles)
                differences = []
                for _ in range(INJECT_PAIRS):
                    differences.append(self._block_ms(slowed, calls) - self._block_ms(plain, calls))
                return float(sorted(differences)[len(differences) // 2])

            frame_ms = sorted(self._block_ms(plain, calls) for _ in range(INJECT_PAIRS))[INJECT_PAIRS // 2]
            cycles, added = spin_for(added_ms, fraction * frame_ms, cycles_per_ms)
            self.calls[name] = _slowed(plain, torch, cycles)
            steps = self.steps_per_call.get(name, 1)  # per step, as the rounds' times
            injected[name] = {"frame_ms": frame_ms / steps, "target_ms": fraction * frame_ms / steps,
                              "added_ms": added / steps, "spin_ms": cycles / cycles_per_ms / steps}
        return injected

    def _block_ms(self, call, calls: int) -> float:
        """Per-call ms of `calls` back-to-back calls on the card, CUDA events around the block."""
        torch = self.torch
        call()  # one untimed call: the other side just used the card (its data is in L2, not ours)
        torch.cuda.synchronize(self.device)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / calls

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def _nvml_handle(torch, device):
    """(pynvml, handle) of the card torch calls `device`, matched by UUID; None where NVML is unusable."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception as error:  # noqa: BLE001 - no NVML means no clock readings, said once
        print(f"lpperf gate worker: NVML clock readings unavailable: {error}", file=sys.stderr)
        return None


def _side_module(tree: str, *names: str):
    """The side's lpperf module, under the first of `names` (below lpperf) that the side's tree holds: a
    base from before the package was split into layer folders keeps its modules at the top. Which names
    the tree holds is read from its files, before anything is imported: an installed lpperf (an editable
    install's import hook answers for every module it has) would otherwise run its own module for one
    the side lacks, against the side's other modules."""
    import importlib

    for name in names:
        path = os.path.join(tree, "lpperf", *name.split("."))
        if not (os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))):
            continue
        module = importlib.import_module(f"lpperf.{name}")
        if os.path.commonpath([os.path.abspath(module.__file__), tree]) != tree:
            raise ImportError(f"lpperf.{name} was imported from {module.__file__}, not from the side's tree {tree}; "
                              "an installed lpperf shadows the side (check PYTHONPATH)")
        return module
    raise ModuleNotFoundError(f"the side's lpperf in {tree} has none of {', '.join('lpperf.' + n for n in names)}")


def _frames_call(frame, animator, driving):
    """The recipe's frames as every measure runs them, and how many steps of `driving`'s batch one call
    makes: the side's frame.step_work (a recipe with motion ahead makes several per call); one step on
    `driving` for a side that predates it."""
    step_work = getattr(frame, "step_work", None)
    if step_work is None:
        return (lambda: animator.step(driving)), 1
    work = step_work(animator, driving.shape[0])
    parts = tuple(work.calls.values())

    def call():
        for part in parts:
            out = part()
        return out
    return call, work.frames // driving.shape[0]


def _captured(call, device, name: str, tree: str):
    timing = _side_module(tree, "measure.timing", "timing")

    try:
        return timing.graph_replay(call, device)
    except Exception as error:  # noqa: BLE001 - any capture failure: say which metric, then the worker stops
        raise RuntimeError(f"{name}: could not capture it as a CUDA graph to time it ({type(error).__name__}: "
                           f"{error}); the side's step or stage must not synchronise with the host") from error


def _compiled(animator) -> bool:
    """Whether the step runs compiled (its step or its networks; a recipe whose compile failed runs
    eager). An uncompiled frame is timed as a CUDA graph replay: run eagerly at batch 1 it is
    launch-bound, so back-to-back calls time the host, which on an H200 host (torch 2.11) moved block
    to block between 21.7 and 41.4 ms per fp32-eager frame (its GPU work, M+S+W+G as graphs: 17.2 ms). A
    compiled step (CUDA graphs of its own, or inductor kernels) is timed as it runs; it cannot be
    captured inside another graph."""
    engine = animator.engine
    compiled = getattr(engine, "compiled", None)
    if compiled is None:
        # A side whose engine predates Engine.compiled listed the steps it applied by name (a compile
        # that failed was taken off the list).
        return any(str(name).startswith(("compile_step", "compile_nets")) for name in engine.applied)
    return bool(compiled)


def spin_for(added_ms, target_ms: float, cycles_per_ms: float, tries: int = 4) -> tuple[int, float]:
    """GPU spin cycles after each call that make the call `target_ms` slower, and the ms they add.

    `added_ms(cycles)` measures what a spin of `cycles` adds per call. Where the GPU idles for g ms per
    call (waiting on the host), a spin of s ms adds about max(0, s - g): the first try, s = target,
    falls short by about g, so the next spin grows by the measured shortfall. Stops once within 10 % of
    the target, or after `tries` measurements; returns what was last measured, so an injection that
    fell short is reported as such, never assumed."""
    if target_ms <= 0 or cycles_per_ms <= 0:
        raise ValueError(f"need target_ms > 0 and cycles_per_ms > 0, got {target_ms} and {cycles_per_ms}")
    cycles = math.ceil(target_ms * cycles_per_ms)
    for attempt in range(tries):
        added = added_ms(cycles)
        if added >= INJECT_CLOSE_ENOUGH * target_ms or attempt == tries - 1:
            break
        cycles += math.ceil((target_ms - max(added, 0.0)) * cycles_per_ms)
    return cycles, added


def _slowed(call, torch, cycles: int):
    def slowed():
        out = call()
        torch.cuda._sleep(cycles)
        return out
    return slowed


def _shortened(text: str, limit: int = 2000) -> str:
    """`text` within `limit` characters for the one-line answer: a long message keeps its start (what
    failed) and its end (what to do), the middle cut."""
    if len(text) <= limit:
        return text
    cut = " [...] "
    head = (limit - len(cut)) * 2 // 3
    return text[:head] + cut + text[-(limit - len(cut) - head):]


if __name__ == "__main__":
    raise SystemExit(main())
