"""Anonymizing videos: faces found on every frame, tracked, hidden, and checked on the written file.

Three passes over a video, each decoding it again (frames are never held in memory):

1. **Detect.** The shared detector runs on every frame as displayed (upright, square pixels).
2. **Track and hide.** Detections are linked into tracks across frames by box
   overlap (:func:`track_faces`); a track covers the frames between its
   detections (a face the detector missed for up to :data:`HOLD_FRAMES`
   frames) with the box and landmarks interpolated, and the
   :data:`HOLD_FRAMES` frames before its first and after its last detection
   with the nearest box held. Each covered face is obfuscated as in images
   (the same ellipse, margin and feather). Frames are encoded (H.264 4:2:0,
   CRF 18) into a temporary file with their own timestamps; the audio is
   re-encoded to AAC unless stripped. No container or stream metadata of
   the source is carried over (tags, chapters, attached pictures, other
   streams, the audio codec's headers and packets): only the pixels and the
   audio samples.
3. **Verify.** The temporary file is decoded and every frame searched again
   with the same detector at the verification threshold. Faces still found
   are hidden again on their frames and the video is encoded and checked
   again, up to :data:`p3m.privacy.pipeline.OBFUSCATION_ROUNDS` passes in
   all; if a face is still found then, nothing is written, an earlier
   output of the file is removed, and the report names the frames.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from p3m.io import OutputFolder
from p3m.io.video import VideoReadError, VideoReader, VideoWriter, is_video_file
from p3m.privacy.detector import DEFAULT_THRESHOLD, DetectorError, Face, FaceDetector, default_detector, detect_faces
from p3m.privacy.files import (ANONYMIZED, ERROR, NO_FACES, NOT_ANONYMIZED, STATUSES, AnonymizeSetup, FileReport,
                               anonymize_job, job_failure, output_folder, remove_outputs, summarize)
from p3m.privacy.obfuscate import obfuscate
from p3m.privacy.pipeline import OBFUSCATION_ROUNDS, default_verify_threshold

# A track covers up to HOLD_FRAMES frames in which its face was not detected: between two
# detections (interpolated), and before the first and after the last one (held).
HOLD_FRAMES = 10
# A detection continues a track when its box overlaps the track's last box by this IoU or more.
TRACK_IOU = 0.3
VIDEO_SUFFIX = ".mp4"


@dataclass
class FaceTrack:
    """One face followed across frames.

    Attributes:
        id: 0, 1, ... in order of first detection.
        detections: frame index -> the face detected there.
        covers: frame index -> the face hidden there: the detections, plus
            interpolated boxes in gaps and held boxes at the ends.
    """

    id: int
    detections: dict[int, Face] = field(default_factory=dict)
    covers: dict[int, Face] = field(default_factory=dict)

    @property
    def last_frame(self) -> int:
        return max(self.detections)

    @property
    def held_frames(self) -> int:
        return len(self.covers) - len(self.detections)

    def to_dict(self) -> dict:
        scores = [face.score for face in self.detections.values()]
        return {
            "id": self.id,
            "detected_frames": _ranges(sorted(self.detections)),
            "covered_frames": _ranges(sorted(self.covers)),
            "frames_held": self.held_frames,
            "max_score": round(max(scores), 4),
            "mean_score": round(float(np.mean(scores)), 4),
        }


def _ranges(frames: Sequence[int]) -> list[list[int]]:
    """[[first, last], ...] inclusive runs of consecutive frame indices."""
    runs: list[list[int]] = []
    for frame in frames:
        if runs and frame == runs[-1][1] + 1:
            runs[-1][1] = frame
        else:
            runs.append([frame, frame])
    return runs


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _between(a: Face, b: Face, t: float) -> Face:
    """The face a fraction ``t`` of the way from ``a`` to ``b`` (box and landmarks linear; the lower score)."""
    box = tuple(float(x + t * (y - x)) for x, y in zip(a.box, b.box))
    landmarks = tuple((float(p[0] + t * (q[0] - p[0])), float(p[1] + t * (q[1] - p[1])))
                      for p, q in zip(a.landmarks, b.landmarks))
    return Face(box, min(a.score, b.score), landmarks)


def track_faces(detections: Sequence[Sequence[Face]], hold: int = HOLD_FRAMES,
                iou: float = TRACK_IOU) -> list[FaceTrack]:
    """Link per-frame detections into tracks and fill the frames each track must cover.

    A detection joins the track whose last box it overlaps most (IoU at least
    ``iou``), among tracks last detected at most ``hold`` + 1 frames earlier
    (each track takes at most one detection per frame, best overlaps first);
    otherwise it starts a track. A track covers every frame between two of its
    detections (box and landmarks interpolated linearly), and up to ``hold``
    frames before its first and after its last detection (the box held).

    Args:
        detections: per frame, the faces detected there.
        hold: frames a face may go undetected and stay covered.
        iou: overlap for a detection to continue a track.

    Returns:
        tracks in order of first detection, with ``covers`` filled.
    """
    tracks: list[FaceTrack] = []
    for index, faces in enumerate(detections):
        active = [track for track in tracks if index - track.last_frame <= hold + 1]
        pairs = sorted(((_iou(face.box, track.detections[track.last_frame].box), i, j)
                        for i, face in enumerate(faces) for j, track in enumerate(active)), reverse=True)
        taken_faces, taken_tracks = set(), set()
        for overlap, i, j in pairs:
            if overlap < iou:
                break
            if i not in taken_faces and j not in taken_tracks:
                active[j].detections[index] = faces[i]
                taken_faces.add(i)
                taken_tracks.add(j)
        for i, face in enumerate(faces):
            if i not in taken_faces:
                tracks.append(FaceTrack(len(tracks), {index: face}))
    count = len(detections)
    for track in tracks:
        frames = sorted(track.detections)
        first, last = track.detections[frames[0]], track.detections[frames[-1]]
        track.covers = {index: first for index in range(max(0, frames[0] - hold), frames[0])}
        for start, end in zip(frames, frames[1:]):
            a, b = track.detections[start], track.detections[end]
            track.covers.update({index: _between(a, b, (index - start) / (end - start)) for index in range(start, end)})
        track.covers[frames[-1]] = last
        track.covers.update({index: last for index in range(frames[-1] + 1, min(count, frames[-1] + hold + 1))})
    return tracks


def frame_covers(tracks: Sequence[FaceTrack], frame_count: int) -> list[list[Face]]:
    """Per frame, the faces to hide there (every track covering it)."""
    covers: list[list[Face]] = [[] for _ in range(frame_count)]
    for track in tracks:
        for index, face in track.covers.items():
            covers[index].append(face)
    return covers


@dataclass
class VideoReport(FileReport):
    """What happened to one video; ``faces`` holds each track's best detection (``face_frames``: its frame).

    ``status`` as for images; ``not_anonymized`` when a face is still detected
    on a frame of the written video after the last pass (``failed_frames``).
    """

    tracks: list[FaceTrack] = field(default_factory=list)
    frames_checked: int = 0
    verified: bool = False
    failed_frames: list[int] = field(default_factory=list)
    rounds: int = 0  # encode-and-verify passes run
    audio: str = "none"  # "re-encoded", "stripped" or "none" (the source has none)

    def to_dict(self) -> dict:
        entry = super().to_dict()
        entry.update(kind="video", audio=self.audio, tracks=[track.to_dict() for track in self.tracks],
                     verification={"frames_checked": self.frames_checked, "passed": self.verified,
                                   "rounds": self.rounds, "failed_frames": _ranges(self.failed_frames)})
        return entry


class _StillVisible(Exception):
    """Faces still detected on frames of the encoded video after the last pass."""

    def __init__(self, found: dict[int, list[Face]]):
        super().__init__(f"faces on {len(found)} frame(s)")
        self.found = found


def _describe(frames: Sequence[int]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in _ranges(frames))


def _frames(reader: VideoReader, label: str, progress: bool):
    """The reader's frames, with a progress bar named ``label`` on a terminal when ``progress``."""
    from tqdm import tqdm

    return tqdm(reader, total=reader.frame_count, desc=label[-40:], unit="frame",
                dynamic_ncols=True, leave=False, disable=None if progress else True)


