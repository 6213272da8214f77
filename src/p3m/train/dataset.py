"""The P3M-10k training set with the official online augmentation.

For every sample: a trimap is generated from the alpha with a random kernel
size (15-30), a square crop is taken (side drawn from ``crop_sizes``; the
smallest of them when the drawn side does not fit, the shorter image side when
even that does not), its top-left corner being a random transition pixel half
of the time and any pixel otherwise (the crop always stays inside the image),
the crop is flipped horizontally half of the time and resized bilinearly to
``image_size`` -- the trimap too, as the official code does. With P3M-CP
(:mod:`p3m.train.copy_paste`) the face mask follows the same crop, and public
faces are pasted after it.

Randomness comes only from the key passed to ``__getitem__``: ``(index, seed)``
where ``seed`` is a tuple of integers (what :class:`TrainSampler` yields), so a
sample's augmentation does not depend on the number of data-loader workers,
processes or on resuming.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from p3m.data import layout
from p3m.data.trimap import TRAIN_KERNEL_SIZES, UNKNOWN, trimap_from_alpha
from p3m.io import ImageReadError, read_image, read_mask
from p3m.train.copy_paste import FACE_THRESHOLD, CopyPaste, Face, paste_face_uint8, scale_box

DEFAULT_CROP_SIZES = (512, 768, 1024)
DEFAULT_IMAGE_SIZE = 512
# Unreadable samples in a row replaced by the following ones before a key gives up.
MAX_REPLACEMENTS = 16
# Appended to a sample's key for P3M-CP's draws, so that they leave its augmentation as it was.
_COPY_PASTE_STREAM = 1

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The training data cannot be used; the message names the folder or file."""


@dataclass(frozen=True)
class TrainSample:
    """Files of one training sample (fg, bg and face_mask are ``None`` when absent)."""

    name: str
    image: Path
    alpha: Path
    fg: Path | None = None
    bg: Path | None = None
    face_mask: Path | None = None


@dataclass(frozen=True)
class TrainFiles:
    """The training split as found on disk.

    samples: every image with its alpha (and fg/bg when ``has_fgbg``).
    has_fgbg: every sample has both a foreground and a background file.
    fgbg_count: how many samples have both.
    problems: one line per file left out (no partner, duplicate name).
    face_mask_count: how many samples have a face mask (``train/facemask``).
    """

    samples: list[TrainSample]
    has_fgbg: bool
    fgbg_count: int
    problems: list[str]
    face_mask_count: int = 0


def find_train_files(root: str | os.PathLike) -> TrainFiles:
    """Pair the images of ``ROOT/train`` with their alphas, fg and bg, by name stem.

    Raises:
        DatasetError: the image or alpha folder is missing, or no image has an alpha.
    """
    split = layout.get_split(layout.TRAIN)
    folders = {role: split.folder(root, role)
               for role in (layout.IMAGE, layout.ALPHA, layout.FG, layout.BG, layout.FACE_MASK)}
    for role in (layout.IMAGE, layout.ALPHA):
        if not folders[role].is_dir():
            raise DatasetError(f"{folders[role]}: missing ({role} folder of the training split)")
    problems: list[str] = []
    indexes: dict[str, dict[str, Path]] = {}
    for role, folder in folders.items():
        if not folder.is_dir():
            continue
        found = layout.index_folder(folder)
        problems.extend(f"{folder / stem}: several files share this name, left out" for stem in found.duplicates)
        indexes[role] = found.files
    images, alphas = indexes[layout.IMAGE], indexes[layout.ALPHA]
    fgs, bgs = indexes.get(layout.FG, {}), indexes.get(layout.BG, {})
    face_masks = indexes.get(layout.FACE_MASK, {})
    samples = []
    for stem, image in images.items():
        if stem not in alphas:
            problems.append(f"{image}: no alpha in {folders[layout.ALPHA]}, left out")
            continue
        samples.append(TrainSample(stem, image, alphas[stem], fgs.get(stem), bgs.get(stem), face_masks.get(stem)))
    problems.extend(f"{alpha}: no image in {folders[layout.IMAGE]}, left out"
                    for stem, alpha in alphas.items() if stem not in images)
    if not samples:
        raise DatasetError(f"{split.root(root)}: no image with an alpha matte "
                           f"(looked in {folders[layout.IMAGE]} and {folders[layout.ALPHA]})")
    fgbg_count = sum(1 for sample in samples if sample.fg is not None and sample.bg is not None)
    face_mask_count = sum(1 for sample in samples if sample.face_mask is not None)
    return TrainFiles(samples, fgbg_count == len(samples), fgbg_count, problems, face_mask_count)


