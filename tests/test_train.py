"""`p3m train` end to end on a tiny synthetic dataset at 64 px, on the CPU.

The ResNet-34 model is the real one; runs are a few steps each (about a second
per step on one thread), the longest is the loss-decrease run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from p3m.checkpoint import read_checkpoint
from p3m.cli import main
from p3m.data.synth import write_dataset
from p3m.inference.matter import Matter
from p3m.models import create_model
from p3m.backbone import BackboneError, load_backbone
from p3m.train.config import DEFAULT_CONFIG, ConfigError, TrainConfig, load_yaml, merge

SMALL = ["--image-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--validate-every", "0",
         "--backbone-weights", "none"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: small training steps


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("p3m-synth")
    write_dataset(root, 4, seed=0, size=128)
    return root


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _train_on_one_thread(arguments: list[str]) -> int:
    """``p3m train`` with torch on one thread, for the module fixtures (``one_thread`` is per test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["train", *arguments])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_run(data_root, tmp_path_factory) -> Path:
    """20 steps at lr 1e-4 with every step logged."""
    run = tmp_path_factory.mktemp("runs") / "falls"
    assert _train_on_one_thread(["--data", str(data_root), "--output", str(run), *SMALL, "--max-steps", "20",
                                 "--lr", "1e-4", "--log-every", "1", "--checkpoint-every", "0"]) == 0
    return run


def test_loss_falls_over_twenty_steps(trained_run):
    rows = _log(trained_run)
    assert [row["step"] for row in rows] == list(range(1, 21))
    first = np.mean([row["loss"] for row in rows[:5]])
    last = np.mean([row["loss"] for row in rows[-5:]])
    assert last < 0.85 * first, (first, last)


def test_log_has_every_loss_term(trained_run):
    row = _log(trained_run)[0]
    for key in ("step", "loss", "lr", "global_ce", "side2_ce", "side1_ce", "side0_ce", "global", "local_alpha",
                "local_laplacian", "fusion_alpha", "fusion_laplacian", "composition", "time_step"):
        assert key in row, key
    expected = row["global"] / 6 + 2 * row["local"] + 3 * row["fusion"] + row["composition"]
    assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert any((trained_run / "tensorboard").iterdir())


def test_run_folder_holds_resolved_config(trained_run, data_root):
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert saved["data"] == str(data_root) and saved["image_size"] == 64 and saved["lr"] == 1e-4
    assert saved["max_steps"] == 20 and saved["epochs"] == 150
    # Random initialisation was asked for, and the run says so.
    assert saved["backbone_weights"] == "none"
    assert json.loads((trained_run / "provenance.json").read_text())["initial_weights"] == {"source": "none"}
    assert "random initialisation (--backbone-weights none" in (trained_run / "train.log").read_text()


def test_checkpoint_is_official_format_and_loads_in_matter(trained_run, data_root, tmp_path):
    content = read_checkpoint(trained_run / "last.pth")  # weights_only=True
    assert "resnet.conv1.weight" in content["state_dict"] and "encoder0.0.weight" in content["state_dict"]
    assert content["train_state"]["step"] == 20
    image = next((data_root / "validation" / "P3M-500-NP" / "original_image").iterdir())
    result = Matter("resnet34", weights=trained_run / "last.pth", device="cpu").predict(image)
    assert result.alpha.shape == result.image.shape[:2]
    assert np.isfinite(result.alpha).all()


def test_checkpoint_loads_in_matte_command(trained_run, data_root, tmp_path):
    pytest.importorskip("p3m.cli.matte", reason="the `p3m matte` command is not in this tree")
    image = next((data_root / "validation" / "P3M-500-NP" / "original_image").iterdir())
    out = tmp_path / "out"
    assert main(["matte", str(image), "-o", str(out), "--weights", str(trained_run / "last.pth"),
                 "--device", "cpu"]) == 0
    assert any(out.iterdir())


