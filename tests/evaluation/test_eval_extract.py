"""embed and extract_features on tiny models and synthetic loaders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metareid.evaluation import embed, extract_features


class Tiny(nn.Module):
    """Linear on the flattened image, with a BatchNorm and Dropout to expose the mode."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.fc = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.5)
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.drop(self.fc(self.bn(x).flatten(1)))


def batches(num=3, size=2):
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, 1, 2, 3, generator=gen), torch.arange(size) + b, [b] * size, "paths")
        for b in range(num)
    ]


def test_eval_mode_no_grad_and_modes_restored():
    model = Tiny()
    model.train()
    model.bn.eval()  # frozen BN inside a training model must stay frozen
    running = model.bn.running_mean.clone()
    feats, pids, camids = extract_features(model, batches())
    assert all(call == (False, False) for call in model.calls)
    assert model.training and model.fc.training and not model.bn.training
    assert torch.equal(model.bn.running_mean, running)
    assert feats.shape == (6, 3) and feats.dtype == torch.float32 and not feats.requires_grad
    assert pids.tolist() == [0, 1, 1, 2, 2, 3] and camids.tolist() == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(6))


def test_flip_averages_the_image_and_its_mirror_then_normalises():
    model = Tiny().eval()
    data = batches(1)
    images = data[0][0]
    feats, _, _ = extract_features(model, data, flip=True)
    with torch.no_grad():
        expected = (model(images) + model(images.flip(-1))) / 2
    torch.testing.assert_close(feats, nn.functional.normalize(expected, dim=1))
    raw, _, _ = extract_features(model, data, flip=True, normalize=False)
    torch.testing.assert_close(raw, expected)


def test_dict_batches_and_restored_mode_after_an_error():
    model = Tiny().train()
    data = [{"img": torch.randn(2, 1, 2, 3), "pid": [4, 5], "camid": torch.tensor([1, 2])}]
    feats, pids, camids = extract_features(model, data, device="cpu", normalize=False)
    assert pids.tolist() == [4, 5] and camids.tolist() == [1, 2] and feats.shape == (2, 3)
    with pytest.raises(ValueError, match="missing \\['camid'\\]"):
        extract_features(model, [{"img": torch.randn(2, 1, 2, 3), "pid": [1, 2]}])
    assert model.training and model.bn.training


class TupleModel(nn.Module):
    def forward(self, x):
        return x.flatten(1), x


@pytest.mark.parametrize(
    ("model", "data", "error", "match"),
    [
        (Tiny(), [], ValueError, "loader yielded no batch"),
        (Tiny(), [(torch.randn(2, 1, 2, 3), [1])], ValueError, r"\(img, pid, camid, \.\.\.\)"),
        (
            Tiny(),
            [(torch.randn(2, 6), [1, 2], [0, 0])],
            TypeError,
            r"img must be .* \(B, C, H, W\)",
        ),
        (Tiny(), [(torch.randn(2, 1, 2, 3), [1], [0, 0])], ValueError, "pid must be 2 integer"),
        (Tiny(), [(torch.randn(2, 1, 2, 3), [1, 2], [0.5, 0])], ValueError, "camid must be 2"),
        (Tiny(), [42], TypeError, "expected a dict"),
        (TupleModel(), batches(1), TypeError, "must return a tensor of features"),
        ("model", batches(1), TypeError, "model must be a torch.nn.Module, got str"),
    ],
)
def test_bad_input_raises(model, data, error, match):
    with pytest.raises(error, match=match):
        extract_features(model, data)


def test_flag_types_are_checked():
    with pytest.raises(TypeError, match="flip must be a bool, got int 1"):
        extract_features(Tiny(), batches(1), flip=1)


# ------------------------------------------------------------------------- embed
def _unit_rows(x):
    """Row-wise division by the Euclidean norm, one row at a time."""
    return torch.stack([row / torch.sqrt((row * row).sum()) for row in x])


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_embed_flip_average_then_normalisation(flip, normalize):
    model = Tiny().eval()
    images = torch.randn(4, 1, 2, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = embed(model, images, flip=flip, normalize=normalize)
        expected = model(images)
        if flip:
            mirrored = torch.stack([img[..., torch.arange(2, -1, -1)] for img in images])
            expected = (expected + model(mirrored)) * 0.5
    if normalize:
        expected = _unit_rows(expected)
    assert got.dtype == torch.float32 and got.shape == (4, 3)
    torch.testing.assert_close(got, expected)


def test_embed_sets_no_mode_and_keeps_the_graph():
    model = Tiny().train()
    images = torch.randn(2, 1, 2, 3)
    out = embed(model, images, flip=True)
    assert model.calls == [(True, True), (True, True)]  # the caller's mode, with gradients
    out.sum().backward()
    assert model.fc.weight.grad is not None


def test_embed_takes_any_callable_and_casts_to_float32():
    images = torch.randn(3, 1, 2, 3, dtype=torch.float64)
    out = embed(lambda x: x.flatten(1), images, normalize=False)
    assert out.dtype == torch.float32
    assert torch.equal(out, images.flatten(1).float())


def test_extract_features_is_embed_batch_by_batch():
    model = Tiny().eval()
    data = batches(3)
    for flip in (False, True):
        feats, _, _ = extract_features(model, data, flip=flip)
        with torch.no_grad():
            expected = torch.cat([embed(model, images, flip) for images, *_ in data])
        assert torch.equal(feats, expected)


@pytest.mark.parametrize(
    ("model", "images", "kwargs", "error", "match"),
    [
        (
            Tiny(),
            torch.randn(2, 6),
            {},
            TypeError,
            r"images must be .* \(B, C, H, W\), got \(2, 6\)",
        ),
        (Tiny(), torch.ones(2, 1, 2, 3, dtype=torch.long), {}, TypeError, "images must be"),
        (Tiny(), [1.0], {}, TypeError, "got list"),
        (TupleModel(), torch.randn(2, 1, 2, 3), {}, TypeError, "must return a tensor of features"),
        (
            lambda x: x.flatten(1)[:1],
            torch.randn(2, 1, 2, 3),
            {},
            ValueError,
            r"shape \(B, D\) with B = 2, got shape \(1, 6\)",
        ),
        (Tiny(), torch.randn(2, 1, 2, 3), {"flip": 1}, TypeError, "flip must be a bool"),
        (Tiny(), torch.randn(2, 1, 2, 3), {"normalize": None}, TypeError, "normalize must be"),
    ],
)
def test_embed_bad_input_raises(model, images, kwargs, error, match):
    with pytest.raises(error, match=match):
        embed(model, images, **kwargs)
