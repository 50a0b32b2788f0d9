"""The exit codes of every lpperf command, defined once. Only a measurement gives 0, 1 or 3; whatever
prevented one (bad input, a crash, a signal during the gate) is 2, so a CI job can never read a failure
as a verdict."""

import enum


class Exit(enum.IntEnum):
    PASS = 0  # measured; nothing regressed
    REGRESSED = 1  # measured; surely slower, bigger or slower to start than allowed, or its output changed
    ERROR = 2  # no verdict: bad input, a failure, the gate interrupted
    UNDECIDED = 3  # measured; the gate could not tell within its rounds
    INTERRUPTED = 130  # Ctrl-C outside the gate (the shell's convention: 128 + SIGINT)
