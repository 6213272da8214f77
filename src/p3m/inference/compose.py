"""Turning an alpha matte into files people use: 8/16-bit alpha, RGBA cutouts, composites.

Cutouts carry straight (not premultiplied) colour. With ``foreground="estimate"``
(the default) the colour in the soft band of the matte (0 < alpha < 1) is
re-estimated by blur fusion (Forte and Pitié, ICIP 2021), so hair does not carry
the old background; ``"ml"`` uses pymatting's multi-level estimator (compiled by
numba on first use, about 30 s once per user); ``"original"`` keeps the photo's
own colour. Pixels with alpha exactly 0 or 1 keep the photo's colour in every mode
but ``ml``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import cv2
import numpy as np
from PIL import ImageColor

from p3m.io import read_image

if TYPE_CHECKING:
    from p3m.inference.matter import MatteResult

FOREGROUND_MODES = ("estimate", "ml", "original")
# Box sizes of the successive blur-fusion passes, in pixels of a matte with a 1080-px
# shorter side (Matter's default working size: the matte has no finer structure).
# Large first to reach pure colours across the band, small last to keep their detail;
# five passes measured better than the paper's two (90, 6) on scripts/bench_foreground.py.
BLUR_FUSION_SIZES = (90, 45, 20, 9, 3)
MATTE_SHORTER_SIDE = 1080
# The blurs run on a copy of at most this many pixels; only the band is done at full size.
BLUR_FUSION_PIXELS = 2 ** 20
STRIP_ROWS = 256
# A strip whose band covers more than this share of its pixels is fused whole (dense arrays
# beat gathering most of the strip's pixels one by one).
DENSE_BAND_SHARE = 0.25


def alpha_to_uint(alpha: np.ndarray, depth: int = 8) -> np.ndarray:
    """(H, W) float alpha in [0, 1] -> uint8 (depth 8) or uint16 (depth 16), rounded."""
    if depth not in (8, 16):
        raise ValueError(f"alpha depth must be 8 or 16, got {depth}")
    top, dtype = (255, np.uint8) if depth == 8 else (65535, np.uint16)
    scaled = np.clip(alpha, 0.0, 1.0)
    scaled *= top
    return np.rint(scaled, out=scaled).astype(dtype)


def foreground_colour(image: np.ndarray, alpha: np.ndarray, mode: str = "estimate") -> np.ndarray:
    """Foreground colour for compositing.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        alpha: (H, W) float32 in [0, 1].
        mode: ``estimate`` (blur fusion), ``ml`` (pymatting) or ``original`` (the photo itself).

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    _check_mode(mode)
    if mode == "ml":
        return _multilevel_foreground(image, alpha)
    colour = image.astype(np.float32) / 255.0
    if mode == "estimate":
        _blur_fusion_band(image, alpha, colour)
    return colour


def foreground_rgb8(image: np.ndarray, alpha: np.ndarray, mode: str = "estimate") -> np.ndarray:
    """As :func:`foreground_colour`, as (H, W, 3) uint8 (a quarter of its memory)."""
    _check_mode(mode)
    if mode == "ml":
        return np.rint(_multilevel_foreground(image, alpha) * 255).astype(np.uint8)
    if mode == "original":
        return image
    colour = image.copy()
    _blur_fusion_band(image, alpha, colour)
    return colour


def _check_mode(mode: str) -> None:
    if mode not in FOREGROUND_MODES:
        raise ValueError(f"unknown foreground mode {mode!r}; use one of {', '.join(FOREGROUND_MODES)}")


def _multilevel_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """pymatting's ``estimate_foreground_ml`` on the whole image (float64 inside) -> float32 in [0, 1]."""
    colour = image.astype(np.float32) / 255.0
    if not ((alpha > 0.0) & (alpha < 1.0)).any():
        return colour
    from pymatting import estimate_foreground_ml

    estimated = estimate_foreground_ml(colour.astype(np.float64), alpha.astype(np.float64))
    return np.clip(estimated, 0.0, 1.0).astype(np.float32)


