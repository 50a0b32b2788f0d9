"""lpperf: LivePortrait inference, fast and honestly measured."""

__version__ = "0.1.0"
