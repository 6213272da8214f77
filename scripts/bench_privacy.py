"""Cost of anonymizing a 12 MP photo, a 48 MP photo and a 12000x300 panorama, two code versions in one run.

Each measurement runs in a fresh process (``PYTHONPATH`` set to the version's
``src``), the versions alternating, after a warm-up that loads the detector;
it times ``p3m.privacy.anonymize_file`` (decode, detect, obfuscate, verify,
encode). The images are built from tests/fixtures/portraits: four faces 40-300
px tall (in a 4000 px wide photo; scaled with the photo) pasted on a faceless
photo, and 66 faces 69 px tall in the panorama.

    git worktree add /tmp/p3m-main main   # the version to compare with
    python scripts/bench_privacy.py --before /tmp/p3m-main/src [--repeat 1]
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

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from p3m import privacy
privacy.detect_faces(np.zeros((64, 64, 3), np.uint8) + 100)  # load the model
source, output = Path(sys.argv[1]), Path(sys.argv[2])
start = time.perf_counter()
report = privacy.anonymize_file(source, output)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "status": report.status, "faces": len(report.faces)}))
"""


def _suite():
    spec = importlib.util.spec_from_file_location("privacy_suite", ROOT / "tests" / "fixtures" / "privacy_suite.py")
    module = sys.modules.setdefault("privacy_suite", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def make_images(folder: Path) -> dict[str, Path]:
    import cv2
    import numpy as np
    from PIL import Image

    suite = _suite()
    names = list(suite.FACES)
    images = {}
    for label, (height, width) in (("12 MP photo", (3000, 4000)), ("48 MP photo", (6000, 8000))):
        photo = suite.background(height, width)
        for index, face_height in enumerate((40, 64, 120, 300)):
            patch = suite.head(names[index % 3], face_height * width / 4000)
            suite.paste(photo, patch, int(width * (0.1 + 0.2 * index)), int(height * 0.3))
        images[label] = folder / f"{label.split()[0]}MP.jpg"
        Image.fromarray(photo).save(images[label], quality=95)
    heads = [cv2.resize(suite.head(names[i % 3], 69), (180, 300), interpolation=cv2.INTER_AREA) for i in range(66)]
    strip = np.concatenate([*heads, suite.background(300, 12000 - 66 * 180)], axis=1)
    images["12000x300 panorama"] = folder / "panorama.png"
    Image.fromarray(strip).save(images["12000x300 panorama"])
    return images


def measure(src: Path, image: Path, output: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(image), str(output)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="src folder of the version to compare with")
    parser.add_argument("--after", type=Path, default=ROOT / "src", help="src folder of this version (default)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp))
        print("| image | before: seconds (faces found, status) | after: seconds (faces found, status) | after/before |")
        print("| --- | --- | --- | --- |")
        for label, image in images.items():
            runs = {"before": [], "after": []}
            for _ in range(args.repeat):
                for version in ("before", "after"):
                    runs[version].append(measure(getattr(args, version), image, Path(tmp) / f"out{image.suffix}"))
            best = {version: min(run["seconds"] for run in values) for version, values in runs.items()}
            found = {version: f"{values[0]['faces']} faces, {values[0]['status']}" for version, values in runs.items()}
            print(f"| {label} | {best['before']:.1f} ({found['before']}) | {best['after']:.1f} ({found['after']}) "
                  f"| {best['after'] / best['before']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
