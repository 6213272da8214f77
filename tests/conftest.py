"""Shared fixtures: deterministic official-format checkpoints built from the
reference kit's recipe (copied into tests/fixtures), once per test session."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"



def _recipe():
    spec = importlib.util.spec_from_file_location("make_checkpoint", FIXTURES / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny training steps run faster and reproducibly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def _official_format_checkpoint(tmp_path_factory, variant: str) -> Path:
    """A checkpoint made by the recipe from ``{variant}_manifest.json``, as ``{variant}.pth``."""
    path = tmp_path_factory.mktemp("checkpoints") / f"{variant}.pth"
    _recipe().main(str(FIXTURES / f"{variant}_manifest.json"), str(path))
    return path


@pytest.fixture(scope="session")
def r34_checkpoint(tmp_path_factory) -> Path:
    """Path to the deterministic ResNet-34 checkpoint the reference outputs were made with."""
    return _official_format_checkpoint(tmp_path_factory, "r34")


@pytest.fixture(scope="session")
def vitae_checkpoint(tmp_path_factory) -> Path:
    """Path to the deterministic ViTAE-S checkpoint, with the pinned Performer
    features of the reference outputs stored as extra ``.w`` keys."""
    path = _official_format_checkpoint(tmp_path_factory, "vitae")
    content = torch.load(path, weights_only=True)
    content["state_dict"].update(_recipe().random_features(str(FIXTURES / "vitae_manifest.json")))
    torch.save(content, path)
    return path


@pytest.fixture(scope="session")
def swin_checkpoint(tmp_path_factory) -> Path:
    """Path to the deterministic Swin-T checkpoint (constants from swin_constants.npz)."""
    return _official_format_checkpoint(tmp_path_factory, "swin")