def test_existing_run_needs_resume(trained_run, data_root, capsys):
    assert main(["train", "--data", str(data_root), "--output", str(trained_run), *SMALL]) == 2
    assert "--resume" in capsys.readouterr().err


DETERMINISTIC = ["--deterministic", "--seed", "3", "--lr", "1e-3", "--log-every", "1", "--checkpoint-every", "0",
                 "--max-steps", "3"]


def _assert_bit_identical(run_a: Path, run_b: Path) -> None:
    """Same weights, optimiser state and logged losses, bit for bit."""
    a, b = read_checkpoint(run_a / "last.pth"), read_checkpoint(run_b / "last.pth")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    states_a, states_b = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    assert states_a.keys() == states_b.keys()
    for index, state in states_a.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(states_b[index][name])), (index, name)
    assert a["train_state"]["step"] == b["train_state"]["step"]
    assert [row["loss"] for row in _log(run_a)] == [row["loss"] for row in _log(run_b)]


@pytest.fixture(scope="module")
def deterministic_run(data_root, tmp_path_factory) -> Path:
    """3 deterministic steps, the uninterrupted reference."""
    run = tmp_path_factory.mktemp("runs") / "deterministic"
    assert _train_on_one_thread(["--data", str(data_root), "--output", str(run), *SMALL, *DETERMINISTIC]) == 0
    return run


def test_two_deterministic_runs_are_bit_identical(deterministic_run, data_root, tmp_path):
    again = tmp_path / "again"
    assert main(["train", "--data", str(data_root), "--output", str(again), *SMALL, *DETERMINISTIC]) == 0
    _assert_bit_identical(deterministic_run, again)
    provenance = json.loads((again / "provenance.json").read_text())
    assert provenance["config"]["deterministic"] is True and provenance["torch_threads"] == 1


def test_resume_after_a_checkpoint_is_bit_identical(deterministic_run, data_root, tmp_path):
    # A run that ended (or was killed) after its step-2 checkpoint, resumed to step 3.
    resumed = tmp_path / "resumed"
    assert main(["train", "--data", str(data_root), "--output", str(resumed), *SMALL, *DETERMINISTIC,
                 "--max-steps", "2"]) == 0
    # Another worker count on purpose: augmentation depends on the sample, not the worker.
    assert main(["train", "--output", str(resumed), "--resume", "--max-steps", "3", "--workers", "1"]) == 0
    assert [row["step"] for row in _log(resumed)] == [1, 2, 3]
    content = read_checkpoint(resumed / "last.pth")
    assert content["train_state"]["step"] == 3 and content["train_state"]["scheduler"]["last_epoch"] == 3
    _assert_bit_identical(deterministic_run, resumed)


