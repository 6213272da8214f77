"""Anonymizing image files: every visible pixel checked, same format out, no metadata, fail-closed."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageCms, ImageOps

from p3m.io import ImageReadError, OutputFolder, UnsafeOutputError, open_image, to_rgb8
from p3m.privacy.detector import (DEFAULT_THRESHOLD, DetectorError, Face, FaceDetector, default_detector, detect_faces,
                                  merge_faces)
from p3m.privacy.obfuscate import face_mask, obfuscate
from p3m.privacy.pipeline import OBFUSCATION_ROUNDS, default_verify_threshold

STATUSES = ANONYMIZED, NO_FACES, NOT_ANONYMIZED, ERROR = "anonymized", "no_faces", "not_anonymized", "error"
JPEG_QUALITY = 95
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP", ".gif": "GIF"}
_MULTI_FRAME_FORMATS = frozenset({"PNG", "TIFF", "WEBP", "GIF"})
# Encoding changes the pixels (JPEG's quantization, GIF's palette): the written file is searched again.
_LOSSY_FORMATS = frozenset({"JPEG", "GIF"})
_SRGB = ImageCms.createProfile("sRGB")


@dataclass
class FileReport:
    """What happened to one input file; ``to_dict`` gives its JSON report entry.

    ``status`` is ``anonymized`` (faces obfuscated and verified; ``faces``
    lists every face obfuscated, also those only the check found),
    ``no_faces`` (none detected, nor by the verification; written with the
    pixels as read), ``not_anonymized`` (a face is still detected after
    obfuscation; nothing written) or ``error`` (unreadable input, an image
    that cannot be searched, or a failed write). Whenever nothing is written,
    an earlier run's output for the file is removed.
    """

    input: Path
    output: Optional[Path]
    status: str
    faces: list[Face] = field(default_factory=list)
    error: Optional[str] = None
    frames: int = 1
    face_frames: list[int] = field(default_factory=list)  # the frame of each face
    threshold: float = DEFAULT_THRESHOLD
    verify_threshold: float = DEFAULT_THRESHOLD
    size: Optional[tuple[int, int]] = None  # (width, height) as written, EXIF orientation applied

    @property
    def ok(self) -> bool:
        return self.status in (ANONYMIZED, NO_FACES)

    def fail(self, error: str) -> None:
        """Mark the file failed after the fact (its outputs are the caller's to remove)."""
        self.status, self.output, self.error = ERROR, None, error

    def to_dict(self) -> dict:
        faces = [face.to_dict() for face in self.faces]
        if self.frames > 1:
            faces = [{**entry, "frame": frame} for entry, frame in zip(faces, self.face_frames)]
        return {
            "input": str(self.input),
            "output": str(self.output) if self.output is not None else None,
            "faces": faces,
            "status": self.status,
            "error": self.error,
            "frames": self.frames,
            "threshold": self.threshold,
            "verify_threshold": self.verify_threshold,
        }


@dataclass
class _Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB, sRGB
    alpha: Optional[np.ndarray]  # (H, W) uint8
    duration: Optional[float]  # milliseconds


@dataclass
class _Source:
    frames: list[_Frame]
    gray: bool
    loop: Optional[int]


def _srgb_transform(image: Image.Image, mode: str):
    """A transform of ``mode`` pixels from the file's colour profile to sRGB, or None (no usable profile)."""
    profile = image.info.get("icc_profile")
    if not profile or mode not in ("RGB", "CMYK", "L"):
        return None
    try:
        return ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(profile)), _SRGB, mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # unreadable or mismatched profile: the pixels are taken as sRGB


def _frame(image: Image.Image, has_alpha: bool) -> _Frame:
    """One decoded frame as sRGB pixels and alpha, its EXIF orientation applied."""
    upright = ImageOps.exif_transpose(image)
    alpha = np.asarray(upright.convert("RGBA").getchannel("A")) if has_alpha else None
    colour = upright.convert("RGB") if upright.mode in ("RGBA", "RGBa", "RGBX", "P", "PA", "LA") else upright
    transform = _srgb_transform(image, colour.mode)
    rgb = to_rgb8(ImageCms.applyTransform(colour, transform) if transform is not None else colour)
    return _Frame(rgb, alpha, image.info.get("duration"))


