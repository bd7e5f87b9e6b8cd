"""build_model / list_models: names, options, errors before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from metareid.models import (
    IBN,
    ReIDModel,
    ReIDOutput,
    ResNetBackbone,
    _weights,
    build_model,
    list_models,
)

NAMES = ["ibn_resnet50a", "resnet10", "resnet18", "resnet34", "resnet50"]


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def forbidden(url: str, dst: str, timeout: float) -> None:
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(_weights, "_download", forbidden)


def test_list_models() -> None:
    assert list_models() == NAMES


def test_resnet18_model_shapes_and_modes() -> None:
    model = build_model("resnet18")
    assert isinstance(model, ReIDModel) and isinstance(model.backbone, ResNetBackbone)
    assert model.feat_dim == 512 and model.backbone.last_stride == 1
    out = model(torch.randn(2, 3, 32, 16))
    assert isinstance(out, ReIDOutput)
    assert out.pooled.shape == (2, 512) and out.features.shape == (2, 512)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 16)).shape == (2, 512)


def test_last_stride_reaches_the_backbone() -> None:
    x = torch.randn(2, 3, 64, 32)
    maps = []
    for stride in (1, 2):
        model = build_model("resnet18", last_stride=stride).eval()
        with torch.no_grad():
            maps.append(model.backbone(x).shape[-2:])
    assert maps == [(4, 2), (2, 1)]


def test_ibn_model_builds_and_runs() -> None:
    model = build_model("ibn_resnet50a").eval()
    assert model.feat_dim == 2048
    backbone = model.backbone
    assert isinstance(backbone, ResNetBackbone) and isinstance(backbone.layer3[5].bn1, IBN)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 16))
    assert feats.shape == (1, 2048)


def test_published_code_options() -> None:
    model = build_model(
        "resnet18",
        stem_relu=False,
        freeze_neck_bias=False,
        sample_scale="var",
        share_lambda=False,
        normalize_neck=False,
        num_classes=[2, 3],
    )
    assert model.backbone.stem_relu is False
    assert model.neck.bias.requires_grad
    assert (model.neck.sample_scale, model.neck.share_lambda) == ("var", False)
    assert model.normalize_neck is False
    assert isinstance(model.classifier, nn.ModuleList)


def test_local_weights_through_build_model(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = build_model("resnet18").backbone
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_model("resnet18", pretrained=str(path)).backbone
    assert isinstance(source, ResNetBackbone) and isinstance(backbone, ResNetBackbone)
    torch.testing.assert_close(backbone.layer3[1].conv2.weight, source.layer3[1].conv2.weight)


def test_unknown_arch_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown arch 'resnet101'.*'resnet18'.*'resnet50'"):
        build_model("resnet101")
    with pytest.raises(TypeError, match="arch must be a string"):
        build_model(50)  # type: ignore[arg-type]


def test_ibn_init_only_for_the_ibn_arch() -> None:
    with pytest.raises(
        ValueError, match=r"ibn_init='torchvision' only applies to arch 'ibn_resnet50a'"
    ):
        build_model("resnet18", ibn_init="torchvision")


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        build_model("resnet18", dropout=0.5)  # type: ignore[call-arg]


@pytest.mark.usefixtures("no_download")
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"sample_scale": "sigma"}, ValueError, "sample_scale"),
        ({"normalize_neck": "yes"}, TypeError, "normalize_neck"),
        ({"last_stride": 4}, ValueError, "last_stride must be 1 or 2, got 4"),
        ({"pretrained": 1.5}, TypeError, "pretrained"),
    ],
)
def test_bad_arguments_fail_before_any_download(kwargs: dict, error: type, pattern: str) -> None:
    arguments = {"pretrained": True, **kwargs}
    with pytest.raises(error, match=pattern):
        build_model("resnet18", **arguments)