def test_resume_without_checkpoint_is_an_error(data_root, tmp_path, capsys):
    assert main(["train", "--data", str(data_root), "--output", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_bf16_with_backbone_and_validation(data_root, tmp_path, capsys):
    backbone = tmp_path / "r34.pth.tar"
    encoder = create_model("resnet34").encoder.state_dict()
    torch.save({"state_dict": {f"module.{key}": value for key, value in encoder.items()}}, backbone)
    run = tmp_path / "bf16"
    args = ["train", "--data", str(data_root), "--output", str(run), *SMALL, "--max-steps", "1",
            "--precision", "bf16", "--backbone-weights", str(backbone), "--validate-every", "1",
            "--val-max-images", "1", "--set", "val_max_size=128"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"backbone: {len(encoder)} of {len(encoder)} encoder tensors loaded" in err
    assert np.isfinite(_log(run)[0]["loss"])
    rows = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert {row["split"] for row in rows} == {"P3M-500-P", "P3M-500-NP"}
    assert all(row["images"] == 1 and np.isfinite(row["SAD"]) for row in rows)
    assert (run / "best.pth").is_file()


def test_composition_off_without_fg_bg(tmp_path, capsys):
    root = tmp_path / "data"
    write_dataset(root, 2, seed=1, size=96, splits=("train",))
    for path in (root / "train" / "bg").iterdir():
        path.unlink()
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--output", str(run), *SMALL, "--max-steps", "1"]) == 0
    assert "composition loss off (fg/bg found for 0 of 2 samples" in capsys.readouterr().err
    assert "composition" not in _log(run)[0]


def test_two_process_torchrun_on_cpu(data_root, tmp_path):
    run = tmp_path / "ddp"
    # torchrun leaves a folder in the temporary directory: keep it in the test's own
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "p3m", "train", "--data", str(data_root), "--output", str(run), *SMALL,
               "--batch-size", "4", "--max-steps", "2", "--log-every", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) on cpu" in done.stderr
    assert [row["step"] for row in _log(run)] == [1, 2]  # one process logs
    state = read_checkpoint(run / "last.pth")["train_state"]
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 2


def test_ctrl_c_saves_and_resume_is_bit_identical(deterministic_run, data_root, tmp_path):
    import signal
    import time

    run = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as many threads as the reference run
    command = [sys.executable, "-m", "p3m", "train", "--data", str(data_root), "--output", str(run), *SMALL,
               *DETERMINISTIC]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "no step logged"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "continue with --resume" in err
    steps = [row["step"] for row in _log(run)]
    assert read_checkpoint(run / "last.pth")["train_state"]["step"] == steps[-1] < 3
    assert main(["train", "--output", str(run), "--resume"]) == 0
    assert [row["step"] for row in _log(run)] == [1, 2, 3]
    _assert_bit_identical(deterministic_run, run)


# ----------------------------------------------------------------------------- configuration

def test_shipped_config_is_the_papers_schedule():
    shipped = merge(TrainConfig(), load_yaml(DEFAULT_CONFIG), str(DEFAULT_CONFIG))
    assert shipped == TrainConfig()
    assert (shipped.batch_size, shipped.lr, shipped.epochs, shipped.image_size) == (8, 1e-5, 150, 512)
    assert shipped.crop_sizes == [512, 768, 1024] and shipped.trimap_kernel == [15, 30]


def test_config_precedence_and_errors(tmp_path):
    from p3m.cli import build_parser
    from p3m.cli.train import resolve_config

    path = tmp_path / "c.yaml"
    path.write_text("lr: 2.0e-5\nbatch_size: 4\nmodel: resnet34\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--batch-size", "6", "--set", "seed=3",
                                      "--set", "val_splits=[P3M-500-NP]"])
    config, resume = resolve_config(args)
    assert (config.lr, config.batch_size, config.seed, config.val_splits) == (2e-5, 6, 3, ["P3M-500-NP"])
    assert resume is None
    with pytest.raises(ConfigError, match="unknown setting.*learning_rate"):
        merge(TrainConfig(), {"learning_rate": 1}, "x.yaml")
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        merge(TrainConfig(), {"batch_size": "eight"}, "x.yaml")
    with pytest.raises(ConfigError, match="image_size"):
        merge(TrainConfig(), {"image_size": 100}, "x.yaml").validate()


def test_bad_flags_are_one_line_errors(data_root, tmp_path, capsys):
    assert main(["train", "--data", str(data_root), "--output", str(tmp_path / "r"), "--image-size", "70"]) == 2
    assert "image_size" in capsys.readouterr().err
    assert main(["train", "--output", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [("--model", "foo", "unknown model 'foo'"),
                                                  ("--device", "foo", "device: must be auto, cpu")])
def test_bad_model_or_device_is_a_one_line_error_before_writing(data_root, tmp_path, capsys, flag, value, message):
    run = tmp_path / "r"
    assert main(["train", "--data", str(data_root), "--output", str(run), *SMALL, flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_training_device_follows_the_inference_rule(monkeypatch):
    from p3m.inference import matter
    from p3m.train import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("auto")[1] == matter.resolve_device("auto")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("cpu")  # MPS only on request
    with pytest.raises(ValueError, match="CUDA is not available"):
        distributed.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.resolve_device("auto", local_rank=3) == torch.device("cuda", 1)
    assert distributed.resolve_device("cuda:0", local_rank=3) == torch.device("cuda", 0)


def test_unreadable_training_image_does_not_stop_the_run(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, 4, seed=2, size=96, splits=("train",))
    broken = sorted((root / "train" / "blurred_image").iterdir())[0]
    broken.write_bytes(b"truncated")
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--output", str(run), *SMALL, "--max-steps", "4", "--workers", "1",
            "--log-every", "1"]
    # 4 steps of 2 over 4 samples: the broken one comes up in a data-loader worker, whose
    # warning reaches train.log.
    assert main(args) == 0
    assert [row["step"] for row in _log(run)] == [1, 2, 3, 4]
    assert f"warning: data: {broken}" in (run / "train.log").read_text()


def test_last_checkpoint_carries_the_best_score_of_its_step(data_root, tmp_path):
    run = tmp_path / "val"
    assert main(["train", "--data", str(data_root), "--output", str(run), *SMALL, "--max-steps", "2",
                 "--validate-every", "2", "--checkpoint-every", "2", "--val-max-images", "1",
                 "--set", "val_max_size=128"]) == 0
    rows = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} == {2}
    best = read_checkpoint(run / "best.pth")["mean_sad"]
    assert best == pytest.approx(np.mean([row["SAD"] for row in rows]))
    assert read_checkpoint(run / "last.pth")["train_state"]["best"] == best


def test_resume_reads_the_checkpoint_once(data_root, tmp_path, monkeypatch):
    run = tmp_path / "once"
    common = ["--data", str(data_root), *SMALL, "--checkpoint-every", "1"]
    assert main(["train", *common, "--output", str(run), "--max-steps", "1"]) == 0
    checkpoint = (run / "last.pth").resolve()
    reads = []
    real_load = torch.load

    def counting_load(source, *args, **kwargs):
        if isinstance(source, (str, os.PathLike)) and Path(source).resolve() == checkpoint:
            reads.append(source)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    assert main(["train", *common, "--output", str(run), "--resume", "--max-steps", "2"]) == 0
    assert len(reads) == 1
    monkeypatch.undo()
    assert read_checkpoint(run / "last.pth")["train_state"]["step"] == 2


# ----------------------------------------------------------------------------- backbone

def test_backbone_maps_torchvision_names_and_reports(tmp_path):
    source = create_model("resnet34").encoder
    state = {key: value.clone() for key, value in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # a classifier of another size
    state["avgpool.extra"] = torch.zeros(1)
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    model = create_model("resnet34")
    report = load_backbone(model, path)
    assert report.mismatched == {"fc.weight": ((10, 512), (1000, 512))}
    assert report.unexpected == ["avgpool.extra"] and report.missing == []
    torch.testing.assert_close(model.encoder.layer3[2].conv2.weight, source.layer3[2].conv2.weight)
    assert "1 (e.g. fc.weight" in report.summary()


def test_backbone_without_matching_tensors_is_an_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(3)}}, path)
    with pytest.raises(BackboneError, match="no tensor matches"):
        load_backbone(create_model("resnet34"), path)
    (tmp_path / "broken.pth").write_bytes(path.read_bytes()[:200])  # a truncated download
    with pytest.raises(BackboneError, match="not a readable"):
        load_backbone(create_model("resnet34"), tmp_path / "broken.pth")


