"""Image reading as users expect: EXIF, modes, bit depths, bad files; atomic writes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from p3m.io import ImageReadError, atomic_write, read_image, read_mask, save_image


@pytest.fixture()
def gradient():
    y, x = np.mgrid[0:40, 0:60]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=2).astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path, gradient):
    image = Image.fromarray(gradient)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = read_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (60, 40, 3)
    expected = np.rot90(gradient, k=-1)
    assert np.abs(loaded.astype(int) - expected.astype(int)).mean() < 4


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_modes_become_rgb8(tmp_path, gradient, mode):
    path = tmp_path / f"image_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.fromarray(gradient).convert(mode).save(path)
    loaded = read_image(path)
    assert loaded.shape == (40, 60, 3) and loaded.dtype == np.uint8


def test_rgba_alpha_is_dropped_keeping_colour(tmp_path, gradient):
    rgba = np.dstack([gradient, np.zeros((40, 60), np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    np.testing.assert_array_equal(read_image(tmp_path / "transparent.png"), gradient)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    deep = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    loaded = read_image(tmp_path / "deep.png")
    np.testing.assert_allclose(loaded[..., 0], deep / 257.0, atol=0.51)
    assert loaded.max() > 200


def test_arrays_are_accepted(gradient):
    np.testing.assert_array_equal(read_image(gradient), gradient)
    assert read_image(gradient[..., 0]).shape == (40, 60, 3)
    with pytest.raises(ImageReadError, match="uint8"):
        read_image(gradient.astype(np.float64))


@pytest.mark.parametrize("content, problem", [
    (b"", "cannot read|not an image"),
    (b"hello, world", "not an image"),
])
def test_bad_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=rf"bad\.png: ({problem})"):
        read_image(path)


def test_truncated_file(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: cannot read image"):
        read_image(tmp_path / "cut.jpg")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # p3m ignores it too (see p3m.io)
@pytest.mark.parametrize("limit", [9000, 1000])  # over the limit, and over twice the limit
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, limit):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageReadError, match=r"big\.png: refused, image too large"):
        read_image(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_mask(tmp_path / "big.png")


def test_save_image_is_atomic_and_round_trips(tmp_path, gradient):
    path = save_image(tmp_path / "out" / "image.png", gradient)
    np.testing.assert_array_equal(read_image(path), gradient)
    assert [p.name for p in path.parent.iterdir()] == ["image.png"]
    deep = np.full((4, 5), 40000, np.uint16)
    save_image(tmp_path / "deep.png", deep)
    assert np.asarray(Image.open(tmp_path / "deep.png")).max() == 40000


def test_failed_write_leaves_the_target_untouched_and_no_partial_file(tmp_path):
    target = tmp_path / "result.png"
    target.write_bytes(b"previous result")

    def write_then_fail(tmp):
        tmp.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, write_then_fail)
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_outputs_get_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    path = save_image(tmp_path / "mode.png", np.zeros((4, 4), np.uint8))
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_read_mask_takes_first_channel(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "mask.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), gradient[..., 0])
