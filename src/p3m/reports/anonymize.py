"""The audit page of ``p3m anonymize --report FILE.html``: one row per input (image or video) with a
thumbnail of what was written (a video's first frame), the faces found, the verification and what went wrong.

Only outputs are shown unless ``originals`` is set: without it the page holds
no pixel of an input file, so it can be shared wherever the outputs can.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from p3m.io import ImageReadError, read_image
from p3m.io.video import VideoReader, VideoReadError
from p3m.privacy.files import ANONYMIZED, NO_FACES, NOT_ANONYMIZED, FileReport
from p3m.privacy.video import VideoReport, summarize_media
from p3m.reports.page import Html, document, draw_boxes, element, figure, join, table, thumbnail

AUDIT_THUMBNAIL_SIZE = 192


def _boxes(report: FileReport) -> list[tuple[float, float, float, float]]:
    """The boxes of the faces obfuscated in the first frame (the one a thumbnail shows)."""
    if isinstance(report, VideoReport):
        return [track.covers[0].box for track in report.tracks if 0 in track.covers]
    frames = report.face_frames or [0] * len(report.faces)
    return [face.box for face, frame in zip(report.faces, frames) if frame == 0]


def _first_frame(path, video: bool) -> np.ndarray:
    """(H, W, 3) uint8: the image, or the first frame of the video, as a viewer sees it.

    Raises:
        ImageReadError, VideoReadError: unreadable, or a video without frames.
    """
    if not video:
        return read_image(path)
    with VideoReader(path) as reader:
        for frame in reader:
            return frame.image
    raise VideoReadError(f"{path}: no frame")


def _thumbnail(path, report: FileReport, caption: str) -> Html:
    """A thumbnail of the file ``path`` with the report's face boxes outlined, or why there is none."""
    try:
        image = _first_frame(path, isinstance(report, VideoReport))
    except (ImageReadError, VideoReadError) as error:
        return element("span", f"{caption} not shown: cannot be read", title=str(error), class_="muted")
    small = thumbnail(image, AUDIT_THUMBNAIL_SIZE)
    return figure(draw_boxes(small, _boxes(report), image.shape[1] / small.width), caption, photo=True)


def _verification(report: FileReport) -> str:
    if isinstance(report, VideoReport) and report.status in (ANONYMIZED, NO_FACES, NOT_ANONYMIZED):
        if report.verified:
            return (f"passed: no face detected on any of {report.frames_checked} frames "
                    f"(threshold {report.verify_threshold:g})")
        return f"failed: a face is still detected on {len(report.failed_frames)} frame(s), nothing written"
    if report.status == ANONYMIZED:
        return f"passed: no face detected in the output (threshold {report.verify_threshold:g})"
    if report.status == NO_FACES:
        return f"passed: no face detected (threshold {report.verify_threshold:g})"
    if report.status == NOT_ANONYMIZED:
        return "failed: a face is still detected, nothing written"
    return "not completed"


def _faces(report: FileReport) -> str:
    if not report.faces:
        return "none"
    scores = ", ".join(f"{face.score:.2f}" for face in report.faces)
    if isinstance(report, VideoReport):
        return f"{len(report.tracks)} face track(s) (best scores {scores})"
    return f"{len(report.faces)} (scores {scores})"


def anonymize_page(reports: Sequence[FileReport], title: str, originals: bool = False) -> str:
    """The audit page of a run.

    Args:
        reports: one per input, in the run's order.
        title: what was anonymized (e.g. the output folder).
        originals: also show a thumbnail of each input (``--audit-originals``); without it the page
            embeds no pixel of any input.
    """
    header = ["#", "input and output", "status", "faces obfuscated", "verification", "anonymized"]
    if originals:
        header.append("original")
    header.append("reason")
    rows = []
    for index, report in enumerate(reports, 1):
        files = element("div", element("span", str(report.input), class_="path"))
        if report.output is not None:
            files = join([files, element("div", "-> ", element("span", str(report.output), class_="path"))])
        status = element("span", report.status, class_="status " + ("status-ok" if report.ok else "status-fail"))
        output = (_thumbnail(report.output, report, "output") if report.output is not None
                  else element("span", "nothing written", class_="muted"))
        row = [index, files, status, _faces(report), _verification(report), output]
        if originals:
            row.append(_thumbnail(report.input, report, "original"))
        row.append(element("span", report.error, class_="path") if report.error else "")
        rows.append(row)
    note = ("Thumbnails of the originals are shown (--audit-originals): this page shows the faces it hides; "
            "share it as you would the originals." if originals else
            "Only the anonymized outputs are shown; no pixel of an original is in this page.")
    body = [element("h1", "p3m anonymize: ", title), element("p", summarize_media(list(reports))),
            element("p", note, " Red boxes: the faces obfuscated in the first frame. Thumbnails: long side at most ",
                    AUDIT_THUMBNAIL_SIZE, " px.", class_="muted"),
            table(header, rows, class_="audit")]
    return document(f"p3m anonymize: {title}", *body)

