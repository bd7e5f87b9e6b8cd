"""MetaLearner on torchvision and timm backbones: both backends, both orders.

Tiny configurations of each family (random weights, 32 x 32 inputs) behind a MetaBN neck
and a classifier, the loss as a user would write it (``mixture_count``). What is checked:
the step runs and gives finite gradients; both backends give the same gradients; on ViT
and ConvNeXt the gradients equal an independent float64 reference
(``tests/reference_meta.py``) for the full and the first-order meta-gradient; a model with
an operation without a second derivative (MobileNetV3's hardsigmoid) gets a clear error
naming it, with its buffers and gradients unchanged, and trains at first order. The timm
models need the optional ``timm`` package (``pip install timm``); they are skipped without.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from reference_meta import reference_objective
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchvision.models import (
    convnext,
    efficientnet,
    mobilenetv3,
    resnet,
    swin_transformer,
    vision_transformer,
)

from metareid import MetaLearner, mixture_count
from metareid.models import ReIDModel

SIZE = 32
NUM_CLASSES = 3


def _tv_resnet() -> nn.Module:
    m = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1])
    m.fc = nn.Identity()
    return m


def _tv_efficientnet() -> nn.Module:
    setting, last = efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=0.25, depth_mult=0.1
    )
    m = efficientnet.EfficientNet(setting, dropout=0.0, last_channel=last)
    m.classifier = nn.Identity()
    return m


def _tv_convnext() -> nn.Module:
    blocks = [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)]
    m = convnext.ConvNeXt(blocks, stochastic_depth_prob=0.0)
    m.classifier[-1] = nn.Identity()
    return m


def _tv_swin() -> nn.Module:
    m = swin_transformer.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=[2, 2],
        stochastic_depth_prob=0.0,
    )
    m.head = nn.Identity()
    return m


def _tv_vit() -> nn.Module:
    m = vision_transformer.VisionTransformer(
        image_size=SIZE, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    m.heads = nn.Identity()
    return m


def _tv_mobilenetv3() -> nn.Module:
    setting, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    m = mobilenetv3.MobileNetV3(setting, last_channel=16)
    m.classifier = nn.Identity()
    return m


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=0, **kw)

    return build


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "tv:resnet": _tv_resnet,
    "tv:efficientnet": _tv_efficientnet,
    "tv:convnext": _tv_convnext,
    "tv:swin": _tv_swin,
    "tv:vit": _tv_vit,
    "tv:mobilenetv3": _tv_mobilenetv3,
    "timm:vit": _timm(
        "vit_tiny_patch16_224", img_size=SIZE, patch_size=8, depth=1, embed_dim=16, num_heads=2
    ),
    "timm:convnext": _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
    "timm:swin": _timm(
        "swin_tiny_patch4_window7_224",
        img_size=SIZE,
        window_size=2,
        embed_dim=8,
        depths=(1, 1),
        num_heads=(1, 2),
    ),
    "timm:efficientnet": _timm("tinynet_e"),
    "timm:mobilenetv3": _timm("mobilenetv3_small_050"),
}
#: Backbones with an operation whose backward has no derivative (hardsigmoid, hardswish).
NO_SECOND_ORDER = {"tv:mobilenetv3", "timm:mobilenetv3"}
#: The larger ones (seconds per step on 2 CPU cores): run with ``-m slow``.
SLOW = {"tv:resnet", "tv:efficientnet", "timm:efficientnet", "timm:mobilenetv3"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def make_model(name: str, dtype: torch.dtype = torch.float32, metabn: bool = True) -> ReIDModel:
    torch.manual_seed(0)
    trunk = BACKBONES[name]()
    model = ReIDModel(trunk, num_classes=NUM_CLASSES, dry_run_shape=(3, SIZE, SIZE))
    if not metabn:
        model.neck = model.neck.to_batchnorm()  # type: ignore[assignment]
    return model.to(dtype).train()


def batches(dtype: torch.dtype = torch.float32) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(6, 3, SIZE, SIZE, generator=g, dtype=dtype) + 0.2 * d,
            torch.tensor([0, 0, 1, 1, 2, 2]),
        )
        for d in range(3)
    ]


def loss_fn(model: nn.Module, batch, domain: int, phase) -> Tensor:
    images, labels = batch
    k = mixture_count(model)  # MetaBN mixtures in meta-test, else 1
    out = model(images)
    return F.cross_entropy(out.logits, labels.repeat(k))


def meta_grads(model: nn.Module, backend: str, mode: str) -> list[Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    learner = MetaLearner(model, opt, backend=backend, meta_test_grad=mode)
    learner.meta_backward(batches(next(model.parameters()).dtype), loss_fn, meta_test=2)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        pytest.param(n, m, marks=[pytest.mark.slow] if n in SLOW else [])
        for n in BACKBONES
        for m in ("full", "first_order")
        if not (m == "full" and n in NO_SECOND_ORDER)  # see the test after this one
    ],
)
def test_both_backends_agree_on_every_backbone(name, mode):
    got = {b: meta_grads(make_model(name, torch.float64), b, mode) for b in ("higher", "func")}
    assert got["func"] and all(torch.isfinite(g).all() for g in got["func"])
    for a, b in zip(got["higher"], got["func"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", _params(sorted(NO_SECOND_ORDER)))
def test_an_op_without_second_derivative_is_named(name):
    model = make_model(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    learner = MetaLearner(model, opt, backend="func")
    with pytest.raises(RuntimeError, match=r"without a second derivative.*hard.*first_order"):
        learner.step(batches(), loss_fn, meta_test=2)
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name", ["tv:vit", "tv:convnext", "timm:vit"])
@pytest.mark.parametrize("mode", ["full", "first_order"])
def test_gradients_equal_an_independent_float64_reference(name, mode):
    model = make_model(name, torch.float64, metabn=False)
    model.neck.bias.requires_grad_(True)  # the reference trains every parameter
    ref_model = copy.deepcopy(model)
    theta = [p.detach().clone().requires_grad_() for p in ref_model.parameters()]

    def criterion(out, y):
        return F.cross_entropy(out.logits, y)

    with sdpa_kernel(SDPBackend.MATH):  # the reference needs a double backward too
        _, ref = reference_objective(
            ref_model,
            theta,
            batches(torch.float64),
            2,
            inner="adam",
            lr=1e-3,
            wd=5e-4,
            eps_root=1e-5,
            mode=mode,
            criterion=criterion,
        )
    for backend in ("higher", "func"):
        twin = copy.deepcopy(model)
        got = meta_grads(twin, backend, mode)
        for g, r in zip(got, ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


class Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.alias = self.shared  # one submodule, two names
        self.out = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.alias(torch.tanh(self.shared(x)))))


def test_func_refuses_aliased_submodules_and_higher_keeps_them():
    model = Aliased()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match=r"submodule under two names \('shared' and 'alias'\)"):
        MetaLearner(model, opt, backend="func")
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="parameter under two names"):
        MetaLearner(tied, torch.optim.SGD(tied.parameters(), lr=0.1), backend="func")
    # higher: the aliased module stays one Parameter-holding module and keeps training.
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(6, 4, generator=g), torch.randint(0, NUM_CLASSES, (6,), generator=g))]

    def ce(m, batch, domain, phase):
        return F.cross_entropy(m(batch[0]), batch[1])

    learner = MetaLearner(model, opt, backend="higher")
    before = model.shared.weight.detach().clone()
    for mode in ("full", "first_order"):
        learner.meta_test_grad = mode
        learner.step(data * 3, ce, meta_test=0)
    assert model.alias is model.shared and isinstance(model.shared.weight, nn.Parameter)
    assert not torch.equal(model.shared.weight, before)
    assert model.shared.weight.grad is not None
