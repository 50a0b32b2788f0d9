"""Measurement: GPU timing, the roofline guard, NVML memory, output parity, the environment, and what
one animated frame is made of for everything that measures frames."""

# The stages a frame is taken apart into, by network: F runs once per source; M, S, W and G once per frame.
# Here, free of torch, for the gate's controller as well as lpperf.measure.frame.
STAGES = ("F", "M", "S", "W", "G")
FRAME_STAGES = STAGES[1:]
