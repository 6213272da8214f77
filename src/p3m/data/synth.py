"""A small synthetic portrait-matting dataset in the exact P3M-10k layout.

Each sample is a drawn half-length figure (head, neck, shoulders) over a
smooth random background. Its alpha has antialiased body edges and a hair
region made of thin semi-transparent strands, so it has a genuine soft
transition band. Face masks cover the face; the ``blurred_image`` folders hold
the composite with the face blurred, as in P3M-10k, and ``P3M-500-NP`` holds
unblurred images. Everything is a function of the seed: the same seed writes
the same files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p3m.data import layout
from p3m.data.trimap import TRAIN_KERNEL_SIZES, trimap_from_alpha
from p3m.io import OutputFolder

DEFAULT_SIZE = 384
MAX_SIDE = 8192  # drawn at twice this size; larger would exceed OpenCV's limits and most memories
_MIN_SIDE = 64
_SUPERSAMPLE = 2
_SPLIT_CODES = {layout.TRAIN: 0, layout.P3M_500_P: 1, layout.P3M_500_NP: 2}
_NAME_PREFIX = {layout.TRAIN: "p_", layout.P3M_500_P: "p_", layout.P3M_500_NP: "np_"}


@dataclass(frozen=True)
class Sample:
    """One synthetic portrait.

    image: (H, W, 3) uint8 RGB composite (unblurred).
    blurred: (H, W, 3) uint8, the composite with the face blurred.
    alpha: (H, W) uint8.
    face_mask: (H, W) uint8 in {0, 255}.
    fg, bg: (H, W, 3) uint8 foreground and background.
    """

    image: np.ndarray
    blurred: np.ndarray
    alpha: np.ndarray
    face_mask: np.ndarray
    fg: np.ndarray
    bg: np.ndarray


def parse_size(text: str) -> tuple[int, int] | int:
    """``"384"`` (longer side, random portrait aspect) or ``"WxH"`` (exact size), each side in [64, MAX_SIDE]."""
    text = text.strip().lower()
    try:
        sides = tuple(int(part) for part in text.split("x")) if "x" in text else (int(text),)
        if len(sides) not in (1, 2) or not all(_MIN_SIDE <= side <= MAX_SIDE for side in sides):
            raise ValueError
    except ValueError:
        raise ValueError(f"size must be a side or WIDTHxHEIGHT with each side from {_MIN_SIDE} to {MAX_SIDE}, "
                         f"got {text!r}") from None
    return sides if len(sides) == 2 else sides[0]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int, channels: int) -> np.ndarray:
    import cv2

    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return field.reshape(shape[0], shape[1], channels)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blurry scene, drawn at most 384 px wide or high and enlarged (it is out of focus anyway)."""
    import cv2

    scale = min(1.0, 384 / max(height, width))
    h, w = max(8, round(height * scale)), max(8, round(width * scale))
    base = rng.uniform(30, 225, 3).astype(np.float32)
    bg = base + (_smooth_field(rng, (h, w), int(rng.integers(3, 7)), 3) - 0.5) * rng.uniform(60, 160)
    for _ in range(int(rng.integers(3, 9))):  # out-of-focus objects
        colour = rng.uniform(0, 255, 3).tolist()
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            radius = int(rng.integers(w // 20 + 1, w // 4 + 2))
            cv2.circle(bg, centre, radius, colour, -1, cv2.LINE_AA)
        else:
            corner = (centre[0] + int(rng.integers(-w // 3, w // 3)), centre[1] + int(rng.integers(-h // 3, h // 3)))
            cv2.rectangle(bg, centre, corner, colour, -1, cv2.LINE_AA)
    bg = cv2.GaussianBlur(bg, (0, 0), max(w, h) / 150)
    if (h, w) != (height, width):
        bg = cv2.resize(bg, (width, height), interpolation=cv2.INTER_LINEAR)
    bg += 3 * rng.standard_normal(bg.shape, dtype=np.float32)
    return np.clip(bg, 0, 255)


def _strands(rng: np.random.Generator, centre: np.ndarray, radii: np.ndarray, count: int, scale: float) -> list[np.ndarray]:
    """Thin wavy curves leaving the top of the hair outline."""
    angles = rng.uniform(np.pi * 1.05, np.pi * 1.95, count)  # the upper half (image y points down)
    start_radius = rng.uniform(0.85, 1.0, count)
    lengths = rng.uniform(0.15, 0.55, count) * radii.mean()
    tilt = rng.normal(0, 0.5, count)
    bend = rng.normal(0, 0.12, (count, 12))
    curves = []
    for k in range(count):
        point = centre + radii * start_radius[k] * np.array([np.cos(angles[k]), np.sin(angles[k])])
        heading = angles[k] + tilt[k]
        step = lengths[k] / 12
        points = [point]
        for bend_k in bend[k]:
            heading += bend_k
            point = point + step * np.array([np.cos(heading), np.sin(heading)])
            points.append(point)
        curves.append(np.round(np.array(points) * scale * 16).astype(np.int32))  # 4 fractional bits
    return curves


def _figure(rng: np.random.Generator, height: int, width: int):
    """Alpha, foreground colours and face ellipse of a drawn figure, at full resolution."""
    import cv2

    s = _SUPERSAMPLE
    big = (height * s, width * s)
    unit = min(height, width)
    cx = width * rng.uniform(0.38, 0.62)
    head_centre = np.array([cx, height * rng.uniform(0.3, 0.42)])
    head_radii = np.array([unit * rng.uniform(0.13, 0.18), unit * rng.uniform(0.17, 0.23)])
    shoulder_centre = (cx + unit * rng.uniform(-0.05, 0.05), height * rng.uniform(1.0, 1.1))
    shoulder_radii = (width * rng.uniform(0.32, 0.45), height * rng.uniform(0.4, 0.5))

    def ellipse(canvas, centre, radii, value, angle=0.0):
        centre_fp = tuple(int(round(c * s * 16)) for c in centre)
        axes_fp = tuple(int(round(r * s * 16)) for r in radii)
        cv2.ellipse(canvas, centre_fp, axes_fp, angle, 0, 360, value, -1, cv2.LINE_AA, 4)

    body = np.zeros(big, np.uint8)
    ellipse(body, shoulder_centre, shoulder_radii, 255)
    neck_half = head_radii[0] * 0.45
    neck = np.array([[cx - neck_half, head_centre[1]], [cx + neck_half, head_centre[1]],
                     [cx + neck_half * 1.2, shoulder_centre[1] - shoulder_radii[1] * 0.8],
                     [cx - neck_half * 1.2, shoulder_centre[1] - shoulder_radii[1] * 0.8]])
    cv2.fillPoly(body, [np.round(neck * s * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    skin = np.zeros(big, np.uint8)
    ellipse(skin, head_centre, head_radii, 255, angle=rng.uniform(-8, 8))
    cv2.fillPoly(skin, [np.round(neck * s * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)

    hair_centre = head_centre - np.array([0, head_radii[1] * 0.12])
    hair_radii = head_radii * np.array([1.12, 1.08])
    hair = np.zeros(big, np.uint8)
    ellipse(hair, hair_centre, hair_radii, 255)
    hair[int((head_centre[1] - head_radii[1] * 0.3) * s):] = 0  # down to the forehead
    hair = cv2.GaussianBlur(hair, (0, 0), s * 1.5)
    count = int(120 * unit / 256) + 40
    strands = np.zeros(big, np.uint8)
    shades = rng.uniform(90, 255, count)
    for curve, shade in zip(_strands(rng, hair_centre, hair_radii, count, s), shades):
        cv2.polylines(strands, [curve], False, float(shade), 1, cv2.LINE_AA, 4)
    hair = np.maximum(hair, strands)

    def shrink(canvas):  # area averaging turns the supersampled edges into soft ones
        return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA)

    alpha = shrink(np.maximum(np.maximum(body, skin), hair))
    hair_weight = shrink(hair).astype(np.float32) / 255
    skin_weight = shrink(skin).astype(np.float32) / 255

    clothes = rng.uniform(20, 235, 3).astype(np.float32) + (_smooth_field(rng, (height, width), 5, 3) - 0.5) * 60
    skin_tone = np.array([rng.uniform(150, 240), rng.uniform(100, 190), rng.uniform(70, 160)], np.float32)
    hair_tone = np.float32(rng.uniform(15, 140)) * np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.3, 0.7)], np.float32)
    fg = clothes * (1 - skin_weight[..., None]) + skin_tone * skin_weight[..., None]
    features = np.zeros((height, width), np.float32)  # eyes and mouth, so a blurred face looks different
    for dx in (-0.4, 0.4):
        centre = (int(head_centre[0] + dx * head_radii[0]), int(head_centre[1] + 0.05 * head_radii[1]))
        cv2.ellipse(features, centre, (max(1, int(head_radii[0] * 0.15)), max(1, int(head_radii[1] * 0.07))), 0, 0, 360, 1.0, -1)
    mouth = (int(head_centre[0]), int(head_centre[1] + 0.5 * head_radii[1]))
    cv2.ellipse(features, mouth, (max(1, int(head_radii[0] * 0.3)), max(1, int(head_radii[1] * 0.06))), 0, 0, 360, 0.7, -1)
    fg = fg * (1 - 0.7 * features[..., None])
    fg = fg * (1 - hair_weight[..., None]) + hair_tone * hair_weight[..., None]
    fg = np.clip(fg + 4 * rng.standard_normal(fg.shape, dtype=np.float32), 0, 255)

    face = np.zeros((height, width), np.uint8)
    face_centre = (int(round(head_centre[0])), int(round(head_centre[1] + head_radii[1] * 0.08)))
    cv2.ellipse(face, face_centre, (max(1, int(head_radii[0] * 0.85)), max(1, int(head_radii[1] * 0.85))), 0, 0, 360, 255, -1)
    return alpha, fg, face


def make_sample(rng: np.random.Generator, size: tuple[int, int] | int = DEFAULT_SIZE) -> Sample:
    """Draw one synthetic portrait.

    Args:
        rng: the only source of randomness.
        size: ``(width, height)``, or the longer side with a random portrait aspect (0.62-0.85).
    """
    import cv2

    if isinstance(size, tuple):
        width, height = size
    else:
        height = int(size)
        width = int(round(height * rng.uniform(0.62, 0.85)))
    bg = _background(rng, height, width)
    alpha, fg, face = _figure(rng, height, width)
    a = (alpha.astype(np.float32) / 255)[..., None]
    image = np.clip(np.round(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)
    blurred = image.copy()
    rows, cols = np.flatnonzero(face.any(axis=1)), np.flatnonzero(face.any(axis=0))
    sigma = max(2.0, min(height, width) / 60)
    margin = int(3 * sigma) + 1
    box = np.s_[max(0, rows[0] - margin):rows[-1] + margin + 1, max(0, cols[0] - margin):cols[-1] + margin + 1]
    inside = face[box] > 0
    blurred[box][inside] = cv2.GaussianBlur(image[box], (0, 0), sigma)[inside]
    return Sample(image=image, blurred=blurred, alpha=alpha, face_mask=face,
                  fg=np.round(fg).astype(np.uint8), bg=np.round(bg).astype(np.uint8))


def eval_kernel_size(rng: np.random.Generator, shape: tuple[int, int]) -> int:
    """A trimap kernel from the official range, scaled from 1080 px to this image's shorter side."""
    low, high = TRAIN_KERNEL_SIZES
    return max(3, int(round(rng.integers(low, high + 1) * min(shape) / 1080)))


def write_dataset(root: str | os.PathLike, count: int, seed: int = 0, size: tuple[int, int] | int = DEFAULT_SIZE,
                  splits: tuple[str, ...] = tuple(layout.SPLITS), progress: bool = False) -> dict[str, int]:
    """Write ``count`` samples per split under ``root`` in the P3M-10k layout.

    Existing files with the same names are replaced (atomically); nothing else
    under ``root`` is touched. Returns files written per split.
    """
    from tqdm import tqdm

    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    parse_size("x".join(map(str, size)) if isinstance(size, tuple) else str(size))  # refuses impossible sizes
    root = Path(root)
    outputs = OutputFolder(root)
    written: dict[str, int] = {}
    jobs = [(name, index) for name in splits for index in range(count)]
    for name, index in tqdm(jobs, desc="synth", unit="sample", disable=None if progress else True, leave=False):
        split = layout.get_split(name)
        rng = np.random.default_rng([int(seed), _SPLIT_CODES[name], index])
        sample = make_sample(rng, size)
        stem = f"{_NAME_PREFIX[name]}{index:05d}"
        files = {layout.ALPHA: (sample.alpha, layout.MAP_SUFFIX)}
        if name == layout.P3M_500_NP:
            files[layout.IMAGE] = (sample.image, layout.IMAGE_SUFFIX)
        else:
            files[layout.IMAGE] = (sample.blurred, layout.IMAGE_SUFFIX)
            files[layout.FACE_MASK] = (sample.face_mask, layout.MAP_SUFFIX)
        if layout.TRIMAP in split.folders:
            files[layout.TRIMAP] = (trimap_from_alpha(sample.alpha, eval_kernel_size(rng, sample.alpha.shape)),
                                    layout.MAP_SUFFIX)
        if name == layout.TRAIN:
            files[layout.FG] = (sample.fg, layout.IMAGE_SUFFIX)
            files[layout.BG] = (sample.bg, layout.IMAGE_SUFFIX)
        for role, (array, suffix) in files.items():
            options = {"quality": 95} if suffix == ".jpg" else {}
            outputs.save_image(split.folder(root, role) / f"{stem}{suffix}", array, **options)
        written[name] = written.get(name, 0) + len(files)
    return written
