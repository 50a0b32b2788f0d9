"""lpperf gate: a merge gate that compares two versions of the code on one card in one job.

- stats: per-round log-ratios, Hodges-Lehmann estimate, signed-rank interval, three-way verdict.
- worker: one side's long-lived process (its own imports, compile, warm-up), spoken to in JSON lines.
- workers: starting, asking and stopping a worker, with time limits and clear errors.
- controller: ABBA rounds over both sides, adding rounds while undecided, sharding over cards.
- report: the verdict table, stage attribution, clocks, JSON, the A/A noise calibration.
- command: the `lpperf gate` subcommand.
"""
