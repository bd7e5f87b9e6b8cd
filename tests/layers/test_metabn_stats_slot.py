"""metabn_stats_slot: one recorded statistics list per micro-batch, shared with higher copies."""

from __future__ import annotations

import higher
import pytest
import torch
from torch import nn

from metareid.layers import MetaBN, metabn_phase, metabn_stats_slot


def test_each_slot_records_and_mixes_its_own_statistics():
    bn = MetaBN(3, generator=torch.Generator().manual_seed(0))
    own = bn.domain_stats
    chunks = [torch.randn(6, 3) + 10 * r for r in range(2)]
    with metabn_phase(bn, "meta_train"):
        for r, x in enumerate(chunks):
            with metabn_stats_slot(bn, r):
                bn(x)
    assert bn.domain_stats is own and own == []
    for r, x in enumerate(chunks):
        torch.testing.assert_close(bn.stats_slots[r][0][0], x.mean(0))
    # The meta-test forward of slot r mixes with slot r's statistics and its generator.
    twin = MetaBN(3)
    twin.load_state_dict(bn.state_dict())
    twin.domain_stats = list(bn.stats_slots[1])
    twin.generator = torch.Generator().manual_seed(5)
    with metabn_phase(bn, "meta_test"), metabn_phase(twin, "meta_test"):
        with metabn_stats_slot(bn, 1, generator=torch.Generator().manual_seed(5)):
            got = bn(chunks[1])
        expected = twin(chunks[1])
    torch.testing.assert_close(got, expected)
    assert bn.generator is not None and bn.generator.initial_seed() == 0  # restored
    bn.clear_stats()
    assert all(v == [] for v in bn.stats_slots.values())


def test_higher_copies_see_the_slots_recorded_on_the_model():
    model = nn.Sequential(nn.Linear(4, 3), MetaBN(3))
    with metabn_phase(model, "meta_train"), metabn_stats_slot(model, 1):
        model(torch.randn(5, 4))
    fmodel = higher.patch.monkeypatch(model)
    with metabn_phase(fmodel, "meta_test"), metabn_stats_slot(fmodel, 1):
        assert len(fmodel[1].domain_stats) == 1
        out = fmodel(torch.randn(5, 4))
    assert out.shape == (5, 3)
    assert model[1].domain_stats == [] and len(model[1].stats_slots[1]) == 1


def test_layers_get_their_list_back_after_an_exception():
    bn = MetaBN(2)
    own = bn.domain_stats
    with pytest.raises(RuntimeError, match="boom"), metabn_stats_slot(bn, 0):
        raise RuntimeError("boom")
    assert bn.domain_stats is own


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(slot=-1), ValueError, "slot must be an int >= 0, got -1"),
        (dict(slot=True), TypeError, "slot must be an int >= 0, got True"),
        (dict(slot=0, generator=3), TypeError, "generator must be a torch.Generator or None"),
    ],
)
def test_bad_arguments_change_nothing(kwargs, exc, match):
    bn = MetaBN(2)
    own = bn.domain_stats
    with pytest.raises(exc, match=match), metabn_stats_slot(bn, **kwargs):
        pass
    assert bn.domain_stats is own and bn.stats_slots == {}
    with pytest.raises(TypeError, match=r"module must be a torch\.nn\.Module"):
        with metabn_stats_slot("bn", 0):  # type: ignore[arg-type]
            pass
