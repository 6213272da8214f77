"""Face obfuscation: a soft elliptical region per face, blurred, pixelated or filled.

The region is an ellipse fitted to the face box, turned with the eye line and
grown so that all five landmarks lie inside with a margin. Its edge is
feathered outwards, so pixels farther than the feather band from every face
are never changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from p3m.privacy.detector import Face

METHODS = ("blur", "mosaic", "fill")
DEFAULT_MARGIN = 0.2
DEFAULT_FEATHER = 0.25
FILL_COLOR = (128, 128, 128)
_BLUR_FACE_PIXELS = 12  # a blurred face keeps about this much detail across its width
_MOSAIC_BLOCKS = 5  # mosaic blocks across a face


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in pixel coordinates; ``angle`` in radians, clockwise in the image."""

    cx: float
    cy: float
    a: float  # semi-axis along the eye line
    b: float  # semi-axis across it
    angle: float

    def radius(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside, 1 on the ellipse, > 1 outside."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dx, dy = xs - self.cx, ys - self.cy
        u = (dx * cos + dy * sin) / self.a
        v = (-dx * sin + dy * cos) / self.b
        return np.sqrt(u * u + v * v)

    def extent(self, scale: float = 1.0) -> tuple[float, float]:
        """Half width and half height of the bounding box of the ellipse grown by ``scale``."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        a, b = self.a * scale, self.b * scale
        return math.hypot(a * cos, b * sin), math.hypot(a * sin, b * cos)


def face_ellipse(face: Face, margin: float = DEFAULT_MARGIN) -> Ellipse:
    """The region to obfuscate for one face.

    The box's half sides grown by ``margin`` give the axes; the eye line's tilt
    from the nearest multiple of 90 degrees (a face may lie sideways or upside
    down) gives the angle; the ellipse is then scaled up, if needed,
    until every landmark is inside with the same relative margin.
    """
    x0, y0, x1, y1 = face.box
    (left_x, left_y), (right_x, right_y) = face.landmarks[0], face.landmarks[1]
    angle = math.atan2(right_y - left_y, right_x - left_x)
    # the box is upright for a face turned by a multiple of 90 degrees: the tilt is taken from the nearest one
    angle = (angle + math.pi / 4) % (math.pi / 2) - math.pi / 4
    grow = 1.0 + margin
    ellipse = Ellipse((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, 1.0) / 2 * grow, max(y1 - y0, 1.0) / 2 * grow, angle)
    points = np.asarray(face.landmarks, dtype=np.float64)
    widest = float(ellipse.radius(points[:, 0], points[:, 1]).max()) * grow
    if widest > 1.0:
        ellipse = Ellipse(ellipse.cx, ellipse.cy, ellipse.a * widest, ellipse.b * widest, angle)
    return ellipse


def _window(ellipse: Ellipse, reach: float, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """Pixel window (rows, cols) covering the ellipse grown by ``reach``, clipped to the image."""
    half_w, half_h = ellipse.extent(reach)
    height, width = shape
    c0, c1 = max(0, math.floor(ellipse.cx - half_w)), min(width, math.ceil(ellipse.cx + half_w) + 1)
    r0, r1 = max(0, math.floor(ellipse.cy - half_h)), min(height, math.ceil(ellipse.cy + half_h) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _weights(ellipse: Ellipse, window: tuple[slice, slice], feather: float) -> np.ndarray:
    """(h, w) float32: 1 inside the ellipse, a smooth fall to 0 over the feather band."""
    rows, cols = window
    ys, xs = np.mgrid[rows, cols]
    radius = ellipse.radius(xs + 0.5, ys + 0.5)  # pixel centres
    if feather <= 0:
        return (radius <= 1.0).astype(np.float32)
    t = np.clip((1.0 + feather - radius) / feather, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def face_mask(shape: Sequence[int], faces: Sequence[Face], margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Face mask in the P3M-10k ``facemask`` convention.

    Args:
        shape: (H, W) or (H, W, C) of the image.
        faces: detected faces.

    Returns:
        (H, W) uint8: 255 inside the face ellipses, 0 elsewhere.
    """
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), dtype=np.uint8)
    for face in faces:
        ellipse = face_ellipse(face, margin)
        window = _window(ellipse, 1.0, (height, width))
        if window is not None:
            mask[window][_weights(ellipse, window, 0.0) > 0] = 255
    return mask


def _blurred(patch: np.ndarray, face_width: float) -> np.ndarray:
    """Blur so strong that only about ``_BLUR_FACE_PIXELS`` of detail survive across a face."""
    height, width = patch.shape[:2]
    factor = min(1.0, _BLUR_FACE_PIXELS / max(face_width, 1.0))
    small_size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = cv2.resize(patch, small_size, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=2.0, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _pixelated(patch: np.ndarray, face_width: float) -> np.ndarray:
    height, width = patch.shape[:2]
    block = max(1.0, face_width / _MOSAIC_BLOCKS)
    small_size = (max(1, round(width / block)), max(1, round(height / block)))
    small = cv2.resize(patch, small_size, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def obfuscate(image: np.ndarray, faces: Sequence[Face], method: str = "blur", margin: float = DEFAULT_MARGIN,
              feather: float = DEFAULT_FEATHER, fill_color: Sequence[int] = FILL_COLOR) -> np.ndarray:
    """Hide each face under a feathered ellipse.

    Args:
        image: (H, W, 3) uint8 RGB.
        faces: from :func:`detect_faces`, in the same pixel coordinates.
        method: ``blur`` (the P3M-10k look), ``mosaic`` or ``fill`` (``fill_color``).
        margin: ellipse growth beyond the face box, relative to its size.
        feather: width of the soft edge outside the ellipse, relative to its axes.

    Returns:
        (H, W, 3) uint8, a new array; pixels outside every face's feather band
        are bit-identical to the input.
    """
    if method not in METHODS:
        raise ValueError(f"unknown obfuscation method {method!r}; choose from {', '.join(METHODS)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    output = image.copy()
    for face in faces:
        ellipse = face_ellipse(face, margin)
        # reach well past the feather band, so that the blur has context on every side
        window = _window(ellipse, 2.0 * (1.0 + feather), image.shape[:2])
        if window is None:
            continue
        weights = _weights(ellipse, window, feather)[:, :, None]
        patch = output[window]
        face_width = 2.0 * min(ellipse.a, ellipse.b) / (1.0 + margin)
        if method == "blur":
            hidden = _blurred(patch, face_width)
        elif method == "mosaic":
            hidden = _pixelated(patch, face_width)
        else:
            hidden = np.broadcast_to(np.asarray(fill_color, dtype=np.uint8), patch.shape)
        mixed = patch * (1.0 - weights) + hidden * weights
        output[window] = np.where(weights > 0, np.clip(np.rint(mixed), 0, 255), patch).astype(np.uint8)
    return output
