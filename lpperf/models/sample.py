"""Offline sample data: a real source portrait and a synthetic driving video made from it.

`portrait()` is the astronaut photograph bundled with scikit-image (public
domain), cropped like LivePortrait's cropper crops a source image and stored
as uint8 in lpperf/data/portrait.npz (built by tools/make_sample.py).

`driving_frames()` animates that portrait: smooth head motion (roll, shift,
zoom) plus expression change (mouth opening, eye blinks) by local
displacement fields. Every frame is computed from closed-form formulas with
IEEE basic arithmetic only (+ - * / sqrt, floor, gather) in float64: no
library transcendentals and no fused multiply-add kernels, whose last-bit
results differ between CPUs, so the frames are bit-identical on every
machine. Frames are produced one at a time; a video never sits in memory.
"""

import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lpperf.util.validation import check_int

PORTRAIT_FILE = Path(__file__).resolve().parents[1] / "data" / "portrait.npz"
PORTRAIT_SIZE = 256
MAX_CLIP_FRAMES = 256  # driving_clip() holds frames in memory; stream longer videos
FRAMES_PER_SECOND = 25  # the rate the motion below is designed for
DEMO_FRAMES = 50  # what `lpperf animate --sample` animates: two seconds, with a blink and the mouth moving
CPU_DEMO_FRAMES = 10  # the same on the CPU, where even the TINY networks take seconds per frame

# Motion of the driving video (frames at FRAMES_PER_SECOND).
ROLL_DEGREES = 4.0
SHIFT_PIXELS = (5.0, 4.0)  # x, y in portrait pixels
ZOOM = 0.03  # relative
MOUTH_OPEN_PIXELS = 7.0  # how far the lower lip moves down at full opening
UPPER_LIP_SHARE = 0.35  # the upper lip moves up this share of that
BLINK_LENGTH = 8  # frames from eyes open to closed and open again


