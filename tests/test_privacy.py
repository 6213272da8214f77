"""Face detection, obfuscation and verification on real portraits and synthetic cases."""
from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from p3m import privacy
from p3m.io import read_image
from p3m.privacy import Face
from p3m.privacy.detector import MODEL_PATH, MODEL_SHA256
from p3m.privacy.obfuscate import DEFAULT_FEATHER, DEFAULT_MARGIN, FILL_COLOR
from p3m.privacy.pipeline import TIGHT_FEATHER, TIGHT_MARGIN

PORTRAITS = Path(__file__).parent / "fixtures" / "portraits"
# Faces annotated by eye on the fixtures: (centre x, centre y, height from hairline to chin).
VISIBLE = {
    "p_07141906": (610, 290, 115),
    "p_bac3c1ff": (595, 140, 125),
    "p_819ea202": (260, 130, 70),  # the small face
    "astronaut": (225, 120, 115),
}
# Face-blurred in the official data (p_22fc0130, p_015cd10e) or no face in view.
WITHOUT_FACES = ("p_22fc0130", "p_015cd10e", "p_a09f6d7a", "p_0865636e")


@functools.lru_cache(maxsize=None)
def load(name: str) -> np.ndarray:
    image = data.astronaut() if name == "astronaut" else read_image(PORTRAITS / f"{name}.jpg")
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=None)
def faces_of(name: str) -> tuple[Face, ...]:
    return tuple(privacy.detect_faces(load(name)))


