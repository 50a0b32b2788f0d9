"""The per-frame animation pipeline: LivePortrait's keypoint math and the F/M/W/G/S calls.

Conventions (as the official LivePortrait code):
- head pose: M predicts 66 bins per angle; degrees = 3 * E[bin] - 97.5;
- rotation: R = (Rz(roll) Ry(yaw) Rx(pitch))^T, applied to row vectors as x @ R;
- keypoints: x = s * (x_c @ R + exp) + t, with t_z dropped;
- relative motion against the first driving frame d0:
  R = R_d R_d0^T R_s, exp = exp_s + (exp_d - exp_d0), s = s_s * (s_d / s_d0),
  t = t_s + (t_d - t_d0).

The Animator runs the source-only work (F, M, R_s, x_s) once per source;
each driving batch then costs M + keypoint math + S + W + G in `step`
(written once, in `run_stages`; lpperf.measure.frame runs and times the stages alone).
Where the driving frames are known ahead (a video file), M can run over many of them at once first,
as the official pipeline extracts a video's motion template before animating: `motion_template`,
then `step_from_motion` per batch (the Animator's `motion_ahead` frames at a time in `animate`).

Not implemented (no landmark detector or convex hull here): the official
"expression-friendly" driving option (motion multiplier from keypoint hull
areas), animation regions other than "all", and computing eye/lip ratios
from landmarks; ratios are passed in by the caller instead.

Over 400 lines as one module: the official keypoint math is one chain of formulas, kept beside the
conventions it relies on and the Animator that runs it.
"""

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lpperf.models import DECODER_NET, EYE_NET, FEATURE_NET, LIP_NET, MOTION_NET, STITCHING_NET, WARP_NET
from lpperf.util.validation import (check_bool, check_feature_volume, check_finite_number, check_floating,
                               check_fraction, check_images, check_keypoints, check_positive_int, check_ratio,
                               check_same_placement, check_tensor, check_unit_range_async)

NUM_POSE_BINS = 66
POSE_BIN_DEGREES = 3.0
POSE_OFFSET_DEGREES = 97.5
LIP_NORMALIZE_THRESHOLD = 0.03  # official default: normalise the source lip only if it is this open
EYE_RATIO_WIDTH = 3  # source left eye, source right eye, target
LIP_RATIO_WIDTH = 2  # source, target
# animate()'s bound on frames per step: fp32 eager peaks at about 12.5 GB at batch 16 on an H200
# (docs/PERFORMANCE.md), so 64 frames fit an 80 GB card; more only exhausts memory.
MAX_BATCH_SIZE = 64
# The bound on frames whose motion M extracts in one call: M's widest activation (ConvNeXt-V2's 4x MLP,
# 384 channels at 64 x 64) is 3 MiB per frame in fp16, 6 MiB in float32, so 256 frames need ~1.5 GiB at most.
MAX_MOTION_AHEAD = 256

