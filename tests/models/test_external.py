"""torchvision and timm models as ReID trunks (``"tv:<name>"``, ``"timm:<name>"``).

The references are independent of :mod:`metareid.models.external`: the built-in
torchvision-based ResNet with ``last_stride=1`` (same weights, same output), the
classification model's own penultimate features, timm's and torchvision's declared input
configurations, and hand-written feature-map sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tv_models

from metareid.meta import missing_second_derivative
from metareid.models import (
    REID_INPUT,
    ExternalBackbone,
    build_external_backbone,
    build_model,
    input_config,
    is_external_arch,
    model_from_config,
    resnet18,
    set_last_stride_one,
)
from metareid.models import external as external_module

timm = pytest.importorskip("timm")


def _final_map(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Height and width of the last Conv2d output of one eval forward."""
    sizes: list[tuple[int, int]] = []
    hooks = [
        m.register_forward_hook(lambda m, a, o: sizes.append(tuple(o.shape[-2:])))
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]
    module.eval()
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return sizes[-1]


def test_tv_resnet_equals_the_builtin_resnet_with_last_stride_one():
    torch.manual_seed(0)
    ours = resnet18(pretrained=False, last_stride=1)
    trunk = build_external_backbone("tv:resnet18", input_size=(64, 32))
    state = {k: v for k, v in ours.state_dict().items()}
    trunk.body.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 64, 32)
    ours.eval(), trunk.eval()
    with torch.no_grad():
        expected = ours(x).mean(dim=(2, 3))
        torch.testing.assert_close(trunk(x), expected)
    assert trunk.body.layer4[0].conv1.stride == (1, 1)
    assert trunk.body.layer4[0].downsample[0].stride == (1, 1)
    assert "layer4.0.conv1, layer4.0.downsample.0 now have stride 1" in trunk.notes[0]


@pytest.mark.parametrize(
    ("arch", "before", "after"),
    [
        ("tv:efficientnet_b0", (2, 1), (4, 2)),
        ("timm:resnet50d", (2, 1), (4, 2)),  # avg-pool shortcut becomes the identity
        ("timm:resnet10t", (2, 1), (4, 2)),
    ],
)
def test_last_stride_one_doubles_the_final_map(arch, before, after):
    x = torch.zeros(1, 3, 64, 32)
    two = build_external_backbone(arch, last_stride=2, input_size=(64, 32))
    one = build_external_backbone(arch, last_stride=1, input_size=(64, 32))
    assert _final_map(two.body, x) == before and _final_map(one.body, x) == after
    assert two.notes == () and one.notes[0].startswith("last stride 1:")
    assert two(x).shape == one(x).shape == (1, one.out_channels)


@pytest.mark.parametrize(
    ("arch", "size", "why"),
    [
        ("tv:convnext_tiny", (64, 32), "features.6.1 (Conv2d, kernel 2x2, stride 2x2), is a patch merge"),
        ("timm:convnext_atto", (64, 32), "stages.3.downsample.1 (Conv2d, kernel 2x2, stride 2x2)"),
        ("timm:vit_tiny_patch16_224", (64, 32), "patch_embed.proj (Conv2d, kernel 16x16, stride 16x16), is not a stride-2 stage"),
        ("tv:swin_t", (64, 32), "features.0.0 (Conv2d, kernel 4x4, stride 4x4), is not a stride-2"),
    ],
)  # fmt: skip
def test_architectures_without_a_last_stride_keep_theirs_and_say_why(arch, size, why):
    x = torch.zeros(1, 3, *size)
    one = build_external_backbone(arch, input_size=size)
    two = build_external_backbone(arch, last_stride=2, input_size=size)
    assert why in one.notes[0] and "the model keeps its strides" in one.notes[0]
    one.load_state_dict(two.state_dict())
    one.eval(), two.eval()
    with torch.no_grad():
        torch.testing.assert_close(one(x), two(x))  # unchanged


def test_set_last_stride_one_on_a_model_without_convolutions():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    note = set_last_stride_one(net, torch.zeros(1, 3, 2, 2), "tv:mlp")
    assert note == "last_stride=1 does not apply to tv:mlp: it has no 2-D convolution or pooling"


