"""P3M-Net(Swin-T): raw and end-to-end outputs against the official code, the official
constants, checkpoint loading and saving, and inference at every size the pipeline makes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import p3m
from p3m.checkpoint import CheckpointError, load_weights, read_checkpoint, save_weights
from p3m.models import EncoderFeatures, create_model, get_spec, list_models
from p3m.models.swin_layers import attention_mask, relative_position_index

RAW_OUTPUTS = ("global", "local", "side2", "side1", "side0")


@pytest.fixture(scope="module")
def swin_model(swin_checkpoint):
    return load_weights(create_model("swin-t"), swin_checkpoint, "swin-t").eval()


@pytest.fixture(scope="module")
def swin_matter(swin_checkpoint):
    return p3m.Matter(model="swin-t", weights=swin_checkpoint, device="cpu")


def _named(output):
    return {"global": output.global_logits, "local": output.local_alpha, "fusion": output.fused_alpha,
            "side2": output.side_logits[0], "side1": output.side_logits[1], "side0": output.side_logits[2]}


def _assert_alpha_matches(alpha, reference):
    assert alpha.shape == reference.shape
    difference = np.abs(alpha - reference)
    assert difference.mean() <= 1e-4
    assert (difference > 0.01).mean() <= 1e-3


def test_raw_outputs_match_official(swin_model, fixtures_dir):
    reference = np.load(fixtures_dir / "swin_forward_256x352.npz")
    with torch.inference_mode():
        outputs = _named(swin_model(torch.from_numpy(reference["input"])))
    for name in RAW_OUTPUTS:
        assert outputs[name].shape == reference[name].shape, name
        np.testing.assert_allclose(outputs[name].numpy(), reference[name], rtol=1e-4, atol=1e-4, err_msg=name)
    fusion_off = np.abs(outputs["fusion"].numpy() - reference["fusion"]) > 1e-3
    assert fusion_off.mean() <= 1e-3


@pytest.mark.parametrize("method", ["hybrid", "resize"])
def test_small_image_takes_the_official_one_pass_path(swin_matter, fixtures_dir, method):
    # ref_small.png (487x325) has a side under 512: one pass at 512x736 for either method.
    reference = np.load(fixtures_dir / "swin_pipeline_ref_small.npz")[method.upper()]
    alpha = swin_matter.with_options(method=method).predict(fixtures_dir / "ref_small.png").alpha
    _assert_alpha_matches(alpha, reference)


@pytest.mark.parametrize("method", ["hybrid", "resize"])
def test_end_to_end_alpha_matches_official(swin_matter, fixtures_dir, method):
    reference = np.load(fixtures_dir / "swin_pipeline_ref_mid.npz")[method.upper()]
    alpha = swin_matter.with_options(method=method).predict(fixtures_dir / "ref_mid.png").alpha
    assert alpha.shape == (540, 806)
    _assert_alpha_matches(alpha, reference)


def test_computed_constants_equal_the_official_ones(fixtures_dir):
    spec = get_spec("swin-t")
    official = spec.to_official(create_model("swin-t").state_dict())
    constants = np.load(fixtures_dir / "swin_constants.npz")
    encoder_constants = [key for key in constants.files if key.startswith("encoder.")]
    assert len(encoder_constants) == 24  # 12 blocks: a mask and an index each
    for key in encoder_constants:
        assert np.array_equal(official[key].numpy(), constants[key]), key


def test_masks_keep_tokens_within_their_region():
    # 8x8 padded to 14x14 and shifted by 3: along each axis, rows 0-4 are real, 5-10 padding,
    # 11-13 real rows wrapped from the top.
    mask = attention_mask(8, 8, 7, 3)
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    first_window = mask[0].view(7, 7, 7, 7)
    assert first_window[0, 0, 4, 4] == 0 and first_window[0, 0, 5, 0] == -100 and first_window[0, 0, 0, 5] == -100
    last_window = mask[3].view(7, 7, 7, 7)
    assert last_window[6, 6, 4, 4] == 0 and last_window[6, 6, 3, 4] == -100
    # No mask where nothing needs one (the official code fails there on `None.cuda()`).
    assert attention_mask(14, 21, 7, 0) is None
    assert attention_mask(7, 14, 7, 3).shape == (2, 49, 49)
    index = relative_position_index(7)
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 168
    assert torch.equal(index.diagonal(), torch.full((49,), 84))


def test_encoder_honours_the_feature_contract(swin_model):
    with torch.inference_mode():
        features = swin_model.encoder(torch.randn(2, 3, 64, 96))
    assert isinstance(features, EncoderFeatures)
    assert features.stem.shape == (2, 48, 32, 48)
    assert [tuple(skip.shape) for skip in features.skips] == [
        (2, 96, 32, 48), (2, 96, 16, 24), (2, 192, 8, 12), (2, 384, 4, 6)]
    assert features.deepest.shape == (2, 768, 2, 3)
    levels = [features.stem, *features.skips, features.deepest]
    for index, level in zip(features.indices, levels[1:]):
        assert index.shape[-2:] == level.shape[-2:]


@pytest.mark.parametrize("size", [(32, 32), (32, 224), (224, 32), (64, 96), (96, 160), (224, 224), (288, 32)])
def test_network_runs_at_sizes_the_official_code_cannot(swin_model, size):
    # Last stages of 1 to 9 px, single windows, one-window-high strips, padded and unpadded maps.
    with torch.inference_mode():
        output = swin_model(torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)))
    assert output.global_logits.shape == (1, 3, *size)
    assert output.fused_alpha.shape == (1, 1, *size)
    assert torch.isfinite(output.global_logits).all()
    assert 0 <= output.fused_alpha.min() and output.fused_alpha.max() <= 1


@pytest.mark.parametrize("height, width, max_size", [
    (1, 1, 128),  # enlarged to 64 px, then the small-image pass, capped at 128x128
    (17, 301, 96),  # small-image pass capped at 96x96: last stage 3x3
    (515, 33, 224),  # capped at 224x224: last stage exactly one window
    (601, 599, 160),  # both methods at 160x160 (HYBRID's global pass too): last stage 5x5
    (530, 517, 64),  # 64x64 passes: last stage 2x2
    (700, 9, 256),  # a strip: enlarged to 64 px wide, then the small-image pass at 256x256
])
def test_matter_gives_an_alpha_at_any_image_size(swin_matter, height, width, max_size):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for method in ("hybrid", "resize"):
        alpha = swin_matter.with_options(method=method, max_size=max_size).predict(image).alpha
        assert alpha.shape == (height, width) and alpha.dtype == np.float32
        assert 0 <= alpha.min() and alpha.max() <= 1


@pytest.mark.slow
def test_matter_gives_an_alpha_for_a_large_image(swin_matter):
    # Shrunk to a shorter side of 1080; the local pass is 1056x1600 (capped), its last stage 33x50.
    image = np.random.default_rng(1).integers(0, 256, (1500, 2300, 3), dtype=np.uint8)
    alpha = swin_matter.predict(image).alpha
    assert alpha.shape == (1500, 2300)
    assert 0 <= alpha.min() and alpha.max() <= 1


def test_registry_entry():
    assert "swin-t" in list_models()
    spec = get_spec("Swin_T")
    assert spec.name == "swin-t"
    assert spec.weights is None and spec.small_image_side == 512 and not spec.exportable


def test_save_writes_the_official_layout(swin_model, tmp_path, fixtures_dir, swin_checkpoint):
    path = save_weights(swin_model, tmp_path / "saved.pth", "swin-t")
    saved = read_checkpoint(path)["state_dict"]
    manifest = json.loads((fixtures_dir / "swin_manifest.json").read_text())
    assert sorted(saved) == sorted(entry["name"] for entry in manifest["tensors"])
    official = read_checkpoint(swin_checkpoint)["state_dict"]
    for entry in manifest["tensors"]:
        name = entry["name"]
        assert list(saved[name].shape) == entry["shape"] and str(saved[name].dtype) == entry["dtype"], name
        assert torch.equal(saved[name], official[name]), name


def test_wrong_variant_checkpoints_are_named(swin_checkpoint, r34_checkpoint):
    with pytest.raises(CheckpointError, match="not a 'swin-t' checkpoint.*looks like a 'resnet34' checkpoint"):
        load_weights(create_model("swin-t"), r34_checkpoint, "swin-t")
    with pytest.raises(CheckpointError, match="not a 'vitae-s' checkpoint.*looks like a 'swin-t' checkpoint"):
        load_weights(create_model("vitae-s"), swin_checkpoint, "vitae-s")


def test_masks_of_another_training_size_are_refused(swin_checkpoint, tmp_path):
    state = read_checkpoint(swin_checkpoint)["state_dict"]
    state["encoder.layers.0.blocks.0.attn_mask"] = torch.zeros(64, 49, 49)
    torch.save({"state_dict": state}, tmp_path / "other_size.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape.*attn_mask: \(64, 49, 49\)"):
        load_weights(create_model("swin-t"), tmp_path / "other_size.pth", "swin-t")


def test_export_is_refused_with_a_reason(swin_model, tmp_path):
    from p3m.models.export import export_onnx

    with pytest.raises(ValueError, match="attention masks depend on the input size"):
        export_onnx(swin_model, get_spec("swin-t"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
