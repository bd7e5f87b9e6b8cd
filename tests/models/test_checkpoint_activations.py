"""``checkpoint_activations``: the same numbers as without, in less memory.

Every test builds the same random float64 network twice, with and without activation
checkpointing of ``layer1`` to ``layer4``, and compares what matters: gradients, the
Hessian-vector product (a double backward through the recomputed stages), a second-order
``MetaLearner`` step on both backends, the BatchNorm running statistics (moved once per
forward, however often the backward recomputes), the random state of dropout inside a
stage, eval mode and the ``state_dict``. A forward hook counts how often a stage runs,
so that each comparison is known to have gone through the recomputation.
"""

from __future__ import annotations

from collections.abc import Callable

import higher
import pytest
import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from metareid import MetaLearner
from metareid.cli import build_parser
from metareid.config import TrainConfig
from metareid.models import ReIDModel, ResNetBackbone, build_model, model_from_config

TOL = 1e-10


def resnet10(checkpoint: bool) -> nn.Module:
    return build_model("resnet10", checkpoint_activations=checkpoint)


def ibn10(checkpoint: bool) -> nn.Module:
    """One BasicBlock per stage with IBN-a norms (instance norm beside the BN)."""
    trunk = ResNetBackbone(BasicBlock, (1, 1, 1, 1), ibn_a=True, checkpoint_activations=checkpoint)
    return ReIDModel(trunk, feat_dim=trunk.out_channels)


def pair(make: Callable[[bool], nn.Module] = resnet10) -> tuple[nn.Module, nn.Module]:
    """The same random network without and with checkpointing, in float64."""
    torch.manual_seed(0)
    plain = make(False).double()
    ckpt = make(True).double()
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


def images(seed: int = 1, n: int = 4, size: tuple[int, int] = (16, 8)) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=gen, dtype=torch.float64)


def loss_of(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out.features.pow(3).sum() + out.pooled.pow(2).mean()


def trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def count_runs(model: nn.Module) -> list[int]:
    """A counter of the calls of ``layer1``'s first conv (forward and recomputations)."""
    runs = [0]

    def hook(*_: object) -> None:
        runs[0] += 1

    model.backbone.layer1[0].conv1.register_forward_hook(hook)
    return runs


def gradient(model: nn.Module, x: Tensor, create_graph: bool = False) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss_of(model, x), trainable(model), create_graph=create_graph)


