"""Privacy tooling: find faces, obfuscate them, check that none is left.

Functions work on (H, W, 3) uint8 RGB arrays; faces are :class:`Face` records
in the image's pixel coordinates. The CenterFace detector is loaded once, on
first use, and shared.

    >>> from p3m.privacy import detect_faces, obfuscate, verify
    >>> faces = detect_faces(image)
    >>> hidden = obfuscate(image, faces, method="blur")
    >>> assert not verify(hidden)
"""
from p3m.privacy.pipeline import (Anonymized, PrivacyError, PrivacyRecord, anonymize, anonymize_for_model,
                                  hide_faces_for_model, verify)
from p3m.privacy.detector import (DEFAULT_THRESHOLD, MIN_FACE, TURNED_MIN_FACE, DetectorError, Face, FaceDetector,
                                  default_detector, detect_faces, merge_faces)
from p3m.privacy.files import STATUSES, FileReport, anonymize_file, load_matte, remove_outputs, summarize, views
from p3m.privacy.obfuscate import METHODS, face_ellipse, face_mask, obfuscate

__all__ = [
    "Anonymized", "DEFAULT_THRESHOLD", "DetectorError", "Face", "FaceDetector", "FileReport", "METHODS", "MIN_FACE",
    "PrivacyError", "PrivacyRecord", "STATUSES", "TURNED_MIN_FACE", "anonymize", "anonymize_file",
    "anonymize_for_model", "default_detector", "detect_faces", "face_ellipse", "face_mask", "hide_faces_for_model",
    "load_matte", "merge_faces", "obfuscate", "remove_outputs", "summarize", "verify", "views",
]
