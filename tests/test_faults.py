"""The fault suite: data-loss cases, writes escaping OUT, crashes, a full disk, hostile checkpoints.

Each test names the promise it holds (README, "Safety"). The default run kills
a write midway; ``-m slow`` kills the real ``matte``, ``anonymize`` and
``train`` commands (child processes) at seeded random points and reruns them.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p3m.cli import main
from p3m.io import TEMP_PATTERN, output_complete, read_mask

FIXTURES = Path(__file__).parent / "fixtures"


def _portrait(seed: int, height: int = 96, width: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), (40, 120, 200), np.uint8)
    image[height // 4:, width // 4: 3 * width // 4] = (220, 180, 150)
    return np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(_portrait(index)).save(folder / f"photo{index}.jpg", quality=95)
    return folder


def _leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if TEMP_PATTERN.match(path.name)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----------------------------------------------------------------------------- data loss

def test_anonymize_report_naming_an_input_or_output_is_refused_up_front(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", 2)
    before = _snapshot(photos)
    for report in (photos / "photo0.jpg", tmp_path / "out" / "photo1.jpg"):
        assert main(["anonymize", str(photos), "-o", str(tmp_path / "out"), "--report", str(report), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "is an input or an output of this run" in err and err.count("\n") == 1
    assert _snapshot(photos) == before
    assert not (tmp_path / "out").exists()


def test_evaluate_json_or_csv_naming_a_ground_truth_is_refused(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for folder in (pred, gt):
        folder.mkdir()
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(folder / "a.png")
    before = (gt / "a.png").read_bytes()
    for option in ("--json", "--csv"):
        assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), option, str(gt / "a.png"), "--fast"]) == 2
        assert "is one of the files being evaluated" in capsys.readouterr().err
    assert (gt / "a.png").read_bytes() == before


def test_a_glob_whose_folder_holds_out_is_refused(tmp_path, monkeypatch, capsys):
    shoot = _photos(tmp_path / "shoot", 1)
    monkeypatch.chdir(tmp_path)
    for pattern, out in (("shoot/**", "shoot"), ("shoot/**/*.jpg", "shoot/out"), ("shoot/*", "shoot/out"),
                         (str(shoot / "*"), str(shoot / "out" / "deeper"))):
        assert main(["matte", pattern, "-o", out, "--quiet"]) == 2
        assert "a rerun would read the outputs as inputs" in capsys.readouterr().err
    assert sorted(p.name for p in shoot.iterdir()) == ["photo0.jpg"]


def test_out_that_is_a_file_fails_once_before_any_model_loads(tmp_path, capsys, monkeypatch):
    _photos(tmp_path / "in", 3)
    (tmp_path / "out").write_text("not a folder")
    monkeypatch.setenv("P3M_HOME", str(tmp_path / "empty-home"))  # a model load would fail differently
    assert main(["matte", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is a file" in err


def test_impossible_synth_size_is_a_usage_error(tmp_path, capsys):
    assert main(["dataset", "synth", str(tmp_path / "d"), "--size", "100000x100000"]) == 2
    assert "each side from 64 to 8192" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_csv_cells_that_look_like_formulas_are_escaped(tmp_path):
    from p3m.evaluation import evaluate_folders

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM.png", "plain.png"]
    for folder in (pred, gt):
        folder.mkdir()
        for name in names:
            Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / name)
    evaluate_folders(pred, gt, fast=True).write_csv(tmp_path / "scores.csv")
    cells = [line.split(",")[0] for line in (tmp_path / "scores.csv").read_text().splitlines()[1:-1]]
    assert sorted(cells) == sorted(["'=HYPERLINK(1).png", "'+1.png", "'-2.png", "'@SUM.png", "plain.png"])


def test_matter_predict_none_is_a_read_error(r34_checkpoint):
    from p3m import Matter
    from p3m.io import ImageReadError

    with pytest.raises(ImageReadError, match="expected an image file path, bytes.*got NoneType"):
        Matter(weights=r34_checkpoint, device="cpu").predict(None)


# ----------------------------------------------------------------------------- symbolic links

def test_matte_redoes_empty_and_truncated_outputs_and_never_writes_through_a_symlinked_folder(
        tmp_path, r34_checkpoint, capsys):
    photos = _photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    (out / "alpha").mkdir(parents=True)
    (out / "alpha" / "photo0.png").write_bytes(b"")  # what a crash used to leave: skipped as done forever
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(out / "alpha" / "photo1.png")
    whole = (out / "alpha" / "photo1.png").read_bytes()
    (out / "alpha" / "photo1.png").write_bytes(whole[: len(whole) // 2])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "photo0.png").write_bytes(b"precious")
    (out / "rgba").symlink_to(outside)
    status = main(["matte", str(photos), "-o", str(out), "--weights", str(r34_checkpoint), "--quiet",
                   "--output", "alpha,rgba"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("symbolic link") == 2 and "0 done" in err
    assert all(read_mask(out / "alpha" / f"photo{i}.png").shape == (96, 80) for i in range(2))
    assert _snapshot(outside) == {"photo0.png": b"precious"}


def test_anonymize_does_not_write_through_a_symlinked_subfolder(tmp_path, capsys):
    photos = tmp_path / "photos"
    _photos(photos / "sub", 1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)
    assert main(["anonymize", str(photos), "-o", str(out), "--quiet"]) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("swapped", ["out/sub", "masks/sub", "out/mask/sub"])
def test_anonymize_writes_are_guarded_when_a_folder_becomes_a_link_mid_run(tmp_path, capsys, monkeypatch, swapped):
    """Images, face masks and --dataset mattes: a folder of OUT (or of --masks) swapped for a link into the
    inputs after the up-front checks is refused at the write, and nothing of the inputs changes."""
    import p3m.privacy.files as files

    photos = _photos(tmp_path / "photos" / "sub", 1).parent
    argv = ["anonymize", str(photos), "-o", str(tmp_path / "out"), "--quiet"]
    if swapped == "out/mask/sub":
        (photos / "mask" / "sub").mkdir(parents=True)
        Image.fromarray(np.full((96, 80), 255, np.uint8)).save(photos / "mask" / "sub" / "photo0.png")
        argv.append("--dataset")
    else:
        argv += ["--masks", str(tmp_path / "masks")]
    before = _snapshot(photos)
    read_source = files._read_source

    def swap_then_read(path):
        folder = tmp_path / swapped
        if not folder.is_symlink():  # once, when the source is read (a JPEG output is read back too)
            if folder.is_dir():
                folder.rmdir()
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.symlink_to(photos / Path(swapped).relative_to(Path(swapped).parts[0]))
        return read_source(path)

    monkeypatch.setattr(files, "_read_source", swap_then_read)
    assert main(argv) == 1
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "outside the output folder" in error and err.count("\n") == 2
    assert _snapshot(photos) == before


def test_training_logs_are_not_appended_through_links(tmp_path):
    from p3m.io import UnsafeOutputError
    from p3m.train.distributed import DistInfo
    from p3m.train.logs import TEXT_LOG, run_logger

    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / TEXT_LOG).symlink_to(victim)
    log = run_logger(DistInfo(), run)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        log("hello")
    assert victim.read_text() == "keep\n"


def test_symlink_loops_are_one_line_errors_in_every_command(tmp_path, capsys):
    from p3m.data.synth import write_dataset

    root = tmp_path / "data"
    write_dataset(root, 1, size=64, splits=("P3M-500-NP",))
    masks = root / "validation" / "P3M-500-NP" / "mask"
    (masks / "loop.png").symlink_to(masks / "loop.png")
    assert main(["dataset", "trimaps", str(masks), "-o", str(tmp_path / "trimaps")]) == 1
    assert main(["dataset", "check", str(root), "--split", "P3M-500-NP"]) == 1
    assert main(["evaluate", "--pred", str(masks), "--gt", str(masks), "--fast"]) == 1
    err = capsys.readouterr().err
    assert err.count("loop.png: symbolic link loop") >= 3 and "Traceback" not in err


# ----------------------------------------------------------------------------- crashes

def _wait_for(condition, process, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the command made no progress"
        time.sleep(0.05)


def _kill_then_rerun(command: list[str], started, delay: float, rerun: list[str] | None = None) -> None:
    """Run ``command``, kill -9 it ``delay`` s after ``started()`` holds, then rerun it to the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "p3m", *command], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(started, process, 180)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.communicate()
    done = subprocess.run([sys.executable, "-m", "p3m", *(rerun or command)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _outputs_complete(folder: Path, expected: int) -> None:
    images = sorted(path for path in folder.rglob("*") if path.is_file())
    assert len(images) == expected and all(output_complete(path) for path in images)
    assert _leftovers(folder) == []


def test_a_write_killed_midway_leaves_no_final_file_and_the_next_run_removes_its_temporary(tmp_path):
    script = ("import os, sys\nfrom p3m.io import atomic_write\n"
              "def half(tmp):\n    tmp.write_bytes(b'half a file')\n    os._exit(9)\n"
              "atomic_write(sys.argv[1], half)\n")
    target = tmp_path / "out" / ("n" * 250 + ".png")
    assert subprocess.run([sys.executable, "-c", script, str(target)], timeout=120).returncode == 9
    assert not target.exists() and len(_leftovers(tmp_path)) == 1
    from p3m.io import OutputFolder

    OutputFolder(tmp_path / "out")
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_matte_killed_during_a_batch_resumes_to_complete_outputs(tmp_path, r34_checkpoint):
    photos = _photos(tmp_path / "in", 5)
    out = tmp_path / "out"
    command = ["matte", str(photos), "-o", str(out), "--weights", str(r34_checkpoint), "--quiet"]
    _kill_then_rerun(command, lambda: (out / "rgba" / "photo0.png").is_file(), delay=0.0)
    _outputs_complete(out, 10)


def test_ctrl_c_during_anonymize_still_writes_the_report(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    portrait = np.asarray(Image.open(FIXTURES / "portraits" / "p_015cd10e.jpg"))
    for index in range(40):  # each one different: the detector does not reuse what it found in the one before
        Image.fromarray(np.roll(portrait, 7 * index, axis=1)).save(photos / f"p{index:02d}.jpg", quality=90)
    out, report = tmp_path / "out", tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "p3m", "anonymize", str(photos), "-o", str(out), "--report",
                                str(report), "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        # Two outputs: the first one's report entry is then surely recorded (Ctrl-C may land in the fsync
        # that follows a rename, after the file is complete but before its entry).
        _wait_for(lambda: out.is_dir() and sum(not path.name.startswith(".") for path in out.glob("*.jpg")) >= 2,
                  process, 180)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    entries = json.loads(report.read_text())
    assert 1 <= len(entries) < 40 and "interrupted after" in err
    reported = {Path(entry["output"]).name for entry in entries}
    written = {path.name for path in out.glob("*.jpg")}
    assert reported <= written and len(written - reported) <= 1  # Ctrl-C may land just after a rename
    assert _leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_matte_killed_at_random_points_resumes(tmp_path, r34_checkpoint, seed):
    photos = _photos(tmp_path / "in", 6)
    out = tmp_path / "out"
    command = ["matte", str(photos), "-o", str(out), "--weights", str(r34_checkpoint), "--quiet",
               "--output", "alpha,rgba,composite,trimap"]
    _kill_then_rerun(command, lambda: (out / "alpha").is_dir(), delay=random.Random(seed).uniform(0, 2.0))
    _outputs_complete(out, 24)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_anonymize_killed_at_random_points_reruns_to_complete_outputs(tmp_path, seed):
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    command = ["anonymize", str(FIXTURES / "portraits"), "-o", str(out), "--report", str(report), "--quiet"]
    _kill_then_rerun(command, lambda: out.is_dir(), delay=random.Random(seed).uniform(0, 3.0))
    _outputs_complete(out, len(list((FIXTURES / "portraits").glob("*.jpg"))))
    assert len(json.loads(report.read_text())) == len(list((FIXTURES / "portraits").glob("*.jpg")))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_train_killed_at_random_points_resumes(tmp_path, seed):
    from p3m.checkpoint import read_checkpoint
    from p3m.data.synth import write_dataset

    data = tmp_path / "data"
    write_dataset(data, 2, seed=0, size=96, splits=("train",))
    run = tmp_path / "run"
    small = ["--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--validate-every", "0",
             "--checkpoint-every", "1", "--max-steps", "6"]
    command = ["train", "--data", str(data), "--output", str(run), *small]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "p3m", *command], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / "train.log").is_file(), process, 180)
        time.sleep(random.Random(seed).uniform(0, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.communicate()
    rerun = ["train", "--output", str(run), "--resume"] if (run / "last.pth").is_file() else command
    done = subprocess.run([sys.executable, "-m", "p3m", *rerun], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_checkpoint(run / "last.pth")["train_state"]["step"] == 6
    assert _leftovers(run) == []


# ----------------------------------------------------------------------------- a full disk

@pytest.fixture()
def small_disk(tmp_path):
    """A 256 KiB tmpfs (skipped where mounting is not allowed)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a small tmpfs here ({type(error).__name__}); needs root and CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=30)


def test_a_full_disk_fails_per_file_and_leaves_no_partial_files(tmp_path, small_disk, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):  # noisy masks compress badly: about 60 KiB of trimap each
        alpha = np.where(rng.random((700, 700)) < 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(alpha).save(masks / f"m{index:02d}.png")
    out = small_disk / "trimaps"
    assert main(["dataset", "trimaps", str(masks), "-o", str(out), "--kernel-size", "1"]) == 1
    err = capsys.readouterr().err
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < 12 and "No space left on device" in err
    assert all(output_complete(path) for path in written) and _leftovers(small_disk) == []


# ----------------------------------------------------------------------------- checkpoints and weights

def test_non_finite_checkpoint_is_refused(tmp_path, r34_checkpoint):
    from p3m.checkpoint import CheckpointError, load_weights
    from p3m.models.registry import create_model

    content = torch.load(r34_checkpoint, weights_only=True)
    key = sorted(content["state_dict"])[0]
    content["state_dict"][key] = torch.full_like(content["state_dict"][key], float("nan"))
    torch.save(content, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth: refused: 1 tensors hold NaN or infinite values"):
        load_weights(create_model("resnet34"), tmp_path / "nan.pth", "resnet34")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_refused_checkpoint_gets_p3ms_message_not_torchs_advice(tmp_path, capsys):
    from p3m.checkpoint import CheckpointError, read_checkpoint

    torch.save({"state_dict": {}, "x": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(tmp_path / "evil.pth")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'evil.pth'}: refused") and "\n" not in message
    assert "weights_only=False" not in message and "False" not in message
    assert "this must never run" not in capsys.readouterr().out


def test_an_old_torch_is_refused_before_any_load(tmp_path, r34_checkpoint, monkeypatch):
    from p3m.checkpoint import CheckpointError, read_checkpoint

    loads = []
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args))
    with pytest.raises(CheckpointError, match=r"torch 2\.5\.1 cannot load checkpoints safely; .*>= 2\.10"):
        read_checkpoint(r34_checkpoint)
    assert loads == []


@pytest.fixture()
def weights_home(tmp_path, monkeypatch, r34_checkpoint):
    """P3M_HOME in tmp_path, and gdown serving the test checkpoint (no network)."""
    import gdown

    calls = []

    def serve(*args, output=None, **kwargs):
        calls.append(kwargs)
        output.write(Path(r34_checkpoint).read_bytes())
        return output

    monkeypatch.setenv("P3M_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(gdown, "download", serve)
    return tmp_path / "home", calls


def test_weights_are_recorded_on_download_and_checked_on_every_use(weights_home, capsys):
    from p3m.weights import WeightsCorruptError, cached_path, record_path, resolve

    home, calls = weights_home
    assert main(["weights", "list"]) == 0
    assert re.search(r"^resnet34 +p3mnet_pretrained_on_p3m10k\.pth +missing ", capsys.readouterr().out, re.M)
    assert main(["weights", "download", "resnet34"]) == 0
    cached = cached_path("resnet34")
    record = json.loads(record_path(cached).read_text())
    assert record["size"] == cached.stat().st_size and len(record["sha256"]) == 64
    assert all(Path(call.get("cookies_file", home)).is_relative_to(home) for call in calls)
    assert main(["weights", "list"]) == 0
    assert " verified " in capsys.readouterr().out
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(WeightsCorruptError, match="changed since it was verified.*--force"):
        resolve("resnet34")
    assert main(["weights", "list"]) == 0
    assert " corrupt " in capsys.readouterr().out
    assert main(["weights", "download", "resnet34", "--force"]) == 0
    assert resolve("resnet34") == cached and len(calls) == 2
    assert _leftovers(home) == []


def test_a_hand_placed_file_is_checked_once_then_recorded(weights_home, tmp_path):
    from p3m.weights import WeightsCorruptError, cached_path, record_path, resolve

    cached = cached_path("resnet34")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsCorruptError, match="not a readable PyTorch checkpoint"):
        resolve("resnet34")
    assert not record_path(cached).exists()
