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


# -- the one reader: allow-listed formats, every failure an ImageReadError naming the source

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 8 8
%%EndComments
0 0 moveto 8 8 lineto stroke
showpage
%%EOF
"""


def test_eps_named_jpg_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self) or 1 / 0)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: opened.append(args) or 1 / 0)
    path = tmp_path / "holiday.jpg"
    path.write_bytes(EPS)
    with pytest.raises(ZeroDivisionError):  # what Pillow alone does: picks the EPS decoder by content
        Image.open(path)
    opened.clear()
    with pytest.raises(ImageReadError, match=r"holiday\.jpg: not an image file of a supported format"):
        read_image(path)
    with pytest.raises(ImageReadError, match="holiday.jpg"):
        read_mask(path)
    assert opened == []


def test_a_png_with_a_broken_chunk_is_a_read_error(tmp_path, gradient):
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, "PNG")
    data = buffer.getvalue()
    idat = data.index(b"IDAT") - 4
    empty_idat = struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))
    path = tmp_path / "broken.png"
    path.write_bytes(data[:idat] + empty_idat + b"\x03\x83\x00\x00\x8b\x8b\xf1\xf1" + data[idat:])
    with pytest.raises(SyntaxError):  # what Pillow raises for it
        Image.open(path).load()
    with pytest.raises(ImageReadError, match=r"broken\.png: cannot read image \(SyntaxError: broken PNG file"):
        read_image(path)


def test_bytes_and_file_objects_are_read_like_files(tmp_path, gradient):
    import io

    Image.fromarray(gradient).save(tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    np.testing.assert_array_equal(read_image(data), gradient)
    np.testing.assert_array_equal(read_image(io.BytesIO(data)), gradient)
    with open(tmp_path / "g.png", "rb") as handle:
        np.testing.assert_array_equal(read_mask(handle), gradient[..., 0])
    with pytest.raises(ImageReadError, match=r"upload\.png: not an image"):
        read_image(b"<html>", name="upload.png")
    with pytest.raises(ImageReadError, match=r"<bytes>: "):
        read_image(data[:40])
    with pytest.raises(ImageReadError, match="got NoneType"):
        read_image(None)


def test_symlink_loop_fifo_and_folder_say_so(tmp_path):
    import os

    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ImageReadError, match=r"loop\.png: symbolic link loop"):
        read_image(loop)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match=r"pipe\.png: not a regular file"):
        read_image(fifo)  # returns at once: a FIFO is never waited on


# -- the one writer: guards, short temporaries, stale temporaries, links

def test_writer_refuses_an_input_by_inode_and_by_path(tmp_path):
    import os

    from p3m.io import RunInputs, UnsafeOutputError, write_text

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"original")
    os.link(photo, tmp_path / "alias.jpg")
    inputs = RunInputs([photo, tmp_path / "not-yet.json"])
    for target in (photo, tmp_path / "alias.jpg", tmp_path / "sub" / ".." / "photo.jpg", tmp_path / "not-yet.json"):
        with pytest.raises(UnsafeOutputError, match="input of the run"):
            write_text(target, "{}", inputs=inputs)
    assert photo.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.jpg", "photo.jpg"]


def test_writer_does_not_follow_a_symlinked_folder_out_of_the_root(tmp_path):
    from p3m.io import OutputFolder, UnsafeOutputError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.png").write_bytes(b"precious")
    out = tmp_path / "out"
    (out / "alpha").mkdir(parents=True)
    (out / "alpha" / "sub").symlink_to(outside)
    folder = OutputFolder(out)
    with pytest.raises(UnsafeOutputError, match="outside the output folder|symbolic link"):
        folder.save_image(out / "alpha" / "sub" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(UnsafeOutputError, match="outside the output folder"):
        folder.write_text(out / ".." / "outside" / "a.png", "x")
    assert (outside / "a.png").read_bytes() == b"precious"
    assert [p.name for p in outside.iterdir()] == ["a.png"]


def test_removing_an_output_keeps_to_the_root_and_spares_inputs_and_link_targets(tmp_path):
    from p3m.io import OutputFolder, UnsafeOutputError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.png").write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    (out / "link.png").symlink_to(outside / "a.png")
    (out / "photo.jpg").write_bytes(b"input")
    (out / "done.png").write_bytes(b"output")
    folder = OutputFolder(out, [out / "photo.jpg"])
    for refused in (out / "sub" / "a.png", out / "photo.jpg", out / ".." / "outside" / "a.png"):
        with pytest.raises(UnsafeOutputError, match="refused"):
            folder.remove(refused)
    assert folder.remove(out / "link.png") and folder.remove(out / "done.png")
    assert not folder.remove(out / "done.png") and not folder.remove(out / "new" / "x.png")
    assert (outside / "a.png").read_bytes() == b"precious" and (out / "photo.jpg").read_bytes() == b"input"
    assert sorted(p.name for p in out.iterdir()) == ["photo.jpg", "sub"]


def test_log_appends_refuse_a_symlink(tmp_path):
    from p3m.io import UnsafeOutputError, append_text

    target = tmp_path / "victim.txt"
    target.write_text("keep\n")
    (tmp_path / "train.log").symlink_to(target)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        append_text(tmp_path / "train.log", "line\n")
    assert target.read_text() == "keep\n"
    append_text(tmp_path / "new.log", "one\n")
    append_text(tmp_path / "new.log", "two\n")
    assert (tmp_path / "new.log").read_text() == "one\ntwo\n"


def test_long_names_and_stale_temporaries(tmp_path):
    import subprocess
    import sys

    from p3m.io import OutputFolder

    name = "é" * 60 + "x" * 130 + ".png"  # 254 bytes in UTF-8
    assert len(name.encode()) == 254
    save_image(tmp_path / name, np.zeros((4, 4), np.uint8))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "sub" / f".p3m-{int(dead.stdout)}-0123abcd.part.png"
    stale.parent.mkdir()
    stale.write_bytes(b"")
    unrelated = tmp_path / "sub" / ".p3m-notes.txt"
    unrelated.write_bytes(b"mine")
    OutputFolder(tmp_path)
    assert not stale.exists() and unrelated.exists()
    assert (tmp_path / name).is_file()


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    from p3m.io import OutputFolder, UnsafeOutputError

    (tmp_path / "out").write_text("a file")
    with pytest.raises(UnsafeOutputError, match="not a folder"):
        OutputFolder(tmp_path / "out")


def test_output_complete_needs_a_decodable_non_empty_file(tmp_path, gradient):
    from p3m.io import output_complete

    save_image(tmp_path / "done.png", gradient)
    data = (tmp_path / "done.png").read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    assert output_complete(tmp_path / "done.png")
    assert not output_complete(tmp_path / "empty.png")
    assert not output_complete(tmp_path / "half.png")
    assert not output_complete(tmp_path / "absent.png")