def _detect_all(source: Path, threshold: float, detector: Optional[FaceDetector],
                progress: bool) -> tuple[list[list[Face]], dict]:
    """Faces per frame, and what the encoder needs to know about the video."""
    with VideoReader(source) as reader:
        detections = [detect_faces(frame.image, threshold, detector)
                      for frame in _frames(reader, f"{source.name} detect", progress)]
        info = dict(frame_rate=reader.frame_rate, time_base=reader.time_base, has_audio=reader.has_audio,
                    size=(reader.width, reader.height))
    return detections, info


def _encode(source: Path, target: Path, hide: list[list[list[Face]]], method: str, info: dict,
            audio: bool, progress: bool) -> None:
    """Write ``source``'s frames to ``target`` with the faces of each pass in ``hide[frame]`` obfuscated in turn."""
    with VideoReader(source) as reader, \
            VideoWriter(target, "colour", info["frame_rate"], info["time_base"],
                        audio_from=source if audio else None, reencode_audio=True) as writer:
        for index, frame in enumerate(_frames(reader, f"{source.name} hide", progress)):
            image = frame.image
            for faces in hide[index] if index < len(hide) else []:
                image = obfuscate(image, faces, method)
            writer.write(image, frame.pts)


def _verify_file(path: Path, threshold: float, detector: Optional[FaceDetector], label: str,
                 progress: bool) -> tuple[int, dict[int, list[Face]]]:
    """(frames decoded, frame index -> faces still detected) for the written video."""
    found = {}
    count = 0
    with VideoReader(path) as reader:
        for count, frame in enumerate(_frames(reader, label, progress), start=1):
            faces = detect_faces(frame.image, threshold, detector)
            if faces:
                found[count - 1] = faces
    return count, found


