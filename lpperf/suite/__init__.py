"""lpperf's pytest plugin (the GPU suite's options, fixtures, per-card history) and the multi-GPU runner."""
