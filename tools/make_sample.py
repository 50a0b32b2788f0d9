"""Build lpperf/data/portrait.npz from the astronaut photograph bundled with scikit-image.

The photograph (Eileen Collins, NASA, public domain) is cropped the way
LivePortrait's cropper crops a source image: a square of 2.3x the face
landmark box, shifted up by 0.125 of its size along the eye-to-mouth axis and
rotated so that axis is vertical, resampled to 256x256.

scikit-image is needed only here, never at run time. Run from the repository
root:  python tools/make_sample.py
"""

from pathlib import Path

import numpy as np
from skimage import data, transform

OUT = Path(__file__).resolve().parent.parent / "lpperf" / "data" / "portrait.npz"
CROP_SIZE = 256

# Read off the 512x512 photograph by eye (x, y in pixels), zoomed 8x.
FACE_BOX = (182.5, 87.0, 270.0, 176.0)  # cheek to cheek, eyebrows to chin
LEFT_EYE = (203.0, 100.5)  # the eye on the image's left
RIGHT_EYE = (245.6, 103.0)
MOUTH = (223.5, 146.0)  # centre of the (smiling, closed-teeth) mouth
EYE_HALF_SIZE = (10.5, 3.5)  # half width, half height of an eye opening
MOUTH_HALF_SIZE = (20.5, 8.0)  # corner to corner, upper lip to lower lip

# LivePortrait's default source crop (crop_config: scale, vy_ratio).
CROP_SCALE = 2.3
CROP_SHIFT_UP = 0.125


def crop_transform():
    """Similarity transform mapping crop pixel coordinates to photograph coordinates."""
    eye_mid = (np.array(LEFT_EYE) + np.array(RIGHT_EYE)) / 2
    down = np.array(MOUTH) - eye_mid
    down /= np.linalg.norm(down)  # face "down" axis in the photograph
    right = np.array([down[1], -down[0]])  # perpendicular, pointing to the image's right

    x0, y0, x1, y1 = FACE_BOX
    size = CROP_SCALE * max(x1 - x0, y1 - y0)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - CROP_SHIFT_UP * size * down

    pixel = size / CROP_SIZE  # photograph pixels per crop pixel
    # crop (u, v) -> photo: centre + (u - c) * pixel * right + (v - c) * pixel * down
    # (c = (CROP_SIZE - 1) / 2 puts the crop's pixel centres symmetric around `centre`).
    c = (CROP_SIZE - 1) / 2
    matrix = np.eye(3)
    matrix[:2, 0] = pixel * right
    matrix[:2, 1] = pixel * down
    matrix[:2, 2] = centre - c * pixel * (right + down)
    return transform.AffineTransform(matrix=matrix), pixel


def main():
    photo = data.astronaut()  # 512x512x3 uint8
    crop_to_photo, pixel = crop_transform()
    crop = transform.warp(photo, crop_to_photo, output_shape=(CROP_SIZE, CROP_SIZE), order=1, mode="edge")
    image = np.clip(np.rint(crop * 255), 0, 255).astype(np.uint8)

    photo_to_crop = crop_to_photo.inverse

    def region(centre, half_size):
        (x, y), = photo_to_crop(np.array([centre]))
        return np.array([x, y, half_size[0] / pixel, half_size[1] / pixel], dtype=np.float32)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        image=image,  # 256x256x3 uint8, RGB
        left_eye=region(LEFT_EYE, EYE_HALF_SIZE),  # x, y, half width, half height (crop pixels)
        right_eye=region(RIGHT_EYE, EYE_HALF_SIZE),
        mouth=region(MOUTH, MOUTH_HALF_SIZE),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); crop pixel = {pixel:.4f} photo pixels")


if __name__ == "__main__":
    main()
