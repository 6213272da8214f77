"""Matting error metrics, numerically matching the official P3M evaluation.

Every function takes a predicted and a ground-truth alpha of the same shape:
``(H, W)`` uint8 (0-255, divided by 255 here) or float in [0, 1]. Values are
reported on the official scales so they compare with published tables:

* ``SAD`` (and the other SADs): sum of absolute errors divided by 1000;
* ``MSE``, ``MAD``: mean squared / absolute error;
* ``GRAD``: squared difference of Gaussian-gradient magnitudes (sigma 1.4),
  summed and divided by 10 (the official scale, not the 1000 of the
  Rhemann et al. benchmark);
* ``CONN``: connectivity error, summed and divided by 1000.

Official quirks kept on purpose, for comparability with the papers:

* ``SAD_TRIMAP`` forces the prediction to 1 where the trimap is 255 and to 0
  where it is 0, then sums the error over the *whole* image; it equals the SAD
  of the unknown region whenever the ground truth agrees with the trimap.
  ``MSE_TRIMAP`` / ``MAD_TRIMAP`` divide the same error by the number of
  unknown (128) pixels, or, when there are none, by the number of pixels that
  are neither 0 nor 255.
* ``GRAD`` and ``CONN`` run in float32 on ``uint8 / 255`` inputs, as the
  official folder evaluation does; their thresholds are exact float32
  equivalents of the official float64 ones, so results do not depend on the
  NumPy version's casting rules.

Where the official code divides by zero (a trimap without unknown pixels, a
face mask without face pixels) the value is undefined: NaN here, with the
reason in :attr:`Scores.undefined`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WHOLE_KEYS = ("SAD", "MSE", "MAD")
TRIMAP_KEYS = ("SAD_TRIMAP", "MSE_TRIMAP", "MAD_TRIMAP", "SAD_FG", "SAD_BG")
SLOW_KEYS = ("CONN", "GRAD")
FACE_KEYS = ("SAD_FACE", "MSE_FACE", "MAD_FACE")
METRIC_KEYS = WHOLE_KEYS + TRIMAP_KEYS + SLOW_KEYS + FACE_KEYS

NO_UNKNOWN = "the trimap has no unknown pixels (official code divides by zero)"
NO_FACE = "the face mask has no face pixels"

_GRAD_SIGMA = 1.4
_CONN_STEP = 0.1
_CONN_MIN_DISTANCE = np.float32(0.15)
_UNKNOWN, _BACKGROUND, _FOREGROUND = 128, 0, 255


@dataclass
class Scores:
    """Metric values for one image, keyed by :data:`METRIC_KEYS` names.

    ``values`` holds only the metrics that were asked for (NaN when
    undefined); ``undefined`` maps each NaN metric to the reason.
    """

    values: dict[str, float] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)


def metric_keys(trimap: bool = True, face_mask: bool = False, fast: bool = False) -> tuple[str, ...]:
    """The metric names :func:`compute_metrics` reports for these inputs, in report order."""
    keys = WHOLE_KEYS + (TRIMAP_KEYS if trimap else ()) + (() if fast else SLOW_KEYS)
    return keys + (FACE_KEYS if face_mask else ())


class _Pair:
    """A prediction and its ground truth, with derived arrays computed once on demand."""

    def __init__(self, pred: np.ndarray, gt: np.ndarray):
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.ndim != 2 or gt.ndim != 2:
            raise ValueError(f"expected (H, W) alphas, got shapes {pred.shape} and {gt.shape}")
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        if pred.size == 0:
            raise ValueError(f"empty alphas (shape {pred.shape})")
        for name, array in (("prediction", pred), ("ground truth", gt)):
            if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{name}: expected uint8 (0-255) or float in [0, 1], got dtype {array.dtype}")
        self.pred, self.gt = pred, gt
        # uint8 maps become floats at the precision of the other input when it is a
        # float (so a float32 prediction equal to gt / 255 scores exactly 0), else float64.
        floats = [array.dtype for array in (pred, gt) if array.dtype != np.uint8]
        self._precision = np.result_type(*floats).type if floats else np.float64
        self._cache: dict[str, np.ndarray] = {}

    def _unit(self, array: np.ndarray, dtype) -> np.ndarray:
        if array.dtype == np.uint8:
            precision = dtype if dtype == np.float32 else self._precision
            return (array.astype(precision) / precision(255)).astype(dtype, copy=False)
        return array.astype(dtype, copy=False)

    def _cached(self, key: str, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def gt64(self) -> np.ndarray:
        return self._cached("gt64", lambda: self._unit(self.gt, np.float64))

    @property
    def diff(self) -> np.ndarray:
        """pred - gt, float64."""
        return self._cached("diff", lambda: self._unit(self.pred, np.float64) - self.gt64)

    @property
    def abs_diff(self) -> np.ndarray:
        return self._cached("abs_diff", lambda: np.abs(self.diff))

    @property
    def pred32(self) -> np.ndarray:
        return self._cached("pred32", lambda: self._unit(self.pred, np.float32))

    @property
    def gt32(self) -> np.ndarray:
        return self._cached("gt32", lambda: self._unit(self.gt, np.float32))


def _check_map(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != shape:
        raise ValueError(f"{name} shape {array.shape} differs from alpha shape {shape}")
    return array


def _whole(pair: _Pair, out: Scores) -> None:
    abs_sum = float(pair.abs_diff.sum())
    pixels = pair.diff.size
    out.values["SAD"] = abs_sum / 1000
    out.values["MSE"] = float(np.dot(pair.diff.ravel(), pair.diff.ravel())) / pixels
    out.values["MAD"] = abs_sum / pixels


def _trimap(pair: _Pair, trimap: np.ndarray, out: Scores) -> None:
    foreground = trimap == _FOREGROUND
    background = trimap == _BACKGROUND
    # Error after forcing the prediction to the trimap's known values (official definition).
    forced = pair.abs_diff.copy()
    np.subtract(1.0, pair.gt64, out=forced, where=foreground)
    np.copyto(forced, pair.gt64, where=background)
    forced_sum = float(forced.sum())
    pixels = int(np.count_nonzero(trimap == _UNKNOWN))
    if pixels == 0:
        pixels = trimap.size - int(np.count_nonzero(foreground)) - int(np.count_nonzero(background))
    out.values["SAD_TRIMAP"] = forced_sum / 1000
    if pixels:
        out.values["MSE_TRIMAP"] = float(np.dot(forced.ravel(), forced.ravel())) / pixels
        out.values["MAD_TRIMAP"] = forced_sum / pixels
    else:
        for key in ("MSE_TRIMAP", "MAD_TRIMAP"):
            out.values[key] = float("nan")
            out.undefined[key] = NO_UNKNOWN
    out.values["SAD_FG"] = float(np.sum(pair.abs_diff, where=foreground)) / 1000
    out.values["SAD_BG"] = float(np.sum(pair.abs_diff, where=background)) / 1000


def _face(pair: _Pair, face_mask: np.ndarray, out: Scores) -> None:
    face = face_mask >= 128 if face_mask.dtype == np.uint8 else face_mask.astype(bool)
    pixels = int(np.count_nonzero(face))
    errors = pair.diff[face]
    abs_sum = float(np.abs(errors).sum())
    out.values["SAD_FACE"] = abs_sum / 1000
    if pixels:
        out.values["MSE_FACE"] = float(np.dot(errors, errors)) / pixels
        out.values["MAD_FACE"] = abs_sum / pixels
    else:
        for key in ("MSE_FACE", "MAD_FACE"):
            out.values[key] = float("nan")
            out.undefined[key] = NO_FACE


def _gradient_magnitude(alpha: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    d_rows = gaussian_filter(alpha, _GRAD_SIGMA, order=(1, 0), output=np.float32)
    d_cols = gaussian_filter(alpha, _GRAD_SIGMA, order=(0, 1), output=np.float32)
    return np.sqrt(d_rows * d_rows + d_cols * d_cols)


def _gradient(pair: _Pair) -> float:
    error = _gradient_magnitude(pair.pred32) - _gradient_magnitude(pair.gt32)
    return float(np.square(error).sum(dtype=np.float64)) / 10


def _float32_at_least(value: float) -> np.float32:
    """The smallest float32 ``t`` with ``t >= value``: for float32 ``x``, ``x >= t`` iff ``x >= value``."""
    rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return rounded


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected region of ``mask`` (None if it is empty).

    Ties go to the region whose first pixel comes first in raster order, as
    with the official ``skimage.measure.label`` + ``regionprops`` + ``argmax``.
    """
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=4,
                                                               ltype=cv2.CV_32S)
    if count <= 1:
        return None
    if count == 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    tied = np.flatnonzero(areas == areas.max()) + 1
    if tied.size == 1:
        return labels == tied[0]
    flat = labels.ravel()
    first_pixels = [int(np.argmax(flat == label)) for label in tied]
    return labels == flat[min(first_pixels)]


