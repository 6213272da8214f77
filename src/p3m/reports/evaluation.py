"""The page of ``p3m evaluate --report FILE.html``: the metric table, the distribution of each metric
over the images, and the worst images with their error maps."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from skimage.measure import block_reduce

from p3m.evaluation import EvaluationReport, Sample
from p3m.io import ImageReadError, read_image, read_mask
from p3m.reports.page import (THUMBNAIL_SIZE, Html, document, element, figure, fitted_size, heat_map, heat_scale,
                              histogram, join, table, thumbnail)

RANK_BY = "SAD"
DEFAULT_WORST = 8

Predict = Callable[[Path], np.ndarray]  # image path -> (H, W) float alpha in [0, 1]


def _number(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:.6g}"


def _metric_table(report: EvaluationReport) -> Html:
    means, counts, reasons = report.means(), report.counts(), report.undefined_reasons()
    rows = []
    for key in report.keys:
        defined = [values[key] for values in report.images.values() if not math.isnan(values[key])]
        spread = ([f"{statistics.median(defined):.6g}", f"{min(defined):.6g}", f"{max(defined):.6g}"]
                  if defined else ["", "", ""])
        why = "; ".join(f"{count} undefined: {reason}" for reason, count in reasons.get(key, {}).items())
        rows.append([key, _number(means[key]), *spread, f"{counts[key]} of {len(report.images)}", why])
    return table(["metric", "mean", "median", "min", "max", "images", "left out"], rows, class_="numbers")


def _as_uint8(alpha: np.ndarray) -> np.ndarray:
    return np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)


def _error_maps(sample: Sample, predict: Optional[Predict]) -> list[Html]:
    """Thumbnails of the image (when the sample has one), ground truth, prediction and |error|.

    Raises:
        ImageReadError, ValueError: a file cannot be read again, or the prediction's size differs.
    """
    gt = read_mask(sample.gt).astype(np.float32) / 255.0
    if sample.pred is not None:
        pred = read_mask(sample.pred).astype(np.float32) / 255.0
    elif predict is not None and sample.image is not None:
        pred = np.asarray(predict(sample.image), dtype=np.float32)
    else:
        raise ValueError(f"{sample.gt}: no prediction to show")
    if pred.shape != gt.shape:
        raise ValueError(f"{sample.pred or sample.image}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                         f"ground truth {gt.shape[1]}x{gt.shape[0]}")
    error = np.abs(pred - gt)
    factor = max(1, math.ceil(max(error.shape) / THUMBNAIL_SIZE))
    error = block_reduce(error, (factor, factor), np.max)  # a thin wrong edge stays visible in the thumbnail
    size = fitted_size(gt.shape[1], gt.shape[0])
    figures = []
    if sample.image is not None:
        figures.append(figure(thumbnail(read_image(sample.image)), "image", photo=True))
    figures += [figure(thumbnail(_as_uint8(gt)), "ground truth"), figure(thumbnail(_as_uint8(pred)), "prediction"),
                figure(Image.fromarray(heat_map(error)).resize(size, Image.Resampling.NEAREST),
                       "|prediction - ground truth|")]
    return figures


def _worst_images(report: EvaluationReport, count: int, predict: Optional[Predict]) -> Html:
    ranked = sorted((name for name, values in report.images.items() if not math.isnan(values.get(RANK_BY, math.nan))),
                    key=lambda name: report.images[name][RANK_BY], reverse=True)[:count]
    if not ranked:
        return element("p", "No image has a defined " + RANK_BY + ".", class_="muted")
    blocks = []
    for rank, name in enumerate(ranked, 1):
        values = report.images[name]
        scores = table(list(report.keys), [[_number(values[key]) for key in report.keys]], class_="numbers")
        sample = report.files.get(name)
        try:
            maps = (join(_error_maps(sample, predict)) if sample is not None
                    else element("p", "error map not shown: the report does not name this image's files",
                                 class_="muted"))
        except (ImageReadError, ValueError, OSError, RuntimeError) as error:
            maps = element("p", f"error map not shown: {error}", class_="muted")
        blocks.append(element("section", element("h3", f"{rank}. ", element("span", name, class_="path")), scores,
                              maps, class_="worst"))
    return join(blocks)


def evaluation_page(report: EvaluationReport, title: str, worst: int = DEFAULT_WORST,
                    predict: Optional[Predict] = None) -> str:
    """The HTML page of ``report``.

    Args:
        report: the scores, with :attr:`EvaluationReport.files` naming each image's files.
        title: what was evaluated (a split and model, or the folders).
        worst: how many images to show with their error maps, highest whole-image SAD first.
        predict: predicts an image again for its error map when the sample has no prediction file
            (the dataset form); the same model gives the alpha that was scored.
    """
    total = len(report.images)
    summary = f"{total} image(s) scored"
    if report.errors:
        summary += f", {len(report.errors)} problem(s)"
    if report.interrupted:
        summary += ", interrupted (the scores cover the images done before it)"
    if report.skipped:
        summary += f"; skipped: {', '.join(report.skipped)} (--fast)"
    body = [element("h1", "p3m evaluate: ", title), element("p", summary),
            element("h2", "Metrics"),
            element("p", "SAD is divided by 1000 as in the papers; a mean covers the images where the metric is "
                         "defined.", class_="muted"),
            _metric_table(report),
            element("h2", "Distributions over the images"),
            element("div", *(histogram([values[key] for values in report.images.values()], key)
                             for key in report.keys))]
    if worst > 0:
        body += [element("h2", f"Worst images by {RANK_BY} (up to {worst})"),
                 element("p", "Thumbnails (long side at most ", THUMBNAIL_SIZE, " px); the error map shows "
                              "|prediction - ground truth| of the alpha, the largest in each thumbnail pixel:", class_="muted"),
                 heat_scale(), _worst_images(report, worst, predict)]
    if report.errors:
        body += [element("h2", "Problems"),
                 element("ul", *(element("li", line) for line in report.errors), class_="problems")]
    rows = [[element("span", name, class_="path"), *(_number(values[key]) for key in report.keys)]
            for name, values in report.images.items()]
    body.append(element("details", element("summary", f"Every image's scores ({total})"),
                        table(["image", *report.keys], rows, class_="numbers")))
    return document(f"p3m evaluate: {title}", *body)
