"""`lpperf profile`: where a recipe's frame spends its time, layer by layer.

    lpperf profile --recipe fastest [--batch 1] [--top 25] [--kernels] [--split] [--no-layers]

Every convolution and linear layer of one frame (M, S, W, G, as the recipe's networks hold them:
its precision, layout and rewrites) is captured with its real inputs, then timed alone: on CUDA
its kernels replayed as a CUDA graph and timed with CUDA events (no launch overhead), on the CPU
the eager call. Each row gives the layer, its shapes, its FLOPs (torch's flop counter), the time,
the achieved FLOP/s (TFLOP/s on a card, GFLOP/s on the CPU: each column in the unit its largest figure
reads in) and the share of the card's measured bf16 matmul peak (an FFTConv3d's FLOPs
are its complex matmul's as torch counts them, one real multiply-add per complex one, and no FFTs:
its TFLOP/s is not comparable with a convolution's; its time is). `--kernels` adds
torch.profiler's kernel table of the recipe's whole compiled frame (times only: kernels carry no
FLOP counts) and, on a card, the kernels by family per frame (convolutions, inductor's generated
kernels, matrix products, copies and fills) with the GPU's wait after each fill.

Layers timed alone are not the frame: the compiled frame fuses the norms and element-wise work
around them, and the per-layer sum omits everything that is not a convolution or a matmul.

`--split` says where the frame's time goes, in one process on one card: the whole step; the GPU's
busy time in it (torch.profiler's kernel and copy intervals, overlaps merged), so the rest is idle
GPU (launch and host gaps); and M, W and G each called alone on the inputs they got in one frame,
the way the official LivePortrait speed script times them (each network alone, summed), so
"frame - (M + W + G)" is what a real frame spends outside the three networks: keypoint math,
stitching, casts and the gaps between them. `--probe-inputs` also times M, W and G alone on inputs
drawn as the official speed script draws them (standard normal: random images, features and
keypoints, most of whose sampling grid then lies outside the volume), so the two ways of timing a
network can be told apart. (What a recipe caches per source, such as W's source terms, is not an
argument and is kept.)

Over 400 lines as one module: the command, the per-layer table, the frame split and the kernel table
share their inputs and the recipe's context handling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

from lpperf.measure import frame, roofline, timing
from lpperf.optimize import recipes
from lpperf.reports.charts import plain_number, shorten_middle
from lpperf.optimize.engine import HEAVY_NETS, OptimizedAnimator
from lpperf.optimize.kernels import TritonConv2d
from lpperf.optimize.modulation import TritonSpadeModulation
from lpperf.models import DECODER_NET, FEATURE_NET, MOTION_NET, WARP_NET
from lpperf.optimize.rewrites import LAYER_TYPES
from lpperf.util.arguments import at_least
from lpperf.util.devices import DEVICES, device_name, resolve_device
from lpperf.util.validation import check_positive_int

TIMED_TYPES = (nn.Conv2d, nn.Conv3d, nn.Linear, TritonConv2d, TritonSpadeModulation) + LAYER_TYPES
LAYER_RULE = timing.StoppingRule(min_repeats=10, min_seconds=0.02, max_rel_iqr=0.05, max_repeats=200, max_seconds=1.0)
SPLIT_RULE = timing.StoppingRule(min_repeats=20, min_seconds=0.1, max_rel_iqr=0.05, max_repeats=300, max_seconds=5.0)
CPU_SPLIT_RULE = timing.StoppingRule(min_repeats=5, min_seconds=0.0, max_rel_iqr=0.10, max_repeats=25, max_seconds=10.0)
SPLIT_PROFILED_FRAMES = 20  # frames run under torch.profiler for the GPU busy time
NETWORK_LETTERS = {MOTION_NET: "M", WARP_NET: "W", DECODER_NET: "G"}


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


def profile_layers(animator: OptimizedAnimator, driving: torch.Tensor, device: torch.device) -> list[Layer]:
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


NAME_WIDTH = 58  # layer names longer than this are cut in the middle, unless two would then read the same
SI_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def format_layers(layers: list[Layer], peak_tflops: float | None, top: int) -> str:
    """The `top` slowest layers as a table. FLOPs and FLOP/s are each in the unit their largest value
    reads in (on the CPU GFLOP/s, not a column of 0.0 TFLOP/s); names stay distinguishable."""
    shown = layers[:top]
    total = sum(layer.ms for layer in layers)
    flops = sum(layer.flops for layer in layers)
    overall_rate = flops / (total * 1e-3) if total else 0.0
    flop_scale, flop_prefix = _si_prefix(max((layer.flops for layer in shown), default=0))
    rate_scale, rate_prefix = _si_prefix(max([layer.tflops * 1e12 for layer in shown] + [overall_rate]))
    names = _distinct_names([layer.name for layer in shown], NAME_WIDTH)
    name_width = max([len(name) for name in names] + [len("layer")])
    kind_width = max([len(layer.kind) for layer in shown] + [len("kind")])
    header = (f"{'layer':<{name_width}} {'kind':<{kind_width}} {flop_prefix + 'FLOP':>9} {'ms':>7} "
              f"{rate_prefix + 'FLOP/s':>8} {'% peak':>6}  input shapes")
    lines = [header, "-" * len(header)]
    for name, layer in zip(names, shown):
        share = f"{layer.tflops / peak_tflops:.0%}" if peak_tflops else "-"
        lines.append(f"{name:<{name_width}} {layer.kind:<{kind_width}} {plain_number(layer.flops / flop_scale):>9} "
                     f"{layer.ms:>7.3f} {plain_number(layer.tflops * 1e12 / rate_scale):>8} {share:>6}  {layer.shapes}")
    lines.append(f"{len(layers)} layers timed alone: {total:.3f} ms, {plain_number(flops / flop_scale)} "
                 f"{flop_prefix}FLOP, {plain_number(overall_rate / rate_scale)} {rate_prefix}FLOP/s overall"
                 + (f" (card peak {peak_tflops:.0f} TFLOP/s, bf16 matmul)" if peak_tflops else ""))
    return "\n".join(lines)


def _si_prefix(largest: float) -> tuple[float, str]:
    """The scale and SI prefix in which `largest` reads at least 1 (none below 1000)."""
    return next(((scale, prefix) for scale, prefix in SI_PREFIXES if largest >= scale), (1.0, ""))


def _distinct_names(names: list[str], width: int) -> list[str]:
    """The names cut in the middle to `width`, or whole where cutting would make two read the same."""
    short = [shorten_middle(name, width) for name in names]
    return short if len(set(short)) == len(set(names)) else names


@dataclasses.dataclass(frozen=True)
class StepRound:
    """One round of the recipe's steps as animate() makes them (lpperf.measure.frame.step_work, on the
    sample driving frames): `run` makes `steps` steps of `driving`'s batch size and returns the last. A
    step each, or with motion ahead M over that many frames, then their steps from their motion."""

    run: Callable[[], object]
    steps: int

    @classmethod
    def of(cls, animator: OptimizedAnimator, driving: torch.Tensor) -> "StepRound":
        batch = driving.shape[0]
        work = frame.step_work(animator, batch)
        calls = tuple(work.calls.values())

        def run():
            for call in calls:
                out = call()
            return out
        return cls(run, work.frames // batch)

    def rounds_for(self, steps: int) -> int:
        """Rounds that make at least `steps` steps."""
        return -(-steps // self.steps)


def kernel_table(animator: OptimizedAnimator, driving: torch.Tensor, device: torch.device,
                 steps: int = 20) -> str:
    """torch.profiler's kernels of at least `steps` whole steps as the recipe runs them (whole rounds of
    them with motion ahead), by total device time; on a card, then their families per frame."""
    from torch.profiler import ProfilerActivity, profile

    round_ = StepRound.of(animator, driving)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    rounds = round_.rounds_for(steps)
    with profile(activities=activities) as profiler:
        for _ in range(rounds):
            round_.run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=70)
    if device.type != "cuda":
        return table
    families = KernelFamilies.from_intervals(_gpu_intervals(profiler, device), rounds * round_.steps)
    return table + "\n" + format_families(families)


def is_fill(name: str) -> bool:
    """A memset on the GPU timeline, as the profiler names it ("Memset (Device)") or a kernel does."""
    return name.lower().startswith("memset")


def is_copy_or_fill(name: str) -> bool:
    return name.startswith("Memcpy") or is_fill(name)


def _is_convolution(name: str) -> bool:
    # cuDNN's and CUTLASS's forward kernels (fprop), cuDNN's older ones (implicit/explicit_convolve_sgemm,
    # whose names also hold "gemm"), ATen's (conv_depthwise2d, vol2col) and FFT convolutions; C++ kernel
    # names may begin with their return type ("void ").
    bare = name.removeprefix("void ").lower()
    return ("fprop" in bare or "cudnn" in bare or "convolve" in bare or bare.startswith(("conv", "at::native::conv"))
            or "vol2col" in bare or "im2col" in bare or bare.startswith("fft"))


# Kernel families by the names the profiler gives them; the first family whose test a name passes.
KERNEL_FAMILIES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("copies and fills", is_copy_or_fill),
    ("inductor's generated kernels", lambda name: name.startswith("triton_")),
    ("convolutions (cuDNN, CUTLASS, ATen)", _is_convolution),
    ("matrix products (cuBLAS, CUTLASS)", lambda name: name.startswith(("nvjet", "cutlass")) or "gemm" in name
     or "gemv" in name),
)
OTHER_FAMILY = "other (lpperf's kernels, ATen's)"


def kernel_family(name: str) -> str:
    """The family of a GPU interval named `name` by torch.profiler (KERNEL_FAMILIES, else OTHER_FAMILY)."""
    return next((family for family, member in KERNEL_FAMILIES if member(name)), OTHER_FAMILY)


@dataclasses.dataclass(frozen=True)
class KernelFamilies:
    """Per frame: each kernel family's intervals and time, and the GPU's wait after each fill (a memset
    node in a CUDA graph holds the next kernel back for microseconds: cuDNN's segment-K convolutions
    ask for one each)."""

    per_frame: dict[str, tuple[float, float]]  # family -> (intervals per frame, ms per frame), by time
    fills_per_frame: float
    wait_after_fills_ms: float
    frames: int

    @classmethod
    def from_intervals(cls, intervals: Iterable[tuple[float, float, str]], frames: int) -> "KernelFamilies":
        """From (start us, end us, name) of every GPU interval of `frames` frames on one stream."""
        check_positive_int(frames, "frames")
        ordered = sorted(intervals)
        totals: dict[str, list[float]] = {}
        for start, end, name in ordered:
            total = totals.setdefault(kernel_family(name), [0, 0.0])
            total[0] += 1
            total[1] += end - start
        fills = [i for i, (_, _, name) in enumerate(ordered) if is_fill(name)]
        wait_us = sum(max(0.0, ordered[i + 1][0] - ordered[i][1]) for i in fills if i + 1 < len(ordered))
        per_frame = {family: (count / frames, us / 1e3 / frames)
                     for family, (count, us) in sorted(totals.items(), key=lambda item: -item[1][1])}
        return cls(per_frame, len(fills) / frames, wait_us / 1e3 / frames, frames)


def format_families(families: KernelFamilies) -> str:
    lines = [f"kernel families per frame (mean of {families.frames} frames):",
             f"  {'family':<38} {'per frame':>9} {'ms':>8}"]
    lines += [f"  {family:<38} {count:>9.1f} {ms:>8.3f}" for family, (count, ms) in families.per_frame.items()]
    lines.append(f"  {'idle after fills (memsets)':<38} {families.fills_per_frame:>9.1f} "
                 f"{families.wait_after_fills_ms:>8.3f}   the wait before the interval after each fill")
    return "\n".join(lines)


def _gpu_intervals(profiler, device: torch.device) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of the profiled GPU work on `device`. User annotations (record_function
    ranges, also mirrored on the GPU timeline) span idle time: left out."""
    from torch.autograd import DeviceType

    index = torch.cuda.current_device() if device.index is None else device.index  # "cuda" is the current card
    intervals = [(event.time_range.start, event.time_range.end, event.name) for event in profiler.events()
                 if event.device_type == DeviceType.CUDA and not event.is_user_annotation
                 and event.device_index == index]
    if not intervals:
        raise RuntimeError(f"the profiler recorded no GPU work on cuda:{index}; profile on the card that runs the "
                           "recipe (--device cuda:N)")
    return intervals


