"""``--executor ray``: the same bytes, report, summary and exit status as the local executor, and resume."""
from __future__ import annotations

import json
import shutil
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p3m.cli import main
from p3m.io import read_image

ray = pytest.importorskip("ray")

PORTRAITS = Path(__file__).parent / "fixtures" / "portraits"
RAY = ("--executor", "ray", "--workers", "2")


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    """One embedded two-CPU Ray for the module (starting one takes seconds); the executor joins it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="warning")
    yield
    ray.shutdown()


def _portrait(seed: int, height: int = 72, width: int = 56) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), (40, 120, 200), np.uint8)
    image[height // 4:, width // 4: 3 * width // 4] = (220, 180, 150)
    return np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """in/{a.jpg, b.png, sub/c.jpg, sub/d.png, sub/corrupt.jpg}"""
    folder = tmp_path_factory.mktemp("photos") / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_portrait(0)).save(folder / "a.jpg", quality=95)
    Image.fromarray(_portrait(1)).save(folder / "b.png")
    Image.fromarray(_portrait(2, 64, 64)).save(folder / "sub" / "c.jpg", quality=90)
    Image.fromarray(_portrait(3)).convert("L").save(folder / "sub" / "d.png")
    good = (folder / "a.jpg").read_bytes()
    (folder / "sub" / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def _summary(err: str, command: str, out: Path) -> str:
    """The command's summary line, with the output folder left out."""
    line = next(line for line in err.splitlines() if line.startswith(f"p3m {command}: "))
    return line.replace(str(out), "OUT")


def _matte(capsys, photos: Path, out: Path, checkpoint: Path, *extra: str) -> tuple[int, str]:
    status = main(["matte", "--quiet", str(photos), "-o", str(out), "--weights", str(checkpoint),
                   "--method", "resize", "--output", "alpha,rgba,trimap", *extra])
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def local_mattes(photos, r34_checkpoint, tmp_path_factory):
    """The local executor's outputs, exit status and stderr, as the reference."""
    out = tmp_path_factory.mktemp("local") / "out"
    err = StringIO()
    with redirect_stderr(err):
        status = main(["matte", "--quiet", str(photos), "-o", str(out), "--weights", str(r34_checkpoint),
                       "--method", "resize", "--output", "alpha,rgba,trimap"])
    return out, status, err.getvalue()


def test_matte_on_ray_writes_the_bytes_of_the_local_run(photos, r34_checkpoint, local_mattes, tmp_path, capsys):
    local_out, local_status, local_err = local_mattes
    out = tmp_path / "out"
    status, err = _matte(capsys, photos, out, r34_checkpoint, *RAY)
    assert local_status == status == 1, err
    expected = _files(local_out)
    assert len(expected) == 4 * 3
    assert _files(out) == expected
    assert _summary(err, "matte", out) == _summary(local_err, "matte", local_out) == \
        "p3m matte: 4 done, 0 skipped (outputs exist), 1 failed -> OUT"
    assert f"error: {photos / 'sub' / 'corrupt.jpg'}: " in err
    assert "images/s) on 2 worker(s)" in err


def test_matte_on_ray_resumes_an_interrupted_run(photos, r34_checkpoint, local_mattes, tmp_path, capsys):
    local_out = local_mattes[0]
    out = tmp_path / "out"
    # Interrupted: a.jpg finished, b.png has only its alpha, the rest nothing.
    for name in ("alpha/a.png", "rgba/a.png", "trimap/a.png", "alpha/b.png"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local_out / name, out / name)
    before = {name: (out / name).stat().st_mtime_ns for name in ("alpha/a.png", "alpha/b.png")}
    status, err = _matte(capsys, photos, out, r34_checkpoint, *RAY)
    assert status == 1
    assert _summary(err, "matte", out) == "p3m matte: 3 done, 1 skipped (outputs exist), 1 failed -> OUT"
    assert _files(out) == _files(local_out)
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before


def test_executor_options_are_checked(photos, tmp_path, capsys):
    assert main(["matte", str(photos), "-o", str(tmp_path / "out"), "--workers", "2"]) == 2
    assert "--ray-address and --workers need --executor ray" in capsys.readouterr().err
    assert main(["anonymize", str(photos), "-o", str(tmp_path / "out"), *RAY[:2], "--workers", "0"]) == 2
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_anonymize_dataset_on_ray_writes_the_tree_of_the_local_run(tmp_path, capsys):
    root = tmp_path / "shoot"
    (root / "mask" / "sub").mkdir(parents=True)
    (root / "sub").mkdir()
    shutil.copy(PORTRAITS / "p_bac3c1ff.jpg", root / "sub" / "p_bac3c1ff.jpg")
    shutil.copy(PORTRAITS / "p_a09f6d7a.jpg", root / "p_a09f6d7a.jpg")
    Image.fromarray(_portrait(4)).save(root / "no_face.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    for name, photo in (("sub/p_bac3c1ff", "sub/p_bac3c1ff.jpg"), ("p_a09f6d7a", "p_a09f6d7a.jpg"),
                        ("no_face", "no_face.png"), ("broken", None)):
        size = read_image(root / photo).shape[1::-1] if photo else (30, 20)  # a matte has its photo's size
        Image.fromarray(np.full(size[::-1], 200, np.uint8)).save(root / "mask" / f"{name}.png")
    runs = {}
    for executor, options in (("local", ()), ("ray", RAY)):
        out, report = tmp_path / executor, tmp_path / f"{executor}.json"
        status = main(["anonymize", "--quiet", str(root), "-o", str(out), "--dataset", "--report", str(report),
                       *options])
        err = capsys.readouterr().err
        assert f"error: {root / 'broken.jpg'}: " in err
        entries = json.loads(report.read_text().replace(str(out), "OUT"))
        runs[executor] = status, _summary(err, "anonymize", out), entries, _files(out)
    assert runs["ray"] == runs["local"]
    status, summary, entries, files = runs["local"]
    assert status == 1 and [entry["status"] for entry in entries].count("error") == 1
    assert sorted(files) == ["blurred_image/no_face.png", "blurred_image/p_a09f6d7a.jpg",
                             "blurred_image/sub/p_bac3c1ff.jpg", "facemask/no_face.png", "facemask/p_a09f6d7a.png",
                             "facemask/sub/p_bac3c1ff.png", "mask/no_face.png", "mask/p_a09f6d7a.png",
                             "mask/sub/p_bac3c1ff.png"]
