"""Tests for metareid.layers.MetaBN and metabn_phase."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from metareid.layers import MetaBN, metabn_phase

C = 4


def _pair(**kwargs: Any) -> tuple[MetaBN, nn.BatchNorm1d]:
    torch.manual_seed(0)
    meta = MetaBN(C, **kwargs)
    if meta.affine:
        with torch.no_grad():
            meta.weight.uniform_(0.5, 1.5)
            meta.bias.uniform_(-1.0, 1.0)
    reference = nn.BatchNorm1d(C, **kwargs)
    reference.load_state_dict(meta.state_dict())
    return meta, reference


def _assert_same_state(meta: nn.Module, reference: nn.Module) -> None:
    ours, theirs = meta.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def _record(bn: MetaBN, *batches: torch.Tensor) -> None:
    with metabn_phase(bn, "meta_train"):
        for batch in batches:
            bn(batch)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}, {"eps": 1e-3}],
)
@pytest.mark.parametrize("phase", ["normal", "meta_train"])
def test_train_mode_matches_batchnorm1d(kwargs: dict[str, Any], phase: str) -> None:
    meta, reference = _pair(**kwargs)
    meta.phase = phase
    for step in range(3):
        x = torch.randn(8, C) * (step + 1) + step
        torch.testing.assert_close(meta(x), reference(x), rtol=0, atol=0)
        _assert_same_state(meta, reference)


@pytest.mark.parametrize("phase", ["normal", "meta_train", "meta_test"])
def test_eval_mode_matches_batchnorm1d_in_every_phase(phase: str) -> None:
    meta, reference = _pair()
    x = torch.randn(8, C)
    meta(x), reference(x)  # move the running stats away from their initial values
    meta.eval(), reference.eval()
    meta.phase = phase
    torch.testing.assert_close(meta(x + 1), reference(x + 1), rtol=0, atol=0)
    _assert_same_state(meta, reference)
    assert meta.domain_stats == []  # nothing is recorded in eval mode


def test_is_a_drop_in_batchnorm1d() -> None:
    meta, reference = _pair()
    assert isinstance(meta, nn.BatchNorm1d)
    assert [n for n, _ in meta.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert [n for n, _ in meta.named_buffers()] == [n for n, _ in reference.named_buffers()]
    reference.load_state_dict(meta.state_dict())
    meta.load_state_dict(reference.state_dict())
    assert meta.phase == "normal" and meta.sample_scale == "std" and meta.share_lambda is True


def test_gradcheck_normal_path() -> None:
    meta = MetaBN(3, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(meta, (x,))


def test_meta_train_records_detached_biased_stats() -> None:
    meta, _ = _pair()
    batches = [torch.randn(8, C, requires_grad=True) * 2 + 1, torch.randn(6, C, requires_grad=True)]
    _record(meta, *batches)
    assert len(meta.domain_stats) == 2
    for (mean, var), batch in zip(meta.domain_stats, batches, strict=True):
        torch.testing.assert_close(mean, batch.detach().mean(0))
        torch.testing.assert_close(var, batch.detach().var(0, unbiased=False))
        assert not mean.requires_grad and not var.requires_grad


def test_meta_test_output_shape_and_statistics() -> None:
    meta, _ = _pair(eps=1e-12)
    _record(meta, torch.randn(8, C) + 3, torch.randn(8, C) * 4, torch.randn(8, C))
    running = {k: v.clone() for k, v in meta.state_dict().items()}
    x = torch.randn(10, C, requires_grad=True)
    with metabn_phase(meta, "meta_test"):
        out = meta(x)
    assert out.shape == (30, C)
    for chunk in out.split(10):
        torch.testing.assert_close(chunk.mean(0), meta.bias.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            chunk.var(0, unbiased=False), meta.weight.detach() ** 2, atol=1e-4, rtol=1e-4
        )
    for key, value in meta.state_dict().items():  # running stats and counter untouched
        torch.testing.assert_close(value, running[key], rtol=0, atol=0)
    out.pow(3).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert meta.weight.grad is not None and meta.bias.grad is not None


def test_meta_test_differs_from_plain_batchnorm() -> None:
    meta, reference = _pair()
    _record(meta, torch.randn(8, C) * 3 + 2)
    reference.load_state_dict(meta.state_dict())
    x = torch.randn(8, C)
    with metabn_phase(meta, "meta_test"):
        out = meta(x)
    assert not torch.allclose(out, reference(x), atol=1e-3)


def test_meta_test_reproducible_with_generator() -> None:
    outs = []
    for generator_in_constructor in (True, False):
        meta = MetaBN(
            C, generator=torch.Generator().manual_seed(5) if generator_in_constructor else None
        )
        if not generator_in_constructor:
            meta.generator = torch.Generator().manual_seed(5)
        _record(meta, torch.ones(8, C) + torch.arange(8.0).unsqueeze(1))
        with metabn_phase(meta, "meta_test"):
            outs.append(meta(torch.arange(32.0).reshape(8, C).sin()))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_meta_test_without_stats_says_what_to_do() -> None:
    meta = MetaBN(C)
    meta.phase = "meta_test"
    with pytest.raises(RuntimeError, match=r"run the meta-train batches .* 'meta_train' first"):
        meta(torch.randn(4, C))


@pytest.mark.parametrize("sample_scale", ["std", "var"])
def test_zero_variance_and_constant_batches_never_nan(sample_scale: str) -> None:
    meta = MetaBN(C, sample_scale=sample_scale)
    constant = torch.full((8, C), 2.0)
    tiny = 2.0 + 1e-4 * torch.randn(8, C)
    _record(meta, constant, tiny)
    x = torch.full((8, C), -1.0, requires_grad=True)
    with metabn_phase(meta, "meta_test"):
        out = meta(x)
    out.sum().backward()
    assert x.grad is not None and meta.weight.grad is not None
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(meta.weight.grad).all()


def test_clear_stats_empties_the_same_list() -> None:
    meta = MetaBN(C)
    stats = meta.domain_stats
    _record(meta, torch.randn(4, C))
    meta.clear_stats()
    assert meta.domain_stats is stats and stats == []


@pytest.mark.parametrize("shape", [(8,), (8, C, 5), (8, C + 1)])
def test_rejects_non_bc_input(shape: tuple[int, ...]) -> None:
    meta = MetaBN(C)
    for phase in ("normal", "meta_train", "meta_test"):
        meta.phase = phase
        with pytest.raises(ValueError, match=rf"input of shape \(B, {C}\), got shape"):
            meta(torch.randn(*shape))
    assert (
        meta.domain_stats == []
        and meta.num_batches_tracked is not None
        and int(meta.num_batches_tracked) == 0
    )


def test_phase_setter_validates() -> None:
    meta = MetaBN(C)
    with pytest.raises(ValueError, match=r"phase must be one of .* got 'test'"):
        meta.phase = "test"
    with pytest.raises(TypeError, match="phase"):
        meta.phase = None  # type: ignore[assignment]
    assert meta.phase == "normal"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"sample_scale": "variance"}, ValueError),
        ({"share_lambda": "yes"}, TypeError),
        ({"generator": 1}, TypeError),
        ({"eps": 0.0}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        MetaBN(C, **kwargs)


def test_metabn_phase_sets_and_restores_every_layer() -> None:
    inner = MetaBN(C)
    model = nn.Sequential(nn.Linear(C, C), nn.Sequential(inner, nn.ReLU()), MetaBN(C))
    last = model[2]
    assert isinstance(last, MetaBN)
    last.phase = "meta_test"
    with metabn_phase(model, "meta_train") as entered:
        assert entered is model
        assert inner.phase == "meta_train" and last.phase == "meta_train"
    assert inner.phase == "normal" and last.phase == "meta_test"
    with metabn_phase(inner, "meta_test"):  # the module itself counts
        assert inner.phase == "meta_test"
    assert inner.phase == "normal"


def test_metabn_phase_restores_on_exception() -> None:
    layers = [MetaBN(C), MetaBN(C)]
    model = nn.Sequential(*layers)
    layers[1].phase = "meta_train"
    with pytest.raises(KeyError), metabn_phase(model, "meta_test"):
        raise KeyError("boom")
    assert [m.phase for m in layers] == ["normal", "meta_train"]


def test_metabn_phase_rejects_unknown_phase_without_changes() -> None:
    layer = MetaBN(C)
    with pytest.raises(ValueError, match="phase"), metabn_phase(nn.Sequential(layer), "train"):
        pass
    assert layer.phase == "normal"


def test_metabn_phase_accepts_models_without_metabn() -> None:
    with metabn_phase(nn.Linear(2, 2), "meta_test"):
        pass


def test_from_batchnorm_copies_everything() -> None:
    bn = nn.BatchNorm1d(C, eps=1e-3, momentum=0.3, dtype=torch.float64)
    for _ in range(3):
        bn(torch.randn(8, C, dtype=torch.float64) * 2 + 1)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
    bn.bias.requires_grad_(False)
    bn.eval()
    meta = MetaBN.from_batchnorm(bn, sample_scale="var", share_lambda=False)
    assert (meta.eps, meta.momentum, meta.affine, meta.track_running_stats) == (
        1e-3,
        0.3,
        True,
        True,
    )
    assert meta.weight.dtype == torch.float64 and not meta.training and meta.phase == "normal"
    assert meta.weight.requires_grad and not meta.bias.requires_grad
    assert meta.sample_scale == "var" and meta.share_lambda is False
    _assert_same_state(meta, bn)
    assert meta.num_batches_tracked is not None and int(meta.num_batches_tracked) == 3
    assert meta.weight.data_ptr() != bn.weight.data_ptr()
    x = torch.randn(5, C, dtype=torch.float64)
    torch.testing.assert_close(meta(x), bn(x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [{"affine": False}, {"track_running_stats": False}])
def test_from_batchnorm_variants(kwargs: dict[str, Any]) -> None:
    bn = nn.BatchNorm1d(C, **kwargs)
    meta = MetaBN.from_batchnorm(bn)
    assert meta.affine == bn.affine and meta.track_running_stats == bn.track_running_stats
    _assert_same_state(meta, bn)


def test_from_batchnorm_rejects_other_layers() -> None:
    with pytest.raises(TypeError, match=r"bn must be a torch\.nn\.BatchNorm1d, got BatchNorm2d"):
        MetaBN.from_batchnorm(nn.BatchNorm2d(C))  # type: ignore[arg-type]


def test_functional_call_substitutes_parameters_and_buffers() -> None:
    meta = MetaBN(C)
    _record(meta, torch.randn(8, C))
    weight = torch.full((C,), 3.0, requires_grad=True)
    x = torch.randn(8, C)
    with metabn_phase(meta, "meta_test"):
        out = torch.func.functional_call(meta, {"weight": weight}, (x,))
    assert out.std(0, unbiased=False).mean() > 2.5
    out.pow(2).sum().backward()
    assert weight.grad is not None and meta.weight.grad is None
    meta.eval()
    stats = {"running_mean": torch.full((C,), 10.0), "running_var": torch.full((C,), 4.0)}
    out = torch.func.functional_call(meta, stats, (x,))
    torch.testing.assert_close(out, (x - 10) / (4 + meta.eps) ** 0.5)


def test_deepcopy_shares_nothing() -> None:
    meta = MetaBN(C, generator=torch.Generator().manual_seed(0))
    clone = copy.deepcopy(meta)
    _record(clone, torch.randn(4, C))
    assert meta.domain_stats == [] and len(clone.domain_stats) == 1


def test_higher_patched_copies_share_recorded_stats() -> None:
    higher = pytest.importorskip("higher")
    layer = MetaBN(C)
    model = nn.Sequential(nn.Linear(3, C), layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        with metabn_phase(fmodel, "meta_train"):
            loss = fmodel(torch.randn(8, 3)).pow(2).sum()
        assert len(layer.domain_stats) == 1
        diffopt.step(loss)
        with metabn_phase(fmodel, "meta_test"):
            fmodel(torch.randn(8, 3)).pow(3).sum().backward()
        assert model[0].weight.grad is not None
        layer.clear_stats()
        assert fmodel[1].domain_stats == []


def test_repr_shows_phase() -> None:
    assert "phase='normal', sample_scale='std', share_lambda=True" in repr(MetaBN(C))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_meta_test_on_cuda_samples_on_the_input_device() -> None:
    meta = MetaBN(C, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    _record(meta, torch.randn(8, C, device="cuda"))
    with metabn_phase(meta, "meta_test"):
        out = meta(torch.randn(8, C, device="cuda"))
        assert out.device.type == "cuda" and bool(torch.isfinite(out).all())
        meta.generator = torch.Generator().manual_seed(0)  # a CPU generator
        with pytest.raises(ValueError, match="generator must live on the device"):
            meta(torch.randn(8, C, device="cuda"))
