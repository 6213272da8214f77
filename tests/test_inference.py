"""End-to-end inference against the official code's outputs, and input handling."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.transform import resize

import p3m
from p3m.inference.pipeline import pass_size, resize_sources, shrink_image
from p3m.io import ImageReadError


@pytest.fixture(scope="module")
def matters(r34_checkpoint):
    return {method: p3m.Matter(weights=r34_checkpoint, method=method, device="cpu")
            for method in ("hybrid", "resize")}


@pytest.mark.parametrize("method", ["hybrid", "resize"])
def test_end_to_end_alpha_matches_official(matters, fixtures_dir, method):
    reference = np.load(fixtures_dir / "r34_pipeline_ref_small.npz")[method.upper()]
    result = matters[method].predict(fixtures_dir / "ref_small.png")
    assert result.alpha.shape == reference.shape == (325, 487)
    assert result.alpha.dtype == np.float32
    difference = np.abs(result.alpha - reference)
    assert difference.mean() <= 1e-4
    assert (difference > 0.01).mean() <= 1e-3


def test_result_contract(matters, fixtures_dir):
    result = matters["hybrid"].predict(fixtures_dir / "ref_small.png")
    assert 0.0 <= result.alpha.min() and result.alpha.max() <= 1.0
    assert result.trimap.shape == result.alpha.shape and result.trimap.dtype == np.uint8
    assert set(np.unique(result.trimap)) <= {0, 128, 255}
    assert result.image.shape == (325, 487, 3)


def test_path_pil_and_array_inputs_agree(matters, fixtures_dir):
    path = fixtures_dir / "ref_small.png"
    array = np.asarray(Image.open(path).convert("RGB"))
    by_path = matters["resize"].predict(path).alpha
    np.testing.assert_array_equal(by_path, matters["resize"].predict(Image.open(path)).alpha)
    np.testing.assert_array_equal(by_path, matters["resize"].predict(array).alpha)


def test_method_is_case_insensitive_and_validated(r34_checkpoint):
    assert p3m.Matter(weights=r34_checkpoint, method="HyBrId", device="cpu").method.value == "hybrid"
    with pytest.raises(ValueError, match="unknown method"):
        p3m.Matter(weights=r34_checkpoint, method="tiled", device="cpu")


def test_pass_size_floors_to_32_and_caps_each_side():
    assert pass_size(325, 487, 0.5, 1600) == (160, 224)
    assert pass_size(1080, 1620, 1.0, 1600) == (1056, 1600)
    # The official cap ignores the aspect ratio.
    assert pass_size(4000, 3000, 1.0, 1600) == (1600, 1600)
    assert pass_size(700, 1100, 1.0, 1000) == (672, 992)


@pytest.mark.parametrize("size", [(512, 800), (1056, 1600), (1080, 1620), (301, 417), (1024, 64), (40, 1600)])
def test_shrink_image_equals_skimage_resize_within_float32_rounding(size):
    # Odd and anisotropic factors (the 1600 cap ignores the aspect ratio), a factor of 1, and 25x.
    image = np.random.default_rng(3).integers(0, 256, (1080, 1620, 3), dtype=np.uint8)
    image[:200] = 255  # flat regions: the clip to the input's range
    expected = resize(image, size) * 255.0
    got = shrink_image(image, size)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 2e-4  # 8e-7 relative to 255


def test_shrink_image_falls_back_to_skimage_where_a_side_grows():
    image = np.random.default_rng(4).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    np.testing.assert_allclose(shrink_image(image, (64, 64)), resize(image, (64, 64)) * 255.0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", [(20, 20), (63, 200), (1, 1)])
def test_tiny_images_are_upscaled_not_crashed(matters, size):
    height, width = size
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    result = matters["hybrid"].predict(image)
    assert result.alpha.shape == (height, width)
    assert np.isfinite(result.alpha).all() and 0 <= result.alpha.min() and result.alpha.max() <= 1


def _network_input_sizes(matter, image):
    sizes = []
    handle = matter.network.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        result = matter.predict(image)
    finally:
        handle.remove()
    return result, sizes


def test_large_images_follow_the_official_shorter_side_limit(matters, r34_checkpoint):
    image = np.zeros((1200, 1100, 3), dtype=np.uint8)
    result, sizes = _network_input_sizes(matters["resize"], image)
    assert result.alpha.shape == (1200, 1100)
    # Shrunk to 1178x1080 first (shorter side 1080), then the 1/2-scale pass: 589x540 -> 576x540 floored to 32.
    assert sizes == [(576, 512)]
    unlimited = p3m.Matter(weights=r34_checkpoint, method="resize", device="cpu", shorter_side_limit=None)
    assert _network_input_sizes(unlimited, image)[1] == [(576, 544)]


def test_unreadable_input_raises_one_line_error(matters, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        matters["hybrid"].predict(bad)


def test_device_resolution(monkeypatch):
    import torch

    from p3m.inference import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize(("image_size", "pass_shape"), [((1080, 1620), (1056, 1600)), ((70, 45), (64, 32)),
                                                        ((64, 96), (64, 96)), ((300, 200), (100, 50))])
def test_resize_sources_hold_every_pixel_the_resize_reads(image_size, pass_shape):
    """Outside resize_sources(mask), a map can hold anything: its resize is unchanged on the mask."""
    rng = np.random.default_rng(sum(image_size))
    mask = np.zeros(image_size, dtype=bool)
    mask[rng.integers(0, image_size[0], 40), rng.integers(0, image_size[1], 40)] = True  # scattered pixels
    mask[image_size[0] // 3, :] = True  # a line across
    mask[-1, -1] = mask[0, 0] = True  # the corners
    sources = resize_sources(mask, pass_shape)
    assert sources.shape == pass_shape
    assert sources.mean() < 0.9
    values = rng.random(pass_shape, dtype=np.float32)
    garbage = np.where(sources, values, rng.random(pass_shape, dtype=np.float32) * 100)
    assert np.array_equal(resize(values, image_size)[mask], resize(garbage, image_size)[mask])
    # an empty mask reads nothing
    assert not resize_sources(np.zeros(image_size, dtype=bool), pass_shape).any()


def test_hybrid_skips_the_certain_region_of_the_local_pass_without_changing_the_alpha(r34_checkpoint, fixtures_dir,
                                                                                      monkeypatch):
    """With a trimap that is mostly certain, the banded local pass computes only the tiles near its
    transition band, and the HYBRID alpha equals the one from a local pass computed whole."""
    from p3m.inference import pipeline
    from p3m.models import decoder

    monkeypatch.setattr(decoder, "BANDED_MIN_PIXELS", 0)
    monkeypatch.setattr(decoder, "REGION_TILE", 16)

    def ring_trimap(logits):  # background, a transition ring 3 px wide, foreground inside
        height, width = logits.shape[1:]
        trimap = np.zeros((height, width), dtype=np.uint8)
        trimap[height // 4:-height // 4, width // 4:-width // 4] = 128
        trimap[height // 4 + 3:-height // 4 - 3, width // 4 + 3:-width // 4 - 3] = 255
        return trimap

    monkeypatch.setattr(pipeline, "trimap_from_logits", ring_trimap)
    matter = p3m.Matter(model="resnet34", weights=r34_checkpoint, method="hybrid", device="cpu")
    engine = matter.runtime
    regions = []
    run = engine.run

    def recording_run(image, need_global=True, need_local=True, local_region=None):
        regions.append(local_region)
        return run(image, need_global, need_local, local_region)

    monkeypatch.setattr(engine, "run", recording_run)
    image = np.asarray(Image.open(fixtures_dir / "ref_small.png").convert("RGB"))
    skipped = matter.predict(image).alpha
    monkeypatch.setattr(engine, "run", lambda image, need_global=True, need_local=True, local_region=None:
                        run(image, need_global, need_local))
    whole = matter.predict(image).alpha
    local_region = regions[-1]
    assert local_region is not None and 0.05 < local_region.mean() < 0.5
    np.testing.assert_allclose(skipped, whole, rtol=0, atol=1e-6)