@dataclasses.dataclass(frozen=True)
class FrameSplit:
    """Where one frame's time goes: the whole step, the GPU's busy part of it, and M, W, G each alone."""

    frame_ms: float  # the whole per-frame step as animate() makes it (StepRound), median
    busy_ms: float | None  # GPU busy per frame, mean over the profiled frames; None on the CPU
    networks_ms: dict[str, float]  # each heavy network alone on its inputs of one frame, median
    network_form: str  # how the networks were called alone, in words
    profiled_frames: int  # frames behind busy_ms (0 on the CPU)
    networks_as_in_frame: bool = True  # False: the step is compiled as a whole, so the networks alone are
    # their uncompiled kernels, not parts of the frame, and "frame - networks" means nothing
    probe_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # each network alone on standard
    # normal inputs of the frame's shapes (the official speed script's inputs); empty unless asked for
    kernels_per_frame: float | None = None  # kernels the GPU ran per profiled frame; None on the CPU

    @property
    def networks_sum_ms(self) -> float:
        return sum(self.networks_ms.values())

    @property
    def idle_ms(self) -> float | None:
        return None if self.busy_ms is None else self.frame_ms - self.busy_ms

    @property
    def outside_networks_ms(self) -> float:
        return self.frame_ms - self.networks_sum_ms


