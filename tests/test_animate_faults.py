"""Faults a user of `lpperf animate`, lpperf.animation.video, lpperf.models.weights and the Animator can hit: each is
refused with one clear line before anything heavy loads, no input is ever overwritten, and an
interrupted or terminated run leaves no partial file.

Networks: tests/test_frame.py's small_networks (smaller than lpperf.models.TINY) stand in for the
CPU's TINY networks, so a frame costs well under a second.
"""

import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lpperf import cli, models
from lpperf.animation import pipeline, video
from lpperf.models import sample, weights
from helpers import small_networks, write_media

pytest.importorskip("av", reason="animate needs the video extra (PyAV)")
Image = pytest.importorskip("PIL.Image", reason="animate needs the video extra (Pillow)")

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def media(tmp_path):
    """A 256x256 source PNG, a 2-frame driving MP4 and the same frames as a folder of PNGs."""
    return write_media(tmp_path, 2)


def animate_args(media, tmp_path, **changes) -> list[str]:
    options = {"--source": str(media["source"]), "--driving": str(media["driving"]), "--weights": "synthetic",
               "--device": "cpu", "--out": str(tmp_path / "out.mp4"), **changes}
    return ["animate", *[item for pair in options.items() if pair[1] is not None for item in pair]]


def error_line(capsys) -> str:
    """The single stderr line of a failed command (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".partial")


# ------------------------------------------------------------------------------- no input overwritten


def test_out_that_is_the_driving_video_is_refused_and_the_video_kept(tmp_path, capsys, media, no_loading):
    before = media["driving"].read_bytes()
    code = cli.main(animate_args(media, tmp_path, **{"--out": str(media["driving"])}))
    assert code == 2
    line = error_line(capsys)
    assert "is the driving video" in line and str(media["driving"]) in line and "choose another" in line
    assert media["driving"].read_bytes() == before


@pytest.mark.parametrize("spelling", ["relative", "dotted", "symlink", "hard link"])
def test_out_is_the_driving_video_by_another_path(tmp_path, capsys, media, no_loading, spelling):
    before = media["driving"].read_bytes()
    if spelling == "relative":
        out = "driving.mp4"  # the test runs in tmp_path
    elif spelling == "dotted":
        out = str(tmp_path / "frames" / ".." / "driving.mp4")
    elif spelling == "symlink":
        out = str(tmp_path / "link.mp4")
        os.symlink(media["driving"], out)
    else:
        out = str(tmp_path / "hard.mp4")
        os.link(media["driving"], out)
    assert cli.main(animate_args(media, tmp_path, **{"--out": out})) == 2
    assert "is the driving video" in error_line(capsys)
    assert media["driving"].read_bytes() == before


def test_out_that_is_the_source_image_is_refused(tmp_path, capsys, media, no_loading):
    source = tmp_path / "face.mp4"  # a PNG under an .mp4 name: Pillow reads it by its content
    source.write_bytes(media["source"].read_bytes())
    assert cli.main(animate_args(media, tmp_path, **{"--source": str(source), "--out": str(source)})) == 2
    assert "is the source image" in error_line(capsys)
    assert source.read_bytes() == media["source"].read_bytes()


def test_out_beside_the_frames_of_a_driving_folder_is_allowed(media):
    """An .mp4 in the driving folder replaces no frame (frames are images), so nothing is refused."""
    video.check_not_an_input(media["folder"] / "out.mp4", {"the driving folder": media["folder"]})
    with pytest.raises(ValueError, match="is a frame of the driving folder"):
        video.check_not_an_input(media["folder"] / "000.png", {"the driving folder": media["folder"]})


# --------------------------------------------------------------------------- SIGTERM and SIGHUP


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGHUP])
def test_a_termination_signal_removes_the_partial_video(tmp_path, capsys, media, small_nets, monkeypatch,
                                                        signal_number):
    written = video.VideoWriter.write

    def write_then_signal(self, rgb):
        written(self, rgb)
        assert leftovers(tmp_path), "the partial video should exist while frames are written"
        signal.raise_signal(signal_number)

    monkeypatch.setattr(video.VideoWriter, "write", write_then_signal)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert cli.main(animate_args(media, tmp_path)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == handlers  # restored


SLOW_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import small_networks
from lpperf import cli
from lpperf.animation import video
from lpperf.models import weights
weights.tiny_networks = lambda seed=0: small_networks()
written = video.VideoWriter.write
def write_then_wait(self, rgb):
    written(self, rgb)
    Path("first-frame-written").touch()
    time.sleep(120)
video.VideoWriter.write = write_then_wait
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_to_a_real_animate_process_removes_the_partial_video(tmp_path):
    command = [sys.executable, "-c", SLOW_WRITER.format(tests=str(TESTS)), "animate", "--sample", "--frames", "3",
               "--device", "cpu", "--out", "out.mp4"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "first-frame-written").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "animate wrote no frame in 180 s"
            time.sleep(0.1)
        assert [name for name in leftovers(tmp_path) if name.endswith(".partial")]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------- weights


def appearance_state() -> dict:
    return models.build(models.FEATURE_NET).state_dict()


def weights_folder(tmp_path: Path, appearance) -> Path:
    """A folder with the five official file names: the appearance file holds `appearance`, the others
    are never reached (the appearance file is read first)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for filename in [*weights.OFFICIAL_FILES.values(), weights.RETARGETING_FILE]:
        (folder / filename).write_bytes(b"")
    torch.save(appearance, folder / weights.OFFICIAL_FILES[models.FEATURE_NET])
    return folder


