"""Foreground colour, cutouts, composites and PNG levels of p3m.inference.compose / batch."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from p3m.inference import compose
from p3m.inference.batch import MatteOptions, write_outputs
from p3m.inference.compose import alpha_to_uint, composite, cutout, foreground_colour, foreground_rgb8
from p3m.inference.matter import MatteResult


def _scene(height=240, width=320, seed=0):
    """A known foreground (stripes), a soft-edged disc alpha and a green background, composited to uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fg = np.stack([0.6 + 0.3 * np.sin(x / 9), 0.3 + 0.2 * np.cos(y / 7), np.full_like(x, 0.8)], axis=-1)
    distance = np.hypot(y - height / 2, x - width / 2) - min(height, width) / 3
    alpha = np.clip(0.5 - distance / 24 + rng.normal(0, 0.05, distance.shape), 0, 1).astype(np.float32)
    alpha[distance < -14] = 1.0
    alpha[distance > 14] = 0.0
    background = np.broadcast_to(np.float32([0.05, 0.9, 0.1]), fg.shape)
    image = np.rint((alpha[..., None] * fg + (1 - alpha[..., None]) * background) * 255).astype(np.uint8)
    return image, alpha, fg


def _band_error(estimate, fg, alpha):
    soft = (alpha > 0) & (alpha < 1)
    return float((np.abs(estimate - fg).mean(-1) * alpha)[soft].sum() / alpha[soft].sum())


@pytest.mark.parametrize("shape", [(240, 320), (1100, 1000)])  # the second is blurred at a reduced size
def test_estimate_removes_the_old_background(shape):
    image, alpha, fg = _scene(*shape)
    estimate = foreground_colour(image, alpha)
    assert estimate.shape == image.shape and estimate.dtype == np.float32
    assert 0.0 <= estimate.min() and estimate.max() <= 1.0
    original = foreground_colour(image, alpha, "original")
    assert _band_error(estimate, fg, alpha) < 0.3 * _band_error(original, fg, alpha)
    mostly_background = (alpha > 0.05) & (alpha < 0.5)
    green_cast = {name: (colour[..., 1] - fg[..., 1])[mostly_background].mean()
                  for name, colour in (("estimate", estimate), ("original", original))}
    assert abs(green_cast["estimate"]) < 0.2 * green_cast["original"]


def test_only_the_soft_band_changes_and_strips_do_not_show(monkeypatch):
    image, alpha, _ = _scene()
    estimate = foreground_rgb8(image, alpha)
    hard = (alpha == 0) | (alpha == 1)
    np.testing.assert_array_equal(estimate[hard], image[hard])
    assert (estimate[~hard] != image[~hard]).any()
    np.testing.assert_array_equal(estimate, np.rint(foreground_colour(image, alpha) * 255).astype(np.uint8))
    monkeypatch.setattr(compose, "STRIP_ROWS", 7)
    np.testing.assert_array_equal(foreground_rgb8(image, alpha), estimate)


@pytest.mark.parametrize("shape", [(240, 320), (1100, 1000)])
def test_whole_strip_fusion_matches_the_per_pixel_path(monkeypatch, shape):
    image, alpha, _ = _scene(*shape)
    alpha = np.clip(alpha * 0.8 + 0.1, 0, 1)  # soft everywhere, as an unsure model's matte
    monkeypatch.setattr(compose, "DENSE_BAND_SHARE", 2.0)  # never whole strips
    per_pixel = foreground_rgb8(image, alpha)
    monkeypatch.setattr(compose, "DENSE_BAND_SHARE", 0.0)  # always whole strips
    whole = foreground_rgb8(image, alpha)
    difference = np.abs(whole.astype(int) - per_pixel)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    exact = foreground_colour(image, alpha)
    assert np.abs(whole / 255.0 - exact).max() <= 1.5 / 255


def test_a_hard_matte_needs_no_estimation(monkeypatch):
    image, alpha, _ = _scene()

    def refuse(*_):
        raise AssertionError("blurred colours computed for a matte without a soft band")

    monkeypatch.setattr(compose, "_blurred_colours", refuse)
    hard = (alpha > 0.5).astype(np.float32)
    np.testing.assert_array_equal(foreground_rgb8(image, hard), image)
    np.testing.assert_array_equal(foreground_colour(image, hard), image / np.float32(255))


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (200, 2)])
def test_tiny_and_thin_images(shape):
    image = np.full((*shape, 3), 90, np.uint8)
    alpha = np.full(shape, 0.5, np.float32)
    estimate = foreground_colour(image, alpha)
    assert estimate.shape == image.shape and np.isfinite(estimate).all()