def frame_split(animator: OptimizedAnimator, driving: torch.Tensor, device: str | torch.device, *,
                warmup: int = 2, rule: timing.StoppingRule = SPLIT_RULE,
                profiled_frames: int = SPLIT_PROFILED_FRAMES, probe_inputs: bool = False) -> FrameSplit:
    """The frame, its GPU busy time and M, W, G each alone, measured on the animator as its recipe runs
    it; with probe_inputs, M, W, G alone on standard normal inputs of the same shapes too."""
    check_positive_int(profiled_frames, "profiled_frames")
    device = resolve_device(device, option="device")
    round_ = StepRound.of(animator, driving)
    frame_ms = timing.time_callable(round_.run, device, warmup=warmup, rule=rule).median_ms / round_.steps
    inputs = frame.network_inputs(animator, driving)
    calls, form = _network_calls(animator, inputs, device)
    networks_ms = _time_calls(animator, calls, device, warmup, rule)
    probe_ms = {}
    if probe_inputs:
        probe_calls, _ = _network_calls(animator, standard_normal_like(inputs), device)
        probe_ms = _time_calls(animator, probe_calls, device, warmup, rule)
    if device.type == "cuda":
        activity = gpu_activity(animator, driving, device, profiled_frames)
        busy_ms, kernels_per_frame = activity.busy_ms, activity.kernels_per_frame
        profiled_frames = round_.rounds_for(profiled_frames) * round_.steps
    else:
        busy_ms, kernels_per_frame, profiled_frames = None, None, 0
    return FrameSplit(frame_ms, busy_ms, networks_ms, form, profiled_frames,
                      animator.engine.compile_step_mode is None, probe_ms, kernels_per_frame)


