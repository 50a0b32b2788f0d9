"""Reading portraits and driving videos, writing animations: streamed, one frame at a time.

Images are read with Pillow, videos with PyAV (FFmpeg); both come with the `video` extra
(`pip install lpperf[video]`). Frames are 1x3xHxW float32 RGB tensors in [0, 1]. Nothing is
resized: LivePortrait's networks take 256x256 crops, and a frame of another size is an error.

Outputs are written under a temporary name in the destination folder and renamed only once
complete, so an interrupted or failed run never leaves a file that looks finished; inside
`lpperf.util.files.termination_as_interrupt()` SIGTERM and SIGHUP count as an interruption too. An output is never
one of the inputs (check_not_an_input).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from lpperf.util.files import atomic_path
from lpperf.util.validation import IMAGE_SIZE, check_path, check_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_FPS = 25
VIDEO_SUFFIX = ".mp4"
MAX_CRF = 51  # H.264's worst quality
_INSTALL_HINT = "install the video extra: pip install 'lpperf[video]'"


def _pillow():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise RuntimeError(f"reading images needs Pillow; {_INSTALL_HINT}") from None
    return Image, UnidentifiedImageError


def _pyav():
    try:
        import av
    except ImportError:
        raise RuntimeError(f"reading and writing videos needs PyAV; {_INSTALL_HINT}") from None
    return av


def check_video_support() -> None:
    """Raise, naming what to install, unless Pillow and PyAV (the `video` extra) can be imported."""
    _pillow()
    _pyav()


def array_to_frame(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 1x3xHxW float32 in [0, 1]."""
    return torch.from_numpy(np.require(rgb, requirements=['C', 'W'])).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def frame_to_array(frame: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) float frame in [0, 1] -> HxWx3 uint8 RGB (rounded to the nearest level)."""
    check_tensor(frame, "frame")
    if frame.dim() not in (3, 4) or frame.shape[-3] != 3 or (frame.dim() == 4 and frame.shape[0] != 1):
        raise ValueError(f"frame must be 3xHxW or 1x3xHxW (RGB), got shape {tuple(frame.shape)}")
    if frame.dim() == 4:
        frame = frame[0]
    levels = (frame.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return levels.permute(1, 2, 0).cpu().numpy()


def _crop_hint(size: int) -> str:
    return (f"the portrait and driving frames must be pre-cropped to {size}x{size} around the face (lpperf "
            "never resizes)")


def _check_dimensions(width: int, height: int, what: str, size: int) -> None:
    if (height, width) != (size, size):
        raise ValueError(f"{what} is {width}x{height} pixels, expected {size}x{size}: {_crop_hint(size)}")


def check_size(frame: torch.Tensor, what: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    height, width = frame.shape[-2:]
    _check_dimensions(width, height, what, size)
    return frame


@contextlib.contextmanager
def _opened_image(path: Path, size: int | None) -> Iterator:
    """The Pillow image at `path`, opened (only its header is read) and its size checked before anything
    is decoded, so a huge image costs nothing."""
    Image, UnidentifiedImageError = _pillow()
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist or is not a file; give the path of a PNG or JPEG")
    try:
        image = Image.open(path)
    except Image.DecompressionBombError:
        expected = size or IMAGE_SIZE
        raise ValueError(f"image {path} is far larger than {expected}x{expected} pixels (Pillow refuses to decode "
                         f"it); {_crop_hint(expected)}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path} ({error}); give a readable PNG or JPEG file") from None
    with image:
        if size is not None:
            _check_dimensions(image.width, image.height, f"image {path}", size)
        if _wide_mode(image.mode):
            raise ValueError(f"image {path} holds {image.mode!r} pixels (grey of 16 or 32 bits, or floats), which "
                             "lpperf does not convert to 8-bit colour (a float image has no fixed range, and may hold "
                             "NaN); save it as an 8-bit RGB PNG or JPEG")
        yield image


def _wide_mode(mode: str) -> bool:
    """Pillow's grey modes of more than 8 bits ("I", "F", "I;16" and its byte orders); Pillow reads colour
    images of 16 bits a channel as 8-bit RGB itself."""
    return mode in ("I", "F") or mode.startswith(("I;", "F;"))


def read_image(path: str | Path, size: int | None = IMAGE_SIZE) -> torch.Tensor:
    """An image file as a 1x3xHxW float tensor in [0, 1] (RGB; alpha dropped, grey expanded).

    The size is checked from the file's header, before the pixels are decoded.
    """
    path = check_path(path, "path")
    with _opened_image(path, size) as image:
        try:
            rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read image {path} ({error}); give a readable PNG or JPEG file") from None
    return array_to_frame(rgb)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class DrivingSource:
    """A driving video file or a folder of frame images; frames() streams them in order.

    Opening one checks what can be checked without decoding frames: a folder's every image is
    readable and of the right size (headers only), a video has a video stream of the right size.
    """

    def __init__(self, path: str | Path, size: int | None = IMAGE_SIZE):
        self.path = check_path(path, "path")
        self.size = size
        if self.path.is_dir():
            self.files = image_files(self.path)
            if not self.files:
                raise ValueError(f"driving folder {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                 "give a video file or a folder of 256x256 frames")
            for file in self.files:
                with _opened_image(file, size):
                    pass
            self.fps = Fraction(DEFAULT_FPS)
        elif self.path.is_file():
            self.files = None
            self.fps = self._probe_video()
        else:
            raise FileNotFoundError(f"driving video {self.path} does not exist; give a video file or a folder "
                                    "of 256x256 frame images")

    def _open_video(self):
        av = _pyav()
        try:
            container = av.open(str(self.path))
            if not container.streams.video:
                container.close()
                raise ValueError("it has no video stream")
        except (av.FFmpegError, OSError, ValueError) as error:
            raise ValueError(f"cannot read driving video {self.path} ({error}); give a video FFmpeg can decode "
                             "(e.g. .mp4) or a folder of frame images") from None
        return container

    def _probe_video(self) -> Fraction:
        with contextlib.closing(self._open_video()) as container:
            stream = container.streams.video[0]
            if self.size is not None and stream.width and stream.height:
                # the stream's size is its first frame's
                _check_dimensions(stream.width, stream.height, f"frame 0 of driving video {self.path}", self.size)
            rate = stream.average_rate
            first = self._first_frame(container)
            if self.size is not None:  # a stream without a size in its header shows it here
                _check_dimensions(first.width, first.height, f"frame 0 of driving video {self.path}", self.size)
        return Fraction(rate) if rate else Fraction(DEFAULT_FPS)

    def _first_frame(self, container):
        """The first frame, decoded: a file whose header opens but whose frames do not decode (a damaged
        video, a text file named .png) is refused here, before any network loads."""
        av = _pyav()
        try:
            return next(container.decode(video=0))
        except (av.FFmpegError, StopIteration) as error:
            why = "it holds no frame" if isinstance(error, StopIteration) else str(error)
            raise ValueError(f"cannot decode driving video {self.path} ({why}); give a video FFmpeg can decode "
                             "(e.g. .mp4) or a folder of frame images") from None

    def frames(self) -> Iterator[torch.Tensor]:
        """Each frame as 1x3xHxW float32 in [0, 1], read only when asked for."""
        if self.files is not None:
            for file in self.files:
                yield read_image(file, self.size)
            return
        av = _pyav()
        with contextlib.closing(self._open_video()) as container:
            try:
                for number, decoded in enumerate(container.decode(video=0)):
                    frame = array_to_frame(decoded.to_ndarray(format="rgb24"))
                    yield frame if self.size is None else check_size(
                        frame, f"frame {number} of driving video {self.path}", self.size)
            except av.FFmpegError as error:
                raise ValueError(f"cannot decode driving video {self.path} ({error}); the file may be "
                                 "truncated or damaged") from None


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: spelt differently, through a symbolic link or as hard links."""
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist
        return False


