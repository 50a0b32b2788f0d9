"""`lpperf profile`: where a recipe's frame spends its time, layer by layer.

    lpperf profile --recipe fastest [--batch 1] [--top 25] [--kernels]

Every convolution and linear layer of one frame (M, S, W, G, as the recipe's networks hold them:
its precision, layout and rewrites) is captured with its real inputs, then timed alone: on CUDA
its kernels replayed as a CUDA graph and timed with CUDA events (no launch overhead), on the CPU
the eager call. Each row gives the layer, its shapes, its FLOPs (torch's flop counter), the time,
the achieved TFLOP/s and the share of the card's measured bf16 matmul peak. `--kernels` adds
torch.profiler's kernel table of the recipe's whole compiled frame (times only: kernels carry no
FLOP counts).

Layers timed alone are not the frame: the compiled frame fuses the norms and element-wise work
around them, and the per-layer sum omits everything that is not a convolution or a matmul.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from lpperf import frame, recipes, roofline, timing
from lpperf.models import FEATURE_NET
from lpperf.rewrites import LAYER_TYPES

TIMED_TYPES = (nn.Conv2d, nn.Conv3d, nn.Linear) + LAYER_TYPES
LAYER_RULE = timing.StoppingRule(min_repeats=10, min_seconds=0.02, max_rel_iqr=0.05, max_repeats=200, max_seconds=1.0)


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str  # network.module.path
    kind: str
    shapes: str
    flops: int
    ms: float

    @property
    def tflops(self) -> float:
        return self.flops / (self.ms * 1e-3) / 1e12 if self.ms > 0 else 0.0


def profile_layers(animator: recipes.OptimizedAnimator, driving: torch.Tensor, device: torch.device) -> list[Layer]:
    """Each timed layer of one per-frame step, called alone on the inputs it saw in that step."""
    eager = frame.uncompiled(animator)
    calls: list[tuple[str, nn.Module, tuple]] = []
    hooks = []
    for net_name, net in eager.nets.items():
        if net_name == FEATURE_NET:
            continue  # F runs once per source, not per frame
        for path, module in net.named_modules():
            if isinstance(module, TIMED_TYPES) and not _inside_timed(path, net):
                hooks.append(module.register_forward_hook(
                    lambda module, args, out, name=f"{net_name}.{path}": calls.append((name, module, args))))
    try:
        with animator.engine.context():
            eager.run_stages(driving)
    finally:
        for hook in hooks:
            hook.remove()
    layers = []
    with animator.engine.context():
        for name, module, args in calls:
            call = _bound(module, args)
            flops = roofline.count_flops(call).total
            run = timing.graph_replay(call, device) if device.type == "cuda" else call
            ms = timing.time_callable(run, device, warmup=2, rule=LAYER_RULE).median_ms
            shapes = " ".join(f"{tuple(arg.shape)}" for arg in args if isinstance(arg, torch.Tensor))
            layers.append(Layer(name, type(module).__name__, shapes, flops, ms))
    return sorted(layers, key=lambda layer: layer.ms, reverse=True)


def _inside_timed(path: str, net: nn.Module) -> bool:
    """A layer inside another timed layer (e.g. the Conv3d a rewrite wraps) is timed with its parent."""
    parts = path.split(".")
    for cut in range(1, len(parts)):
        if isinstance(net.get_submodule(".".join(parts[:cut])), TIMED_TYPES):
            return True
    return False


def _bound(module: nn.Module, args: tuple) -> Callable[[], object]:
    return lambda: module(*args)


def format_layers(layers: list[Layer], peak_tflops: float | None, top: int) -> str:
    total = sum(layer.ms for layer in layers)
    header = f"{'layer':<58} {'kind':<18} {'GFLOP':>7} {'ms':>7} {'TFLOP/s':>8} {'% peak':>6}  input shapes"
    lines = [header, "-" * len(header)]
    for layer in layers[:top]:
        share = f"{layer.tflops / peak_tflops:.0%}" if peak_tflops else "-"
        lines.append(f"{layer.name[:58]:<58} {layer.kind[:18]:<18} {layer.flops / 1e9:>7.1f} {layer.ms:>7.3f} "
                     f"{layer.tflops:>8.1f} {share:>6}  {layer.shapes}")
    flops = sum(layer.flops for layer in layers)
    lines.append(f"{len(layers)} layers timed alone: {total:.3f} ms, {flops / 1e9:.0f} GFLOP, "
                 f"{flops / (total * 1e-3) / 1e12 if total else 0:.0f} TFLOP/s overall"
                 + (f" (card peak {peak_tflops:.0f} TFLOP/s, bf16 matmul)" if peak_tflops else ""))
    return "\n".join(lines)


def kernel_table(animator: recipes.OptimizedAnimator, driving: torch.Tensor, device: torch.device,
                 steps: int = 20) -> str:
    """torch.profiler's kernels of `steps` whole frames as the recipe runs them, by total device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            animator.step(driving)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=70)


def add_parser(commands) -> None:
    parser = commands.add_parser("profile", help="per-layer time, FLOPs and TFLOP/s of a recipe's frame")
    parser.add_argument("--recipe", default="fastest", help="recipe to profile (default %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="driving frames per step (default 1)")
    parser.add_argument("--top", type=int, default=25, help="rows to print (default 25)")
    parser.add_argument("--kernels", action="store_true", help="also torch.profiler's kernel table of the frame")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--weights", metavar="DIR", help="official checkpoints (default: synthetic weights)")
    parser.set_defaults(handler=cmd_profile)


def cmd_profile(args) -> int:
    from lpperf import weights

    recipes.lookup(args.recipe)  # an unknown name fails here, before anything loads
    if args.batch < 1 or args.top < 1:
        raise ValueError("--batch and --top must be >= 1")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for a GPU, but torch sees none; use --device cpu")
    loaded = weights.load_networks(args.weights, device)
    engine = recipes.build(args.recipe, loaded.nets, device)
    animator = frame.sample_animator(engine)
    driving = frame.driving_batch(args.batch, offset=frame.PARITY_FRAMES).to(device)
    for _ in range(3):
        animator.step(driving)  # compile, autotune, warm
    peak = roofline.measure_peak(device).tflops if device.type == "cuda" else None
    layers = profile_layers(animator, driving, device)
    print(f"recipe {args.recipe} on {device}, batch {args.batch}, weights: {loaded.description}; applied {engine.applied}")
    print(format_layers(layers, peak, args.top))
    if args.kernels:
        print("\nkernels of the whole frame as the recipe runs it:")
        print(kernel_table(animator, driving, device))
    return 0
