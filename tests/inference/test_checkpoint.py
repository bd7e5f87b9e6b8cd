"""Rebuilding a model from a checkpoint: no data, no downloads, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from metareid import MetaBN
from metareid.engine import save_checkpoint
from metareid.inference import (
    SUPPORTED_FORMAT,
    classifier_sizes,
    model_from_checkpoint,
    read_checkpoint,
)
from metareid.models import build_model, model_from_config

CFG = {"arch": "resnet10", "method": "m3l", "height": 32, "width": 16, "pretrained": "imagenet"}


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to read pretrained weights fails the test."""
    from metareid.models import _weights

    def refuse(*args, **kwargs):
        raise AssertionError("pretrained weights were requested")

    monkeypatch.setattr(_weights, "fetch_state_dict", refuse)


def _state(cfg=CFG, **model_kwargs):
    model = model_from_config(cfg, **model_kwargs)
    return {"format": 1, "config": dict(cfg), "epoch": 3, "model": model.state_dict()}


def test_trained_checkpoint_round_trip(tiny_run, checkpoint, no_downloads):
    model = model_from_checkpoint(checkpoint)
    assert not model.training and isinstance(model.neck, MetaBN)
    ref = tiny_run.model.state_dict()
    assert all(torch.equal(v, ref[k].cpu()) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("method", "neck"), [("m3l", MetaBN), ("meta", nn.BatchNorm1d), ("baseline", nn.BatchNorm1d)]
)
def test_neck_follows_the_method(method, neck, no_downloads):
    model = model_from_checkpoint(_state({**CFG, "method": method}))
    assert type(model.neck) is neck


def test_classifier_heads_are_read_from_the_weights(no_downloads):
    state = _state(num_classes=[3, 5])
    assert classifier_sizes(state["model"]) == [3, 5]
    model = model_from_checkpoint({**state, "config": {**CFG, "id_loss": "fc_domain"}})
    assert [h.out_features for h in model.classifier] == [3, 5]
    model = model_from_checkpoint(_state(num_classes=7))
    assert model.classifier.out_features == 7


def test_unknown_and_missing_config_keys_are_tolerated(no_downloads):
    cfg = {**CFG, "inner_eps_root": True, "preset": "paper", "amp": "bf16-maybe"}
    state = _state(cfg)
    model = model_from_checkpoint(state)
    assert model.feat_dim == 512
    # missing keys take the TrainConfig defaults (resnet50 here, whose weights do not fit)
    with pytest.raises(ValueError, match=r"do not fit the architecture .*'resnet50'"):
        model_from_checkpoint({**state, "config": {"method": "m3l"}})


def test_to_batchnorm_matches_metabn_in_eval():
    bn = MetaBN(6)
    bn.train()(torch.randn(10, 6))
    bn.bias.requires_grad_(False)
    plain = bn.to_batchnorm()
    x = torch.randn(4, 6)
    assert type(plain) is nn.BatchNorm1d and not plain.bias.requires_grad
    assert torch.equal(plain.eval()(x), bn.eval()(x))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_not_a_metareid_checkpoint(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save(build_model("resnet10").state_dict(), weights)  # a bare state dict
    with pytest.raises(ValueError, match=r"not a metareid checkpoint: it has no 'format'"):
        read_checkpoint(weights)
    pickled = tmp_path / "other.pkl"
    pickled.write_bytes(pickle.dumps({"format": 1, "thing": object()}))
    with pytest.raises(ValueError, match=r"not a metareid checkpoint: torch.load"):
        read_checkpoint(pickled)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(ValueError, match="not a metareid checkpoint"):
        read_checkpoint(garbage)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), tensor)
    with pytest.raises(ValueError, match="no 'format' entry"):
        read_checkpoint(tensor)
    with pytest.raises(ValueError, match="'config' and 'model' must be dicts"):
        read_checkpoint({"format": 1, "config": [], "model": {}})
    with pytest.raises(ValueError, match="invalid format 'one'"):
        read_checkpoint({"format": "one", "config": {}, "model": {}})
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="checkpoint must be a path or a checkpoint dict"):
        read_checkpoint(3)  # type: ignore[arg-type]


def test_newer_format_is_refused(tmp_path):
    path = save_checkpoint({**_state(), "format": SUPPORTED_FORMAT + 1}, tmp_path / "new.pt")
    with pytest.raises(
        ValueError, match=r"format 2, but this metareid reads formats up to 1.*upgrade"
    ):
        model_from_checkpoint(path)


def test_bad_weights_and_method():
    state = _state()
    weights = dict(state["model"])
    weights["neck.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"shape mismatches \['neck.weight"):
        model_from_checkpoint({**state, "model": weights})
    with pytest.raises(ValueError, match="missing keys"):
        model_from_checkpoint({**state, "model": {"x": torch.ones(1)}})
    with pytest.raises(ValueError, match="must map names to tensors"):
        model_from_checkpoint({**state, "model": {"neck.weight": [1.0]}})
    with pytest.raises(ValueError, match="config method must be one of"):
        model_from_config({**CFG, "method": "maml"})
    with pytest.raises(ValueError, match=r"not numbered 0\.\.n-1"):
        classifier_sizes({"classifier.1.weight": torch.ones(2, 2)})


def test_the_published_model_switches_survive_the_checkpoint(no_downloads):
    # A run with the published model (no stem ReLU, trained neck bias) is rebuilt as such.
    cfg = {**CFG, "stem_relu": False, "freeze_neck_bias": False, "first_order": True}
    model = model_from_checkpoint(_state(cfg))
    assert model.backbone.stem_relu is False and model.neck.bias.requires_grad
    x = torch.randn(2, 3, 32, 16)
    relu = model_from_checkpoint(_state(CFG))
    relu.load_state_dict(model.state_dict())
    assert not torch.allclose(model(x), relu(x))