def _time_calls(animator: OptimizedAnimator, calls: dict[str, Callable[[], object]], device: torch.device,
                warmup: int, rule: timing.StoppingRule) -> dict[str, float]:
    with animator.engine.context():  # the step's context: compiled nets' guards expect it
        return {name: timing.time_callable(call, device, warmup=warmup, rule=rule).median_ms
                for name, call in calls.items()}


def standard_normal_like(inputs: dict[str, tuple[tuple, dict]], seed: int = 0) -> dict[str, tuple[tuple, dict]]:
    """The same calls with every floating-point tensor argument redrawn from N(0, 1) (same shape,
    dtype, device and strides), as the official speed script feeds each network: a random image for
    M, a random feature volume and random keypoints for W, a random feature for G. Other arguments
    are kept."""
    generators: dict[torch.device, torch.Generator] = {}

    def redraw(value):
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            return value
        if value.device not in generators:
            generators[value.device] = torch.Generator(value.device).manual_seed(seed)
        return torch.empty_like(value).normal_(generator=generators[value.device])

    return {name: (tuple(redraw(arg) for arg in args), {key: redraw(arg) for key, arg in kwargs.items()})
            for name, (args, kwargs) in inputs.items()}


def _network_calls(animator: OptimizedAnimator, inputs: dict[str, tuple[tuple, dict]],
                   device: torch.device) -> tuple[dict[str, Callable[[], object]], str]:
    """Each heavy network alone on `inputs` (frame.network_inputs), in the form the recipe runs it, and that form."""
    engine = animator.engine
    nets = {name: animator.nets[name] for name in HEAVY_NETS}
    if engine.compile_nets_mode is not None:
        # Per-network compile (a failed compile has already put the eager nets back): the compiled net
        # as the step calls it, launches included, as the official speed script times it.
        form = f"torch.compile(mode={engine.compile_nets_mode!r}) per network, called as the step calls it"
        return {name: _new_step_call(net, *inputs[name]) for name, net in nets.items()}, form
    if device.type == "cuda" and engine.compile_step_mode is not None:
        # The recipe compiles the whole step, not the networks: the uncompiled net's kernels as a
        # CUDA-graph replay, the closest stand-in for a network inside the step's graph.
        with engine.context():
            calls = {name: timing.graph_replay(_bound_call(net, *inputs[name]), device) for name, net in nets.items()}
        return calls, "uncompiled (the recipe compiles the whole step, not the networks), CUDA-graph replay"
    form = "eager call" + (", launches included" if device.type == "cuda" else ", host time")
    return {name: _bound_call(net, *inputs[name]) for name, net in nets.items()}, form


