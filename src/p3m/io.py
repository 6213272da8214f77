"""Reading images the way users expect and writing outputs atomically.

Every reader raises :class:`ImageReadError` with a one-line message that names
the file and the problem; every writer goes through a temporary file in the
destination folder and an atomic rename, so no half-written file is ever left
under the final name.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# Oversized images are refused with an ImageReadError (see open_image); Pillow's
# own warning for them would only add a second, multi-line message.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageReadError(ValueError):
    """An input image could not be read; the message names the file and the problem."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


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
        array = np.asarray(image, dtype=np.float32)
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


def read_image(source: ImageInput) -> np.ndarray:
    """Load an image as RGB.

    Args:
        source: a file path, a PIL image or an (H, W, 3) uint8 array
            ((H, W), (H, W, 4) and uint16 arrays are converted too).

    Returns:
        image: (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises:
        ImageReadError: unreadable, truncated, not an image, or too large
            (Pillow's decompression-bomb limit).
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb8(source, "array")
    if isinstance(source, Image.Image):
        return to_rgb8(ImageOps.exif_transpose(source))
    path = Path(source)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    with open_image(path) as image:
        return to_rgb8(ImageOps.exif_transpose(image))


@contextmanager
def open_image(path: Path):
    """Open and decode ``path``, refusing images over Pillow's decompression-bomb
    limit before decoding them; every failure becomes one ImageReadError."""
    try:
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:
                raise ImageReadError(f"{path}: refused, image too large ({image.width}x{image.height} pixels, "
                                     f"limit {limit}: a possible decompression bomb)")
            image.load()
            yield image
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{path}: refused, image too large ({error})") from None
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (format not recognised)") from None
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read image ({error})") from None


def read_mask(path: Union[str, os.PathLike]) -> np.ndarray:
    """Load a single-channel map (alpha, trimap, face mask) as (H, W) uint8.

    Colour files take their first channel, as the official evaluation does.
    """
    path = Path(path)
    with open_image(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            array = np.asarray(image, dtype=np.float32)
            return (np.clip(array, 0, 65535) / 257.0).round().astype(np.uint8)
        array = np.asarray(image.convert("L") if image.mode in ("P", "LA", "1") else image)
    if array.ndim == 3:
        array = array[:, :, 0]
    return np.array(array, dtype=np.uint8, order="C")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Union[str, os.PathLike], write) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    The temporary file lives in the destination folder (same filesystem) and
    keeps the final suffix so that format-by-extension writers work. On any
    error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp_name))
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def save_image(path: Union[str, os.PathLike], array: np.ndarray, **save_options) -> Path:
    """Write a uint8/uint16 (H, W), (H, W, 3) or (H, W, 4) array atomically.

    The format follows the suffix; ``save_options`` go to Pillow (e.g. JPEG ``quality``).
    16-bit single-channel arrays are written as 16-bit PNG.
    """
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError("16-bit output is supported for single-channel images only")
        image = Image.fromarray(np.ascontiguousarray(array))
    elif array.dtype == np.uint8:
        image = Image.fromarray(array)
    else:
        raise ValueError(f"save_image expects uint8 or uint16, got {array.dtype}")
    return atomic_write(path, lambda tmp: image.save(tmp, format=_pillow_format(Path(path)), **save_options))


def _pillow_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
            ".tiff": "TIFF", ".webp": "WEBP"}.get(suffix, "PNG")
