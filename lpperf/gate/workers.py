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
from collections.abc import Sequence
from pathlib import Path

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
LOG_TAIL_LINES = 6


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
        try:
            self._process.stdin.write((json.dumps(payload) + "\n").encode())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died(operation) from None
        try:
            line = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            self.stop()
            raise GateError(f"{self.label}: no answer to {operation!r} within {timeout_s:.0f} s (hung?); "
                            f"the worker was stopped. Its log: {self.log_path}") from None
        if line is None:
            raise self._died(operation)
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            raise GateError(f"{self.label}: answered {operation!r} with a line that is not JSON: "
                            f"{line[:200]!r}") from None
        if not answer.get("ok"):
            kind = "ran out of GPU memory" if answer.get("kind") == "oom" else "failed"
            raise GateError(f"{self.label} {kind} during {operation!r}: {answer.get('error')}. "
                            f"Its log: {self.log_path}")
        return answer

    def _died(self, operation: str | None) -> GateError:
        code = self._process.wait()
        self._log.flush()
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
        """Ask to quit, then terminate, then kill the whole process group: nothing keeps the card."""
        if self._process.poll() is None:
            try:
                self._process.stdin.write(b'{"op": "quit"}\n')
                self._process.stdin.flush()
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._process.poll() is not None:
                break
            try:
                os.killpg(self._process.pid, sig)
                self._process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # the group may outlive its leader (compile workers)
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
