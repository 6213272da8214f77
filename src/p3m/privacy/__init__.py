"""Privacy tooling: find faces, obfuscate them, check that none is left.

Functions work on (H, W, 3) uint8 RGB arrays; faces are :class:`Face` records
in the image's pixel coordinates. The CenterFace detector is loaded once, on
first use, and shared.

    >>> from p3m.privacy import detect_faces, obfuscate, verify
    >>> faces = detect_faces(image)
    >>> hidden = obfuscate(image, faces, method="blur")
    >>> assert not verify(hidden)
"""
from p3m.privacy.pipeline import Anonymized, anonymize, anonymize_for_model, verify
from p3m.privacy.detector import (DEFAULT_THRESHOLD, DetectorError, Face, FaceDetector, default_detector,
                                  detect_faces)
from p3m.privacy.files import STATUSES, AnonymizeSetup, FileReport, anonymize_file, anonymize_job, summarize
from p3m.privacy.obfuscate import METHODS, face_ellipse, face_mask, obfuscate

__all__ = [
    "AnonymizeSetup", "Anonymized", "DEFAULT_THRESHOLD", "DetectorError", "Face", "FaceDetector", "FileReport", "METHODS", "STATUSES",
    "anonymize", "anonymize_file", "anonymize_job", "anonymize_for_model", "default_detector", "detect_faces", "face_ellipse",
    "face_mask", "obfuscate", "summarize", "verify",
]
