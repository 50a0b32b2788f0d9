"""lpperf's pytest plugin: options, fixtures, GPU skipping, a synchronising benchmark clock, per-card history.

Registered with a `pytest11` entry point (as pytest-benchmark is), so it loads before the command line
is parsed; the repository's conftest.py loads it too when lpperf is not installed. In other projects
it stays out of the way: the per-card history, the report header and the card detection switch on
only where `lpperf_history` is set (this repository's pytest.ini sets it) or a test asks for the GPU.
Everywhere it adds its options, the `gpu` marker and the skipping of GPU tests where there is no GPU.
torch, pytest-benchmark and lpperf's other modules are imported inside hooks and fixtures, never at
import time (only lpperf.measure.tolerances, which needs no torch, for the parity defaults).
docs/GPU_SUITE.md explains how the pieces fit together.

Over 400 lines as one module: pytest loads a plugin by its module name (the pytest11 entry point), and
its options, hooks and fixtures share one settings object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lpperf.measure.tolerances import Tolerance

SYNTHETIC_SEED = 0
# pytest-benchmark's default --benchmark-storage; any other value was chosen by the user and is kept.
_PYTEST_BENCHMARK_DEFAULT_STORAGE = "file://./.benchmarks"
# The suite's parity defaults are the fp16 tolerance, the precision of the gated recipes.
_FP16 = Tolerance.for_precision("fp16")


@dataclass(frozen=True)
class Limit:
    """One pass/fail limit, parsed once from its option: what it bounds, from which side, and where it was
    set. A test hands it the measured value; the comparison and the message are written here only."""

    what: str  # e.g. "PSNR against the fp32 reference"
    bound: float
    unit: str
    at_least: bool  # the value must be >= bound (else <= bound)
    origin: str  # where the bound came from, for the message

    def holds(self, value: float) -> bool:
        """Whether `value` is within the limit (NaN never is)."""
        return value >= self.bound if self.at_least else value <= self.bound

    def check(self, value: float, subject: str, detail: str = "") -> None:
        """Fail the calling test, in one message naming `subject`, where `value` is outside the limit."""
        if not self.holds(value):
            side = "below the least" if self.at_least else "above the most"
            raise AssertionError(f"{subject}: {self.what} {value:g} {self.unit}, {side} allowed {self.bound:g} "
                                 f"{self.unit} ({self.origin})" + (f"; {detail}" if detail else ""))


@dataclass(frozen=True)
class LpperfThresholds:
    """Pass/fail limits of the GPU suite (from pytest.ini, overridden on the command line)."""

    min_speedup: Limit  # optimized recipe over the strongest peer measure, all measured in the same session
    min_speedup_ahead: Limit  # the motion-ahead recipe over the strongest peer given the same frames ahead
    memory_budget_mib: Limit  # NVML-measured GPU memory of the test process
    min_psnr_db: Limit  # optimized output against the fp32 reference
    max_level_diff: Limit  # largest per-pixel difference, in 8-bit levels


@dataclass(frozen=True)
class CardInfo:
    """The card under test: the current CUDA device, or the CPU's model name where there is none."""

    name: str
    cuda_available: bool
    no_cuda_reason: str  # why GPU tests skip; empty when there is a GPU
    driver: str | None
    cuda: str | None
    torch: str | None


@dataclass(frozen=True)
class _Settings:
    weights_dir: Path | None
    history_dir: Path | None  # None: lpperf leaves pytest-benchmark's storage alone
    thresholds: LpperfThresholds
    inject_slowdown: float  # test-only: extra GPU work after each gated frame, as a fraction of it
    gate_base: str | None  # git ref (or folder) for tests/gpu/test_same_job_gate.py's A/B


def _optional_dir(text: str) -> Path | None:
    """The official checkpoint folder, its five files present (nothing is read here)."""
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError(f"{text!r} is not a directory; expected the folder holding the official .pth checkpoints")
    from lpperf.models.weights import official_files

    try:
        official_files(path)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    return path


def _optional_folder(text: str) -> Path | None:
    """A folder that may not exist yet (it is made on first save), but is not a file."""
    if not text:
        return None
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{text!r} is a file, not a history folder; give a folder (made on the first save)")
    return path


