"""P3M-Net ViTAE-S: end-to-end outputs against the official code (raw outputs, the feature contract
and other variants' checkpoints: test_models.py), deterministic Performer features, checkpoint
loading and saving."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import p3m
from p3m.checkpoint import CheckpointError, load_weights, read_checkpoint, save_weights
from p3m.models import create_model, get_spec, list_models
from p3m.models.vitae import performer_seed
from p3m.models.vitae_layers import NormalCell, map_to_tokens, orthogonal_random_features, tokens_to_map

PERFORMER_KEYS = ("encoder.layers.0.NC.0.attn.w", "encoder.layers.0.NC.1.attn.w")


@pytest.fixture(scope="module")
def vitae_model(vitae_checkpoint):
    return load_weights(create_model("vitae-s"), vitae_checkpoint, "vitae-s").eval()


@pytest.fixture(scope="module")
def checkpoint_without_features(vitae_checkpoint, tmp_path_factory):
    """The same weights as an official file holds them: no Performer features."""
    state = read_checkpoint(vitae_checkpoint)["state_dict"]
    for key in PERFORMER_KEYS:
        del state[key]
    path = tmp_path_factory.mktemp("vitae") / "official_layout.pth"
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def seeded_model(checkpoint_without_features):
    """Loaded from a file without Performer features: they keep their seeded values."""
    return load_weights(create_model("vitae-s"), checkpoint_without_features, "vitae-s").eval()


def _features(model):
    return [model.state_dict()[key] for key in PERFORMER_KEYS]


@pytest.mark.parametrize("method", ["hybrid", "resize"])
def test_end_to_end_alpha_matches_official(vitae_checkpoint, fixtures_dir, method):
    reference = np.load(fixtures_dir / "vitae_pipeline_ref_small.npz")[method.upper()]
    matter = p3m.Matter(model="vitae-s", weights=vitae_checkpoint, method=method, device="cpu")
    alpha = matter.predict(fixtures_dir / "ref_small.png").alpha
    assert alpha.shape == reference.shape == (325, 487)
    difference = np.abs(alpha - reference)
    assert difference.mean() <= 1e-4
    assert (difference > 0.01).mean() <= 1e-3


def test_output_shapes_and_input_check(vitae_model):
    with torch.inference_mode():
        output = vitae_model(torch.randn(1, 3, 64, 96))
        with pytest.raises(ValueError, match="multiples of 32"):
            vitae_model(torch.zeros(1, 3, 64, 100))
    assert output.global_logits.shape == (1, 3, 64, 96)
    assert output.local_alpha.shape == output.fused_alpha.shape == (1, 1, 64, 96)
    assert all(side.shape == (1, 3, 64, 96) for side in output.side_logits)


def test_performer_features_are_orthogonal_and_scaled():
    features = orthogonal_random_features(2, 32, 64, seed=7)
    assert features.shape == (2, 32, 64) and features.dtype == torch.float32
    gram = features @ features.transpose(-2, -1)
    torch.testing.assert_close(gram, 32 * torch.eye(32).expand(2, 32, 32), rtol=0, atol=1e-4)
    assert torch.equal(features, orthogonal_random_features(2, 32, 64, seed=7))
    assert not torch.allclose(features, orthogonal_random_features(2, 32, 64, seed=8))


def test_seeded_features_are_pinned(seeded_model):
    # The recipe is part of the model: changing it changes every ViTAE-S alpha.
    first, second = _features(seeded_model)
    torch.testing.assert_close(first[0, 0, :4], torch.tensor([-0.375480, -0.155125, -0.861066, -0.908298]),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(second[0, 31, -3:], torch.tensor([0.441534, 0.471728, 0.009182]),
                               rtol=0, atol=1e-6)


def test_two_constructions_give_the_same_alpha(seeded_model, checkpoint_without_features):
    torch.manual_seed(1234)  # the global random state must not matter
    second = load_weights(create_model("vitae-s"), checkpoint_without_features, "vitae-s").eval()
    for first_features, second_features in zip(_features(seeded_model), _features(second)):
        assert torch.equal(first_features, second_features)
    assert not torch.equal(*_features(seeded_model))  # each attention has its own features
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first_output, second_output = seeded_model(image), second(image)
    assert torch.equal(first_output.local_alpha, second_output.local_alpha)
    assert torch.equal(first_output.global_logits, second_output.global_logits)


def test_features_in_the_checkpoint_replace_the_seeded_ones(vitae_model, seeded_model, vitae_checkpoint):
    pinned = read_checkpoint(vitae_checkpoint)["state_dict"]
    for key, loaded, seeded in zip(PERFORMER_KEYS, _features(vitae_model), _features(seeded_model)):
        assert torch.equal(loaded, pinned[key])
        assert torch.equal(seeded, orthogonal_random_features(1, 32, 64, performer_seed(key[:-2])))
        assert not torch.allclose(seeded, pinned[key])
    # The features are used: other features, other outputs.
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert not torch.allclose(vitae_model(image).global_logits, seeded_model(image).global_logits)


@pytest.mark.parametrize("performer", [True, False])
def test_normal_cell_trains_like_its_formula(performer):
    """The cell sums its residuals in place: outputs and gradients are those of
    ``x + attn(norm1(x)) + PCM(x)``, then ``+ mlp(norm2(.))``, computed out of place."""
    torch.manual_seed(0)
    cell = NormalCell(64, 1 if performer else 2, 8, performer=performer, seed=3).train()
    tokens = torch.randn(2, 6 * 8, 64, requires_grad=True)
    output = cell(tokens, (6, 8))
    output.square().sum().backward()
    grads = [tokens.grad] + [parameter.grad for parameter in cell.parameters()]
    tokens.grad = None
    cell.zero_grad()
    x = tokens + cell.attn(cell.norm1(tokens)) + map_to_tokens(cell.PCM(tokens_to_map(tokens, (6, 8))))
    expected_output = x + cell.mlp(cell.norm2(x))
    expected_output.square().sum().backward()
    expected = [tokens.grad] + [parameter.grad for parameter in cell.parameters()]
    torch.testing.assert_close(output, expected_output, rtol=0, atol=0)
    assert sum(grad is not None for grad in grads) >= 15
    for grad, reference in zip(grads, expected):
        if reference is None:
            assert grad is None
        else:
            torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-6)


def test_registry_entry():
    assert "vitae-s" in list_models()
    spec = get_spec("ViTAE_S")
    assert spec.name == "vitae-s"
    assert spec.weights.file_name == "P3M-Net_ViTAE-S_trained_on_P3M-10k.pth"
    assert spec.optional_key("encoder.layers.0.NC.1.attn.w")
    assert not spec.optional_key("encoder.layers.1.NC.0.attn.w")


def test_save_writes_the_official_layout(vitae_model, tmp_path, fixtures_dir):
    path = save_weights(vitae_model, tmp_path / "saved.pth", "vitae-s")
    saved = read_checkpoint(path)["state_dict"]
    manifest = json.loads((fixtures_dir / "vitae_manifest.json").read_text())
    assert list(saved) == [entry["name"] for entry in manifest["tensors"]]
    for entry in manifest["tensors"]:
        assert list(saved[entry["name"]].shape) == entry["shape"], entry["name"]
        assert str(saved[entry["name"]].dtype) == entry["dtype"], entry["name"]


def test_bad_performer_features_are_refused(checkpoint_without_features, tmp_path):
    state = read_checkpoint(checkpoint_without_features)["state_dict"]
    misshapen = dict(state, **{PERFORMER_KEYS[0]: torch.zeros(1, 64, 64)})
    torch.save({"state_dict": misshapen}, tmp_path / "misshapen.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape.*attn\.w: \(1, 64, 64\)"):
        load_weights(create_model("vitae-s"), tmp_path / "misshapen.pth", "vitae-s")
    misplaced = dict(state, **{"encoder.layers.1.NC.0.attn.w": torch.zeros(1, 32, 64)})
    torch.save({"state_dict": misplaced}, tmp_path / "misplaced.pth")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(encoder\.layers\.1\.NC\.0\.attn\.w\)"):
        load_weights(create_model("vitae-s"), tmp_path / "misplaced.pth", "vitae-s")


def test_matte_command_with_vitae(vitae_checkpoint, fixtures_dir, tmp_path):
    from PIL import Image

    from p3m.cli import main

    status = main(["matte", str(fixtures_dir / "ref_small.png"), "-o", str(tmp_path), "--model", "vitae-s",
                   "--weights", str(vitae_checkpoint), "--method", "resize", "--device", "cpu",
                   "--output", "alpha", "--quiet"])
    assert status == 0
    written = np.asarray(Image.open(tmp_path / "alpha" / "ref_small.png"), np.float32) / 255
    reference = np.load(fixtures_dir / "vitae_pipeline_ref_small.npz")["RESIZE"]
    assert written.shape == reference.shape
    assert np.abs(written - reference).max() <= 1 / 255 + 1e-6
