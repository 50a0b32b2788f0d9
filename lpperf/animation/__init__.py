"""The per-frame animation pipeline over the networks (keypoint math, stitching and retargeting,
streaming) and video/image I/O."""