def _bound_call(net: Callable, args: tuple, kwargs: dict) -> Callable[[], object]:
    return lambda: net(*args, **kwargs)


def _new_step_call(net: Callable, args: tuple, kwargs: dict) -> Callable[[], object]:
    def call():
        # A CUDA-graphed compiled net (reduce-overhead, max-autotune) reuses its output buffers only
        # once told a new step begins; without it, it refuses and runs eager. A no-op otherwise.
        torch.compiler.cudagraph_mark_step_begin()
        return net(*args, **kwargs)
    return call


@dataclasses.dataclass(frozen=True)
class GpuActivity:
    """What the GPU did per frame over the profiled frames: its busy time (kernel and copy intervals,
    overlaps merged) and how many kernels it ran (copies and fills not counted)."""

    busy_ms: float
    kernels_per_frame: float

    @classmethod
    def from_intervals(cls, intervals: Iterable[tuple[float, float, str]], frames: int) -> "GpuActivity":
        """From (start us, end us, name) of every GPU interval of `frames` frames, as the profiler names
        them: a copy is "Memcpy ...", a fill "Memset ..."."""
        intervals = list(intervals)
        busy_us = sum(end - start for start, end in merge_intervals((start, end) for start, end, _ in intervals))
        kernels = sum(1 for _, _, name in intervals if not is_copy_or_fill(name))
        return cls(busy_us / 1e3 / frames, kernels / frames)


