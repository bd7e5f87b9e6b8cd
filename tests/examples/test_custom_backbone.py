"""examples/custom_backbone.py with two and three domains: no memory ever receives a mixture."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metareid import MemoryBank, MetaBN

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_backbone.py"


def load_example():
    spec = importlib.util.spec_from_file_location("custom_backbone", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("num_domains", [2, 3])
def test_no_memory_receives_a_metabn_mixture(num_domains, monkeypatch, capsys):
    mixtures: list[torch.Tensor] = []
    written: list[torch.Tensor] = []
    forward, update = MetaBN.forward, MemoryBank.update

    def spy_forward(layer, x):
        out = forward(layer, x)
        if layer.training and layer.phase == "meta_test":
            mixtures.append(F.normalize(out.detach(), dim=1))
        return out

    def spy_update(bank, features, labels):
        written.append(features.detach().clone())
        return update(bank, features, labels)

    monkeypatch.setattr(MetaBN, "forward", spy_forward)
    monkeypatch.setattr(MemoryBank, "update", spy_update)
    memories = load_example().main(num_domains=num_domains, iterations=4)
    assert len(memories) == num_domains and "meta-test domain" in capsys.readouterr().out
    assert len(mixtures) == 4 and len(written) == 4 * (num_domains - 1)
    for feats in written:  # with two domains a mixture has the batch's shape: compare values
        for mix in mixtures:
            for start in range(0, mix.shape[0], feats.shape[0]):
                assert not torch.allclose(mix[start : start + feats.shape[0]], feats, atol=1e-6)