def anonymize_video(source: os.PathLike, output: os.PathLike, method: str = "blur",
                    threshold: float = DEFAULT_THRESHOLD, detector: Optional[FaceDetector] = None,
                    verify_threshold: Optional[float] = None, strip_audio: bool = False, hold: int = HOLD_FRAMES,
                    progress: bool = False, outputs: Optional[OutputFolder] = None) -> VideoReport:
    """Anonymize one video file into ``output`` (an MP4); never raises for a bad input or a failed write.

    Args:
        source: input video.
        output: the anonymized video; written under a temporary name in its
            folder through ``outputs`` (a guarded folder; by default ``output``'s
            own, with ``source`` protected) and renamed only once every frame
            passed verification.
        method, threshold, verify_threshold: as for images (:func:`p3m.privacy.anonymize_file`).
        strip_audio: drop the audio (by default re-encoded to AAC, see :class:`p3m.io.video.VideoWriter`).
        hold: frames a face may go undetected and stay covered (:func:`track_faces`).
        progress: a progress bar per pass over the frames, on a terminal.

    Frames keep their timestamps (variable frame rates survive); rotated
    sources (a display matrix) are written upright and anamorphic ones with
    square pixels, so they display as before; faces are searched as displayed.
    """
    source, output = Path(source), Path(output)
    check = default_verify_threshold(threshold) if verify_threshold is None else verify_threshold
    report = VideoReport(source, None, ERROR, threshold=threshold, verify_threshold=check)
    outputs = output_folder(outputs, output, source, report)
    if outputs is None:
        return report
    try:
        detections, info = _detect_all(source, threshold, detector, progress)
        report.frames, report.size = len(detections), info["size"]
        report.tracks = track_faces(detections, hold)
        best = [max(track.detections.items(), key=lambda item: item[1].score) for track in report.tracks]
        report.face_frames, report.faces = [index for index, _ in best], [face for _, face in best]
        report.audio = "none" if not info["has_audio"] else "stripped" if strip_audio else "re-encoded"
        hide = [[faces] for faces in frame_covers(report.tracks, len(detections))]

        def write(target: Path) -> None:
            for rounds in range(1, OBFUSCATION_ROUNDS + 1):
                report.rounds = rounds
                _encode(source, target, hide, method, info, report.audio == "re-encoded", progress)
                report.frames_checked, found = _verify_file(target, check, detector, f"{source.name} verify",
                                                            progress)
                if report.frames_checked != report.frames:
                    raise VideoReadError(f"{source}: the encoded video has {report.frames_checked} frames, "
                                         f"the source {report.frames}; output not written")
                if not found:
                    return
                for index, faces in found.items():
                    hide[index].append(faces)
            raise _StillVisible(found)

        outputs.write(output, write)
    except _StillVisible as failure:
        frames = sorted(failure.found)
        best_score = max(face.score for faces in failure.found.values() for face in faces)
        report.status, report.failed_frames = NOT_ANONYMIZED, frames
        report.error = (f"{source}: face(s) still detected in frame(s) {_describe(frames)} after {method} "
                        f"(best score {best_score:.2f}); output not written")
    except VideoReadError as error:
        report.error = str(error)
    except DetectorError as error:
        report.error = f"{source}: cannot be searched for faces ({error}); output not written"
    except (OSError, ValueError) as error:  # UnsafeOutputError is a ValueError
        report.error = f"{output}: cannot write ({error})"
    else:
        report.verified = True
        report.output, report.status = output, ANONYMIZED if report.tracks else NO_FACES
    if not report.ok:
        remove_outputs(outputs, output)
    return report