def centre(face: Face) -> tuple[float, float]:
    x0, y0, x1, y1 = face.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def ellipse_radius(face: Face, shape) -> np.ndarray:
    """Normalised radius of every pixel centre w.r.t. the face's obfuscation ellipse."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return privacy.face_ellipse(face).radius(xs + 0.5, ys + 0.5)


def shifted(face: Face, dx: float, dy: float) -> Face:
    x0, y0, x1, y1 = face.box
    return Face((x0 - dx, y0 - dy, x1 - dx, y1 - dy), face.score,
                tuple((x - dx, y - dy) for x, y in face.landmarks))


# --- detection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VISIBLE)
def test_visible_face_is_found_where_annotated(name):
    faces = faces_of(name)
    assert len(faces) == 1
    (face,) = faces
    cx, cy, height = VISIBLE[name]
    x, y = centre(face)
    assert math.hypot(x - cx, y - cy) < 0.25 * height
    assert 0.7 < (face.box[3] - face.box[1]) / height < 1.4
    assert face.score >= 0.75
    (left_eye, right_eye, nose, mouth_left, mouth_right) = face.landmarks
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    x0, y0, x1, y1 = face.box
    assert all(x0 <= px <= x1 and y0 <= py <= y1 for px, py in face.landmarks)


@pytest.mark.parametrize("name", WITHOUT_FACES)
def test_no_face_in_blurred_or_faceless_portraits(name):
    assert faces_of(name) == ()


def test_faces_come_back_in_original_pixels_at_any_resolution():
    image = load("p_819ea202")
    (reference,) = faces_of("p_819ea202")
    for scale in (0.5, 2.5):
        resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        (face,) = privacy.detect_faces(resized)
        expected = [v * scale for v in reference.box]
        assert iou(face.box, expected) > 0.75, (scale, face.box, expected)


def test_lower_threshold_finds_at_least_as_much():
    image = load("p_07141906")
    counts = [len(privacy.detect_faces(image, threshold)) for threshold in (0.9, 0.5, 0.2, 0.05)]
    assert counts == sorted(counts) and counts[1] == 1 and counts[-1] > 1
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="threshold"):
            privacy.detect_faces(image, bad)


def test_several_faces():
    astronaut = load("astronaut")
    tiled = np.concatenate([np.concatenate([astronaut, astronaut[:, ::-1]], axis=1),
                            np.concatenate([astronaut[:, ::-1], astronaut], axis=1)], axis=0)
    faces = privacy.detect_faces(tiled)
    assert len(faces) == 4
    quadrants = sorted((int(centre(f)[1] // 512), int(centre(f)[0] // 512)) for f in faces)
    assert quadrants == [(0, 0), (0, 1), (1, 0), (1, 1)]
    result = privacy.anonymize(tiled)
    assert result.verified and len(result.faces) == 4
    mask = privacy.face_mask(tiled.shape, faces)
    assert all(mask[int(centre(f)[1]), int(centre(f)[0])] == 255 for f in faces)


@pytest.mark.parametrize("cut", [(215, 0), (0, 100)], ids=["left", "top"])
def test_face_cut_by_the_border(cut):
    dx, dy = cut
    (reference,) = faces_of("astronaut")
    image = np.ascontiguousarray(load("astronaut")[dy:, dx:])
    (face,) = privacy.detect_faces(image)
    assert face.box[0] < 5 if dx else face.box[1] < 5
    truth = privacy.face_mask(image.shape, [shifted(reference, dx, dy)], margin=0.0) > 0
    covered = privacy.face_mask(image.shape, [face]) > 0
    assert truth.sum() > 3000
    assert (truth & covered).sum() / truth.sum() > 0.95
    assert privacy.anonymize(image).verified


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (31, 33), (64, 48)])
def test_tiny_and_faceless_images(shape):
    image = np.full(shape + (3,), 128, dtype=np.uint8)
    assert privacy.detect_faces(image) == []
    result = privacy.anonymize(image)
    assert result.verified and result.faces == [] and np.array_equal(result.image, image)
    assert np.array_equal(privacy.face_mask(image.shape, []), np.zeros(shape, np.uint8))
    assert privacy.detect_faces(np.zeros((0, 4, 3), np.uint8)) == []


def test_noise_has_no_face():
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert privacy.detect_faces(noise) == []


def test_grayscale_and_rgba_inputs():
    astronaut = load("astronaut")
    (reference,) = faces_of("astronaut")
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    for variant in (gray, rgba):
        (face,) = privacy.detect_faces(variant)
        assert iou(face.box, reference.box) > 0.8


def test_detector_session_is_created_once(monkeypatch):
    import onnxruntime

    privacy.default_detector()
    created = []
    original = onnxruntime.InferenceSession

    def counting(*args, **kwargs):
        created.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    image = load("astronaut")
    privacy.detect_faces(image)
    privacy.anonymize(image)
    privacy.anonymize_for_model(image)
    assert created == []
    assert privacy.default_detector() is privacy.default_detector()


def test_bundled_model_is_intact():
    assert hashlib.sha256(MODEL_PATH.read_bytes()).hexdigest() == MODEL_SHA256


def test_missing_or_corrupt_model(tmp_path):
    with pytest.raises(privacy.DetectorError, match="not found"):
        privacy.FaceDetector(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(privacy.DetectorError, match="cannot load"):
        privacy.FaceDetector(corrupt)


def test_face_to_dict_is_json_ready():
    (face,) = faces_of("astronaut")
    entry = json.loads(json.dumps(face.to_dict()))
    assert len(entry["box"]) == 4 and len(entry["landmarks"]) == 5
    assert entry["score"] == pytest.approx(face.score, abs=1e-4)
    assert entry["box"] == pytest.approx(list(face.box), abs=0.05)


# --- obfuscation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", privacy.METHODS)
@pytest.mark.parametrize("name", VISIBLE)
def test_obfuscated_faces_are_not_found_again(name, method):
    hidden = privacy.obfuscate(load(name), faces_of(name), method)
    assert privacy.verify(hidden) == []


@pytest.mark.parametrize("method", privacy.METHODS)
def test_pixels_away_from_faces_are_unchanged(method):
    image = load("p_bac3c1ff")
    faces = faces_of("p_bac3c1ff")
    hidden = privacy.obfuscate(image, faces, method)
    assert hidden.shape == image.shape and hidden.dtype == np.uint8
    changed = np.any(hidden != image, axis=2)
    radius = ellipse_radius(faces[0], image.shape)
    assert changed.any()
    assert not (changed & (radius > 1 + DEFAULT_FEATHER + 1e-6)).any()
    # independently of the ellipse: nothing changes beyond the box grown by its own size on each side
    x0, y0, x1, y1 = faces[0].box
    w, h = x1 - x0, y1 - y0
    far = np.ones(image.shape[:2], bool)
    far[max(0, int(y0 - h)): int(y1 + h) + 1, max(0, int(x0 - w)): int(x1 + w) + 1] = False
    assert np.array_equal(hidden[far], image[far])


def test_blur_removes_facial_detail_and_fill_is_flat():
    image = load("astronaut")
    faces = faces_of("astronaut")
    core = privacy.face_mask(image.shape, faces, margin=0.0) > 0
    height = faces[0].box[3] - faces[0].box[1]

    def detail(picture):
        gray = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(np.std((gray - cv2.GaussianBlur(gray, (0, 0), height / 30))[core]))

    blurred = privacy.obfuscate(image, faces, "blur")
    assert detail(blurred) < 0.1 * detail(image)
    filled = privacy.obfuscate(image, faces, "fill")
    assert np.all(filled[core] == FILL_COLOR)
    mosaic = privacy.obfuscate(image, faces, "mosaic")
    assert len(np.unique(mosaic[core].reshape(-1, 3), axis=0)) < 60


def test_face_mask_covers_the_face():
    for name in VISIBLE:
        image, (face,) = load(name), faces_of(name)
        mask = privacy.face_mask(image.shape, [face])
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        assert all(mask[int(y), int(x)] == 255 for x, y in face.landmarks)
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        box = mask[y0:y1, x0:x1]
        assert (box == 255).mean() > 0.85
        assert (mask == 255).sum() < 2.0 * box.size
        # the blur reaches every mask pixel at full strength
        blurred = privacy.obfuscate(image, [face], "fill")
        assert np.all(blurred[mask == 255] == FILL_COLOR)


def test_ellipse_follows_a_tilted_eye_line():
    level = Face((100, 100, 200, 220), 0.9, ((125, 140), (175, 140), (150, 165), (130, 190), (170, 190)))
    tilted = Face(level.box, 0.9, ((125, 130), (175, 150), (150, 165), (130, 190), (170, 190)))
    steep = Face(level.box, 0.9, ((140, 110), (160, 190), (150, 165), (130, 190), (170, 190)))
    assert privacy.face_ellipse(level).angle == pytest.approx(0.0)
    assert privacy.face_ellipse(tilted).angle == pytest.approx(math.atan2(20, 50))
    assert privacy.face_ellipse(steep).angle == pytest.approx(math.atan2(80, 20) - math.pi / 2)  # lying sideways
    for face in (level, tilted, steep):
        ellipse = privacy.face_ellipse(face)
        points = np.asarray(face.landmarks, float)
        assert ellipse.radius(points[:, 0], points[:, 1]).max() <= 1 / (1 + DEFAULT_MARGIN) + 1e-9


def test_landmarks_outside_the_box_grow_the_ellipse():
    face = Face((100, 100, 140, 150), 0.9, ((90, 120), (150, 120), (120, 135), (105, 145), (135, 145)))
    ellipse = privacy.face_ellipse(face)
    assert ellipse.a > 20 * (1 + DEFAULT_MARGIN)
    assert ellipse.radius(np.array([90.0, 150.0]), np.array([120.0, 120.0])).max() <= 1 / (1 + DEFAULT_MARGIN) + 1e-9


def test_obfuscate_rejects_bad_arguments():
    image = load("astronaut")
    with pytest.raises(ValueError, match="unknown obfuscation method"):
        privacy.obfuscate(image, faces_of("astronaut"), "smudge")
    with pytest.raises(ValueError, match="uint8"):
        privacy.obfuscate(image.astype(np.float32), faces_of("astronaut"))


# --- anonymize / privacy mode -----------------------------------------------------------------------


def test_anonymize_reports_faces_before_and_after():
    result = privacy.anonymize(load("p_07141906"), method="mosaic")
    assert len(result.faces) == 1 and result.remaining == [] and result.verified


def test_verification_fails_closed_when_a_face_survives(monkeypatch):
    import p3m.privacy.pipeline as pipeline

    monkeypatch.setattr(pipeline, "obfuscate", lambda image, faces, method: image.copy())
    result = privacy.anonymize(load("astronaut"))
    assert not result.verified and len(result.remaining) == 1


def test_anonymize_for_model():
    image = load("p_bac3c1ff")
    (face,) = faces_of("p_bac3c1ff")
    seen = privacy.anonymize_for_model(image)
    assert seen.shape == image.shape and seen.dtype == np.uint8
    assert privacy.verify(seen) == []
    # the blur stays within the face box's ellipse and a narrow soft edge: the hair around it is left as it is
    assert np.array_equal(seen, privacy.obfuscate(image, [face], "blur", TIGHT_MARGIN, TIGHT_FEATHER))
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    radius = privacy.face_ellipse(face, TIGHT_MARGIN).radius(xs + 0.5, ys + 0.5)
    assert np.array_equal(seen[radius > 1 + TIGHT_FEATHER], image[radius > 1 + TIGHT_FEATHER])
    assert np.count_nonzero(np.any(seen != image, axis=2)) < 0.6 * np.count_nonzero(
        np.any(privacy.obfuscate(image, [face], "blur") != image, axis=2))
    faceless = load("p_a09f6d7a")
    untouched = privacy.anonymize_for_model(faceless)
    assert np.array_equal(untouched, faceless) and untouched is not faceless
    for bad in (image[:, :, 0], image.astype(np.float32), image[:, :, :2]):
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            privacy.anonymize_for_model(bad)


def _suite():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("privacy_suite", PORTRAITS.parent / "privacy_suite.py")
    module = sys.modules.setdefault("privacy_suite", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode, name", [("RGB", "rgb.jpg"), ("RGB", "rgb.png"), ("RGBA", "rgba.png"),
                                        ("RGB", "rgb.tif"), ("RGB", "rgb.webp"), ("L", "gray.png"),
                                        ("CMYK", "cmyk.jpg")])
def test_anonymized_file_is_converted_to_srgb_and_carries_no_profile(tmp_path, monkeypatch, mode, name):
    from PIL import Image

    halves = np.zeros((64, 128, 4), np.uint8)
    halves[:, :64] = (255, 0, 0, 255)  # pure red on the left, pure green on the right
    halves[:, 64:] = (0, 255, 0, 255)
    source, output = tmp_path / name, tmp_path / "out" / name
    profile = _suite().icc_profile("SECRET-PROFILE") if mode in ("RGB", "RGBA") else b"SECRET-PROFILE, not a profile"
    options = {"quality": 95} if name.endswith(".jpg") else {"lossless": True} if name.endswith(".webp") else {}
    Image.fromarray(halves, "RGBA").convert(mode).save(source, icc_profile=profile, **options)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    report = privacy.anonymize_file(source, output)
    monkeypatch.undo()
    lossy = name.endswith(".jpg")  # the JPEG written is read back once, to be searched as encoded
    assert report.status == "no_faces" and len(opened) == 1 + lossy  # one decode of the source
    assert b"SECRET-PROFILE" not in output.read_bytes()
    with Image.open(output) as written:
        assert written.mode == {"CMYK": "RGB"}.get(mode, mode) and "icc_profile" not in written.info
        pixels = np.asarray(written.convert("RGB")).astype(int)
    left, right = pixels[:, :64].mean(axis=(0, 1)), pixels[:, 64:].mean(axis=(0, 1))
    if mode in ("RGB", "RGBA"):  # the profile swaps red and green: converted, the halves trade places
        assert left[1] > left[0] + 100 and right[0] > right[1] + 100
    elif mode == "L":  # an unreadable profile: the pixels are taken as sRGB
        assert np.array_equal(pixels[:, :, 0], np.asarray(Image.fromarray(halves, "RGBA").convert("L")))


# --- search geometry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (300, 8250), (2063, 2750), (2064, 2912), (4125, 5500), (206, 100000),
                                   (20000, 20000)])
def test_tiles_cover_every_face_up_to_the_overlap_whole(shape):
    from p3m.privacy.detector import _OVERLAP, _TILE_PIXELS, _tiles

    tiles = _tiles(shape)
    assert all((rows.stop - rows.start) * (cols.stop - cols.start) <= _TILE_PIXELS for rows, cols in tiles)
    for axis, length in enumerate(shape):
        spans = sorted({tile[axis].start: tile[axis] for tile in tiles}.values(), key=lambda span: span.start)
        assert spans[0].start == 0 and spans[-1].stop == length
        for before, after in zip(spans, spans[1:]):
            assert before.stop - after.start >= _OVERLAP  # a window of _OVERLAP px anywhere lies inside one tile
    if shape[0] * shape[1] <= _TILE_PIXELS:
        assert len(tiles) == 1


def test_fragments_and_repeats_of_one_face_are_merged():
    from p3m.privacy.detector import merge

    points = np.zeros((5, 2))
    whole = (np.array([100.0, 100, 300, 350]), 0.8, points, True)
    fragment = (np.array([150.0, 120, 250, 220]), 0.9, points, False)  # inside the coarse level's box
    repeat = (np.array([104.0, 98, 305, 352]), 0.7, points, False)  # the same face from another tile
    other = (np.array([400.0, 100, 500, 220]), 0.6, points, False)
    faces = merge([fragment, whole, repeat, other])
    assert [face.box for face in faces] == [(100, 100, 300, 350), (400, 100, 500, 220)]


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_turned_faces_are_found_and_mapped_back(turns):
    image = load("p_bac3c1ff")
    (upright,) = faces_of("p_bac3c1ff")
    (face,) = privacy.detect_faces(np.ascontiguousarray(np.rot90(image, turns)))
    height, width = image.shape[:2]
    x0, y0, x1, y1 = upright.box
    corners = np.array([[x0, y0], [x1, y1]])
    for _ in range(turns):  # where the upright box lies in the turned image (counterclockwise turns)
        corners = np.stack([corners[:, 1], width - corners[:, 0]], axis=1)
        height, width = width, height
    expected = (*corners.min(axis=0), *corners.max(axis=0))
    assert iou(face.box, expected) > 0.6
    assert privacy.anonymize(np.ascontiguousarray(np.rot90(image, turns))).verified


def test_a_tile_searched_again_after_a_local_change_finds_what_a_fresh_search_finds(monkeypatch):
    from p3m.privacy.detector import FaceDetector

    suite = _suite()
    photo = suite.background(1600, 2400)
    suite.paste(photo, suite.head("p_bac3c1ff", 90), 300, 500)
    detector = FaceDetector()
    (first,) = detector(photo)
    changed = privacy.obfuscate(photo, [first], "blur")
    suite.paste(changed, suite.head("p_07141906", 70), 1800, 900)  # a face where there was none

    searched = []
    run = FaceDetector._run
    monkeypatch.setattr(FaceDetector, "_run",
                        lambda self, tile, *args: searched.append(tile.size) or run(self, tile, *args))
    again = detector(changed)
    windowed, searched[:] = sum(searched), []
    fresh = FaceDetector()(changed)
    assert windowed < 0.5 * sum(searched)
    assert len(again) == len(fresh) == 1 and iou(again[0].box, fresh[0].box) > 0.95
    assert 1800 < centre(again[0])[0] < 1800 + 70 * 2.6


@pytest.mark.parametrize("name, searched_again", [("photo.jpg", True), ("photo.gif", True), ("photo.png", False)])
def test_a_lossy_output_is_searched_as_encoded(tmp_path, monkeypatch, name, searched_again):
    """Verification passes on the pixels given to the encoder; a face detectable only in the encoded
    JPEG or GIF still means nothing is written, and an earlier output is removed."""
    from PIL import Image

    from p3m.privacy import files

    source, output = tmp_path / name, tmp_path / "out" / name
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(source)
    output.parent.mkdir()
    output.write_bytes(b"an earlier run's output")
    searched = []

    def detect(frame, threshold, detector):
        searched.append(frame.image.shape)
        return [Face((4, 4, 40, 40), 0.51, ((20, 20),) * 5)] if len(searched) > 2 else []  # found only after detection + check

    monkeypatch.setattr(files, "_detect", detect)
    report = privacy.anonymize_file(source, output)
    if searched_again:
        assert report.status == "not_anonymized" and "once encoded" in report.error and "0.51" in report.error
        assert not output.exists() and report.output is None
        assert list(output.parent.iterdir()) == []  # no temporary left either
    else:
        assert report.status == "no_faces" and len(searched) == 2
        assert output.read_bytes() != b"an earlier run's output"