def _load_portrait_file() -> dict:
    if not PORTRAIT_FILE.is_file():
        raise FileNotFoundError(
            f"sample portrait {PORTRAIT_FILE} is missing; it ships with lpperf "
            "(rebuild it with `python tools/make_sample.py`, which needs scikit-image)"
        )
    with np.load(PORTRAIT_FILE, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def portrait() -> torch.Tensor:
    """The source portrait: 1x3x256x256 float32 RGB in [0, 1] (uint8 values / 255)."""
    image = _load_portrait_file()["image"]  # 256x256x3 uint8
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def face_regions() -> dict:
    """Eye and mouth boxes of the portrait: name -> (x, y, half width, half height) in pixels."""
    stored = _load_portrait_file()
    return {name: tuple(float(v) for v in stored[name]) for name in ("left_eye", "right_eye", "mouth")}


def driving_frames(num_frames: int | None = None, size: int = 256, seed: int = 0) -> Iterator[torch.Tensor]:
    """Yield driving frames, each 1x3x`size`x`size` float32 in [0, 1]: `num_frames` of them, or
    endlessly when None (take what you need with itertools.islice).

    Frame 0 is the portrait itself (at size 256); later frames move the head
    and change the expression. `seed` varies the periods and directions of
    the motion; the same arguments give bit-identical frames everywhere.
    """
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 0):
        raise ValueError(f"num_frames must be None (endless) or an int >= 0, got {num_frames!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    check_int(seed, "seed")
    image = portrait()[0].double()
    regions = face_regions()
    motion = _MotionPlan(seed)
    # Output pixel centres in portrait pixel coordinates (align_corners=False convention).
    axis = (torch.arange(size, dtype=torch.float64) + 0.5) * (PORTRAIT_SIZE / size) - 0.5
    out_y, out_x = torch.meshgrid(axis, axis, indexing="ij")
    for index in itertools.count() if num_frames is None else range(num_frames):
        x, y = _head_motion(out_x, out_y, motion.pose(index))
        dx, dy = _expression_displacement(x, y, regions, motion.mouth_open(index), motion.blink(index))
        frame = _sample_bilinear(image, x + dx, y + dy)
        yield frame.float().unsqueeze(0)


def driving_clip(num_frames: int = 16, size: int = 256, seed: int = 0) -> torch.Tensor:
    """The first `num_frames` driving frames stacked: Nx3xSxS. For short clips only."""
    if not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_CLIP_FRAMES:
        raise ValueError(
            f"driving_clip holds every frame in memory: num_frames must be 1..{MAX_CLIP_FRAMES}, "
            f"got {num_frames!r}; stream longer videos with driving_frames()"
        )
    return torch.cat(list(driving_frames(num_frames, size, seed)))


def _mix(seed: int, salt: int) -> int:
    """A platform-independent integer hash (splitmix64 finaliser) of (seed, salt)."""
    z = (seed * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


SINE_LIKE_NORM = 10.392304845413264  # 6 * sqrt(3): scales p (1-p) (1-2p) to a peak of 1


def _wave(index: int, period: int) -> float:
    """A smooth periodic curve in [-1, 1] shaped like sin(2 pi index / period): 0 at index 0, rising.

    The cubic p (1-p) (1-2p) has the same value (0) and slope at both ends of
    a period, so it repeats smoothly; polynomial only, so exact everywhere.
    """
    p = (index % period) / period
    return SINE_LIKE_NORM * p * (1.0 - p) * (1.0 - 2.0 * p)


def _bump(index: int, period: int) -> float:
    """A smooth periodic curve in [0, 1]: 0 (and flat) at index 0, 1 at half a period."""
    p = (index % period) / period
    return 16.0 * p * p * (1.0 - p) * (1.0 - p)


class _MotionPlan:
    """Per-frame motion parameters; periods and directions depend on the seed only."""

    def __init__(self, seed: int):
        def period(salt, base):
            return base + _mix(seed, salt) % 17

        def sign(salt):
            return 1.0 if _mix(seed, salt) % 2 == 0 else -1.0

        self.periods = {name: period(salt, base) for salt, (name, base) in
                        enumerate([("roll", 83), ("shift_x", 97), ("shift_y", 71), ("zoom", 113),
                                   ("mouth", 47), ("mouth_slow", 89), ("blink", 77)])}
        self.signs = {name: sign(10 + salt) for salt, name in enumerate(["roll", "shift_x", "shift_y", "zoom"])}
        self.first_blink = 20 + _mix(seed, 20) % 20

    def pose(self, index: int) -> tuple:
        """(roll in radians, shift x, shift y in pixels, zoom factor) for a frame."""
        def amount(name):
            return self.signs[name] * _wave(index, self.periods[name])

        roll = ROLL_DEGREES * (np.pi / 180) * amount("roll")
        return (roll, SHIFT_PIXELS[0] * amount("shift_x"), SHIFT_PIXELS[1] * amount("shift_y"),
                1.0 + ZOOM * amount("zoom"))

    def mouth_open(self, index: int) -> float:
        """Mouth opening in [0, 1]: 0 at frame 0, a talking-like mix of two rhythms."""
        return 0.6 * _bump(index, self.periods["mouth"]) + 0.4 * _bump(index, self.periods["mouth_slow"])

    def blink(self, index: int) -> float:
        """Eye closure in [0, 1]: a short blink every blink period, the first after a few frames."""
        step = (index - self.first_blink) % self.periods["blink"]
        if index < self.first_blink or step >= BLINK_LENGTH:
            return 0.0
        q = (step + 0.5) / BLINK_LENGTH
        return 16.0 * q * q * (1.0 - q) * (1.0 - q)


def _cos_sin(angle: float) -> tuple:
    """cos and sin of a small angle (|angle| < 0.2 rad) by Taylor series: exact to ~1e-12, same everywhere."""
    a2 = angle * angle
    cos = 1.0 - a2 / 2 * (1.0 - a2 / 12 * (1.0 - a2 / 30 * (1.0 - a2 / 56)))
    sin = angle * (1.0 - a2 / 6 * (1.0 - a2 / 20 * (1.0 - a2 / 42 * (1.0 - a2 / 72))))
    return cos, sin


def _head_motion(out_x, out_y, pose):
    """Where each output pixel samples the portrait for a head rolled, shifted and zoomed about the face centre."""
    roll, shift_x, shift_y, zoom = pose
    cos, sin = _cos_sin(roll)
    centre = PORTRAIT_SIZE / 2
    # Inverse of: rotate by roll, zoom, then shift (output = c + zoom * R (p - c) + shift).
    u = (out_x - centre - shift_x) / zoom
    v = (out_y - centre - shift_y) / zoom
    return centre + cos * u + sin * v, centre - sin * u + cos * v


def _smoothstep(edge0, edge1, value):
    t = ((value - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _plateau(value, centre, inner, outer):
    """1 within `inner` of `centre`, falling smoothly to 0 at `outer` away."""
    distance = (value - centre).abs()
    return 1.0 - _smoothstep(inner, outer, distance)


def _expression_displacement(x, y, regions, mouth_open, blink):
    """Backward displacement (dx, dy) that opens the mouth and closes the eyes.

    Output pixels sample the portrait at (x + dx, y + dy): the mouth seam is
    stretched open (lower lip and chin move down, upper lip a little up) and
    the upper eyelid skin is pulled down over each eye.
    """
    dy = torch.zeros_like(y)
    if mouth_open > 0:
        mx, my, mw, mh = regions["mouth"]
        z = (y - my) / mh
        seam = z / (1.0 + z * z).sqrt()  # odd, saturating: pushes apart either side of the seam
        seam = torch.where(z < 0, UPPER_LIP_SHARE * seam, seam)
        across = _plateau(x, mx, 0.6 * mw, 1.8 * mw)
        along = torch.where(z < 0, _plateau(y, my, mh, 3.0 * mh), _plateau(y, my, 2.0 * mh, 6.0 * mh))
        dy = dy - (MOUTH_OPEN_PIXELS * mouth_open) * seam * across * along
    if blink > 0:
        for name in ("left_eye", "right_eye"):
            ex, ey, ew, eh = regions[name]
            lid_drop = 1.8 * eh * blink
            across = _plateau(x, ex, 0.9 * ew, 1.5 * ew)
            # 1 over the eye opening, rising from between brow and lid (no folds: the rise is longer than the drop).
            along = _smoothstep(ey - 2.9 * eh, ey - 0.1 * eh, y) * (1.0 - _smoothstep(ey + eh, ey + 2.5 * eh, y))
            dy = dy - lid_drop * across * along
    return torch.zeros_like(x), dy


def _sample_bilinear(image, x, y):
    """Bilinear sample of a CxHxW image at pixel coordinates (x, y), edges repeated.

    Written with separate elementwise ops (not grid_sample) so every value is
    rounded the same way on every CPU.
    """
    channels, height, width = image.shape
    x = x.clamp(0.0, width - 1.0)
    y = y.clamp(0.0, height - 1.0)
    x0, y0 = x.floor(), y.floor()
    wx, wy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    flat = image.reshape(channels, -1)

    def at(yi, xi):
        return flat[:, (yi * width + xi).reshape(-1)].reshape(channels, *x.shape)

    top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
    return (top * (1.0 - wy) + bottom * wy).clamp(0.0, 1.0)
