"""P3M-Net: every registered variant's raw outputs against the official code, its encoder's feature
contract and its checkpoints told from the other variants'; ResNet-34 loading and saving checkpoints."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from p3m.checkpoint import CheckpointError, load_weights, read_checkpoint, save_weights
from p3m.models import EncoderFeatures, create_model, fuse, get_spec, list_models

RAW_OUTPUTS = ("global", "local", "side2", "side1", "side0")
# variant -> the fixture of its deterministic official-format checkpoint
CHECKPOINT_FIXTURES = {"resnet34": "r34_checkpoint", "swin-t": "swin_checkpoint", "vitae-s": "vitae_checkpoint"}
# variant -> the official code's raw outputs for that checkpoint, under tests/fixtures
OFFICIAL_FORWARD = {
    "resnet34": "r34_forward_96x128.npz", "swin-t": "swin_forward_256x352.npz", "vitae-s": "vitae_forward_96x128.npz",
}
# variant -> encoder channels of (stem, the four skips, deepest)
FEATURE_CHANNELS = {
    "resnet34": (64, (64, 64, 128, 256), 512),
    "swin-t": (48, (96, 96, 192, 384), 768),
    "vitae-s": (32, (64, 64, 128, 256), 512),
}


@pytest.fixture(scope="module")
def r34_model(r34_checkpoint):
    return load_weights(create_model("resnet34"), r34_checkpoint, "resnet34").eval()


def _named(output):
    return {"global": output.global_logits, "local": output.local_alpha, "fusion": output.fused_alpha,
            "side2": output.side_logits[0], "side1": output.side_logits[1], "side0": output.side_logits[2]}


@pytest.mark.parametrize("name", list_models())
def test_raw_outputs_match_official(name, request, fixtures_dir):
    model = load_weights(create_model(name), request.getfixturevalue(CHECKPOINT_FIXTURES[name]), name).eval()
    reference = np.load(fixtures_dir / OFFICIAL_FORWARD[name])
    with torch.inference_mode():
        outputs = _named(model(torch.from_numpy(reference["input"])))
    for output in RAW_OUTPUTS:
        assert outputs[output].shape == reference[output].shape, output
        np.testing.assert_allclose(outputs[output].numpy(), reference[output], rtol=1e-4, atol=1e-4, err_msg=output)
    fusion_off = np.abs(outputs["fusion"].numpy() - reference["fusion"]) > 1e-3
    assert fusion_off.mean() <= 1e-3


@pytest.mark.parametrize("name", list_models())
def test_encoder_honours_the_feature_contract(name):
    stem_channels, skip_channels, deepest_channels = FEATURE_CHANNELS[name]
    with torch.inference_mode():
        features = create_model(name).eval().encoder(torch.randn(2, 3, 64, 96))
    assert isinstance(features, EncoderFeatures)
    assert features.stem.shape == (2, stem_channels, 32, 48)
    assert [tuple(skip.shape) for skip in features.skips] == [
        (2, channels, 64 // 2 ** level, 96 // 2 ** level) for level, channels in enumerate(skip_channels, 1)]
    assert features.deepest.shape == (2, deepest_channels, 2, 3)
    levels = [features.stem, *features.skips, features.deepest]
    for index, level in zip(features.indices, levels[1:]):
        assert index.shape[-2:] == level.shape[-2:]


def test_output_shapes_and_ranges(r34_model):
    with torch.inference_mode():
        output = r34_model(torch.randn(2, 3, 64, 96))
    assert output.global_logits.shape == (2, 3, 64, 96)
    assert output.local_alpha.shape == output.fused_alpha.shape == (2, 1, 64, 96)
    assert all(side.shape == (2, 3, 64, 96) for side in output.side_logits)
    assert 0 <= output.local_alpha.min() and output.local_alpha.max() <= 1


def test_input_not_multiple_of_32_is_refused(r34_model):
    with pytest.raises(ValueError, match="multiples of 32"):
        r34_model(torch.zeros(1, 3, 100, 96))


def test_fusion_takes_local_alpha_only_in_transition():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]]).T.reshape(1, 3, 1, 3)
    local = torch.full((1, 1, 1, 3), 0.25)
    assert fuse(logits, local).flatten().tolist() == [0.0, 0.25, 1.0]


def test_registry_names():
    assert "resnet34" in list_models()
    assert get_spec("ResNet34").name == "resnet34"
    with pytest.raises(KeyError, match="unknown model"):
        get_spec("resnet50")


def test_save_writes_the_official_layout(r34_model, tmp_path, fixtures_dir):
    import json

    path = save_weights(r34_model, tmp_path / "saved.pth", "resnet34")
    saved = read_checkpoint(path)["state_dict"]
    manifest = json.loads((fixtures_dir / "r34_manifest.json").read_text())
    assert set(saved) == {entry["name"] for entry in manifest["tensors"]}
    for entry in manifest["tensors"]:
        assert list(saved[entry["name"]].shape) == entry["shape"]
    # Aliased encoder keys hold the same values, as in official files.
    assert torch.equal(saved["encoder0.0.weight"], saved["resnet.conv1.weight"])
    assert torch.equal(saved["encoder1.0.2.conv2.weight"], saved["resnet.layer1.2.conv2.weight"])


def test_save_load_round_trip(r34_model, tmp_path):
    path = save_weights(r34_model, tmp_path / "round.pth", "resnet34")
    reloaded = load_weights(create_model("resnet34"), path, "resnet34").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(r34_model(x).fused_alpha, reloaded(x).fused_alpha)


def test_bare_and_module_prefixed_state_dicts_load(r34_checkpoint, tmp_path, r34_model):
    state = read_checkpoint(r34_checkpoint)["state_dict"]
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pth")
    x = torch.randn(1, 3, 64, 64)
    for name in ("bare.pth", "ddp.pth"):
        model = load_weights(create_model("resnet34"), tmp_path / name, "resnet34").eval()
        with torch.inference_mode():
            assert torch.equal(model(x).local_alpha, r34_model(x).local_alpha)


def test_truncated_checkpoint_gives_one_clear_error(r34_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(r34_checkpoint.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable PyTorch checkpoint"):
        load_weights(create_model("resnet34"), truncated, "resnet34")


def test_missing_file_and_non_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_weights(create_model("resnet34"), tmp_path / "absent.pth", "resnet34")
    for name, content in [("junk.pth", b"not a checkpoint"), ("tiny.pth", b"\x80\x02"), ("empty.pth", b"")]:
        junk = tmp_path / name
        junk.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name}: not a readable PyTorch checkpoint"):
            load_weights(create_model("resnet34"), junk, "resnet34")


def test_wrong_keys_name_the_file_and_examples(r34_checkpoint, tmp_path):
    state = read_checkpoint(r34_checkpoint)["state_dict"]
    del state["decoder_final_l.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError) as error:
        load_weights(create_model("resnet34"), tmp_path / "edited.pth", "resnet34")
    message = str(error.value)
    assert "edited.pth" in message and "1 missing keys (decoder_final_l.weight)" in message
    assert "1 unexpected keys (extra.weight)" in message and "\n" not in message


def test_wrong_shape_is_reported(r34_checkpoint, tmp_path):
    state = read_checkpoint(r34_checkpoint)["state_dict"]
    state["decoder_final_l.weight"] = torch.zeros(1, 32, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape.*decoder_final_l.weight: \(1, 32, 3, 3\)"):
        load_weights(create_model("resnet34"), tmp_path / "shape.pth", "resnet34")


@pytest.mark.parametrize(("name", "other"), list(itertools.permutations(list_models(), 2)))
def test_another_variants_checkpoint_is_named(name, other, request):
    checkpoint = request.getfixturevalue(CHECKPOINT_FIXTURES[other])
    with pytest.raises(CheckpointError, match=f"not a '{name}' checkpoint.*looks like a '{other}' checkpoint"):
        load_weights(create_model(name), checkpoint, name)


def test_other_variant_checkpoint_is_named(tmp_path):
    torch.save({"state_dict": {"encoder.layers.0.RC.proj1.weight": torch.zeros(32, 3, 3, 3)}}, tmp_path / "v.pth")
    with pytest.raises(CheckpointError, match="not a 'resnet34' checkpoint"):
        load_weights(create_model("resnet34"), tmp_path / "v.pth", "resnet34")


def test_single_branch_passes_equal_the_full_pass(r34_model):
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        full = r34_model(x)
        global_only = r34_model(x, need_local=False)
        local_only = r34_model(x, need_global=False)
    assert torch.equal(global_only.global_logits, full.global_logits)
    assert global_only.local_alpha is None and global_only.fused_alpha is None
    assert torch.equal(local_only.local_alpha, full.local_alpha)
    assert local_only.global_logits is None and local_only.side_logits is None


def test_inference_stem_in_bands_equals_the_whole_map(r34_model, monkeypatch):
    """Eval mode pools conv1's full-resolution map band by band; training mode pools it whole."""
    from p3m.models import resnet

    encoder = r34_model.encoder
    x = torch.randn(1, 3, 160, 96)
    with torch.inference_mode():
        whole = resnet.F.relu(encoder.bn1(encoder.conv1(x.contiguous(memory_format=torch.channels_last))))
        pooled, indices = resnet._pool(whole)
        stem = resnet.F.max_pool2d(whole, kernel_size=2, stride=2)
        for rows in (3, 16, 80):  # bands of one odd size, several, and one band for everything
            monkeypatch.setattr(resnet, "STEM_BAND_ROWS", rows)
            banded = encoder._pooled_stem_in_bands(x)
            torch.testing.assert_close(banded[0], pooled, rtol=0, atol=1e-6)
            assert torch.equal(banded[1], indices)
            torch.testing.assert_close(banded[2], stem, rtol=0, atol=1e-6)