def test_unknown_mode_is_refused():
    image, alpha, _ = _scene(8, 8)
    with pytest.raises(ValueError, match="unknown foreground mode"):
        foreground_colour(image, alpha, "magic")
    with pytest.raises(ValueError, match="unknown foreground mode"):
        MatteOptions(foreground="magic")


def test_cutout_clears_invisible_colour_and_takes_either_dtype():
    image, alpha, _ = _scene(16, 20)
    alpha[0, :4] = [0.0, 0.001, 0.003, 1.0]  # 8-bit alpha 0, 0, 1, 255
    rgba = cutout(image, alpha)
    np.testing.assert_array_equal(rgba, cutout(image.astype(np.float32) / 255, alpha))
    np.testing.assert_array_equal(rgba[..., 3], alpha_to_uint(alpha, 8))
    visible = rgba[..., 3] > 0
    np.testing.assert_array_equal(rgba[..., :3][visible], image[visible])
    assert not rgba[~visible].any()
    assert visible[0, 2] and not visible[0, 1]


def test_composite_matches_the_blend_for_either_dtype():
    image, alpha, _ = _scene(40, 30)
    background = np.full(image.shape, (200, 10, 60), np.uint8)
    expected = np.rint((alpha[..., None] * (image / 255) + (1 - alpha[..., None]) * (background / 255)) * 255)
    for foreground in (image, image.astype(np.float32) / 255):
        blended = composite(foreground, alpha, background)
        assert blended.dtype == np.uint8
        assert np.abs(blended.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_alpha_to_uint_rounds_as_before(dtype):
    alpha = np.random.default_rng(0).uniform(-0.1, 1.1, (50, 60)).astype(dtype)
    for depth, top, kind in ((8, 255, np.uint8), (16, 65535, np.uint16)):
        np.testing.assert_array_equal(alpha_to_uint(alpha, depth), np.rint(np.clip(alpha, 0.0, 1.0) * top).astype(kind))


def test_png_compression_level_reaches_every_output(tmp_path):
    image, alpha, _ = _scene()
    trimap = np.where(alpha == 1, 255, np.where(alpha == 0, 0, 128)).astype(np.uint8)
    result = MatteResult(image=image, alpha=alpha, trimap=trimap)
    sizes = {}
    for level in (0, 9):
        targets = {kind: tmp_path / str(level) / kind / "x.png" for kind in ("alpha", "rgba", "composite", "trimap")}
        write_outputs(result, targets, MatteOptions(outputs=tuple(targets), png_compression=level),
                      compose.Background("white"))
        sizes[level] = {kind: path.stat().st_size for kind, path in targets.items()}
        np.testing.assert_array_equal(np.asarray(Image.open(targets["alpha"])), alpha_to_uint(alpha))
    assert all(sizes[0][kind] > 2 * sizes[9][kind] for kind in sizes[0])
    for level in (-1, 10):
        with pytest.raises(ValueError, match="PNG compression"):
            MatteOptions(png_compression=level)


@pytest.mark.slow
def test_estimate_is_as_good_as_pymatting_on_the_test_portraits(fixtures_dir):
    """The bench's quality check (scripts/bench_foreground.py) on one background: within 1.1x of ml."""
    errors = {"estimate": [], "ml": []}
    for name in ("p_015cd10e", "p_0865636e", "p_819ea202"):
        fg = np.asarray(Image.open(fixtures_dir / "samples" / f"{name}.jpg"), np.float32) / 255
        alpha = np.asarray(Image.open(fixtures_dir / "official_alpha" / "resnet34" / f"{name}.png"), np.float32) / 255
        weight = alpha[..., None]
        image = np.rint((weight * fg + (1 - weight) * np.float32([0, 1, 0])) * 255).astype(np.uint8)
        for method in errors:
            errors[method].append(_band_error(foreground_colour(image, alpha, method), fg, alpha))
    assert np.mean(errors["estimate"]) <= 1.1 * np.mean(errors["ml"])