def _blur_fusion_band(image: np.ndarray, alpha: np.ndarray, out: np.ndarray) -> None:
    """Write blur-fusion foreground colour into ``out`` where 0 < alpha < 1.

    The blurred colours are smooth, so they are computed on a copy of at most
    ``BLUR_FUSION_PIXELS`` pixels; only the band is then fused at full size,
    strip by strip, so time and memory follow the band.

    Args:
        image: (H, W, 3) uint8 RGB.
        alpha: (H, W) float in [0, 1].
        out: (H, W, 3) uint8 (0-255) or float32 (0-1), the photo's colour elsewhere.
    """
    height, width = alpha.shape
    fg_blur, bg_blur = None, None
    for top in range(0, height, STRIP_ROWS):
        strip = alpha[top:top + STRIP_ROWS]
        band = (strip > 0.0) & (strip < 1.0)
        count = np.count_nonzero(band)
        if not count:
            continue
        if fg_blur is None:
            fg_blur, bg_blur = _blurred_colours(image, alpha)
        if count > DENSE_BAND_SHARE * band.size:
            _fuse_strip(image, strip, band, top, fg_blur, bg_blur, out)
            continue
        y_scale, x_scale = fg_blur.shape[0] / height, fg_blur.shape[1] / width
        rows, cols = np.nonzero(band)
        rows += top
        weight = alpha[rows, cols].astype(np.float32)[:, None]
        colour = image[rows, cols].astype(np.float32) / 255.0
        fg = _sample_bilinear(fg_blur, rows, cols, y_scale, x_scale)
        bg = _sample_bilinear(bg_blur, rows, cols, y_scale, x_scale)
        fused = np.clip(_fuse(colour, weight, fg, bg), 0.0, 1.0)
        out[rows, cols] = np.rint(fused * 255) if out.dtype == np.uint8 else fused


def _fuse(colour: np.ndarray, weight: np.ndarray, fg_blur: np.ndarray, bg_blur: np.ndarray) -> np.ndarray:
    """Blur fusion: the blurred foreground, corrected so that it re-composites to the photo."""
    return fg_blur + weight * (colour - weight * fg_blur - (1.0 - weight) * bg_blur)


def _blurred_colours(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blurred foreground and background colour after the passes of ``BLUR_FUSION_SIZES``.

    Returns two (h, w, 3) float32 arrays in [0, 1], the image scaled down to at
    most ``BLUR_FUSION_PIXELS`` pixels (not scaled when already smaller).
    """
    height, width = alpha.shape
    scale = min(1.0, (BLUR_FUSION_PIXELS / (height * width)) ** 0.5)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small_alpha = cv2.resize(alpha.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        colour = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    else:
        small_alpha = alpha.astype(np.float32)
        colour = image.astype(np.float32) / 255.0
    box_scale = scale * max(1.0, min(height, width) / MATTE_SHORTER_SIDE)
    largest_box = min(small_alpha.shape)
    weight = small_alpha[:, :, None]
    fg = colour
    bg_blur = None
    for index, box in enumerate(BLUR_FUSION_SIZES):
        side = min(largest_box, max(1, round(box * box_scale)))
        alpha_blur = cv2.blur(small_alpha, (side, side))[:, :, None]
        fg_blur = cv2.blur(fg * weight, (side, side))
        fg_blur /= alpha_blur + 1e-5
        if bg_blur is None:
            bg_blur = cv2.blur(colour * (1.0 - weight), (side, side))
            bg_blur /= 1.0 - alpha_blur + 1e-5
        if index < len(BLUR_FUSION_SIZES) - 1:
            fg = np.clip(_fuse(colour, weight, fg_blur, bg_blur), 0.0, 1.0)
    return fg_blur, bg_blur


def _grid_coordinates(index: np.ndarray, scale: float, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper grid indices and the weight of the upper one, for full-size pixel centres."""
    position = np.clip((index + 0.5) * scale - 0.5, 0, last).astype(np.float32)
    lower = position.astype(np.intp)
    return lower, np.minimum(lower + 1, last), position - lower


def _sample_bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                     y_scale: float, x_scale: float) -> np.ndarray:
    """(N, C) bilinear samples of (h, w, C) ``grid`` at full-size pixel centres (rows, cols)."""
    y0, y1, fy = _grid_coordinates(rows, y_scale, grid.shape[0] - 1)
    x0, x1, fx = _grid_coordinates(cols, x_scale, grid.shape[1] - 1)
    fy, fx = fy[:, None], fx[:, None]
    upper = grid[y0, x0] * (1.0 - fx) + grid[y0, x1] * fx
    lower = grid[y1, x0] * (1.0 - fx) + grid[y1, x1] * fx
    return upper * (1.0 - fy) + lower * fy


