"""The one writer: every file p3m writes goes through :func:`atomic_write`.

A write goes to a short temporary name in the destination folder
(``.p3m-<pid>-<random>.part<suffix>``), is flushed to disk, renamed over the
final name and the folder flushed too, so a crash or a power cut leaves
either the previous file or the complete new one, never a half file under
the final name. Temporaries of runs that died are removed by the next run
over the same folder (:func:`remove_stale_temporaries`).

Guards, given per call or bound once in an :class:`OutputFolder`:

* ``root``: the declared output folder. Folders below it are created without
  following links, and a destination reached through a symbolic link (or
  ``..``) that leaves it is refused.
* ``inputs``: the files the run reads (:class:`RunInputs`). A destination
  that is one of them (same device and inode, or the same resolved path) is
  refused, so an output never replaces an input.

Refusals raise :class:`UnsafeOutputError` naming the destination.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np
from PIL import Image

PathLike = Union[str, os.PathLike]

TEMP_PATTERN = re.compile(r"^\.p3m-(\d+)-[0-9a-f]{8}\.part(\.[A-Za-z0-9]{1,10})?$")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC


class UnsafeOutputError(ValueError):
    """A write was refused: it would replace an input or land outside the output folder."""


class RunInputs:
    """The files a run reads, by (device, inode) and by resolved path; outputs may never be one of them."""

    def __init__(self, paths: Iterable[PathLike] = ()):
        self._ids: set[tuple[int, int]] = set()
        self._resolved: set[str] = set()
        self.add(paths)

    def add(self, paths: Iterable[PathLike]) -> None:
        for path in paths:
            self._resolved.add(os.path.realpath(path))
            file_id = _file_id(path)
            if file_id is not None:
                self._ids.add(file_id)

    def covers(self, path: PathLike) -> bool:
        """Whether writing ``path`` would replace one of the inputs."""
        return os.path.realpath(path) in self._resolved or _file_id(path) in self._ids

    def __len__(self) -> int:
        return len(self._resolved)


def _file_id(path: PathLike) -> Optional[tuple[int, int]]:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _open_folder(folder: Path, root: Optional[Path]) -> int:
    """A descriptor of ``folder``, creating what is missing; no link is followed below ``root``.

    Without ``root``, the deepest existing ancestor plays its part: the folders
    the user named are followed, the ones p3m creates are not.
    """
    folder = Path(os.path.abspath(folder))
    if root is None:
        root = folder
        while not root.exists() and root.parent != root:
            root = root.parent
    else:
        root = Path(os.path.abspath(root))
        root.mkdir(parents=True, exist_ok=True)
    parts = folder.relative_to(root).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    walked = root
    try:
        for name in parts:
            walked = walked / name
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
                os.fsync(fd)
            except FileExistsError:
                pass
            try:
                inner = os.open(name, _NOFOLLOW_DIR, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(walked):
                    raise UnsafeOutputError(f"{walked}: refused, a symbolic link inside the output folder {root} "
                                            "(p3m does not write through links there)") from None
                if error.errno == errno.ENOTDIR:
                    raise UnsafeOutputError(f"{walked}: exists and is not a folder") from None
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_destination(path: PathLike, root: Optional[PathLike] = None, inputs: Optional[RunInputs] = None) -> Path:
    """Refuse ``path`` when it is an input or leaves ``root``; returns it as an absolute path.

    Raises:
        UnsafeOutputError: naming ``path`` and the reason.
    """
    path = Path(os.path.abspath(path))
    if root is not None:
        root_text = os.path.abspath(root)
        if not _inside(str(path.parent), root_text):
            raise UnsafeOutputError(f"{path}: refused, outside the output folder {root}")
        resolved_parent = os.path.realpath(path.parent)
        if os.path.exists(path.parent) and not _inside(resolved_parent, os.path.realpath(root_text)):
            raise UnsafeOutputError(f"{path}: refused, its folder leads to {resolved_parent}, outside the output "
                                    f"folder {root} (a symbolic link?)")
    if inputs is not None and inputs.covers(path):
        raise UnsafeOutputError(f"{path}: refused, this file is an input of the run (p3m never replaces its inputs)")
    if path.is_dir() and not path.is_symlink():
        raise UnsafeOutputError(f"{path}: is a folder, cannot write a file there")
    return path


def _temp_name(suffix: str) -> str:
    kept = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix) else ""
    return f".p3m-{os.getpid()}-{secrets.token_hex(4)}.part{kept}"


def atomic_write(path: PathLike, write: Callable[[Path], object], *, root: Optional[PathLike] = None,
                 inputs: Optional[RunInputs] = None, fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    The temporary file is in the destination folder (same filesystem), keeps
    the final suffix (format-by-extension writers work) and has a short name
    (final names up to the filesystem's 255 bytes work). On any error,
    Ctrl-C included, it is removed and ``path`` is left untouched.

    Args:
        root, inputs: guards, see the module docstring.
        fsync: flush the file before and the folder after the rename.

    Raises:
        UnsafeOutputError: the destination is refused; OSError from the write.
    """
    path = check_destination(path, root, inputs)
    folder_fd = _open_folder(path.parent, Path(root) if root is not None else None)
    tmp_name = _temp_name(path.suffix)
    try:
        os.close(os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder_fd))
        try:
            write(path.parent / tmp_name)
            if fsync:
                file_fd = os.open(tmp_name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder_fd)
                try:
                    os.fsync(file_fd)
                finally:
                    os.close(file_fd)
            os.chmod(tmp_name, 0o666 & ~_UMASK, dir_fd=folder_fd)  # outputs get the usual permissions
            os.replace(tmp_name, path.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            try:
                os.unlink(tmp_name, dir_fd=folder_fd)
            except FileNotFoundError:
                pass
            raise
        if fsync:
            os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
    return path


def write_text(path: PathLike, text: str, **guards) -> Path:
    """Write UTF-8 ``text`` atomically (guards as in :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")), **guards)


def append_text(path: PathLike, text: str, *, root: Optional[PathLike] = None,
                inputs: Optional[RunInputs] = None) -> Path:
    """Append UTF-8 ``text`` to a log file, creating it; a symbolic link there is refused, not followed."""
    path = check_destination(path, root, inputs)
    folder_fd = _open_folder(path.parent, Path(root) if root is not None else None)
    try:
        try:
            fd = os.open(path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | _CLOEXEC, 0o666,
                         dir_fd=folder_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafeOutputError(f"{path}: refused, is a symbolic link (p3m does not append through links)") \
                    from None
            raise
    finally:
        os.close(folder_fd)
    with os.fdopen(fd, "ab") as handle:
        handle.write(text.encode("utf-8"))
    return path


def save_image(path: PathLike, array: np.ndarray, *, root: Optional[PathLike] = None,
               inputs: Optional[RunInputs] = None, **save_options) -> Path:
    """Write a uint8/uint16 (H, W), (H, W, 3) or (H, W, 4) array atomically.

    The format follows the suffix; ``save_options`` go to Pillow (e.g. JPEG ``quality``).
    16-bit single-channel arrays are written as 16-bit PNG. ``root``/``inputs``: see :func:`atomic_write`.
    """
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError("16-bit output is supported for single-channel images only")
        image = Image.fromarray(np.ascontiguousarray(array))
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(f"save_image expects uint8 or uint16, got {array.dtype}")
    pillow_format = _pillow_format(Path(path))
    return atomic_write(path, lambda tmp: image.save(tmp, format=pillow_format, **save_options), root=root,
                        inputs=inputs)


def remove_output(path: PathLike, *, root: Optional[PathLike] = None, inputs: Optional[RunInputs] = None) -> bool:
    """Remove an output file (this or an earlier run's) under the guards of :func:`atomic_write`.

    A link at ``path`` is removed itself, never followed; no folder is created.
    Returns whether a file was removed.

    Raises:
        UnsafeOutputError: ``path`` is refused (an input, or outside ``root``), so it is not the run's to remove.
    """
    path = check_destination(path, root, inputs)
    if not os.path.lexists(path):
        return False
    folder_fd = _open_folder(path.parent, Path(root) if root is not None else None)
    try:
        os.unlink(path.name, dir_fd=folder_fd)
    except FileNotFoundError:
        return False
    finally:
        os.close(folder_fd)
    return True


def _pillow_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
            ".tiff": "TIFF", ".webp": "WEBP"}.get(suffix, "PNG")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the temporaries of p3m writes whose process no longer runs, anywhere under ``folder``.

    Only names of the writer's own pattern are touched; links are not followed.
    Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for base, dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            match = TEMP_PATTERN.match(name)
            if match and not _process_alive(int(match.group(1))):
                try:
                    os.unlink(os.path.join(base, name))
                    removed.append(Path(base, name))
                except FileNotFoundError:
                    pass
    return removed


def output_complete(path: PathLike) -> bool:
    """Whether an earlier run finished ``path``: a non-empty regular file that decodes
    (images) or loads (anything else is only checked for size)."""
    from p3m.io.read import ImageReadError, is_image_file, open_image

    try:
        if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) == 0:
            return False
    except OSError:
        return False
    if not is_image_file(Path(path)):
        return True
    try:
        with open_image(path):
            return True
    except ImageReadError:
        return False


class OutputFolder:
    """Where one run may write: ``root``, with the run's ``inputs`` protected.

    Creating one refuses a root that is a file, and removes the stale
    temporaries of runs that died there (``clean=False`` keeps them).
    Every method applies both guards (see the module docstring).
    """

    def __init__(self, root: PathLike, inputs: Union[RunInputs, Iterable[PathLike]] = (), clean: bool = True):
        self.root = Path(root)
        self.inputs = inputs if isinstance(inputs, RunInputs) else RunInputs(inputs)
        if self.root.exists() and not self.root.is_dir():
            raise UnsafeOutputError(f"{self.root}: exists and is not a folder")
        if self.inputs.covers(self.root):
            raise UnsafeOutputError(f"{self.root}: refused as output folder, it is an input of the run")
        if clean:
            remove_stale_temporaries(self.root)

    def check(self, path: PathLike) -> Path:
        return check_destination(path, self.root, self.inputs)

    def write(self, path: PathLike, write: Callable[[Path], object], fsync: bool = True) -> Path:
        return atomic_write(path, write, root=self.root, inputs=self.inputs, fsync=fsync)

    def write_text(self, path: PathLike, text: str) -> Path:
        return write_text(path, text, root=self.root, inputs=self.inputs)

    def append_text(self, path: PathLike, text: str) -> Path:
        return append_text(path, text, root=self.root, inputs=self.inputs)

    def save_image(self, path: PathLike, array: np.ndarray, **save_options) -> Path:
        return save_image(path, array, root=self.root, inputs=self.inputs, **save_options)

    def remove(self, path: PathLike) -> bool:
        return remove_output(path, root=self.root, inputs=self.inputs)

    def mkdir(self, path: PathLike) -> Path:
        """Create a folder below the root without following links."""
        path = Path(os.path.abspath(path))
        if not _inside(str(path), os.path.abspath(self.root)):
            raise UnsafeOutputError(f"{path}: refused, outside the output folder {self.root}")
        os.close(_open_folder(path, self.root))
        return path
