"""Turning command-line inputs (files, folders, globs) into a list of images.

Every command that reads a batch of images and writes one output per image
uses :func:`collect_inputs` to find the images and :func:`output_paths` to
place the outputs, so the layout rules are the same everywhere: a file given
directly lands under its bare name, a folder's images keep their paths
relative to that folder, and a glob's matches keep their paths relative to
the glob's fixed leading folders.
"""
from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path
from typing import Optional, Sequence

from p3m.io import IMAGE_EXTENSIONS, is_image_file

_GLOB_CHARS = frozenset("*?[")
_EXTENSIONS = " ".join(IMAGE_EXTENSIONS)


def _is_glob(text: str) -> bool:
    return any(char in _GLOB_CHARS for char in text)


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _folder_images(folder: Path) -> list[tuple[Path, Path]]:
    """Image files under ``folder`` (recursive, sorted), skipping hidden files and folders."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in sorted(files):
            path = Path(root, name)
            if not name.startswith(".") and is_image_file(path):
                found.append((path, path.relative_to(folder)))
    return found


def _glob_prefix(pattern: str) -> Path:
    """The leading folders of a glob pattern that contain no wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _glob_images(pattern: str) -> list[tuple[Path, Path]]:
    prefix = _glob_prefix(pattern)
    found = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        relative = path.relative_to(prefix) if prefix != Path(".") else path
        if path.is_dir():
            found.extend((file, relative / inner) for file, inner in _folder_images(path))
        elif is_image_file(path) and not _is_hidden(relative):
            found.append((path, relative))
    return found


def collect_inputs(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """Expand command-line inputs into (source, relative output path) pairs.

    Args:
        inputs: files, folders (searched recursively) and glob patterns
            (``**`` allowed), in any mix. Inside folders and glob matches,
            hidden files and files without an image extension
            (:data:`p3m.io.IMAGE_EXTENSIONS`) are skipped; a file named
            explicitly is always kept, so that a non-image gets a clear
            error when it is read.

    Returns:
        (absolute source path, relative path to mirror under the output
        folder) in input order, folders sorted; a source reached twice is
        listed once.

    Raises:
        FileNotFoundError: an input does not exist or a glob matches nothing.
        ValueError: a folder or glob holds no image files.
    """
    pairs: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise ValueError(f"{text}: folder contains no images ({_EXTENSIONS})")
        elif path.exists():
            found = [(path, Path(path.name))]
        elif _is_glob(text):
            found = _glob_images(text)
            if not found:
                if not glob.glob(text, recursive=True):
                    raise FileNotFoundError(f"{text}: no files match this pattern")
                raise ValueError(f"{text}: the pattern matches no images ({_EXTENSIONS})")
        else:
            raise FileNotFoundError(f"{text}: no such file or folder")
        for source, relative in found:
            source = Path(os.path.abspath(source))
            if source not in seen:
                seen.add(source)
                pairs.append((source, relative))
    return pairs


def _pattern_reaches(pattern: str, folder: str) -> bool:
    """Whether a rerun of glob ``pattern`` could collect files inside the resolved ``folder``.

    A ``**`` pattern reaches anything below its fixed prefix; otherwise a match
    is searched recursively when it is a folder, so the pattern reaches
    ``folder`` when it matches the folder or one of its ancestors below the prefix.
    """
    prefix = os.path.realpath(_glob_prefix(pattern))
    if not _is_inside(folder, prefix):
        return False
    if "**" in pattern:
        return True
    rest = Path(pattern).parts[len(_glob_prefix(pattern).parts) if _glob_prefix(pattern) != Path(".") else 0:]
    relative = Path(os.path.relpath(folder, prefix)).parts if folder != prefix else ()
    return len(relative) >= len(rest) and all(fnmatch.fnmatchcase(part, wanted)
                                              for part, wanted in zip(relative, rest))


def _is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folder(out_dir: os.PathLike, inputs: Sequence[str]) -> None:
    """Refuse an output folder that is a file, an input folder, or lies inside one.

    Otherwise a second run would read the first run's outputs as inputs. Inputs
    are compared resolved (links followed); a glob counts as the folders it
    can reach (``"shoot/**"`` reaches all of ``shoot``).

    Raises:
        ValueError: naming the input folder or pattern.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"output folder {out_dir} exists and is a file; choose a folder")
    out_real = os.path.realpath(out_dir)
    for text in inputs:
        if os.path.isdir(text):
            if _is_inside(out_real, os.path.realpath(text)):
                raise ValueError(f"output folder {out_dir} is inside input folder {text}; choose a folder outside it")
        elif not os.path.exists(text) and _is_glob(text) and _pattern_reaches(text, out_real):
            raise ValueError(f"output folder {out_dir} is inside what the pattern {text} reads, so a rerun would "
                             "read the outputs as inputs; choose a folder outside it")


def output_paths(pairs: Sequence[tuple[Path, Path]], out_dir: os.PathLike,
                 suffix: Optional[str] = None) -> list[Path]:
    """Place one output per input under ``out_dir``, mirroring relative paths.

    Args:
        pairs: from :func:`collect_inputs`.
        out_dir: the output folder.
        suffix: replace each file's suffix (e.g. ``".png"`` for alpha mattes);
            None keeps it.

    Returns:
        absolute output paths, in the order of ``pairs``.

    Raises:
        ValueError: two inputs would write the same output, or an output
            would overwrite one of the inputs.
    """
    out_dir = Path(os.path.abspath(out_dir))
    source_files = {_file_id(source) for source, _ in pairs} - {None}
    claimed: dict[Path, Path] = {}
    outputs = []
    for source, relative in pairs:
        target = out_dir / (relative.with_suffix(suffix) if suffix is not None else relative)
        if target in claimed:
            raise ValueError(f"{claimed[target]} and {source} would both be written to {target} "
                             "(the same relative path under two inputs); pass one folder that holds both, "
                             "or run them separately")
        if _file_id(target) in source_files:
            raise ValueError(f"output {target} would overwrite an input file; choose another output folder")
        claimed[target] = source
        outputs.append(target)
    return outputs


def _file_id(path: Path) -> Optional[tuple[int, int]]:
    """(device, inode) of an existing file, None if there is none; catches links and aliases."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
