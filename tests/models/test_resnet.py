"""ResNet / IBN-Net-a backbones: layout, strides, stem and argument checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from metareid.models import (
    IBN,
    ResNetBackbone,
    ibn_resnet50a,
    resnet18,
    resnet34,
    resnet50,
)

X = (2, 3, 64, 32)


def _images(seed: int = 0) -> Tensor:
    return torch.randn(*X, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ibn50() -> ResNetBackbone:
    torch.manual_seed(0)
    return ibn_resnet50a()


# ------------------------------------------------------------------------- strides
@pytest.mark.parametrize("block", [tv_resnet.BasicBlock, tv_resnet.Bottleneck])
def test_last_stride_one_doubles_the_final_map(block: Any) -> None:
    torch.manual_seed(0)
    s1 = ResNetBackbone(block, (1, 1, 1, 1), last_stride=1).eval()
    s2 = ResNetBackbone(block, (1, 1, 1, 1), last_stride=2).eval()
    with torch.no_grad():
        out1, out2 = s1(_images()), s2(_images())
    channels = 512 * block.expansion
    assert out1.shape == (2, channels, 4, 2)
    assert out2.shape == (2, channels, 2, 1)
    assert s1.out_channels == s2.out_channels == channels


def test_last_stride_changes_only_the_first_block_of_layer4() -> None:
    net = resnet50(last_stride=1)
    assert net.layer4[0].conv2.stride == (1, 1)
    assert net.layer4[0].downsample[0].stride == (1, 1)
    assert net.layer4[0].conv1.stride == (1, 1)
    assert net.layer3[0].conv2.stride == (2, 2)  # other stages untouched
    assert net.layer4[0].stride == 1
    net18 = resnet18(last_stride=1)
    assert net18.layer4[0].conv1.stride == (1, 1)
    assert net18.layer4[0].downsample[0].stride == (1, 1)
    assert resnet18(last_stride=2).layer4[0].conv1.stride == (2, 2)


def test_default_last_stride_is_one() -> None:
    assert resnet18().last_stride == 1


# ------------------------------------------------------------------------- layouts
def test_resnet50_has_torchvision_layout_without_fc() -> None:
    ours = resnet50()
    reference = tv_resnet.resnet50(weights=None)
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    assert isinstance(ours, tv_resnet.ResNet)
    assert not hasattr(ours, "fc") and not hasattr(ours, "avgpool")
    assert ours.out_channels == 2048


def test_resnet18_and_34_layouts() -> None:
    assert [len(s) for s in (resnet18().layer1, resnet18().layer4)] == [2, 2]
    net = resnet34()
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3, net.layer4)] == [3, 4, 6, 3]
    assert net.out_channels == 512


def test_ibn_a_layout(ibn50: ResNetBackbone) -> None:
    assert ibn50.ibn_a
    for stage in (ibn50.layer1, ibn50.layer2, ibn50.layer3):
        for block in stage:
            planes = block.conv1.out_channels
            assert isinstance(block.bn1, IBN)
            assert isinstance(block.bn1.IN, nn.InstanceNorm2d)
            assert block.bn1.IN.num_features == planes // 2
            assert block.bn1.IN.affine and not block.bn1.IN.track_running_stats
            assert isinstance(block.bn1.BN, nn.BatchNorm2d)
            assert block.bn1.BN.num_features == planes - planes // 2
            assert type(block.bn2) is nn.BatchNorm2d and type(block.bn3) is nn.BatchNorm2d
    for block in ibn50.layer4:
        assert type(block.bn1) is nn.BatchNorm2d
    assert type(ibn50.bn1) is nn.BatchNorm2d  # stem stays BN (IBN-a, not IBN-b)


def test_ibn_state_dict_keys_follow_the_ibn_net_release(ibn50: ResNetBackbone) -> None:
    keys = set(ibn50.state_dict())
    assert {"layer1.0.bn1.IN.weight", "layer1.0.bn1.IN.bias"} <= keys
    assert {"layer3.5.bn1.BN.running_mean", "layer3.5.bn1.BN.weight"} <= keys
    assert "layer4.0.bn1.weight" in keys and "layer1.0.bn1.weight" not in keys


def test_ibn_forward_works(ibn50: ResNetBackbone) -> None:
    with torch.no_grad():
        out = ibn50.eval()(torch.randn(1, 3, 64, 32))
        out_train = ibn50.train()(_images())
    assert out.shape == (1, 2048, 4, 2)
    assert out_train.shape == (2, 2048, 4, 2)
    assert torch.isfinite(out_train).all()


def test_small_ibn_trunk_forward_and_backward() -> None:
    torch.manual_seed(0)
    net = ResNetBackbone(tv_resnet.BasicBlock, (1, 1, 1, 1), ibn_a=True)
    out = net(_images())
    out.mean().backward()
    assert out.shape == (2, 512, 4, 2)
    assert net.layer1[0].bn1.IN.weight.grad is not None


# ------------------------------------------------------------------------- IBN
@pytest.mark.parametrize("channels", [6, 5])
def test_ibn_matches_split_reference(channels: int) -> None:
    torch.manual_seed(0)
    ibn = IBN(channels)
    with torch.no_grad():
        for p in ibn.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(3, channels, 4, 5)
    half = channels // 2
    # Reference: per-sample, per-channel standardisation for the first half, batch
    # statistics for the rest, written with explicit means and variances.
    first, rest = x[:, :half], x[:, half:]
    mu_i = first.mean(dim=(2, 3), keepdim=True)
    var_i = first.var(dim=(2, 3), unbiased=False, keepdim=True)
    ref_in = (first - mu_i) / torch.sqrt(var_i + 1e-5)
    ref_in = ref_in * ibn.IN.weight.view(1, -1, 1, 1) + ibn.IN.bias.view(1, -1, 1, 1)
    mu_b = rest.mean(dim=(0, 2, 3), keepdim=True)
    var_b = rest.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    ref_bn = (rest - mu_b) / torch.sqrt(var_b + 1e-5)
    ref_bn = ref_bn * ibn.BN.weight.view(1, -1, 1, 1) + ibn.BN.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(ibn(x), torch.cat([ref_in, ref_bn], dim=1))
    assert ibn.IN.num_features == half and ibn.BN.num_features == channels - half


def test_ibn_keeps_module_half_method() -> None:
    ibn = IBN(4).half()  # nn.Module.half must not be shadowed by an attribute
    assert ibn.BN.weight.dtype == torch.float16


def test_ibn_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\).*\(2, 5, 3, 3\)"):
        IBN(4)(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="num_features"):
        IBN(1)
    with pytest.raises(TypeError, match="num_features"):
        IBN(True)


# ------------------------------------------------------------------------- stem
def _stem_output(net: ResNetBackbone) -> Tensor:
    seen: list[Tensor] = []
    handle = net.maxpool.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        net(_images())
    handle.remove()
    return seen[0]


def test_stem_relu_option_changes_the_stem() -> None:
    torch.manual_seed(0)
    with_relu = ResNetBackbone(tv_resnet.BasicBlock, (1, 1, 1, 1), stem_relu=True)
    without = ResNetBackbone(tv_resnet.BasicBlock, (1, 1, 1, 1), stem_relu=False)
    without.load_state_dict(with_relu.state_dict())
    a, b = _stem_output(with_relu), _stem_output(without)
    assert (a >= 0).all()
    assert (b < 0).any()
    torch.testing.assert_close(a, F.relu(b))
    assert "stem_relu=False" in repr(without)


def test_builders_forward_options() -> None:
    net = resnet18(last_stride=2, stem_relu=False)
    assert (net.last_stride, net.stem_relu, net.ibn_a) == (2, False, False)


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"last_stride": 3}, ValueError, "last_stride must be 1 or 2, got 3"),
        ({"last_stride": "1"}, TypeError, "last_stride"),
        ({"last_stride": True}, TypeError, "last_stride"),
        ({"stem_relu": "no"}, TypeError, "stem_relu must be a bool"),
        ({"pretrained": 3}, TypeError, "pretrained must be a bool"),
        ({"pretrained": ""}, ValueError, "empty string"),
        ({"load_running_stats": 1}, TypeError, "load_running_stats"),
    ],
)
def test_builder_rejects_bad_arguments(kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        resnet18(**kwargs)


def test_ibn_builder_rejects_unknown_init() -> None:
    with pytest.raises(ValueError, match="ibn_init"):
        ibn_resnet50a(ibn_init="imagenet")


def test_backbone_rejects_bad_structure_and_input() -> None:
    with pytest.raises(TypeError, match="block"):
        ResNetBackbone(nn.Conv2d, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="layers"):
        ResNetBackbone(tv_resnet.BasicBlock, (1, 1, 1))
    with pytest.raises(ValueError, match="layers"):
        ResNetBackbone(tv_resnet.BasicBlock, (1, 0, 1, 1))
    net = ResNetBackbone(tv_resnet.BasicBlock, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.randn(3, 64, 32))


def test_resnet10_is_one_block_per_stage_and_has_no_imagenet_weights() -> None:
    import pytest

    from metareid.models import resnet10

    net = resnet10(last_stride=2)
    out = net(torch.randn(2, 3, 64, 32))
    assert out.shape == (2, 512, 2, 1)
    with pytest.raises(ValueError, match="no ImageNet weights for resnet10"):
        resnet10(pretrained=True)
