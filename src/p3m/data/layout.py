"""The P3M-10k folder layout: the single source of split and folder names.

::

    ROOT/
      train/
        blurred_image/   *.jpg  face-blurred portraits
        mask/            *.png  alpha mattes
        fg/, bg/         optional foreground / background
        facemask/        optional face masks
      validation/
        P3M-500-P/       blurred_image/ mask/ trimap/ facemask/
        P3M-500-NP/      original_image/ mask/ trimap/

Files of one sample share a name stem (``p_0a1b2c3d.jpg`` and
``p_0a1b2c3d.png``); any extension of :data:`p3m.io.IMAGE_EXTENSIONS` is accepted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from p3m.io import is_image_file

TRAIN = "train"
P3M_500_P = "P3M-500-P"
P3M_500_NP = "P3M-500-NP"

# Roles of the folders of a split (the glossary's names).
IMAGE, ALPHA, TRIMAP, FACE_MASK, FG, BG = "image", "alpha", "trimap", "face_mask", "fg", "bg"


@dataclass(frozen=True)
class Split:
    """One split of the dataset.

    name: ``train``, ``P3M-500-P`` or ``P3M-500-NP``.
    path: its folder relative to the dataset root.
    folders: role -> folder name inside ``path``.
    optional: roles whose folder may be absent.
    """

    name: str
    path: str
    folders: dict[str, str]
    optional: frozenset[str] = frozenset()

    def root(self, dataset_root: str | os.PathLike) -> Path:
        return Path(dataset_root) / self.path

    def folder(self, dataset_root: str | os.PathLike, role: str) -> Path:
        """The folder of ``role`` (e.g. :data:`ALPHA`) under ``dataset_root``."""
        if role not in self.folders:
            raise KeyError(f"{self.name} has no {role} folder (it has {', '.join(self.folders)})")
        return self.root(dataset_root) / self.folders[role]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(role for role in self.folders if role not in self.optional)


SPLITS: dict[str, Split] = {
    TRAIN: Split(
        TRAIN, "train",
        {IMAGE: "blurred_image", ALPHA: "mask", FG: "fg", BG: "bg", FACE_MASK: "facemask"},
        optional=frozenset({FG, BG, FACE_MASK}),
    ),
    P3M_500_P: Split(
        P3M_500_P, "validation/P3M-500-P",
        {IMAGE: "blurred_image", ALPHA: "mask", TRIMAP: "trimap", FACE_MASK: "facemask"},
    ),
    P3M_500_NP: Split(
        P3M_500_NP, "validation/P3M-500-NP",
        {IMAGE: "original_image", ALPHA: "mask", TRIMAP: "trimap"},
    ),
}
TEST_SPLITS = (P3M_500_P, P3M_500_NP)

# Formats of the official release (what `p3m dataset synth` writes).
IMAGE_SUFFIX = ".jpg"
MAP_SUFFIX = ".png"


def get_split(name: str) -> Split:
    try:
        return SPLITS[name]
    except KeyError:
        raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}") from None


@dataclass
class FolderIndex:
    """The image files of one folder, by name stem.

    files: stem -> path, for stems with exactly one image file.
    duplicates: stem -> paths, for stems shared by several image files.
    """

    folder: Path
    files: dict[str, Path]
    duplicates: dict[str, list[Path]]

    def __contains__(self, stem: str) -> bool:
        return stem in self.files or stem in self.duplicates


def _is_file_or_broken(entry: os.DirEntry) -> bool:
    """A file, or a link that cannot be followed (a loop): kept, so that reading it reports the problem."""
    try:
        return entry.is_file()
    except OSError:
        return True


def index_folder(folder: str | os.PathLike) -> FolderIndex:
    """Index the image files of ``folder`` (not recursive; hidden files skipped; links that
    cannot be followed are listed, so that reading them names the problem).

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    by_stem: dict[str, list[Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or not is_image_file(path) or not _is_file_or_broken(entry):
                continue
            by_stem.setdefault(path.stem, []).append(path)
    files = {stem: paths[0] for stem, paths in sorted(by_stem.items()) if len(paths) == 1}
    duplicates = {stem: sorted(paths) for stem, paths in sorted(by_stem.items()) if len(paths) > 1}
    return FolderIndex(folder, files, duplicates)
