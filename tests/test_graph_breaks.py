"""The compiled recipes must trace the per-frame work as one graph.

A graph break splits the compiled step: with mode="reduce-overhead" the part after the break is
another CUDA graph, or eager Python between two, which is slower on the card and shows up nowhere
on the CPU. dynamo's tracing does not depend on the device, so the check runs here on the TINY
networks with each recipe's rewrites applied. step()'s input check is outside run_stages: on the
CPU it reads the values back on purpose; on a GPU it is a device assertion inside the graph.
"""

import pytest
import torch

from lpperf.measure import frame
from lpperf.models import weights
from lpperf.optimize import recipes, steps


@pytest.mark.parametrize("recipe", ["fast", "fastest", "fastest-batched"])
@pytest.mark.parametrize("retargeting", [False, True], ids=["plain", "eye-and-lip-retargeting"])
def test_the_per_frame_work_traces_as_one_graph(recipe, retargeting):
    engine = recipes.build(recipe, weights.tiny_networks(0), "cpu")
    assert steps.warp_source_cache in engine.applied  # the rewrites are in place, not only the plain modules
    animator = frame.sample_animator(engine)
    driving = frame.driving_batch(1, offset=1)
    options = {}
    if retargeting:
        options = {"eye_ratio": torch.tensor([[0.3, 0.3, 0.4]]), "lip_ratio": torch.tensor([[0.2, 0.4]])}
    torch._dynamo.reset()
    with engine.context():
        explained = torch._dynamo.explain(animator.run_stages)(driving, **options)
    reasons = [reason.reason.splitlines()[0] for reason in explained.break_reasons]
    assert explained.graph_break_count == 0 and explained.graph_count == 1, reasons


@pytest.mark.parametrize("recipe", ["fastest-motion-ahead"])
def test_motion_ahead_traces_each_of_its_calls_as_one_graph(recipe):
    """With frames known ahead the step is two compiled programs: M over the frames (traced without the
    frames' value check, which reads values back on the CPU, as step()'s does) and, per step, the rest
    from the motion's tensors, with step_from_motion's shape checks (the program the engine compiles)."""
    engine = recipes.build(recipe, weights.tiny_networks(0), "cpu")
    animator = frame.sample_animator(engine)
    clip = frame.driving_batch(3, offset=1)
    with engine.context():
        motion = animator.extract_motion(clip)
        for call, arguments in ((animator.extract_motion, (clip,)),
                                (animator._frames_from_motion_tensors, motion.items(0, 1).tensors())):
            torch._dynamo.reset()
            explained = torch._dynamo.explain(call)(*arguments)
            reasons = [reason.reason.splitlines()[0] for reason in explained.break_reasons]
            assert explained.graph_break_count == 0 and explained.graph_count == 1, (call.__name__, reasons)
