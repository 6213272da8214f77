"""Engines and precisions: BatchNorm folding, the unpooling, ONNX export and the
onnxruntime engine against the torch path, PyTorch-free matting, precision errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import p3m
from p3m.checkpoint import load_weights
from p3m.cli import main
from p3m.inference.compose import alpha_to_uint
from p3m.models import create_model
from p3m.models.decoder import unpool
from p3m.models.folding import fold_batchnorms


@pytest.fixture(scope="module")
def r34_onnx(r34_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "r34.onnx"
    assert main(["export", "--model", "resnet34", "--weights", str(r34_checkpoint), "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def r34_network(r34_checkpoint):
    return load_weights(create_model("resnet34"), r34_checkpoint, "resnet34").eval()


def test_unpool_matches_max_unpool2d_including_overlapping_windows():
    features = torch.randn(2, 8, 24, 40)
    pooled, indices = F.max_pool2d(features, 3, 2, 1, return_indices=True)  # overlapping: shared argmax positions
    planes = indices.flatten(2).flatten(0, 1)
    assert any(len(plane.unique()) < len(plane) for plane in planes)
    expected = F.max_unpool2d(pooled * 3, indices, 2, 2)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = unpool((pooled * 3).contiguous(memory_format=layout), indices.contiguous(memory_format=layout))
        assert torch.equal(got, expected)


def test_folded_network_keeps_raw_outputs(r34_network, r34_checkpoint, fixtures_dir):
    folded = fold_batchnorms(load_weights(create_model("resnet34"), r34_checkpoint, "resnet34").eval())
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    image = torch.from_numpy(np.load(fixtures_dir / "r34_forward_96x128.npz")["input"])
    with torch.inference_mode():
        reference, got = r34_network(image), folded(image)
    for name in ("global_logits", "local_alpha"):
        np.testing.assert_allclose(getattr(got, name), getattr(reference, name), rtol=1e-4, atol=1e-4, err_msg=name)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorms(create_model("resnet34"))


def test_onnx_raw_outputs_match_torch(r34_onnx, r34_network, fixtures_dir):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(r34_onnx), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["p3m_model"] == "resnet34" and json.loads(metadata["p3m_std"]) == [0.229, 0.224, 0.225]
    kit_input = np.load(fixtures_dir / "r34_forward_96x128.npz")["input"]
    for image in (kit_input, np.random.default_rng(1).standard_normal((1, 3, 160, 224), dtype=np.float32)):
        global_logits, local_alpha = session.run(["global_logits", "local_alpha"], {"image": image})
        with torch.inference_mode():
            reference = r34_network(torch.from_numpy(image))
        np.testing.assert_allclose(global_logits, reference.global_logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(local_alpha, reference.local_alpha, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def onnx_matters(r34_onnx):
    return {method: p3m.Matter(engine="onnxruntime", weights=r34_onnx, method=method) for method in ("hybrid", "resize")}


@pytest.mark.parametrize("name", ["ref_small.png", pytest.param("portraits/p_bac3c1ff.jpg", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["hybrid", "resize"])
def test_onnxruntime_engine_matches_torch_end_to_end(onnx_matters, r34_checkpoint, fixtures_dir, method, name):
    expected = p3m.Matter(weights=r34_checkpoint, method=method, device="cpu").predict(fixtures_dir / name)
    got = onnx_matters[method].predict(fixtures_dir / name)
    difference = np.abs(got.alpha - expected.alpha)
    assert difference.mean() <= 1e-5
    assert (difference > 1e-3).mean() <= 1e-3
    assert (got.trimap != expected.trimap).mean() <= 1e-3


def test_matting_with_onnxruntime_needs_no_torch(r34_onnx, onnx_matters, fixtures_dir, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch' (blocked)", name="torch")

        sys.meta_path.insert(0, BlockTorch())
    """))
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        try:
            import torch
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("torch was importable")
        import p3m
        from p3m.cli import main

        matter = p3m.Matter(engine="onnxruntime", weights={str(r34_onnx)!r}, method="hybrid")
        np.save({str(tmp_path / 'hybrid.npy')!r}, matter.predict({str(fixtures_dir / 'ref_small.png')!r}).alpha)
        status = main(["matte", {str(fixtures_dir / 'ref_small.png')!r}, "-o", {str(tmp_path / 'out')!r},
                       "--engine", "onnxruntime", "--weights", {str(r34_onnx)!r}, "--method", "resize",
                       "--output", "alpha"])
        assert "torch" not in sys.modules
        raise SystemExit(status)
    """)
    source = os.path.join(os.path.dirname(p3m.__file__), os.pardir)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.path.abspath(source)])}
    completed = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                               timeout=1200)
    assert completed.returncode == 0, completed.stderr[-2000:]
    expected = {method: onnx_matters[method].predict(fixtures_dir / "ref_small.png").alpha for method in onnx_matters}
    np.testing.assert_array_equal(np.load(tmp_path / "hybrid.npy"), expected["hybrid"])
    written = np.asarray(Image.open(tmp_path / "out" / "alpha" / "ref_small.png"))
    np.testing.assert_array_equal(written, alpha_to_uint(expected["resize"], 8))


def test_onnxruntime_engine_refuses_other_files(r34_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        p3m.Matter(engine="onnxruntime", weights=r34_checkpoint)
    with pytest.raises(ValueError, match="needs weights"):
        p3m.Matter(engine="onnxruntime")
    with pytest.raises(ValueError, match="unknown engine"):
        p3m.Matter(engine="tensorrt")


def test_precision_is_refused_where_the_hardware_cannot(r34_checkpoint, r34_onnx, fixtures_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        p3m.Matter(weights=r34_checkpoint, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="needs engine 'torch'"):
        p3m.Matter(engine="onnxruntime", weights=r34_onnx, precision="bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        p3m.Matter(weights=r34_checkpoint, precision="int8")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
            p3m.Matter(weights=r34_checkpoint, device="cpu", precision="bf16")
    status = main(["matte", str(fixtures_dir / "ref_small.png"), "-o", str(tmp_path / "out"), "--weights", str(r34_checkpoint),
                   "--device", "cpu", "--precision", "fp16"])
    assert status == 2
    assert "fp16 needs CUDA" in capsys.readouterr().err


# bf16 against fp32 on the kit checkpoint (deterministic random weights, so many semantic near-ties):
# measured with emulated bf16 (same rounding, oneDNN) on ref_small and p_bac3c1ff, HYBRID and RESIZE:
# mean |diff| 0.006-0.022, pixels off by > 0.05: 1.2-10.3%, SAD difference 0.09-0.64 (thousands).
BF16_BOUNDS = {"mean": 0.03, "off_share": 0.12, "sad_thousands": 1.0}


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="this CPU has neither AVX512-BF16 nor AMX: bf16 is refused here")
@pytest.mark.parametrize("method", ["hybrid", "resize"])
def test_bf16_error_against_fp32_is_bounded(r34_checkpoint, fixtures_dir, method):
    fp32 = p3m.Matter(weights=r34_checkpoint, method=method, device="cpu")
    bf16 = p3m.Matter(weights=r34_checkpoint, method=method, device="cpu", precision="bf16")
    for name in ("ref_small.png", "portraits/p_bac3c1ff.jpg"):
        expected, got = fp32.predict(fixtures_dir / name).alpha, bf16.predict(fixtures_dir / name).alpha
        difference = np.abs(got - expected)
        assert got.dtype == np.float32 and 0 <= got.min() and got.max() <= 1
        assert difference.mean() <= BF16_BOUNDS["mean"], name
        assert (difference > 0.05).mean() <= BF16_BOUNDS["off_share"], name
        assert abs(float(got.sum() - expected.sum())) / 1000 <= BF16_BOUNDS["sad_thousands"], name


@pytest.mark.slow
def test_vitae_onnx_matches_torch(vitae_checkpoint, fixtures_dir, tmp_path):
    import onnxruntime

    path = tmp_path / "vitae.onnx"
    assert main(["export", "--model", "vitae-s", "--weights", str(vitae_checkpoint), "-o", str(path)]) == 0
    network = load_weights(create_model("vitae-s"), vitae_checkpoint, "vitae-s").eval()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.load(fixtures_dir / "vitae_forward_96x128.npz")["input"]
    global_logits, local_alpha = session.run(["global_logits", "local_alpha"], {"image": image})
    with torch.inference_mode():
        reference = network(torch.from_numpy(image))
    np.testing.assert_allclose(global_logits, reference.global_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(local_alpha, reference.local_alpha, rtol=1e-4, atol=1e-4)
    by_torch = p3m.Matter(model="vitae-s", weights=vitae_checkpoint, device="cpu")
    by_onnx = p3m.Matter(engine="onnxruntime", weights=path)
    difference = np.abs(by_onnx.predict(fixtures_dir / "ref_small.png").alpha
                        - by_torch.predict(fixtures_dir / "ref_small.png").alpha)
    assert difference.mean() <= 1e-5 and (difference > 1e-3).mean() <= 1e-3
