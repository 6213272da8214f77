"""P3M-CP (`p3m train --p3m-cp`): image-level and feature-level face copy-paste on synthetic data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from p3m.cli import main
from p3m.data.synth import write_dataset
from p3m.io import save_image
from p3m.models import create_model
from p3m.train.copy_paste import (
    CopyPaste,
    CopyPasteError,
    FaceSource,
    FeaturePaste,
    bounding_box,
    paste_face,
    paste_face_uint8,
)
from p3m.train.dataset import DatasetError, P3MTrainDataset

SMALL = ["--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--validate-every", "0",
         "--backbone-weights", "none", "--checkpoint-every", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: small training steps


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("p3m-synth")
    write_dataset(root, 4, seed=0, size=128, splits=("train",))
    return root


def _face_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A bright, textured image unlike the synthetic portraits' blurred faces."""
    return rng.integers(150, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Three face images: two with masks (an off-centre ellipse), one without (a face crop)."""
    import cv2

    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(7)
    for index, size in enumerate([(80, 60), (50, 50), (40, 70)]):
        save_image(folder / f"face{index}.png", _face_image(rng, size))
        if index < 2:
            mask = np.zeros(size, np.uint8)
            cv2.ellipse(mask, (size[1] // 2 + 5, size[0] // 2), (size[1] // 4, size[0] // 3), 0, 0, 360, 255, -1)
            save_image(folder / "facemask" / f"face{index}.png", mask)
    return folder


def _settings(faces: Path, mode: str, icp: float = 1.0, fcp: float = 1.0) -> CopyPaste:
    return CopyPaste(mode, FaceSource(faces), icp, fcp)


# ----------------------------------------------------------------------------- geometry

def test_paste_region_is_exactly_the_face_mask():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 100, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:15, 6:20] = True           # two separate faces
    mask[25:38, 30:33] = True
    mask[26, 29] = True
    source = rng.integers(156, 256, (30, 20, 3), dtype=np.uint8)
    pasted = paste_face_uint8(target, mask, source, (3, 2, 27, 18))
    changed = (pasted != target).any(axis=2)
    np.testing.assert_array_equal(changed, mask)  # every face pixel gets the (brighter) source; nothing else moves
    assert pasted[mask].min() >= 156


def test_source_face_box_is_resized_onto_each_region_box():
    source = torch.zeros(1, 20, 20)
    source[:, 5:15, 5:15] = torch.arange(10.0)[None, None, :].expand(1, 10, 10)  # a horizontal ramp 0..9
    target = torch.full((1, 30, 40), -1.0)
    mask = np.zeros((30, 40), bool)
    mask[10:20, 0:20] = True
    out = paste_face(target, mask, source, (5, 5, 15, 15))
    row = out[0, 15, 0:20]
    assert row[0] < 0.5 and row[-1] > 8.5          # the ramp spans the region's width
    assert bool((row[1:] >= row[:-1]).all())
    assert bool((out[0][~torch.from_numpy(mask)] == -1).all())


def test_face_source_reads_masks_and_face_crops(faces):
    source = FaceSource(faces)
    assert len(source) == 3 and len(source.files) == 5
    with_mask, crop = source.load(0), source.load(2)
    assert with_mask.box != (0, 0, 80, 60) and crop.box == (0, 0, 40, 70)


def test_bad_face_folders_are_one_line_errors(tmp_path, faces):
    with pytest.raises(CopyPasteError, match="no such folder"):
        FaceSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no faces here")
    with pytest.raises(CopyPasteError, match="no face image"):
        FaceSource(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CopyPasteError, match="can be read"):
        FaceSource(broken).check()
    if os.geteuid() != 0:  # root lists any folder
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        try:
            with pytest.raises(CopyPasteError, match="cannot be listed"):
                FaceSource(locked)
        finally:
            locked.chmod(0o755)


# ----------------------------------------------------------------------------- image level (dataset)

def test_icp_changes_only_the_face_region_and_keeps_the_targets(data_root, faces):
    plain = P3MTrainDataset(data_root, image_size=64, crop_sizes=[96], use_fgbg=True)
    pasted = P3MTrainDataset(data_root, image_size=64, crop_sizes=[96], use_fgbg=True,
                             copy_paste=_settings(faces, "icp"))
    faced = 0
    for index in range(len(plain)):
        key = (index, (0, 0, index))
        a, b = plain[key], pasted[key]
        mask = b["face_mask"][0] == 255
        assert set(torch.unique(b["face_mask"]).tolist()) <= {0, 255}
        for name in ("alpha", "trimap", "bg"):
            assert torch.equal(a[name], b[name]), name
        for name in ("image", "fg"):
            assert torch.equal(a[name][:, ~mask], b[name][:, ~mask]), name
            if mask.any():
                assert (a[name][:, mask] != b[name][:, mask]).any(dim=0).float().mean() > 0.9, name
        faced += bool(mask.any())
    assert faced >= 2


def test_icp_probability_zero_pastes_nothing(data_root, faces):
    plain = P3MTrainDataset(data_root, image_size=64, crop_sizes=[96])
    never = P3MTrainDataset(data_root, image_size=64, crop_sizes=[96], copy_paste=_settings(faces, "icp", icp=0.0))
    assert torch.equal(plain[(0, (1, 2, 3))]["image"], never[(0, (1, 2, 3))]["image"])


def test_unreadable_faces_are_reported_and_skipped(data_root, tmp_path, caplog):
    folder = tmp_path / "faces"
    save_image(folder / "good.png", _face_image(np.random.default_rng(1), (30, 30)))
    save_image(folder / "blank.png", _face_image(np.random.default_rng(2), (30, 30)))
    save_image(folder / "facemask" / "blank.png", np.zeros((30, 30), np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    dataset = P3MTrainDataset(data_root, image_size=64, crop_sizes=[96], copy_paste=_settings(folder, "icp"))
    with caplog.at_level("WARNING", logger="p3m.train.dataset"):
        for index in range(len(dataset)):
            dataset[(index, (0, 0, index))]
        for _ in range(6):
            dataset._draw_face(np.random.default_rng(_))
    assert "empty face mask" in caplog.text and "broken.jpg" in caplog.text
    (folder / "good.png").unlink()
    with pytest.raises(DatasetError, match="face image.s. in a row cannot be read"):
        dataset._draw_face(np.random.default_rng(0))


def test_dataset_without_face_masks_is_refused(tmp_path, faces):
    write_dataset(tmp_path, 2, seed=1, size=96, splits=("train",))
    for path in (tmp_path / "train" / "facemask").iterdir():
        path.unlink()
    (tmp_path / "train" / "facemask").rmdir()
    with pytest.raises(DatasetError, match="facemask: missing; P3M-CP"):
        P3MTrainDataset(tmp_path, image_size=64, copy_paste=_settings(faces, "both"))


def test_fcp_sample_carries_the_source_face(data_root, faces):
    dataset = P3MTrainDataset(data_root, image_size=64, crop_sizes=[96], copy_paste=_settings(faces, "fcp"))
    sample = dataset[(1, (0, 0, 1))]
    assert sample["cp_source"].shape == (3, 64, 64) and sample["cp_source"].dtype == torch.uint8
    top, left, bottom, right = sample["cp_box"].tolist()
    assert 0 <= top < bottom <= 64 and 0 <= left < right <= 64
    assert bool(sample["cp_fcp"]) == bool((sample["face_mask"] == 255).any())


# ----------------------------------------------------------------------------- feature level (model hook)

@pytest.mark.parametrize("model_name", ["resnet34", "vitae-s", "swin-t"])
def test_fcp_changes_features_only_inside_the_downsampled_mask(model_name):
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    image, source = torch.randn(2, 3, 64, 64), torch.randn(1, 3, 64, 64) * 3
    mask = np.zeros((64, 64), bool)
    mask[0:32, 32:64] = True  # on the 32-px grid: a quadrant at every level, down to 1/32
    paste = FeaturePaste([1], source, [(0, 0, 64, 64)], [mask])
    with torch.no_grad():
        features = model.encoder(image)
        pasted = paste(model.encoder, features)
    for name, before, after in [("stem", features.stem, pasted.stem), ("deepest", features.deepest, pasted.deepest),
                                *((f"skip{i}", b, a) for i, (b, a) in enumerate(zip(features.skips, pasted.skips)))]:
        assert torch.equal(before[0], after[0]), name  # the other sample is untouched
        h, w = before.shape[-2:]
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[:h // 2, w // 2:] = True
        diff = (before[1] != after[1]).any(dim=0)
        assert not diff[~inside].any(), name
        assert diff[inside].float().mean() > 0.9, name
    assert pasted.indices is features.indices


def test_fcp_runs_and_backpropagates_under_bf16_autocast():
    torch.manual_seed(0)
    model = create_model("resnet34").train()
    mask = np.zeros((64, 64), bool)
    mask[5:40, 10:50] = True
    paste = FeaturePaste([0], torch.randn(1, 3, 64, 64), [(4, 4, 60, 60)], [mask])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(2, 3, 64, 64), feature_paste=paste)
    output.global_logits.float().sum().backward()
    assert torch.isfinite(model.encoder.conv1.weight.grad).all()


def test_model_output_without_paste_is_unchanged():
    torch.manual_seed(0)
    model = create_model("resnet34").eval()
    image = torch.randn(1, 3, 64, 64)
    identity = lambda encoder, features: features  # noqa: E731
    with torch.no_grad():
        plain, hooked = model(image), model(image, feature_paste=identity)
    assert torch.equal(plain.fused_alpha, hooked.fused_alpha)


# ----------------------------------------------------------------------------- p3m train

@pytest.mark.parametrize("model_name", ["resnet34", pytest.param("swin-t", marks=pytest.mark.slow)])
def test_train_with_p3m_cp_both_runs_and_records_it(data_root, faces, tmp_path, monkeypatch, model_name):
    pasted_rows = []
    call = FeaturePaste.__call__

    def counting(self, encoder, features):
        pasted_rows.append(len(self.rows))
        return call(self, encoder, features)

    monkeypatch.setattr(FeaturePaste, "__call__", counting)
    run = tmp_path / "cp"
    code = main(["train", "--data", str(data_root), "--output", str(run), *SMALL, "--model", model_name,
                 "--max-steps", "3",
                 "--p3m-cp", "both", "--cp-faces", str(faces), "--cp-prob-icp", "1", "--cp-prob-fcp", "1",
                 "--log-every", "1"])
    assert code == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(row["loss"]) for row in rows)
    assert sum(pasted_rows) >= 3  # the feature-level paste ran inside the model's forward
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["p3m_cp"], config["cp_faces"], config["cp_prob_icp"], config["cp_prob_fcp"]) == \
        ("both", str(faces), 1.0, 1.0)
    names = {row["name"] for row in json.loads((run / "provenance.json").read_text())["manifest"]}
    assert any(name.startswith("train/facemask/") for name in names)
    assert str((faces / "face2.png").as_posix()) in names
    assert "P3M-CP both: 3 face image(s)" in (run / "train.log").read_text()


@pytest.mark.parametrize("args, message", [
    (["--p3m-cp", "icp"], "needs a folder of public face images"),
    (["--p3m-cp", "fcp", "--cp-faces", "/nonexistent/faces"], "no such folder of face images"),
    (["--p3m-cp", "both", "--cp-faces", "FACES", "--cp-prob-fcp", "1.5"], "cp_prob_fcp: must be a probability"),
])
def test_bad_p3m_cp_options_are_one_line_errors(data_root, faces, tmp_path, capsys, args, message):
    args = [str(faces) if arg == "FACES" else arg for arg in args]
    run = tmp_path / "r"
    assert main(["train", "--data", str(data_root), "--output", str(run), *SMALL, "--max-steps", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_p3m_cp_without_dataset_face_masks_is_a_one_line_error(faces, tmp_path, capsys):
    write_dataset(tmp_path / "d", 2, seed=1, size=96, splits=("train",))
    for path in (tmp_path / "d" / "train" / "facemask").iterdir():
        path.unlink()
    run = tmp_path / "r"
    assert main(["train", "--data", str(tmp_path / "d"), "--output", str(run), *SMALL, "--max-steps", "1",
                 "--p3m-cp", "icp", "--cp-faces", str(faces)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no face mask of a training image in it" in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_bounding_box_of_empty_mask_is_none():
    assert bounding_box(np.zeros((4, 4), bool)) is None
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    assert bounding_box(mask) == (1, 2, 3, 4)
