"""P3M-10k layout, trimap generation, synthetic data and `p3m dataset`."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from p3m.cli import main
from p3m.data import layout
from p3m.data.synth import make_sample, parse_size, write_dataset
from p3m.data.trimap import TRAIN_KERNEL_SIZES, random_kernel_size, trimap_from_alpha
from p3m.io import read_image, read_mask

SIZE = 160


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "P3M-10k"
    write_dataset(root, count=2, seed=3, size=SIZE)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_folder_names():
    assert {name: (s.path, s.folders) for name, s in layout.SPLITS.items()} == {
        "train": ("train", {"image": "blurred_image", "alpha": "mask", "fg": "fg", "bg": "bg",
                            "face_mask": "facemask"}),
        "P3M-500-P": ("validation/P3M-500-P", {"image": "blurred_image", "alpha": "mask", "trimap": "trimap",
                                               "face_mask": "facemask"}),
        "P3M-500-NP": ("validation/P3M-500-NP", {"image": "original_image", "alpha": "mask", "trimap": "trimap"}),
    }
    assert layout.SPLITS["train"].required == ("image", "alpha")
    assert layout.get_split("P3M-500-P").folder("/data", "trimap") == Path("/data/validation/P3M-500-P/trimap")
    with pytest.raises(KeyError, match="no trimap folder"):
        layout.get_split("train").folder("/data", "trimap")
    with pytest.raises(ValueError, match="unknown split"):
        layout.get_split("P3M-500")


def test_index_folder_pairs_by_stem_and_flags_duplicates(tmp_path):
    for name in ("a.png", "b.JPG", "b.png", "c.tif", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    found = layout.index_folder(tmp_path)
    assert found.files == {"a": tmp_path / "a.png", "c": tmp_path / "c.tif"}
    assert found.duplicates == {"b": [tmp_path / "b.JPG", tmp_path / "b.png"]}


# --- trimaps ---------------------------------------------------------------------------------

def official_trimap(alpha, kernel_size):
    """The official rule read literally: float maps, dilation of alpha != 0, erosion of alpha == 255."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    dilated = cv2.dilate((alpha != 0).astype(np.float32), kernel, iterations=1)
    eroded = cv2.erode((alpha == 255).astype(np.float32), kernel, iterations=1)
    return (eroded * 255 + (dilated - eroded) * 128).astype(np.uint8)


@pytest.mark.parametrize("kernel_size", [1, 15, 16, 30])
def test_trimap_matches_official_rule(kernel_size):
    alpha = make_sample(np.random.default_rng(0), SIZE).alpha
    trimap = trimap_from_alpha(alpha, kernel_size)
    np.testing.assert_array_equal(trimap, official_trimap(alpha, kernel_size))
    assert set(np.unique(trimap)) <= {0, 128, 255}
    assert np.all(trimap[alpha == 0 ] != 255) and np.all(trimap[(alpha > 0) & (alpha < 255)] == 128)


def test_trimap_band_grows_with_kernel():
    alpha = make_sample(np.random.default_rng(1), SIZE).alpha
    unknown = [np.count_nonzero(trimap_from_alpha(alpha, k) == 128) for k in (5, 15, 30)]
    assert unknown[0] < unknown[1] < unknown[2]


def test_random_kernel_size_covers_official_range():
    rng = np.random.default_rng(0)
    sizes = {random_kernel_size(rng) for _ in range(2000)}
    assert sizes == set(range(TRAIN_KERNEL_SIZES[0], TRAIN_KERNEL_SIZES[1] + 1))


@pytest.mark.parametrize("alpha, kernel, message", [
    (np.zeros((4, 4, 3), np.uint8), 5, "expected an"),
    (np.zeros((4, 4), np.float32), 5, "uint8"),
    (np.zeros((4, 4), np.uint8), 0, "at least 1"),
])
def test_trimap_bad_input(alpha, kernel, message):
    with pytest.raises(ValueError, match=message):
        trimap_from_alpha(alpha, kernel)


# --- synthetic data --------------------------------------------------------------------------

def test_synth_writes_the_p3m_layout(synth_root):
    for name, split in layout.SPLITS.items():
        for role in split.folders:
            found = layout.index_folder(split.folder(synth_root, role))
            assert len(found.files) == 2 and not found.duplicates, (name, role)
    stems = layout.index_folder(layout.SPLITS["P3M-500-P"].folder(synth_root, "image")).files
    assert all(path.suffix == ".jpg" for path in stems.values())


