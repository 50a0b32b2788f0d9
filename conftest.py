"""Loads lpperf's pytest plugin (lpperf/pytest_plugin.py) for runs from this checkout.

Installed lpperf registers the plugin through its `pytest11` entry point, early enough that
`--lpperf-weights DIR` (space form) parses; then this line finds it loaded and does nothing.
Without an install (PYTHONPATH=.) it is loaded here, and the `--lpperf-x=VALUE` form is needed.
"""

pytest_plugins = ["lpperf.pytest_plugin"]