def _levels_in_box(pred, gt, first, cuts) -> np.ndarray:
    """Per pixel, how many thresholds it stays in the largest region (see :func:`_connectivity`)."""
    last = len(cuts) - 1
    survived = np.zeros(pred.shape, dtype=np.uint8)
    alive = np.ones(pred.shape, dtype=bool)
    for i in range(1, last + 1):
        both = first if i == 1 else (pred >= cuts[i]) & (gt >= cuts[i])
        largest = _largest_region(both)
        if largest is None:
            survived[alive] = last
            return survived
        alive &= largest
        survived += alive
    return survived


def _connectivity(pair: _Pair, step: float = _CONN_STEP) -> float:
    pred, gt = pair.pred32, pair.gt32
    # The official thresholds, np.arange(0, 1.1, step), as exact float32 comparisons.
    thresholds = np.arange(0, 1.1, step)
    cuts = [_float32_at_least(t) for t in thresholds]
    levels = thresholds.astype(np.float32)
    levels[-1] = 1.0
    # A pixel's level is t_(i-1) for the first threshold t_i at which it leaves the
    # largest 4-connected region of (pred >= t_i) & (gt >= t_i), and 1 if it never
    # does. Regions only shrink as t grows, so the search is confined to the
    # bounding box of the first one; every pixel outside leaves at t_1.
    last = len(thresholds) - 1
    first = (pred >= cuts[1]) & (gt >= cuts[1])
    rows, cols = np.flatnonzero(first.any(axis=1)), np.flatnonzero(first.any(axis=0))
    if rows.size == 0:
        level_index = np.full(pred.shape, last, dtype=np.uint8)
    else:
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        level_index = np.zeros(pred.shape, dtype=np.uint8)
        level_index[box] = _levels_in_box(pred[box], gt[box], first[box], cuts)
    level = levels[level_index]
    d_pred = pred - level
    d_gt = gt - level
    phi_pred = 1 - d_pred * (d_pred >= _CONN_MIN_DISTANCE)
    phi_gt = 1 - d_gt * (d_gt >= _CONN_MIN_DISTANCE)
    return float(np.abs(phi_pred - phi_gt).sum(dtype=np.float64)) / 1000


