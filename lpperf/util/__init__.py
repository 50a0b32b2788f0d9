"""Small shared utilities every layer may use: argument checks, atomic files, devices, exit codes.
Imports nothing else of lpperf."""