def hvp(model: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    """Gradient of ``<grad L, v>``: the Hessian of ``L`` times a fixed random ``v``."""
    params = trainable(model)
    grads = gradient(model, x, create_graph=True)
    gen = torch.Generator().manual_seed(2)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    inner = torch.stack([(g * u).sum() for g, u in zip(grads, v, strict=True)]).sum()
    return torch.autograd.grad(inner, params)


def buffers(model: nn.Module) -> dict[str, Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def assert_same_buffers(a: nn.Module, b: nn.Module) -> None:
    bufs_a, bufs_b = buffers(a), buffers(b)
    assert bufs_a.keys() == bufs_b.keys()
    for name, value in bufs_a.items():
        assert torch.equal(value, bufs_b[name]), name


def test_plain_checkpoint_would_move_the_running_stats_twice() -> None:
    """Negative control of the BN handling: torch's checkpoint alone recomputes the stage
    with its buffers, so the backward moves the running statistics a second time."""
    plain, _ = pair()
    stage = plain.backbone.layer1
    x = torch.randn(4, 64, 8, 4, dtype=torch.float64, requires_grad=True)
    out = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
    assert int(stage[0].bn1.num_batches_tracked) == 1
    out.sum().backward()
    assert int(stage[0].bn1.num_batches_tracked) == 2


@pytest.mark.parametrize("make", [resnet10, ibn10], ids=["resnet10", "ibn_a"])
def test_gradients_and_running_stats_match(make: Callable[[bool], nn.Module]) -> None:
    plain, ckpt = pair(make)
    runs = count_runs(ckpt)
    x = images(size=(32, 16))  # instance norm needs more than one pixel in layer3
    expected, got = gradient(plain, x), gradient(ckpt, x)
    assert runs[0] == 2  # the forward and one recomputation
    assert max_diff(list(expected), list(got)) <= TOL
    assert max(float(g.abs().max()) for g in expected) > 1e-3  # not a vacuous comparison
    assert_same_buffers(plain, ckpt)
    assert int(ckpt.backbone.layer4[0].bn1.num_batches_tracked) == 1


def test_hessian_vector_product_and_running_stats_match() -> None:
    plain, ckpt = pair()
    runs = count_runs(ckpt)
    x = images()
    expected, got = hvp(plain, x), hvp(ckpt, x)
    assert runs[0] == 3  # the forward, then a recomputation in each backward
    assert max_diff(list(expected), list(got)) <= TOL
    assert max(float(h.abs().max()) for h in expected) > 1e-3
    assert_same_buffers(plain, ckpt)
    assert int(ckpt.backbone.layer4[0].bn2.num_batches_tracked) == 1


@pytest.mark.parametrize(
    ("backend", "mode"),
    [("higher", "full"), ("func", "full"), ("func", "second_order_only")],
)
def test_second_order_meta_step_matches(backend: str, mode: str) -> None:
    def loss_fn(model: nn.Module, batch: Tensor, domain: int, phase: str) -> Tensor:
        return model(batch).features.pow(3).sum()

    batches = [images(seed=d) for d in range(3)]
    results = []
    for model in pair():
        # layer4's weights (most of resnet10's) are frozen to keep the test fast; its
        # activations are still checkpointed and differentiated twice.
        model.backbone.layer4.requires_grad_(False)
        runs = count_runs(model)
        opt = torch.optim.Adam(trainable(model), lr=1e-2)
        learner = MetaLearner(model, opt, meta_test_grad=mode, backend=backend)  # type: ignore[arg-type]
        torch.manual_seed(3)  # MetaBN draws its mixtures in the meta-test
        learner.meta_backward(batches, loss_fn, meta_test=0)
        results.append(([p.grad for p in trainable(model)], model, runs[0]))
    (expected, plain, plain_runs), (got, ckpt, ckpt_runs) = results
    assert ckpt_runs > plain_runs >= 2  # recomputed (hooks see the meta-train forwards)
    assert max_diff(expected, got) <= TOL
    assert_same_buffers(plain, ckpt)


def test_dropout_inside_a_stage_replays_its_mask() -> None:
    plain, ckpt = pair()
    for model in (plain, ckpt):
        model.backbone.layer2.append(nn.Dropout(0.5))
    x = images()
    grads = []
    for model in (plain, ckpt, plain):
        torch.manual_seed(7)
        grads.append(gradient(model, x))
    assert max_diff(list(grads[0]), list(grads[1])) <= TOL
    torch.manual_seed(8)  # another mask gives other gradients: the mask matters
    assert max_diff(list(grads[0]), list(gradient(plain, x))) > 1e-6


def test_eval_mode_and_no_grad_do_not_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    real = torch.utils.checkpoint.checkpoint

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    plain, ckpt = pair()
    x = images()
    plain.eval()
    ckpt.eval()
    assert torch.equal(plain(x), ckpt(x))
    ckpt.train()
    with torch.no_grad():
        ckpt(x)
    assert calls[0] == 0
    ckpt(x)
    assert calls[0] == 4  # layer1 to layer4


def test_state_dict_and_repr() -> None:
    plain, ckpt = pair()
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    assert ckpt.backbone.checkpoint_activations and not plain.backbone.checkpoint_activations
    assert "checkpoint_activations=True" in repr(ckpt.backbone)
    assert "checkpoint_activations" not in repr(plain.backbone)


def test_bad_flag_raises_before_building() -> None:
    with pytest.raises(TypeError, match=r"checkpoint_activations must be a bool, got 1"):
        build_model("resnet10", checkpoint_activations=1)  # type: ignore[arg-type]


def test_changed_higher_fast_weights_raise_instead_of_recomputing_wrongly() -> None:
    _, ckpt = pair()
    fmodel = higher.patch.monkeypatch(ckpt.backbone)
    x = images()
    weights = trainable(ckpt.backbone)
    out = fmodel(x, params=weights)
    fmodel(x, params=[w * 1.0 for w in weights])  # newer fast weights
    with pytest.raises(RuntimeError, match=r"fast weights of the higher-patched model changed"):
        torch.autograd.grad(out.sum(), weights)


def test_config_flag_builds_the_model() -> None:
    assert TrainConfig().checkpoint_activations is False
    args = build_parser().parse_args(["train", "--checkpoint-activations"])
    cfg = TrainConfig.from_args(args)
    assert cfg.checkpoint_activations is True
    assert TrainConfig.from_dict(cfg.to_dict()).checkpoint_activations is True
    model = model_from_config({"arch": "resnet10", "checkpoint_activations": True})
    assert model.backbone.checkpoint_activations is True
    stored = model_from_config({"arch": "resnet10"})  # a config of an earlier version
    assert stored.backbone.checkpoint_activations is False
    assert list(stored.state_dict()) == list(model.state_dict())