@pytest.mark.parametrize("folded", [True, False], ids=["bn1-folded", "bn1-kept"])
def test_inference_stem_in_bands_indexes_windows_without_a_positive_value_as_training_does(folded, monkeypatch):
    """Windows whose conv1-bn1 maximum is <= 0 (all zeros after ReLU) index their first in-bounds pixel in
    both modes (pooling before the ReLU would index the raw maximum). Integer weights and inputs make conv1
    exact, so values and indices must be exactly equal; about half the windows are all-negative, some
    peak at exactly 0, and a constant block makes ties."""
    from p3m.models import resnet

    torch.manual_seed(0)
    encoder = resnet.ResNet34MaxPoolEncoder().eval()
    with torch.no_grad():
        encoder.conv1.weight.copy_(torch.randint(-1, 2, encoder.conv1.weight.shape))
        if folded:
            encoder.conv1.bias = torch.nn.Parameter(torch.full((64,), -8.0))
            encoder.bn1 = torch.nn.Identity()
        else:
            encoder.bn1.running_mean.fill_(8.0)
    x = torch.randint(0, 3, (1, 3, 70, 54)).float()
    x[:, :, 20:40] = 1.0
    with torch.inference_mode():
        raw = encoder.bn1(encoder.conv1(x.contiguous(memory_format=torch.channels_last)))
        whole = resnet.F.relu(raw)
        pooled, indices = resnet._pool(whole)
        stem = resnet.F.max_pool2d(whole, kernel_size=2, stride=2)
        assert (resnet.F.max_pool2d(raw, kernel_size=3, stride=2, padding=1) <= 0).float().mean() > 0.4
        for rows in (3, 16, 35):
            monkeypatch.setattr(resnet, "STEM_BAND_ROWS", rows)
            banded = encoder._pooled_stem_in_bands(x)
            assert torch.equal(banded[0], pooled)
            assert torch.equal(banded[1], indices)
            assert torch.equal(banded[2], stem)