def test_parameters_without_gradient_are_frozen_for_ddp():
    from p3m.models.features import P3MOutput
    from p3m.train.run import _freeze_unused_parameters

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Conv2d(3, 3, 1)
            self.unused = torch.nn.Linear(2, 2)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, image):
            logits = self.bn(self.used(image))
            alpha = torch.sigmoid(logits[:, :1])
            return P3MOutput(logits, alpha, alpha, (logits, logits, logits))

    model = Toy()
    before = model.bn.running_mean.clone()
    assert _freeze_unused_parameters(model, torch.device("cpu")) == ["unused.weight", "unused.bias"]
    assert not model.unused.weight.requires_grad and model.used.weight.requires_grad
    assert torch.equal(model.bn.running_mean, before)  # the probe ran on a copy


def test_fine_tuning_starts_from_given_weights(trained_run, data_root, tmp_path, capsys):
    run = tmp_path / "finetune"
    assert main(["train", "--data", str(data_root), "--output", str(run), *SMALL, "--max-steps", "1",
                 "--weights", str(trained_run / "last.pth")]) == 0
    assert f"initial weights: {trained_run / 'last.pth'}" in capsys.readouterr().err
    # Same first batch as the trained run's step 1 (same seed), but 20 steps further trained.
    assert _log(run)[0]["loss"] < 0.85 * _log(trained_run)[0]["loss"]
    # A weights-only file cannot be resumed from.
    from p3m.checkpoint import save_weights

    plain = tmp_path / "plain.pth"
    model = create_model("resnet34")
    save_weights(model, plain, "resnet34")
    assert main(["train", "--data", str(data_root), "--output", str(tmp_path / "r2"), "--resume", str(plain)]) == 2
    assert "no training state" in capsys.readouterr().err


