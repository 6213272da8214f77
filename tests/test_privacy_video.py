"""Video anonymization: face tracks across missed detections, fail-closed verification of every written
frame, no metadata carried over, timestamps, rotation and audio."""
from __future__ import annotations

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="video support needs PyAV (the 'video' extra)")

from p3m.cli import main  # noqa: E402
from p3m.io import video as video_io  # noqa: E402
from p3m.io.video import VideoReader, square_pixel_size  # noqa: E402
from p3m.privacy import Face, detect_faces  # noqa: E402
from p3m.privacy import video as privacy_video  # noqa: E402
from p3m.privacy.video import anonymize_video, frame_covers, track_faces  # noqa: E402

_spec = importlib.util.spec_from_file_location("face_clips", Path(__file__).parent / "fixtures" / "face_clips.py")
face_clips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(face_clips)
face_frames, write_clip = face_clips.face_frames, face_clips.write_clip

MISSED = {4, 5, 6}
# What FFmpeg's MP4 muxer writes by itself (no source tag among them).
MUXER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder"}
STREAM_DEFAULT_TAGS = {"language": "und", "handler_name": ("VideoHandler", "SoundHandler"), "vendor_id": "[0][0][0][0]"}


def face(x: float, y: float, size: float = 40.0, score: float = 0.9) -> Face:
    points = ((0.3, 0.35), (0.7, 0.35), (0.5, 0.55), (0.35, 0.75), (0.65, 0.75))
    landmarks = tuple((x + u * size, y + v * size) for u, v in points)
    return Face((x, y, x + size, y + size), score, landmarks)


def frames_of(path: Path) -> list:
    with VideoReader(path) as reader:
        return list(reader)


class MissingFrames:
    """The real detector, blind on the detection pass at ``missed`` frames (calls come one per frame, in order)."""

    def __init__(self, missed: set[int]):
        self.missed, self.calls = missed, 0

    def __call__(self, image, threshold):
        index, self.calls = self.calls, self.calls + 1
        return [] if index in self.missed else detect_faces(image, threshold)


class MarkerFaces:
    """A detector that sees a 'face' in the centre of any frame whose top-left corner is magenta,
    before and after obfuscation alike (a face the obfuscation cannot remove)."""

    def __call__(self, image, threshold):
        corner = image[:8, :8].reshape(-1, 3).astype(int).mean(axis=0)
        if np.abs(corner - (255, 0, 255)).max() > 40:
            return []
        height, width = image.shape[:2]
        return [face(width / 2 - 20, height / 2 - 20, score=0.95)]


def plain_frames(count: int, width: int = 96, height: int = 64, marked: tuple = ()) -> list[np.ndarray]:
    """Flat frames of changing colour (no face), the frames in ``marked`` with a magenta corner."""
    images = []
    for index in range(count):
        image = np.full((height, width, 3), (40 + 10 * index, 90, 60), np.uint8)
        if index in marked:
            image[:16, :16] = (255, 0, 255)
        images.append(image)
    return images


# --- tracking ---------------------------------------------------------------------------------------------

def test_a_face_missed_for_a_few_frames_stays_covered_by_interpolation():
    detections = [[face(10 + 4 * i, 20)] if i not in MISSED else [] for i in range(12)]
    (track,) = track_faces(detections, hold=3)
    assert sorted(track.detections) == [0, 1, 2, 3, 7, 8, 9, 10, 11]
    assert sorted(track.covers) == list(range(12)) and track.held_frames == 3
    # linear between frames 3 and 7: frame 5 lies halfway, where the face really was
    assert np.allclose(track.covers[5].box, face(30, 20).box) and np.allclose(track.covers[5].landmarks,
                                                                              face(30, 20).landmarks)
    assert track.to_dict()["detected_frames"] == [[0, 3], [7, 11]] and track.to_dict()["covered_frames"] == [[0, 11]]


