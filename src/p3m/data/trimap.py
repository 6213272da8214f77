"""Trimaps from alpha mattes, by the official P3M rule.

The unknown band is what a dilation of ``alpha > 0`` adds beyond an erosion of
``alpha == 255``, both with one elliptical kernel. Training draws the kernel
size uniformly from :data:`TRAIN_KERNEL_SIZES` for every sample (the official
``random.randint(15, 30)``, both ends included).
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKGROUND, UNKNOWN, FOREGROUND = 0, 128, 255
TRAIN_KERNEL_SIZES = (15, 30)
DEFAULT_KERNEL_SIZE = 25


def trimap_from_alpha(alpha: np.ndarray, kernel_size: int = DEFAULT_KERNEL_SIZE) -> np.ndarray:
    """The trimap of one alpha matte.

    Args:
        alpha: (H, W) uint8, 0 = background, 255 = foreground.
        kernel_size: side of the elliptical structuring element, >= 1.

    Returns:
        trimap: (H, W) uint8 in {0, 128, 255}: 255 where the eroded foreground is,
        128 in the band between it and the dilated non-zero region, 0 elsewhere.
    """
    import cv2

    alpha = np.asarray(alpha)
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 alpha, got shape {alpha.shape} dtype {alpha.dtype}")
    if int(kernel_size) < 1:
        raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(kernel_size), int(kernel_size)))
    reach = cv2.dilate((alpha > 0).view(np.uint8), kernel)
    core = cv2.erode((alpha == 255).view(np.uint8), kernel)
    trimap = np.full(alpha.shape, BACKGROUND, np.uint8)
    trimap[reach > 0] = UNKNOWN
    trimap[core > 0] = FOREGROUND
    return trimap


def random_kernel_size(rng: np.random.Generator) -> int:
    """A kernel size drawn uniformly from :data:`TRAIN_KERNEL_SIZES` (both ends included)."""
    low, high = TRAIN_KERNEL_SIZES
    return int(rng.integers(low, high + 1))


def rng_for(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``name``, not on processing order."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


@dataclass
class TrimapRun:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # outputs that existed already
    problems: list[str] = field(default_factory=list)


def write_trimaps(mask_dir: str | os.PathLike, out_dir: str | os.PathLike, kernel_size: int | None = DEFAULT_KERNEL_SIZE,
                  seed: int = 0, overwrite: bool = False, progress: bool = False) -> TrimapRun:
    """Write ``OUT/<stem>.png`` trimaps for every mask in ``mask_dir``.

    Args:
        kernel_size: fixed kernel size; ``None`` draws one per mask from
            :data:`TRAIN_KERNEL_SIZES`, from ``seed`` and the file name only.
        overwrite: replace existing outputs (otherwise they are skipped).

    Raises:
        ValueError: ``out_dir`` is ``mask_dir`` (inputs are never overwritten).
        NotADirectoryError: ``mask_dir`` is not a folder.
    """
    from tqdm import tqdm

    from p3m.data.layout import MAP_SUFFIX, index_folder
    from p3m.io import ImageReadError, OutputFolder, output_complete, read_mask

    mask_dir, out_dir = Path(mask_dir), Path(out_dir)
    if not mask_dir.is_dir():
        raise NotADirectoryError(f"{mask_dir}: mask folder not found")
    if out_dir.resolve() == mask_dir.resolve():
        raise ValueError(f"{out_dir}: is the mask folder; trimaps must go to another folder")
    found = index_folder(mask_dir)
    outputs = OutputFolder(out_dir, [*found.files.values(), *(p for paths in found.duplicates.values() for p in paths)])
    run = TrimapRun()
    run.problems.extend(f"{mask_dir / stem}: several masks share this name ({', '.join(p.name for p in paths)})"
                        for stem, paths in found.duplicates.items())
    for stem, path in tqdm(found.files.items(), desc="trimaps", unit="mask", disable=None if progress else True,
                           leave=False):
        target = out_dir / f"{stem}{MAP_SUFFIX}"
        if not overwrite and output_complete(target):
            run.skipped.append(target)
            continue
        size = kernel_size if kernel_size is not None else random_kernel_size(rng_for(seed, stem))
        try:
            outputs.save_image(target, trimap_from_alpha(read_mask(path), size))
        except (ImageReadError, ValueError) as error:
            run.problems.append(str(error))
            continue
        except OSError as error:
            run.problems.append(f"{target}: cannot write ({error.strerror or error})")
            continue
        run.written.append(target)
    return run
