"""Scoring folders of predicted alphas, or a model on a P3M-10k test split.

Two entry points share one report type:

* :func:`evaluate_folders` pairs prediction and ground-truth files by name
  stem (any image extension) and scores each pair;
* :func:`evaluate_dataset` predicts every image of ``P3M-500-P`` or
  ``P3M-500-NP`` with a callable (e.g. ``p3m.Matter(...).predict``) and
  scores the float alpha, as the official test script does.

Problems with one sample (missing partner, size mismatch, unreadable file)
become one line in :attr:`EvaluationReport.errors` and never stop the rest.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from p3m import metrics
from p3m.data import layout
from p3m.io import ImageReadError, OutputFolder, read_mask, write_text


@dataclass(frozen=True)
class Sample:
    """Files of one scored sample; ``name`` is the ground-truth file name (the report key)."""

    name: str
    gt: Path
    pred: Path | None = None
    image: Path | None = None
    trimap: Path | None = None
    face_mask: Path | None = None


@dataclass
class EvaluationReport:
    """Per-image scores, their means, and everything that went wrong.

    images: ground-truth file name -> metric -> value (NaN when undefined).
    undefined: (file name, metric, reason) for every NaN value.
    errors: one line per sample that could not be scored, naming the file.
    skipped: metrics left out on purpose (``--fast``).
    files: ground-truth file name -> the files of that scored sample.
    """

    keys: tuple[str, ...]
    images: dict[str, dict[str, float]] = field(default_factory=dict)
    undefined: list[tuple[str, str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: tuple[str, ...] = ()
    interrupted: bool = False  # Ctrl-C: the scores cover the images done before it
    files: dict[str, Sample] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.interrupted

    def add(self, name: str, scores: metrics.Scores) -> None:
        self.images[name] = dict(scores.values)
        self.undefined.extend((name, key, reason) for key, reason in scores.undefined.items())

    def counts(self) -> dict[str, int]:
        """Per metric, how many images have a defined (non-NaN) value."""
        return {key: sum(not math.isnan(values[key]) for values in self.images.values()) for key in self.keys}

    def means(self) -> dict[str, float]:
        """Per metric, the mean over images where it is defined (NaN when none is)."""
        means = {}
        for key in self.keys:
            defined = [values[key] for values in self.images.values() if not math.isnan(values[key])]
            means[key] = math.fsum(defined) / len(defined) if defined else float("nan")
        return means

    def undefined_reasons(self) -> dict[str, dict[str, int]]:
        """metric -> reason -> number of images."""
        summary: dict[str, dict[str, int]] = {}
        for _, key, reason in self.undefined:
            summary.setdefault(key, {}).setdefault(reason, 0)
            summary[key][reason] += 1
        return summary

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes ``None``."""
        return {
            "images": {name: _nulls(values) for name, values in self.images.items()},
            "mean": _nulls(self.means()),
            "count": len(self.images),
            "counts": self.counts(),
            "undefined": [{"image": name, "metric": key, "reason": reason} for name, key, reason in self.undefined],
            "skipped": list(self.skipped),
            "errors": list(self.errors),
            "interrupted": self.interrupted,
        }

    def write_json(self, path: str | os.PathLike, **guards) -> Path:
        """Write :meth:`to_dict` through the one writer (``guards`` as in :func:`p3m.io.atomic_write`)."""
        return write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", **guards)

    def write_csv(self, path: str | os.PathLike, **guards) -> Path:
        """One row per image, then a ``(mean)`` row; undefined values are empty cells.

        Image names that a spreadsheet would run as a formula (starting with
        ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) get a leading ``'``.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("image",) + self.keys)
        for name, values in self.images.items():
            writer.writerow((escape_csv_text(name),) + tuple(_cell(values[key]) for key in self.keys))
        means = self.means()
        writer.writerow(("(mean)",) + tuple(_cell(means[key]) for key in self.keys))
        return write_text(path, buffer.getvalue(), **guards)

    def format_table(self) -> str:
        """The means as a terminal table, with per-metric counts and why values are missing."""
        means, counts, reasons = self.means(), self.counts(), self.undefined_reasons()
        total = len(self.images)
        lines = [f"{'metric':<12} {'mean':>14} {'images':>8}"]
        for key in self.keys:
            mean = "undefined" if math.isnan(means[key]) else f"{means[key]:.6g}"
            line = f"{key:<12} {mean:>14} {counts[key]:>8}"
            if counts[key] < total:
                line += "  (" + "; ".join(f"{n} undefined: {why}" for why, n in reasons.get(key, {}).items()) + ")"
            lines.append(line)
        if self.skipped:
            lines.append(f"skipped: {', '.join(self.skipped)} (--fast)")
        return "\n".join(lines)


def _nulls(values: dict[str, float]) -> dict[str, float | None]:
    return {key: None if math.isnan(value) else value for key, value in values.items()}


def escape_csv_text(text: str) -> str:
    """``text`` made inert for spreadsheets: a leading ``'`` when it starts like a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _index(folder: Path, what: str, errors: list[str]) -> layout.FolderIndex:
    """The image files of ``folder``; duplicate stems become errors. Raises if the folder is missing."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: {what} folder not found")
    found = layout.index_folder(folder)
    for stem, paths in found.duplicates.items():
        errors.append(f"{folder / stem}: several {what} files share this name ({', '.join(p.name for p in paths)})")
    return found


def _match(reference: layout.FolderIndex, partners: dict[str, layout.FolderIndex | None],
           errors: list[str]) -> list[tuple[Path, dict[str, Path]]]:
    """Each file of ``reference`` with its partner of the same stem in every given folder.

    A missing partner is an error naming the reference file; stems shared by
    several files are skipped (:func:`_index` reported them).
    """
    given = {what: found for what, found in partners.items() if found is not None}
    matched = []
    for stem, path in reference.files.items():
        missing = [f"no {what} in {found.folder}" for what, found in given.items() if stem not in found]
        if missing:
            errors.append(f"{path}: {'; '.join(missing)}")
        elif all(stem in found.files for found in given.values()):
            matched.append((path, {what: found.files[stem] for what, found in given.items()}))
    return matched


def _orphans(found: layout.FolderIndex, reference: layout.FolderIndex, what: str) -> list[str]:
    return [f"{path}: no {what} in {reference.folder}" for stem, path in found.files.items() if stem not in reference]


def pair_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    trimap_dir: str | os.PathLike | None = None,
    face_mask_dir: str | os.PathLike | None = None,
) -> tuple[list[Sample], list[str]]:
    """Match files by name stem; returns the complete samples and one error line per problem.

    Every ground truth needs a prediction (and a trimap / face mask when those
    folders are given); a prediction without ground truth is an error too.

    Raises:
        NotADirectoryError: a given folder does not exist.
    """
    errors: list[str] = []
    gts = _index(Path(gt_dir), "ground-truth", errors)
    preds = _index(Path(pred_dir), "prediction", errors)
    partners = {
        "prediction": preds,
        "trimap": _index(Path(trimap_dir), "trimap", errors) if trimap_dir is not None else None,
        "face mask": _index(Path(face_mask_dir), "face-mask", errors) if face_mask_dir is not None else None,
    }
    samples = [Sample(gt.name, gt, pred=found["prediction"], trimap=found.get("trimap"),
                      face_mask=found.get("face mask"))
               for gt, found in _match(gts, partners, errors)]
    errors.extend(_orphans(preds, gts, "ground truth"))
    return samples, errors


def dataset_samples(root: str | os.PathLike, split: str) -> tuple[list[Sample], list[str]]:
    """Images of a test split with their alpha, trimap and (P3M-500-P) face mask.

    Raises:
        ValueError: ``split`` is not a test split.
        NotADirectoryError: a folder of the split is missing.
    """
    if split not in layout.TEST_SPLITS:
        raise ValueError(f"not a test split: {split!r}; choose from {', '.join(layout.TEST_SPLITS)}")
    spec = layout.get_split(split)
    errors: list[str] = []
    images = _index(spec.folder(root, layout.IMAGE), "image", errors)
    alphas = _index(spec.folder(root, layout.ALPHA), "alpha", errors)
    partners = {
        "alpha": alphas,
        "trimap": _index(spec.folder(root, layout.TRIMAP), "trimap", errors),
        "face mask": (_index(spec.folder(root, layout.FACE_MASK), "face-mask", errors)
                      if layout.FACE_MASK in spec.folders else None),
    }
    samples = [Sample(found["alpha"].name, found["alpha"], image=image, trimap=found["trimap"],
                      face_mask=found.get("face mask"))
               for image, found in _match(images, partners, errors)]
    errors.extend(_orphans(alphas, images, "image"))
    return samples, errors


def _read_maps(sample: Sample, shape: tuple[int, int], pred_label: str, pred_path: Path):
    """Ground truth, trimap and face mask of ``sample``, checked against the prediction's shape."""
    gt = read_mask(sample.gt)
    if gt.shape != shape:
        raise ValueError(f"{pred_path}: {pred_label} size {shape[1]}x{shape[0]} differs from "
                             f"ground truth {sample.gt} ({_size(gt)})")
    maps = []
    for what, path in (("trimap", sample.trimap), ("face mask", sample.face_mask)):
        array = read_mask(path) if path is not None else None
        if array is not None and array.shape != shape:
            raise ValueError(f"{path}: {what} size {_size(array)} differs from ground truth {sample.gt} "
                                 f"({_size(gt)})")
        maps.append(array)
    return gt, maps[0], maps[1]