def _number(kind: type, accepts: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """A parser of `kind` (int or float) whose value must satisfy `accepts`; errors say `expected`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"expected {expected}, got {text!r}") from None
        if not accepts(value):
            raise ValueError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_float = _number(float, lambda value: 0 < value < float("inf"), "a number > 0 (finite)")
_positive_int = _number(int, lambda value: value > 0, "a whole number > 0")
_fraction = _number(float, lambda value: 0 <= value < 1, "a fraction in [0, 1), e.g. 0.1 for 10 %")
_level_diff = _number(int, lambda value: 0 <= value <= 255, "a whole number of 8-bit levels in [0, 255]")


def _optional_text(text: str) -> str | None:
    return text or None


@dataclass(frozen=True)
class _OptionSpec:
    """One setting: ``--lpperf-<name>`` on the command line, ``lpperf_<name>`` in pytest.ini."""

    name: str
    metavar: str
    parse: Callable[[str], object]
    help: str
    default: str = ""  # what an unset flag and ini key mean; "" is "off" for the folders
    field: str = ""  # the _Settings or LpperfThresholds field it sets (default: the name, "-" as "_")
    limit: tuple[str, str, bool] | None = None  # a threshold: (what it bounds, unit, at least?)
    path: bool = False  # a folder: relative in the ini file means relative to the ini file's folder

    @property
    def key(self) -> str:
        return self.field or self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--lpperf-{self.name}"

    @property
    def ini(self) -> str:
        return "lpperf_" + self.name.replace("-", "_")


# The single definition of every option and of its default: pytest_addoption generates the flag and the
# ini key from it, _resolve_settings reads them (command line first, then ini, then the default here).
# The thresholds' provenance (card, date, measured values) is in docs/GPU_SUITE.md.
_OPTIONS = (
    _OptionSpec(
        "weights",
        "DIR",
        _optional_dir,
        "folder of official LivePortrait checkpoints; when set, every test runs on them instead of synthetic weights",
        field="weights_dir",
        path=True,
    ),
    _OptionSpec(
        "history",
        "DIR",
        _optional_folder,
        "root of the per-card benchmark history: pytest-benchmark stores runs in DIR/<card-slug> "
        "unless --benchmark-storage is given (unset: pytest-benchmark's own storage, no lpperf header)",
        field="history_dir",
        path=True,
    ),
    _OptionSpec("min-speedup", "X", _positive_float, "least speedup of the optimized recipe over the strongest peer "
                "measure of the session: .half() + torch.compile reduce-overhead per network, the faster of the whole "
                "step and the networks M + W + G timed alone and summed", "1.35",
                limit=("speedup over the strongest peer", "x", True)),
    _OptionSpec("min-speedup-ahead", "X", _positive_float, "least speedup of the motion-ahead recipe (M batched over "
                "16 driving frames known ahead) over the strongest peer measure given the same frames: the same "
                "compiled modules with M batched likewise, or any faster peer", "1.55",
                limit=("speedup over the strongest peer given the same frames ahead", "x", True)),
    _OptionSpec("memory-budget-mib", "MIB", _positive_int, "most GPU memory (NVML, this process) a test may use",
                "4096", limit=("GPU memory (NVML, this process)", "MiB", False)),
    _OptionSpec("min-psnr", "DB", _positive_float, "least PSNR of optimized output against the fp32 reference",
                f"{_FP16.min_psnr_db:g}", field="min_psnr_db", limit=("PSNR against the fp32 reference", "dB", True)),
    _OptionSpec("max-level-diff", "LEVELS", _level_diff, "largest per-pixel difference in 8-bit levels",
                str(_FP16.max_level_diff), limit=("largest difference from the fp32 reference", "8-bit levels",
                                                  False)),
    _OptionSpec("inject-slowdown", "FRACTION", _fraction, "TEST ONLY: the gated frame benchmarks spin the GPU for "
                "this fraction of each frame after it (checks that the history gate catches a known slowdown)", "0"),
    _OptionSpec("gate-base", "REF", _optional_text, "run tests/gpu/test_same_job_gate.py: the working tree against this "
                "git ref (or lpperf folder) with lpperf gate, in this job"),
)

_SETTINGS = pytest.StashKey[_Settings]()
_CARD = pytest.StashKey[CardInfo]()
_SESSION = pytest.StashKey[pytest.Session]()
_INFO = pytest.StashKey[dict]()
_COMPARED = pytest.StashKey[int]()  # benchmarks of this run that pytest-benchmark held against the baseline


def _detect_card() -> CardInfo:
    """The current CUDA device. Kept small and private so lpperf.measure.environment can replace it."""
    try:
        import torch
    except (ImportError, OSError) as error:
        return CardInfo("cpu", False, f"no CUDA GPU: torch is not importable ({error})", None, None, None)
    from lpperf.measure.environment import cpu_model, nvml_info

    if not torch.cuda.is_available():
        reason = f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__})"
        # The CPU model, as `lpperf bench` names a CPU run: both keep their history in one folder.
        return CardInfo(cpu_model(), False, reason, None, torch.version.cuda, torch.__version__)

    name = torch.cuda.get_device_name(torch.cuda.current_device())
    return CardInfo(name, True, "", nvml_info()["driver_version"], torch.version.cuda, torch.__version__)


def _resolve_settings(config: pytest.Config) -> _Settings:
    settings, limits = {}, {}
    for spec in _OPTIONS:
        from_command_line = config.getoption(spec.ini)
        if from_command_line is not None:
            text, origin = from_command_line.strip(), f"{spec.flag} on the command line"
            if not text and spec.default:  # an empty value is no setting: it must not loosen the ini's
                raise pytest.UsageError(f"{spec.flag} was given an empty value; give {spec.metavar} or leave the "
                                        f"flag out (then {spec.ini} in the ini file, else {spec.default}, applies).")
        else:
            text, origin = str(config.getini(spec.ini)).strip(), f"{spec.ini} in {config.inipath or 'the ini file'}"
            if text and spec.path and config.inipath is not None and not Path(text).expanduser().is_absolute():
                text = str(config.inipath.parent / text)  # as pytest's own path settings: not the current folder
        if not text:
            text, origin = spec.default, f"the default of {spec.flag}"
        try:
            value = spec.parse(text)
        except ValueError as error:
            raise pytest.UsageError(f"{origin}: {error}.") from None
        if spec.limit is None:
            settings[spec.key] = value
        else:
            what, unit, at_least = spec.limit
            limits[spec.key] = Limit(what, value, unit, at_least, origin)
    return _Settings(thresholds=LpperfThresholds(**limits), **settings)


def _weights_label(settings: _Settings) -> str:
    return "official" if settings.weights_dir is not None else f"synthetic(seed={SYNTHETIC_SEED})"


def _file_storage_dir(storage: str) -> Path | None:
    """The folder of a pytest-benchmark file storage URI (a bare path counts); None for other storages."""
    if storage.startswith("file://"):
        return Path(storage[len("file://") :])
    return None if "://" in storage else Path(storage)


def _uses_default_timer(config: pytest.Config) -> bool:
    timer = getattr(config.option, "benchmark_timer", None)
    if timer is None:
        return False
    from pytest_benchmark.timers import default_timer
    from pytest_benchmark.utils import NameWrapper

    return timer == str(NameWrapper(default_timer))


def _check_baseline(config: pytest.Config, storage_dir: Path, card: CardInfo) -> None:
    """Fail early, in one paragraph, where --benchmark-compare has no usable baseline.

    pytest-benchmark itself skips an unreadable file with a warning (falling back to an older run,
    or to none) and only complains about a missing baseline after the whole suite has run.
    """
    from pytest_benchmark.utils import get_machine_id

    from lpperf.reports import history

    option = config.option
    if not storage_dir.resolve().is_relative_to(Path.cwd().resolve()):
        raise pytest.UsageError(
            f"The benchmark history folder {storage_dir} is outside the current directory {Path.cwd()}; "
            "pytest-benchmark reports compared runs relative to the current directory and fails on one outside it. "
            "Run pytest from a folder that contains the history, or point --lpperf-history inside it."
        )
    machine_id = get_machine_id()
    machine_folder = storage_dir / machine_id
    try:
        files = history.baseline_files(storage_dir, machine_id, option.benchmark_compare)
    except history.HistoryError as error:
        raise pytest.UsageError(str(error)) from None
    if not files:
        selection = "" if option.benchmark_compare is True else f" matching {option.benchmark_compare!r}"
        message = (
            f"No benchmark baseline for card {card.name!r}: {machine_folder} holds no saved run{selection}. "
            "Run `pytest -m gpu --benchmark-autosave` on main on this card first (the gpu workflow does it on "
            "every push to main), or restore that folder from main's history."
        )
        if not card.cuda_available:
            message += (f" This machine has no CUDA GPU ({card.no_cuda_reason}): its GPU benchmarks skip and save "
                        "nothing, so compare them on the card whose history you hold.")
        if option.benchmark_compare_fail:
            raise pytest.UsageError(message)
        config.issue_config_time_warning(pytest.PytestConfigWarning(message + " Running without a comparison."), 2)
        return
    needed = _compared_stats(option)
    for path in files:
        try:
            run = history.read_run(path)
        except history.HistoryError as error:
            raise pytest.UsageError(f"Benchmark baseline unusable for --benchmark-compare: {error}") from None
        if run.format is not history.RunFormat.PYTEST_BENCHMARK:
            raise pytest.UsageError(
                f"Benchmark baseline unusable for --benchmark-compare: {path} is a {run.format.value} run, not a "
                "pytest-benchmark run; pytest-benchmark would skip it and compare against an older file. Move it "
                "out of the history's run folder.")
        missing = history.missing_stats(path, needed)
        if missing:
            raise pytest.UsageError(
                f"Benchmark baseline unusable for --benchmark-compare: {path}: {missing}, which pytest-benchmark "
                "shows or gates on; re-save the run with pytest-benchmark or restore it from main's history.")


def _compared_stats(option) -> list[str]:
    """The statistics pytest-benchmark reads from a baseline: its table's columns and the gated fields."""
    from pytest_benchmark.utils import DEFAULT_COLUMNS

    columns = list(getattr(option, "benchmark_columns", None) or DEFAULT_COLUMNS)
    gated = [check.field for check in (getattr(option, "benchmark_compare_fail", None) or ())]
    return list(dict.fromkeys(columns + gated))


def _check_benchmarks_run(config: pytest.Config) -> None:
    """A gated run must time its benchmarks: pytest-benchmark turns them off under xdist and when told
    to, and a gate over no timings would pass."""
    option = config.option
    if config.getoption("dist", "no") != "no":
        raise pytest.UsageError(
            "--benchmark-compare-fail gates benchmark timings, and pytest-benchmark turns benchmarks off under "
            "xdist (-n): run the gated suite without -n (or with -n 0).")
    # pytest-benchmark's own precedence: --benchmark-enable overrides disable, --benchmark-only overrides skip
    for flag, off in (("--benchmark-disable", option.benchmark_disable and not option.benchmark_enable),
                      ("--benchmark-skip", option.benchmark_skip and not option.benchmark_only)):
        if off:
            raise pytest.UsageError(f"--benchmark-compare-fail gates benchmark timings, and {flag} leaves none to "
                                    f"gate; drop one of them.")


def _prepare_benchmark_history(config: pytest.Config, settings: _Settings, card: CardInfo) -> None:
    from lpperf.reports import history

    option = config.option
    if option.benchmark_storage == _PYTEST_BENCHMARK_DEFAULT_STORAGE:
        option.benchmark_storage = f"file://{settings.history_dir / history.card_slug(card.name)}"
    if option.benchmark_compare_fail and not option.benchmark_compare:
        raise pytest.UsageError(
            "--benchmark-compare-fail needs --benchmark-compare (which saved run to compare against)."
        )
    if option.benchmark_compare_fail:
        _check_benchmarks_run(config)
    storage_dir = _file_storage_dir(option.benchmark_storage)
    if option.benchmark_compare and storage_dir is not None:
        _check_baseline(config, storage_dir, card)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lpperf", "lpperf GPU suite (each flag overrides its lpperf_* ini key)")
    for spec in _OPTIONS:
        default = f"default {spec.default}" if spec.default else "unset by default"
        group.addoption(spec.flag, dest=spec.ini, metavar=spec.metavar, default=None,
                        help=f"{spec.help} [ini: {spec.ini}; {default}]")
        parser.addini(spec.ini, help=f"{spec.help} (command line: {spec.flag}; {default})")


def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark's own pytest_configure (trylast), which opens the storage.
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped with the reason where there is none")
    settings = _resolve_settings(config)
    config.stash[_SETTINGS] = settings
    if settings.history_dir is not None and hasattr(config.option, "benchmark_storage"):
        _prepare_benchmark_history(config, settings, _card(config))


def _enabled(config: pytest.Config) -> bool:
    """This run is an lpperf suite run (lpperf_history set), not some other project's."""
    return config.stash[_SETTINGS].history_dir is not None


def _card(config: pytest.Config) -> CardInfo:
    """The card under test, detected on first use (importing torch only where it is needed)."""
    if _CARD not in config.stash:
        config.stash[_CARD] = _detect_card()
    return config.stash[_CARD]


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION] = session


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _enabled(config):
        return []
    card, settings = _card(config), config.stash[_SETTINGS]
    lines = [
        f"lpperf: card {card.name} (driver {card.driver}, CUDA {card.cuda}, torch {card.torch}); "
        f"weights {_weights_label(settings)}"
    ]
    if hasattr(config.option, "benchmark_storage"):
        if not _uses_default_timer(config):
            clock = f"{config.option.benchmark_timer} (--benchmark-timer)"
        elif card.cuda_available:
            clock = "synchronising perf_counter (torch.cuda.synchronize before each reading)"
        else:
            clock = "perf_counter (no CUDA device: nothing to synchronise)"
        lines.append(f"lpperf: benchmark history {config.option.benchmark_storage}; benchmark clock {clock}")
    return lines


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so tests asking for cuda_device count as gpu tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    synchronise = _enabled(config) and _uses_default_timer(config)
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "cuda_device" in fixtures and item.get_closest_marker("gpu") is None:
            item.add_marker(pytest.mark.gpu)
        if item.get_closest_marker("gpu") is not None and not _card(config).cuda_available:
            item.add_marker(pytest.mark.skip(reason=_card(config).no_cuda_reason))
        if synchronise and "benchmark" in fixtures:
            # pytest-benchmark's documented per-test `timer` setting; a timer the test chose itself wins.
            marker = item.get_closest_marker("benchmark")
            settings = dict(marker.kwargs) if marker else {}
            settings.setdefault("timer", _synchronized_clock())
            item.add_marker(pytest.mark.benchmark(**settings), append=False)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    if not _enabled(config):
        return
    card = _card(config)
    machine_info.update(
        card=card.name,
        driver=card.driver,
        cuda=card.cuda,
        torch=card.torch,
        weights=_weights_label(config.stash[_SETTINGS]),
    )


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark) -> None:
    if not _enabled(config):
        return
    saved = compared_benchmark.get("machine_info", {})
    for key in ("card", "weights"):
        if saved.get(key) is None and machine_info.get(key) is not None:
            raise pytest.UsageError(
                f"The baseline in {benchmarksession.storage} records no {key} (it was saved without lpperf's "
                "plugin, whose runs name their card and weights), so it cannot be matched to this run's "
                f"{machine_info.get(key)!r}. Save the baseline with this suite (`pytest -m gpu --benchmark-autosave` "
                "on main) or restore it from main's history."
            )
        if saved.get(key) != machine_info.get(key):
            raise pytest.UsageError(
                f"The baseline in {benchmarksession.storage} was measured with {key} {saved.get(key)!r}, this run "
                f"has {key} {machine_info.get(key)!r}; such timings are not comparable. Compare against the same "
                "card and weights: drop --benchmark-storage to use this card's own history folder, and pass "
                "--lpperf-weights exactly when the baseline did."
            )


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_benchmark_group_stats(config: pytest.Config, benchmarks: list, group_by: str):
    # pytest-benchmark hands its table the run's benchmarks and, beside each, the baseline's of the same name
    # (those with a path): how many were compared, for the gate's check that it compared anything.
    config.stash[_COMPARED] = sum(bench.get("path") is not None for bench in benchmarks)
    return (yield)


