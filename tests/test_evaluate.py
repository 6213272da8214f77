"""`p3m evaluate` and p3m.evaluation: pairing, problem reports, undefined values, outputs, end to end."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p3m import evaluation, metrics
from p3m.cli import main
from p3m.data import layout
from p3m.data.synth import write_dataset
from p3m.io import read_mask

SHAPE = (48, 64)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def alpha_pair(seed: int, shape=SHAPE):
    """A soft disc as ground truth and a noisy copy as prediction, plus the exact trimap of the ground truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    distance = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    gt = np.clip((shape[0] / 3 - distance) * 40 + 128, 0, 255).astype(np.uint8)
    pred = np.clip(gt.astype(int) + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
    trimap = np.where(gt == 0, 0, np.where(gt == 255, 255, 128)).astype(np.uint8)
    return pred, gt, trimap


@pytest.fixture
def folders(tmp_path):
    """pred/ (mixed extensions), gt/, trimap/, face/ for three images a, b, c."""
    dirs = {name: tmp_path / name for name in ("pred", "gt", "trimap", "face")}
    arrays = {}
    for seed, stem in enumerate("abc"):
        pred, gt, trimap = alpha_pair(seed)
        face = np.zeros(SHAPE, np.uint8)
        face[10:30, 20:40] = 255
        save(dirs["pred"] / f"{stem}{'.png' if stem != 'b' else '.bmp'}", pred)
        save(dirs["gt"] / f"{stem}.png", gt)
        save(dirs["trimap"] / f"{stem}.png", trimap)
        save(dirs["face"] / f"{stem}.tif", face)
        arrays[stem] = (pred, gt, trimap, face)
    return dirs, arrays


def run_cli(*args) -> int:
    return main(["evaluate", *map(str, args)])


def test_scores_match_metrics_and_outputs(folders, tmp_path, capsys):
    dirs, arrays = folders
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    assert run_cli("--pred", dirs["pred"], "--gt", dirs["gt"], "--trimap", dirs["trimap"], "--facemask", dirs["face"],
                   "--json", out_json, "--csv", out_csv) == 0
    report = json.loads(out_json.read_text())
    assert report["count"] == 3 and report["errors"] == [] and report["undefined"] == []
    assert list(report["images"]) == ["a.png", "b.png", "c.png"]
    keys = ["SAD", "MSE", "MAD", "SAD_TRIMAP", "MSE_TRIMAP", "MAD_TRIMAP", "SAD_FG", "SAD_BG", "CONN", "GRAD",
            "SAD_FACE", "MSE_FACE", "MAD_FACE"]
    for stem, (pred, gt, trimap, face) in arrays.items():
        expected = metrics.compute_metrics(pred, gt, trimap, face).values
        assert list(report["images"][f"{stem}.png"]) == keys
        for key in keys:
            assert report["images"][f"{stem}.png"][key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15)
    for key in keys:
        values = [report["images"][name][key] for name in report["images"]]
        assert report["mean"][key] == pytest.approx(sum(values) / 3, rel=1e-12, abs=1e-15)
        assert report["counts"][key] == 3

    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["image"] + keys
    assert [row[0] for row in rows[1:]] == ["a.png", "b.png", "c.png", "(mean)"]
    assert float(rows[2][1]) == report["images"]["b.png"]["SAD"]
    assert float(rows[4][keys.index("GRAD") + 1]) == pytest.approx(report["mean"]["GRAD"], rel=1e-15)

    out = capsys.readouterr().out
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split() and line.split()[0] in keys}
    assert set(table) == set(keys) and all(row[1] == "3" for row in table.values())
    assert float(table["SAD"][0]) == pytest.approx(report["mean"]["SAD"], rel=1e-5)
    assert "3 image(s) scored" in out


