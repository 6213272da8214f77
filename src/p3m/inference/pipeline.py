"""The official P3M inference strategies, HYBRID and RESIZE, on one RGB image.

Any engine (:mod:`p3m.inference.engines`) runs the network; everything around
it is numpy, so this module never imports PyTorch. The trimap argmax and the
fusion work on the engine's outputs in float32 whatever its precision.

Deliberate reproductions of the official code (comparability with published
numbers): each pass floors both sides to a multiple of 32 and caps each side at
``max_size`` independently (the cap ignores the aspect ratio); images and maps
are resized with ``skimage.transform.resize`` defaults (bilinear, Gaussian
anti-aliasing when shrinking, reflect mode). Shrinking the photo for a pass
computes that same filter and interpolation in float32 with OpenCV
(:func:`shrink_image`), 10-40x faster than skimage's float64 and equal to it
within float32 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import cv2
import numpy as np
from skimage.transform import resize

from p3m.inference.engines import Engine

MIN_PASS_SIDE = 32
TRIMAP_LEVELS = np.array([0, 128, 255], dtype=np.uint8)


class Method(str, Enum):
    HYBRID = "hybrid"
    RESIZE = "resize"

    @classmethod
    def parse(cls, value: "str | Method") -> "Method":
        try:
            return cls(str(value.value if isinstance(value, Method) else value).lower())
        except ValueError:
            raise ValueError(f"unknown method {value!r}; use 'hybrid' or 'resize'") from None


@dataclass(frozen=True)
class PassOutput:
    """One network pass: numpy maps at the pass resolution, None where not requested."""

    trimap: np.ndarray | None  # (h, w) uint8 in {0, 128, 255}: argmax of the global logits
    local_alpha: np.ndarray | None  # (h, w) float32 in [0, 1]
    fused_alpha: np.ndarray | None  # (h, w) float32 in [0, 1]


def pass_size(height: int, width: int, ratio: float, max_size: int) -> tuple[int, int]:
    """Network input size of a pass at ``ratio``: each side floored to 32, then capped
    (a cap that is not a multiple of 32 is floored too; the official 1600 is one)."""
    cap = max_size - max_size % 32
    return tuple(min(cap, side - side % 32) for side in (int(height * ratio), int(width * ratio)))


def smallest_supported_side(ratio: float) -> int:
    """The shortest image side for which a pass at ``ratio`` still gets 32 px."""
    return int(np.ceil(MIN_PASS_SIDE / ratio))


def normalise(image: np.ndarray, mean, std) -> np.ndarray:
    """(h, w, 3) float image in [0, 255] -> (1, 3, h, w) normalised float32 array.

    As the official code: cast to float32, divide by 255, then normalise (all in float32).
    """
    planes = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    planes -= np.asarray(mean, dtype=np.float32)[:, None, None]
    planes /= np.asarray(std, dtype=np.float32)[:, None, None]
    return planes[None]


def trimap_from_logits(global_logits: np.ndarray) -> np.ndarray:
    """(3, h, w) logits -> (h, w) uint8 trimap: background 0, transition 128, foreground 255."""
    return TRIMAP_LEVELS[global_logits.argmax(axis=0)]


def fuse(global_logits: np.ndarray, local_alpha: np.ndarray) -> np.ndarray:
    """The official fusion on numpy maps: argmax background -> 0, foreground -> 1,
    transition -> ``local_alpha``. (3, h, w) and (h, w) float32 -> (h, w) float32."""
    region = global_logits.argmax(axis=0)
    return np.where(region == 1, local_alpha, (region == 2).astype(np.float32))


def shrink_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> ``size`` (h, w) float32 in [0, 255], as ``resize(image, size) * 255``.

    skimage's defaults where no side grows: a Gaussian of sigma ``(H / h - 1) / 2`` per axis,
    truncated at 4 sigma, with mirrored borders, then bilinear sampling at pixel centres (which
    never leaves the image when shrinking, so the border rule of the sampling does not matter),
    clipped to the input's range. Growing a side falls back to skimage (its mirrored borders differ
    from OpenCV's there).
    """
    height, width = size
    if height > image.shape[0] or width > image.shape[1]:
        return (resize(image, size) * 255.0).astype(np.float32)
    planes = image.astype(np.float32)
    row_sigma, column_sigma = (max(0.0, (old / new - 1) / 2) for old, new in zip(image.shape, size))
    if row_sigma or column_sigma:
        planes = cv2.sepFilter2D(planes, -1, _gaussian_kernel(column_sigma), _gaussian_kernel(row_sigma),
                                 borderType=cv2.BORDER_REFLECT_101)
    shrunk = cv2.resize(planes, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(shrunk, float(image.min()), float(image.max()), out=shrunk)


def run_pass(engine: Engine, image: np.ndarray, size: tuple[int, int], need_global: bool = True,
             need_local: bool = True, local_region: np.ndarray | None = None) -> PassOutput:
    """Resize ``image`` ((H, W, 3) uint8) to ``size`` and run the network once,
    computing only the branches needed (the others' outputs are unused by the strategy);
    ``local_region``: see ``Engine.run``."""
    network_input = normalise(shrink_image(image, size), engine.mean, engine.std)
    raw = engine.run(network_input, need_global=need_global, need_local=need_local, local_region=local_region)
    del network_input
    return PassOutput(
        trimap=None if raw.global_logits is None else trimap_from_logits(raw.global_logits),
        local_alpha=raw.local_alpha,
        fused_alpha=None if not (need_global and need_local) else fuse(raw.global_logits, raw.local_alpha),
    )


def resize_sources(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The pixels of a ``size`` (h, w) map that ``resize(map, mask.shape)`` (bilinear, h <= H and
    w <= W) reads to compute the pixels of ``mask`` ((H, W) bool), with one pixel of margin.

    Per axis, output pixel P samples input coordinate c = (P + 0.5) * h / H - 0.5 between
    floor(c) and floor(c) + 1 (clamped at the borders); pixels floor(c) - 1 .. floor(c) + 2 are
    marked. Returns (h, w) bool.
    """
    for axis, inputs in enumerate(size):
        outputs = mask.shape[axis]
        base = np.floor((np.arange(outputs) + 0.5) * (inputs / outputs) - 0.5).astype(np.int64)
        low, high = np.clip(base - 1, 0, inputs - 1), np.clip(base + 2, 0, inputs - 1)
        # input pixel p is read by the output pixels [first[p], last[p]) (both bounds rise with p)
        pixels = np.arange(inputs)
        first, last = np.searchsorted(high, pixels, side="left"), np.searchsorted(low, pixels, side="right")
        counts = np.cumsum(mask, axis=axis, dtype=np.int32)
        counts = np.concatenate([np.zeros_like(counts.take([0], axis=axis)), counts], axis=axis)
        mask = counts.take(last, axis=axis) > counts.take(first, axis=axis)
    return mask


def hybrid(engine: Engine, image: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """HYBRID: global pass at 1/2 scale gives the trimap, local pass at full scale the detail.

    The official fusion takes the local alpha only where the (resized) trimap is neither 0
    nor 255; the local pass is told so (``local_region``), and the torch engine then skips
    the last decoder stages away from that transition band. The alpha is the same.

    Returns:
        alpha: (H, W) float32 in [0, 1]; trimap: (H, W) uint8 of the global pass.
    """
    height, width = image.shape[:2]
    global_pass = run_pass(engine, image, pass_size(height, width, 0.5, max_size), need_local=False)
    trimap_full = resize(global_pass.trimap, (height, width)) * 255.0
    certain = (trimap_full == 0) | (trimap_full == 255)
    local_size = pass_size(height, width, 1.0, max_size)
    # The local alpha counts only where the trimap is uncertain: the engine may skip the rest.
    local_pass = run_pass(engine, image, local_size, need_global=False,
                          local_region=resize_sources(~certain, local_size))
    local_full = resize(local_pass.local_alpha, (height, width))
    alpha = np.where(certain, trimap_full / 255.0, local_full).astype(np.float32)
    return alpha, _nearest(global_pass.trimap, height, width)


def resize_method(engine: Engine, image: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """RESIZE: one pass at 1/2 scale; its fused alpha is resized to full size."""
    height, width = image.shape[:2]
    single = run_pass(engine, image, pass_size(height, width, 0.5, max_size))
    alpha = resize(single.fused_alpha, (height, width)).astype(np.float32)
    return alpha, _nearest(single.trimap, height, width)


def small_image(engine: Engine, image: np.ndarray, max_size: int, min_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The official Swin-T path for an image with a side under ``min_side``, for either method:
    one pass at ``ratio = max(min_side / H, min_side / W)``; its fused alpha is resized to full size."""
    height, width = image.shape[:2]
    ratio = max(min_side / height, min_side / width)
    single = run_pass(engine, image, pass_size(height, width, ratio, max_size))
    alpha = resize(single.fused_alpha, (height, width)).astype(np.float32)
    return alpha, _nearest(single.trimap, height, width)


def matte(engine: Engine, image: np.ndarray, method: Method, max_size: int,
          small_image_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Alpha ((H, W) float32 in [0, 1]) and trimap ((H, W) uint8) of ``image`` by ``method``,
    or by :func:`small_image` when a side is under ``small_image_side``."""
    if small_image_side is not None and min(image.shape[:2]) < small_image_side:
        return small_image(engine, image, max_size, small_image_side)
    return STRATEGIES[method](engine, image, max_size)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian: truncated at ``int(4 * sigma + 0.5)`` taps each side, summing to 1."""
    radius = int(4.0 * sigma + 0.5)
    return cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_32F) if radius else np.ones((1, 1), np.float32)


def _nearest(trimap: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(trimap, (width, height), interpolation=cv2.INTER_NEAREST)


STRATEGIES = {Method.HYBRID: hybrid, Method.RESIZE: resize_method}