def _nothing_compared(config: pytest.Config) -> bool:
    """A gated run (--benchmark-compare-fail) in which no benchmark met its namesake in the baseline: a
    renamed suite, a baseline of other tests, or benchmarks that all skipped. Passing it would be a verdict
    without a measurement."""
    return bool(getattr(config.option, "benchmark_compare_fail", None)) and not config.stash.get(_COMPARED, 0)


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config):
    # pytest-benchmark signals a failed --benchmark-compare-fail gate by raising out of pytest
    # (a traceback, exit 1). Turn that into an ordinary failed run with one clear line.
    if not _enabled(config):
        return (yield)
    info = config.stash.get(_INFO, {})
    if info:
        terminalreporter.section("lpperf informational results (not gated)")
        for name, text in info.items():
            terminalreporter.write_line(f"{name}: {text}")
    try:
        result = yield
    except Exception as error:
        from pytest_benchmark.session import PerformanceRegression

        if not isinstance(error, PerformanceRegression):
            raise
        config.stash[_SESSION].exitstatus = pytest.ExitCode.TESTS_FAILED
        terminalreporter.write_line(
            "lpperf gate FAILED: benchmarks regressed beyond --benchmark-compare-fail against the baseline "
            f"in {config.option.benchmark_storage} (see 'Performance has regressed' above).",
            red=True,
            bold=True,
        )
        return None
    session = config.stash[_SESSION]
    if _nothing_compared(config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        terminalreporter.write_line(
            "lpperf gate: no verdict: no benchmark of this run has its namesake in the baseline in "
            f"{config.option.benchmark_storage} (renamed tests, a baseline of other tests, or every benchmark "
            "skipped), so nothing was compared; compare against a run of the same benchmarks.",
            red=True,
            bold=True,
        )
    return result


@pytest.fixture(scope="session")
def lpperf_thresholds(pytestconfig: pytest.Config) -> LpperfThresholds:
    return pytestconfig.stash[_SETTINGS].thresholds


@pytest.fixture(scope="session")
def lpperf_settings(pytestconfig: pytest.Config) -> _Settings:
    return pytestconfig.stash[_SETTINGS]


@pytest.fixture(scope="session")
def lpperf_info(pytestconfig: pytest.Config) -> dict:
    """Informational results (name -> text): printed in the terminal summary, never compared by a gate.
    For timings too noisy across processes to gate on (eager, launch-bound work)."""
    return pytestconfig.stash.setdefault(_INFO, {})


@pytest.fixture(scope="session")
def lpperf_weights_dir(pytestconfig: pytest.Config) -> Path | None:
    """The official checkpoint folder given with --lpperf-weights, or None (synthetic weights)."""
    return pytestconfig.stash[_SETTINGS].weights_dir


@pytest.fixture(scope="session")
def lpperf_card(pytestconfig: pytest.Config) -> CardInfo:
    return _card(pytestconfig)


@pytest.fixture(scope="session")
def lpperf_sync_clock() -> Callable[[], float]:
    """The clock the suite gives pytest-benchmark: perf_counter after a CUDA synchronize."""
    return _synchronized_clock()


def _synchronized_clock() -> Callable[[], float]:
    """lpperf.measure.timing's synchronising perf_counter, imported only when a benchmark needs it, so
    collection never depends on lpperf."""
    from lpperf.measure.timing import synchronized_perf_counter

    return synchronized_perf_counter


@pytest.fixture(scope="session")
def cuda_device(lpperf_card: CardInfo):
    """The CUDA device under test (select the card with CUDA_VISIBLE_DEVICES); skips where there is none."""
    if not lpperf_card.cuda_available:
        pytest.skip(lpperf_card.no_cuda_reason)
    import torch

    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="session")
def lpperf_nets(cuda_device, lpperf_weights_dir: Path | None):
    """The networks on the card: official checkpoints with --lpperf-weights, else synthetic weights."""
    import lpperf.models.weights  # here, not at module level: collection must not depend on it

    if lpperf_weights_dir is None:
        return lpperf.models.weights.synthetic(SYNTHETIC_SEED, cuda_device)
    return lpperf.models.weights.load_official(lpperf_weights_dir, cuda_device)