def anonymize_video_job(job: tuple, method: str, threshold: float, detector: FaceDetector,
                        verify_threshold: Optional[float] = None, strip_audio: bool = False,
                        progress: bool = False, outputs: Optional[OutputFolder] = None) -> VideoReport:
    """:func:`anonymize_video` for one job ``(source, output, mask_output, refusal, matte)`` of the
    anonymize batch (``mask_output`` and ``matte`` are None for videos), through the batch's
    guarded folder ``outputs``; never raises."""
    source, output, _, refusal, _ = job
    if refusal is not None:
        return VideoReport(Path(source), None, ERROR, error=refusal)
    try:
        return anonymize_video(source, output, method, threshold, detector, verify_threshold, strip_audio,
                               progress=progress, outputs=outputs)
    except Exception as error:  # noqa: BLE001 - one file's failure must not end the batch
        return VideoReport(Path(source), None, ERROR, error=job_failure(source, error))


@dataclass(frozen=True)
class MediaAnonymizeSetup(AnonymizeSetup):
    """:class:`p3m.privacy.AnonymizeSetup` for a batch of images and videos: the step sends each job
    to :func:`anonymize_video_job` or :func:`p3m.privacy.anonymize_job` by its file's suffix."""

    strip_audio: bool = False
    frame_progress: bool = False  # a progress bar over each video's frames, on a terminal

    def __call__(self) -> Callable[[tuple], FileReport]:
        detector = default_detector()
        image_step = partial(anonymize_job, method=self.method, threshold=self.threshold, detector=detector,
                             verify_threshold=self.verify_threshold, outputs=self.outputs, masks=self.masks)
        video_step = partial(anonymize_video_job, method=self.method, threshold=self.threshold, detector=detector,
                             verify_threshold=self.verify_threshold, strip_audio=self.strip_audio,
                             progress=self.frame_progress, outputs=self.outputs)
        return lambda job: video_step(job) if is_video_file(Path(job[0])) else image_step(job)


def summarize_media(reports: list[FileReport]) -> str:
    """One line: how many images and videos ended in each status."""
    images = [report for report in reports if not isinstance(report, VideoReport)]
    videos = [report for report in reports if isinstance(report, VideoReport)]
    parts = [summarize(images)] if images or not videos else []
    if videos:
        count = {status: sum(report.status == status for report in videos) for status in STATUSES}
        tracks = sum(len(report.tracks) for report in videos if report.status == ANONYMIZED)
        parts.append(f"{len(videos)} videos: {count[ANONYMIZED]} anonymized ({tracks} face tracks), "
                     f"{count[NO_FACES]} without faces, {count[NOT_ANONYMIZED]} not anonymized, "
                     f"{count[ERROR]} failed")
    return "; ".join(parts)
