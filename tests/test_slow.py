"""Heavy checks, run with `pytest -m slow`: full-size inference within the official code's memory."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

OFFICIAL_PEAK_BYTES = 3.0e9  # the official code's peak for a 1080x1620 HYBRID run on CPU

SCRIPT = """
import json, resource, sys, numpy as np, p3m
matter = p3m.Matter(weights=sys.argv[1], model=sys.argv[2], method="hybrid", device="cpu")
image = np.random.default_rng(0).integers(0, 256, (1080, 1620, 3), dtype=np.uint8)
alpha = matter.predict(image).alpha
print(json.dumps({"shape": list(alpha.shape), "finite": bool(np.isfinite(alpha).all()),
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("model, fixture", [("resnet34", "r34_checkpoint"), ("vitae-s", "vitae_checkpoint")])
def test_full_size_hybrid_stays_under_the_official_peak_memory(request, model, fixture):
    checkpoint = request.getfixturevalue(fixture)
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint), model],
                               capture_output=True, text=True, check=True)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1080, 1620] and report["finite"]
    assert report["peak"] < OFFICIAL_PEAK_BYTES
