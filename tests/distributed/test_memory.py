"""Memory updates across 2 gloo ranks: identical banks, equal to one update of the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metareid import MemoryBank
from metareid.distributed import (
    MicroBatchRanks,
    check_same_across_ranks,
    update_memory_across_ranks,
)

pytestmark = pytest.mark.distributed

NUM_IDS, DIM = 5, 4


def fresh_bank(mode: str) -> MemoryBank:
    bank = MemoryBank(NUM_IDS, DIM, momentum=0.2, update=mode)
    gen = torch.Generator().manual_seed(0)
    bank.init_from(
        F.normalize(torch.randn(10, DIM, generator=gen), dim=1), torch.arange(10) % NUM_IDS
    )
    return bank


def rank_batches(step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Both ranks' (features, labels); ids shared between ranks so that order matters."""
    gen = torch.Generator().manual_seed(10 + step)
    labels = [torch.tensor([0, 0, 1, 3]), torch.tensor([1, 2, 0])]
    return [(F.normalize(torch.randn(len(y), DIM, generator=gen), dim=1), y) for y in labels]


def _memory(ctx, out):
    for mode in ("mean", "sequential"):
        bank, single, emulated = fresh_bank(mode), fresh_bank(mode), fresh_bank(mode)
        for step in range(3):
            parts = rank_batches(step)
            feats, labels = parts[ctx.rank]
            update_memory_across_ranks(bank, feats.requires_grad_(True), labels)
            single.update(torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts]))
            update_memory_across_ranks(
                emulated, [f for f, _ in parts], [y for _, y in parts], MicroBatchRanks(2)
            )
        check_same_across_ranks({f"memory.{mode}": bank.features})
        assert torch.equal(bank.features, single.features), mode
        assert torch.equal(emulated.features, single.features), mode
        torch.save(bank.features, out / f"{mode}{ctx.rank}.pt")

    before = bank.features.clone()
    bad = torch.tensor([0, NUM_IDS]) if ctx.rank else torch.tensor([0, 1])
    with pytest.raises(
        ValueError,
        match=rf"labels must lie in \[0, {NUM_IDS}\), got out-of-range values \[{NUM_IDS}\]",
    ):
        update_memory_across_ranks(bank, torch.zeros(2, DIM), bad)
    assert torch.equal(bank.features, before)


def test_banks_are_bitwise_identical_and_equal_to_one_process(run_ranks):
    out = run_ranks(_memory)
    for mode in ("mean", "sequential"):
        assert torch.equal(torch.load(out / f"{mode}0.pt"), torch.load(out / f"{mode}1.pt"))
    # The two modes really differ on this data (the order-sensitive path is exercised).
    assert not torch.equal(torch.load(out / "mean0.pt"), torch.load(out / "sequential0.pt"))


def test_argument_errors():
    with pytest.raises(TypeError, match=r"memory must be a metareid\.MemoryBank"):
        update_memory_across_ranks(torch.zeros(2, 2), torch.zeros(1, 2), torch.tensor([0]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ranks must be a RankGroup"):
        update_memory_across_ranks(
            fresh_bank("mean"), torch.zeros(1, DIM), torch.tensor([0]), ranks=2
        )  # type: ignore[arg-type]
