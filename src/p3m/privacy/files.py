"""Anonymizing image files: same format out as in, metadata dropped, fail-closed."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageOps

from p3m.io import ImageReadError, open_image, to_rgb8, save_image
from p3m.privacy.detector import DEFAULT_THRESHOLD, Face, FaceDetector, default_detector
from p3m.privacy.obfuscate import face_mask
from p3m.privacy.pipeline import anonymize

STATUSES = ANONYMIZED, NO_FACES, NOT_ANONYMIZED, ERROR = "anonymized", "no_faces", "not_anonymized", "error"
JPEG_QUALITY = 95


@dataclass
class FileReport:
    """What happened to one input file; ``to_dict`` gives its JSON report entry.

    ``status`` is ``anonymized`` (faces obfuscated and verified),
    ``no_faces`` (none detected; written with the pixels as read),
    ``not_anonymized`` (a face is still detected after obfuscation; nothing
    written) or ``error`` (unreadable input or failed write).
    """

    input: Path
    output: Optional[Path]
    status: str
    faces: list[Face] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status in (ANONYMIZED, NO_FACES)

    def to_dict(self) -> dict:
        return {
            "input": str(self.input),
            "output": str(self.output) if self.output is not None else None,
            "faces": [face.to_dict() for face in self.faces],
            "status": self.status,
            "error": self.error,
        }


@dataclass
class _Source:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    gray: bool
    alpha: Optional[np.ndarray]  # (H, W) uint8
    icc_profile: Optional[bytes]


# Source modes whose colour profile still describes the written pixels: gray sources are
# written gray, these colour ones RGB(A). Others (CMYK, LAB, YCbCr) are converted to RGB,
# so their profile would be wrong for the output and is dropped.
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P"})


def _read_source(path: Path) -> _Source:
    """Pixels, channels and colour profile of ``path``, from one decode."""
    with open_image(path) as source:  # every failure is an ImageReadError naming the file
        bands = source.getbands()
        gray = source.mode != "P" and len([band for band in bands if band != "A"]) == 1
        upright = ImageOps.exif_transpose(source)
        image = to_rgb8(upright)
        alpha = None
        if "A" in bands or (source.mode == "P" and "transparency" in source.info):
            alpha = np.asarray(upright.convert("RGBA").getchannel("A"))
        icc_profile = source.info.get("icc_profile") if gray or source.mode in _RGB_MODES else None
        return _Source(image, gray, alpha, icc_profile)


def _write_like_source(path: Path, image: np.ndarray, source: _Source) -> None:
    """Write ``image`` with the source's channels (gray, alpha) in the format ``path``'s suffix names."""
    array = image[:, :, :1] if source.gray else image
    if source.alpha is not None:
        array = np.concatenate([array, source.alpha[:, :, None]], axis=2)
    if array.shape[2] == 1:
        array = array[:, :, 0]
    suffix = path.suffix.lower()
    options: dict = {}
    if suffix in (".jpg", ".jpeg"):
        options["quality"] = JPEG_QUALITY
    elif suffix == ".webp":
        options["lossless"] = True
    if source.icc_profile and suffix in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"):
        options["icc_profile"] = source.icc_profile
    save_image(path, array, **options)


def anonymize_file(source: os.PathLike, output: os.PathLike, mask_output: Optional[os.PathLike] = None,
                   method: str = "blur", threshold: float = DEFAULT_THRESHOLD,
                   detector: Optional[FaceDetector] = None) -> FileReport:
    """Anonymize one image file; never raises for a bad input or a failed write.

    The output keeps the input's format (JPEG at quality 95, WebP lossless),
    channels and colour profile, with EXIF orientation applied and all other
    metadata (GPS, camera, dates) dropped. When a face is still detected after
    obfuscation nothing is written (fail-closed).

    Args:
        source: input image.
        output: where the anonymized image goes (its suffix picks the format).
        mask_output: optional PNG face mask (255 on faces, 0 elsewhere).
        method, threshold: as in :func:`p3m.privacy.anonymize`.
    """
    source, output = Path(source), Path(output)
    try:
        loaded = _read_source(source)
    except ImageReadError as error:
        return FileReport(source, None, ERROR, error=str(error))
    result = anonymize(loaded.image, method, threshold, detector)
    if not result.verified:
        best = max(face.score for face in result.remaining)
        return FileReport(source, None, NOT_ANONYMIZED, result.faces,
                          f"{source}: {len(result.remaining)} face(s) still detected after {method} "
                          f"(best score {best:.2f}); output not written")
    try:
        _write_like_source(output, result.image, loaded)
        if mask_output is not None:
            save_image(Path(mask_output), face_mask(loaded.image.shape, result.faces))
    except (OSError, ValueError) as error:
        return FileReport(source, None, ERROR, result.faces, f"{output}: cannot write ({error})")
    return FileReport(source, output, ANONYMIZED if result.faces else NO_FACES, result.faces)


def anonymize_job(job: tuple, method: str, threshold: float, detector: FaceDetector) -> FileReport:
    """:func:`anonymize_file` for one job ``(source, output, mask_output, refusal)``; never raises.

    ``refusal`` is why the destination was refused before the batch started (or
    None); it and any failure become an ``error`` report, so the batch goes on.
    """
    source, output, mask_output, refusal = job
    if refusal is not None:
        return FileReport(Path(source), None, ERROR, error=refusal)
    try:
        return anonymize_file(source, output, mask_output, method, threshold, detector)
    except Exception as error:  # noqa: BLE001 - one file's failure must not end the batch
        lines = str(error).strip().splitlines()
        return FileReport(Path(source), None, ERROR,
                          error=f"{source}: {type(error).__name__}: {lines[0] if lines else ''}")


@dataclass(frozen=True)
class AnonymizeSetup:
    """The per-file anonymizing step, built where it runs (a picklable recipe for ``p3m.executors``).

    Calling it builds one face detector and returns ``step(job) -> FileReport``
    (:func:`anonymize_job`).
    """

    method: str = "blur"
    threshold: float = DEFAULT_THRESHOLD

    def __call__(self) -> Callable[[tuple], FileReport]:
        return partial(anonymize_job, method=self.method, threshold=self.threshold, detector=default_detector())


def summarize(reports: list[FileReport]) -> str:
    """One line: how many files ended in each status."""
    count = {status: sum(report.status == status for report in reports) for status in STATUSES}
    faces = sum(len(report.faces) for report in reports if report.status == ANONYMIZED)
    return (f"{len(reports)} images: {count[ANONYMIZED]} anonymized ({faces} faces), "
            f"{count[NO_FACES]} without faces, {count[NOT_ANONYMIZED]} not anonymized, {count[ERROR]} failed")