def test_a_checkpoint_with_integer_keys_is_named(tmp_path):
    folder = weights_folder(tmp_path, {1: torch.zeros(2), "first.conv.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"appearance_feature_extractor\.pth has key\(s\) that are not names "
                                           r"\(1 of type int\): it is not a state dict"):
        weights.load_official(folder)


@pytest.mark.parametrize("content, reason", [
    (b"not a checkpoint", "not a PyTorch checkpoint or is damaged"),
    (b"PK\x03\x04truncated", "not a PyTorch checkpoint or is damaged"),
    (None, "holds pickled Python objects"),
    ("torchscript", "it is a TorchScript archive (a scripted or traced model), not a state dict"),
])
def test_an_unreadable_checkpoint_never_suggests_unsafe_loading(tmp_path, recwarn, content, reason):
    folder = weights_folder(tmp_path, {})
    target = folder / weights.OFFICIAL_FILES[models.FEATURE_NET]
    if content is None:
        torch.save({"first.conv.weight": torch.nn.Identity()}, target)  # a pickled module: needs arbitrary code
    elif content == "torchscript":
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(target))
    else:
        target.write_bytes(content)
    with pytest.raises(RuntimeError) as caught:
        weights.load_official(folder)
    message = str(caught.value)
    assert str(target) in message and reason in message
    assert "weights_only" not in message.replace("weights_only=True", "") and "will likely succeed" not in message
    assert not [warning for warning in recwarn if "TorchScript" in str(warning.message)]  # said once, by lpperf


@pytest.mark.parametrize("change, message", [
    (lambda value: value.to(torch.complex64), r"first\.conv\.weight has dtype torch\.complex64, expected a real "
                                              r"floating dtype"),
    (lambda value: torch.full_like(value, math.nan), r"first\.conv\.weight holds \d+ NaN or infinite value"),
    (lambda value: value.to(torch.int32), r"first\.conv\.weight has dtype torch\.int32, expected a real floating"),
    (lambda value: value.to("meta"), r"first\.conv\.weight is a tensor without data \(the meta device"),
])
def test_weights_are_checked_for_dtype_and_finiteness(tmp_path, change, message):
    state = appearance_state()
    state["first.conv.weight"] = change(state["first.conv.weight"])
    folder = weights_folder(tmp_path, state)
    with pytest.raises(RuntimeError, match=r"appearance_feature_extractor\.pth: " + message):
        weights.load_official(folder)


def test_a_weights_folder_is_checked_before_anything_loads(tmp_path, capsys, media, no_loading):
    folder = tmp_path / "partial-weights"
    folder.mkdir()
    (folder / weights.OFFICIAL_FILES[models.FEATURE_NET]).write_bytes(b"")
    assert cli.main(animate_args(media, tmp_path, **{"--weights": str(folder)})) == 2
    line = error_line(capsys)
    assert str(folder) in line and "lacks 4 of the 5 official checkpoint files" in line
    assert "motion_extractor.pth" in line and "stitching_retargeting_module.pth" in line


