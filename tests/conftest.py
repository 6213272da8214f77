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


@pytest.fixture(scope="session")
def r34_checkpoint(tmp_path_factory) -> Path:
    """Path to the deterministic ResNet-34 checkpoint the reference outputs were made with."""
    path = tmp_path_factory.mktemp("checkpoints") / "r34.pth"
    _recipe().main(str(FIXTURES / "r34_manifest.json"), str(path))
    return path


@pytest.fixture(scope="session")
def vitae_checkpoint(tmp_path_factory) -> Path:
    """Path to the deterministic ViTAE-S checkpoint, with the pinned Performer
    features of the reference outputs stored as extra ``.w`` keys."""
    recipe = _recipe()
    path = tmp_path_factory.mktemp("checkpoints") / "vitae.pth"
    recipe.main(str(FIXTURES / "vitae_manifest.json"), str(path))
    content = torch.load(path, weights_only=True)
    content["state_dict"].update(recipe.random_features(str(FIXTURES / "vitae_manifest.json")))
    torch.save(content, path)
    return path


@pytest.fixture(scope="session")
def swin_checkpoint(tmp_path_factory) -> Path:
    """Path to the deterministic Swin-T checkpoint (constants from swin_constants.npz)."""
    path = tmp_path_factory.mktemp("checkpoints") / "swin.pth"
    _recipe().main(str(FIXTURES / "swin_manifest.json"), str(path))
    return path