def test_inference_in_bands_keeps_the_raw_outputs(r34_model, fixtures_dir, monkeypatch):
    from p3m.models import decoder

    image = torch.from_numpy(np.load(fixtures_dir / "r34_forward_96x128.npz")["input"])
    with torch.inference_mode():
        whole = r34_model(image)
        monkeypatch.setattr(decoder, "BANDED_MIN_PIXELS", 0)
        monkeypatch.setattr(decoder, "LEVEL0_BAND_ROWS", 7)
        banded = r34_model(image)
    torch.testing.assert_close(banded.local_alpha, whole.local_alpha, rtol=0, atol=1e-6)
    assert torch.equal(banded.global_logits, whole.global_logits)


def _pooled_with_ties(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3/2 max-pool of a random map with a constant block, where overlapping windows
    pick the same pixels; channels-last pooled values and int32 indices, as at inference."""
    torch.manual_seed(seed)
    full = torch.randn(shape)
    full[:, :, shape[2] // 4:shape[2] // 2] = 0.5
    pooled, indices = torch.nn.functional.max_pool2d(full.contiguous(memory_format=torch.channels_last),
                                                     kernel_size=3, stride=2, padding=1, return_indices=True)
    return pooled, indices.int()


def test_unpooled_and_upsampled_crops_equal_windows_of_the_whole_map():
    from p3m.models.decoder import unpool, unpool_crop, upsample, upsample_crop

    pooled, indices = _pooled_with_ties(0, (2, 8, 38, 22))
    whole = unpool(pooled, indices)
    padded = torch.nn.functional.pad(whole, (1, 1, 1, 1))  # zero places outside the map
    row_windows = ((-1, 5), (0, 38), (7, 8), (13, 30), (33, 39))
    column_windows = ((0, 22), (-1, 23), (-1, 3), (5, 6), (9, 17), (18, 23))
    for first, last in row_windows:
        for left, right in column_windows:
            expected = padded[:, :, first + 1:last + 1, left + 1:right + 1]
            got = unpool_crop(pooled, indices, (first, last), (left, right))
            assert torch.equal(got, expected), (first, last, left, right)
            # the same from only the pooled pixels that reach the window, as the decoder passes them
            top, left_pooled = max(0, (first - 1) // 2), max(0, (left - 1) // 2)
            part = (slice(None), slice(None), slice(top, min(19, last // 2 + 1)),
                    slice(left_pooled, min(11, right // 2 + 1)))
            got = unpool_crop(pooled[part], indices[part], (first, last), (left, right),
                              offset=(top, left_pooled), plane_width=22)
            assert torch.equal(got, expected), (first, last, left, right)
    upsampled = upsample(pooled, 2)
    for first, last in ((0, 38), (0, 1), (5, 6), (12, 29), (37, 38)):
        for left, right in ((0, 22), (0, 1), (3, 4), (9, 17), (21, 22)):
            assert torch.equal(upsample_crop(pooled, (first, last), (left, right)),
                               upsampled[:, :, first:last, left:right]), (first, last, left, right)


@pytest.mark.parametrize(("band_rows", "final_rows"), [(1, 64), (3, 64), (16, 5), (500, 64), (500, 7)])
def test_matting_decoder_level0_in_bands_equals_the_whole_maps(band_rows, final_rows, monkeypatch):
    """At inference the matting decoder runs from level 1 to the logits in bands of level-0 rows
    (the last unpooling in sub-bands of full-resolution rows); ties between pooling windows must
    resolve as in the whole maps."""
    from p3m.models import decoder as decoder_module
    from p3m.models.decoder import unpool, upsample

    monkeypatch.setattr(decoder_module, "FINAL_BAND_ROWS", final_rows)

    decoder = create_model("resnet34").eval().decoder
    coarse, coarse_indices = _pooled_with_ties(1, (1, 64, 38, 22))
    _, indices = _pooled_with_ties(2, (1, 64, 76, 44))
    semantic, skip, stem = (torch.randn(1, 64, *size).contiguous(memory_format=torch.channels_last)
                            for size in ((19, 11), (38, 22), (38, 22)))
    with torch.inference_mode():
        merged = decoder.tfi_0(upsample(semantic, 2), unpool(coarse, coarse_indices), skip)
        matting = decoder.decoder0_l(decoder.sbfi_0(merged, stem))
        whole = decoder.decoder_final_l(unpool(matting, indices))
        banded = decoder._level0_in_bands(semantic, coarse, coarse_indices, skip, stem, indices, band_rows)
    assert banded.shape == whole.shape == (1, 1, 76, 44)
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tile", [1, 3, 8, 64])
def test_matting_decoder_computes_the_tiles_of_the_region_as_the_whole_maps(tile, monkeypatch):
    """With a region, only the tiles holding region pixels are computed: there the logits equal
    the whole maps' (tiles in the middle, at every edge, alone and in runs); elsewhere they are 0."""
    from p3m.models import decoder as decoder_module
    from p3m.models.decoder import unpool, upsample

    monkeypatch.setattr(decoder_module, "REGION_TILE", tile)
    monkeypatch.setattr(decoder_module, "FINAL_BAND_ROWS", 5)
    decoder = create_model("resnet34").eval().decoder
    coarse, coarse_indices = _pooled_with_ties(3, (1, 64, 38, 22))
    _, indices = _pooled_with_ties(4, (1, 64, 76, 44))
    semantic, skip, stem = (torch.randn(1, 64, *size).contiguous(memory_format=torch.channels_last)
                            for size in ((19, 11), (38, 22), (38, 22)))
    region = torch.zeros(76, 44, dtype=torch.bool)
    region[0, 0] = region[75, 43] = region[40, 21] = True  # corners and the middle
    region[30:34, 3:41] = True  # a run across the width
    region[10:60, 30] = True  # a column through several bands
    with torch.inference_mode():
        merged = decoder.tfi_0(upsample(semantic, 2), unpool(coarse, coarse_indices), skip)
        whole = decoder.decoder_final_l(unpool(decoder.decoder0_l(decoder.sbfi_0(merged, stem)), indices))
        got = decoder._level0_in_bands(semantic, coarse, coarse_indices, skip, stem, indices, tile, region)
    torch.testing.assert_close(got[0, 0][region], whole[0, 0][region], rtol=0, atol=1e-5)
    computed = got[0, 0] != 0
    if tile >= 38:  # one tile: everything is computed
        torch.testing.assert_close(got, whole, rtol=0, atol=1e-5)
    else:  # far from the region nothing is
        assert computed.float().mean() < 0.8
        assert not computed[64:70, 0:16].any()


@pytest.mark.parametrize("name", list_models())
def test_banded_inference_keeps_every_map_on_the_input_device(name):
    """At a size where the stem and the decoder's last stages run in bands, every map they allocate
    is on the input's device: the meta device stands in for a GPU here (a map made on the CPU could
    not be mixed with it)."""
    network = create_model(name).eval().to("meta")
    with torch.inference_mode():
        output = network(torch.empty(1, 3, 1056, 1600, device="meta"))
    for result in (output.global_logits, output.local_alpha, output.fused_alpha):
        assert result.device.type == "meta" and result.shape[-2:] == (1056, 1600)