Outcome = tuple[str, "metrics.Scores | None", "str | None"]  # (name, scores, error line)


def _guarded(score: Callable[[Sample], metrics.Scores], sample: Sample) -> Outcome:
    try:
        return sample.name, score(sample), None
    except (ImageReadError, ValueError) as error:
        return sample.name, None, str(error)
    except OSError as error:  # e.g. a prediction that cannot be saved
        if error.filename is not None:
            return sample.name, None, f"{error.filename}: {error.strerror or error}"
        return sample.name, None, f"{_sample_file(sample)}: {_first_line(error)}"
    except Exception as error:  # noqa: BLE001 - e.g. out of memory in the model; one sample never ends the run
        return sample.name, None, f"{_sample_file(sample)}: {type(error).__name__}: {_first_line(error)}"


def _sample_file(sample: Sample) -> Path:
    """The file a sample's problem is reported under: the prediction, else the image."""
    return sample.pred or sample.image or sample.gt


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _collect(outcomes: Iterable[Outcome], samples: list[Sample], errors: list[str], keys: tuple[str, ...],
             fast: bool, progress: bool, description: str) -> EvaluationReport:
    from tqdm import tqdm

    report = EvaluationReport(keys=keys, errors=errors, skipped=metrics.SLOW_KEYS if fast else ())
    total = len(samples)
    # disable=None: a progress bar only when writing to a terminal
    try:
        for name, scores, error in tqdm(outcomes, total=total, desc=description, unit="image",
                                        disable=None if progress else True, leave=False):
            if error is not None:
                report.errors.append(error)
            else:
                report.add(name, scores)
    except KeyboardInterrupt:
        report.interrupted = True
    report.files = {sample.name: sample for sample in samples if sample.name in report.images}
    return report


