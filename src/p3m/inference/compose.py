"""Turning an alpha matte into files people use: 8/16-bit alpha, RGBA cutouts, composites.

Cutouts carry straight (not premultiplied) colour. With ``foreground="estimate"``
the colour at soft edges is re-estimated (pymatting's multi-level
``estimate_foreground_ml``) so hair does not carry the old background; with
``"original"`` the photo's own colour is kept.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import ImageColor

from p3m.io import read_image

FOREGROUND_MODES = ("estimate", "original")


def alpha_to_uint(alpha: np.ndarray, depth: int = 8) -> np.ndarray:
    """(H, W) float alpha in [0, 1] -> uint8 (depth 8) or uint16 (depth 16), rounded."""
    if depth not in (8, 16):
        raise ValueError(f"alpha depth must be 8 or 16, got {depth}")
    top, dtype = (255, np.uint8) if depth == 8 else (65535, np.uint16)
    return np.rint(np.clip(alpha, 0.0, 1.0) * top).astype(dtype)


def foreground_colour(image: np.ndarray, alpha: np.ndarray, mode: str = "estimate") -> np.ndarray:
    """Foreground colour for compositing.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        alpha: (H, W) float32 in [0, 1].
        mode: ``estimate`` (pymatting) or ``original`` (the photo itself).

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    if mode not in FOREGROUND_MODES:
        raise ValueError(f"unknown foreground mode {mode!r}; use one of {', '.join(FOREGROUND_MODES)}")
    colour = image.astype(np.float32) / 255.0
    if mode == "original":
        return colour
    from pymatting import estimate_foreground_ml

    soft = (alpha > 0.0) & (alpha < 1.0)
    if not soft.any():
        return colour
    estimated = estimate_foreground_ml(colour.astype(np.float64), alpha.astype(np.float64))
    return np.clip(estimated, 0.0, 1.0).astype(np.float32)


def cutout(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA with straight colour from a (H, W, 3) float foreground in [0, 1]."""
    rgb = np.rint(np.clip(foreground, 0.0, 1.0) * 255).astype(np.uint8)
    return np.dstack([rgb, alpha_to_uint(alpha, 8)])


def composite(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Blend ``foreground`` over ``background`` ((H, W, 3) uint8) -> (H, W, 3) uint8."""
    weight = np.clip(alpha, 0.0, 1.0)[:, :, None]
    blended = foreground * weight + (background.astype(np.float32) / 255.0) * (1.0 - weight)
    return np.rint(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)


def parse_colour(text: str) -> tuple[int, int, int]:
    """A colour as ``white``, ``#00ff00``, ``0,255,0``; raises ValueError otherwise."""
    parts = text.split(",")
    if len(parts) == 3:
        try:
            values = tuple(int(part) for part in parts)
        except ValueError:
            values = ()
        if len(values) == 3 and all(0 <= value <= 255 for value in values):
            return values
        raise ValueError(f"{text!r}: a colour as R,G,B needs three integers in 0-255")
    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(f"{text!r} is neither a colour (white, #00ff00, 0,255,0) nor an image file") from None


class Background:
    """A composite background: a solid colour or an image scaled to cover each photo."""

    def __init__(self, spec: str | os.PathLike = "white"):
        self.spec = str(spec)
        self._image = read_image(spec) if Path(spec).is_file() else None
        self._colour = None if self._image is not None else parse_colour(self.spec)

    def for_size(self, height: int, width: int) -> np.ndarray:
        """(height, width, 3) uint8: the colour, or the image resized to cover and centre-cropped."""
        if self._image is None:
            return np.broadcast_to(np.array(self._colour, np.uint8), (height, width, 3))
        source_h, source_w = self._image.shape[:2]
        scale = max(height / source_h, width / source_w)
        size = (max(width, round(source_w * scale)), max(height, round(source_h * scale)))
        scaled = cv2.resize(self._image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
        return scaled[top:top + height, left:left + width]
