"""TorchScript and ONNX export: the same embeddings as PyTorch, metadata, plain BatchNorm."""

from __future__ import annotations

import builtins
import json
import warnings

import pytest
import torch

from metareid import FeatureExtractor
from metareid.inference import export_model, read_torchscript_metadata


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return FeatureExtractor(checkpoint, device="cpu")


def _batch(n, seed=0):
    return torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(seed))


def _load_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        return torch.jit.load(str(path))


@pytest.mark.parametrize("flip", [False, True])
def test_torchscript_parity(checkpoint, tmp_path, flip):
    reference = FeatureExtractor(checkpoint, device="cpu", flip=flip)
    out = export_model(checkpoint, tmp_path / "m.torchscript", "torchscript", flip=flip)
    net = _load_torchscript(out)
    for n in (1, 5):
        batch = _batch(n, seed=n)
        with torch.no_grad():
            got = net(batch)
        assert got.shape == (n, reference.feat_dim)
        assert (got - reference.embed(batch)).abs().max() <= 1e-5
    meta = read_torchscript_metadata(out)
    assert meta == json.loads((tmp_path / "m.torchscript.json").read_text())
    assert meta["flip"] is flip and meta["input"]["height"] == 32
    assert meta["export"]["format"] == "torchscript"
    # MetaBN exported as a plain BatchNorm
    assert net.model.neck.original_name == "BatchNorm1d"
    assert "MetaBN" not in {m.original_name for m in net.modules()}


def test_export_from_an_extractor_keeps_its_model_intact(extractor, tmp_path):
    before = {k: v.clone() for k, v in extractor.model.state_dict().items()}
    export_model(extractor, tmp_path / "e.torchscript")
    assert all(torch.equal(v, before[k]) for k, v in extractor.model.state_dict().items())
    assert not extractor.net.flip and not extractor.model.training


def test_onnx_parity_with_a_dynamic_batch(extractor, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = export_model(extractor, tmp_path / "m.onnx", "onnx")
    model = onnx.load(str(out))
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" in ops and not any("MetaBN" in op for op in ops)
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["metareid"])
    assert meta == json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["export"]["input_name"] == "images" and meta["input"]["std"] == [
        0.229,
        0.224,
        0.225,
    ]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    for n in (1, 3, 7):
        batch = _batch(n, seed=10 + n)
        (got,) = session.run(["embeddings"], {"images": batch.numpy()})
        assert got.shape == (n, extractor.feat_dim)
        assert abs(torch.from_numpy(got) - extractor.embed(batch)).max() <= 1e-5


def test_onnx_without_the_extra_says_what_to_install(extractor, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r'pip install "metareid\[onnx\]"'):
        export_model(extractor, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.onnx.json").exists()


def test_bad_export_arguments(extractor, tmp_path):
    with pytest.raises(ValueError, match="file_format must be one of"):
        export_model(extractor, tmp_path / "m.tflite", "tflite")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="flip must be a bool or None"):
        export_model(extractor, tmp_path / "m.pt", flip="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dynamo must be a bool"):
        export_model(extractor, tmp_path / "m.pt", dynamo=1)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        read_torchscript_metadata(tmp_path / "none.torchscript")
    plain = tmp_path / "plain.torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(ValueError, match="not exported by metareid"):
        read_torchscript_metadata(plain)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_model_that_does_not_export_is_named_and_leaves_nothing(
    extractor, tmp_path, monkeypatch, fmt
):
    def fails(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::fancy_op")

    if fmt == "onnx":
        pytest.importorskip("onnx")
    monkeypatch.setattr(
        torch.jit if fmt == "torchscript" else torch.onnx,
        "trace" if fmt == "torchscript" else "export",
        fails,
    )
    out = tmp_path / f"m.{fmt}"
    with pytest.raises(
        RuntimeError, match=r"could not export the model of arch 'resnet10'.*aten::fancy_op"
    ):
        export_model(extractor, out, fmt)
    assert list(tmp_path.iterdir()) == []
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the export
