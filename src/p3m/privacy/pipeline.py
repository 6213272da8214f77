"""Detect, obfuscate, verify: the anonymization pipeline on arrays."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from p3m.privacy.detector import DEFAULT_THRESHOLD, Face, FaceDetector, detect_faces
from p3m.privacy.obfuscate import obfuscate


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
              detector: Optional[FaceDetector] = None) -> Anonymized:
    """Obfuscate every detected face, then detect again on the result.

    Args:
        image: (H, W, 3) uint8 RGB.
        method: ``blur``, ``mosaic`` or ``fill`` (see :func:`obfuscate`).
        threshold: detection threshold, for both passes.

    Returns:
        the obfuscated image with the faces found before and after.
    """
    faces = detect_faces(image, threshold, detector)
    if not faces:
        return Anonymized(image.copy(), [], [])
    hidden = obfuscate(image, faces, method)
    return Anonymized(hidden, faces, verify(hidden, threshold, detector))


def anonymize_for_model(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Blur the faces of a photo before a matting network sees it (privacy mode).

    P3M-Net was trained on P3M-10k, whose faces are blurred, so a blurred face
    is what the network expects; the alpha it predicts is applied to the
    original photo. Only the network's input changes. Uses the shared
    detector (created once); there is no verification pass, since this
    image is never written out.

    Args:
        image: (H, W, 3) uint8 RGB.
        threshold: detection threshold.

    Returns:
        (H, W, 3) uint8 RGB, a new array: faces blurred, every pixel outside
        the faces' feathered ellipses identical to ``image``.

    Raises:
        ValueError: ``image`` is not an (H, W, 3) uint8 array.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {getattr(image, 'shape', type(image))} "
                         f"{getattr(image, 'dtype', '')}".rstrip())
    return obfuscate(image, detect_faces(image, threshold), "blur")
