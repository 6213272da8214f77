"""How much privacy mode changes the matte around the face: alpha of ``Matter(privacy=True)`` against normal mode.

On the test portraits with visible faces (tests/fixtures/portraits), with the
deterministic ResNet-34 checkpoint the tests use (built by
tests/fixtures/make_checkpoint.py from tests/fixtures/r34_manifest.json, or
``--weights``), each portrait is matted in normal mode, in privacy mode, and
with the network's input blurred as ``p3m anonymize`` blurs (ellipse 20%
larger than the face box, soft edge a quarter of its axes: what privacy mode
did before its blur was narrowed). The absolute alpha difference from normal
mode (alpha in [0, 1]) is summarised inside the detected face boxes, in the
ring around them up to 1.5 times their size (where the hair and the head's
outline lie, and the anonymizer's blur reaches), and everywhere else.

    python scripts/bench_privacy_edge.py [--weights r34.pth] [--method hybrid]
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PORTRAITS = ("p_07141906", "p_bac3c1ff", "p_819ea202")  # a visible face each


def build_checkpoint(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_checkpoint", FIXTURES / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(FIXTURES / "r34_manifest.json"), str(path))
    return path


def regions(shape: tuple[int, int], boxes: list) -> dict[str, np.ndarray]:
    """(H, W) bool masks: ``face box``, ``ring`` (the boxes grown to 1.5 times their size, less the boxes)
    and ``outside``."""
    def inside(grow: float) -> np.ndarray:
        mask = np.zeros(shape, dtype=bool)
        for x0, y0, x1, y1 in boxes:
            cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * grow, (y1 - y0) / 2 * grow
            mask[max(0, int(cy - half_h)): max(0, int(np.ceil(cy + half_h))),
                 max(0, int(cx - half_w)): max(0, int(np.ceil(cx + half_w)))] = True
        return mask

    face, padded = inside(1.0), inside(1.5)
    return {"face box": face, "ring": padded & ~face, "outside": ~padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the tests' deterministic ResNet-34)")
    parser.add_argument("--method", default="hybrid", choices=("hybrid", "resize"))
    args = parser.parse_args()

    from p3m.inference import Matter
    from p3m.io import read_image
    from p3m.privacy import detect_faces, obfuscate

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or build_checkpoint(Path(tmp) / "r34.pth")
        normal = Matter("resnet34", weights=weights, method=args.method, device="cpu")
        private = normal.with_options(privacy=True)
        print("| portrait | region | pixels | privacy mode: mean abs alpha difference | max | "
              "network input blurred as p3m anonymize blurs: mean | max |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in PORTRAITS:
            image = read_image(FIXTURES / "portraits" / f"{name}.jpg")
            faces = detect_faces(image)
            reference = normal.predict(image).alpha
            tight = np.abs(private.predict(image).alpha - reference)
            wide = np.abs(normal.predict(obfuscate(image, faces, "blur")).alpha - reference)
            for region, mask in regions(image.shape[:2], [face.box for face in faces]).items():
                print(f"| {name} | {region} | {mask.sum()} | {tight[mask].mean():.4f} | {tight[mask].max():.3f} | "
                      f"{wide[mask].mean():.4f} | {wide[mask].max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
