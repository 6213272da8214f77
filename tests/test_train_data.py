"""Training data: crop rules, joint augmentation, the dataset over the P3M-10k layout, the sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from p3m.data import layout
from p3m.data.synth import write_dataset
from p3m.train.dataset import (DatasetError, P3MTrainDataset, TrainSampler, augment, choose_crop,
                               find_train_files)


def _draws(trimap: np.ndarray, count: int = 400, seed: int = 0, crop_sizes=(512, 768, 1024)):
    rng = np.random.default_rng(seed)
    return [choose_crop(trimap, rng, crop_sizes) for _ in range(count)]


def test_crop_side_drawn_from_sizes_that_fit():
    trimap = np.zeros((1100, 1300), np.uint8)
    draws = _draws(trimap)
    sides = {side for _, _, side in draws}
    assert sides == {512, 768, 1024}
    assert all(top + side <= 1100 and left + side <= 1300 for top, left, side in draws)


def test_crop_side_falls_back_to_smallest_then_to_shorter_side():
    assert {side for _, _, side in _draws(np.zeros((600, 900), np.uint8))} == {512}
    draws = _draws(np.zeros((300, 420), np.uint8))
    assert {side for _, _, side in draws} == {300}
    assert {top for top, _, _ in draws} == {0}
    assert max(left for _, left, _ in draws) == 120


def test_crop_corner_reaches_the_last_position_that_fits():
    draws = _draws(np.zeros((520, 515), np.uint8), count=600)
    assert max(top for top, _, _ in draws) == 8
    assert max(left for _, left, _ in draws) == 3
    assert min(top for top, _, _ in draws) == 0


def test_half_of_the_crops_start_on_a_transition_pixel():
    trimap = np.zeros((600, 600), np.uint8)
    trimap[50:70, 50:70] = 128
    trimap[500:, 500:] = 128  # transition pixels where no 512 crop can start
    draws = _draws(trimap, count=3000, seed=1)
    on_transition = np.mean([trimap[top, left] == 128 for top, left, _ in draws])
    # 1/2 forced, plus 1/2 x (400 of the 89 x 89 possible corners) by chance.
    expected = 0.5 + 0.5 * 400 / 89**2
    assert on_transition == pytest.approx(expected, abs=0.04)


def test_crop_without_transition_pixels_still_works():
    draws = _draws(np.full((700, 700), 255, np.uint8), count=50)
    assert all(0 <= top <= 188 and 0 <= left <= 188 for top, left, _ in draws)


def test_augment_crops_flips_and_resizes_all_arrays_together():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    alpha = image[:, :, 0].copy()
    trimap = np.where(alpha > 128, 128, 0).astype(np.uint8)
    flips = set()
    for seed in range(12):
        out = augment({"image": image, "alpha": alpha}, trimap, np.random.default_rng(seed), 64, (512,))
        assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8
        assert out["alpha"].shape == (64, 64) and out["trimap"].shape == (64, 64)
        np.testing.assert_array_equal(out["alpha"], out["image"][:, :, 0])
        top, left, side = choose_crop(trimap, np.random.default_rng(seed), (512,))
        crop = image[top:top + side, left:left + side, 0]
        unflipped = np.abs(out["alpha"].astype(int) - _resize(crop)).mean()
        flipped = np.abs(out["alpha"].astype(int) - _resize(crop[:, ::-1])).mean()
        flips.add(flipped < unflipped)
        assert min(unflipped, flipped) == 0
    assert flips == {True, False}


def _resize(array: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(np.ascontiguousarray(array), (64, 64), interpolation=cv2.INTER_LINEAR).astype(int)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, 4, seed=3, size=96, splits=(layout.TRAIN,))
    return root


def test_dataset_yields_uint8_tensors_with_fg_bg(synth_root):
    dataset = P3MTrainDataset(synth_root, image_size=64)
    assert len(dataset) == 4 and dataset.use_fgbg
    item = dataset[(1, (0, 0, 5))]
    assert {name: tuple(t.shape) for name, t in item.items()} == {
        "image": (3, 64, 64), "alpha": (1, 64, 64), "fg": (3, 64, 64), "bg": (3, 64, 64), "trimap": (1, 64, 64)}
    assert all(t.dtype == torch.uint8 for t in item.values())
    again = dataset[(1, (0, 0, 5))]
    assert all(torch.equal(item[name], again[name]) for name in item)
    other = dataset[(1, (0, 0, 6))]
    assert any(not torch.equal(item[name], other[name]) for name in item)


def test_dataset_trimap_band_matches_the_alpha(synth_root):
    dataset = P3MTrainDataset(synth_root, image_size=64, use_fgbg=False)
    item = dataset[(0, (1, 2, 3))]
    alpha, trimap = item["alpha"][0].numpy(), item["trimap"][0].numpy()
    # Soft alpha lies in the transition band (the kernel is at least 15 px before resizing).
    soft = (alpha > 10) & (alpha < 245)
    assert soft.any() and (trimap[soft] > 0).all() and (trimap[soft] < 255).all()
    assert "fg" not in item


def test_dataset_without_complete_fg_bg(tmp_path):
    write_dataset(tmp_path, 2, seed=4, size=96, splits=(layout.TRAIN,))
    bg = layout.get_split(layout.TRAIN).folder(tmp_path, layout.BG)
    next(bg.iterdir()).unlink()
    files = find_train_files(tmp_path)
    assert files.fgbg_count == 1 and not files.has_fgbg
    assert not P3MTrainDataset(tmp_path, image_size=64).use_fgbg
    with pytest.raises(DatasetError, match="fg/bg found for 1 of 2 samples.*p3m dataset prepare"):
        P3MTrainDataset(tmp_path, image_size=64, use_fgbg=True)


def test_dataset_reports_missing_folders_and_partners(tmp_path):
    with pytest.raises(DatasetError, match="blurred_image"):
        find_train_files(tmp_path)
    write_dataset(tmp_path, 2, seed=5, size=96, splits=(layout.TRAIN,))
    alphas = layout.get_split(layout.TRAIN).folder(tmp_path, layout.ALPHA)
    sorted(alphas.iterdir())[0].unlink()
    files = find_train_files(tmp_path)
    assert len(files.samples) == 1
    assert len(files.problems) == 1 and "no alpha" in files.problems[0]


def test_dataset_rejects_sizes_that_are_not_multiples_of_32(synth_root):
    with pytest.raises(ValueError, match="multiple of 32"):
        P3MTrainDataset(synth_root, image_size=100)


def test_sampler_splits_global_batches_across_processes():
    single = list(TrainSampler(10, batch_size=4, seed=7))
    ranks = [list(TrainSampler(10, batch_size=2, world_size=2, rank=rank, seed=7)) for rank in range(2)]
    assert len(single) == 8  # 2 steps of 4, 2 samples dropped
    assert set(ranks[0]).isdisjoint(ranks[1])
    for step in range(2):
        merged = ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2]
        assert merged == single[4 * step:4 * step + 4]
    assert len({index for index, _ in single}) == 8


def test_sampler_epochs_reshuffle_and_resume_skips_steps():
    sampler = TrainSampler(12, batch_size=3, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in first] != [i for i, _ in second]
    assert {seed[1] for _, seed in second} == {1}
    sampler.set_epoch(1, start_step=2)
    assert list(sampler) == second[6:] and len(sampler) == 6


def test_sampler_rejects_a_dataset_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainSampler(3, batch_size=2, world_size=2)


def test_unreadable_image_is_replaced_by_the_next_sample(tmp_path, caplog):
    write_dataset(tmp_path, 3, seed=6, size=96, splits=(layout.TRAIN,))
    dataset = P3MTrainDataset(tmp_path, image_size=64, use_fgbg=False)
    broken = dataset.samples[1].image
    broken.write_bytes(b"not an image at all")
    with caplog.at_level("WARNING", logger="p3m.train.dataset"):
        item = dataset[(1, (0, 0, 7))]
    expected = dataset[(2, (0, 0, 7))]  # the same randomness, applied to the next sample
    assert all(torch.equal(item[name], expected[name]) for name in item)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and str(broken) in warnings[0] and "\n" not in warnings[0]
    assert dataset.samples[2].image.name in warnings[0]


def test_unreadable_images_everywhere_are_one_dataset_error(tmp_path):
    write_dataset(tmp_path, 2, seed=7, size=96, splits=(layout.TRAIN,))
    dataset = P3MTrainDataset(tmp_path, image_size=64, use_fgbg=False)
    for sample in dataset.samples:
        sample.image.write_bytes(b"")
    with pytest.raises(DatasetError, match="cannot be read"):
        dataset[(0, (0, 0, 0))]


def test_a_missing_image_or_alpha_folder_is_named_by_both_readers_of_the_training_split(tmp_path):
    from p3m.data.prepare import prepare_fgbg

    (tmp_path / "train" / "blurred_image").mkdir(parents=True)
    message = r"train/mask: missing \(alpha folder of the training split\)"
    with pytest.raises(DatasetError, match=message):
        find_train_files(tmp_path)
    with pytest.raises(NotADirectoryError, match=message):
        prepare_fgbg(tmp_path)
