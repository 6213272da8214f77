"""Ikomia integration: `p3m ikomia install/uninstall`, the task's parameters, and the article's
workflow run on p3m through Ikomia (that part only where `ikomia` is installed: the [ikomia] extra)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import p3m
from p3m.cli import main
from p3m.inference.matter import MatteResult
from p3m.integrations.ikomia import PLUGIN_NAME, ikomia_plugins_dir
from p3m.integrations.ikomia.adapter import DEFAULT_VALUES, MattingAdapter, TaskSettings
from p3m.io import read_image, read_mask

PLUGIN_FILES = {"__init__.py", f"{PLUGIN_NAME}.py", f"{PLUGIN_NAME}_process.py", "p3m-plugin.json"}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A temporary home: Ikomia's default root (~/Ikomia) lands under it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _plugin(home: Path) -> Path:
    return home / "Ikomia" / "Plugins" / "Python" / PLUGIN_NAME


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_install_writes_the_plugin_where_ikomia_looks(home, capsys):
    assert ikomia_plugins_dir() == home / "Ikomia" / "Plugins"
    assert main(["ikomia", "install"]) == 0
    folder = _plugin(home)
    assert {path.name for path in folder.iterdir()} == PLUGIN_FILES
    assert "class IkomiaPlugin" not in (folder / f"{PLUGIN_NAME}.py").read_text()  # the task lives in p3m
    assert f"installed Ikomia plugin {PLUGIN_NAME} in {folder}" in capsys.readouterr().out
    marker = json.loads((folder / "p3m-plugin.json").read_text())
    assert marker["files"] == {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                               for name in PLUGIN_FILES - {"p3m-plugin.json"}}
    before = _snapshot(folder)
    assert main(["ikomia", "install"]) == 0
    assert "updated Ikomia plugin" in capsys.readouterr().out
    assert _snapshot(folder) == before


@pytest.mark.parametrize("config, expected", [
    ("root_folder: {root}\nregistry:\n  path:\n", "{root}/Plugins"),
    ("root_folder:\nregistry:\n  path: {root}/elsewhere/\n", "{root}/elsewhere"),
    ("root_folder: [not, a, path\n", "{home}/Ikomia/Plugins"),
])
def test_the_plugin_folder_follows_ikomia_config(home, tmp_path, monkeypatch, config, expected):
    package = tmp_path / "site" / "ikomia"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('p3m must not import ikomia to find its folder')\n")
    (package / "core" / "config.yaml").write_text(config.format(root=tmp_path / "root"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "ikomia", raising=False)
    assert ikomia_plugins_dir() == Path(expected.format(root=tmp_path / "root", home=home))


def test_a_plugin_p3m_did_not_install_is_refused_moved_aside_with_force_and_put_back(home, capsys):
    folder = _plugin(home)
    (folder / "weights").mkdir(parents=True)
    (folder / f"{PLUGIN_NAME}.py").write_text("# Ikomia HUB's plugin\n")
    (folder / "weights" / "p3mnet_pretrained_on_p3m10k.pth").write_bytes(b"weights")
    hub = _snapshot(folder)

    assert main(["ikomia", "install"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did not install" in err and "--force" in err
    assert _snapshot(folder) == hub

    assert main(["ikomia", "install", "--force"]) == 0
    out = capsys.readouterr().out
    moved = [path for path in folder.parent.iterdir() if path.name.startswith(f"{PLUGIN_NAME}.replaced-by-p3m-")]
    assert len(moved) == 1 and _snapshot(moved[0]) == hub and str(moved[0]) in out
    assert {path.name for path in folder.iterdir()} == PLUGIN_FILES

    assert main(["ikomia", "uninstall"]) == 0
    assert "put back" in capsys.readouterr().out
    assert _snapshot(folder) == hub and not moved[0].exists()

    assert main(["ikomia", "install", "--force"]) == 0
    (folder / "notes.txt").write_text("mine")
    assert main(["ikomia", "uninstall"]) == 0
    moved = [path for path in folder.parent.iterdir() if path.name.startswith(f"{PLUGIN_NAME}.replaced-by-p3m-")]
    assert f"stays in {moved[0]}" in capsys.readouterr().out
    assert _snapshot(moved[0]) == hub and _snapshot(folder) == {"notes.txt": b"mine"}


def test_install_does_not_write_through_a_linked_plugin_folder(home, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(elsewhere))
        assert main(["ikomia", "install"]) == 0
    target = _plugin(elsewhere)
    (target / "__init__.py").write_text("# theirs now\n")
    before = _snapshot(target)
    _plugin(home).parent.mkdir(parents=True)
    _plugin(home).symlink_to(target)
    capsys.readouterr()
    assert main(["ikomia", "install"]) == 1
    err = capsys.readouterr().err.strip()
    assert "symbolic link" in err and "\n" not in err
    assert _snapshot(target) == before


def test_uninstall_removes_only_unchanged_files_p3m_wrote(home, capsys):
    assert main(["ikomia", "install"]) == 0
    folder = _plugin(home)
    (folder / "__pycache__").mkdir()
    ours = folder / "__pycache__" / f"{PLUGIN_NAME}_process.cpython-311.pyc"
    ours.write_bytes(b"bytecode")
    theirs = folder / "__pycache__" / "helper.cpython-311.pyc"
    theirs.write_bytes(b"bytecode")
    (folder / "notes.txt").write_text("mine")
    (folder / "__init__.py").write_text("# edited by hand\n")
    capsys.readouterr()

    assert main(["ikomia", "uninstall"]) == 0
    out = capsys.readouterr().out
    assert sorted(path.name for path in folder.rglob("*") if path.is_file()) == [
        "__init__.py", "helper.cpython-311.pyc", "notes.txt"]
    assert (folder / "__init__.py").read_text() == "# edited by hand\n"
    assert f"kept {folder / 'notes.txt'}" in out
    assert main(["ikomia", "uninstall"]) == 1  # the marker is gone: what is left is not p3m's


def test_uninstall_of_nothing_or_of_a_foreign_folder_changes_nothing(home, capsys):
    assert main(["ikomia", "uninstall"]) == 1
    assert "nothing to uninstall" in capsys.readouterr().err
    folder = _plugin(home)
    folder.mkdir(parents=True)
    victim = home / "victim.txt"
    victim.write_text("keep me")
    (folder / "p3m-plugin.json").write_text(json.dumps(
        {"files": {"../../../../victim.txt": hashlib.sha256(b"keep me").hexdigest()}, "moved_aside": None}))
    (folder / f"{PLUGIN_NAME}.py").write_text("# someone else's\n")
    before = _snapshot(folder)
    assert main(["ikomia", "uninstall"]) == 1
    err = capsys.readouterr().err.strip()
    assert "not installed by p3m" in err and "\n" not in err
    assert victim.read_text() == "keep me" and _snapshot(folder) == before


def test_settings_parse_ikomia_string_values():
    settings = TaskSettings.from_values({"model_name": "vitae-s", "input_size": "512", "method": "RESIZE",
                                         "cuda": "False", "weights": "~/w.pth", "privacy": "yes"}, cuda_available=True)
    assert (settings.model, settings.max_size, settings.method.value, settings.device, settings.privacy) == (
        "vitae-s", 512, "resize", "cpu", True)
    assert settings.weights == Path("~/w.pth").expanduser()
    default = TaskSettings.from_values({}, cuda_available=False)
    assert (default.model, default.max_size, default.method.value, default.weights, default.privacy) == (
        "resnet34", int(DEFAULT_VALUES["input_size"]), "hybrid", None, False)
    assert default.device == "cpu"  # cuda=True falls back to the CPU without CUDA
    assert TaskSettings.from_values({"cuda": "True"}, cuda_available=True).device == "cuda"


@pytest.mark.parametrize("values, message", [
    ({"model_name": "resnet50"}, "parameter 'model_name': unknown model 'resnet50'"),
    ({"method": "FAST"}, "parameter 'method' must be HYBRID or RESIZE, got 'FAST'"),
    ({"input_size": "big"}, "parameter 'input_size' must be a whole number of pixels, at least 32, got 'big'"),
    ({"input_size": "16"}, "at least 32, got '16'"),
    ({"cuda": "maybe"}, "parameter 'cuda' must be True or False, got 'maybe'"),
    ({"input-size": "512"}, "unknown parameter 'input-size'"),
])
def test_bad_parameters_are_one_line_errors(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        TaskSettings.from_values(values, cuda_available=False)
    assert "\n" not in str(caught.value)


class _CountingMatter:
    builds: list[TaskSettings] = []

    def __init__(self, settings: TaskSettings):
        self.builds.append(settings)

    def predict(self, image):
        alpha = np.linspace(0, 1, image.shape[1], dtype=np.float32)[None, :].repeat(image.shape[0], axis=0)
        return MatteResult(image=image, alpha=alpha, trimap=np.zeros(image.shape[:2], np.uint8))


def test_the_matter_is_built_once_and_again_only_when_parameters_change():
    _CountingMatter.builds = []
    adapter = MattingAdapter(build=_CountingMatter)
    image = np.full((40, 30, 3), (200, 100, 50), np.uint8)
    values = {"model_name": "resnet34", "input_size": "1024", "method": "HYBRID", "cuda": "True"}
    alpha, rgba = adapter.run(image, values)
    first = adapter.matter(TaskSettings.from_values(values, cuda_available=False))
    adapter.run(image, dict(values))
    assert len(_CountingMatter.builds) == 1 and adapter.matter(_CountingMatter.builds[0]) is first
    adapter.run(image, {**values, "method": "RESIZE"})
    assert len(_CountingMatter.builds) == 2 and _CountingMatter.builds[1].method.value == "resize"
    assert alpha.dtype == np.uint8 and alpha.shape == (40, 30)
    assert (alpha[:, 0] == 0).all() and (alpha[:, -1] == 255).all()
    assert rgba.shape == (40, 30, 4) and np.array_equal(rgba[:, :, 3], alpha)
    assert np.array_equal(rgba[:, -1, :3], image[:, -1])  # opaque pixels keep the photo's colour, in RGB order
    with pytest.raises(ValueError, match="no input image"):
        adapter.run(np.zeros((0,), np.uint8), values)


# --- The article's workflow through Ikomia itself ------------------------------------------------------------

PORTRAIT = Path(__file__).parent / "fixtures" / "portraits" / "p_015cd10e.jpg"

# Ikomia's P3M article, with run_on(path=...) for run_on(url=...) and weights= for the kit checkpoint.
ARTICLE = """
from ikomia.dataprocess.workflow import Workflow
from ikomia.utils import ik

