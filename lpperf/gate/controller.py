"""Same-job A/B: time two versions of lpperf on the same card, interleaved, and decide.

Each side runs in its own long-lived worker (lpperf/gate/worker.py): its own imports, its own
compile, warm-up done once. Loading (CPU only) runs on both sides at once; building, compiling and
autotuning run one side at a time (autotuning that races the other side would time the race); after
that exactly one worker touches the card at a time. A round times every metric in ABBA order
(BAAB every other round): a block of back-to-back calls per side, per-call time from CUDA events
around the block. The round's log-ratio log(head / base) uses the mean of each side's two blocks,
so linear drift cancels. After `rounds` rounds the gate decides (lpperf.gate.stats); while a gated
metric is undecided it adds the same number of rounds again, up to `max_rounds`.

Each recipe's metrics get their own pair of workers (base, head): a compiled recipe's CUDA-graph
trees and the CUDA graphs captured by hand to time the eager recipes' frames and stages must not
share a process (sharing one, a hand-captured graph's replay hit an illegal memory access on an
H200, torch 2.11; in a process of their own the same graphs replayed cleanly).
With several cards (`lanes`), metrics are sharded by recipe: each card gets the workers of its
recipes and compares base and head on that card only; no number is ever compared across cards.

Over 400 lines as one module: the lanes, their rounds and the decisions share the workers' lifetime
(started, prepared, measured and stopped in one try block), which is the controller's one job.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lpperf.measure import STAGES
from lpperf.util import cores
from lpperf.util.exits import Exit
from lpperf.gate import checks, stats
from lpperf.gate.workers import GateError, Worker, run_to_the_end, stop_all, worker_command

DEFAULT_RECIPES = ("fast", "fp32-eager")
DEFAULT_BATCHES = (1, 4)
# Frames per step: no pipeline steps more at once, and a step of 64 official-size fp32 frames already
# needs most of an 80 GB card's memory.
MAX_BATCH = 64
MIN_ROUNDS = 4  # fewer give no interval worth a look
MAX_OUTPUT_FRAMES = 16  # each is 3 MiB per side, and the reference computes it again
MAX_PROCESSES = 4  # worker pairs per recipe: each holds its recipe's engines on the card
MAX_ROUNDS = 1000  # a bound that catches a typo (an extra zero) before hours of measuring


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    recipe: str
    batch: int
    stage: str | None  # None: the whole frame (M + keypoints + S + W + G) as the recipe runs it
    gated: bool

    def request(self) -> dict:
        return {"name": self.name, "recipe": self.recipe, "batch": self.batch, "stage": self.stage}


def default_metrics(recipes: Sequence[str] = DEFAULT_RECIPES, batches: Sequence[int] = DEFAULT_BATCHES,
                    stages: bool = True, gate_stages: bool = False) -> list[Metric]:
    """Whole frames of each recipe at each batch size (gated) and each stage alone at batch 1
    (attributed: named when a frame regresses; gated only with gate_stages)."""
    recipes, batches = list(dict.fromkeys(recipes)), list(dict.fromkeys(batches))  # each measured once
    metrics = [Metric(f"frame {recipe} b{batch}", recipe, batch, None, True)
               for recipe in recipes for batch in batches]
    if stages:
        metrics += [Metric(f"stage {recipe} {stage}", recipe, 1, stage, gate_stages)
                    for recipe in recipes for stage in STAGES]
    return metrics


@dataclasses.dataclass(frozen=True)
class GateConfig:
    threshold: float = 0.03  # a gated metric regressed when head / base is surely above 1 + threshold
    alpha: float = 0.01  # family-wise error per side: false "regressed" and false "same"
    rounds: int = 16  # rounds per look
    max_rounds: int = 48
    frame_block_ms: float = 30.0  # GPU time per block of back-to-back calls
    stage_block_ms: float = 10.0
    undecided_fails: bool = True
    weights: str | None = None  # official checkpoint folder; None: synthetic
    seed: int = 0
    memory: checks.MemoryBudget = checks.MemoryBudget()
    output: checks.OutputBudget = checks.OutputBudget()
    startup: checks.StartupBudget = checks.StartupBudget()
    output_frames: int = 2  # batch-1 frames per recipe compared head against base (0: no output A/B)
    processes: int = 1  # worker pairs per recipe, alternated round by round (lpperf.gate.stats: processes)
    inject_slowdown: float = 0.0  # test-only: the head's frames made this fraction slower (a measured GPU spin)
    inject_memory_mib: float = 0.0  # test-only: the head holds this much more GPU memory
    inject_output_levels: float = 0.0  # test-only: the head's output frames get noise of this many 8-bit levels
    head_first: bool = False  # diagnostic: prepare the head before the base (an order effect then changes sign)
    load_timeout_s: float = 600.0
    prepare_timeout_s: float = 1800.0
    measure_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold is a fraction in (0, 1), e.g. 0.03 for 3 %; got {self.threshold}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if not MIN_ROUNDS <= self.rounds <= self.max_rounds <= MAX_ROUNDS:
            raise ValueError(f"need {MIN_ROUNDS} <= rounds <= max_rounds <= {MAX_ROUNDS}, got rounds {self.rounds} "
                             f"and max_rounds {self.max_rounds}")
        if self.frame_block_ms <= 0 or self.stage_block_ms <= 0:
            raise ValueError("block times must be > 0 ms")
        if not 0 <= self.inject_slowdown < 1:
            raise ValueError(f"inject_slowdown is a fraction in [0, 1), got {self.inject_slowdown}")
        if not 0 <= self.output_frames <= MAX_OUTPUT_FRAMES:
            raise ValueError(f"output_frames must be 0 to {MAX_OUTPUT_FRAMES}, got {self.output_frames}")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(f"processes (worker pairs per recipe) must be 1 to {MAX_PROCESSES}, got {self.processes}")
        if self.inject_memory_mib < 0 or not 0 <= self.inject_output_levels <= 255:
            raise ValueError("inject_memory_mib must be >= 0 and inject_output_levels in [0, 255]")

    @property
    def looks(self) -> int:
        return math.ceil(self.max_rounds / self.rounds)


@dataclasses.dataclass(frozen=True)
class Side:
    """One version of the code: a folder holding the lpperf package, and how to name it."""

    label: str
    tree: Path


@dataclasses.dataclass
class MetricResult:
    metric: Metric
    base_ms: list[float]
    head_ms: list[float]
    calls_per_block: int
    estimate: stats.Estimate | None = None
    verdict: stats.Verdict | None = None
    pair_of_round: list[int] = dataclasses.field(default_factory=list)  # which worker pair ran each round

    @property
    def log_ratios(self) -> np.ndarray:
        return stats.log_ratios(self.base_ms, self.head_ms)

    def decide(self, one_sided_alpha: float, threshold: float) -> None:
        self.estimate = stats.estimate_over_processes(self.log_ratios, self.pair_of_round, one_sided_alpha)
        self.verdict = self.estimate.verdict(threshold)


@dataclasses.dataclass
class BesideTime:
    """What the gate judges besides time (lpperf.gate.checks)."""

    memory: list[checks.MemoryComparison] = dataclasses.field(default_factory=list)
    outputs: list[checks.OutputComparison] = dataclasses.field(default_factory=list)
    startup: list[checks.StartupComparison] = dataclasses.field(default_factory=list)

    @property
    def failing(self) -> list[str]:
        """The kinds of check that failed: "memory", "output", "start-up"."""
        kinds = (("memory", self.memory), ("output", self.outputs), ("start-up", self.startup))
        return [kind for kind, items in kinds if any(item.judgment.fails for item in items)]


@dataclasses.dataclass
class GateResult:
    base: Side
    head: Side
    config: GateConfig
    metrics: list[MetricResult]
    one_sided_alpha: float
    clocks: list[dict]  # one reading per round and card: {"lane", "round", "sm_mhz", "reasons"}
    setup: dict  # per card: load/compile seconds, weights, lpperf paths
    wall_s: float
    beside: BesideTime = dataclasses.field(default_factory=BesideTime)

    @property
    def gated(self) -> list[MetricResult]:
        return [result for result in self.metrics if result.metric.gated]

    @property
    def regressed(self) -> list[MetricResult]:
        return [result for result in self.gated if result.verdict is stats.Verdict.REGRESSED]

    @property
    def undecided(self) -> list[MetricResult]:
        return [result for result in self.gated if result.verdict is stats.Verdict.UNDECIDED]

    @property
    def exit_code(self) -> Exit:
        if self.regressed or self.beside.failing:
            return Exit.REGRESSED
        if self.undecided and self.config.undecided_fails:
            return Exit.UNDECIDED
        return Exit.PASS


# (side, role, card, log folder, name): the name is the recipe, with the pair's number where there are several
WorkerFactory = Callable[[Side, str, str, Path, str], Worker]


def start_worker(side: Side, role: str, gpu: str | None, log_dir: Path, recipe: str) -> Worker:
    """A real worker process for `side`'s `recipe` metrics on card `gpu` (None: the CPU)."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(side.tree)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    device = "cpu"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
        device = "cuda:0"
    suffix = "cpu" if gpu is None else f"gpu{gpu}"
    return Worker(f"{role} {recipe} ({side.label})", worker_command(side.tree, device), env,
                  log_dir / f"worker-{role}-{recipe}-{suffix}.log")