def gpu_activity(animator: OptimizedAnimator, driving: torch.Tensor, device: torch.device,
                 frames: int = SPLIT_PROFILED_FRAMES) -> GpuActivity:
    """The GPU's busy time and kernel count per step, mean over at least `frames` steps under
    torch.profiler, made as the recipe makes them (StepRound: whole rounds with motion ahead)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        raise ValueError(f"GPU busy time needs a CUDA device, got {device}")
    round_ = StepRound.of(animator, driving)
    rounds = round_.rounds_for(frames)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(rounds):
            round_.run()
        torch.cuda.synchronize(device)
    return GpuActivity.from_intervals(_gpu_intervals(profiler, device), rounds * round_.steps)


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of (start, end) intervals as sorted, disjoint intervals (touching ones joined)."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if end < start:
            raise ValueError(f"an interval must not end before it starts, got ({start}, {end})")
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def format_split(split: FrameSplit) -> str:
    def row(label: str, ms: float | None, note: str = "") -> str:
        value = f"{ms:>8.3f} ms" if ms is not None else f"{'n/a':>11}"
        return f"  {label:<34} {value}" + (f"   {note}" if note else "")

    def share(ms: float) -> str:
        return f"{ms / split.frame_ms:.1%} of the frame" if split.frame_ms > 0 else ""

    lines = [f"frame split (networks alone: {split.network_form})", row("frame (a step as animate makes it)", split.frame_ms)]
    if split.busy_ms is None:
        lines += [row("GPU busy", None, "on the CPU: no GPU work to profile"), row("GPU idle (frame - busy)", None)]
    else:
        lines += [row("GPU busy", split.busy_ms, f"kernels and copies, merged; mean of {split.profiled_frames} "
                                                 "profiled frames"),
                  row("GPU idle (frame - busy)", split.idle_ms, f"{share(split.idle_ms)}: launch and host gaps")]
        if split.kernels_per_frame:
            lines.append(f"  {'kernels per frame':<34} {split.kernels_per_frame:>8.1f}      "
                         f"{split.idle_ms / split.kernels_per_frame * 1e3:.2f} us idle per kernel on average")
    for name, ms in split.networks_ms.items():
        lines.append(row(f"{NETWORK_LETTERS.get(name, '?')} {name} alone", ms))
    letters = " + ".join(NETWORK_LETTERS.get(name, name) for name in split.networks_ms)
    lines.append(row(f"{letters} alone", split.networks_sum_ms, "how the official speed script counts a frame"))
    if split.networks_as_in_frame:
        lines.append(row(f"frame - ({letters})", split.outside_networks_ms,
                         f"{share(split.outside_networks_ms)}: outside the networks (keypoint math, stitching, gaps)"))
    else:
        lines.append("  (the step is compiled as one program that fuses across the networks: the networks alone are "
                     "their uncompiled kernels, not parts of this frame, so no 'frame - networks' is given)")
    if split.probe_ms:
        lines.append("  on standard normal inputs of the same shapes (the official speed script's random inputs):")
        for name, ms in split.probe_ms.items():
            lines.append(row(f"{NETWORK_LETTERS.get(name, '?')} {name} alone", ms))
        probe_sum = sum(split.probe_ms.values())
        lines.append(row(f"{letters} alone", probe_sum,
                         f"{probe_sum - split.networks_sum_ms:+.3f} ms against the frame's own inputs"))
    return "\n".join(lines)


def add_parser(commands) -> None:
    from lpperf.reports.bench import MAX_BATCH

    parser = commands.add_parser("profile", help="per-layer time, FLOPs and FLOP/s of a recipe's frame")
    parser.add_argument("--recipe", default="fastest", help="recipe to profile (default %(default)s)")
    parser.add_argument("--batch", type=at_least(1, most=MAX_BATCH), default=1, metavar="N",
                        help=f"driving frames per step (default 1, at most {MAX_BATCH}, as lpperf bench)")
    parser.add_argument("--top", type=at_least(1), default=25, metavar="N", help="rows to print (default 25)")
    parser.add_argument("--kernels", action="store_true", help="also torch.profiler's kernel table of the frame")
    parser.add_argument("--split", action="store_true", help="also the frame's split: GPU busy and idle time, "
                        "M, W, G each alone (the official speed script's way) and the time outside them")
    parser.add_argument("--probe-inputs", action="store_true", help="with --split: also M, W, G alone on "
                        "standard normal inputs, as the official speed script times them")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer table (then give --split "
                        "or --kernels: something must be measured)")
    parser.add_argument("--device", default="auto", type=device_name, help=DEVICES)
    parser.add_argument("--weights", metavar="DIR", help="official checkpoints (default: synthetic weights)")
    parser.set_defaults(handler=cmd_profile)


def cmd_profile(args) -> int:
    from lpperf.models import weights

    recipes.lookup(args.recipe)  # an unknown name fails here, before anything loads
    if args.probe_inputs and not args.split:
        raise ValueError("--probe-inputs times the networks of the split: add --split")
    if args.no_layers and not (args.split or args.kernels):
        raise ValueError("--no-layers leaves nothing to measure: add --split or --kernels, or drop --no-layers")
    device = resolve_device(args.device)
    loaded = weights.load_networks(args.weights, device)
    engine = recipes.build(args.recipe, loaded.nets, device)
    animator = frame.sample_animator(engine)
    driving = frame.driving_batch(args.batch, offset=frame.PARITY_FRAMES).to(device)
    for _ in range(3):
        animator.step(driving)  # compile, autotune, warm
    print(f"recipe {args.recipe} on {device}, batch {args.batch}, weights: {loaded.description}; "
          f"applied {engine.report()['applied']}")
    if animator.motion_ahead > args.batch:
        print(f"note: the per-layer table times the step with M inside it; the split and the kernel table "
              f"make the frames as animate() does, M over {animator.motion_ahead} frames first")
    if not args.no_layers:
        peak = roofline.measure_peak(device).tflops if device.type == "cuda" else None
        print(format_layers(profile_layers(animator, driving, device), peak, args.top))
    if args.split:
        rule = SPLIT_RULE if device.type == "cuda" else CPU_SPLIT_RULE  # CPU frames are slow: fewer samples
        print()
        print(format_split(frame_split(animator, driving, device, rule=rule, probe_inputs=args.probe_inputs)))
    if args.kernels:
        print("\nkernels of the whole frame as the recipe runs it:")
        print(kernel_table(animator, driving, device))
    return 0
