"""Recall of the face detector by face size, on a set generated from the test portraits, two code versions.

The set (seeded, built by this version's code): four 4000x3000 photos, each
with 10 faces of every size in SIZES (px, hairline to chin) at random
positions, and two copies of each face blurred as p3m blurs it (the P3M-10k
look: negatives), on faceless backgrounds from tests/fixtures/portraits; and a
7000x2000 photo whose faces lie across the seams of the detector's finest
tiles. The faces are the fixtures' three visible faces, mirrored at random.
Each version (``PYTHONPATH`` set to its ``src``) detects faces in every photo
in a process of its own, at the default threshold. A face is found when a
detection's centre lies within half its height of the face's centre and the
detection is 0.5 to 2 times as tall; every other detection is a false
positive, and counted under "blurred" when it lies on a blurred face.

    python scripts/bench_face_recall.py [--before OLD/src] [--seed 0]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (16, 20, 24, 32, 48, 64, 96)
PHOTOS, PER_SIZE, BLURRED_PER_SIZE = 4, 10, 2
BACKGROUNDS = ("p_0865636e", "p_a09f6d7a")  # no face in view

DETECT = r"""
import json, sys
from p3m.io import read_image
from p3m.privacy import detect_faces
for path in sys.argv[1:]:
    faces = detect_faces(read_image(path))
    print(json.dumps([face.box for face in faces]), flush=True)
"""


def _suite():
    spec = importlib.util.spec_from_file_location("privacy_suite", ROOT / "tests" / "fixtures" / "privacy_suite.py")
    module = sys.modules.setdefault("privacy_suite", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def _blurred_portraits(suite) -> dict[str, np.ndarray]:
    """The visible-face portraits with their faces blurred by this version of p3m."""
    from p3m.privacy import detect_faces, obfuscate

    blurred = {}
    for name in suite.FACES:
        image = suite.portrait(name)
        blurred[name] = obfuscate(image, detect_faces(image), "blur")
    return blurred


def _head(suite, name: str, face_height: int, blurred: dict, rng, hidden: bool) -> np.ndarray:
    patch = suite.head(name, face_height, image=blurred[name] if hidden else None)
    return np.ascontiguousarray(patch[:, ::-1]) if rng.random() < 0.5 else patch


def _place(occupied: list, size: tuple[int, int], shape: tuple[int, int], rng) -> tuple[int, int]:
    """A random top-left corner where a patch of ``size`` (h, w) overlaps no occupied box."""
    for _ in range(10_000):
        y, x = int(rng.integers(0, shape[0] - size[0])), int(rng.integers(0, shape[1] - size[1]))
        if all(x + size[1] <= x0 or x1 <= x or y + size[0] <= y0 or y1 <= y for x0, y0, x1, y1 in occupied):
            occupied.append((x, y, x + size[1], y + size[0]))
            return x, y
    raise RuntimeError("no room left for a face")


def make_set(folder: Path, seed: int) -> list[dict]:
    """Write the photos; returns one entry per photo: path, planted faces and blurred faces (cx, cy, h)."""
    from PIL import Image

    suite = _suite()
    rng = np.random.default_rng(seed)
    blurred = _blurred_portraits(suite)
    names = list(suite.FACES)
    photos = []

    def plant(photo, occupied, size, x=None, y=None, hidden=False):
        patch = _head(suite, names[int(rng.integers(len(names)))], size, blurred, rng, hidden)
        if x is None:
            x, y = _place(occupied, patch.shape[:2], photo.shape[:2], rng)
        suite.paste(photo, patch, x, y)
        return (x + 1.3 * size, y + 1.8 * size, size)

    for index in range(PHOTOS):
        background = suite.portrait(BACKGROUNDS[index % len(BACKGROUNDS)])
        if index // len(BACKGROUNDS) % 2:
            background = background[:, ::-1]
        photo = cv2.resize(background, (4000, 3000), interpolation=cv2.INTER_CUBIC)
        occupied, faces, negatives = [], [], []
        for size in sorted(SIZES, reverse=True):
            faces += [plant(photo, occupied, size) for _ in range(PER_SIZE)]
            negatives += [plant(photo, occupied, size, hidden=True) for _ in range(BLURRED_PER_SIZE)]
        photos.append({"path": folder / f"photo{index}.png", "faces": faces, "blurred": negatives})
        Image.fromarray(photo).save(photos[-1]["path"])

    width, height = 7000, 2000
    photo, faces = suite.background(height, width), []
    for seam in suite.tile_seams(width, height):
        top = 40
        for size in SIZES:
            faces.append(plant(photo, [], size, int(seam - 1.3 * size), top))
            top += int(4.35 * size) + 20
    photos.append({"path": folder / "seams.png", "faces": faces, "blurred": []})
    Image.fromarray(photo).save(photos[-1]["path"])
    return photos


def detect(src: Path, photos: list[dict]) -> list[list]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", DETECT, *(str(photo["path"]) for photo in photos)], env=env,
                          capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.strip().splitlines()]


def _matches(box, face) -> bool:
    cx, cy, size = face
    x0, y0, x1, y1 = box
    return (abs((x0 + x1) / 2 - cx) <= size / 2 and abs((y0 + y1) / 2 - cy) <= size / 2
            and 0.5 * size <= y1 - y0 <= 2 * size)


def score(photos: list[dict], detections: list[list]) -> dict:
    """Found faces per size, false positives and detections on blurred faces."""
    found = {size: 0 for size in SIZES}
    planted = {size: 0 for size in SIZES}
    false_positives = blurred = 0
    for photo, boxes in zip(photos, detections):
        for face in photo["faces"]:
            planted[face[2]] += 1
            found[face[2]] += any(_matches(box, face) for box in boxes)
        for box in boxes:
            if not any(_matches(box, face) for face in photo["faces"]):
                false_positives += 1
                blurred += any(_matches(box, face) for face in photo["blurred"])
    return {"planted": planted, "found": found, "false_positives": false_positives, "blurred": blurred}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="src folder of a version to compare with")
    parser.add_argument("--after", type=Path, default=ROOT / "src", help="src folder of this version (default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    versions = {"after": args.after, **({"before": args.before} if args.before else {})}
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_set(Path(tmp), args.seed)
        results = {name: score(photos, detect(src, photos)) for name, src in versions.items()}
    labels = [name for name in ("before", "after") if name in results]
    print("| face height (px) | faces | " + " | ".join(f"{label}: found | {label}: recall" for label in labels) + " |")
    print("| --- | --- |" + " --- | --- |" * len(labels))
    for size in SIZES:
        cells = []
        for label in labels:
            found, planted = results[label]["found"][size], results[label]["planted"][size]
            cells.append(f"{found} | {found / planted:.0%}")
        print(f"| {size} | {results['after']['planted'][size]} | " + " | ".join(cells) + " |")
    count = len(photos)
    for label in labels:
        result = results[label]
        print(f"{label}: {result['false_positives'] / count:.2f} false positives per photo "
              f"({result['false_positives']} in {count} photos, {result['blurred']} of them on the "
              f"{sum(len(photo['blurred']) for photo in photos)} blurred faces)")


if __name__ == "__main__":
    main()
