"""Where a waterfall row's GPU memory goes: the first (cuDNN-benchmarking, compiling) call against the
steady state, and which convolution asks for the most memory in that first call.

    python tools/memory_probe.py --rows "+ G's SPADE modulations batched" "fp32 eager" --out probe.json

Run it once per environment to compare (e.g. with CUDNN_CONV_WSCAP_DBG set); it prints one JSON line
per row and writes them all to --out.
"""

from __future__ import annotations

import argparse
import json
import torch
from torch import nn

from lpperf.measure import frame, memory
from lpperf.models import weights
from lpperf.optimize import recipes
from lpperf.reports import bench

MIB = 2**20


def _largest_conv_requests(animator, driving, top: int = 5) -> list[dict]:
    """Per convolution of the first call: the allocator's peak while it ran, above what was allocated
    when it started (its output plus cuDNN's workspace and benchmark trials)."""
    requests, handles = [], []

    def before(module, _inputs):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        module._probe_start = torch.cuda.memory_allocated()

    def after(module, _inputs, _output):
        torch.cuda.synchronize()
        requests.append({"layer": module._probe_name, "kind": type(module).__name__,
                         "transient_mib": (torch.cuda.max_memory_allocated() - module._probe_start) / MIB,
                         "peak_mib": torch.cuda.max_memory_allocated() / MIB})

    for name, net in animator.nets.items():
        for layer_name, module in net.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                module._probe_name = f"{name}.{layer_name}"
                handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        animator.step(driving)
    finally:
        for handle in handles:
            handle.remove()
    peak = max(item["peak_mib"] for item in requests)
    return peak, sorted(requests, key=lambda item: -item["transient_mib"])[:top]


def probe(row: bench.Row, nets: dict, device: torch.device, calls: int) -> dict:
    engine = recipes.build(row.steps, nets, device)
    animator = frame.sample_animator(engine)
    driving = frame.driving_batch(1, offset=frame.PARITY_FRAMES).to(device)
    result = {"row": row.name}
    memory.release_cached_memory()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if engine.compiled:
        animator.step(driving)
        torch.cuda.synchronize()
        result["first_call_max_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
    else:
        peak, result["largest_first_call_requests"] = _largest_conv_requests(animator, driving)
        result["first_call_max_allocated_mib"] = peak
    result["first_call_reserved_mib"] = torch.cuda.memory_reserved() / MIB
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with memory.track_peak_memory(device) as tracker:
        for _ in range(calls):
            animator.step(driving)
    result["steady_max_allocated_mib"] = tracker.report.torch_max_allocated_bytes / MIB
    result["steady_max_reserved_mib"] = tracker.report.torch_max_reserved_bytes / MIB
    result["steady_nvml_process_peak_mib"] = tracker.report.process_peak_bytes / MIB
    result["nvml_method"] = tracker.report.method
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", required=True, help="waterfall row names (lpperf bench's labels)")
    parser.add_argument("--recipe", default="fastest", help="the waterfall the rows come from")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cap-gib", type=float, help="cap torch's allocator at this many GiB (a smaller card)")
    args = parser.parse_args()
    device = torch.device("cuda")
    if args.cap_gib:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.cap_gib * 2**30 / total, device)
    nets = weights.synthetic(0, device="cpu")
    rows = {row.name: row for row in bench.waterfall_rows(args.recipe)}
    rows.update({row.name: row for row in bench.peer_rows()})
    results = []
    for name in args.rows:
        if name not in rows:
            raise SystemExit(f"no row {name!r}; rows: {list(rows)}")
        results.append(probe(rows[name], nets, device, args.calls))
        print(json.dumps(results[-1]), flush=True)
        memory.release_cached_memory()
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
