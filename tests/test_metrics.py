"""Metric parity with the official P3M evaluation (reference kit cases) and edge cases."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from p3m import metrics

CASES = Path(__file__).parent / "fixtures" / "metrics_cases.npz"
OFFICIAL_KEYS = ("SAD", "MSE", "MAD", "SAD_TRIMAP", "MSE_TRIMAP", "MAD_TRIMAP", "SAD_FG", "SAD_BG", "CONN", "GRAD")
RTOL, ATOL = 1e-6, 1e-9


@pytest.fixture(scope="module")
def cases():
    with np.load(CASES) as data:
        return {key: data[key] for key in data.files}


def case_inputs(cases, index):
    return (cases[f"case{index}_pred_u8"], cases[f"case{index}_gt_u8"], cases[f"case{index}_trimap_u8"])


@pytest.mark.parametrize("index", range(6))
def test_official_values(cases, index):
    pred, gt, trimap = case_inputs(cases, index)
    scores = metrics.compute_metrics(pred, gt, trimap)
    assert tuple(scores.values) == OFFICIAL_KEYS
    for key in OFFICIAL_KEYS:
        expected = float(cases[f"case{index}_{key}"])
        if math.isinf(expected):
            continue  # the official division by zero, checked in test_no_unknown_pixels_is_undefined
        assert scores.values[key] == pytest.approx(expected, rel=RTOL, abs=ATOL), key


def test_no_unknown_pixels_is_undefined(cases):
    pred, gt, trimap = case_inputs(cases, 5)
    assert not np.any(trimap == 128)
    scores = metrics.compute_metrics(pred, gt, trimap)
    for key in ("MSE_TRIMAP", "MAD_TRIMAP"):
        assert math.isinf(float(cases[f"case5_{key}"]))
        assert math.isnan(scores.values[key])
        assert scores.undefined[key] == metrics.NO_UNKNOWN
    assert set(scores.undefined) == {"MSE_TRIMAP", "MAD_TRIMAP"}
    assert math.isfinite(scores.values["SAD_TRIMAP"])


def test_single_functions_agree_with_compute_metrics(cases):
    pred, gt, trimap = case_inputs(cases, 0)
    scores = metrics.compute_metrics(pred, gt, trimap).values
    assert metrics.sad(pred, gt) == pytest.approx(scores["SAD"], rel=1e-12)
    assert metrics.mse(pred, gt) == pytest.approx(scores["MSE"], rel=1e-12)
    assert metrics.mad(pred, gt) == pytest.approx(scores["MAD"], rel=1e-12)
    assert metrics.gradient_error(pred, gt) == pytest.approx(scores["GRAD"], rel=1e-12)
    assert metrics.connectivity_error(pred, gt) == pytest.approx(scores["CONN"], rel=1e-12)
    trimap_scores = metrics.trimap_metrics(pred, gt, trimap).values
    for key in metrics.TRIMAP_KEYS:
        assert trimap_scores[key] == pytest.approx(scores[key], rel=1e-12)


def test_float_inputs_match_uint8_inputs(cases):
    pred, gt, trimap = case_inputs(cases, 4)
    from_u8 = metrics.compute_metrics(pred, gt, trimap).values
    from_float = metrics.compute_metrics(pred.astype(np.float32) / 255, gt.astype(np.float64) / 255, trimap).values
    for key, value in from_u8.items():
        assert from_float[key] == pytest.approx(value, rel=1e-5, abs=ATOL), key


def test_fast_skips_grad_and_conn(cases):
    pred, gt, trimap = case_inputs(cases, 1)
    scores = metrics.compute_metrics(pred, gt, trimap, fast=True)
    assert tuple(scores.values) == OFFICIAL_KEYS[:8]
    assert scores.values["SAD"] == pytest.approx(float(cases["case1_SAD"]), rel=RTOL)


def test_without_trimap_reports_whole_image_metrics_only(cases):
    pred, gt, _ = case_inputs(cases, 0)
    assert tuple(metrics.compute_metrics(pred, gt).values) == ("SAD", "MSE", "MAD", "CONN", "GRAD")


def test_face_region_metrics():
    gt = np.zeros((40, 50), np.uint8)
    pred = gt.copy()
    face = np.zeros_like(gt)
    face[10:20, 10:30] = 255  # 200 face pixels
    pred[10:20, 10:20] = 51  # 100 face pixels off by 0.2
    pred[30:35, 40:45] = 255  # 25 pixels off by 1, outside the face
    scores = metrics.compute_metrics(pred, gt, face_mask=face, fast=True).values
    assert scores["SAD_FACE"] == pytest.approx(100 * 0.2 / 1000, rel=1e-12)
    assert scores["MAD_FACE"] == pytest.approx(100 * 0.2 / 200, rel=1e-12)
    assert scores["MSE_FACE"] == pytest.approx(100 * 0.04 / 200, rel=1e-12)
    assert scores["SAD"] == pytest.approx((100 * 0.2 + 25) / 1000, rel=1e-12)


def test_empty_face_mask_is_undefined():
    alpha = np.full((8, 8), 200, np.uint8)
    scores = metrics.face_metrics(alpha, alpha, np.zeros((8, 8), np.uint8))
    assert scores.values["SAD_FACE"] == 0.0
    assert math.isnan(scores.values["MSE_FACE"]) and math.isnan(scores.values["MAD_FACE"])
    assert scores.undefined == {"MSE_FACE": metrics.NO_FACE, "MAD_FACE": metrics.NO_FACE}


def reference_connectivity(pred, gt, step=0.1):
    """A literal, unoptimised reading of the official connectivity definition."""
    from skimage.measure import label

    thresholds = np.arange(0, 1.1, step)
    level = np.full(pred.shape, -1, np.float32)
    for i in range(1, thresholds.size):
        # float64 comparisons, as NumPy >= 2 does for a float32 array and a float64 threshold
        labels = label((pred.astype(np.float64) >= thresholds[i]) & (gt.astype(np.float64) >= thresholds[i]),
                       connectivity=1)
        if labels.max() == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        largest = labels == (np.argmax(areas) + 1)
        level[(level == -1) & ~largest] = thresholds[i - 1]
    level[level == -1] = 1
    d_pred, d_gt = pred - level, gt - level
    phi_pred = 1 - d_pred * (d_pred >= np.float32(0.15))
    phi_gt = 1 - d_gt * (d_gt >= np.float32(0.15))
    return float(np.abs(phi_pred - phi_gt).sum(dtype=np.float64)) / 1000


@pytest.mark.parametrize("seed", range(8))
def test_connectivity_matches_literal_definition(seed):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    # Blobs of several sizes, so several regions compete at every threshold.
    gt = (np.clip(gaussian_filter(rng.random((60, 80)), 3) * 4 - 1.5, 0, 1) * 255).round().astype(np.uint8)
    pred = np.clip(gt.astype(int) + rng.integers(-60, 61, gt.shape), 0, 255).astype(np.uint8)
    got = metrics.connectivity_error(pred, gt)
    expected = reference_connectivity(pred.astype(np.float32) / np.float32(255), gt.astype(np.float32) / np.float32(255))
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-6, abs=ATOL)


def test_connectivity_ties_pick_the_first_region_in_raster_order():
    gt = np.zeros((12, 12), np.uint8)
    gt[1:4, 1:4] = 255  # two 3x3 regions of equal area
    gt[7:10, 6:9] = 255
    pred = gt.copy()
    pred[7:10, 6:9] = 128  # the second one is weaker in the prediction
    got = metrics.connectivity_error(pred, gt)
    expected = reference_connectivity(pred.astype(np.float32) / np.float32(255), gt.astype(np.float32) / np.float32(255))
    assert got == pytest.approx(expected, rel=1e-6)
    swapped = metrics.connectivity_error(pred[::-1, ::-1].copy(), gt[::-1, ::-1].copy())
    assert swapped != pytest.approx(got, rel=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_connectivity_with_many_equal_regions(seed):
    # A grid of equal 3x3 squares: every threshold has a tie for the largest region.
    rng = np.random.default_rng(seed)
    gt = np.zeros((40, 44), np.uint8)
    for y in range(2, 36, 5):
        for x in range(2, 40, 5):
            gt[y:y + 3, x:x + 3] = rng.choice([153, 204, 255])
    pred = np.where(gt > 0, np.clip(gt.astype(int) + rng.integers(-60, 1, gt.shape), 0, 255), 0).astype(np.uint8)
    got = metrics.connectivity_error(pred, gt)
    expected = reference_connectivity(pred.astype(np.float32) / np.float32(255), gt.astype(np.float32) / np.float32(255))
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-6, abs=ATOL)


def test_threshold_boundaries_follow_float64_comparison():
    # float32 alphas are compared with the official float64 thresholds (0.30000000000000004, ...):
    # check every float32 value next to each threshold, and the uint8 levels that land on one.
    up, down = np.float32(np.inf), np.float32(-np.inf)
    for t in np.arange(0, 1.1, 0.1):
        near = np.float32(t)
        candidates = [np.nextafter(near, down), near, np.nextafter(near, up)]
        candidates += [np.float32(v) / np.float32(255) for v in (51, 102, 153, 204, 255)]
        for x in candidates:
            assert (x >= metrics._float32_at_least(t)) == (float(x) >= float(t)), (x, t)


def test_perfect_prediction_scores_zero():
    rng = np.random.default_rng(1)
    alpha = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    trimap = np.where(alpha == 0, 0, np.where(alpha == 255, 255, 128)).astype(np.uint8)
    scores = metrics.compute_metrics(alpha, alpha, trimap, face_mask=np.full_like(alpha, 255)).values
    assert all(value == 0.0 for value in scores.values()), scores


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8), "differs"),
        (np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 3), np.uint8), "(H, W)"),
        (np.zeros((4, 5), np.int32), np.zeros((4, 5), np.uint8), "dtype"),
        (np.zeros((0, 5), np.uint8), np.zeros((0, 5), np.uint8), "empty"),
    ],
)
def test_bad_inputs_raise(pred, gt, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        metrics.compute_metrics(pred, gt)


def test_trimap_shape_mismatch_raises():
    alpha = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match="trimap shape"):
        metrics.compute_metrics(alpha, alpha, np.zeros((5, 5), np.uint8))