def _fuse_strip(image: np.ndarray, strip: np.ndarray, band: np.ndarray, top: int,
                fg_blur: np.ndarray, bg_blur: np.ndarray, out: np.ndarray) -> None:
    """Blur fusion on whole rows ``top:top + len(strip)`` (written where ``band``): the dense
    form of the per-pixel path, for strips that are mostly band."""
    rows = slice(top, top + strip.shape[0])
    size = (image.shape[1], strip.shape[0])
    weight = strip.astype(np.float32)[:, :, None]
    fg = _upsample_rows(fg_blur, top, size, out.shape[0])
    bg = _upsample_rows(bg_blur, top, size, out.shape[0])
    colour = image[rows].astype(np.float32)
    colour *= np.float32(1.0 / 255.0)
    colour -= bg  # fused = fg + w * ((colour - bg) - w * (fg - bg))
    fg_minus_bg = np.subtract(fg, bg, out=bg)
    fg_minus_bg *= weight
    colour -= fg_minus_bg
    colour *= weight
    colour += fg
    np.clip(colour, 0.0, 1.0, out=colour)
    if out.dtype == np.uint8:
        colour *= 255
        colour = np.rint(colour, out=colour).astype(np.uint8)
    np.copyto(out[rows], colour, where=band[:, :, None])


def _upsample_rows(grid: np.ndarray, top: int, size: tuple[int, int], height: int) -> np.ndarray:
    """Rows ``top:top + size[1]`` of ``grid`` bilinearly resized to ``height`` x ``size[0]``
    (pixel centres aligned, edges clamped): (size[1], size[0], C) float32."""
    y_scale, x_scale = grid.shape[0] / height, grid.shape[1] / size[0]
    inverse = np.float32([[x_scale, 0, 0.5 * x_scale - 0.5],
                          [0, y_scale, (top + 0.5) * y_scale - 0.5]])
    return cv2.warpAffine(grid, inverse, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def cutout(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA with straight colour from a (H, W, 3) foreground: float in [0, 1] or uint8.

    Pixels whose 8-bit alpha is 0 are stored as (0, 0, 0, 0): their colour is
    invisible, and a PNG of them is about half the size and encodes twice as fast.
    """
    if foreground.dtype != np.uint8:
        foreground = np.rint(np.clip(foreground, 0.0, 1.0) * 255).astype(np.uint8)
    rgba = np.empty((*alpha.shape, 4), np.uint8)
    rgba[:, :, 3] = alpha_to_uint(alpha, 8)
    np.multiply(foreground, rgba[:, :, 3:] > 0, out=rgba[:, :, :3])
    return rgba


def composite(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Blend ``foreground`` (float in [0, 1] or uint8) over ``background`` ((H, W, 3) uint8) -> (H, W, 3) uint8."""
    scale = 1.0 / 255.0 if foreground.dtype == np.uint8 else 1.0
    blended = np.empty(background.shape, np.uint8)
    for top in range(0, alpha.shape[0], STRIP_ROWS):
        rows = slice(top, top + STRIP_ROWS)
        weight = np.clip(alpha[rows], 0.0, 1.0).astype(np.float32)[:, :, None]
        mixed = foreground[rows] * np.float32(scale) * weight
        mixed += (background[rows].astype(np.float32) / 255.0) * (1.0 - weight)
        blended[rows] = np.rint(np.clip(mixed, 0.0, 1.0) * 255)
    return blended


def output_images(result: MatteResult, kinds: Sequence[str], foreground: str = "estimate", alpha_depth: int = 8,
                  background: Background | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Each requested kind of output for one matte, one at a time, in the order of ``kinds``.

    alpha: (H, W) uint8 or uint16 (``alpha_depth`` 8 or 16); rgba: (H, W, 4)
    uint8 cutout; composite: (H, W, 3) uint8 over ``background``; trimap:
    (H, W) uint8. The foreground colour (``foreground`` mode) is estimated
    once, and only when rgba or composite is asked for.
    """
    colour = None
    if "rgba" in kinds or "composite" in kinds:
        colour = foreground_rgb8(result.image, result.alpha, foreground)
    for kind in kinds:
        if kind == "alpha":
            yield kind, alpha_to_uint(result.alpha, alpha_depth)
        elif kind == "rgba":
            yield kind, cutout(colour, result.alpha)
        elif kind == "composite":
            yield kind, composite(colour, result.alpha, background.for_size(*result.alpha.shape))
        else:
            yield kind, result.trimap


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
