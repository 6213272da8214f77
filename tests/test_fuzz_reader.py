"""A seeded mutation fuzz of the one reader: whatever the bytes, nothing but ImageReadError escapes.

Every allowed format is seeded with a few small valid files (several modes and
encodings), then mutated (flipped bytes, extreme 16/32-bit fields, cuts,
inserted and deleted blocks, spliced formats). The default run tries
:data:`DEFAULT_CASES` files; ``-m slow`` tries :data:`SLOW_CASES`.
"""
from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest
from PIL import Image

from p3m.io import ALLOWED_FORMATS, ImageReadError, read_image, read_mask

DEFAULT_CASES = 2400
SLOW_CASES = 30000
FUZZ_PIXEL_CAP = 4_000_000  # mutated headers claiming more are refused before decoding, as in real use


def _encode(array: np.ndarray, mode: str, pillow_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, pillow_format, **options)
    return buffer.getvalue()


def seed_files() -> dict[str, bytes]:
    """Small valid files of every allowed format, in several modes and encodings."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    seeds = {
        "jpeg-baseline": _encode(rgb, "RGB", "JPEG", quality=80),
        "jpeg-progressive": _encode(rgb, "RGB", "JPEG", quality=70, progressive=True),
        "jpeg-gray": _encode(rgb, "L", "JPEG"),
        "jpeg-cmyk": _encode(rgb, "CMYK", "JPEG"),
        "png-rgb": _encode(rgb, "RGB", "PNG"),
        "png-rgba": _encode(rgb, "RGBA", "PNG"),
        "png-palette": _encode(rgb, "P", "PNG", transparency=3),
        "png-16bit": _encode((rgb[..., 0].astype(np.uint16) * 257), "I;16", "PNG"),
        "tiff-raw": _encode(rgb, "RGB", "TIFF"),
        "tiff-lzw": _encode(rgb, "RGB", "TIFF", compression="tiff_lzw"),
        "tiff-deflate": _encode(rgb, "L", "TIFF", compression="tiff_adobe_deflate"),
        "tiff-packbits": _encode(rgb, "CMYK", "TIFF", compression="packbits"),
        "bmp-rgb": _encode(rgb, "RGB", "BMP"),
        "bmp-palette": _encode(rgb, "P", "BMP"),
        "gif": _encode(rgb, "P", "GIF"),
    }
    if "WEBP" in ALLOWED_FORMATS:
        seeds["webp-lossy"] = _encode(rgb, "RGB", "WEBP", quality=60)
        seeds["webp-lossless"] = _encode(rgb, "RGBA", "WEBP", lossless=True)
    with Image.open(io.BytesIO(seeds["png-rgb"])) as image:  # an EXIF-rotated JPEG too
        exif = image.getexif()
        exif[0x0112] = 6
        seeds["jpeg-exif"] = _encode(rgb, "RGB", "JPEG", exif=exif)
    return seeds


_EXTREMES = (b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
             b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00")


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to three random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        position = rng.randrange(max(1, len(out)))
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == 1:
            # Header fields (sizes, offsets, counts) sit near the start: bias extremes there.
            position = rng.randrange(min(len(out), 64)) if rng.random() < 0.6 else position
            field = rng.choice(_EXTREMES)
            out[position:position + len(field)] = field
        elif kind == 2:
            del out[position:]
        elif kind == 3:
            del out[position:position + rng.randint(1, 64)]
        elif kind == 4:
            out[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == 5:
            block = out[position:position + rng.randint(4, 128)]
            at = rng.randrange(max(1, len(out)))
            out[at:at] = block
        else:
            donor = rng.choice(others)
            out[position:] = donor[rng.randrange(len(donor)):]
        if not out:
            break
    return bytes(out)


def run_fuzz(cases: int, seed: int) -> tuple[int, int, list[str]]:
    """(files tried, files decoded, escapes as 'case: exception') over ``cases`` mutations."""
    seeds = seed_files()
    names = sorted(seeds)
    rng = random.Random(seed)
    decoded, escapes = 0, []
    for case in range(cases):
        name = names[case % len(names)]
        data = mutate(seeds[name], rng, list(seeds.values()))
        label = f"{name}#{case}"
        try:
            image = read_mask(data, name=label) if case % 5 == 4 else read_image(data, name=label)
        except ImageReadError as error:
            assert label in str(error) and "\n" not in str(error)
            continue
        except Exception as error:  # noqa: BLE001 - what the fuzz is looking for
            escapes.append(f"{label}: {type(error).__name__}: {error}")
            continue
        assert image.dtype == np.uint8 and image.ndim in (2, 3)
        decoded += 1
    return cases, decoded, escapes


def test_seeds_are_valid_files_of_every_allowed_format():
    seeds = seed_files()
    formats = set()
    for data in seeds.values():
        with Image.open(io.BytesIO(data)) as image:
            formats.add(image.format)
        assert read_image(data).ndim == 3
    assert formats == set(ALLOWED_FORMATS)


@pytest.mark.filterwarnings("ignore::UserWarning")  # decoders warn about odd files; p3m.io silences them too
def test_mutated_files_raise_only_image_read_errors(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", FUZZ_PIXEL_CAP)
    started = time.monotonic()
    tried, decoded, escapes = run_fuzz(DEFAULT_CASES, seed=20)
    assert escapes == []
    assert 0 < decoded < tried  # the mutations reach both outcomes
    assert time.monotonic() - started < 120


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_files_raise_only_image_read_errors_at_volume(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", FUZZ_PIXEL_CAP)
    tried, decoded, escapes = run_fuzz(SLOW_CASES, seed=2020)
    assert escapes == []