def check_not_an_input(out: str | Path, inputs: dict[str, Path]) -> None:
    """Refuse an output path that is one of the files read: `inputs` maps a description ("the driving
    video") to a file, or to a folder of frames, each of which counts."""
    out = Path(out)
    for what, path in inputs.items():
        path = Path(path)
        files = [(what, path)] if not path.is_dir() else [(f"a frame of {what}", file) for file in image_files(path)]
        for description, file in files:
            if _same_file(out, file):
                raise ValueError(f"output {out} is {description} {file}; writing it would destroy that input: "
                                 "choose another output path")


def _suggested_video_name(path: Path) -> Path:
    """`path` renamed to end in .mp4: its suffix replaced, or a name given where it has only a suffix."""
    base = path.name[:-len(path.suffix)] if path.suffix else path.name
    if base.lower().endswith(VIDEO_SUFFIX):  # "clip.mp4.avi", or ".mp4" alone (a hidden name without a suffix)
        base = base[:-len(VIDEO_SUFFIX)]
    return path.with_name((base.rstrip(".") or "animation") + VIDEO_SUFFIX)


def check_video_path(path: str | Path) -> Path:
    """`path` if a video can be written there: an .mp4 name (the one container VideoWriter writes), not a
    folder, in a folder that exists."""
    path = check_path(path, "path")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the path of the .mp4 file to write")
    if path.suffix.lower() != VIDEO_SUFFIX:
        raise ValueError(f"cannot write {path}: lpperf writes H.264 video in an MP4 container, so the file name "
                         f"must end in {VIDEO_SUFFIX} (e.g. {_suggested_video_name(path)})")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist; create it or choose another path")
    return path


