"""With the official pretrained weights in the cache, p3m reproduces the published sample alphas.

These tests need the real weights (`p3m weights download NAME`); without them
they skip and say so. The published alphas were written by the official sample
script: HYBRID for ResNet-34, RESIZE for ViTAE-S, saved as truncated uint8.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import p3m
from p3m.weights import cached_path

SAMPLES = ("p_015cd10e", "p_0865636e", "p_819ea202")


@pytest.mark.weights
@pytest.mark.parametrize("model, method", [("resnet34", "hybrid"), ("vitae-s", "resize")])
def test_published_sample_alphas(fixtures_dir, model, method):
    weights = cached_path(model)
    if not weights.is_file():
        pytest.skip(f"official '{model}' weights not in the cache ({weights}); run `p3m weights download {model}`")
    matter = p3m.Matter(model=model, method=method, device="cpu")
    for name in SAMPLES:
        alpha = matter.predict(fixtures_dir / "samples" / f"{name}.jpg").alpha
        published = np.asarray(Image.open(fixtures_dir / "official_alpha" / model / f"{name}.png"), np.float32) / 255
        if published.ndim == 3:
            published = published[..., 0]
        difference = np.abs(np.floor(alpha * 255) / 255 - published)
        assert difference.mean() <= 2 / 255, name
        assert (difference > 8 / 255).mean() <= 0.01, name
