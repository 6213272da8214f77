"""Foreground and background colours for the composition loss, estimated from image + alpha.

P3M-10k's training images come with alpha mattes; the composition loss also
needs the foreground and background colours. They are estimated with
pymatting's multilevel foreground estimation (Germer et al. 2020) from the
(face-blurred) training image and its alpha, and written to ``train/fg`` and
``train/bg`` under the sample's name stem. The run is resumable: samples
whose fg and bg both exist are skipped (files are written atomically).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from p3m.data import layout

FGBG_SUFFIX = layout.IMAGE_SUFFIX
JPEG_QUALITY = 95


@dataclass
class PrepareReport:
    """written: stems estimated now; skipped: stems that already had fg and bg; problems: one line each."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def estimate_fg_bg(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours of one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        alpha: (H, W) uint8.

    Returns:
        fg, bg: (H, W, 3) uint8 RGB, such that ``alpha * fg + (1 - alpha) * bg``
        approximates ``image``.
    """
    from pymatting import estimate_foreground_ml

    if image.shape[:2] != alpha.shape:
        raise ValueError(f"image size {image.shape[1]}x{image.shape[0]} differs from alpha "
                         f"{alpha.shape[1]}x{alpha.shape[0]}")
    fg, bg = estimate_foreground_ml(image.astype(np.float64) / 255.0, alpha.astype(np.float64) / 255.0,
                                    return_background=True)
    to_uint8 = lambda array: np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)  # noqa: E731
    return to_uint8(fg), to_uint8(bg)


def _prepare_one(job: tuple[str, str, str, str, str]) -> tuple[str, str | None]:
    from p3m.io import ImageReadError, RunInputs, read_image, read_mask, save_image

    stem, image_path, alpha_path, fg_path, bg_path = job
    try:
        image, alpha = read_image(image_path), read_mask(alpha_path)
        fg, bg = estimate_fg_bg(image, alpha)
    except (ImageReadError, ValueError) as error:
        message = str(error) if str(error).startswith(str(image_path)) or str(error).startswith(str(alpha_path)) \
            else f"{image_path}: {error}"
        return stem, message
    inputs = RunInputs([image_path, alpha_path])
    for path, array in ((bg_path, bg), (fg_path, fg)):
        options = {"quality": JPEG_QUALITY} if Path(path).suffix.lower() in (".jpg", ".jpeg") else {}
        try:
            save_image(path, array, root=Path(path).parent, inputs=inputs, **options)
        except (OSError, ValueError) as error:
            return stem, f"{path}: cannot write ({getattr(error, 'strerror', None) or error})"
    return stem, None


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def prepare_fgbg(root: str | os.PathLike, workers: int = 1, overwrite: bool = False,
                 progress: bool = False) -> PrepareReport:
    """Estimate and write ``train/fg`` and ``train/bg`` for every training sample missing them.

    Args:
        root: dataset root in the P3M-10k layout.
        workers: processes estimating in parallel.
        overwrite: re-estimate samples that already have fg and bg (their files are replaced in place).

    Raises:
        NotADirectoryError: the training image or alpha folder is missing.
    """
    from tqdm import tqdm

    split = layout.get_split(layout.TRAIN)
    folders = {role: split.folder(root, role) for role in (layout.IMAGE, layout.ALPHA, layout.FG, layout.BG)}
    for role in (layout.IMAGE, layout.ALPHA):
        if not folders[role].is_dir():
            raise NotADirectoryError(f"{folders[role]}: missing ({role} folder of the training split)")
    index = {role: layout.index_folder(folder) if folder.is_dir() else None for role, folder in folders.items()}
    report = PrepareReport()
    for role, found in index.items():
        if found is not None:
            report.problems.extend(f"{folders[role] / stem}: several files share this name, skipped"
                                   for stem in found.duplicates)
    images, alphas = index[layout.IMAGE].files, index[layout.ALPHA].files
    jobs = []
    for stem, image in images.items():
        if stem not in alphas:
            report.problems.append(f"{image}: no alpha in {folders[layout.ALPHA]}, skipped")
            continue
        existing = [index[role].files.get(stem) if index[role] is not None else None for role in (layout.FG, layout.BG)]
        if all(existing) and not overwrite:
            report.skipped.append(stem)
            continue
        fg_path, bg_path = (path or folder / f"{stem}{FGBG_SUFFIX}"
                            for path, folder in zip(existing, (folders[layout.FG], folders[layout.BG])))
        jobs.append((stem, str(image), str(alphas[stem]), str(fg_path), str(bg_path)))

    bar = tqdm(total=len(jobs), desc="fg/bg", unit="image", disable=None if progress else True)
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = map(_prepare_one, jobs)
            for stem, problem in results:
                _record(report, stem, problem)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
                for stem, problem in pool.map(_prepare_one, jobs, chunksize=4):
                    _record(report, stem, problem)
                    bar.update(1)
    finally:
        bar.close()
    return report


def _record(report: PrepareReport, stem: str, problem: str | None) -> None:
    if problem is None:
        report.written.append(stem)
    else:
        report.problems.append(problem)