class VideoWriter:
    """Encodes RGB frames one at a time into an H.264 MP4 (MPEG-4 part 2 where FFmpeg lacks libx264).

    `path` must end in .mp4. Use as a context manager: the file appears at `path` only when the block
    ends without error.
    """

    def __init__(self, path: str | Path, fps: Fraction | int = DEFAULT_FPS, quality_crf: int = 18):
        self.path = check_video_path(path)
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a number > 0 (frames per second), got {fps!r}")
        if isinstance(quality_crf, bool) or not isinstance(quality_crf, int) or not 0 <= quality_crf <= MAX_CRF:
            raise ValueError(f"quality_crf must be an int from 0 to {MAX_CRF} (H.264's constant rate factor: "
                             f"0 lossless, 18 visually lossless), got {quality_crf!r}")
        self.fps = Fraction(fps)
        self.quality_crf = quality_crf
        self.frames_written = 0
        self._atomic = None
        self._container = None
        self._stream = None

    def __enter__(self) -> "VideoWriter":
        av = _pyav()
        self._atomic = atomic_path(self.path)
        temporary = self._atomic.__enter__()
        try:
            self._container = av.open(str(temporary), mode="w", format="mp4")
        except BaseException as error:
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def write(self, rgb: np.ndarray) -> None:
        """One HxWx3 uint8 RGB frame; the first frame fixes the video's size."""
        av = _pyav()
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = f"{rgb.dtype} of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ValueError(f"frame must be an HxWx3 uint8 array (RGB; see frame_to_array), got {got}")
        if self._stream is not None and rgb.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(f"frame {self.frames_written} is {rgb.shape[1]}x{rgb.shape[0]} pixels but the video's "
                             f"first frame was {self._stream.width}x{self._stream.height}; every frame of a video "
                             "has one size")
        if self._stream is None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            options = {"crf": str(self.quality_crf)} if codec == "libx264" else {}
            self._stream = self._container.add_stream(codec, rate=self.fps, options=options)
            self._stream.height, self._stream.width = rgb.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is None:
                if self._stream is None:
                    raise ValueError(f"no frames to write to {self.path}: the driving input gave none")
                for packet in self._stream.encode():  # flush the encoder
                    self._container.mux(packet)
        except BaseException as failure:
            self._container.close()
            self._atomic.__exit__(type(failure), failure, failure.__traceback__)
            raise
        self._container.close()
        self._atomic.__exit__(kind, error, traceback)
