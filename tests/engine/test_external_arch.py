"""Training, resuming, evaluating and exporting M3L on torchvision and timm backbones.

One torchvision and one timm model per family (CNN, ConvNeXt, ViT), random weights, tiny
images, with the same commands as for a ResNet-50: ``metareid train --arch ...``,
``--resume``, ``metareid evaluate``, ``extract``, ``search``, ``metareid export``
(TorchScript and ONNX), the exported
model checked against the checkpoint's :class:`~metareid.FeatureExtractor`. Second order by
default; a backbone without a second derivative (MobileNetV3's hardsigmoid) is refused
before training with a message naming the first-order way out, and trains with it.

The torchvision models are the smallest of their families (ResNet-18, ConvNeXt-T and
ViT-B/32: 11M, 28M and 88M parameters); their runs take 7 to 70 s on 2 CPU cores and are
marked slow (``-m slow``); the default suite runs the timm ones (3-5 s each).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metareid import FeatureExtractor
from metareid.cli import main
from metareid.inference import load_embeddings
from metareid.serialization import load_checkpoint

timm = pytest.importorskip("timm")

#: family -> (arch, height, width)
MODELS = {
    "tv-cnn": ("tv:resnet18", 32, 16),
    "timm-cnn": ("timm:resnet10t", 32, 16),
    "tv-convnext": ("tv:convnext_tiny", 32, 32),
    "timm-convnext": ("timm:convnext_atto", 32, 32),
    "tv-vit": ("tv:vit_b_32", 32, 32),
    "timm-vit": ("timm:vit_tiny_patch16_224", 32, 16),
}
SLOW = {"tv-cnn", "tv-convnext", "tv-vit"}


def _params():
    return [pytest.param(key, marks=pytest.mark.slow) if key in SLOW else key for key in MODELS]


def _train_args(root: Path, out: Path, arch: str, height: int, width: int) -> list[str]:
    return [
        "train",
        "--data-dir", str(root),
        "--sources", "synthetic:0", "synthetic:1",
        "--target", "synthetic:2",
        "--arch", arch,
        "--pretrained", "none",
        "--height", str(height),
        "--width", str(width),
        "--num-identities", "2",
        "--num-instances", "2",
        "--iters-per-epoch", "1",
        "--warmup-epochs", "0",
        "--eval-every", "0",
        "--eval-batch-size", "16",
        "--workers", "0",
        "--no-plots",
        "--no-progress",
        "--output-dir", str(out),
    ]  # fmt: skip


@pytest.mark.parametrize("family", _params())
def test_train_resume_evaluate_export(family, tiny_bench, tmp_path, capsys, monkeypatch):
    from metareid.engine import Trainer

    arch, height, width = MODELS[family]
    out = tmp_path / "run"
    args = [*_train_args(tiny_bench, out, arch, height, width), "--epochs", "2"]
    original = Trainer._iteration
    calls = {"n": 0}

    def killed_in_epoch_two(self, batches):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(Trainer, "_iteration", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(Trainer, "_iteration", original)
    printed = capsys.readouterr().out
    # the architecture's note on the last stride reaches the log
    assert "last stride 1:" in printed or "last_stride=1 does not apply" in printed

    state = load_checkpoint(out / "last.pt")
    cfg = state["config"]
    assert state["epoch"] == 1
    assert cfg["arch"] == arch and (cfg["height"], cfg["width"]) == (height, width)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3  # resolved and recorded
    assert cfg["meta_test_grad"] == "full"  # the second order ran
    first = {k: v.clone() for k, v in state["model"].items()}

    # resume: the second epoch from the checkpoint, with the same command
    assert main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "| m3l -> synthetic:2 |" in printed
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["epoch"] == 2 and resumed["iteration"] == 2
    assert any(not torch.equal(first[k], v) for k, v in resumed["model"].items())

    # evaluate from the checkpoint alone
    assert main(["evaluate", "--checkpoint", str(out / "last.pt")]) == 0
    assert "(epoch 2) | synthetic:2 |" in capsys.readouterr().out

    # export: both formats, equal to the checkpoint's extractor
    extractor = FeatureExtractor(out / "last.pt", device="cpu")
    images = torch.rand(3, 3, height, width)
    images = (images - torch.tensor(extractor.mean)[:, None, None]) / torch.tensor(extractor.std)[
        :, None, None
    ]
    with torch.no_grad():
        expected = extractor.net(images)
    # extract and search from the checkpoint alone
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 20, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    npz = tmp_path / "f.npz"
    assert main(["extract", "--checkpoint", str(out / "last.pt"), "--images", str(folder),
                 "--out", str(npz)]) == 0  # fmt: skip
    emb = load_embeddings(npz)
    feats, _ = extractor.extract_folder(folder)
    np.testing.assert_allclose(emb.features, feats.numpy(), rtol=1e-5, atol=1e-6)
    ranked = tmp_path / "r.csv"
    assert main(["search", "--query", str(npz), "--gallery", str(npz), "--out", str(ranked),
                 "--topk", "2"]) == 0  # fmt: skip
    assert ranked.read_text().count("\n") == 1 + 3 * 2

    ts = tmp_path / "m.torchscript"
    assert main(["export", "--checkpoint", str(out / "last.pt"), "--out", str(ts)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        net = torch.jit.load(str(ts))
    with torch.no_grad():
        torch.testing.assert_close(net(images), expected, rtol=1e-4, atol=1e-5)
    meta = json.loads(Path(f"{ts}.json").read_text())
    assert meta["input"]["mean"] == list(cfg["mean"])

    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    onnx_path = tmp_path / "m.onnx"
    cmd = ["export", "--checkpoint", str(out / "last.pt"), "--format", "onnx"]
    assert main([*cmd, "--out", str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-3, atol=1e-4)


def test_model_without_second_derivative_trains_at_first_order(
    tiny_bench, tmp_path, capsys, tiny_config
):
    from metareid.engine import Trainer

    cfg = tiny_config(
        tiny_bench, tmp_path / "run", arch="tv:mobilenet_v3_small", height=32, width=32
    )
    with pytest.raises(ValueError, match=r"hardsigmoid_backward.*--meta-test-grad first_order"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    first = tiny_config(
        tiny_bench,
        tmp_path / "run",
        arch="tv:mobilenet_v3_small",
        height=32,
        width=32,
        meta_test_grad="first_order",
    )
    result = Trainer(first).fit()
    assert np.isfinite(result.final.mAP)


def test_input_follows_the_model_unless_overridden(tiny_bench, tmp_path, tiny_config):
    from metareid.engine import Trainer

    vit = "timm:vit_tiny_patch16_224"
    declared = timm.get_pretrained_cfg("vit_tiny_patch16_224")
    cfg = tiny_config(tiny_bench, tmp_path / "a", arch=vit, height=32, width=16)
    cfg.mean = cfg.std = None  # the model's (timm's pretrained_cfg: 0.5)
    trainer = Trainer(cfg)
    assert trainer.cfg.mean == tuple(declared.mean) and trainer.cfg.std == tuple(declared.std)
    normalize = trainer.test_transform.transforms[-1]
    assert list(normalize.mean) == list(declared.mean)

    over = tiny_config(tiny_bench, tmp_path / "b", arch=vit, height=32, width=16)
    over.mean, over.std = (0.4, 0.4, 0.4), (0.2, 0.2, 0.2)
    trainer = Trainer(over)
    assert trainer.cfg.mean == (0.4, 0.4, 0.4) and trainer.cfg.std == (0.2, 0.2, 0.2)

    size = tiny_config(tiny_bench, tmp_path / "c", arch="timm:resnet10t", method="baseline")
    size.height = size.width = None  # timm's input_size
    trainer = Trainer(size)
    _, h, w = timm.get_pretrained_cfg("resnet10t").input_size
    assert (trainer.cfg.height, trainer.cfg.width) == (h, w)
