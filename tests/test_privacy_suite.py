"""The adversarial privacy suite (tests/fixtures/privacy_suite.py): every case ends anonymized, with no
face detectable in any output as a viewer sees it, or refused; no planted metadata anywhere; privacy mode
never hands the network an image with a detectable face."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from p3m.cli import main

_spec = importlib.util.spec_from_file_location("privacy_suite", Path(__file__).parent / "fixtures" / "privacy_suite.py")
suite = sys.modules.setdefault("privacy_suite", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(suite)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return {case.name: case for case in suite.build(tmp_path_factory.mktemp("suite"))}


def run_case(case, tmp_path, capsys):
    out, masks, report = tmp_path / "out", tmp_path / "masks", tmp_path / "report.json"
    status = main(["anonymize", *suite.command(case, out, masks, report)])
    captured = capsys.readouterr()
    return suite.check(case, status, out, masks, report, captured.out + captured.err)


# The default run takes one case of each attack; the rest of the suite runs with -m slow.
FAST = ["panorama", "rotated_180", "alpha_face", "frames_gif", "photo_as_mask", "metadata", "raised_threshold"]
SLOW = ["tiny_faces", "rotated_90", "rotated_270", "tile_border", "frames_webp", "frames_png", "frames_tif"]
CASES = [*FAST, *(pytest.param(name, marks=pytest.mark.slow) for name in SLOW)]
IMAGE_CASES = ["panorama", "rotated_180", *(pytest.param(name, marks=pytest.mark.slow) for name in
               ("tiny_faces", "rotated_90", "rotated_270", "tile_border", "alpha_face", "frames_gif", "metadata",
                "raised_threshold"))]


@pytest.mark.parametrize("name", CASES)
def test_case_is_anonymized_or_refused(cases, name, tmp_path, capsys):
    assert run_case(cases[name], tmp_path, capsys) == []


def test_suite_lists_every_case(cases):
    assert sorted(cases) == sorted(FAST + SLOW)


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_privacy_mode_never_shows_the_network_a_face(cases, name, r34_checkpoint, monkeypatch):
    import p3m
    import p3m.inference.matter as matter
    from p3m.io import read_image
    from p3m.privacy import PrivacyError, detect_faces

    seen = []
    working_image = matter._working_image
    monkeypatch.setattr(matter, "_working_image", lambda image, limit: seen.append(image) or working_image(image, limit))
    model = p3m.Matter(weights=r34_checkpoint, method="resize", device="cpu", privacy=True)
    for path in sorted(p for p in cases[name].folder.rglob("*") if p.is_file() and p.parent.name != "mask"):
        image = read_image(path)
        try:
            result = model.predict(image)
        except PrivacyError:
            continue
        assert detect_faces(seen[-1]) == []
        assert np.array_equal(result.image, image) and result.privacy.verified
        assert result.privacy.faces_hidden == len(detect_faces(image))  # what the network would have seen