def _read_source(path: Path) -> _Source:
    """Every frame of ``path`` in sRGB with its alpha, from one decode.

    Raises:
        ImageReadError: unreadable, or its frames together exceed Pillow's pixel cap.
    """
    with open_image(path) as source:  # every failure is an ImageReadError naming the file
        count = getattr(source, "n_frames", 1)
        limit = Image.MAX_IMAGE_PIXELS
        if count > 1 and limit is not None and count * source.width * source.height > limit:
            raise ImageReadError(f"{path}: refused, {count} frames of {source.width}x{source.height} pixels "
                                 f"exceed the limit of {limit} pixels in all")
        gray = count == 1 and source.mode not in ("P", "PA") and len([b for b in source.getbands() if b != "A"]) == 1
        frames = []
        for index in range(count):
            source.seek(index)
            has_alpha = "A" in source.getbands() or "transparency" in source.info
            frames.append(_frame(source, has_alpha))
        loop = source.info.get("loop")
    if any(frame.alpha is not None for frame in frames):
        for frame in frames:
            if frame.alpha is None:
                frame.alpha = np.full(frame.image.shape[:2], 255, np.uint8)
    return _Source(frames, gray, loop)


def views(image: np.ndarray, alpha: Optional[np.ndarray]) -> list[np.ndarray]:
    """What a viewer can see of an image: (H, W, 3) uint8 RGB images.

    Opaque: the image. With alpha ((H, W) uint8): the image over white, over
    black, and the alpha channel itself as a gray image.
    """
    if alpha is None:
        return [image]
    weight = alpha[:, :, None].astype(np.float32) / 255.0
    over_black = np.rint(image * weight).astype(np.uint8)
    over_white = np.rint(image * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
    return [over_white, over_black, np.repeat(alpha[:, :, None], 3, axis=2)]


def _detect(frame: _Frame, threshold: float, detector: Optional[FaceDetector]) -> list[Face]:
    return merge_faces([face for view in views(frame.image, frame.alpha)
                        for face in detect_faces(view, threshold, detector)])


def _hidden(frame: _Frame, faces: list[Face], method: str) -> _Frame:
    """The frame with its faces obfuscated in what is seen: colour and alpha."""
    if not faces:
        return frame
    image = obfuscate(frame.image, faces, method)
    alpha = frame.alpha
    if alpha is not None:  # a face drawn by the alpha channel is hidden there; a filled face becomes opaque
        alpha = obfuscate(np.repeat(alpha[:, :, None], 3, axis=2), faces, method, fill_color=(255, 255, 255))[:, :, 0]
    return _Frame(image, alpha, frame.duration)


def _hide(frame: _Frame, faces: list[Face], method: str, threshold: float,
          detector: Optional[FaceDetector]) -> tuple[_Frame, list[Face], list[Face]]:
    """Obfuscate, check, and obfuscate again what is still found (up to OBFUSCATION_ROUNDS passes).

    A face that only the check finds (it runs at a lower threshold than the
    detection, or a blurred face kept a face's shape) is obfuscated too.

    Returns:
        the frame, the faces still detected (empty: verified), and every face
        obfuscated, one entry per face.
    """
    remaining, covered = faces, []
    for _ in range(OBFUSCATION_ROUNDS):
        frame = _hidden(frame, remaining, method)
        covered = merge_faces([*covered, *remaining])
        remaining = _detect(frame, threshold, detector)
        if not remaining:
            break
    return frame, remaining, covered


def _output_format(path: Path) -> str:
    return _FORMATS.get(path.suffix.lower(), "PNG")


def _array(frame: _Frame, gray: bool) -> np.ndarray:
    """(H, W), (H, W, 2), (H, W, 3) or (H, W, 4) uint8: the frame with the source's channels."""
    array = frame.image[:, :, 0] if gray else frame.image
    if frame.alpha is not None:
        array = np.dstack([array, frame.alpha])
    return np.ascontiguousarray(array)


class _DetectedAfterEncoding(Exception):
    """A face is detectable in the encoded file although not in the pixels given to the encoder."""

    def __init__(self, frame: int, faces: list[Face]):
        super().__init__(frame, faces)
        self.frame, self.faces = frame, faces


def _write_like_source(path: Path, frames: list[_Frame], source: _Source, outputs: OutputFolder,
                       search: Optional[Callable[[_Frame], list[Face]]] = None) -> None:
    """Write ``frames`` with the source's channels (gray, alpha) in the format ``path``'s suffix names.

    Pixels are sRGB and no metadata is written (no profile, EXIF, XMP, text
    or comment). A format without frames (JPEG, BMP) gets the first frame.
    For a lossy format, ``search`` runs on every frame of the encoded file as
    it will be read back, before it takes its final name; a face it returns
    raises :class:`_DetectedAfterEncoding` and nothing is written.
    """
    pillow_format = _output_format(path)
    options: dict = {}
    if pillow_format == "JPEG":
        options["quality"] = JPEG_QUALITY
    elif pillow_format == "WEBP":
        options["lossless"] = True
    if pillow_format not in _MULTI_FRAME_FORMATS:
        frames = frames[:1]
    images = [Image.fromarray(_array(frame, source.gray)) for frame in frames]
    if len(images) > 1:
        options.update(save_all=True, append_images=images[1:])
    durations = [frame.duration for frame in frames]
    if len(images) > 1 and all(duration is not None for duration in durations):
        options["duration"] = durations
    if len(images) > 1 and source.loop is not None and pillow_format in ("GIF", "PNG", "WEBP"):
        options["loop"] = source.loop
    if len(images) > 1 and pillow_format == "GIF" and frames[0].alpha is not None:
        options["disposal"] = 2

    def write(tmp: Path) -> None:
        images[0].save(tmp, format=pillow_format, **options)
        if search is not None and pillow_format in _LOSSY_FORMATS:
            for index, frame in enumerate(_read_source(tmp).frames):
                found = search(frame)
                if found:
                    raise _DetectedAfterEncoding(index, found)

    outputs.write(path, write)


def remove_outputs(outputs: OutputFolder, *paths: Optional[os.PathLike]) -> None:
    """Remove the outputs (this or an earlier run's) of a file that fails: nothing of it stays.

    A path the guards of ``outputs`` refuse (an input, or reached through a
    link out of the folder) is not an output of the run and is left alone.
    """
    for path in paths:
        if path is not None:
            try:
                outputs.remove(path)
            except UnsafeOutputError:
                pass


def output_folder(outputs: Optional[OutputFolder], path: Path, source: Path,
                  report: FileReport) -> Optional[OutputFolder]:
    """``outputs``, or by default the guards of a single call (``path``'s folder, ``source``
    protected); None, with the error in ``report``, when that folder cannot be one."""
    if outputs is not None:
        return outputs
    try:
        return OutputFolder(path.parent, [source], clean=False)
    except UnsafeOutputError as error:
        report.error = f"{path}: cannot write ({error})"
        return None


def job_failure(source: os.PathLike, error: Exception) -> str:
    """The one-line error of a batch job that raised: the file, the error's type and first line."""
    lines = str(error).strip().splitlines()
    return f"{source}: {type(error).__name__}: {lines[0] if lines else ''}"


def anonymize_file(source: os.PathLike, output: os.PathLike, mask_output: Optional[os.PathLike] = None,
                   method: str = "blur", threshold: float = DEFAULT_THRESHOLD,
                   detector: Optional[FaceDetector] = None, verify_threshold: Optional[float] = None, *,
                   outputs: Optional[OutputFolder] = None, masks: Optional[OutputFolder] = None) -> FileReport:
    """Anonymize one image file; never raises for a bad input or a failed write.

    Every frame (animated GIF, WebP and PNG, multi-page TIFF) is searched as a
    viewer sees it: an image with transparency over white, over black and
    its alpha channel as an image; faces are obfuscated in the colour and the
    alpha channels, and the result is searched again the same way. The
    output keeps the input's format (JPEG at quality 95, WebP lossless),
    channels and frames, with EXIF orientation applied, colours converted to
    sRGB and no metadata at all (profile, EXIF, XMP, text chunks, comments).
    A JPEG or GIF output is searched again as encoded (quantization can bring
    a blurred face back over the threshold). When a face is still detected
    after obfuscation, nothing is written and an earlier output of the file
    is removed (fail-closed).

    Args:
        source: input image.
        output: where the anonymized image goes (its suffix picks the format).
        mask_output: optional PNG face mask (255 on faces of any frame, 0 elsewhere).
        method, threshold: as in :func:`p3m.privacy.anonymize`.
        verify_threshold: threshold of the check on the output; by default
            the lower of ``threshold`` and the default threshold.
        outputs, masks: the guarded folders ``output`` and ``mask_output`` are
            written (and removed) through; by default each one's own folder,
            with ``source`` protected.
    """
    source, output = Path(source), Path(output)
    mask_output = Path(mask_output) if mask_output is not None else None
    check = default_verify_threshold(threshold) if verify_threshold is None else verify_threshold
    report = FileReport(source, None, ERROR, threshold=threshold, verify_threshold=check)
    outputs = output_folder(outputs, output, source, report)
    masks = output_folder(masks, mask_output, source, report) if mask_output is not None else None
    if report.error is not None:
        return report
    try:
        loaded = _read_source(source)
        report.frames = len(loaded.frames)
        report.size = loaded.frames[0].image.shape[1::-1]
        hidden, remaining, hidden_faces = [], [], []
        for index, frame in enumerate(loaded.frames):
            frame, left, covered = _hide(frame, _detect(frame, threshold, detector), method, check, detector)
            hidden.append(frame)
            hidden_faces.append(covered)
            remaining += [(index, face) for face in left]
        report.faces = [face for faces in hidden_faces for face in faces]
        report.face_frames = [index for index, faces in enumerate(hidden_faces) for _ in faces]
    except ImageReadError as error:
        report.error = str(error)
    except DetectorError as error:
        report.error = f"{source}: cannot be searched for faces ({error}); output not written"
    else:
        if remaining:
            best = max(face.score for _, face in remaining)
            where = f" in frame {remaining[0][0]}" if report.frames > 1 else ""
            report.status = NOT_ANONYMIZED
            report.error = (f"{source}: {len(remaining)} face(s) still detected{where} after {method} "
                            f"(best score {best:.2f}); output not written")
        else:
            try:
                _write_like_source(output, hidden, loaded, outputs,
                                   search=lambda frame: _detect(frame, check, detector))
                if mask_output is not None:
                    shape = loaded.frames[0].image.shape
                    masks.save_image(mask_output, np.max([face_mask(shape, faces) for faces in hidden_faces], axis=0))
            except _DetectedAfterEncoding as found:
                where = f" in frame {found.frame}" if report.frames > 1 else ""
                best = max(face.score for face in found.faces)
                report.status = NOT_ANONYMIZED
                report.error = (f"{source}: {len(found.faces)} face(s) detectable{where} once encoded as "
                                f"{_output_format(output)} (best score {best:.2f}); output not written")
            except (OSError, ValueError) as error:  # UnsafeOutputError is a ValueError
                report.error = f"{output}: cannot write ({error})"
            else:
                report.output, report.status = output, ANONYMIZED if report.faces else NO_FACES
    if not report.ok:
        remove_outputs(outputs, output)
        if mask_output is not None:
            remove_outputs(masks, mask_output)
    return report


def load_matte(path: os.PathLike, size: tuple[int, int], threshold: float = DEFAULT_THRESHOLD,
               detector: Optional[FaceDetector] = None) -> np.ndarray:
    """Decode an alpha matte that goes into an anonymized dataset, checking that it is one.

    Args:
        path: the matte file.
        size: (width, height) of its photo as written.

    Returns:
        (H, W) uint8 or uint16: the matte's pixels only (re-encode them: no
        metadata of the file goes along).

    Raises:
        ImageReadError: unreadable, not a single-channel 8- or 16-bit image,
            not the photo's size, or a face is detected in it (a photo, not a matte).
    """
    path = Path(path)
    with open_image(path) as image:
        if image.mode not in ("L", "I;16", "I;16L", "I;16B") or getattr(image, "n_frames", 1) != 1:
            raise ImageReadError(f"{path}: not an alpha matte (mode {image.mode}, {getattr(image, 'n_frames', 1)} "
                                 "frame(s); expected one single-channel 8- or 16-bit image)")
        if image.size != tuple(size):
            raise ImageReadError(f"{path}: matte is {image.width}x{image.height}, its photo {size[0]}x{size[1]}")
        matte = np.array(image, dtype=np.uint8 if image.mode == "L" else np.uint16)
    gray = matte if matte.dtype == np.uint8 else (matte.astype(np.float32) / 257.0).round().astype(np.uint8)
    faces = detect_faces(np.repeat(gray[:, :, None], 3, axis=2), threshold, detector)
    if faces:
        raise ImageReadError(f"{path}: a face is detected in this matte (score {faces[0].score:.2f}); "
                             "it looks like a photo, not an alpha matte")
    return matte


def anonymize_job(job: tuple, method: str, threshold: float, detector: FaceDetector,
                  verify_threshold: Optional[float] = None, outputs: Optional[OutputFolder] = None,
                  masks: Optional[OutputFolder] = None) -> FileReport:
    """:func:`anonymize_file` for one job ``(source, output, mask_output, refusal, matte)``; never raises.

    ``refusal`` is why the destination was refused before the batch started (or
    None); it and any failure become an ``error`` report, so the batch goes on.
    ``outputs`` and ``masks`` are the batch's guarded folders (OUT and the face
    masks' folder, both protecting every input of the run). ``matte`` is
    ``(matte_source, matte_target)`` in dataset mode (else None): the matte of a
    written image is checked and re-encoded through ``outputs``
    (:func:`write_dataset_matte`).
    """
    source, output, mask_output, refusal, matte = job
    if refusal is not None:
        return FileReport(Path(source), None, ERROR, error=refusal)
    try:
        if matte is not None and outputs is None:  # the job's own folders bound it
            folders = [Path(path).parent for path in (output, mask_output, matte[1]) if path is not None]
            outputs = OutputFolder(os.path.commonpath(folders), [source, matte[0]], clean=False)
        report = anonymize_file(source, output, mask_output, method, threshold, detector, verify_threshold,
                                outputs=outputs, masks=masks)
        if matte is not None:
            write_dataset_matte(report, *matte, (output, mask_output), detector, outputs)
        return report
    except Exception as error:  # noqa: BLE001 - one file's failure must not end the batch
        return FileReport(Path(source), None, ERROR, error=job_failure(source, error))


def write_dataset_matte(report: FileReport, source: Path, target: Path, image_outputs: tuple,
                        detector: Optional[FaceDetector], outputs: OutputFolder) -> None:
    """Re-encode the matte of a written image to ``target`` through ``outputs`` (OUT, :func:`load_matte`);
    a refused matte fails its image, and nothing of the image stays under OUT."""
    if report.ok:
        try:
            outputs.save_image(target, load_matte(source, report.size, report.verify_threshold, detector))
            return
        except ImageReadError as error:
            report.fail(str(error))
        except DetectorError as error:
            report.fail(f"{source}: cannot be searched for faces ({error})")
        except (OSError, ValueError) as error:
            report.fail(f"{target}: cannot write ({error})")
    remove_outputs(outputs, *image_outputs, target)


@dataclass(frozen=True)
class AnonymizeSetup:
    """The per-file anonymizing step, built where it runs (a picklable recipe for ``p3m.executors``).

    Calling it builds one face detector and returns ``step(job) -> FileReport``
    (:func:`anonymize_job`, through the guarded folders ``outputs`` and ``masks``).
    """

    method: str = "blur"
    threshold: float = DEFAULT_THRESHOLD
    verify_threshold: Optional[float] = None
    outputs: Optional[OutputFolder] = None
    masks: Optional[OutputFolder] = None

    def __call__(self) -> Callable[[tuple], FileReport]:
        return partial(anonymize_job, method=self.method, threshold=self.threshold, detector=default_detector(),
                       verify_threshold=self.verify_threshold, outputs=self.outputs, masks=self.masks)


def summarize(reports: list[FileReport]) -> str:
    """One line: how many files ended in each status."""
    count = {status: sum(report.status == status for report in reports) for status in STATUSES}
    faces = sum(len(report.faces) for report in reports if report.status == ANONYMIZED)
    return (f"{len(reports)} images: {count[ANONYMIZED]} anonymized ({faces} faces), "
            f"{count[NO_FACES]} without faces, {count[NOT_ANONYMIZED]} not anonymized, {count[ERROR]} failed")
