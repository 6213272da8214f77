"""The one reader of untrusted images.

Every image p3m reads (command inputs, ground truths, backgrounds, uploads)
goes through :func:`open_image`: Pillow may only pick among the allow-listed
formats (:data:`ALLOWED_FORMATS`), so a file named ``photo.jpg`` that holds
EPS, PSD or any other format never reaches that decoder (nor Ghostscript);
the pixel cap is checked on the header, before any pixel is decoded; and
every failure, whatever the decoder raised, becomes one
:class:`ImageReadError` naming the file and the problem.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps, features

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ALLOWED_FORMATS = tuple(name for name, present in (
    ("JPEG", True), ("PNG", True), ("WEBP", features.check("webp")), ("TIFF", True), ("BMP", True), ("GIF", True),
) if present)

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

# Oversized images are refused with an ImageReadError (see open_image); Pillow's
# own warning for them would only add a second, multi-line message.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Decoders warn about odd but readable files (corrupt EXIF, skipped TIFF tags) in several
# lines each; a file that cannot be read gets its one-line ImageReadError instead.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class ImageReadError(ValueError):
    """An input image could not be read; the message names the file and the problem."""


def is_image_file(path: Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an (H, W, 3) uint8 RGB array.

    Grayscale and palette images are expanded, an alpha channel is dropped,
    CMYK is converted with Pillow's transform, and 16/32-bit images are
    scaled down to 8 bits (not clipped).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.uint16)
        gray = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "I":
        array = np.asarray(image, dtype=np.int64)
        top = 65535 if array.max(initial=0) > 255 else 255
        gray = (np.clip(array, 0, top) * (255.0 / top)).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        gray = (np.clip(array / top, 0, 1) * 255).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _array_to_rgb8(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"{name}: expected an HxWx3 image array, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageReadError(f"{name}: expected a uint8 image array, got dtype {array.dtype}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def source_name(source: object, name: Optional[str] = None) -> str:
    """How errors name ``source``: ``name`` if given, the path, or the file object's name."""
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", None) or "<image>"
    file_name = getattr(source, "name", None)
    return str(file_name) if isinstance(file_name, (str, os.PathLike)) else "<stream>"


def _open_regular_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading, refusing folders, links that loop, FIFOs and devices with one clear line."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ImageReadError(f"{path}: {_path_problem(error)}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "is a folder, not an image" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ImageReadError(f"{path}: {kind}")
    return os.fdopen(fd, "rb")


def _path_problem(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symbolic link loop (the link points back to itself)"
    if error.errno == errno.ENOENT:
        return "no such file"
    if error.errno in (errno.EISDIR,):
        return "is a folder, not an image"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if error.errno == errno.ENOTDIR:
        return "no such file (a part of the path is not a folder)"
    return error.strerror or str(error)


def _binary_stream(source: object, name: str) -> tuple[BinaryIO, bool]:
    """(readable binary stream, whether this function opened it and must close it)."""
    if isinstance(source, (str, os.PathLike)):
        return _open_regular_file(Path(source)), True
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), True
    if hasattr(source, "read"):
        if not hasattr(source, "seek") or (hasattr(source, "seekable") and not source.seekable()):
            return io.BytesIO(source.read()), True
        return source, False
    raise ImageReadError(f"{name}: expected an image file path, bytes, a binary file object, a PIL image or an "
                         f"array, got {type(source).__name__}")


def _check_size(image: Image.Image, name: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise ImageReadError(f"{name}: refused, image too large ({image.width}x{image.height} pixels, "
                             f"limit {limit}: a possible decompression bomb)")
    if image.width < 1 or image.height < 1:
        raise ImageReadError(f"{name}: image has no pixels ({image.width}x{image.height})")


@contextmanager
def open_image(source: ImageInput, name: Optional[str] = None) -> Iterator[Image.Image]:
    """Open and decode an untrusted image, yielding the loaded PIL image.

    Args:
        source: a path, bytes, or a binary file object (a PIL image is yielded as is).
        name: how errors name the source (default: the path or the file object's name).

    Only :data:`ALLOWED_FORMATS` are recognised, whatever the file is called.
    Images over ``PIL.Image.MAX_IMAGE_PIXELS`` are refused from their header,
    before decoding (decoded memory stays within about 4 bytes per allowed
    pixel). Every failure inside the block, of the decoder or of the caller's
    conversion, is one :class:`ImageReadError` naming the source.
    """
    name = source_name(source, name)
    if isinstance(source, Image.Image):
        yield source
        return
    if source is None or isinstance(source, np.ndarray):
        raise ImageReadError(f"{name}: expected an image file path, bytes or a binary file object, "
                             f"got {type(source).__name__}")
    stream, owned = _binary_stream(source, name)
    try:
        with Image.open(stream, formats=ALLOWED_FORMATS) as image:
            _check_size(image, name)
            image.load()
            yield image
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file of a supported format "
                             f"({', '.join(ALLOWED_FORMATS)})") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{name}: refused, image too large ({error})") from None
    except MemoryError:
        raise ImageReadError(f"{name}: not enough memory to decode this image") from None
    except Exception as error:  # noqa: BLE001 - a hostile file may make any decoder raise anything
        raise ImageReadError(f"{name}: cannot read image ({_first_line(error)})") from None
    finally:
        if owned:
            stream.close()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def read_image(source: ImageInput, name: Optional[str] = None) -> np.ndarray:
    """Load an image as RGB.

    Args:
        source: a file path, bytes, a binary file object, a PIL image or an
            (H, W, 3) uint8 array ((H, W), (H, W, 4) and uint16 arrays are converted too).
        name: how errors name the source (useful for bytes and streams).

    Returns:
        image: (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises:
        ImageReadError: unreadable, truncated, not an image of an allowed
            format, or too large (Pillow's decompression-bomb limit).
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb8(source, name or "array")
    if isinstance(source, Image.Image):
        return _guarded(lambda: to_rgb8(ImageOps.exif_transpose(source)), source_name(source, name))
    with open_image(source, name) as image:
        return to_rgb8(ImageOps.exif_transpose(image))


def read_mask(source: ImageInput, name: Optional[str] = None) -> np.ndarray:
    """Load a single-channel map (alpha, trimap, face mask) as (H, W) uint8.

    Colour files take their first channel, as the official evaluation does;
    16-bit maps are scaled down to 8 bits. Same sources and errors as :func:`read_image`.
    """
    if isinstance(source, np.ndarray):
        array = source if source.ndim == 2 else _array_to_rgb8(source, name or "array")[:, :, 0]
        if array.dtype != np.uint8:
            raise ImageReadError(f"{name or 'array'}: expected a uint8 map, got dtype {array.dtype}")
        return np.ascontiguousarray(array)
    if isinstance(source, Image.Image):
        return _guarded(lambda: _mask_array(source), source_name(source, name))
    with open_image(source, name) as image:
        return _mask_array(image)


def _mask_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float32)
        return (np.clip(array, 0, 65535) / 257.0).round().astype(np.uint8)
    if image.mode == "F":
        return to_rgb8(image)[:, :, 0]
    array = np.asarray(image.convert("L") if image.mode in ("P", "LA", "1", "PA") else image)
    if array.ndim == 3:
        array = array[:, :, 0]
    return np.array(array, dtype=np.uint8, order="C")


def _guarded(convert, name: str):
    try:
        return convert()
    except MemoryError:
        raise ImageReadError(f"{name}: not enough memory to convert this image") from None
    except Exception as error:  # noqa: BLE001 - conversions of an odd image may raise anything
        raise ImageReadError(f"{name}: cannot read image ({_first_line(error)})") from None