wf = Workflow()
p3m = wf.add_task(ik.infer_p3m_portrait_matting(model_name="resnet34", input_size="1024", method="HYBRID",
                                                 cuda="True", weights={weights!r}), auto_connect=True)
wf.run_on(path={portrait!r})

import numpy as np
outputs = dict(input=p3m.get_input(0).get_image(), alpha=p3m.get_output(0).get_image(),
               rgba=p3m.get_output(1).get_image(), count=len(p3m.get_outputs()))
p3m.set_parameters({{"method": "FAST"}})
try:
    wf.run_on(path={portrait!r})
except Exception as error:
    outputs["error"] = str(error)
np.savez({result!r}, **outputs)
"""


@pytest.fixture(scope="module")
def article_run(tmp_path_factory, r34_checkpoint):
    """Install the plugin under a temporary home, run the article's code there, and matte the same portrait with
    `p3m matte` (same settings: --max-size 1024 --method hybrid, CUDA when present as cuda="True")."""
    if importlib.util.find_spec("ikomia") is None:
        pytest.skip("ikomia is not installed (pip install -e '.[ikomia]'; scripts/setup.sh does)")
    root = tmp_path_factory.mktemp("ikomia")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        assert main(["ikomia", "install"]) == 0
    result = root / "outputs.npz"
    script = ARTICLE.format(weights=str(r34_checkpoint), portrait=str(PORTRAIT), result=str(result))
    source = str(Path(p3m.__file__).parents[1])
    # Bytecode on, as on a user's machine: uninstall must clean what Ikomia's import leaves.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = root / "matte"
    assert main(["matte", str(PORTRAIT), "-o", str(out), "--weights", str(r34_checkpoint), "--max-size", "1024",
                 "--method", "hybrid", "--device", "auto", "--quiet"]) == 0
    with np.load(result) as outputs:
        ikomia = {key: outputs[key] for key in outputs.files}
    return {"ikomia": ikomia, "matte": out, "home": home, "log": run.stdout + run.stderr}


@pytest.mark.ikomia
def test_article_output_0_is_p3m_matte_alpha(article_run):
    ikomia = article_run["ikomia"]
    expected = read_mask(article_run["matte"] / "alpha" / f"{PORTRAIT.stem}.png")
    assert int(ikomia["count"]) == 2
    assert ikomia["alpha"].dtype == np.uint8 and ikomia["alpha"].shape == expected.shape
    assert np.array_equal(ikomia["alpha"], expected)
    assert 0 < np.count_nonzero(expected == 255) < expected.size  # a real matte, not a flat image


@pytest.mark.ikomia
def test_cuda_true_runs_on_the_cpu_without_cuda(article_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: cuda=True uses it")
    assert "cuda=True but CUDA is not available: running on the CPU" in article_run["log"]


@pytest.mark.ikomia
def test_article_output_1_is_the_rgba_cutout_in_rgb_order(article_run):
    from PIL import Image

    ikomia = article_run["ikomia"]
    with Image.open(article_run["matte"] / "rgba" / f"{PORTRAIT.stem}.png") as png:
        assert png.mode == "RGBA"
        expected = np.asarray(png)
    assert ikomia["rgba"].dtype == np.uint8 and np.array_equal(ikomia["rgba"], expected)
    assert np.array_equal(ikomia["input"], read_image(PORTRAIT))  # Ikomia hands the task RGB
    opaque = ikomia["rgba"][:, :, 3] == 255
    cut = ikomia["rgba"][opaque][:, :3].astype(int)
    photo = read_image(PORTRAIT)[opaque].astype(int)
    assert np.abs(cut - photo).mean() < 1.0
    assert np.abs(cut - photo[:, ::-1]).mean() > 10.0  # a BGR mix-up would show


@pytest.mark.ikomia
def test_a_bad_parameter_in_ikomia_is_a_clear_error(article_run):
    assert "parameter 'method' must be HYBRID or RESIZE, got 'FAST'" in str(article_run["ikomia"]["error"])


@pytest.mark.ikomia
def test_uninstall_after_ikomia_loaded_the_plugin(article_run, monkeypatch, capsys):
    folder = _plugin(article_run["home"])
    assert (folder / "__pycache__").is_dir()  # Ikomia imported the plugin's modules
    monkeypatch.setenv("HOME", str(article_run["home"]))
    assert main(["ikomia", "uninstall"]) == 0
    assert not folder.exists() and folder.parent.is_dir()