def _score_files(sample: Sample, fast: bool) -> Outcome:
    def score(sample: Sample) -> metrics.Scores:
        pred = read_mask(sample.pred)
        gt, trimap, face = _read_maps(sample, pred.shape, "prediction", sample.pred)
        return metrics.compute_metrics(pred, gt, trimap, face, fast=fast)

    return _guarded(score, sample)


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    trimap_dir: str | os.PathLike | None = None,
    face_mask_dir: str | os.PathLike | None = None,
    fast: bool = False,
    progress: bool = False,
    workers: int = 1,
) -> EvaluationReport:
    """Score every prediction in ``pred_dir`` against its ground truth in ``gt_dir``.

    Predictions and ground truths are read as 8-bit maps (first channel of
    colour files) and divided by 255, as the official folder evaluation does.
    ``workers`` > 1 scores images in that many processes; the report is the same.

    Raises:
        NotADirectoryError: a given folder does not exist.
    """
    samples, errors = pair_folders(pred_dir, gt_dir, trimap_dir, face_mask_dir)
    keys = metrics.metric_keys(trimap_dir is not None, face_mask_dir is not None, fast)
    score = functools.partial(_score_files, fast=fast)
    if workers <= 1 or len(samples) <= 1:
        return _collect(map(score, samples), samples, errors, keys, fast, progress, "evaluate")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: forking a process that already runs threads (torch, BLAS) can deadlock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(samples)), mp_context=context) as pool:
        return _collect(pool.map(score, samples, chunksize=2), samples, errors, keys, fast, progress, "evaluate")