@pytest.mark.parametrize(
    ("arch", "reference"),
    [
        ("tv:convnext_tiny", lambda m: nn.Sequential(*list(m.children())[:-1], m.classifier[:-1])),
        ("tv:vit_b_32", None),
        ("timm:convnext_atto", None),
    ],
)
def test_the_head_is_removed_and_the_models_pooling_kept(arch, reference):
    torch.manual_seed(0)
    size = (32, 32)
    trunk = build_external_backbone(arch, last_stride=2, input_size=size).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = trunk(x)
        if arch.startswith("timm:"):
            full = timm.create_model(arch[5:], pretrained=False).eval()
            full.load_state_dict(trunk.body.state_dict(), strict=False)
            expected = full.forward_head(full.forward_features(x), pre_logits=True)
        elif reference is not None:
            full = tv_models.get_model(arch[3:]).eval()
            full.load_state_dict(trunk.body.state_dict(), strict=False)
            expected = reference(full)(x)
        else:  # torchvision ViT: the class token after the encoder
            full = tv_models.get_model(arch[3:], image_size=32).eval()
            full.load_state_dict(trunk.body.state_dict(), strict=False)
            tokens = full._process_input(x)
            cls = full.class_token.expand(x.shape[0], -1, -1)
            expected = full.encoder(torch.cat([cls, tokens], dim=1))[:, 0]
    torch.testing.assert_close(feats, expected)
    assert feats.shape == (2, trunk.out_channels)


def test_input_config_follows_the_libraries():
    assert input_config("resnet50") == REID_INPUT == (256, 128, REID_INPUT.mean, REID_INPUT.std)
    cfg = timm.get_pretrained_cfg("vit_small_patch16_224")
    vit = input_config("timm:vit_small_patch16_224")
    assert (3, vit.height, vit.width) == cfg.input_size and vit.mean == tuple(cfg.mean)
    tv = tv_models.get_model_weights("vit_b_16").DEFAULT.transforms()
    tv_vit = input_config("tv:vit_b_16")
    assert tv_vit[:2] == (224, 224) and list(tv_vit.std) == list(tv.std)
    assert input_config("tv:convnext_tiny")[:2] == (256, 128)
    tagged = timm.get_pretrained_cfg("resnet50.a1_in1k")
    assert input_config("timm:resnet50.a1_in1k").height == tagged.input_size[1]