def compute_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    trimap: np.ndarray | None = None,
    face_mask: np.ndarray | None = None,
    fast: bool = False,
) -> Scores:
    """Every metric that applies to these inputs, sharing intermediate arrays.

    Args:
        pred, gt: (H, W) alphas, uint8 0-255 or float in [0, 1].
        trimap: (H, W) uint8 with 0 (background), 128 (unknown), 255
            (foreground); adds the ``*_TRIMAP``, ``SAD_FG`` and ``SAD_BG`` metrics.
        face_mask: (H, W) uint8 (face where >= 128) or bool; adds
            ``SAD_FACE``, ``MSE_FACE``, ``MAD_FACE`` (errors inside the face).
        fast: skip ``GRAD`` and ``CONN`` (the slow ones), like the official fast mode.

    Returns:
        :class:`Scores` with the keys of :func:`metric_keys` in that order.

    Raises:
        ValueError: shapes differ, arrays are not 2-D, or an unsupported dtype.
    """
    pair = _Pair(pred, gt)
    out = Scores()
    _whole(pair, out)
    if trimap is not None:
        _trimap(pair, _check_map("trimap", trimap, pair.gt.shape), out)
    if not fast:
        out.values["CONN"] = _connectivity(pair)
        out.values["GRAD"] = _gradient(pair)
    if face_mask is not None:
        _face(pair, _check_map("face mask", face_mask, pair.gt.shape), out)
    order = metric_keys(trimap is not None, face_mask is not None, fast)
    out.values = {key: out.values[key] for key in order}
    return out


def sad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Sum of absolute differences over the image, divided by 1000."""
    return float(_Pair(pred, gt).abs_diff.sum()) / 1000


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error over the image."""
    diff = _Pair(pred, gt).diff.ravel()
    return float(np.dot(diff, diff)) / diff.size


def mad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute difference over the image."""
    return float(_Pair(pred, gt).abs_diff.mean())


def trimap_metrics(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> Scores:
    """``SAD_TRIMAP``, ``MSE_TRIMAP``, ``MAD_TRIMAP``, ``SAD_FG``, ``SAD_BG`` (official definitions)."""
    pair = _Pair(pred, gt)
    out = Scores()
    _trimap(pair, _check_map("trimap", trimap, pair.gt.shape), out)
    return out


def face_metrics(pred: np.ndarray, gt: np.ndarray, face_mask: np.ndarray) -> Scores:
    """``SAD_FACE``, ``MSE_FACE``, ``MAD_FACE``: errors inside the face region only."""
    pair = _Pair(pred, gt)
    out = Scores()
    _face(pair, _check_map("face mask", face_mask, pair.gt.shape), out)
    return out


def gradient_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Gradient error: squared difference of Gaussian-derivative magnitudes (sigma 1.4), sum / 10."""
    return _gradient(_Pair(pred, gt))


def connectivity_error(pred: np.ndarray, gt: np.ndarray, step: float = _CONN_STEP) -> float:
    """Connectivity error (thresholds 0, step, ..., 1; 4-connected regions), sum / 1000."""
    return _connectivity(_Pair(pred, gt), step)