# With absolute motion (relative_motion=False) only these expression entries
# come from the driving frame, the rest stay the source's (official
# live_portrait_pipeline): keypoint rows taken whole, and single coordinates.
ABSOLUTE_EXPRESSION_ROWS = (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
ABSOLUTE_EXPRESSION_ENTRIES = ((3, 1), (4, 1), (5, 2), (8, 2), (9, 1), (9, 2))
ABSOLUTE_EXPRESSION_NUM_KP = 21


# --- keypoint math (pure functions) ---------------------------------------------------------------

def pose_bins_to_degrees(bins: torch.Tensor) -> torch.Tensor:
    """Bx66 head-pose bin logits -> B angles in degrees (softmax expectation * 3 - 97.5)."""
    check_tensor(bins, "pose bins")
    if bins.dim() != 2 or bins.shape[1] != NUM_POSE_BINS:
        raise ValueError(f"pose bins must be Bx{NUM_POSE_BINS} logits, got shape {tuple(bins.shape)}")
    check_floating(bins, "pose bins")
    index = torch.arange(NUM_POSE_BINS, dtype=torch.float32, device=bins.device)
    expectation = (F.softmax(bins.float(), dim=1) * index).sum(dim=1)
    return expectation * POSE_BIN_DEGREES - POSE_OFFSET_DEGREES


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Bx3x3 rotations from angles in degrees (each B or Bx1), to be applied as x @ R.

    R = (Rz(roll) @ Ry(yaw) @ Rx(pitch))^T with right-handed axis rotations.
    """
    # degrees / 180 * pi, rounded in the same order as the official code
    pitch, yaw, roll = (angle.reshape(-1).float() / 180 * math.pi for angle in (pitch, yaw, roll))
    if not pitch.shape == yaw.shape == roll.shape:
        raise ValueError(f"pitch, yaw and roll must hold one angle per batch item, got "
                         f"{tuple(pitch.shape)}, {tuple(yaw.shape)}, {tuple(roll.shape)}")
    one, zero = torch.ones_like(pitch), torch.zeros_like(pitch)

    def matrix(*rows):
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    cx, sx, cy, sy, cz, sz = pitch.cos(), pitch.sin(), yaw.cos(), yaw.sin(), roll.cos(), roll.sin()
    rot_x = matrix((one, zero, zero), (zero, cx, -sx), (zero, sx, cx))
    rot_y = matrix((cy, zero, sy), (zero, one, zero), (-sy, zero, cy))
    rot_z = matrix((cz, -sz, zero), (sz, cz, zero), (zero, zero, one))
    return (rot_z @ rot_y @ rot_x).transpose(1, 2)


@dataclass
class Motion:
    """Keypoint parameters of a batch of images (float32).

    canonical x_c: BxKx3, rotation R: Bx3x3 (x @ R), expression: BxKx3,
    scale: Bx1, translation: Bx3 (t_z is never applied).
    """
    canonical: torch.Tensor
    rotation: torch.Tensor
    expression: torch.Tensor
    scale: torch.Tensor
    translation: torch.Tensor

    def keypoints(self) -> torch.Tensor:
        return transform_keypoints(self.canonical, self.rotation, self.expression, self.scale, self.translation)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The five tensors in field order (Motion(*motion.tensors()) is the same motion)."""
        return self.canonical, self.rotation, self.expression, self.scale, self.translation

    @property
    def batch(self) -> int:
        return self.canonical.shape[0]

    def items(self, start: int, stop: int) -> "Motion":
        """Batch items start .. stop-1 (views)."""
        return Motion(*(value[start:stop] for value in self.tensors()))

    def first(self) -> "Motion":
        """The first batch item, batch dimension kept, copied (so later in-place reuse can't change it)."""
        return self.items(0, 1).copy()

    def copy(self) -> "Motion":
        """A copy whose tensors are its own (not buffers a later CUDA-graph replay overwrites)."""
        return Motion(*(value.clone() for value in self.tensors()))


def motion_from_extractor(raw: dict) -> Motion:
    """Convert M's raw output (pitch/yaw/roll Bx66, t Bx3, exp Bx3K, scale Bx1, kp Bx3K) to a Motion."""
    if not isinstance(raw, dict):
        raise ValueError(f"the motion extractor must return a dict, got {type(raw).__name__}")
    missing = sorted({"pitch", "yaw", "roll", "t", "exp", "scale", "kp"} - set(raw))
    if missing:
        raise ValueError(f"the motion extractor output lacks {missing}; got keys {sorted(raw)}")
    kp = check_tensor(raw["kp"], "motion extractor 'kp'")
    batch = kp.shape[0]
    if kp.dim() != 2 or kp.shape[1] % 3:
        raise ValueError(f"motion extractor 'kp' must be Bx(3K), got shape {tuple(kp.shape)}")
    expected = {"exp": (batch, kp.shape[1]), "t": (batch, 3), "scale": (batch, 1)}
    for key, shape in expected.items():
        if tuple(raw[key].shape) != shape:
            raise ValueError(f"motion extractor '{key}' must have shape {shape}, got {tuple(raw[key].shape)}")
    degrees = [pose_bins_to_degrees(raw[key]) for key in ("pitch", "yaw", "roll")]
    return Motion(
        canonical=kp.float().reshape(batch, -1, 3),
        rotation=rotation_matrix(*degrees),
        expression=raw["exp"].float().reshape(batch, -1, 3),
        scale=raw["scale"].float(),
        translation=raw["t"].float(),
    )


def transform_keypoints(canonical, rotation, expression, scale, translation) -> torch.Tensor:
    """x = s * (x_c @ R + exp) + (t_x, t_y, 0): BxKx3 (the batch dims broadcast)."""
    translation_xy = F.pad(translation[:, :2], (0, 1))  # t_z dropped
    return scale[:, :, None] * (canonical @ rotation + expression) + translation_xy[:, None, :]


def relative_motion(source: Motion, driving: Motion, reference: Motion) -> Motion:
    """Apply the driving frames' motion relative to the reference (first) driving frame to the source."""
    return Motion(
        canonical=source.canonical,
        rotation=(driving.rotation @ reference.rotation.transpose(1, 2)) @ source.rotation,
        expression=source.expression + (driving.expression - reference.expression),
        scale=source.scale * (driving.scale / reference.scale),
        translation=source.translation + (driving.translation - reference.translation),
    )


def absolute_expression_mask(num_kp: int, device=None) -> torch.Tensor:
    """Kx3 bool mask of the expression entries that absolute motion takes from the driving frame."""
    if num_kp != ABSOLUTE_EXPRESSION_NUM_KP:
        raise ValueError(f"absolute motion (relative_motion=False) selects expression entries of the "
                         f"official {ABSOLUTE_EXPRESSION_NUM_KP} keypoints; this model has {num_kp}. "
                         f"Use relative_motion=True.")
    mask = torch.zeros(num_kp, 3, dtype=torch.bool, device=device)
    mask[list(ABSOLUTE_EXPRESSION_ROWS)] = True
    for row, column in ABSOLUTE_EXPRESSION_ENTRIES:
        mask[row, column] = True
    return mask


def absolute_motion(source: Motion, driving: Motion, mask: torch.Tensor | None = None) -> Motion:
    """The driving frames' own pose and translation on the source's keypoints and scale.

    `mask` is absolute_expression_mask() precomputed (saves building it per frame).
    """
    if mask is None:
        mask = absolute_expression_mask(source.expression.shape[1], source.expression.device)
    return Motion(
        canonical=source.canonical,
        rotation=driving.rotation,
        expression=torch.where(mask, driving.expression, source.expression),
        scale=source.scale.expand(driving.scale.shape[0], -1),
        translation=driving.translation,
    )


def _flat_pair(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """concat(first flattened, second flattened), the batch of `first` broadcast to `second`'s."""
    batch = second.shape[0]
    return torch.cat([first.expand(batch, *first.shape[1:]).reshape(batch, -1), second.reshape(batch, -1)], dim=1)


def stitch(stitching_net, source_kp: torch.Tensor, driving_kp: torch.Tensor) -> torch.Tensor:
    """Driving keypoints corrected by the stitching MLP: its 3K outputs add to every keypoint, the last 2 to x, y."""
    num_kp = driving_kp.shape[1]
    delta = stitching_net(_flat_pair(source_kp, driving_kp))
    if delta.shape[1] != 3 * num_kp + 2:
        raise ValueError(f"the stitching net must output 3K+2 = {3 * num_kp + 2} values per item, "
                         f"got shape {tuple(delta.shape)}")
    delta_exp = delta[:, :3 * num_kp].reshape(-1, num_kp, 3)
    delta_xy = F.pad(delta[:, 3 * num_kp:], (0, 1))[:, None, :]  # tx, ty; z untouched
    return driving_kp + delta_exp + delta_xy


def retarget(net, source_kp: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Keypoint offsets BxKx3 from a retargeting MLP (eye or lip) on concat(x_s flattened, ratio)."""
    num_kp = source_kp.shape[1]
    delta = net(_flat_pair(source_kp, ratio.float()))
    if delta.shape[1] != 3 * num_kp:
        raise ValueError(f"a retargeting net must output 3K = {3 * num_kp} values per item, "
                         f"got shape {tuple(delta.shape)}")
    return delta.reshape(-1, num_kp, 3)


def apply_driving_multiplier(source_kp: torch.Tensor, driving_kp: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Scale the motion from the source keypoints: x_s + (x_d - x_s) * multiplier."""
    return source_kp + (driving_kp - source_kp) * multiplier


# --- the animator ---------------------------------------------------------------------------------

@dataclass
class SourceState:
    """Everything that depends only on the source image, computed once per source."""
    image: torch.Tensor  # 1x3x256x256
    feature: torch.Tensor  # F(source): 1xCxDxHxW
    motion: Motion  # from M(source)
    keypoints: torch.Tensor  # x_s: 1xKx3
    lip_delta: torch.Tensor | None  # lip normalisation offsets (1xKx3), or None


@dataclass
class StepValues:
    """What each stage of one per-frame step produced."""
    motion: Motion  # M: the driving frames' motion
    keypoints: torch.Tensor  # keypoint math + S: the keypoints x_d that W warps to (BxKx3)
    warped: dict  # W: "out" (the warped feature), "deformation", "occlusion_map"
    frame: torch.Tensor  # G: the animated frames (Bx3x512x512)


class Animator:
    """Animate one source portrait with driving frames.

        animator = Animator(nets)                  # nets: name -> network (lpperf.models names)
        animator.set_source(portrait)              # 1x3x256x256: F, M, x_s once
        for frame in animator.animate(frames, batch_size=4):
            ...                                    # 1x3x512x512 each, streamed

    `step(driving)` is the per-frame work (M, keypoint math, S, W, G) on a
    Bx3x256x256 batch. Networks are looked up in `self.nets` on every call,
    so replacing an entry (a compiled or half-precision variant) takes effect
    at once. Networks must be in eval mode.

    With frames known ahead, `motion_template(frames)` runs M over all of them
    in one call and `step_from_motion(motion.items(i, j))` does the rest of
    their steps: the same function, M's small kernels batched.
    `motion_ahead` > `batch_size` makes animate() work that way.
    """

    def __init__(self, nets: dict, *, stitching: bool = True, relative_motion: bool = True,
                 driving_multiplier: float = 1.0, lip_normalize_threshold: float = LIP_NORMALIZE_THRESHOLD,
                 motion_ahead: int = 1):
        if not isinstance(nets, dict):
            raise ValueError(f"nets must be a dict name -> network, got {type(nets).__name__}")
        check_bool(stitching, "stitching")
        check_bool(relative_motion, "relative_motion")
        required = [FEATURE_NET, MOTION_NET, WARP_NET, DECODER_NET] + ([STITCHING_NET] if stitching else [])
        missing = [name for name in required if name not in nets]
        if missing:
            raise ValueError(f"nets lacks {missing} (needed with stitching={stitching}); got {sorted(nets)}")
        training = [name for name, net in nets.items() if isinstance(net, nn.Module) and net.training]
        if training:
            raise ValueError(f"networks {training} are in training mode; call .eval() on them first")
        self.nets = nets
        self.stitching = stitching
        self.relative_motion = relative_motion
        self.driving_multiplier = check_finite_number(driving_multiplier, "driving_multiplier")
        self.lip_normalize_threshold = check_fraction(lip_normalize_threshold, "lip_normalize_threshold")
        # frames whose motion animate() extracts in one M call before their steps (1: M inside each step)
        self.motion_ahead = check_motion_ahead(motion_ahead, "motion_ahead")
        self.source: SourceState | None = None
        self.reference: Motion | None = None  # motion of the first driving frame
        self.absolute_mask: torch.Tensor | None = None  # expression entries taken with absolute motion

    # source and reference ----------------------------------------------------------------------

    @torch.no_grad()
    def set_source(self, image: torch.Tensor, *, lip_ratio: float | None = None) -> SourceState:
        """Run the source-only work for a 1x3x256x256 image in [0, 1].

        `lip_ratio` is the source's lip-open ratio from landmarks (the
        official calc_lip_close_ratio, a number in [0, 1]); when given with relative motion and
        at least `lip_normalize_threshold`, the lip MLP closes the source's
        mouth first (official flag_normalize_lip) so the driving mouth motion
        starts from closed. The driving reference is kept: call
        reset_reference() for a new driving video.
        """
        check_images(image, "source image", batch=1)
        if image.dtype != torch.float32:  # the networks' inputs; engines cast at their own boundaries
            raise ValueError(f"source image must be float32, got {image.dtype}; convert it with .float()")
        if lip_ratio is not None:
            lip_ratio = check_fraction(lip_ratio, "lip_ratio")
        feature = check_feature_volume(self.extract_feature(image), "appearance feature (F output)", batch=1)
        motion = self.extract_motion(image).first()  # a copy: M's output buffers may be reused (CUDA graphs)
        keypoints = motion.keypoints()
        lip_delta = None
        if lip_ratio is not None and self.relative_motion and lip_ratio >= self.lip_normalize_threshold:
            if LIP_NET not in self.nets:
                raise ValueError(f"lip normalisation (lip_ratio={lip_ratio}) needs a '{LIP_NET}' network in nets")
            closed = torch.tensor([[lip_ratio, 0.0]], dtype=torch.float32, device=keypoints.device)
            lip_delta = retarget(self.nets[LIP_NET], keypoints, closed)
        if not self.relative_motion:
            self.absolute_mask = absolute_expression_mask(keypoints.shape[1], keypoints.device)
        self.source = SourceState(image, feature, motion, keypoints, lip_delta)
        return self.source

    @torch.no_grad()
    def set_reference(self, frame: torch.Tensor) -> Motion:
        """Fix the relative-motion reference to a 1x3x256x256 driving frame (normally the first)."""
        source = self._require_source()
        check_images(frame, "reference frame", batch=1)
        check_same_placement(frame, "reference frame", source.image, "the source image")
        self.reference = self.extract_motion(frame).first()
        return self.reference

    def reset_reference(self) -> None:
        """Forget the reference: the next animate() takes its first frame as the new one."""
        self.reference = None

    def _require_source(self) -> SourceState:
        if self.source is None:
            raise RuntimeError("no source image: call set_source(image) first")
        return self.source

    # the per-frame step ------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, driving: torch.Tensor, *, eye_ratio: torch.Tensor | None = None,
             lip_ratio: torch.Tensor | None = None) -> torch.Tensor:
        """Animate a Bx3x256x256 driving batch: returns Bx3x512x512.

        Checks shapes, dtype and device, and that the values are finite and
        within [0, 1] without synchronising the device (on a GPU a bad value is
        a device-side assertion: see check_unit_range_async; animate() checks
        values on the host first). With relative motion, set_reference() must
        have run.
        eye_ratio (1x3 or Bx3: source left, source right, target) and
        lip_ratio (1x2 or Bx2: source, target), floating tensors of eye and lip
        opening ratios in [0, 1] (checked like the frames), switch on the official eye/lip
        retargeting; as in the official pipeline, with relative motion the
        retargeted keypoints then start from the source's, not the driving
        frame's.
        """
        self._check_driving(driving)
        self._check_ratios(eye_ratio, lip_ratio, batch=driving.shape[0])
        return self.run_stages(driving, eye_ratio=eye_ratio, lip_ratio=lip_ratio).frame

    @torch.no_grad()
    def motion_template(self, frames: torch.Tensor) -> Motion:
        """M over a Bx3x256x256 batch of driving frames known ahead, in one call (the official pipeline's
        motion template, batched): their motion for step_from_motion. Checked as step() checks frames."""
        self._check_driving(frames)
        return self.extract_motion(frames)

    @torch.no_grad()
    def step_from_motion(self, motion: Motion, *, eye_ratio: torch.Tensor | None = None,
                         lip_ratio: torch.Tensor | None = None) -> torch.Tensor:
        """step() for driving frames whose motion motion_template() extracted: keypoint math, S, W, G on
        a batch of B motions; returns Bx3x512x512, the frames step() makes of the same driving frames."""
        source = self._require_source()
        if not isinstance(motion, Motion):
            raise ValueError(f"motion must be a lpperf.animation.pipeline.Motion (from motion_template), "
                             f"got {type(motion).__name__}")
        check_motion(motion, num_kp=source.keypoints.shape[1])
        check_same_placement(motion.canonical, "motion", source.image, "the source image")
        self._check_ratios(eye_ratio, lip_ratio, batch=motion.batch)
        return self.stages_from_motion(motion, eye_ratio=eye_ratio, lip_ratio=lip_ratio).frame

    def _check_driving(self, driving: torch.Tensor) -> None:
        source = self._require_source()
        check_images(driving, "driving frames", check_values=False)
        check_same_placement(driving, "driving frames", source.image, "the source image")
        check_unit_range_async(driving, "driving frames")

    def _check_ratios(self, eye_ratio, lip_ratio, *, batch: int) -> None:
        ratios = (("eye_ratio", eye_ratio, EYE_RATIO_WIDTH), ("lip_ratio", lip_ratio, LIP_RATIO_WIDTH))
        for name, ratio, width in ratios:
            if ratio is not None:
                check_unit_range_async(self._ratio(ratio, name, width=width, batch=batch), name)

    def run_stages(self, driving: torch.Tensor, *, eye_ratio: torch.Tensor | None = None,
                   lip_ratio: torch.Tensor | None = None) -> StepValues:
        """The per-frame work stage by stage, without step()'s input checks: M, keypoint math + S, W, G."""
        return self.stages_from_motion(self.extract_motion(driving), eye_ratio=eye_ratio, lip_ratio=lip_ratio)

    def stages_from_motion(self, motion: Motion, *, eye_ratio: torch.Tensor | None = None,
                           lip_ratio: torch.Tensor | None = None) -> StepValues:
        """The stages after M, without step_from_motion()'s input checks: keypoint math + S, W, G."""
        keypoints = self.driving_keypoints(motion, eye_ratio=eye_ratio, lip_ratio=lip_ratio)
        warped = self.warp(keypoints)
        return StepValues(motion, keypoints, warped, self.decode(warped["out"]))

    # the stages (driving_keypoints, below, is the keypoint math + S) ----------------------------

    def extract_feature(self, image: torch.Tensor) -> torch.Tensor:
        """F: the appearance feature volume of a source image (run once per source)."""
        return self.nets[FEATURE_NET](image)

    def extract_motion(self, images: torch.Tensor) -> Motion:
        """M: the motion parameters of a batch of images."""
        return motion_from_extractor(self.nets[MOTION_NET](images))

    def warp(self, driving_kp: torch.Tensor) -> dict:
        """W: the source feature warped from x_s to `driving_kp` (BxKx3)."""
        source = self._require_source()
        check_keypoints(driving_kp, "driving keypoints", num_kp=source.keypoints.shape[1])
        batch = driving_kp.shape[0]
        feature = source.feature.expand(batch, *source.feature.shape[1:])
        source_kp = source.keypoints.expand(batch, -1, -1)
        return self.nets[WARP_NET](feature, kp_driving=driving_kp, kp_source=source_kp)

    def decode(self, warped_feature: torch.Tensor) -> torch.Tensor:
        """G: a warped feature (W's "out") decoded to Bx3x512x512 frames."""
        return self.nets[DECODER_NET](warped_feature)

    def driving_keypoints(self, motion: Motion, *, eye_ratio: torch.Tensor | None = None,
                          lip_ratio: torch.Tensor | None = None) -> torch.Tensor:
        """The keypoints x_d (BxKx3) that W warps the source to, from the driving frames' motion."""
        if not isinstance(motion, Motion):
            raise ValueError(f"motion must be a lpperf.animation.pipeline.Motion, got {type(motion).__name__}")
        source = self._require_source()
        batch = motion.canonical.shape[0]
        if self.relative_motion:
            if self.reference is None:
                raise RuntimeError("relative motion needs a reference driving frame: call "
                                   "set_reference(first_frame) first (animate() does it for you)")
            new_motion = relative_motion(source.motion, motion, self.reference)
        else:
            new_motion = absolute_motion(source.motion, motion, self.absolute_mask)
        driving_kp = new_motion.keypoints()
        source_kp = source.keypoints
        if eye_ratio is None and lip_ratio is None:
            if self.stitching:
                driving_kp = stitch(self.nets[STITCHING_NET], source_kp, driving_kp)
            if source.lip_delta is not None:
                driving_kp = driving_kp + source.lip_delta
        else:
            base = source_kp.expand(batch, -1, -1) if self.relative_motion else driving_kp
            if eye_ratio is not None:
                eye_ratio = self._ratio(eye_ratio, "eye_ratio", width=EYE_RATIO_WIDTH, batch=batch)
                base = base + retarget(self._net(EYE_NET, "eye retargeting"), source_kp, eye_ratio)
            if lip_ratio is not None:
                lip_ratio = self._ratio(lip_ratio, "lip_ratio", width=LIP_RATIO_WIDTH, batch=batch)
                base = base + retarget(self._net(LIP_NET, "lip retargeting"), source_kp, lip_ratio)
            driving_kp = stitch(self.nets[STITCHING_NET], source_kp, base) if self.stitching else base
        return apply_driving_multiplier(source_kp, driving_kp, self.driving_multiplier)

    def _ratio(self, ratio, name: str, *, width: int, batch: int) -> torch.Tensor:
        check_ratio(ratio, name, width=width, batch=batch)
        device = self._require_source().keypoints.device
        if ratio.device != device:
            raise ValueError(f"{name} is on {ratio.device} but the source is on {device}; "
                             f"move it with .to({str(device)!r})")
        return ratio.expand(batch, -1)

    def _net(self, name: str, purpose: str):
        if name not in self.nets:
            raise ValueError(f"{purpose} needs a '{name}' network in nets; got {sorted(self.nets)}")
        return self.nets[name]

    # streaming -----------------------------------------------------------------------------------

    def animate(self, frames: Iterable[torch.Tensor], *, batch_size: int = 1,
                check_values: bool = True) -> Iterator[torch.Tensor]:
        """Animate a stream of driving frames lazily; yields one 1x3x512x512 output per frame.

        Each item of `frames` is one frame (3x256x256 or 1x3x256x256) or a
        batch of them (Nx3x256x256). Frames are pulled only as needed (at most
        `batch_size` ahead of the outputs), moved to the source's device and
        run `batch_size` at a time; the last batch may be smaller. With
        `motion_ahead` (the Animator's) above `batch_size`, that many frames
        are pulled at a time, M runs over them in one call (motion_template)
        and their steps follow from their motion, `batch_size` at a time: the
        same frames, each output later by up to `motion_ahead` frames. With
        relative motion and no reference yet, the first frame becomes the
        reference (one extra M call). The outputs are views of the batch output: copy them
        before the next iteration if the step reuses its output buffers
        (CUDA graphs). check_values=False skips the host-side value check of
        each frame (a device synchronisation per frame); step() still refuses
        bad values without synchronising (a device-side assertion on a GPU).
        """
        source = self._require_source()
        check_batch_size(batch_size, "batch_size")
        ahead = steps_per_template(self.motion_ahead, batch_size) > 1
        run, pulled = (self._run_ahead, self.motion_ahead) if ahead else (self._run_batch, batch_size)
        pending = []
        for number, frame in enumerate(_single_frames(frames)):
            check_images(frame, f"driving frame {number}", batch=1, check_values=check_values)
            frame = frame.to(source.image.device)
            if self.relative_motion and self.reference is None:
                self.set_reference(frame)
            pending.append(frame)
            if len(pending) == pulled:
                yield from run(pending, batch_size)
                pending = []
        if pending:
            yield from run(pending, batch_size)

    def _run_batch(self, frames: list, batch_size: int) -> Iterator[torch.Tensor]:
        yield from _each_frame(self.step(torch.cat(frames)))

    def _run_ahead(self, frames: list, batch_size: int) -> Iterator[torch.Tensor]:
        for outputs in self.steps_from_template(torch.cat(frames), batch_size):
            yield from _each_frame(outputs)

    def steps_from_template(self, frames: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """M over the Nx3x256x256 `frames` in one call (motion_template), then their steps from their
        motion, `batch_size` frames at a time: yields each step's frames (the last step may be smaller)."""
        check_batch_size(batch_size, "batch_size")
        motion = self.motion_template(frames)
        for start in range(0, motion.batch, batch_size):
            yield self.step_from_motion(motion.items(start, start + batch_size))


def _each_frame(outputs: torch.Tensor) -> Iterator[torch.Tensor]:
    for index in range(outputs.shape[0]):
        yield outputs[index:index + 1]


def check_motion(motion: Motion, *, num_kp: int) -> Motion:
    """A Motion of B items for `num_kp` keypoints: every field a floating tensor of its shape."""
    check_keypoints(motion.canonical, "motion.canonical", num_kp=num_kp)
    batch = motion.batch
    shapes = {"rotation": (batch, 3, 3), "expression": (batch, num_kp, 3), "scale": (batch, 1),
              "translation": (batch, 3)}
    for name, shape in shapes.items():
        value = check_tensor(getattr(motion, name), f"motion.{name}")
        if tuple(value.shape) != shape:
            raise ValueError(f"motion.{name} must have shape {shape} (batch {batch}, from motion.canonical), "
                             f"got {tuple(value.shape)}; make motions with motion_template and select items "
                             f"with motion.items(start, stop)")
        check_floating(value, f"motion.{name}")
    return motion


def steps_per_template(motion_ahead: int, batch_size: int) -> int:
    """Steps of `batch_size` frames that one M call over `motion_ahead` frames serves; 1 where the batch
    holds them all (M then runs inside the step)."""
    return math.ceil(motion_ahead / batch_size) if motion_ahead > batch_size else 1


def check_motion_ahead(value, name: str) -> int:
    """Frames whose motion M extracts in one call ahead of their steps: an int from 1 to MAX_MOTION_AHEAD."""
    return check_positive_int(value, name, at_most=MAX_MOTION_AHEAD,
                              why=" (the frames wait on the device until their steps have run)")


def check_batch_size(value, name: str) -> int:
    """Frames per step: an int from 1 to MAX_BATCH_SIZE."""
    return check_positive_int(value, name, at_most=MAX_BATCH_SIZE,
                              why=" (the frames of one step share the device's memory)")


def _single_frames(frames: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Each item of a frame stream as 1x3xHxW frames (an Nx3xHxW item gives N frames)."""
    if not isinstance(frames, Iterable):
        raise ValueError(f"frames must be an iterable of frame tensors, got {type(frames).__name__}")
    if isinstance(frames, torch.Tensor) and frames.dim() != 4:
        raise ValueError(f"frames given as one tensor must be a stacked Nx3x256x256 clip, got shape "
                         f"{tuple(frames.shape)}; wrap a single frame in a list")
    for position, item in enumerate(frames):
        check_tensor(item, f"frames item {position}")
        if item.dim() == 3:
            yield item.unsqueeze(0)
        elif item.dim() == 4:
            yield from item.split(1)
        else:
            raise ValueError(f"frames item {position} must be a 3x256x256 frame or an Nx3x256x256 batch, "
                             f"got shape {tuple(item.shape)}")
