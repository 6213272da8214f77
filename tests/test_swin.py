"""P3M-Net(Swin-T): end-to-end outputs against the official code (raw outputs, the feature contract
and other variants' checkpoints: test_models.py), the official constants, checkpoint loading and
saving, and inference at every size the pipeline makes."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import p3m
from p3m.checkpoint import CheckpointError, load_weights, read_checkpoint, save_weights
from p3m.models import create_model, get_spec, list_models
from p3m.models.swin_layers import attention_mask, relative_position_index


@pytest.fixture(scope="module")
def swin_model(swin_checkpoint):
    return load_weights(create_model("swin-t"), swin_checkpoint, "swin-t").eval()


@pytest.fixture(scope="module")
def swin_matter(swin_checkpoint):
    return p3m.Matter(model="swin-t", weights=swin_checkpoint, device="cpu")


def _assert_alpha_matches(alpha, reference):
    assert alpha.shape == reference.shape
    difference = np.abs(alpha - reference)
    assert difference.mean() <= 1e-4
    assert (difference > 0.01).mean() <= 1e-3


@pytest.mark.parametrize("method", [pytest.param("hybrid", marks=pytest.mark.slow), "resize"])
def test_small_image_takes_the_official_one_pass_path(swin_matter, fixtures_dir, method):
    # ref_small.png (487x325) has a side under 512: one pass at 512x736 for either method.
    reference = np.load(fixtures_dir / "swin_pipeline_ref_small.npz")[method.upper()]
    alpha = swin_matter.with_options(method=method).predict(fixtures_dir / "ref_small.png").alpha
    _assert_alpha_matches(alpha, reference)


def test_dataset_evaluation_runs_small_images_like_any_other(swin_checkpoint, fixtures_dir):
    from p3m.inference.pipeline import resize_method
    from p3m.io import read_image

    matter = p3m.Matter(model="swin-t", weights=swin_checkpoint, method="resize", device="cpu",
                        shorter_side_limit=None, small_image_pass=False)
    alpha = matter.predict(fixtures_dir / "ref_small.png").alpha
    expected, _ = resize_method(matter.runtime, read_image(fixtures_dir / "ref_small.png"), 1600)
    assert np.array_equal(alpha, expected)
    official_sample_path = np.load(fixtures_dir / "swin_pipeline_ref_small.npz")["RESIZE"]
    assert np.abs(alpha - official_sample_path).mean() > 0.01


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


SLOW = pytest.mark.slow  # the rest of the sweep: the default run keeps one case of each kind


@pytest.mark.parametrize("size", [pytest.param((32, 32), marks=SLOW), (32, 224), pytest.param((224, 32), marks=SLOW),
                                  pytest.param((64, 96), marks=SLOW), (96, 160), pytest.param((224, 224), marks=SLOW),
                                  pytest.param((288, 32), marks=SLOW)])
def test_network_runs_at_sizes_the_official_code_cannot(swin_model, size):
    # Last stages of 1 to 9 px, single windows, one-window-high strips, padded and unpadded maps.
    with torch.inference_mode():
        output = swin_model(torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)))
    assert output.global_logits.shape == (1, 3, *size)
    assert output.fused_alpha.shape == (1, 1, *size)
    assert torch.isfinite(output.global_logits).all()
    assert 0 <= output.fused_alpha.min() and output.fused_alpha.max() <= 1


@pytest.mark.parametrize("height, width, max_size", [
    pytest.param(1, 1, 128, marks=SLOW),  # enlarged to 64 px, then the small-image pass, capped at 128x128
    (17, 301, 96),  # small-image pass capped at 96x96: last stage 3x3
    pytest.param(515, 33, 224, marks=SLOW),  # capped at 224x224: last stage exactly one window
    pytest.param(601, 599, 160, marks=SLOW),  # both methods at 160x160 (HYBRID's global pass too): last stage 5x5
    (530, 517, 64),  # 64x64 passes: last stage 2x2
    pytest.param(700, 9, 256, marks=SLOW),  # a strip: enlarged to 64 px wide, then the small-image pass at 256x256
])
def test_matter_gives_an_alpha_at_any_image_size(swin_matter, height, width, max_size):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    alphas = {}
    for method in ("hybrid", "resize"):
        alpha = swin_matter.with_options(method=method, max_size=max_size).predict(image).alpha
        assert alpha.shape == (height, width) and alpha.dtype == np.float32
        assert 0 <= alpha.min() and alpha.max() <= 1
        alphas[method] = alpha
    # Under 512 px on a side both methods are the one small-image pass.
    assert np.array_equal(alphas["hybrid"], alphas["resize"]) == (min(height, width) < 512)


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


def test_matte_without_weights_says_none_are_published(fixtures_dir, tmp_path, capsys):
    from p3m.cli import main

    status = main(["matte", str(fixtures_dir / "ref_small.png"), "-o", str(tmp_path / "out"), "--model", "swin-t",
                   "--device", "cpu", "--quiet"])
    assert status != 0
    assert "model 'swin-t' has no published weights; pass a file with --weights" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------- ImageNet encoders

def _standard_swin_t_state() -> dict[str, torch.Tensor]:
    """A Swin-T ImageNet state dict in the Microsoft / timm layout, random values."""
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator)

    state = {"patch_embed.proj.weight": tensor(96, 3, 4, 4), "patch_embed.proj.bias": tensor(96),
             "patch_embed.norm.weight": tensor(96), "patch_embed.norm.bias": tensor(96)}
    for stage, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        dim = 96 * 2 ** stage
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.relative_position_bias_table": (169, heads),
                      "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim),
                      "attn.proj.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
                      "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
                      "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,)}
            state.update({prefix + name: tensor(*shape) for name, shape in shapes.items()})
            state[prefix + "attn.relative_position_index"] = relative_position_index(7)
        if stage < 3:
            state[f"layers.{stage}.downsample.reduction.weight"] = tensor(2 * dim, 4 * dim)
            state[f"layers.{stage}.downsample.norm.weight"] = tensor(4 * dim)
            state[f"layers.{stage}.downsample.norm.bias"] = tensor(4 * dim)
    state.update({"norm.weight": tensor(768), "norm.bias": tensor(768), "head.weight": tensor(1000, 768),
                  "head.bias": tensor(1000)})
    return state


def test_standard_imagenet_swin_t_loads_its_blocks_and_reports_the_rest(tmp_path):
    from p3m.backbone import load_backbone

    state = _standard_swin_t_state()
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": state}, path)
    model = create_model("swin-t")
    report = load_backbone(model, path)
    blocks = [key for key in state if ".blocks." in key and not key.endswith("relative_position_index")]
    assert len(blocks) == 12 * 13
    assert sorted(report.loaded) == sorted(blocks + ["patch_embed.norm.weight", "patch_embed.norm.bias",
                                                     "norm.weight", "norm.bias"])
    encoder = model.encoder.state_dict()
    for key in report.loaded:
        assert torch.equal(encoder[key], state[key]), key
    assert sorted(report.missing) == sorted(
        [f"patch_embed.proj{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")]
        + [f"layers.{stage}.downsample.linear.weight" for stage in range(3)])
    assert report.mismatched["layers.1.downsample.norm.weight"] == ((768,), (192,))
    assert len(report.mismatched) == 6 and not report.complete
    assert {"head.weight", "patch_embed.proj.weight", "layers.0.downsample.reduction.weight"} <= set(report.unexpected)
    summary = report.summary()
    assert summary.startswith(f"backbone: 160 of 175 encoder tensors loaded from {path}")
    assert "wrong shape, skipped: 6" in summary and "head.weight" in summary


def test_official_imagenet_swin_t_loads_completely(swin_checkpoint, tmp_path):
    from p3m.backbone import load_backbone

    official = read_checkpoint(swin_checkpoint)["state_dict"]
    # The official backbone file: the encoder's keys unprefixed, masks of a 224 px input, a classifier.
    state = {key[len("encoder."):]: value for key, value in official.items()
             if key.startswith("encoder.") and not key.endswith("attn_mask")}
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    state["head.weight"] = torch.zeros(1000, 768)
    path = tmp_path / "swin_pretrained_epoch_299.pth"
    torch.save(state, path)
    model = create_model("swin-t")
    report = load_backbone(model, path)
    assert report.complete and report.missing == [] and report.mismatched == {}
    assert len(report.loaded) == 175
    assert torch.equal(model.encoder.layers[2].blocks[5].attn.qkv.weight,
                       official["encoder.layers.2.blocks.5.attn.qkv.weight"])


def test_weights_list_says_no_trained_swin_t_is_published(tmp_path, monkeypatch, capsys):
    from p3m.cli import main

    monkeypatch.setenv("P3M_HOME", str(tmp_path / "home"))
    assert main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^swin-t +\(no trained P3M-Net weights are published", listed, re.M)
    assert re.search(r"^swin-t-imagenet +swin_pretrained_epoch_299\.pth +missing +"
                     r"https://drive\.google\.com/drive/folders/1sBRVgvFNtkZql1_ti_CxCgZs2O8U4RmW", listed, re.M)


# ----------------------------------------------------------------------------- training

def test_stochastic_depth_follows_the_official_rule():
    encoder = create_model("swin-t").encoder
    rates = [block.drop_path.rate for stage in encoder.layers for block in stage.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.2, 12), atol=1e-7)
    last = encoder.layers[3].blocks[1].drop_path
    residual = torch.ones(64, 5, 8)
    last.train()
    kept = last(residual)[:, 0, 0]
    assert set(kept.tolist()) == {0.0, 1.25} and 0 < (kept == 0).sum() < 64
    last.eval()
    assert torch.equal(last(residual), residual)


def test_train_runs_a_few_steps(tmp_path, capsys):
    from p3m.cli import main
    from p3m.data.synth import write_dataset

    write_dataset(tmp_path / "data", 2, seed=0, size=96)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--output", str(run), "--model", "swin-t",
                 "--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                 "--validate-every", "0", "--backbone-weights", "none", "--max-steps", "2", "--log-every", "1"]) == 0
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    model = load_weights(create_model("swin-t"), run / "last.pth", "swin-t")
    assert isinstance(model.encoder.layers[0].blocks[0].attn.relative_position_bias_table, torch.nn.Parameter)