def test_synth_sample_content(synth_root):
    split = layout.SPLITS["P3M-500-P"]
    for stem, image_path in layout.index_folder(split.folder(synth_root, "image")).files.items():
        image = read_image(image_path)
        alpha = read_mask(split.folder(synth_root, "alpha") / f"{stem}.png")
        trimap = read_mask(split.folder(synth_root, "trimap") / f"{stem}.png")
        face = read_mask(split.folder(synth_root, "face_mask") / f"{stem}.png")
        assert image.shape[:2] == alpha.shape == trimap.shape == face.shape
        assert max(alpha.shape) == SIZE and 0.6 <= alpha.shape[1] / alpha.shape[0] <= 0.86
        soft = np.count_nonzero((alpha > 0) & (alpha < 255)) / alpha.size
        assert 0.01 < soft < 0.2, soft  # a real transition band, not a binary mask
        assert np.count_nonzero(alpha == 255) > 0.1 * alpha.size and np.count_nonzero(alpha == 0) > 0.1 * alpha.size
        assert set(np.unique(trimap)) == {0, 128, 255}
        assert set(np.unique(face)) == {0, 255}
        assert np.all(alpha[face == 255] == 255)  # the face lies inside the person


def test_synth_blurs_only_the_face():
    sample = make_sample(np.random.default_rng(7), SIZE)
    outside = sample.face_mask == 0
    np.testing.assert_array_equal(sample.blurred[outside], sample.image[outside])
    inside = ~outside
    assert np.abs(sample.blurred[inside].astype(int) - sample.image[inside]).mean() > 1.0


def test_synth_is_deterministic(tmp_path, synth_root):
    again = tmp_path / "again"
    write_dataset(again, count=2, seed=3, size=SIZE)
    assert tree_digest(again) == tree_digest(synth_root)
    other = tmp_path / "other"
    write_dataset(other, count=2, seed=4, size=SIZE, splits=("P3M-500-NP",))
    digest = tree_digest(other)
    assert digest and all(digest[name] != tree_digest(synth_root)[name] for name in digest)


def test_synth_exact_size():
    sample = make_sample(np.random.default_rng(0), (200, 120))
    assert sample.alpha.shape == (120, 200) and sample.image.shape == (120, 200, 3)


