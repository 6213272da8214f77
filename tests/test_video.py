"""Videos: PyAV reader and writer, `p3m matte` on video files, temporal smoothing, bad input."""
from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

av = pytest.importorskip("av", reason="video support needs PyAV (the 'video' extra)")

from p3m.cli import main  # noqa: E402
from p3m.inference.matter import Matter  # noqa: E402
from p3m.inference.video import TemporalSmoother, VideoOptions, matte_video, video_targets  # noqa: E402
from p3m.io import read_image  # noqa: E402
from p3m.io.video import VideoReader, VideoReadError, VideoWriter  # noqa: E402

_spec = importlib.util.spec_from_file_location("face_clips", Path(__file__).parent / "fixtures" / "face_clips.py")
face_clips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(face_clips)
write_clip, write_sound = face_clips.write_clip, face_clips.write_sound


def _scene(index: int, height: int, width: int) -> np.ndarray:
    """A frame with a red marker in the top-left corner and a bright figure moving right."""
    image = np.full((height, width, 3), (40, 90, 60), np.uint8)
    image[: height // 4, : width // 4] = (230, 20, 20)
    left = width // 4 + 2 * index
    image[height // 3:, left: left + width // 3] = (220, 180, 150)
    return image


def _write_clip(path, width=320, height=240, frames=50, audio=True, **options):
    """A clip of :func:`_scene` frames (H.264 4:2:0), with a mono AAC tone unless ``audio`` is False;
    ``options`` as in ``face_clips.write_clip`` (rate, rotation, hflip, pts, time_base)."""
    return write_clip(path, (_scene(index, height, width) for index in range(frames)), audio=audio, **options)


def _bad_videos(folder):
    """Each hostile case, named as a video: {file: expected message}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.mp4").write_text("this is not a video\n" * 20)
    (folder / "playlist.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n/etc/hostname\n#EXT-X-ENDLIST\n")
    clip = _write_clip(folder.parent / "source_for_truncation.mp4", width=64, height=64, frames=5, audio=False)
    data = clip.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    clip.unlink()
    write_sound(folder / "sound_only.mp4")
    write_sound(folder / "no_frames.mkv", empty_video=True)
    os.mkfifo(folder / "pipe.mp4")
    return {"pipe.mp4": "not a regular file",
            "notes.mp4": "not a video file, or truncated", "playlist.mp4": "not a video file, or truncated",
            "truncated.mp4": "not a video file, or truncated", "sound_only.mp4": "no video stream",
            "no_frames.mkv": "no video frames"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2 s, 25 fps, 320x240, with a mono AAC track."""
    return _write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    """8 frames, 25 fps, 128x96, with a mono AAC track."""
    return _write_clip(tmp_path_factory.mktemp("clips") / "short.mp4", width=128, height=96, frames=8)


@pytest.fixture(scope="module")
def matter(r34_checkpoint):
    return Matter(weights=r34_checkpoint, method="resize", device="cpu")


def test_reader_reports_frames_rate_duration_and_audio(clip):
    with VideoReader(clip) as reader:
        assert (reader.width, reader.height) == (320, 240)
        assert reader.frame_rate == 25 and reader.frame_count == 50 and reader.has_audio
        assert reader.duration == pytest.approx(2.0, abs=0.05)
        frames = list(reader)
    assert len(frames) == 50
    assert [frame.time for frame in frames] == pytest.approx([index / 25 for index in range(50)], abs=1e-6)
    assert all(frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8 for frame in frames)
    assert np.abs(frames[7].image.astype(int) - _scene(7, 240, 320)).mean() < 3


@pytest.mark.parametrize("rotation, hflip, upright", [
    (90, False, lambda image: np.rot90(image, 1)),
    (180, False, lambda image: np.rot90(image, 2)),
    (270, False, lambda image: np.rot90(image, 3)),
    (0, True, lambda image: image[:, ::-1]),
])
def test_reader_turns_frames_upright(tmp_path, rotation, hflip, upright):
    path = _write_clip(tmp_path / "turned.mp4", width=96, height=64, frames=2, rotation=rotation, hflip=hflip,
                       audio=False)
    expected = upright(_scene(0, 64, 96))
    with VideoReader(path) as reader:
        first = next(iter(reader)).image
        assert (reader.height, reader.width) == expected.shape[:2]
    assert first.shape == expected.shape
    assert np.abs(first.astype(int) - expected).mean() < 3


def test_writer_keeps_variable_timestamps_and_copies_audio(tmp_path, clip):
    pts = [0, 40, 100, 120, 250, 260, 400]
    source = _write_clip(tmp_path / "vfr.mkv", width=64, height=48, frames=len(pts), pts=pts,
                         time_base=Fraction(1, 1000), audio=False)
    with VideoReader(source) as reader:
        frames = list(reader)
        assert [frame.time for frame in frames] == pytest.approx([value / 1000 for value in pts])
        with VideoWriter(tmp_path / "copy.mp4", "colour", reader.frame_rate, reader.time_base,
                         audio_from=clip) as writer:
            for frame in frames:
                writer.write(frame.image, frame.pts)
    with VideoReader(tmp_path / "copy.mp4") as copy:
        assert copy.has_audio
        assert [frame.time for frame in copy] == pytest.approx([value / 1000 for value in pts], abs=1e-3)


def test_writer_pads_odd_sizes_for_4_2_0_and_keeps_them_for_prores(tmp_path):
    image = _scene(0, 61, 81)
    rgba = np.dstack([image, np.full((61, 81), 200, np.uint8)])
    for name, kind, frame in (("odd.mp4", "colour", image), ("odd.mov", "rgba", rgba)):
        with VideoWriter(tmp_path / name, kind, Fraction(25), Fraction(1, 25)) as writer:
            writer.write(frame, 0)
    with VideoReader(tmp_path / "odd.mp4") as reader:
        padded = next(iter(reader)).image
    assert padded.shape == (62, 82, 3)
    assert np.abs(padded[:61, :81].astype(int) - image).mean() < 4
    with av.open(str(tmp_path / "odd.mov")) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="rgba")
    assert decoded.shape == (61, 81, 4)
    assert np.abs(decoded[..., 3].astype(int) - 200).max() <= 1


def test_bad_videos_are_one_clear_error_each(tmp_path):
    expected = _bad_videos(tmp_path / "bad")
    for name, message in expected.items():
        path = tmp_path / "bad" / name
        with pytest.raises(VideoReadError) as error:
            VideoReader(path)
        text = str(error.value)
        assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text


def test_matte_command_on_videos_images_and_bad_files(tmp_path, r34_checkpoint, matter, capsys):
    folder = tmp_path / "in"
    expected_errors = _bad_videos(folder / "bad")
    _write_clip(folder / "short.mp4", width=128, height=96, frames=8)
    _write_clip(folder / "turned.mov", width=128, height=96, frames=3, rotation=90, audio=False)
    from PIL import Image

    Image.fromarray(_scene(0, 96, 80)).save(folder / "photo.png")
    out = tmp_path / "out"
    status = main(["matte", str(folder), "-o", str(out), "--weights", str(r34_checkpoint), "--method", "resize",
                   "--output", "alpha,composite,rgba", "--foreground", "original", "--background", "0,0,255",
                   "--quiet"])
    assert status == 1
    err = capsys.readouterr().err
    for name, message in expected_errors.items():
        assert f"{folder / 'bad' / name}: {message}" in err
    assert "3 done, 0 skipped (outputs exist), 6 failed" in err
    written = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert written == ["alpha/photo.png", "alpha/short.mp4", "alpha/turned.mp4", "composite/photo.png",
                       "composite/short.mp4", "composite/turned.mp4", "rgba/photo.png", "rgba/short.mov",
                       "rgba/turned.mov"]

    with VideoReader(folder / "short.mp4") as reader:
        sources = list(reader)
    expected_alphas = [np.rint(matter.predict(frame.image).alpha * 255) for frame in sources]
    for name, audio in (("alpha/short.mp4", False), ("composite/short.mp4", True), ("rgba/short.mov", True)):
        with VideoReader(out / name) as reader:
            assert reader.frame_rate == 25 and reader.has_audio is audio, name
            assert reader.duration == pytest.approx(8 / 25, abs=0.05), name
            frames = list(reader)
        assert [frame.time for frame in frames] == pytest.approx([frame.time for frame in sources], abs=1e-3)
        assert all(frame.image.shape == (96, 128, 3) for frame in frames), name
    with VideoReader(out / "alpha/short.mp4") as reader:
        for frame, expected in zip(reader, expected_alphas):
            error = np.abs(frame.image[..., 0].astype(np.float32) - expected)
            assert error.mean() < 1.5 and np.percentile(error, 99) < 8  # H.264 at CRF 12, limited range
    with av.open(str(out / "rgba/short.mov")) as container:
        for frame, expected in zip(container.decode(video=0), expected_alphas):
            alpha = frame.to_ndarray(format="rgba")[..., 3].astype(np.float32)
            assert np.abs(alpha - expected).max() <= 1  # ProRes 4444 keeps alpha losslessly at 12 bits
    with VideoReader(out / "composite/turned.mp4") as reader:
        assert (reader.height, reader.width) == (128, 96)


def test_interrupted_run_leaves_no_video_under_the_final_name(tmp_path, short_clip, matter, monkeypatch):
    calls = []
    original = Matter.predict

    def predict_then_stop(self, image):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, image)

    monkeypatch.setattr(Matter, "predict", predict_then_stop)
    out = tmp_path / "out"
    targets = video_targets(out, short_clip.relative_to(short_clip.parent), ["alpha", "rgba"])
    with pytest.raises(KeyboardInterrupt):
        matte_video(matter, short_clip, targets, VideoOptions(("alpha", "rgba"), foreground="original"))
    assert [path for path in out.rglob("*") if path.is_file()] == []


