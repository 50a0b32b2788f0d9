"""Files written whole or not at all, and SIGTERM/SIGHUP turned into the clean-up path of Ctrl-C.

    with atomic_path(out / "report.json") as temporary:   # renamed into place when the block succeeds
        temporary.write_text(...)
    write_json(data, out / "gate.json")                    # the same, for a JSON document
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(destination: str | Path) -> Iterator[Path]:
    """A temporary path beside `destination`, renamed to it when the block succeeds, removed otherwise
    (including on Ctrl-C)."""
    destination = Path(destination)
    folder = destination.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist; create it or choose another output path")
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{destination.name}.", suffix=".partial")
    except OSError as error:
        raise OSError(f"cannot write into {folder} ({error.strerror or error}); choose a writable output "
                      "location") from None
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it a normal file's mode
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_json(data: dict, path: str | Path) -> Path:
    """`data` as indented JSON at `path`, written atomically; non-finite numbers are refused (write them
    as null first), and values JSON cannot hold (dtypes, paths) are written as their text."""
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
    except OSError as error:
        raise OSError(f"cannot write {path} ({error.strerror or error}); free some space or choose another folder") \
            from None
    return path


class Terminated(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP, or Ctrl-C where asked) raised like Ctrl-C so that the same clean-up runs."""


@contextlib.contextmanager
def termination_as_interrupt(*, ctrl_c: bool = False, once: bool = False) -> Iterator[None]:
    """Inside the block SIGTERM and SIGHUP (with `ctrl_c`, SIGINT too) raise Terminated (a
    KeyboardInterrupt naming the signal), so atomic_path removes its temporary file and every other
    clean-up runs as on Ctrl-C, instead of the process dying with things left behind. With `once`, only
    the first signal raises and later ones are ignored, so a clean-up that the first started (stopping
    worker processes) runs to the end. The previous handlers come back afterwards. Python runs signal
    handlers in the main thread only: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def interrupt(number, frame):
        if once and received:
            return
        received.append(number)
        raise Terminated("Ctrl-C" if number == signal.SIGINT else f"terminated by {signal.Signals(number).name}")

    numbers = ([signal.SIGINT] if ctrl_c else []) + [signal.SIGTERM] + (
        [signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {number: signal.signal(number, interrupt) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