# ----------------------------------------------------------------------------- ImageNet initialisation

def _offline(monkeypatch):
    import gdown
    import requests

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(gdown, "download", refuse)
    monkeypatch.setattr(gdown, "download_folder", refuse)


def test_default_run_offline_stops_before_writing(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("P3M_HOME", str(tmp_path / "home"))
    _offline(monkeypatch)
    run = tmp_path / "offline"
    default_init = [flag for flag in SMALL if flag not in ("--backbone-weights", "none")]
    assert main(["train", "--data", str(data_root), "--output", str(run), *default_init, "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "r34mp_pretrained_imagenet.pth.tar" in err and "id=18Pt-klsbkiyonMdGi6dytExQEjzBnHwY" in err
    assert "--backbone-weights PATH" in err and "--backbone-weights none" in err
    assert not run.exists()


def test_default_run_starts_from_the_cached_imagenet_encoder_and_records_provenance(data_root, tmp_path,
                                                                                     monkeypatch, capsys):
    import shutil

    from p3m.weights import sha256_of as sha256_file

    monkeypatch.setenv("P3M_HOME", str(tmp_path / "home"))
    _offline(monkeypatch)
    cached = tmp_path / "home" / "weights" / "r34mp_pretrained_imagenet.pth.tar"
    cached.parent.mkdir(parents=True)
    encoder = create_model("resnet34").encoder.state_dict()
    torch.save(encoder, cached)  # the official file is a bare ResNet-34 max-pool state dict
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    run = tmp_path / "run"
    default_init = [flag for flag in SMALL if flag not in ("--backbone-weights", "none")]
    assert main(["train", "--data", str(data), "--output", str(run), *default_init, "--max-steps", "1"]) == 0
    assert f"backbone: {len(encoder)} of {len(encoder)} encoder tensors loaded from {cached}" in capsys.readouterr().err

    record = json.loads((run / "provenance.json").read_text())
    assert record["initial_weights"] == {"source": "imagenet", "path": str(cached), "size": cached.stat().st_size,
                                         "sha256": sha256_file(cached)}
    assert record["torch"] == torch.__version__ and record["config"]["backbone_weights"] == "imagenet"
    names = {row["name"]: row for row in record["manifest"]}
    mask = sorted((data / "train" / "mask").iterdir())[0]
    row = names[f"train/mask/{mask.name}"]
    assert row["size"] == mask.stat().st_size and row["sha256"] == sha256_file(mask)
    assert len(names) == record["data"]["files"] == 4 * 4  # image, mask, fg, bg per sample
    assert read_checkpoint(run / "last.pth")["train_state"]["provenance"]["data"] == record["data"]

    mask.write_bytes(sorted((data / "train" / "mask").iterdir())[1].read_bytes())
    assert main(["train", "--output", str(run), "--resume", "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "not resuming" in err and f"1 changed (train/mask/{mask.name})" in err and "--force" in err
    assert read_checkpoint(run / "last.pth")["train_state"]["step"] == 1
    assert main(["train", "--output", str(run), "--resume", "--max-steps", "2", "--force"]) == 0
    assert "warning: resuming with a difference: training files changed" in (run / "train.log").read_text()
    history = json.loads((run / "provenance.json").read_text())["history"]
    assert [entry["event"] for entry in history] == ["start", "resume"] and history[1]["forced"] is True


def test_imagenet_entries_are_listed_and_the_vitae_file_is_taken_from_its_folder(tmp_path, monkeypatch, capsys):
    import gdown

    from p3m.weights import WeightsUnavailableError, cached_path, download, record_path, sha256_of

    monkeypatch.setenv("P3M_HOME", str(tmp_path / "home"))
    assert main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    assert "resnet34-imagenet" in listed and "r34mp_pretrained_imagenet.pth.tar" in listed
    assert "vitae-s-imagenet" in listed and "drive/folders/1sBRVgvFNtkZql1_ti_CxCgZs2O8U4RmW" in listed

    encoder = create_model("vitae-s").encoder.state_dict()
    published = tmp_path / "published.pth.tar"
    torch.save({"state_dict_ema": {key: value for key, value in encoder.items() if not key.endswith("attn.w")}},
               published)

    class Listed:
        def __init__(self, id, path):
            self.id, self.path = id, path

    def listing(id, skip_download, quiet):
        assert id == "1sBRVgvFNtkZql1_ti_CxCgZs2O8U4RmW" and skip_download
        return [Listed("swin-id", "folder/swin_pretrained_epoch_299.pth"),
                Listed("vitae-id", "folder/vitae_pretrained_ckpt.pth.tar")]

    def fetch(id, output, quiet, timeout, **options):
        assert id == "vitae-id"
        output.write(published.read_bytes())

    monkeypatch.setattr(gdown, "download_folder", listing)
    monkeypatch.setattr(gdown, "download", fetch)
    path = download("vitae-s-imagenet", quiet=True)
    assert path == cached_path("vitae-s-imagenet") and path.read_bytes() == published.read_bytes()
    assert json.loads(record_path(path).read_text())["sha256"] == sha256_of(path)
    assert main(["weights", "list"]) == 0
    assert re.search(r"^vitae-s-imagenet +vitae_pretrained_ckpt\.pth\.tar +verified ", capsys.readouterr().out, re.M)
    good = path.read_bytes()
    partial = {key: value for key, value in encoder.items() if not key.startswith("layers.3")}
    torch.save({"state_dict_ema": partial}, published)  # a file that is not the whole encoder
    with pytest.raises(WeightsUnavailableError, match="not the vitae-s ImageNet encoder.*--backbone-weights PATH"):
        download("vitae-s-imagenet", force=True, quiet=True)
    assert path.read_bytes() == good  # the verified file stays


def test_saved_vitae_checkpoint_reloads_to_identical_outputs(tmp_path):
    from p3m.checkpoint import load_weights, save_weights

    torch.manual_seed(0)
    model = create_model("vitae-s").eval()
    for name, buffer in model.named_buffers():
        if name.endswith("attn.w"):  # features other than the seeded ones, as an official file may carry
            buffer.copy_(torch.randn_like(buffer))
    path = save_weights(model, tmp_path / "vitae.pth", "vitae-s")
    assert not any(key.endswith("attn.w") for key in read_checkpoint(path)["state_dict"])  # official layout
    reloaded = load_weights(create_model("vitae-s"), path, "vitae-s").eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(image), reloaded(image)
    for a, b in zip((expected.global_logits, expected.local_alpha, expected.fused_alpha),
                    (actual.global_logits, actual.local_alpha, actual.fused_alpha)):
        assert torch.equal(a, b)
    # As the official configuration (drop_path_rate 0), ViTAE-S training has no stochastic depth.
    model.train()
    with torch.no_grad():
        assert torch.equal(model(image).local_alpha, model(image).local_alpha)
