"""Detect, obfuscate, verify: the anonymization pipeline on arrays."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from p3m.privacy.detector import DEFAULT_THRESHOLD, Face, FaceDetector, detect_faces, merge_faces
from p3m.privacy.obfuscate import DEFAULT_FEATHER, DEFAULT_MARGIN, obfuscate


# Obfuscation passes before a file fails verification: each later pass hides again
# what the check still finds (one more pass cleared every such case of the privacy suite).
OBFUSCATION_ROUNDS = 3
# Privacy mode's first blur: the ellipse fitted to the face box and landmarks without margin,
# and a soft edge a tenth of its axes wide (the matte depends on the hair around the face).
TIGHT_MARGIN = 0.0
TIGHT_FEATHER = 0.1


@dataclass(frozen=True)
class Anonymized:
    """Result of :func:`anonymize`.

    Attributes:
        image: (H, W, 3) uint8, the faces obfuscated.
        faces: faces detected in the input.
        remaining: faces the detector still finds in ``image``; empty when the
            anonymization is verified.
    """

    image: np.ndarray
    faces: list[Face]
    remaining: list[Face]

    @property
    def verified(self) -> bool:
        return not self.remaining


def verify(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
           detector: Optional[FaceDetector] = None) -> list[Face]:
    """Faces still detectable in an image meant to be anonymous (empty list: passes).

    This is the same detector at the same threshold as :func:`detect_faces`,
    run on the image to publish, so the check fails closed: anything the
    detector would have obfuscated counts as a face left visible.
    """
    return detect_faces(image, threshold, detector)


def anonymize(image: np.ndarray, method: str = "blur", threshold: float = DEFAULT_THRESHOLD,
              detector: Optional[FaceDetector] = None, verify_threshold: Optional[float] = None) -> Anonymized:
    """Obfuscate every detected face, then detect again on the result.

    Args:
        image: (H, W, 3) uint8 RGB.
        method: ``blur``, ``mosaic`` or ``fill`` (see :func:`obfuscate`).
        threshold: detection threshold.
        verify_threshold: threshold of the check on the result; by default
            the lower of ``threshold`` and :data:`DEFAULT_THRESHOLD`, so that
            raising ``threshold`` never loosens the check.

    Returns:
        the obfuscated image with the faces found before and after: where
        the check still finds a face (a blurred face can keep a face's
        shape), that face is obfuscated again, up to OBFUSCATION_ROUNDS in all.
    """
    faces = detect_faces(image, threshold, detector)
    check = default_verify_threshold(threshold) if verify_threshold is None else verify_threshold
    if not faces and check >= threshold:
        return Anonymized(image.copy(), [], [])
    hidden, remaining = image, faces
    for _ in range(OBFUSCATION_ROUNDS):
        hidden = obfuscate(hidden, remaining, method)
        remaining = verify(hidden, check, detector)
        if not remaining:
            break
    return Anonymized(hidden, faces, remaining)


def default_verify_threshold(threshold: float) -> float:
    """Verification runs at the default threshold or lower, whatever the detection threshold."""
    return min(threshold, DEFAULT_THRESHOLD)


class PrivacyError(ValueError):
    """A face is still detected in the image the network would see; the network does not run."""


@dataclass(frozen=True)
class PrivacyRecord:
    """What privacy mode did to the network's input.

    Attributes:
        faces_hidden: faces detected and obfuscated.
        method: ``blur``, or ``fill`` when a face was still detected under repeated blurs.
        threshold: detection and verification score threshold.
        verified: the detector finds no face in the network's input (always
            true in a record: a failed verification raises instead).
    """

    faces_hidden: int
    method: str
    threshold: float
    verified: bool = True

    def to_dict(self) -> dict:
        return {"faces_hidden": self.faces_hidden, "method": self.method, "threshold": self.threshold,
                "verified": self.verified}


def hide_faces_for_model(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                         detector: Optional[FaceDetector] = None) -> tuple[np.ndarray, PrivacyRecord]:
    """Obfuscate the faces of a photo before a matting network sees it, and verify (privacy mode).

    Faces are blurred (the P3M-10k look the network was trained on) inside
    an ellipse fitted to the face box with a narrow soft edge, which keeps
    the blur off the hair and the head's outline; the result is searched
    again with the same detector and threshold, and what is still found is
    blurred again with :func:`anonymize`'s wider margin; if a face is still
    found then, every face is filled flat and searched again.

    Args:
        image: (H, W, 3) uint8 RGB.
        threshold: detection and verification threshold.

    Returns:
        (H, W, 3) uint8 RGB, a new array in which no face is detected (every
        pixel outside the faces' feathered ellipses identical to ``image``),
        and the record of what was done.

    Raises:
        ValueError: ``image`` is not an (H, W, 3) uint8 array.
        PrivacyError: a face is still detected after filling.
        DetectorError: the image cannot be searched.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {getattr(image, 'shape', type(image))} "
                         f"{getattr(image, 'dtype', '')}".rstrip())
    faces = detect_faces(image, threshold, detector)
    if not faces:
        return image.copy(), PrivacyRecord(0, "blur", threshold)
    hidden, remaining = image, faces
    rounds = [("blur", TIGHT_MARGIN, TIGHT_FEATHER)] + [("blur", DEFAULT_MARGIN, DEFAULT_FEATHER)] * (
        OBFUSCATION_ROUNDS - 2) + [("fill", DEFAULT_MARGIN, DEFAULT_FEATHER)]
    for method, margin, feather in rounds:
        hidden = obfuscate(hidden, remaining if method == "blur" else merge_faces([*faces, *remaining]), method,
                           margin, feather)
        remaining = verify(hidden, threshold, detector)
        if not remaining:
            return hidden, PrivacyRecord(len(faces), method, threshold)
    best = max(face.score for face in remaining)
    raise PrivacyError(f"{len(remaining)} face(s) still detected after filling every face (best score "
                       f"{best:.2f}); the network was not run on this image")


def anonymize_for_model(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The network's input in privacy mode: :func:`hide_faces_for_model` without its record."""
    return hide_faces_for_model(image, threshold)[0]