def files_of(folders: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The entries of each existing folder (not recursive): what an evaluation reads, to protect from writes."""
    found = []
    for folder in folders:
        if folder is not None and os.path.isdir(folder):
            found.extend(Path(entry.path) for entry in os.scandir(folder))
    return found


def check_prediction_folder(root: str | os.PathLike, split: str, folder: str | os.PathLike) -> None:
    """Refuse ``folder`` for saved predictions when it is a file, the split's folder, lies
    inside it, or is one of the split's input folders (wherever they link to).

    Raises:
        ValueError: naming the folder.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder}: exists and is not a folder; choose a folder for predictions")
    spec = layout.get_split(split)
    target = Path(folder).resolve()
    split_root = spec.root(root).resolve()
    inputs = {spec.folder(root, role).resolve() for role in spec.folders}
    if any(target == base or base in target.parents for base in inputs | {split_root}):
        raise ValueError(f"{folder}: lies inside the dataset's {split} folder {spec.root(root)}; "
                         "choose another folder for predictions")


def evaluate_dataset(
    root: str | os.PathLike,
    split: str,
    predict: Callable[[Path], np.ndarray],
    save_pred: str | os.PathLike | None = None,
    fast: bool = False,
    progress: bool = False,
) -> EvaluationReport:
    """Predict and score every image of a P3M-10k test split.

    Args:
        root: the dataset root (the folder holding ``validation/``).
        split: ``P3M-500-P`` or ``P3M-500-NP``.
        predict: image path -> (H, W) float alpha in [0, 1] at the image's size.
        save_pred: folder for the predictions as 8-bit PNGs (``round(alpha * 255)``),
            named like the ground truth; must lie outside the split's folder.
        fast: skip ``GRAD`` and ``CONN``.

    The float alpha is scored (the official test script does not quantise it).
    ``P3M-500-P`` adds the face-region metrics.

    Raises:
        ValueError: not a test split, or ``save_pred`` is inside the split.
        NotADirectoryError: a folder of the split is missing.
    """
    samples, errors = dataset_samples(root, split)
    spec = layout.get_split(split)
    out = Path(save_pred) if save_pred is not None else None
    if out is not None:
        check_prediction_folder(root, split, out)
        predictions = OutputFolder(out, files_of([spec.folder(root, role) for role in spec.folders]))
    keys = metrics.metric_keys(True, layout.FACE_MASK in spec.folders, fast)

    def score(sample: Sample) -> metrics.Scores:
        alpha = np.asarray(predict(sample.image), dtype=np.float32)
        if alpha.ndim != 2:
            raise ValueError(f"{sample.image}: prediction has shape {alpha.shape}, expected (H, W)")
        gt, trimap, face = _read_maps(sample, alpha.shape, "predicted alpha", sample.image)
        if out is not None:
            predictions.save_image(out / (Path(sample.name).stem + ".png"),
                                   np.round(np.clip(alpha, 0, 1) * 255).astype(np.uint8))
        return metrics.compute_metrics(alpha, gt, trimap, face, fast=fast)

    outcomes = (_guarded(score, sample) for sample in samples)
    return _collect(outcomes, samples, errors, keys, fast, progress, split)
