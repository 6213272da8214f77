"""Checking a P3M-10k tree: folders, pairing, sizes, readability, trimap values."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from p3m.data import layout
from p3m.io import ImageReadError, read_image, read_mask

TRIMAP_VALUES = (0, 128, 255)
_RGB_ROLES = (layout.IMAGE, layout.FG, layout.BG)


@dataclass
class FolderCount:
    split: str
    role: str
    path: Path
    files: int | None  # None: the folder is absent


@dataclass
class CheckReport:
    folders: list[FolderCount] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format_table(self, root: Path) -> str:
        lines = [f"{'split':<11} {'folder':<42} {'files':>6}"]
        for count in self.folders:
            shown = count.path.relative_to(root) if count.path.is_relative_to(root) else count.path
            files = "absent" if count.files is None else str(count.files)
            lines.append(f"{count.split:<11} {str(shown):<42} {files:>6}")
        return "\n".join(lines)


def _read_sample(files: dict[str, Path]) -> list[str]:
    """Problems of one sample: unreadable files, sizes that differ from the image's, trimap values."""
    problems = []
    shapes: dict[str, tuple[int, int]] = {}
    for role, path in files.items():
        try:
            if role in _RGB_ROLES:
                shapes[role] = read_image(path).shape[:2]
                continue
            array = read_mask(path)
        except ImageReadError as error:
            problems.append(str(error))
            continue
        shapes[role] = array.shape
        if role == layout.TRIMAP:
            present = np.flatnonzero(np.bincount(array.ravel(), minlength=256))
            other = [int(v) for v in present if v not in TRIMAP_VALUES]
            if other:
                shown = ", ".join(map(str, other[:5])) + (", ..." if len(other) > 5 else "")
                problems.append(f"{path}: trimap has values other than 0, 128, 255 ({shown})")
    reference_role = layout.IMAGE if layout.IMAGE in shapes else next(iter(shapes), None)
    if reference_role is not None:
        height, width = shapes[reference_role]
        for role, (h, w) in shapes.items():
            if (h, w) != (height, width):
                problems.append(f"{files[role]}: size {w}x{h} differs from {files[reference_role]} ({width}x{height})")
    return problems


def check_dataset(root: str | os.PathLike, splits: tuple[str, ...] | None = None, workers: int = 4,
                  progress: bool = False) -> CheckReport:
    """Check the P3M-10k tree under ``root``; every problem is one line naming the file.

    Looks for: missing splits or folders, duplicate name stems, files without a
    partner in the image folder (and images without one in each other folder),
    unreadable files, size mismatches with the image, and trimap values other
    than 0, 128, 255. Every file is decoded, on ``workers`` threads.
    """
    from tqdm import tqdm

    root = Path(root)
    report = CheckReport()
    jobs: list[dict[str, Path]] = []
    for name in splits or tuple(layout.SPLITS):
        split = layout.get_split(name)
        if not split.root(root).is_dir():
            report.problems.append(f"{split.root(root)}: missing (split {name})")
            for role in split.folders:
                report.folders.append(FolderCount(name, role, split.folder(root, role), None))
            continue
        indexes: dict[str, layout.FolderIndex] = {}
        for role in split.folders:
            folder = split.folder(root, role)
            if not folder.is_dir():
                report.folders.append(FolderCount(name, role, folder, None))
                if role not in split.optional:
                    report.problems.append(f"{folder}: missing ({role} folder of {name})")
                continue
            found = layout.index_folder(folder)
            total = len(found.files) + sum(len(paths) for paths in found.duplicates.values())
            report.folders.append(FolderCount(name, role, folder, total))
            for stem, paths in found.duplicates.items():
                report.problems.append(f"{folder / stem}: several files share this name "
                                       f"({', '.join(p.name for p in paths)})")
            indexes[role] = found
        images = indexes.get(layout.IMAGE)
        if images is not None:
            if not images.files and not images.duplicates:
                report.problems.append(f"{images.folder}: no images")
            for role, found in indexes.items():
                if role == layout.IMAGE:
                    continue
                report.problems.extend(f"{path}: no matching image in {images.folder}"
                                       for stem, path in found.files.items() if stem not in images)
                report.problems.extend(f"{path}: no matching file in {found.folder}"
                                       for stem, path in images.files.items() if stem not in found)
        stems = sorted(set().union(*(found.files.keys() for found in indexes.values())))
        jobs.extend({role: found.files[stem] for role, found in indexes.items() if stem in found.files}
                    for stem in stems)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_read_sample, jobs)
        for problems in tqdm(results, total=len(jobs), desc="check", unit="sample",
                             disable=None if progress else True, leave=False):
            report.problems.extend(problems)
    return report