@pytest.mark.parametrize("call, argument", [
    (lambda: weights.load_official(None), "directory"),
    (lambda: weights.save_official(None, "x"), "nets"),
    (lambda: weights.save_official({}, None), "directory"),
    (lambda: weights.synthetic(None), "seed"),
    (lambda: weights.tiny_networks(None), "seed"),
    (lambda: weights.load_networks(None, None), "device"),
    (lambda: weights.load_networks(3, "cpu"), "weights"),
])
def test_none_and_wrong_types_into_weights_name_the_argument(call, argument):
    with pytest.raises((TypeError, ValueError), match=rf"^{argument} must be"):
        call()


# ------------------------------------------------------------------------------- images and videos


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height (no pixel data: Pillow reads only the header to open it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_a_huge_source_image_is_one_clear_line(tmp_path, capsys, media, no_loading):
    huge = tmp_path / "huge.png"
    png_header_only(huge, 20000, 20000)
    assert cli.main(animate_args(media, tmp_path, **{"--source": str(huge)})) == 2
    line = error_line(capsys)
    assert str(huge) in line and "far larger than 256x256 pixels" in line
    assert "pre-cropped to 256x256 around the face" in line


def test_image_size_is_checked_from_the_header(tmp_path):
    big = tmp_path / "big.png"
    png_header_only(big, 4000, 3000)  # no pixel data: decoding it would fail, the size check comes first
    with pytest.raises(ValueError, match=r"is 4000x3000 pixels, expected 256x256"):
        video.read_image(big)


@pytest.mark.parametrize(("suffix", "pixels"), [
    (".tif", np.full((256, 256), np.nan, dtype=np.float32)),  # converted to 8 bits, NaN would read as black
    (".tif", np.full((256, 256), 0.5, dtype=np.float32)),  # so would any float: Pillow clips, it does not scale
    (".png", np.full((256, 256), 40000, dtype=np.uint16)),  # and 16-bit grey clips to white
], ids=["float NaN", "float", "16-bit grey"])
def test_an_image_of_more_than_8_bits_a_channel_is_refused_not_clipped(tmp_path, capsys, media, no_loading, suffix,
                                                                        pixels):
    wide = tmp_path / f"wide{suffix}"
    Image.fromarray(pixels).save(wide)
    with pytest.raises(ValueError, match=r"holds '(I|F)[^']*' pixels \(grey of 16 or 32 bits, or floats\)"):
        video.read_image(wide)
    assert cli.main(animate_args(media, tmp_path, **{"--source": str(wide)})) == 2
    line = error_line(capsys)
    assert str(wide) in line and "8-bit RGB PNG or JPEG" in line
    driving = media["folder"] / f"500{wide.suffix}"  # a driving folder's images are checked the same way
    wide.rename(driving)
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(media["folder"])})) == 2
    assert str(driving) in error_line(capsys)


def test_missing_video_support_is_found_before_anything_loads(tmp_path, capsys, media, no_loading, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(media["folder"])})) == 2
    line = error_line(capsys)
    assert "PyAV" in line and "pip install 'lpperf[video]'" in line


def test_missing_pillow_is_found_before_anything_loads(tmp_path, capsys, media, no_loading, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert cli.main(["animate", "--sample", "--device", "cpu", "--out", "demo.mp4"]) == 2
    assert "Pillow" in error_line(capsys)


def test_a_driving_folder_with_mixed_sizes_is_refused_before_anything_loads(tmp_path, capsys, media, no_loading):
    Image.new("RGB", (128, 128)).save(media["folder"] / "999.png")
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(media["folder"])})) == 2
    line = error_line(capsys)
    assert "999.png is 128x128 pixels, expected 256x256" in line


def test_a_driving_folder_with_an_unreadable_image_is_refused_before_anything_loads(tmp_path, capsys, media,
                                                                                      no_loading):
    (media["folder"] / "500.png").write_bytes(b"not an image")
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(media["folder"])})) == 2
    line = error_line(capsys)
    assert "cannot read image" in line and "500.png" in line


def test_a_driving_video_of_the_wrong_size_is_refused_before_anything_loads(tmp_path, capsys, media, no_loading):
    wrong = tmp_path / "small.mp4"
    with video.VideoWriter(wrong, 25) as writer:
        writer.write(np.zeros((128, 128, 3), np.uint8))
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(wrong)})) == 2
    assert "driving video" in (line := error_line(capsys)) and "128x128 pixels, expected 256x256" in line