class Lane:
    """One card (or the CPU), the metrics measured on it, and per recipe one or more pairs of a base and a
    head worker."""

    def __init__(self, gpu: str | None, metrics: list[Metric]):
        self.gpu = gpu
        self.metrics = metrics
        self.pairs: dict[str, list[dict[str, Worker]]] = {}  # recipe -> [{"base": worker, "head": worker}, ...]
        self.results: dict[str, MetricResult] = {}
        self.clocks: list[dict] = []
        self.setup: dict = {"card": "cpu" if gpu is None else f"gpu {gpu}"}

    @property
    def recipes(self) -> list[str]:
        return list(dict.fromkeys(metric.recipe for metric in self.metrics))

    def workers(self) -> list[Worker]:
        return [worker for pairs in self.pairs.values() for pair in pairs for worker in pair.values()]

    def prepare(self, config: GateConfig, outputs: Path) -> None:
        roles = ("head", "base") if config.head_first else ("base", "head")
        for role in roles:
            self.setup[role] = {key: {} for key in PREPARED}
        for recipe, pairs in self.pairs.items():
            requests = [metric.request() for metric in self.metrics if metric.recipe == recipe]
            for number, pair in enumerate(pairs):
                for role in roles:
                    head = role == "head"
                    # Memory, output and start-up are judged on the first pair; the others only time.
                    request = {"op": "prepare", "metrics": requests, "inject_slowdown": config.inject_slowdown * head,
                               "inject_memory_mib": config.inject_memory_mib * head,
                               "inject_output_levels": config.inject_output_levels * head,
                               "outputs": {"frames": config.output_frames, "folder": str(outputs / role)}
                               if config.output_frames and number == 0 else None,
                               "startup": number == 0}
                    answer = pair[role].request(request, config.prepare_timeout_s)
                    if number == 0:
                        for key, merged in self.setup[role].items():
                            merged.update(answer.get(key) or {})
        for metric in self.metrics:
            # The block size comes from the base's time per call, so both sides run the same calls.
            warm = checked_ms(self.setup["base"]["warm_ms"].get(metric.name), self.pairs[metric.recipe][0]["base"],
                              "prepare", metric.name)
            target = config.stage_block_ms if metric.stage else config.frame_block_ms
            calls = max(1, math.ceil(target / max(warm, 1e-3)))
            self.results[metric.name] = MetricResult(metric, [], [], calls)

    def run_rounds(self, count: int, config: GateConfig, stop: threading.Event) -> None:
        for _ in range(count):
            if stop.is_set():
                return
            number = len(next(iter(self.results.values())).base_ms)
            order = block_order(number, config.processes)
            first = True
            for result in self.results.values():
                times = {"base": [], "head": []}
                pairs = self.pairs[result.metric.recipe]
                pair = number % len(pairs)
                for role in order:
                    worker = pairs[pair][role]
                    answer = worker.request({"op": "measure", "metric": result.metric.name,
                                             "calls": result.calls_per_block, "clock": first},
                                            config.measure_timeout_s)
                    if first and answer.get("clock"):
                        self.clocks.append({"card": self.setup["card"], "round": number, **answer["clock"]})
                    first = False
                    times[role].append(checked_ms(answer.get("ms"), worker, "measure", result.metric.name))
                result.base_ms.append(float(np.mean(times["base"])))
                result.head_ms.append(float(np.mean(times["head"])))
                result.pair_of_round.append(pair)