def test_frames_mode_writes_png_sequences_and_resumes(tmp_path, r34_checkpoint, matter, capsys):
    source = _write_clip(tmp_path / "in" / "short.mp4", width=128, height=96, frames=4, audio=False)
    out = tmp_path / "out"
    args = ["matte", str(source), "-o", str(out), "--weights", str(r34_checkpoint), "--method", "resize",
            "--output", "alpha,trimap", "--frames", "--alpha-depth", "16", "--quiet"]
    assert main(args) == 0
    with VideoReader(source) as reader:
        sources = list(reader)
    alphas = sorted((out / "alpha" / "short").iterdir())
    assert [path.name for path in alphas] == [f"{index:06d}.png" for index in range(4)]
    assert len(list((out / "trimap" / "short").iterdir())) == 4
    for path, frame in zip(alphas, sources):
        from PIL import Image

        written = np.asarray(Image.open(path)).astype(np.float64) / 65535
        np.testing.assert_allclose(written, matter.predict(frame.image).alpha, atol=1 / 65535)
    capsys.readouterr()
    assert main(args) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().err


def test_predict_video_yields_the_per_frame_matte(short_clip, matter):
    mattes = list(matter.predict_video(short_clip))
    assert len(mattes) == 8 and mattes[5].frame.time == pytest.approx(0.2)
    for matte in mattes[::3]:
        np.testing.assert_array_equal(matte.result.alpha, matter.predict(matte.frame.image).alpha)
        np.testing.assert_array_equal(matte.result.image, read_image(matte.frame.image))