def test_a_driving_file_whose_frames_do_not_decode_is_refused_before_anything_loads(tmp_path, capsys, media,
                                                                                     no_loading):
    bad = tmp_path / "notes.png"  # FFmpeg opens it by its name and fails only on decoding
    bad.write_bytes(b"not an image at all")
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(bad)})) == 2
    line = error_line(capsys)
    assert str(bad) in line and "cannot decode driving video" in line


def test_an_empty_driving_folder_is_named(tmp_path, capsys, media, no_loading):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(animate_args(media, tmp_path, **{"--driving": str(empty)})) == 2
    assert "holds no images" in error_line(capsys)


@pytest.mark.parametrize("path, suggestion", [
    (".mp4", "animation.mp4"), ("out.avi", "out.mp4"), ("out", "out.mp4"), ("clip.mp4.avi", "clip.mp4"),
    ("out.", "out.mp4"),
])
def test_the_suggested_video_name_is_sensible(tmp_path, path, suggestion):
    with pytest.raises(ValueError) as caught:
        video.check_video_path(tmp_path / path)
    assert f"(e.g. {tmp_path / suggestion})" in str(caught.value)


@pytest.mark.parametrize("call, message", [
    (lambda: video.read_image(None), "^path must be"),
    (lambda: video.DrivingSource(None), "^path must be"),
    (lambda: video.check_video_path(None), "^path must be"),
    (lambda: video.frame_to_array(None), "^frame must be a torch.Tensor"),
    (lambda: video.frame_to_array(torch.zeros(3, 4)), r"^frame must be 3xHxW or 1x3xHxW"),
    (lambda: video.VideoWriter("out.mp4", 0), r"^fps must be a number > 0"),
    (lambda: video.VideoWriter("out.mp4", math.inf), r"^fps must be a number > 0"),
])
def test_bad_arguments_to_video_name_the_argument(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def test_video_writer_refuses_bad_frames_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"frame must be an HxWx3 uint8 array"):
        with video.VideoWriter(tmp_path / "a.mp4") as writer:
            writer.write(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"frame 1 is 32x32 pixels but the video's first frame was 64x64"):
        with video.VideoWriter(tmp_path / "b.mp4") as writer:
            writer.write(np.zeros((64, 64, 3), np.uint8))
            writer.write(np.zeros((32, 32, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- conflicting options


@pytest.mark.parametrize("changes, message", [
    ({"--weights": "/nonexistent", "--synthetic": ""}, "--synthetic and --weights"),
    ({"--weights": "synthetic", "--synthetic": ""}, "--synthetic and --weights"),
    ({"--batch": "65"}, "--batch must be at most 64"),
    ({"--frames": "0"}, "--frames"),
    ({"--sample": ""}, "--sample uses the shipped portrait"),
    ({"--source": None}, "give --source IMAGE and --driving VIDEO_OR_FOLDER, or --sample"),
    ({"--weights": None}, "give --weights DIR"),
])
def test_conflicting_or_missing_options_are_refused_before_anything_loads(tmp_path, capsys, media, no_loading,
                                                                         changes, message):
    args = animate_args(media, tmp_path, **{key: value for key, value in changes.items() if value != ""})
    args += [key for key, value in changes.items() if value == ""]
    assert cli.main(args) == 2
    assert message in error_line(capsys)


# ------------------------------------------------------------------------------------- the sample run


def test_animate_runs_on_the_shipped_sample_with_one_flag(tmp_path, capsys, small_nets):
    import av

    code = cli.main(["animate", "--sample", "--frames", "2", "--device", "cpu", "--out", "demo.mp4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "meaningless" in captured.err and "shipped sample" in captured.err
    assert "wrote demo.mp4: 2 frames" in captured.out
    with av.open(str(tmp_path / "demo.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2
    assert leftovers(tmp_path) == []


def test_the_sample_run_is_the_documented_length(tmp_path, capsys, small_nets, monkeypatch):
    assert (sample.DEMO_FRAMES, sample.CPU_DEMO_FRAMES, sample.FRAMES_PER_SECOND) == (50, 10, 25)  # as --help says
    monkeypatch.setattr(sample, "CPU_DEMO_FRAMES", 1)
    assert cli.main(["animate", "--sample", "--device", "cpu", "--out", "demo.mp4"]) == 0
    assert "wrote demo.mp4: 1 frames at 25 frames/s" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the pipeline


@pytest.fixture(scope="module")
def animator():
    nets = {name: net.eval() for name, net in small_networks().items()}
    animator = pipeline.Animator(nets)
    animator.set_source(sample.portrait())
    animator.set_reference(sample.portrait())
    return animator


@pytest.mark.parametrize("option, ratio, message", [
    ("lip_ratio", torch.tensor([[math.nan, 0.2]]), "lip_ratio contains 1 NaN"),
    ("eye_ratio", torch.tensor([[0.3, math.inf, 0.2]]), "eye_ratio contains 1 infinite"),
    ("eye_ratio", torch.tensor([[0.3, 0.3, 2.0]]), r"eye_ratio values must lie in \[0, 1\], got min 0.3 and max 2$"),
    ("eye_ratio", torch.zeros(2, 3), r"eye_ratio must be 1x3 \(one row, for the one driving frame\), got shape "
                                     r"\(2, 3\)"),
    ("eye_ratio", torch.zeros(3), r"eye_ratio must be 1x3 .*got shape \(3,\); add the batch dimension"),
    ("lip_ratio", [0.1, 0.2], "lip_ratio must be a torch.Tensor"),
])
def test_step_checks_the_ratios_values_and_shapes(animator, option, ratio, message):
    with pytest.raises(ValueError, match=message):
        animator.step(sample.portrait(), **{option: ratio})


@pytest.mark.parametrize("lip_ratio, message", [
    (math.nan, r"lip_ratio must be a finite number in \[0, 1\], got nan"),
    (1.5, r"lip_ratio must be a finite number in \[0, 1\], got 1.5"),
    ("0.5", r"lip_ratio must be a finite number in \[0, 1\], got '0.5'"),
    (True, r"lip_ratio must be a finite number"),
])
def test_set_source_checks_the_lip_ratio(animator, lip_ratio, message):
    with pytest.raises(ValueError, match=message):
        animator.set_source(sample.portrait(), lip_ratio=lip_ratio)


@pytest.mark.parametrize("options, message", [
    ({"driving_multiplier": "2"}, "driving_multiplier must be finite: a real number"),
    ({"lip_normalize_threshold": math.nan}, r"lip_normalize_threshold must be a finite number in \[0, 1\]"),
    ({"stitching": "yes"}, "stitching must be True or False"),
    ({"relative_motion": None}, "relative_motion must be True or False"),
])
def test_animator_options_are_checked(options, message):
    nets = {name: net.eval() for name, net in small_networks().items()}
    with pytest.raises(ValueError, match=message):
        pipeline.Animator(nets, **options)


def test_none_into_the_animator_names_the_argument(animator):
    with pytest.raises(ValueError, match="source image must be a torch.Tensor, got NoneType"):
        animator.set_source(None)
    with pytest.raises(ValueError, match="driving frames must be a torch.Tensor, got NoneType"):
        animator.step(None)
    with pytest.raises(ValueError, match="frames must be an iterable of frame tensors, got NoneType"):
        list(animator.animate(None))
    with pytest.raises(ValueError, match="driving keypoints must be a torch.Tensor, got NoneType"):
        animator.warp(None)
    with pytest.raises(ValueError, match="motion must be a lpperf.animation.pipeline.Motion, got NoneType"):
        animator.driving_keypoints(None)
    with pytest.raises(ValueError, match=r"batch_size must be at most 64"):
        list(animator.animate([sample.portrait()], batch_size=65))


@pytest.mark.parametrize("kwargs, message", [({"seed": None}, "seed must be an int"),
                                             ({"seed": 1.5}, "seed must be an int")])
def test_sample_driving_frames_check_the_seed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(sample.driving_frames(1, **kwargs))


@pytest.mark.parametrize("image", [sample.portrait().double(), sample.portrait().half()])
def test_a_source_image_of_another_float_dtype_is_named(animator, image):
    with pytest.raises(ValueError, match=rf"source image must be float32, got {image.dtype}; .*\.float\(\)"):
        animator.set_source(image)


@pytest.mark.parametrize("quality", ["x", -1, 52, 1.5])
def test_video_quality_is_checked(quality):
    with pytest.raises(ValueError, match=r"quality_crf must be an int from 0 to 51"):
        video.VideoWriter("out.mp4", 25, quality_crf=quality)
