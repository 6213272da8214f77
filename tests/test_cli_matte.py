"""`p3m matte` and `p3m weights`: outputs, resume, bad input, no network."""
from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from p3m.cli import main
from p3m.io import read_image


def _portrait(height=96, width=80, seed=0):
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), (40, 120, 200), np.uint8)
    image[height // 4:, width // 4: 3 * width // 4] = (220, 180, 150)
    return np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def inputs(tmp_path):
    """A folder with good images of every odd kind and bad files, in a subfolder too."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_portrait()).save(folder / "plain.jpg", quality=95)
    Image.fromarray(_portrait(seed=1)).convert("L").save(folder / "gray.png")
    Image.fromarray(_portrait(seed=2)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.dstack([_portrait(seed=3), np.full((96, 80), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((_portrait(seed=4)[..., 0].astype(np.uint16) * 257)).save(folder / "deep16.png")
    rotated = Image.fromarray(_portrait(seed=5))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "sub" / "rotated.jpg", exif=exif)
    Image.fromarray(_portrait(10, 12, seed=6)).save(folder / "tiny.png")
    (folder / "notes.png").write_text("this is not an image")
    good = (folder / "plain.jpg").read_bytes()
    (folder / "sub" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    return folder


def _listing(folder):
    return sorted((path.relative_to(folder), path.stat().st_mtime_ns) for path in folder.rglob("*"))


def test_batch_processes_good_files_reports_bad_ones(inputs, tmp_path, r34_checkpoint, capsys):
    before = _listing(inputs)
    out = tmp_path / "out"
    status = main(["matte", str(inputs), "-o", str(out), "--weights", str(r34_checkpoint), "--quiet",
                   "--output", "alpha,rgba,composite,trimap", "--background", "0,255,0"])
    assert status == 1
    err = capsys.readouterr().err
    assert "notes.png: not an image file" in err
    assert "truncated.jpg: cannot read image" in err
    assert "7 done, 0 skipped (outputs exist), 2 failed" in err
    assert _listing(inputs) == before  # inputs untouched, nothing written there
    for name in ["plain", "gray", "cmyk", "rgba", "deep16", "sub/rotated", "tiny"]:
        source = next(inputs.glob(f"{name}.*"))
        image = read_image(source)
        alpha = np.asarray(Image.open(out / "alpha" / f"{name}.png"))
        assert alpha.dtype == np.uint8 and alpha.shape == image.shape[:2], name
        rgba = np.asarray(Image.open(out / "rgba" / f"{name}.png"))
        assert rgba.shape == image.shape[:2] + (4,)
        np.testing.assert_array_equal(rgba[..., 3], alpha)
        trimap = np.asarray(Image.open(out / "trimap" / f"{name}.png"))
        assert set(np.unique(trimap)) <= {0, 128, 255}
        composite = np.asarray(Image.open(out / "composite" / f"{name}.png"))
        assert composite.shape == image.shape
        background = alpha == 0
        if background.any():
            assert np.all(composite[background] == (0, 255, 0))
    # EXIF rotation applied: the 96x80 photo is displayed as 80x96.
    assert np.asarray(Image.open(out / "alpha" / "sub" / "rotated.png")).shape == (80, 96)
    assert not list(out.rglob("*.part*"))


def test_rerun_resumes_and_overwrite_redoes(inputs, tmp_path, r34_checkpoint, capsys):
    out = tmp_path / "out"
    args = ["matte", str(inputs / "plain.jpg"), str(inputs / "gray.png"), "-o", str(out),
            "--weights", str(r34_checkpoint), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    (out / "rgba" / "gray.png").unlink()  # as if interrupted before the cutout was written
    stamp = (out / "alpha" / "plain.png").stat().st_mtime_ns
    assert main(args) == 0
    assert "1 done, 1 skipped" in capsys.readouterr().err
    assert (out / "rgba" / "gray.png").is_file()
    assert (out / "alpha" / "plain.png").stat().st_mtime_ns == stamp
    assert main(args + ["--overwrite"]) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err
    # A finished batch needs no model: it succeeds even with the weights gone.
    moved = tmp_path / "elsewhere.pth"
    r34_checkpoint.rename(moved)
    try:
        assert main(args) == 0
    finally:
        moved.rename(r34_checkpoint)
    assert "0 done, 2 skipped" in capsys.readouterr().err


def test_sixteen_bit_alpha_and_original_foreground(inputs, tmp_path, r34_checkpoint):
    out = tmp_path / "out"
    assert main(["matte", str(inputs / "plain.jpg"), "-o", str(out), "--weights", str(r34_checkpoint),
                 "--alpha-depth", "16", "--foreground", "original", "--quiet"]) == 0
    alpha16 = Image.open(out / "alpha" / "plain.png")
    assert alpha16.mode.startswith("I;16") or alpha16.mode == "I"
    rgba = np.asarray(Image.open(out / "rgba" / "plain.png"))
    visible = rgba[..., 3] > 0
    np.testing.assert_array_equal(rgba[..., :3][visible], read_image(inputs / "plain.jpg")[visible])


def test_output_inside_input_folder_is_refused(inputs, r34_checkpoint, capsys):
    assert main(["matte", str(inputs), "-o", str(inputs / "out"), "--weights", str(r34_checkpoint)]) == 2
    assert "inside input folder" in capsys.readouterr().err
    assert not (inputs / "out").exists()


def test_inputs_sharing_an_output_are_refused(inputs, tmp_path, r34_checkpoint, capsys):
    Image.fromarray(_portrait()).save(inputs / "plain.png")
    status = main(["matte", str(inputs / "plain.jpg"), str(inputs / "plain.png"), "-o", str(tmp_path / "o"),
                   "--weights", str(r34_checkpoint)])
    assert status == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--output", "alpha,mask"], "unknown output kind mask"),
    (["--background", "not-a-colour"], "--background"),
    (["--model", "resnet50"], "unknown model"),
    (["--device", "toaster"], "unknown device"),
])
def test_bad_options_are_one_line_errors(inputs, tmp_path, r34_checkpoint, capsys, args, message):
    status = main(["matte", str(inputs / "plain.jpg"), "-o", str(tmp_path / "o"),
                   "--weights", str(r34_checkpoint), "--output", "composite", *args])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_missing_input_is_an_error(tmp_path, capsys):
    assert main(["matte", str(tmp_path / "absent.jpg"), "-o", str(tmp_path / "o")]) == 2
    assert "absent.jpg: no such file or folder" in capsys.readouterr().err


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("P3M_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_no_network_and_no_cache_gives_actionable_error(no_network, inputs, tmp_path, capsys):
    import time

    started = time.perf_counter()
    status = main(["matte", str(inputs / "plain.jpg"), "-o", str(tmp_path / "o")])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err.strip()
    assert status == 2 and elapsed < 20
    assert "\n" not in err and "Traceback" not in err
    assert "drive.google.com/uc?id=1smX2YQGIpzKbfwDYHAwete00a_YMwoG1" in err
    assert str(no_network / "weights" / "p3mnet_pretrained_on_p3m10k.pth") in err
    assert "--weights" in err
    assert not list(no_network.rglob("*.pth")) and not list(no_network.rglob("*.part"))


def test_weights_commands(no_network, r34_checkpoint, capsys):
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "resnet34" in listing and "vitae-s" in listing and " missing " in listing
    assert main(["weights", "path", "resnet34"]) == 1
    assert capsys.readouterr().out.strip() == str(no_network / "weights" / "p3mnet_pretrained_on_p3m10k.pth")
    assert main(["weights", "download", "resnet34"]) == 2
    cached = no_network / "weights" / "p3mnet_pretrained_on_p3m10k.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.symlink_to(r34_checkpoint)
    assert main(["weights", "path", "resnet34"]) == 0
    assert main(["weights", "download", "resnet34"]) == 0  # cached: nothing to fetch