def block_order(number: int, processes: int) -> tuple[str, ...]:
    """The sides' blocks in round `number`: ABBA or BAAB, so that a drift linear over the round cancels.
    Pairs take rounds in turn (round number % processes), and each pair alternates the two orders over
    its own rounds: alternated over all rounds, a pair of an even count would always run one side's two
    blocks back to back, and any effect of that order would read as an offset of that pair."""
    return ("base", "head", "head", "base") if (number // processes) % 2 == 0 else ("head", "base", "base", "head")


# What a prepare answer holds per metric or recipe, merged over a side's workers in Lane.setup[role]
PREPARED = ("warm_ms", "compile_s", "injected_ms", "timed_as", "memory", "startup", "outputs")


def judge_beside_time(lanes: Sequence[Lane], config: GateConfig) -> BesideTime:
    """Memory, output and start-up of each lane's recipes, head against base (lpperf.gate.checks)."""
    beside = BesideTime()
    for lane in lanes:
        base, head = lane.setup["base"], lane.setup["head"]
        beside.memory += checks.compare_memory(base["memory"], head["memory"], config.memory, ("base", "head"))
        for recipe in lane.recipes:
            if recipe not in base["startup"] or recipe not in head["startup"]:
                raise GateError(f"{recipe}: a side did not report its start-up time")
            beside.startup.append(checks.compare_startup(recipe, base["startup"][recipe], head["startup"][recipe],
                                                         config.startup))
            if config.output_frames:
                files = {role: lane.setup[role]["outputs"].get(recipe) for role in ("base", "head")}
                missing = [role for role, path in files.items() if not path]
                if missing:
                    raise GateError(f"{recipe}: the {' and '.join(missing)} side wrote no output frames")
                beside.outputs.append(checks.compare_outputs(
                    recipe, checks.load_outputs(Path(files["base"]), "base"),
                    checks.load_outputs(Path(files["head"]), "head"), config.output))
    return beside


def checked_ms(value, worker: Worker, operation: str, metric: str) -> float:
    """A time a worker answered: a finite number of ms > 0, else no time can be compared."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GateError(f"{worker.label}: answered {operation!r} of {metric} with {value!r} ms, not a time > 0; "
                        f"its log: {worker.log_path}")
    return float(value)


def shard(metrics: Sequence[Metric], lanes: int) -> list[list[Metric]]:
    """Metrics split by recipe over `lanes` cards (a recipe's engines are built on one card only)."""
    recipes = list(dict.fromkeys(metric.recipe for metric in metrics))
    groups: list[list[Metric]] = [[] for _ in range(min(lanes, len(recipes)))]
    for index, recipe in enumerate(recipes):
        groups[index % len(groups)] += [metric for metric in metrics if metric.recipe == recipe]
    return groups


def run_gate(base: Side, head: Side, metrics: Sequence[Metric], config: GateConfig, gpus: Sequence[str | None],
             log_dir: Path, progress: Callable[[str], None] = lambda message: None,
             start: WorkerFactory = start_worker) -> GateResult:
    """Measure `metrics` for both sides on the cards `gpus` ([None] for the CPU) and decide."""
    if not metrics:
        raise ValueError("no metrics to compare")
    gated = [metric for metric in metrics if metric.gated]
    if not gated:
        raise ValueError("no gated metric: nothing could pass or fail")
    began = time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    lanes: list[Lane] = []
    stop = threading.Event()
    groups = shard(metrics, len(gpus))
    # Lanes measure at the same time: each keeps its workers on its own CPU cores, so one lane's host
    # work cannot slow another's launches.
    shares = (cores.core_shares(len(groups)) if len(groups) > 1 else None) or [None] * len(groups)
    try:
        for gpu, lane_metrics, lane_cores in zip(gpus, groups, shares):
            lane = Lane(gpu, lane_metrics)
            lanes.append(lane)
            for recipe in lane.recipes:
                lane.pairs[recipe] = []
                for number in range(config.processes):
                    pair = {}  # registered first: a worker that fails to start leaves none behind
                    lane.pairs[recipe].append(pair)
                    name = recipe if config.processes == 1 else f"{recipe}-{number + 1}"
                    for role, side in (("base", base), ("head", head)):
                        pair[role] = start(side, role, gpu, log_dir, name)
            for worker in lane.workers():
                cores.pin(worker.pid, lane_cores)
            lane.setup["cores"] = cores.describe_cores(lane_cores)
        progress(f"loading both sides on {sum(len(lane.workers()) // 2 for lane in lanes)} worker pair(s), "
                 f"{config.processes} per recipe")
        loads = [(worker, lane, load_threads(share, len(lane.workers()))) for lane, share in zip(lanes, shares)
                 for worker in lane.workers()]
        _in_parallel([lambda item=item: _load(*item, config) for item in loads], stop)
        outputs = log_dir / "outputs"  # each side's frames, compared and removed before the rounds
        try:
            for lane in lanes:
                progress(f"{lane.setup['card']}: building, compiling and warming up, one side at a time")
                lane.prepare(config, outputs)
            beside = judge_beside_time(lanes, config)
        finally:
            shutil.rmtree(outputs, ignore_errors=True)
            for lane in lanes:  # the files are gone; gate.json keeps what was compared, in `beside`
                for role in ("base", "head"):
                    (lane.setup.get(role) or {}).pop("outputs", None)
        one_sided = stats.per_test_alpha(config.alpha, len(gated), config.looks)
        done = 0
        while True:
            step = min(config.rounds, config.max_rounds - done)
            progress(f"rounds {done + 1}-{done + step} (ABBA, {len(metrics)} metrics)")
            _in_parallel([lambda lane=lane: lane.run_rounds(step, config, stop) for lane in lanes], stop)
            done += step
            results = [result for lane in lanes for result in lane.results.values()]
            for result in results:
                result.decide(one_sided, config.threshold)
            pending = [r for r in results if r.metric.gated and r.verdict is stats.Verdict.UNDECIDED]
            regressed = [r for r in results if r.metric.gated and r.verdict is stats.Verdict.REGRESSED]
            if regressed or not pending or done >= config.max_rounds:
                break
            progress(f"undecided after {done} rounds: {', '.join(r.metric.name for r in pending)}")
    except KeyboardInterrupt as interruption:
        stop.set()
        raise GateError(f"interrupted ({str(interruption) or 'Ctrl-C'}); the workers were stopped and no verdict "
                        "was written") from None
    finally:
        stop.set()
        run_to_the_end(lambda: stop_all([worker for lane in lanes for worker in lane.workers()]))
    order = {metric.name: index for index, metric in enumerate(metrics)}
    return GateResult(base=base, head=head, config=config, one_sided_alpha=one_sided,
                      metrics=sorted(results, key=lambda r: order[r.metric.name]),
                      clocks=[reading for lane in lanes for reading in lane.clocks],
                      setup={lane.setup["card"]: lane.setup for lane in lanes},
                      wall_s=time.perf_counter() - began, beside=beside)


def load_threads(share: Sequence[int] | None, workers: int) -> int:
    """CPU threads per worker while a lane's `workers` load at once: the lane's cores (its share, or all
    of this process's when it has the host to itself) split between them, at least one each."""
    return max(1, len(share or cores.available()) // max(1, workers))


def _load(worker: Worker, lane: Lane, threads: int, config: GateConfig) -> None:
    answer = worker.request({"op": "load", "weights": config.weights, "seed": config.seed, "threads": threads},
                            config.load_timeout_s)
    role = next(role for pairs in lane.pairs.values() for pair in pairs for role, member in pair.items()
                if member is worker)
    # Every worker of a side imports the same tree: one record per side (the slowest load kept).
    record = {key: answer.get(key) for key in ("lpperf", "torch", "weights", "load_s")}
    previous = lane.setup.get(f"{role}_load")
    if previous is None or (record["load_s"] or 0) > (previous["load_s"] or 0):
        lane.setup[f"{role}_load"] = record


def _in_parallel(tasks: list[Callable[[], None]], stop: threading.Event) -> None:
    """Run the tasks in threads; the first failure stops the rest and is raised here."""
    errors: list[BaseException] = []

    def run(task):
        try:
            task()
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread below
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=run, args=(task,), daemon=True) for task in tasks]
    for thread in threads:
        thread.start()
    # Short waits keep Ctrl-C responsive; on the first failure the caller stops every worker, which
    # ends the other threads' requests too.
    while any(thread.is_alive() for thread in threads) and not errors:
        time.sleep(0.05)
    if errors:
        raise errors[0]