def test_problems_are_reported_one_line_each_and_the_rest_is_scored(folders, tmp_path, capsys):
    dirs, arrays = folders
    (dirs["pred"] / "c.png").unlink()                                    # missing prediction
    save(dirs["pred"] / "extra.png", arrays["a"][0])                     # prediction without ground truth
    save(dirs["gt"] / "d.png", np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint8))  # size mismatch with its prediction
    save(dirs["pred"] / "d.png", np.zeros(SHAPE, np.uint8))
    save(dirs["trimap"] / "d.png", np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint8))
    save(dirs["gt"] / "e.png", arrays["a"][1])                           # unreadable prediction
    (dirs["pred"] / "e.png").write_bytes(b"\x89PNG broken")
    save(dirs["trimap"] / "e.png", arrays["a"][2])
    (dirs["trimap"] / "a.png").unlink()                                  # missing trimap
    out_json = tmp_path / "scores.json"

    assert run_cli("--pred", dirs["pred"], "--gt", dirs["gt"], "--trimap", dirs["trimap"], "--fast",
                   "--json", out_json) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5, err
    expected = {
        dirs["gt"] / "c.png": "no prediction",
        dirs["pred"] / "extra.png": "no ground truth",
        dirs["pred"] / "d.png": "differs from ground truth",
        dirs["pred"] / "e.png": "e.png",
        dirs["gt"] / "a.png": "no trimap",
    }
    for path, phrase in expected.items():
        assert sum(f"{path}:" in line and phrase in line for line in err) == 1, (path, err)
    report = json.loads(out_json.read_text())
    assert list(report["images"]) == ["b.png"] and report["count"] == 1 and len(report["errors"]) == 5
    assert report["skipped"] == ["CONN", "GRAD"] and "GRAD" not in report["mean"]


def test_workers_give_the_same_report(folders):
    dirs, arrays = folders
    (dirs["pred"] / "c.png").write_bytes(b"broken")
    args = (dirs["pred"], dirs["gt"], dirs["trimap"], dirs["face"])
    serial = evaluation.evaluate_folders(*args, fast=True)
    parallel = evaluation.evaluate_folders(*args, fast=True, workers=2)
    assert list(serial.images) == ["a.png", "b.png"] and len(serial.errors) == 1
    assert parallel.images == serial.images and parallel.errors == serial.errors


def test_duplicate_stems_are_reported_once(folders, capsys):
    dirs, arrays = folders
    save(dirs["pred"] / "a.tif", arrays["a"][0])
    assert run_cli("--pred", dirs["pred"], "--gt", dirs["gt"], "--fast") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"p3m evaluate: {dirs['pred'] / 'a'}: several prediction files share this name (a.png, a.tif)"]


def test_undefined_values_are_null_and_left_out_of_means(folders, tmp_path, capsys):
    dirs, arrays = folders
    binary = np.zeros(SHAPE, np.uint8)
    binary[:, : SHAPE[1] // 2] = 255
    save(dirs["trimap"] / "c.png", binary)  # no unknown pixels: MSE_TRIMAP / MAD_TRIMAP undefined for c
    out_json, out_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    assert run_cli("--pred", dirs["pred"], "--gt", dirs["gt"], "--trimap", dirs["trimap"], "--fast",
                   "--json", out_json, "--csv", out_csv) == 0
    text = out_json.read_text()
    assert "NaN" not in text and "Infinity" not in text
    report = json.loads(text)
    assert report["images"]["c.png"]["MSE_TRIMAP"] is None and report["images"]["c.png"]["MAD_TRIMAP"] is None
    assert report["counts"]["MSE_TRIMAP"] == 2 and report["counts"]["SAD"] == 3
    defined = [report["images"][name]["MSE_TRIMAP"] for name in ("a.png", "b.png")]
    assert report["mean"]["MSE_TRIMAP"] == pytest.approx(sum(defined) / 2, rel=1e-12)
    assert {(u["image"], u["metric"]) for u in report["undefined"]} == {("c.png", "MSE_TRIMAP"), ("c.png", "MAD_TRIMAP")}
    assert all(u["reason"] == metrics.NO_UNKNOWN for u in report["undefined"])
    rows = {row[0]: row for row in csv.reader(out_csv.open())}
    assert rows["c.png"][rows["image"].index("MSE_TRIMAP")] == ""
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("MSE_TRIMAP"))
    assert line.split()[2] == "2" and "1 undefined: the trimap has no unknown pixels" in line


def test_all_undefined_mean_is_null():
    report = evaluation.EvaluationReport(keys=("MSE_TRIMAP",))
    report.add("x.png", metrics.Scores({"MSE_TRIMAP": float("nan")}, {"MSE_TRIMAP": metrics.NO_UNKNOWN}))
    assert report.to_dict()["mean"] == {"MSE_TRIMAP": None} and report.counts() == {"MSE_TRIMAP": 0}
    assert "undefined" in report.format_table()


