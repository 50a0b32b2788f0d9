"""Loads lpperf's pytest plugin (lpperf/suite/plugin.py) for runs from this checkout.

Installed lpperf registers the plugin through its `pytest11` entry point, early enough that
`--lpperf-weights DIR` (space form) parses; then this line finds it loaded and does nothing.
Without an install (PYTHONPATH=.) it is loaded here, and the `--lpperf-x=VALUE` form is needed.
"""

pytest_plugins = ["lpperf.suite.plugin"]


def pytest_cmdline_main(config):
    """With -n, distribute by xdist group, so the tests marked with one group (tests/test_weights.py's,
    which share the official-size networks) run on one worker, and those networks are built once while
    the other workers run the rest. Here, not in pytest.ini: a `--dist` there would switch
    pytest-benchmark off in runs without -n too."""
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
