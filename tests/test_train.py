"""`p3m train` end to end on a tiny synthetic dataset at 64 px, on the CPU.

The ResNet-34 model is the real one; runs are a few steps each (about a second
per step on one thread), the longest is the loss-decrease run.
"""
from __future__ import annotations

import json
import os
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


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("p3m-synth")
    write_dataset(root, 4, seed=0, size=128)
    return root


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(data_root, tmp_path_factory) -> Path:
    """20 steps at lr 1e-4 with every step logged."""
    run = tmp_path_factory.mktemp("runs") / "falls"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--data", str(data_root), "--output", str(run), *SMALL, "--max-steps", "20",
                     "--lr", "1e-4", "--log-every", "1", "--checkpoint-every", "0"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
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


def test_resume_continues_with_the_same_losses(data_root, tmp_path):
    common = ["--data", str(data_root), *SMALL, "--lr", "1e-4", "--log-every", "1", "--checkpoint-every", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *common, "--output", str(straight), "--max-steps", "4"]) == 0
    assert main(["train", *common, "--output", str(resumed), "--max-steps", "2"]) == 0
    # Another worker count on purpose: augmentation depends on the sample, not the worker.
    assert main(["train", "--output", str(resumed), "--resume", "--max-steps", "4", "--workers", "1"]) == 0
    a, b = _log(straight), _log(resumed)
    assert [row["step"] for row in b] == [1, 2, 3, 4]
    for row_a, row_b in zip(a, b):
        for key in ("loss", "global", "local", "fusion", "composition"):
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-6, abs=1e-7), (row_a["step"], key)
    content = read_checkpoint(resumed / "last.pth")
    assert content["train_state"]["step"] == 4 and content["train_state"]["scheduler"]["last_epoch"] == 4
    for key, value in read_checkpoint(straight / "last.pth")["state_dict"].items():
        torch.testing.assert_close(content["state_dict"][key], value, rtol=1e-6, atol=1e-7)


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "p3m", "train", "--data", str(data_root), "--output", str(run), *SMALL,
               "--batch-size", "4", "--max-steps", "2", "--log-every", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) on cpu" in done.stderr
    assert [row["step"] for row in _log(run)] == [1, 2]  # one process logs
    state = read_checkpoint(run / "last.pth")["train_state"]
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 2


def test_ctrl_c_saves_and_resume_continues(data_root, tmp_path):
    import signal
    import time

    run = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "p3m", "train", "--data", str(data_root), "--output", str(run), *SMALL,
               "--max-steps", "500", "--log-every", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "no step logged"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "continue with --resume" in err
    steps = [row["step"] for row in _log(run)]
    assert read_checkpoint(run / "last.pth")["train_state"]["step"] == steps[-1] < 500
    assert main(["train", "--output", str(run), "--resume", "--max-steps", str(steps[-1] + 1)]) == 0
    assert [row["step"] for row in _log(run)] == list(range(1, steps[-1] + 2))


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
    # 4 steps of 2 over 4 samples: the broken one comes up in a data-loader worker. (Its warning
    # goes to the worker's stderr; test_train_data checks the line itself.)
    assert main(args) == 0
    assert [row["step"] for row in _log(run)] == [1, 2, 3, 4]


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