@pytest.mark.parametrize("args, message", [
    (["--pred", "x"], "--pred and --gt go together"),
    (["--pred", "x", "--gt", "y", "--dataset", "z"], "not both"),
    (["--dataset", "z"], "--split"),
    ([], "nothing to evaluate"),
    (["--pred", "x", "--gt", "y", "--weights", "w.pth"], "--weights only apply to --dataset"),
    (["--pred", "nowhere", "--gt", "nowhere"], "folder not found"),
    (["--pred", "x", "--gt", "y", "--workers", "0"], "--workers must be at least 1"),
])
def test_usage_errors(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_empty_folders_fail(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    assert run_cli("--pred", tmp_path / "pred", "--gt", tmp_path / "gt") == 1
    assert "0 image(s) scored" in capsys.readouterr().out


# --- dataset form ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_test_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_eval") / "P3M-10k"
    write_dataset(root, count=2, seed=11, size=128, splits=layout.TEST_SPLITS)
    return root


def test_evaluate_dataset_with_a_perfect_predictor(synth_test_root, tmp_path):
    split = layout.get_split("P3M-500-P")
    alphas = split.folder(synth_test_root, "alpha")

    def perfect(image_path: Path) -> np.ndarray:
        return read_mask(alphas / f"{image_path.stem}.png").astype(np.float32) / 255

    saved = tmp_path / "pred"
    report = evaluation.evaluate_dataset(synth_test_root, "P3M-500-P", perfect, save_pred=saved)
    assert report.ok and sorted(report.images) == ["p_00000.png", "p_00001.png"]
    assert report.keys == metrics.metric_keys(trimap=True, face_mask=True)
    assert all(value == 0.0 for scores in report.images.values() for value in scores.values())
    for name in report.images:
        np.testing.assert_array_equal(read_mask(saved / name), read_mask(alphas / name))


def test_evaluate_dataset_reports_bad_predictions_and_input_folders(synth_test_root):
    split = layout.get_split("P3M-500-NP")

    def wrong_size(image_path: Path) -> np.ndarray:
        return np.zeros((10, 10), np.float32)

    report = evaluation.evaluate_dataset(synth_test_root, "P3M-500-NP", wrong_size, fast=True)
    assert not report.images and len(report.errors) == 2
    assert all("differs from ground truth" in line for line in report.errors)
    assert report.keys == metrics.metric_keys(trimap=True, face_mask=False, fast=True)
    with pytest.raises(ValueError, match="choose another folder"):
        evaluation.evaluate_dataset(synth_test_root, "P3M-500-NP", wrong_size,
                                    save_pred=split.folder(synth_test_root, "alpha"))
    with pytest.raises(ValueError, match="not a test split"):
        evaluation.evaluate_dataset(synth_test_root, "train", wrong_size)


def test_evaluate_dataset_end_to_end(synth_test_root, r34_checkpoint, tmp_path, capsys):
    """`p3m evaluate --dataset` with the deterministic official-format ResNet-34 checkpoint."""
    before = sorted(p.relative_to(synth_test_root) for p in synth_test_root.rglob("*"))
    saved, out_json, page = tmp_path / "pred", tmp_path / "scores.json", tmp_path / "report.html"
    assert main(["evaluate", "--dataset", str(synth_test_root), "--split", "P3M-500-P", "--weights",
                 str(r34_checkpoint), "--method", "resize", "--device", "cpu", "--save-pred", str(saved),
                 "--json", str(out_json), "--report", str(page)]) == 0
    report = json.loads(out_json.read_text())
    assert report["count"] == 2 and report["errors"] == []
    assert set(report["mean"]) == set(metrics.metric_keys(trimap=True, face_mask=True))
    split = layout.get_split("P3M-500-P")
    for name, scores in report["images"].items():
        gt = read_mask(split.folder(synth_test_root, "alpha") / name)
        pred = read_mask(saved / name)
        assert pred.shape == gt.shape
        # The float alpha was scored; the saved PNG is it rounded to 8 bits, so the
        # SAD of the PNG is within half a level per pixel of the reported one.
        assert metrics.sad(pred, gt) == pytest.approx(scores["SAD"], abs=gt.size * 0.5 / 255 / 1000)
        assert all(value is not None and math.isfinite(value) and value >= 0 for value in scores.values())
    assert sorted(p.relative_to(synth_test_root) for p in synth_test_root.rglob("*")) == before
    assert "2 image(s) scored" in capsys.readouterr().out

    # The HTML report predicts its worst images again: the error maps show the alpha that was scored.
    from test_reports import Page

    shown = Page(page.read_text())
    worst = sorted(report["images"], key=lambda name: report["images"][name]["SAD"], reverse=True)
    assert len(shown.figures("image")) == len(shown.figures("ground truth")) == 2
    for name, prediction in zip(worst, shown.figures("prediction")):
        np.testing.assert_allclose(prediction[:, :, 0], read_mask(saved / name), atol=1)


# --- dataset form: problems before and during the run ------------------------------------------

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No cached weights (an empty P3M_HOME) and no network."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("P3M_HOME", str(home))
    return home


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("extra, message", [
    ([], "--weights"),  # no weights cached and none downloadable
    (["--model", "foo"], "unknown model 'foo'"),
])
def test_dataset_model_problems_are_one_line(synth_test_root, no_network, capsys, extra, message):
    assert run_cli("--dataset", synth_test_root, "--split", "P3M-500-P", *extra) == 2
    assert message in one_line_error(capsys)
    assert not any(path.is_file() for path in no_network.rglob("*"))


def test_dataset_folders_are_checked_before_the_model(tmp_path, no_network, monkeypatch, capsys):
    import p3m

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the dataset was checked")

    monkeypatch.setattr(p3m, "Matter", no_model)
    assert run_cli("--dataset", tmp_path / "nowhere", "--split", "P3M-500-NP") == 2
    assert "folder not found" in one_line_error(capsys)


@pytest.mark.parametrize("inside", ["", "mask", "mask/sub", "trimap/sub/deeper"])
def test_save_pred_inside_the_split_is_refused(synth_test_root, no_network, monkeypatch, capsys, inside):
    import p3m

    split = layout.get_split("P3M-500-P")
    target = split.root(synth_test_root) / inside
    before = sorted(synth_test_root.rglob("*"))
    with pytest.raises(ValueError, match="inside the dataset's P3M-500-P folder"):
        evaluation.evaluate_dataset(synth_test_root, "P3M-500-P", lambda path: np.zeros((1, 1)), save_pred=target)
    monkeypatch.setattr(p3m, "Matter", lambda *args, **kwargs: pytest.fail("model built"))
    assert run_cli("--dataset", synth_test_root, "--split", "P3M-500-P", "--save-pred", target) == 2
    assert "choose another folder for predictions" in one_line_error(capsys)
    assert sorted(synth_test_root.rglob("*")) == before


def test_save_pred_next_to_the_split_is_accepted(synth_test_root, tmp_path):
    sibling = synth_test_root / "validation" / "predictions"
    try:
        evaluation.check_prediction_folder(synth_test_root, "P3M-500-P", sibling)
    finally:
        assert not sibling.exists()


def test_dataset_run_errors_are_reported_per_sample_and_the_rest_is_scored(synth_test_root, tmp_path):
    split = layout.get_split("P3M-500-NP")
    alphas = split.folder(synth_test_root, "alpha")
    images = sorted(split.folder(synth_test_root, "image").iterdir())

    def flaky(image_path: Path) -> np.ndarray:
        if image_path == images[0]:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nsecond line")
        return read_mask(alphas / f"{image_path.stem}.png").astype(np.float32) / 255

    report = evaluation.evaluate_dataset(synth_test_root, "P3M-500-NP", flaky, fast=True)
    assert list(report.images) == [f"{images[1].stem}.png"]
    assert report.errors == [f"{images[0]}: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"]

    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    report = evaluation.evaluate_dataset(synth_test_root, "P3M-500-NP", flaky, save_pred=blocked / "pred", fast=True)
    assert not report.images and len(report.errors) == 2
    assert all("\n" not in line for line in report.errors)
    assert str(blocked) in report.errors[1] and str(images[0]) in report.errors[0]


def test_dataset_cli_continues_after_a_failed_sample(synth_test_root, monkeypatch, capsys):
    import p3m

    split = layout.get_split("P3M-500-NP")
    alphas = split.folder(synth_test_root, "alpha")
    first = sorted(split.folder(synth_test_root, "image").iterdir())[0]

    class FlakyMatter:
        def __init__(self, **options):
            pass

        def predict(self, path):
            if Path(path) == first:
                raise RuntimeError("out of memory")
            alpha = read_mask(alphas / f"{Path(path).stem}.png").astype(np.float32) / 255
            return type("Result", (), {"alpha": alpha})()

    monkeypatch.setattr(p3m, "Matter", FlakyMatter)
    assert run_cli("--dataset", synth_test_root, "--split", "P3M-500-NP", "--fast") == 1
    captured = capsys.readouterr()
    assert f"p3m evaluate: {first}: RuntimeError: out of memory" in captured.err
    assert "Traceback" not in captured.err and "1 image(s) scored, 1 problem(s)" in captured.out