def test_pretrained_path_loads_the_classification_weights(tmp_path: Path):
    torch.manual_seed(0)
    source = tv_models.resnet18()  # with its ImageNet classifier, as users save it
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    trunk = build_external_backbone("tv:resnet18", pretrained=str(path), input_size=(64, 32))
    for key, value in trunk.body.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key])
    assert f"weights of tv:resnet18 from {path}" in trunk.notes

    # timm: the checkpoint filter adapts the position embedding to another input size
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    vpath = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), vpath)
    trunk = build_external_backbone("timm:vit_tiny_patch16_224", str(vpath), input_size=(64, 32))
    torch.testing.assert_close(trunk.body.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    assert trunk.body.pos_embed.shape[1] == 1 + (64 // 16) * (32 // 16)


def test_torchvision_vit_weights_are_interpolated_to_the_image_size(tmp_path: Path):
    torch.manual_seed(0)
    source = tv_models.vit_b_32()  # 224 x 224: 7 x 7 patches + the class token
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    trunk = build_external_backbone("tv:vit_b_32", pretrained=str(path), input_size=(64, 64))
    pos = trunk.body.encoder.pos_embedding
    assert pos.shape == (1, 1 + 2 * 2, 768)
    torch.testing.assert_close(pos[:, 0], source.encoder.pos_embedding[:, 0])  # class token
    torch.testing.assert_close(trunk.body.conv_proj.weight, source.conv_proj.weight)


def test_pretrained_weights_that_do_not_fit_are_refused(tmp_path: Path):
    path = tmp_path / "r34.pth"
    torch.save(tv_models.resnet34().state_dict(), path)
    with pytest.raises(ValueError, match="unexpected keys"):
        build_external_backbone("tv:resnet18", pretrained=str(path), input_size=(64, 32))
    with pytest.raises(FileNotFoundError, match="neither a URL nor an existing checkpoint"):
        build_external_backbone("tv:resnet18", pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_true_takes_each_librarys_usual_source(monkeypatch):
    seen: dict[str, object] = {}

    def fake_fetch(pretrained, url, *, what):
        seen["url"] = url
        return tv_models.resnet18().state_dict(), "cache/resnet18.pth"

    monkeypatch.setattr(external_module, "fetch_state_dict", fake_fetch)
    build_external_backbone("tv:resnet18", pretrained=True, input_size=(64, 32))
    assert seen["url"] == tv_models.ResNet18_Weights.DEFAULT.url

    calls: list[dict] = []
    real = timm.create_model

    def fake_create(name, **kwargs):
        calls.append({"name": name, **kwargs})
        return real(name, **{**kwargs, "pretrained": False})

    monkeypatch.setattr(timm, "create_model", fake_create)
    trunk = build_external_backbone("timm:resnet10t", pretrained=True, input_size=(64, 32))
    assert calls[-1]["pretrained"] is True and calls[-1]["num_classes"] == 0
    assert any("Hugging Face hub" in n for n in trunk.notes)


def test_bad_names_and_options_are_refused():
    with pytest.raises(
        ValueError, match=r"unknown torchvision classification model 'resnet19'.*close names"
    ):
        build_external_backbone("tv:resnet19")
    with pytest.raises(ValueError, match="unknown timm model 'convnext_atom'"):
        build_external_backbone("timm:convnext_atom")
    with pytest.raises(ValueError, match="expected 'tv:<name>'"):
        build_external_backbone("tv:")
    with pytest.raises(ValueError, match="last_stride must be 1 or 2, got 3"):
        build_external_backbone("tv:resnet18", last_stride=3)
    with pytest.raises(ValueError, match="takes square images"):
        build_external_backbone("tv:vit_b_32", input_size=(64, 32))
    with pytest.raises(ValueError, match="torchvision models have no activation-checkpointing"):
        build_external_backbone("tv:resnet18", checkpoint_activations=True)
    with pytest.raises(ValueError, match="input_size must be"):
        build_external_backbone("tv:resnet18", input_size=(64,))
    with pytest.raises(ValueError, match="stem_relu=False applies to the built-in ResNets only"):
        build_model("tv:resnet18", stem_relu=False)
    with pytest.raises(ValueError, match="'tv:<name>'"):
        build_model("convnext_tiny")
    assert is_external_arch("tv:resnet18") and not is_external_arch("resnet18")


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ImportError, match=r'pip install "metareid\[timm\]"'):
        build_external_backbone("timm:resnet10t")


def test_timm_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_external_backbone("timm:convnext_atto", input_size=(32, 32))
    ckpt = build_external_backbone(
        "timm:convnext_atto", input_size=(32, 32), checkpoint_activations=True
    )
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for net in (plain, ckpt):
        out = net.train()(x)
        (g,) = torch.autograd.grad(out.square().sum(), [net.body.stem[0].weight])
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1])


def test_model_from_config_rebuilds_the_same_network():
    cfg = {"arch": "timm:vit_tiny_patch16_224", "height": 32, "width": 16, "method": "m3l"}
    first, second = model_from_config(cfg), model_from_config(cfg)
    second.load_state_dict(first.state_dict())  # same keys and shapes
    assert isinstance(first.backbone, ExternalBackbone)
    assert first.backbone.body.pos_embed.shape[1] == 1 + (32 // 16) * (16 // 16)
    assert first.feat_dim == 192


def test_missing_second_derivative_finds_the_operation_and_changes_nothing():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Hardsigmoid(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert missing_second_derivative(net, torch.randn(3, 4)) == "aten::hardsigmoid_backward"
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])  # the probe ran on a copy
    assert (
        missing_second_derivative(nn.Sequential(nn.Linear(4, 4), nn.GELU()), torch.randn(3, 4))
        is None
    )
    vit = build_external_backbone("timm:vit_tiny_patch16_224", input_size=(32, 32))
    assert missing_second_derivative(vit, torch.randn(2, 3, 32, 32)) is None  # math attention


def test_timm_weights_that_cannot_be_fetched_say_what_to_do(monkeypatch):
    def offline(name, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"timm/resnet10t.*--pretrained /path/to/the/file"):
        build_external_backbone("timm:resnet10t", pretrained=True, input_size=(64, 32))