def test_boxes_are_held_at_the_ends_and_longer_gaps_split_the_track():
    detections = [[face(50, 50)] if i in (3, 4, 10) else [] for i in range(14)]
    first, second = track_faces(detections, hold=2)
    assert sorted(first.detections) == [3, 4] and sorted(first.covers) == [1, 2, 3, 4, 5, 6]
    assert sorted(second.detections) == [10] and sorted(second.covers) == [8, 9, 10, 11, 12]
    covers = frame_covers([first, second], 14)
    assert [index for index, faces in enumerate(covers) if not faces] == [0, 7, 13]  # beyond the hold


def test_two_faces_keep_their_own_tracks():
    detections = [[face(10 + 3 * i, 10, score=0.8), face(200 - 3 * i, 100, score=0.6)] for i in range(6)]
    detections[2] = detections[2][::-1]
    left, right = track_faces(detections)
    assert all(left.detections[i].box[0] < 100 < right.detections[i].box[0] for i in range(6))
    assert (left.to_dict()["max_score"], right.to_dict()["mean_score"]) == (0.8, 0.6)


# --- the file pipeline --------------------------------------------------------------------------------------

def test_a_face_the_detector_misses_on_some_frames_is_covered_on_every_frame(tmp_path):
    source = write_clip(tmp_path / "walk.mp4", face_frames("p_bac3c1ff", 192, 144, 12, face_height=40))
    originals = frames_of(source)
    assert all(detect_faces(originals[i].image) for i in MISSED)  # the missed frames do show the face
    report = anonymize_video(source, tmp_path / "out" / "walk.mp4", detector=MissingFrames(MISSED))
    assert report.status == "anonymized" and report.verified and report.rounds == 1, report.error
    (track,) = report.to_dict()["tracks"]
    assert track["detected_frames"] == [[0, 3], [7, 11]] and track["covered_frames"] == [[0, 11]]
    assert track["frames_held"] == 3 and 0.5 < track["mean_score"] <= track["max_score"] <= 1
    written = frames_of(report.output)
    assert len(written) == 12 == report.frames_checked
    assert [i for i, frame in enumerate(written) if detect_faces(frame.image, 0.3)] == []
    # the pixels far from the face are the source's, up to the H.264 re-encoding
    far = np.s_[:, :40]
    assert np.abs(written[0].image[far].astype(int) - originals[0].image[far].astype(int)).mean() < 3


def test_faces_the_check_finds_are_hidden_again_and_checked_again(tmp_path):
    """Without holding, the frames the detection pass missed leak; the check on the written file finds
    them, they are hidden and the video encoded and checked once more."""
    source = write_clip(tmp_path / "walk.mp4", face_frames("p_07141906", 128, 96, 7, face_height=34))
    report = anonymize_video(source, tmp_path / "out.mp4", detector=MissingFrames({3}), hold=0)
    assert report.status == "anonymized" and report.verified and report.rounds == 2, report.error
    assert [track.to_dict()["covered_frames"] for track in report.tracks] == [[[0, 2]], [[4, 6]]]
    assert [i for i, frame in enumerate(frames_of(report.output)) if detect_faces(frame.image, 0.3)] == []


def test_an_anamorphic_clip_is_searched_and_written_with_square_pixels(tmp_path):
    """Pixels shown 3x as wide as tall: the stored frames squeeze the face 3x, and the detector misses it
    there. Frames are read at their displayed shape, so the face is found, and the output (square pixels)
    shows it hidden."""
    shown = list(face_frames("p_bac3c1ff", 192, 144, 2, face_height=40))
    stored = [cv2.resize(image, (64, 144), interpolation=cv2.INTER_AREA) for image in shown]
    assert detect_faces(shown[0]) and not detect_faces(stored[0], 0.3)
    source = write_clip(tmp_path / "wide.mp4", stored, pixel_aspect=Fraction(3))
    report = anonymize_video(source, tmp_path / "out" / "wide.mp4")
    assert report.status == "anonymized" and report.size == (192, 144), report.error
    written = frames_of(report.output)
    assert [frame.image.shape for frame in written] == [(144, 192, 3)] * 2
    assert [i for i, frame in enumerate(written) if detect_faces(frame.image, 0.3)] == []
    with av.open(str(report.output)) as container:
        assert container.streams.video[0].sample_aspect_ratio in (None, 0, 1)


