"""ReIDModel: output contract, BNNeck, custom backbones, classifiers, MetaLearner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metareid import HardTripletLoss, MemoryBank, MemoryIDLoss, MetaBN, MetaLearner, metabn_phase
from metareid.models import ReIDModel, ReIDOutput, ResNetBackbone, build_model

C = 8


def _trunk(channels: int = C, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(channels))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _model(**kwargs: object) -> ReIDModel:
    torch.manual_seed(0)
    return ReIDModel(_trunk(), **kwargs)  # type: ignore[arg-type]


def _images(b: int = 4, seed: int = 0) -> Tensor:
    return torch.randn(b, 3, 16, 8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- output contract
def test_train_mode_returns_pooled_and_normalised_features() -> None:
    model = _model()
    x = _images()
    out = model(x)
    assert isinstance(out, ReIDOutput) and isinstance(out, tuple)
    assert out.pooled.shape == (4, C) and out.features.shape == (4, C)
    assert out.logits is None
    # Reference written out by hand: mean over the map, batch-norm, then unit length.
    fmap = model.backbone(x)
    pooled = fmap.flatten(2).sum(dim=2) / fmap[0, 0].numel()
    torch.testing.assert_close(out.pooled, pooled)
    mean, var = pooled.mean(dim=0), pooled.var(dim=0, unbiased=False)
    neck = (pooled - mean) / torch.sqrt(var + model.neck.eps)
    torch.testing.assert_close(out.features, neck / neck.norm(dim=1, keepdim=True))
    torch.testing.assert_close(out.features.norm(dim=1), torch.ones(4))


def test_eval_mode_returns_the_normalised_tensor() -> None:
    model = _model()
    model(_images())  # move the running statistics
    model.eval()
    x = _images(seed=1)
    feats = model(x)
    assert isinstance(feats, Tensor) and feats.shape == (4, C)
    pooled = model.backbone(x).mean(dim=(2, 3))
    neck = model.neck(pooled)
    torch.testing.assert_close(feats, F.normalize(neck, dim=1))
    with metabn_phase(model, "meta_test"):  # eval mode never mixes
        assert model(x).shape == (4, C)


def test_normalize_neck_false_returns_the_raw_neck_output() -> None:
    model = _model(normalize_neck=False)
    out = model(_images())
    assert isinstance(out, ReIDOutput)
    torch.testing.assert_close(out.features, model.neck.train()(out.pooled))
    assert not torch.allclose(out.features.norm(dim=1), torch.ones(4))
    assert not torch.allclose(model.eval()(_images()).norm(dim=1), torch.ones(4))


def test_meta_test_phase_gives_k_mixtures() -> None:
    model = _model(num_classes=[3, 5])
    with metabn_phase(model, "meta_train"):
        model(_images(seed=1))
        model(_images(seed=2))
    with metabn_phase(model, "meta_test"):
        out = model(_images(seed=3))
    assert isinstance(out, ReIDOutput)
    assert out.pooled.shape == (4, C)
    assert out.features.shape == (2 * 4, C)
    torch.testing.assert_close(out.features.norm(dim=1), torch.ones(8))
    assert isinstance(out.logits, list)
    assert [t.shape for t in out.logits] == [(8, 3), (8, 5)]


@pytest.mark.parametrize("normalize_neck", [True, False])
def test_neck_features_is_the_eval_forward_and_the_train_features(normalize_neck: bool) -> None:
    model = _model(normalize_neck=normalize_neck, num_classes=3)
    x = _images(seed=4)
    train_out = model(x)
    assert isinstance(train_out, ReIDOutput)
    assert torch.equal(model.neck_features(x), train_out.features)  # batch statistics
    model.eval()
    feats = model.neck_features(x)
    assert torch.equal(model(x), feats)
    # Written out from the parts: mean over the map, the neck's running statistics, L2.
    pooled = model.backbone(x).flatten(2).mean(dim=2)
    neck = (pooled - model.neck.running_mean) / torch.sqrt(model.neck.running_var + 1e-5)
    neck = neck * model.neck.weight + model.neck.bias
    expected = neck / neck.norm(dim=1, keepdim=True) if normalize_neck else neck
    torch.testing.assert_close(feats, expected)


def test_neck_features_with_a_plain_batchnorm_neck_is_the_same() -> None:
    """The MetaBN-to-BatchNorm swap (``MetaBN.to_batchnorm``) keeps the eval embedding."""
    model = _model()
    model(_images())  # move the running statistics
    model.eval()
    x = _images(seed=5)
    expected = model.neck_features(x)
    model.neck = model.neck.to_batchnorm()  # type: ignore[assignment]
    assert type(model.neck) is nn.BatchNorm1d
    assert torch.equal(model.neck_features(x), expected)


def test_neck_features_checks_the_backbone_output() -> None:
    model = ReIDModel(nn.Flatten(), feat_dim=5)
    with pytest.raises(ValueError, match="returned 6 channels, but feat_dim is 5"):
        model.neck_features(torch.randn(2, 6))
    bad = ReIDModel(nn.Identity(), feat_dim=3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, C\), got \(2, 3, 4\)"):
        bad.eval().neck_features(torch.randn(2, 3, 4))


# ------------------------------------------------------------------------- BNNeck
def test_neck_is_a_metabn_with_frozen_bias_by_default() -> None:
    model = _model()
    assert isinstance(model.neck, MetaBN) and model.neck.num_features == C
    assert torch.equal(model.neck.weight, torch.ones(C))
    assert torch.equal(model.neck.bias, torch.zeros(C))
    assert not model.neck.bias.requires_grad and model.neck.weight.requires_grad
    out = model(_images())
    out.features.sum().backward()
    assert model.neck.bias.grad is None and model.neck.weight.grad is not None
    assert all(p is not model.neck.bias for p in model.parameters() if p.requires_grad)


def test_neck_bias_can_be_trained_and_metabn_options_pass_through() -> None:
    model = _model(freeze_neck_bias=False, sample_scale="var", share_lambda=False)
    assert model.neck.bias.requires_grad
    assert (model.neck.sample_scale, model.neck.share_lambda) == ("var", False)


# ------------------------------------------------------------------------- custom backbones
def test_feature_map_backbone_and_feat_dim_inference() -> None:
    trunk = _trunk(channels=6)
    trunk.train()
    bn = trunk[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    before = bn.running_mean.clone()
    model = ReIDModel(trunk)
    assert model.feat_dim == 6 and model.neck.num_features == 6
    assert trunk.training  # mode restored after the dry run
    assert torch.equal(bn.running_mean, before)  # the dry run ran in eval mode
    assert bn.num_batches_tracked is not None and int(bn.num_batches_tracked) == 0


def test_vector_backbone_is_not_pooled() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(10, 5))
    model = ReIDModel(backbone, dry_run_shape=(10,))
    assert model.feat_dim == 5
    x = torch.randn(4, 10)
    out = model(x)
    assert isinstance(out, ReIDOutput)
    torch.testing.assert_close(out.pooled, backbone(x))
    assert ReIDModel(backbone, feat_dim=5).feat_dim == 5  # no dry run needed


def test_backbone_dtype_is_followed() -> None:
    torch.manual_seed(0)
    model = ReIDModel(_trunk().double(), num_classes=3)
    assert model.neck.weight.dtype == torch.float64
    assert model.classifier is not None
    out = model(_images().double())
    assert isinstance(out, ReIDOutput) and out.features.dtype == torch.float64


def test_bad_backbones_and_feat_dim() -> None:
    with pytest.raises(TypeError, match=r"backbone must be an nn\.Module"):
        ReIDModel(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"could not infer feat_dim.*\(2, 3, 64, 32\)"):
        ReIDModel(nn.Linear(10, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, C\), got \(2, 3, 2048\)"):
        ReIDModel(nn.Flatten(start_dim=2))
    with pytest.raises(ValueError, match="feat_dim"):
        ReIDModel(_trunk(), feat_dim=0)
    with pytest.raises(TypeError, match="feat_dim"):
        ReIDModel(_trunk(), feat_dim=8.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dry_run_shape"):
        ReIDModel(_trunk(), dry_run_shape=(3, 0, 4))
    model = ReIDModel(_trunk(), feat_dim=5)
    with pytest.raises(ValueError, match="returned 8 channels, but feat_dim is 5"):
        model(_images())


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"normalize_neck": 1}, TypeError, "normalize_neck must be a bool"),
        ({"freeze_neck_bias": None}, TypeError, "freeze_neck_bias must be a bool"),
        ({"share_lambda": "yes"}, TypeError, "share_lambda must be a bool"),
        ({"sample_scale": "sigma"}, ValueError, "sample_scale"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"num_classes": []}, ValueError, "num_classes"),
        ({"num_classes": [3, 0]}, ValueError, r"num_classes\[1\]"),
        ({"num_classes": "3"}, TypeError, "num_classes"),
        ({"num_classes": 2.0}, TypeError, "num_classes"),
    ],
)
def test_bad_neck_arguments(kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        ReIDModel(_trunk(), **kwargs)


# ------------------------------------------------------------------------- classifiers
def test_global_classifier_logits() -> None:
    model = _model(num_classes=7)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.bias is None
    out = model(_images())
    assert isinstance(out, ReIDOutput) and isinstance(out.logits, Tensor)
    assert out.logits.shape == (4, 7)
    neck = model.neck(out.pooled)  # classifiers see the neck output before normalisation
    torch.testing.assert_close(out.logits, neck @ model.classifier.weight.T)
    assert isinstance(model.eval()(_images()), Tensor)


def test_per_domain_classifier_logits() -> None:
    model = _model(num_classes=(3, 4, 5))
    assert isinstance(model.classifier, nn.ModuleList) and len(model.classifier) == 3
    out = model(_images())
    assert isinstance(out, ReIDOutput) and isinstance(out.logits, list)
    assert [t.shape for t in out.logits] == [(4, 3), (4, 4), (4, 5)]
    names = {n for n, _ in model.named_parameters()}
    assert {"classifier.0.weight", "classifier.2.weight"} <= names  # inside the model


# ------------------------------------------------------------------------- state dict
def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=[3, 4])
    x = torch.randn(4, 3, 32, 16)
    model(x)  # move running statistics
    torch.manual_seed(1)
    other = build_model("resnet18", num_classes=[3, 4])
    missing, unexpected = other.load_state_dict(model.state_dict())
    assert not missing and not unexpected
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), model.eval()(x))
    keys = model.state_dict().keys()
    assert {"neck.weight", "neck.bias", "neck.running_mean", "backbone.conv1.weight"} <= keys


# ------------------------------------------------------------------------- MetaLearner
def _meta_setup(
    model: ReIDModel, domains: int = 3, ids: int = 2, b: int = 4
) -> tuple[list[tuple[Tensor, Tensor]], list[MemoryBank]]:
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(b, 3, 32, 16, generator=g) + d, torch.arange(b) % ids) for d in range(domains)
    ]
    banks = []
    for _ in range(domains):
        bank = MemoryBank(num_classes=ids, dim=model.feat_dim)
        feats = F.normalize(torch.randn(2 * ids, model.feat_dim, generator=g), dim=1)
        bank.init_from(feats, torch.arange(2 * ids) % ids)
        banks.append(bank)
    return batches, banks


@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize("heads", [None, [2, 2, 2]])
def test_one_meta_step_on_a_tiny_model(backend: str, heads: list[int] | None) -> None:
    torch.manual_seed(0)
    model = ReIDModel(_trunk(), num_classes=heads)
    batches, banks = _meta_setup(model)
    memory_loss, triplet = MemoryIDLoss(), HardTripletLoss(margin=0.3)
    shapes: list[tuple[str, int, int]] = []

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor], domain: int, phase: str) -> Tensor:
        x, y = batch
        out = m(x)
        reps = out.features.shape[0] // y.shape[0]
        shapes.append((phase, out.pooled.shape[0], out.features.shape[0]))
        labels = y.repeat(reps)
        loss = memory_loss(out.features, labels, banks[domain]) + triplet(out.pooled, y)
        if out.logits is not None:
            loss = loss + F.cross_entropy(out.logits[domain], labels)
        return loss

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = MetaLearner(model, opt, backend=backend)  # type: ignore[arg-type]
    result = learner.step(batches, loss_fn, meta_test=2)
    assert shapes == [("meta_train", 4, 4), ("meta_train", 4, 4), ("meta_test", 4, 8)]
    assert torch.isfinite(torch.tensor([result.meta_train_loss, result.meta_test_loss])).all()
    after = dict(model.named_parameters())
    assert not torch.equal(after["backbone.0.weight"], before["backbone.0.weight"])
    assert not torch.equal(after["neck.weight"], before["neck.weight"])
    assert torch.equal(after["neck.bias"], before["neck.bias"])  # frozen
    if heads is not None:
        # The meta-test head (domain 2) only sees the meta-test loss at Theta'.
        assert model.classifier is not None
        assert not torch.equal(after["classifier.2.weight"], before["classifier.2.weight"])


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_one_meta_step_with_resnet18(backend: str) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18")
    batches, banks = _meta_setup(model, domains=2, b=4)
    memory_loss, triplet = MemoryIDLoss(), HardTripletLoss(margin=0.3)

    def loss_fn(m: nn.Module, batch: tuple[Tensor, Tensor], domain: int, phase: str) -> Tensor:
        x, y = batch
        out = m(x)
        labels = y.repeat(out.features.shape[0] // y.shape[0])
        return memory_loss(out.features, labels, banks[domain]) + triplet(out.pooled, y)

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    backbone = model.backbone
    assert isinstance(backbone, ResNetBackbone)
    conv = backbone.conv1.weight.detach().clone()
    learner = MetaLearner(model, opt, backend=backend)  # type: ignore[arg-type]
    result = learner.step(batches, loss_fn, meta_test=1)
    assert result.meta_test_domain == 1
    assert not torch.equal(backbone.conv1.weight, conv)