@pytest.mark.parametrize("text, expected", [("384", 384), ("320x480", (320, 480)), (" 96X128 ", (96, 128))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "10", "64x", "100x20"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size must be"):
        parse_size(text)


def test_synth_cli_refuses_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["dataset", "synth", str(tmp_path), "--count", "1"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_synth_cli_writes_a_tree_that_checks_clean(tmp_path, capsys):
    root = tmp_path / "ds"
    assert main(["dataset", "synth", str(root), "--count", "1", "--seed", "5", "--size", "96x128"]) == 0
    assert read_mask(root / "validation/P3M-500-NP/mask/np_00000.png").shape == (128, 96)
    assert main(["dataset", "check", str(root)]) == 0
    assert "no problems found" in capsys.readouterr().out
    only = tmp_path / "only"
    assert main(["dataset", "synth", str(only), "--count", "2", "--split", "P3M-500-NP"]) == 0
    assert sorted(p.name for p in only.rglob("*") if p.is_file()) == sorted(
        f"np_0000{i}{suffix}" for i in range(2) for suffix in (".jpg", ".png", ".png"))
    assert main(["dataset", "check", str(only), "--split", "P3M-500-NP"]) == 0


# --- dataset check ---------------------------------------------------------------------------

def test_check_good_tree(synth_root, capsys):
    assert main(["dataset", "check", str(synth_root)]) == 0
    captured = capsys.readouterr()
    assert "validation/P3M-500-P/facemask" in captured.out and captured.err == ""
    rows = [line.split() for line in captured.out.splitlines() if line.startswith(("train", "P3M"))]
    assert len(rows) == 12 and all(row[-1] == "2" for row in rows)


def test_check_broken_tree(synth_root, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(synth_root, root)
    p = root / "validation/P3M-500-P"
    (p / "mask/p_00001.png").unlink()                                       # unpaired image
    (p / "blurred_image/p_00000.jpg").write_bytes(b"not a jpeg")            # unreadable
    trimap = read_mask(p / "trimap/p_00001.png").copy()
    trimap[0, 0] = 37
    Image.fromarray(trimap).save(p / "trimap/p_00001.png")                  # bad trimap value
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(p / "facemask/p_00000.png")  # size mismatch (and 00000's image is unreadable)
    face = read_mask(p / "facemask/p_00001.png")
    Image.fromarray(face[:-1]).save(p / "facemask/p_00001.png")             # size mismatch
    shutil.copy(root / "train/mask/p_00000.png", root / "train/mask/p_00000.bmp")  # duplicate stem
    shutil.rmtree(root / "validation/P3M-500-NP/trimap")                    # missing required folder
    shutil.rmtree(root / "train/fg")                                        # optional folder: fine
    before = tree_digest(root)

    assert main(["dataset", "check", str(root)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    def lines_about(path):
        return [line for line in errors if f"{path}:" in line]
    assert any("no matching file" in line for line in lines_about(p / "blurred_image/p_00001.jpg"))
    assert any("cannot read" in line or "not an image" in line for line in lines_about(p / "blurred_image/p_00000.jpg"))
    assert any("other than 0, 128, 255 (37)" in line for line in lines_about(p / "trimap/p_00001.png"))
    face_lines = lines_about(p / "facemask/p_00001.png")
    assert any("size" in line and "differs" in line for line in face_lines)
    assert any("several files share this name" in line for line in lines_about(root / "train/mask/p_00000"))
    assert any("missing" in line for line in lines_about(root / "validation/P3M-500-NP/trimap"))
    assert not any("train/fg" in line for line in errors)
    assert all(line.startswith("p3m dataset check: ") for line in errors)
    assert f"{len(errors)} problem(s)" in captured.out
    assert tree_digest(root) == before  # checking never writes


def test_check_single_split_and_missing_root(synth_root, tmp_path, capsys):
    assert main(["dataset", "check", str(synth_root), "--split", "P3M-500-NP"]) == 0
    out = capsys.readouterr().out
    assert "P3M-500-NP" in out and "train/" not in out
    assert main(["dataset", "check", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


# --- dataset trimaps -------------------------------------------------------------------------

def test_trimaps_cli(synth_root, tmp_path, capsys):
    masks = synth_root / "train/mask"
    before = tree_digest(synth_root)
    out = tmp_path / "trimaps"
    assert main(["dataset", "trimaps", str(masks), "--out", str(out), "--kernel-size", "9"]) == 0
    for mask in masks.iterdir():
        np.testing.assert_array_equal(read_mask(out / mask.name), official_trimap(read_mask(mask), 9))
    assert "wrote 2 trimap(s)" in capsys.readouterr().out

    # existing outputs are kept unless --overwrite
    assert main(["dataset", "trimaps", str(masks), "--out", str(out), "--kernel-size", "21"]) == 0
    assert "kept 2 existing" in capsys.readouterr().out
    np.testing.assert_array_equal(read_mask(out / "p_00000.png"), official_trimap(read_mask(masks / "p_00000.png"), 9))
    assert main(["dataset", "trimaps", str(masks), "--out", str(out), "--kernel-size", "21", "--overwrite"]) == 0
    np.testing.assert_array_equal(read_mask(out / "p_00000.png"), official_trimap(read_mask(masks / "p_00000.png"), 21))
    assert tree_digest(synth_root) == before


def test_trimaps_cli_random_size_is_reproducible(synth_root, tmp_path):
    masks = synth_root / "train/mask"
    for name in ("a", "b"):
        assert main(["dataset", "trimaps", str(masks), "-o", str(tmp_path / name), "--random-size", "--seed", "1"]) == 0
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    trimap = read_mask(tmp_path / "a/p_00000.png")
    alpha = read_mask(masks / "p_00000.png")
    assert any(np.array_equal(trimap, official_trimap(alpha, k)) for k in range(15, 31))


def test_trimaps_cli_never_writes_into_the_mask_folder(synth_root, capsys):
    masks = synth_root / "train/mask"
    before = tree_digest(masks)
    assert main(["dataset", "trimaps", str(masks), "--out", str(masks / ".." / "mask")]) == 2
    assert "is the mask folder" in capsys.readouterr().err
    assert tree_digest(masks) == before


def test_trimaps_cli_reports_unreadable_mask_and_continues(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(masks / "good.png")
    (masks / "bad.png").write_bytes(b"garbage")
    assert main(["dataset", "trimaps", str(masks), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{masks / 'bad.png'}:" in err[0]
    assert (tmp_path / "out/good.png").exists() and not (tmp_path / "out/bad.png").exists()
