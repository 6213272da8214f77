"""`p3m dataset prepare`: fg/bg estimation for the composition loss, resumable."""
from __future__ import annotations

import numpy as np
import pytest

from p3m.cli import main
from p3m.data import layout
from p3m.data.prepare import estimate_fg_bg, prepare_fgbg
from p3m.data.synth import write_dataset
from p3m.io import read_image, read_mask


def test_estimated_colours_recompose_the_image():
    height, width = 48, 64
    alpha = np.zeros((height, width), np.uint8)
    alpha[:, 24:] = 255
    alpha[:, 16:24] = np.linspace(0, 255, 10)[1:9].astype(np.uint8)
    fg_colour, bg_colour = np.array([200, 40, 30]), np.array([20, 90, 220])
    a = alpha[..., None] / 255.0
    image = np.round(a * fg_colour + (1 - a) * bg_colour).astype(np.uint8)
    fg, bg = estimate_fg_bg(image, alpha)
    assert fg.shape == bg.shape == image.shape and fg.dtype == np.uint8
    recomposed = a * fg + (1 - a) * bg
    assert np.abs(recomposed - image).max() <= 3
    assert np.abs(fg[:, 30:].astype(int) - fg_colour).max() <= 2
    assert np.abs(bg[:, :12].astype(int) - bg_colour).max() <= 2


def test_estimate_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="differs"):
        estimate_fg_bg(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8))


def test_prepare_writes_missing_fg_bg_and_resumes(tmp_path):
    write_dataset(tmp_path, 3, seed=8, size=80, splits=(layout.TRAIN,))
    split = layout.get_split(layout.TRAIN)
    fg_dir, bg_dir = split.folder(tmp_path, layout.FG), split.folder(tmp_path, layout.BG)
    for path in list(fg_dir.iterdir()) + list(bg_dir.iterdir()):
        path.unlink()
    # A broken image is reported and does not stop the others.
    (split.folder(tmp_path, layout.IMAGE) / "p_00002.jpg").write_bytes(b"not a jpeg")

    report = prepare_fgbg(tmp_path)
    assert sorted(report.written) == ["p_00000", "p_00001"]
    assert len(report.problems) == 1 and "p_00002" in report.problems[0]
    image = read_image(split.folder(tmp_path, layout.IMAGE) / "p_00000.jpg")
    alpha = read_mask(split.folder(tmp_path, layout.ALPHA) / "p_00000.png")[..., None] / 255.0
    fg, bg = read_image(fg_dir / "p_00000.jpg"), read_image(bg_dir / "p_00000.jpg")
    assert np.abs(alpha * fg + (1 - alpha) * bg - image).mean() < 3.0

    (fg_dir / "p_00001.jpg").unlink()
    before = (bg_dir / "p_00000.jpg").stat().st_mtime_ns
    again = prepare_fgbg(tmp_path)
    assert again.written == ["p_00001"] and again.skipped == ["p_00000"]
    assert (bg_dir / "p_00000.jpg").stat().st_mtime_ns == before


def test_prepare_command(tmp_path, capsys):
    write_dataset(tmp_path, 2, seed=9, size=80, splits=(layout.TRAIN,))
    assert main(["dataset", "prepare", str(tmp_path), "--workers", "1"]) == 0
    assert "2 already had both" in capsys.readouterr().out
    assert main(["dataset", "prepare", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
