"""A stand-in for lpperf/gate/worker.py that speaks the same protocol with made-up timings, so the
controller's rounds, decisions and error handling are tested on the CPU without networks.

Behaviour comes from the JSON in LPPERF_FAKE_WORKER: {"ms": {metric: ms}, "default_ms": 1.0,
"head_factor": {metric: factor} or a number, "noise": relative sd per block, "seed": int,
"replayed": [metrics the worker says it timed as CUDA graph replays],
"fail": {"role": "head", "op": "prepare", "how": "crash" | "hang" | "oom" | "garbage" | "bad-ms"},
"child": true (a sleeping child process in the worker's group, holding its stdout, as compile workers do),
"memory_mib": MiB of every frame (default 1000), "head_memory_mib": MiB the head adds,
"no_memory": [roles that cannot report memory] or true (neither can: the CPU),
"startup_s": {"first_s", "warm_s"} (default 10 and 5), "head_startup_factor": number,
"head_output_levels": noise the head adds to its frames, "head_output_size": side of the head's frames,
"pair_offset": {worker name, e.g. "fast-2": factor of that pair's head}}.
Its log (stderr) starts with `pid N` and, with a child, `child pid N`.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

role = sys.argv[1]
name = sys.argv[2] if len(sys.argv) > 2 else ""  # the recipe, with the pair's number where there are several
spec = json.loads(os.environ.get("LPPERF_FAKE_WORKER", "{}"))
rng = np.random.default_rng(spec.get("seed", 0) + (1 if role == "head" else 0))
factor = spec.get("head_factor", 1.0)
fail = spec.get("fail") or {}
prepared = set()  # like the real worker, measure only what was prepared here
print(f"pid {os.getpid()}", file=sys.stderr, flush=True)
if spec.get("child"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"child pid {child.pid}", file=sys.stderr, flush=True)


def per_call_ms(metric):
    base = spec.get("ms", {}).get(metric, spec.get("default_ms", 1.0))
    if role == "head":
        base *= factor.get(metric, 1.0) if isinstance(factor, dict) else factor
        base *= spec.get("pair_offset", {}).get(name, 1.0)  # a steady offset of this pair's head process
    return base


def memory():
    no_memory = spec.get("no_memory", [])
    if no_memory is True or role in no_memory:
        return {"torch_peak_mib": None, "nvml_mib": None, "why": "fake worker without memory"}
    mib = spec.get("memory_mib", 1000.0) + (spec.get("head_memory_mib", 0.0) if role == "head" else 0.0)
    return {"torch_peak_mib": mib, "nvml_mib": mib + 500.0}


def injected(request):
    """As the real worker reports a test-only slowdown: what the spin added, as measured (all of it here)."""
    fraction = request.get("inject_slowdown", 0.0)
    return {m["name"]: {"frame_ms": per_call_ms(m["name"]), "target_ms": fraction * per_call_ms(m["name"]),
                        "added_ms": fraction * per_call_ms(m["name"]), "spin_ms": fraction * per_call_ms(m["name"])}
            for m in request["metrics"] if not m["stage"]} if fraction else {}


def startup():
    figures = dict(spec.get("startup_s", {"first_s": 10.0, "warm_s": 5.0}))
    factor = spec.get("head_startup_factor", 1.0) if role == "head" else 1.0
    return {key: value * factor for key, value in figures.items()}


def outputs(request):
    """Frames as the real worker writes them: the same on both sides unless the spec moves the head's."""
    asked = request.get("outputs")
    if not asked:
        return {}
    size = spec.get("head_output_size", 16) if role == "head" else 16
    frames_rng = np.random.default_rng(1)  # the same "frames" on both sides
    frames = frames_rng.random((asked["frames"], 3, size, size), dtype=np.float32)
    batched = frames_rng.random((4, 3, size, size), dtype=np.float32)
    levels = spec.get("head_output_levels", 0.0) if role == "head" else 0.0
    if levels:
        frames = frames + (rng.integers(0, 2, frames.shape) * 2 - 1).astype(np.float32) * levels / 255
    reference = np.clip(frames + 0.001, 0, 1)
    os.makedirs(asked["folder"], exist_ok=True)
    written = {}
    for recipe in dict.fromkeys(m["recipe"] for m in request["metrics"]):
        path = os.path.join(asked["folder"], f"{recipe}.npz")
        np.savez(path, frames=frames, batched=batched, reference=reference)
        written[recipe] = path
    return written


for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "quit":
        break
    if fail.get("role") == role and fail.get("op") == op:
        how = fail["how"]
        if how == "crash":
            print("fake worker: crashing on purpose", file=sys.stderr, flush=True)
            sys.exit(7)
        if how == "hang":
            print(f"fake worker: hanging in {op}", file=sys.stderr, flush=True)
            time.sleep(600)
        if how == "oom":
            print(json.dumps({"ok": False, "kind": "oom", "error": "OutOfMemoryError: CUDA out of memory"}), flush=True)
            sys.exit(1)
        if how == "garbage":
            print("this is not json", flush=True)
            continue
    if op == "load":
        print(f"load threads {json.dumps(request.get('threads'))}", file=sys.stderr, flush=True)
        answer = {"ok": True, "lpperf": "fake", "torch": "fake", "weights": "fake", "load_s": 0.0}
    elif op == "prepare":
        print(f"prepare at {time.monotonic()}", file=sys.stderr, flush=True)
        print(f"startup timed {json.dumps(request.get('startup', True))}", file=sys.stderr, flush=True)
        prepared.update(m["name"] for m in request["metrics"])
        print(f"prepared {json.dumps(sorted(prepared))}", file=sys.stderr, flush=True)
        if hasattr(os, "sched_getaffinity"):  # the cores the controller kept this worker on
            print(f"cores {json.dumps(sorted(os.sched_getaffinity(0)), separators=(',', ':'))}", file=sys.stderr,
                  flush=True)
        answer = {"ok": True, "warm_ms": {m["name"]: per_call_ms(m["name"]) for m in request["metrics"]},
                  "compile_s": {}, "injected_ms": injected(request),
                  "timed_as": {m["name"]: "cuda graph replay" if m["name"] in spec.get("replayed", []) else
                               "back-to-back calls" for m in request["metrics"]},
                  "memory": {m["name"]: memory() for m in request["metrics"] if not m["stage"]},
                  "startup": {m["recipe"]: startup() for m in request["metrics"]} if request.get("startup", True)
                  else {},
                  "outputs": outputs(request)}
    elif op == "measure" and request["metric"] not in prepared:
        answer = {"ok": False, "kind": "error", "error": f"{request['metric']}: KeyError: not prepared here"}
    elif op == "measure":
        noise = spec.get("noise", 0.0)
        answer = {"ok": True, "ms": per_call_ms(request["metric"]) * float(np.exp(rng.normal(0, noise)))}
        if fail.get("role") == role and fail.get("how") == "bad-ms":
            answer["ms"] = -1.0
        if request.get("clock"):
            answer["clock"] = {"sm_mhz": 1980, "reasons": spec.get("reasons", 0)}
    else:
        answer = {"ok": False, "kind": "error", "error": f"unknown op {op}"}
    print(json.dumps(answer), flush=True)
