"""argparse types shared by the commands: each parses once and says what it expected."""

from __future__ import annotations

import argparse
import math


def at_least(low: float, kind=int, most: float | None = None):
    """An argparse type: a number of `kind` (int or float), finite, >= low and, if given, <= most."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        what = "a whole number" if kind is int else "a number (a fraction: 0.10 = 10%)"
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"must be {what} >= {low}, got {text!r}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be {what} from {low} to {most}, got {text!r} (see --help)")
        return value
    return parse
