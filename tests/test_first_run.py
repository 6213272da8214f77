"""The first `p3m matte` after install costs about what the second does: nothing is compiled on first use."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import p3m

SOURCE = Path(p3m.__file__).resolve().parents[1]


def test_first_run_compiles_nothing(tmp_path, r34_checkpoint):
    home = tmp_path / "home"
    numba_cache = home / "numba"
    numba_cache.mkdir(parents=True)
    photo = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    image = np.full((160, 120, 3), (40, 120, 200), np.uint8)
    image[40:, 30:90] = (220, 180, 150)
    Image.fromarray(np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)).save(photo)
    env = {**os.environ, "HOME": str(home), "NUMBA_CACHE_DIR": str(numba_cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))}
    seconds = []
    for run in ("first", "second"):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "p3m", "matte", str(photo), "-o", str(tmp_path / run),
                               "--weights", str(r34_checkpoint), "--quiet"],
                              env=env, capture_output=True, text=True, timeout=600)
        seconds.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / run / "rgba" / "photo.png").is_file()
        assert not [path for path in numba_cache.rglob("*") if path.is_file()], "something was JIT-compiled"
    first, second = seconds
    assert first <= 2 * second + 10, f"first run {first:.1f} s, second {second:.1f} s"