def _moving_disc(frames=12, size=96, radius=24):
    """A soft-edged disc moving right by 3 px a frame over a textured background: images and true alphas."""
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 120, (size, size, 3)).astype(np.float32), (0, 0), 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, alphas = [], []
    for index in range(frames):
        distance = np.hypot(xx - (30 + 3 * index), yy - size / 2)
        alpha = np.clip((radius - distance) / 3 + 0.5, 0, 1).astype(np.float32)
        images.append(np.rint(alpha[..., None] * 220 + (1 - alpha[..., None]) * background).astype(np.uint8))
        alphas.append(alpha)
    return images, alphas


def _dtssd(alphas, truths):
    return np.mean([np.sqrt(np.square((a1 - a0) - (t1 - t0)).mean())
                    for a0, a1, t0, t1 in zip(alphas, alphas[1:], truths, truths[1:])])


def test_temporal_smoother_reduces_flicker_without_ghosting():
    images, truths = _moving_disc()
    rng = np.random.default_rng(1)
    noisy = [truth + cv2.GaussianBlur(rng.normal(0, 0.08, truth.shape).astype(np.float32), (0, 0), 1.5)
             for truth in truths]  # flicker: independent, spatially smooth per-frame errors
    smoother = TemporalSmoother()
    smoothed = [smoother(image, alpha) for image, alpha in zip(images, noisy)]
    assert _dtssd(smoothed, truths) < 0.7 * _dtssd(noisy, truths)
    mad = lambda alphas: np.mean([np.abs(a - t).mean() for a, t in zip(alphas, truths)])  # noqa: E731
    assert mad(smoothed) < 0.75 * mad(noisy)
    exact = TemporalSmoother()
    ghost_free = [exact(image, truth) for image, truth in zip(images, truths)]
    assert mad(ghost_free) < 0.003  # a moving edge is not dragged behind


def test_temporal_smoother_strength_is_checked():
    with pytest.raises(ValueError, match="strength"):
        TemporalSmoother(1.0)


def test_temporal_strength_out_of_range_is_a_usage_error(short_clip, tmp_path, capsys):
    status = main(["matte", str(short_clip), "-o", str(tmp_path / "out"), "--temporal-smooth",
                   "--temporal-strength", "1.5"])
    assert status == 2
    assert "strength must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