def test_frames_are_only_stretched_to_square_pixels():
    assert square_pixel_size(64, 144, Fraction(3)) == (192, 144)
    assert square_pixel_size(720, 480, Fraction(8, 9)) == (720, 540)  # tall pixels: taller, never narrower
    assert square_pixel_size(96, 64, None) == square_pixel_size(96, 64, Fraction(0)) == (96, 64)


def test_the_frame_size_limit_holds_for_the_displayed_size(tmp_path, monkeypatch):
    """Wide pixels stretch a frame when read: the size limit applies to what is decoded into memory."""
    monkeypatch.setattr(video_io, "MAX_FRAME_PIXELS", 96 * 64 * 2)
    source = write_clip(tmp_path / "wide.mp4", plain_frames(1), pixel_aspect=Fraction(3))
    report = anonymize_video(source, tmp_path / "out.mp4")
    assert report.status == "error" and not (tmp_path / "out.mp4").exists()
    assert report.error == f"{source}: refused, frames too large (96x64, displayed 288x64)"


def test_verification_failure_on_one_frame_writes_nothing_and_names_it(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "clips"
    write_clip(folder / "talk.mov", plain_frames(10, marked=(5,)))
    write_clip(folder / "calm.mp4", plain_frames(6))
    Image.fromarray(plain_frames(1)[0]).save(folder / "still.png")
    out, masks = tmp_path / "out", tmp_path / "masks"
    (out / "talk.mp4").parent.mkdir(parents=True)
    (out / "talk.mp4").write_bytes(b"an earlier run's output")
    monkeypatch.setattr(privacy_video, "default_detector", MarkerFaces)
    status = main(["anonymize", "--quiet", str(folder), "-o", str(out), "--masks", str(masks),
                   "--report", str(tmp_path / "report.json")])
    err = capsys.readouterr().err
    assert status == 1
    assert "talk.mov: face(s) still detected in frame(s) 5 after blur" in err
    assert ("1 images: 0 anonymized (0 faces), 1 without faces, 0 not anonymized, 0 failed; "
            "2 videos: 0 anonymized (0 face tracks), 1 without faces, 1 not anonymized, 0 failed") in err
    # no temporary left, no stale output; face masks are for images only
    assert sorted(path.name for path in out.iterdir()) == ["calm.mp4", "still.png"]
    assert sorted(path.name for path in masks.iterdir()) == ["still.png"]
    entries = {Path(entry["input"]).name: entry for entry in json.loads((tmp_path / "report.json").read_text())}
    talk = entries["talk.mov"]
    assert talk["status"] == "not_anonymized" and talk["output"] is None
    assert talk["verification"] == {"frames_checked": 10, "passed": False, "rounds": 3, "failed_frames": [[5, 5]]}
    assert talk["tracks"][0]["detected_frames"] == [[5, 5]] and talk["kind"] == "video"
    calm = entries["calm.mp4"]
    assert calm["status"] == "no_faces" and calm["verification"]["passed"] and calm["tracks"] == []


def test_metadata_is_gone_and_timestamps_rotation_and_audio_survive(tmp_path):
    time_base = Fraction(1, 1000)
    pts = [0, 40, 80, 160, 200, 280, 320, 360]  # variable frame rate
    source = write_clip(tmp_path / "phone.mov", plain_frames(8), audio=True, metadata=True, rotation=90,
                        time_base=time_base, pts=pts)
    with av.open(str(source)) as container:  # the secrets are really in the source
        assert {"title", "comment", "location"} <= set(container.metadata)
    assert all(secret.encode() in source.read_bytes() for secret in face_clips.SECRET_STRINGS)

    report = anonymize_video(source, tmp_path / "out" / "phone.mp4")
    assert report.status == "no_faces" and report.verified and report.audio == "re-encoded", report.error
    data = report.output.read_bytes()
    assert [secret for secret in face_clips.SECRET_STRINGS if secret.encode() in data] == []
    planted = (*face_clips.SECRET_TAGS.values(), *face_clips.STREAM_TAGS.values())
    assert not any(value.encode() in data for value in planted)
    with av.open(str(report.output)) as container:
        assert set(container.metadata) <= MUXER_TAGS
        assert sorted(stream.type for stream in container.streams) == ["audio", "video"]
        for stream in container.streams:
            for key, value in stream.metadata.items():
                assert key in STREAM_DEFAULT_TAGS and value in np.atleast_1d(STREAM_DEFAULT_TAGS[key]), (key, value)
        video = container.streams.video[0]
        frame = next(container.decode(video))
        assert av.sidedata.sidedata.Type.DISPLAYMATRIX not in frame.side_data  # stored upright
        audio = container.streams.audio[0]
        audio_seconds = float(sum(packet.duration or 0 for packet in container.demux(audio)) * audio.time_base)
    written, originals = frames_of(report.output), frames_of(source)
    assert (written[0].image.shape[1], written[0].image.shape[0]) == (64, 96)  # turned by the display matrix
    assert [round(frame.time, 3) for frame in written] == [round(t / 1000, 3) for t in pts]
    assert max(np.abs(a.image.astype(int) - b.image.astype(int)).max() for a, b in zip(written, originals)) <= 4
    assert abs(audio_seconds - 8 * face_clips.AUDIO_RATE // 25 / face_clips.AUDIO_RATE) < 0.1


def test_text_in_the_audio_codec_headers_does_not_reach_the_output(tmp_path):
    """A Vorbis track's comment header (artist, location...) lies in its codec data, not in the tags;
    copying the track would carry it along. The audio is re-encoded, so only its samples go."""
    source = write_clip(tmp_path / "field.mkv", plain_frames(4), audio="vorbis", metadata=True)
    with av.open(str(source)) as container:
        assert b"SECRET-ARTIST-7f3a" in bytes(container.streams.audio[0].codec_context.extradata)
    report = anonymize_video(source, tmp_path / "out" / "field.mp4")
    assert report.status == "no_faces", report.error
    data = report.output.read_bytes()
    assert [secret for secret in face_clips.SECRET_STRINGS if secret.encode() in data] == []
    assert report.audio == "re-encoded"
    with av.open(str(report.output)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        samples = np.concatenate([frame.to_ndarray().ravel() for frame in container.decode(audio=0)])
    assert 0.15 < np.sqrt(np.mean(samples ** 2)) < 0.25  # the 0.3-amplitude tone (RMS 0.21)


def test_audio_is_stripped_on_request_and_frame_rate_kept(tmp_path, capsys):
    source = write_clip(tmp_path / "in" / "clip.mp4", plain_frames(6), rate=30, audio=True)
    out = tmp_path / "out"
    assert main(["anonymize", "--quiet", str(source), "-o", str(out), "--strip-audio"]) == 0
    with av.open(str(out / "clip.mp4")) as container:
        assert [stream.type for stream in container.streams] == ["video"]
        assert container.streams.video[0].average_rate == 30
    assert main(["anonymize", "--quiet", str(source), "-o", str(out)]) == 0
    with av.open(str(out / "clip.mp4")) as container:
        assert sorted(stream.type for stream in container.streams) == ["audio", "video"]
        samples = np.concatenate([frame.to_ndarray().ravel() for frame in container.decode(audio=0)])
    assert 0.15 < np.sqrt(np.mean(samples ** 2)) < 0.25  # the 0.3-amplitude tone (RMS 0.21), not silence


def test_unreadable_video_is_an_error_and_dataset_mode_refuses_videos(tmp_path, capsys):
    folder = tmp_path / "shoot"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = tmp_path / "out"
    assert main(["anonymize", "--quiet", str(folder), "-o", str(out)]) == 1
    assert "broken.mp4: not a video file, or truncated" in capsys.readouterr().err
    write_clip(folder / "clip.mp4", plain_frames(4))
    assert main(["anonymize", "--quiet", str(folder), "-o", str(tmp_path / "dataset"), "--dataset"]) == 1
    assert "clip.mp4: a video cannot go into a --dataset tree" in capsys.readouterr().err
