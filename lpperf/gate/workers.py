"""The controller's side of the worker protocol (lpperf/gate/worker.py): start a worker process,
send it requests, wait for its answers with a time limit, and stop it, leaving nothing running.

Every failure becomes a GateError with one line naming the side and what went wrong; the worker's
stderr goes to a log file whose tail is quoted.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
LOG_TAIL_LINES = 6
POLL_S = 0.5  # how often a wait for an answer checks that the worker is still alive
QUIT_GRACE_S = 10.0  # for idle workers to quit when asked
KILL_GRACE_S = 10.0  # after SIGTERM, before SIGKILL


class GateError(RuntimeError):
    """The gate could not reach a decision (bad ref, a worker crashed, hung or ran out of memory,
    an interruption): exit 2, no verdict."""


def worker_command(tree: Path, device: str) -> list[str]:
    return [sys.executable, str(WORKER_SCRIPT), "--tree", str(tree), "--device", device]


class Worker:
    """One side's process. `label` names it in every message ('base (origin/main 1a2b3c4)')."""

    def __init__(self, label: str, command: Sequence[str], env: dict[str, str], log_path: Path):
        self.label = label
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            # A session of its own: Ctrl-C in the terminal reaches only the controller, which then
            # stops the whole group, compile subprocesses included.
            self._process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=self._log, env=env, start_new_session=True)
        except OSError as error:
            self._log.close()
            raise GateError(f"{label}: could not start the worker ({error})") from None
        self._answers: queue.Queue = queue.Queue()
        self.busy = False  # a request is in flight: the worker cannot read a request to quit
        self.stopped = False
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read(self) -> None:
        for line in self._process.stdout:
            self._answers.put(line)
        self._answers.put(None)  # end of output: the process is gone

    def request(self, payload: dict, timeout_s: float) -> dict:
        operation = payload.get("op")
        self.busy = True
        try:
            self._process.stdin.write((json.dumps(payload) + "\n").encode())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died(operation) from None
        line = self._answer(operation, timeout_s)
        self.busy = False
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            raise GateError(f"{self.label}: answered {operation!r} with a line that is not JSON: "
                            f"{line[:200]!r}") from None
        if not isinstance(answer, dict):
            raise GateError(f"{self.label}: answered {operation!r} with {line[:200]!r}, not a JSON object") from None
        if not answer.get("ok"):
            kind = "ran out of GPU memory" if answer.get("kind") == "oom" else "failed"
            raise GateError(f"{self.label} {kind} during {operation!r}: {answer.get('error')}. "
                            f"Its log: {self.log_path}")
        return answer

    def _answer(self, operation: str | None, timeout_s: float) -> bytes:
        """The next line from the worker. Its death is noticed by polling, not only by the end of its
        output: a child it leaves behind (a compile worker) can hold the pipe open."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._answers.get(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                if self._process.poll() is not None:
                    try:  # an answer written just before exiting may still be on its way through the pipe
                        line = self._answers.get(timeout=POLL_S)
                    except queue.Empty:
                        line = None
                elif time.monotonic() < deadline:
                    continue
                else:
                    stop_all([self])
                    raise GateError(f"{self.label}: no answer to {operation!r} within {timeout_s:.0f} s (hung?); "
                                    f"the worker was stopped. Its log: {self.log_path}") from None
            if line is None:
                raise self._died(operation)
            return line

    def _died(self, operation: str | None) -> GateError:
        try:
            code = self._process.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:  # it closed its output but runs on
            stop_all([self])
            code = self._process.wait()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return GateError(f"{self.label}: the worker {how} during {operation!r}. Last lines of "
                         f"{self.log_path}: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "(empty)"

    def stop(self) -> None:
        stop_all([self])


def stop_all(workers: Sequence[Worker]) -> None:
    """End every worker and its whole process group (compile subprocesses included): nothing keeps the
    card. An idle worker is asked to quit (its CUDA context ends cleanly) and the idle ones get
    QUIT_GRACE_S together; a busy one cannot read the request, so it is terminated at once."""
    running = [worker for worker in workers if not worker.stopped and worker._process.poll() is None]
    for worker in running:
        if not worker.busy:
            try:
                worker._process.stdin.write(b'{"op": "quit"}\n')
                worker._process.stdin.flush()
            except OSError:
                pass
    _wait_for([worker for worker in running if not worker.busy], QUIT_GRACE_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        running = [worker for worker in running if worker._process.poll() is None]
        for worker in running:
            _signal_group(worker, sig)
        _wait_for(running, KILL_GRACE_S)
    for worker in workers:
        if not worker.stopped:
            _signal_group(worker, signal.SIGKILL)  # the group may outlive its leader (compile workers)
            worker.stopped = True
            worker._log.close()


def run_to_the_end(cleanup: Callable[[], None]) -> None:
    """Run `cleanup`; where an interruption stops it, run it again, then raise the interruption. The gate
    raises only the first of its interruptions, so the second run is not cut short."""
    try:
        cleanup()
    except KeyboardInterrupt:
        cleanup()
        raise


def _wait_for(workers: Sequence[Worker], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for worker in workers:
        try:
            worker._process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _signal_group(worker: Worker, sig: signal.Signals) -> None:
    try:
        os.killpg(worker.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