def choose_crop(trimap: np.ndarray, rng: np.random.Generator,
                crop_sizes: Sequence[int] = DEFAULT_CROP_SIZES) -> tuple[int, int, int]:
    """Pick a square crop of a (H, W) trimap: returns ``(top, left, side)``.

    The side is drawn uniformly from ``crop_sizes``; if it exceeds the shorter
    image side it becomes ``min(crop_sizes)``, or the shorter side when even
    that does not fit. With probability 1/2 the top-left corner is a transition
    (128) pixel among those that keep the crop inside the image (any such pixel
    when there is none), otherwise any such pixel.
    """
    height, width = trimap.shape
    shorter = min(height, width)
    side = int(crop_sizes[int(rng.integers(len(crop_sizes)))])
    if side > shorter:
        side = min(int(min(crop_sizes)), shorter)
    corners = trimap[:height - side + 1, :width - side + 1]
    positions = None
    if rng.random() < 0.5:
        positions = np.flatnonzero(corners == UNKNOWN)
    if positions is None or positions.size == 0:
        flat = int(rng.integers(corners.size))
    else:
        flat = int(positions[int(rng.integers(positions.size))])
    top, left = divmod(flat, corners.shape[1])
    return top, left, side


def augment(arrays: dict[str, np.ndarray], trimap: np.ndarray, rng: np.random.Generator,
            image_size: int = DEFAULT_IMAGE_SIZE,
            crop_sizes: Sequence[int] = DEFAULT_CROP_SIZES) -> dict[str, np.ndarray]:
    """Crop, flip and resize same-sized arrays and their trimap together.

    Args:
        arrays: name -> (H, W) or (H, W, C) uint8 arrays of one sample.
        trimap: (H, W) uint8 in {0, 128, 255}.

    Returns:
        the same names plus ``trimap``, each (image_size, image_size[, C]) uint8.
    """
    import cv2

    top, left, side = choose_crop(trimap, rng, crop_sizes)
    flip = rng.random() < 0.5
    out = {}
    for name, array in {**arrays, "trimap": trimap}.items():
        crop = array[top:top + side, left:left + side]
        if flip:
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop)
        if side != image_size:
            crop = cv2.resize(crop, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
        out[name] = crop
    return out


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


class P3MTrainDataset(Dataset):
    """Augmented training samples of ``ROOT/train`` (P3M-10k layout).

    ``dataset[index]`` or ``dataset[(index, seed)]`` returns a dict of uint8 tensors:
    ``image`` (3, S, S) RGB, ``alpha`` (1, S, S), ``trimap`` (1, S, S) (0/128/255 and
    blended values on region borders) and, when ``use_fgbg``, ``fg`` and ``bg`` (3, S, S),
    with S = ``image_size``. A plain index draws fresh randomness.

    With ``copy_paste`` the sample also has ``face_mask`` (1, S, S), 0 or 255 (the
    augmented face mask, 0 where a sample has none); with image-level copy-paste
    ``image`` (and ``fg``) may carry a public face inside it; with feature-level
    copy-paste ``cp_fcp`` () bool says whether the sample gets one, ``cp_source``
    (3, S, S) uint8 is that face image resized to S x S and ``cp_box`` (4,) int64
    its face box (top, left, bottom, right) in it.

    Args:
        use_fgbg: load fg/bg for the composition loss; ``None`` loads them when
            every sample has both.
        copy_paste: P3M-CP settings, or None.

    Raises:
        DatasetError: as :func:`find_train_files`; ``use_fgbg=True`` without fg/bg for every sample;
            ``copy_paste`` without any face mask in ``train/facemask``.
    """

    def __init__(self, root: str | os.PathLike, image_size: int = DEFAULT_IMAGE_SIZE,
                 crop_sizes: Sequence[int] = DEFAULT_CROP_SIZES,
                 kernel_sizes: tuple[int, int] = TRAIN_KERNEL_SIZES, use_fgbg: bool | None = None,
                 copy_paste: CopyPaste | None = None):
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
        if not crop_sizes or min(crop_sizes) < 1:
            raise ValueError(f"crop_sizes must be positive sides, got {list(crop_sizes)}")
        if not 1 <= kernel_sizes[0] <= kernel_sizes[1]:
            raise ValueError(f"kernel_sizes must be (low, high) with 1 <= low <= high, got {kernel_sizes}")
        self.root = Path(root)
        self.files = find_train_files(root)
        if use_fgbg and not self.files.has_fgbg:
            raise DatasetError(f"{layout.get_split(layout.TRAIN).root(root)}: fg/bg found for "
                               f"{self.files.fgbg_count} of {len(self.files.samples)} samples; "
                               f"run `p3m dataset prepare {root}` to estimate them")
        self.use_fgbg = self.files.has_fgbg if use_fgbg is None else bool(use_fgbg)
        if copy_paste is not None and not self.files.face_mask_count:
            folder = layout.get_split(layout.TRAIN).folder(root, layout.FACE_MASK)
            state = "no face mask of a training image in it" if folder.is_dir() else "missing"
            raise DatasetError(f"{folder}: {state}; P3M-CP pastes faces where the P3M-10k face masks "
                               f"(train/facemask) put them")
        self.copy_paste = copy_paste
        self.image_size = int(image_size)
        self.crop_sizes = tuple(int(side) for side in crop_sizes)
        self.kernel_sizes = (int(kernel_sizes[0]), int(kernel_sizes[1]))

    @property
    def samples(self) -> list[TrainSample]:
        return self.files.samples

    def __len__(self) -> int:
        return len(self.files.samples)

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The decoded files of one sample (each read once): image (H, W, 3), alpha (H, W), fg, bg."""
        sample = self.files.samples[index]
        arrays = {"image": read_image(sample.image), "alpha": read_mask(sample.alpha)}
        if self.use_fgbg:
            arrays["fg"] = read_image(sample.fg)
            arrays["bg"] = read_image(sample.bg)
        height, width = arrays["image"].shape[:2]
        if self.copy_paste is not None:
            arrays["face_mask"] = (read_mask(sample.face_mask) if sample.face_mask is not None
                                   else np.zeros((height, width), np.uint8))
        for name, array in arrays.items():
            if array.shape[:2] != (height, width):
                path = getattr(sample, name)
                raise DatasetError(f"{path}: size {array.shape[1]}x{array.shape[0]} differs from "
                                   f"{sample.image} ({width}x{height})")
        return arrays

    def _load_readable(self, index: int) -> dict[str, np.ndarray]:
        """:meth:`load` of ``index``, or of the next readable sample when a file cannot be read.

        One unreadable file should not end a long run: it is reported (one warning line)
        and the following sample takes its place, so the replacement is deterministic.

        Raises:
            DatasetError: ``MAX_REPLACEMENTS`` samples in a row (or all of them) are unreadable.
        """
        tries = min(len(self), MAX_REPLACEMENTS + 1)
        for attempt in range(tries):
            candidate = (index + attempt) % len(self)
            try:
                return self.load(candidate)
            except ImageReadError as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                if attempt + 1 < tries:
                    replacement = self.samples[(candidate + 1) % len(self)].image
                    logger.warning("data: %s; sample skipped, %s used instead", reason, replacement.name)
        raise DatasetError(f"{self.samples[index].image}: this and the next {tries - 1} training sample(s) "
                           f"cannot be read (last: {reason})")

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        if isinstance(key, tuple):
            index, seed = key
            parts = [int(part) for part in seed]
            rng, cp_rng = np.random.default_rng(parts), np.random.default_rng([*parts, _COPY_PASTE_STREAM])
        else:
            index, rng, cp_rng = int(key), np.random.default_rng(), np.random.default_rng()
        arrays = self._load_readable(index)
        low, high = self.kernel_sizes
        trimap = trimap_from_alpha(arrays["alpha"], int(rng.integers(low, high + 1)))
        out = augment(arrays, trimap, rng, self.image_size, self.crop_sizes)
        extra = {}
        if self.copy_paste is not None:
            out, extra = self._paste(out, cp_rng)
        return {**{name: _to_tensor(array) for name, array in out.items()}, **extra}

    def _paste(self, out: dict[str, np.ndarray], rng: np.random.Generator):
        """P3M-CP on an augmented sample: ``(arrays, feature-level tensors)``. Two draws decide, in
        this order, image-level and feature-level pasting; a sample without a face gets neither."""
        import cv2

        settings = self.copy_paste
        face_mask = out["face_mask"] >= FACE_THRESHOLD
        out = {**out, "face_mask": face_mask.astype(np.uint8) * 255}
        has_face = bool(face_mask.any())
        icp = settings.icp and rng.random() < settings.prob_icp and has_face
        fcp = settings.fcp and rng.random() < settings.prob_fcp and has_face
        if icp:
            face = self._draw_face(rng)
            for name in ("image", "fg"):
                if name in out:
                    out[name] = paste_face_uint8(out[name], face_mask, face.image, face.box)
        if not settings.fcp:
            return out, {}
        side = self.image_size
        source, box = np.zeros((side, side, 3), np.uint8), (0, 0, side, side)
        if fcp:
            face = self._draw_face(rng)
            source = cv2.resize(face.image, (side, side), interpolation=cv2.INTER_AREA)
            box = scale_box(face.box, face.image.shape[:2], (side, side))
        return out, {"cp_fcp": torch.tensor(fcp), "cp_source": _to_tensor(source),
                     "cp_box": torch.tensor(box, dtype=torch.int64)}

    def _draw_face(self, rng: np.random.Generator) -> Face:
        """A random source face; an unreadable one is reported and the next one taken.

        Raises:
            DatasetError: ``MAX_REPLACEMENTS`` faces in a row (or all of them) are unreadable.
        """
        faces = self.copy_paste.faces
        first = int(rng.integers(len(faces)))
        tries = min(len(faces), MAX_REPLACEMENTS + 1)
        reason = ""
        for attempt in range(tries):
            try:
                return faces.load((first + attempt) % len(faces))
            except ImageReadError as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                logger.warning("P3M-CP: %s; face skipped", reason)
        raise DatasetError(f"{faces.folder}: {tries} face image(s) in a row cannot be read (last: {reason})")


class TrainSampler(Sampler):
    """Yields ``(index, seed)`` keys for one process of a (possibly distributed) run.

    Each epoch is a permutation of the dataset seeded by ``(seed, epoch)``, cut into
    ``steps_per_epoch`` global batches of ``batch_size * world_size`` samples (the
    remainder is dropped); process ``rank`` takes its ``batch_size`` slice of each.
    Sample ``p`` of the epoch gets the augmentation seed ``(seed, epoch, p)``, so what
    a global batch holds does not depend on the number of processes.
    ``set_epoch(epoch, start_step)`` skips the first ``start_step`` batches (resuming).
    """

    def __init__(self, size: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler settings: batch_size={batch_size}, world_size={world_size}, rank={rank}")
        self.size, self.batch_size, self.world_size, self.rank = size, batch_size, world_size, rank
        self.seed, self.shuffle = int(seed), shuffle
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = size // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{size} training samples are fewer than one global batch of {self.global_batch}")
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.size)

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        order = self.order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            first = step * self.global_batch + self.rank * self.batch_size
            for position in range(first, first + self.batch_size):
                yield int(order[position]), (self.seed, self.epoch, position)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size


def worker_init(_worker_id: int, log_path: Path | None = None) -> None:
    """Keep each data-loader worker on one thread (the workers are the parallelism); with
    ``log_path``, its warnings (e.g. an unreadable sample) also go to that log."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if log_path is not None:
        from p3m.train.logs import attach_train_log

        attach_train_log(log_path)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch))
