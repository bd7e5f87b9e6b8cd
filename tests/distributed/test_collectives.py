"""Collectives on 2 gloo ranks against the one-process computation on the whole data."""

from __future__ import annotations

import pytest
import torch

from metareid.distributed import (
    all_gather_concat,
    all_gather_concat_with_grad,
    all_reduce_grads_,
    all_reduce_mean,
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    on_main_process,
)

pytestmark = pytest.mark.distributed


def _rows(rank: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rank r holds r + 1 rows (rank 0: 1 row, rank 1: 2 rows), distinct values."""
    return (torch.arange((rank + 1) * 3).view(rank + 1, 3) + 10 * rank).to(dtype)


def _context_and_gather(ctx, out):
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device.type) == (
        get_rank(),
        2,
        "gloo",
        "cpu",
    )
    assert ctx.is_main == (ctx.rank == 0) == is_main_process() and is_distributed()
    assert get_world_size() == 2 and ctx.is_distributed
    assert on_main_process(lambda: "logged")() == ("logged" if ctx.rank == 0 else None)
    barrier()
    for dtype in (torch.float32, torch.float64, torch.int64, torch.bool):
        got = all_gather_concat(_rows(ctx.rank, dtype))
        assert got.dtype == dtype and torch.equal(
            got, torch.cat([_rows(0, dtype), _rows(1, dtype)])
        )
    empty = torch.zeros(0, 3) if ctx.rank == 0 else torch.ones(2, 3)
    assert torch.equal(all_gather_concat(empty), torch.ones(2, 3))
    assert all_gather_concat(torch.zeros(0, 3)).shape == (0, 3)
    assert all_gather_concat_with_grad(torch.zeros(0, 3)).shape == (0, 3)
    with pytest.raises(
        ValueError, match=r"rank 0: trailing shape \(3,\).*rank 1: trailing shape \(4,\)"
    ):
        all_gather_concat(torch.zeros(1, 3 + ctx.rank))
    with pytest.raises(ValueError, match=r"dtype torch\.float32.*dtype torch\.float64"):
        all_gather_concat(torch.zeros(1, 3, dtype=torch.float64 if ctx.rank else torch.float32))
    assert broadcast_object({"meta_test": 2} if ctx.rank == 0 else None) == {"meta_test": 2}
    assert broadcast_object(ctx.rank, src=1) == 1
    torch.save(all_gather_concat(_rows(ctx.rank)), out / f"gathered{ctx.rank}.pt")
    _gather_with_grad(ctx)


def test_gather_broadcast_and_gather_with_grad(run_ranks):
    """Without grad: rank order, uneven and empty parts, clear errors; with grad: see below."""
    out = run_ranks(_context_and_gather)
    assert torch.equal(torch.load(out / "gathered0.pt"), torch.load(out / "gathered1.pt"))


def _loss_of_gathered(x: torch.Tensor, rank: int) -> torch.Tensor:
    """A different non-linear loss of the whole batch on each rank."""
    weights = torch.linspace(0.5, 1.5, x.shape[0], dtype=x.dtype) * (rank + 1)
    return (weights[:, None] * torch.tanh(x) ** 2).sum() + x.prod(dim=1).sum() * rank


def _gather_with_grad(ctx):
    """Each rank's part receives the gradient of the sum of all ranks' losses."""
    full = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = [slice(0, 1), slice(1, 3)][ctx.rank]
    local = full[rows].clone().requires_grad_(True)
    gathered = all_gather_concat_with_grad(local)
    assert torch.equal(gathered.detach(), full)
    _loss_of_gathered(gathered, ctx.rank).backward()
    # One process: the sum of both ranks' losses on the whole batch.
    whole = full.clone().requires_grad_(True)
    (_loss_of_gathered(whole, 0) + _loss_of_gathered(whole, 1)).backward()
    torch.testing.assert_close(local.grad, whole.grad[rows], rtol=1e-12, atol=1e-12)


def _inner(theta, x):
    return torch.tanh(x @ theta).pow(2).mean() + 0.1 * theta.pow(4).sum()


def _outer(theta, x):
    return torch.sin(x @ theta).mean() + (x @ theta).pow(2).mean()


def _meta_gradient(ctx, out):
    for first_order in (False, True):
        _meta_gradient_once(ctx, first_order)
    with pytest.raises(ValueError, match="None entries on every rank"):
        all_reduce_mean([torch.ones(2), None if ctx.rank else torch.ones(1)])


def _meta_gradient_once(ctx, first_order):
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(2, 5, 4, dtype=torch.float64, generator=gen)  # (ranks, B_r, D)
    theta0 = torch.randn(4, dtype=torch.float64, generator=gen)
    lr = 0.3

    # Two ranks: local meta-train gradient, averaged differentiably across ranks.
    theta = theta0.clone().requires_grad_(True)
    (grad_r,) = torch.autograd.grad(
        _inner(theta, data[ctx.rank]), theta, create_graph=not first_order
    )
    (g,) = all_reduce_mean([grad_r])
    fast = theta - lr * g
    _outer(fast, data[ctx.rank]).backward()
    all_reduce_grads_([theta])

    # One process: the same on the concatenated data (mean over the two halves).
    ref = theta0.clone().requires_grad_(True)
    inner = (_inner(ref, data[0]) + _inner(ref, data[1])) / 2
    (g_ref,) = torch.autograd.grad(inner, ref, create_graph=not first_order)
    fast_ref = ref - lr * g_ref
    ((_outer(fast_ref, data[0]) + _outer(fast_ref, data[1])) / 2).backward()

    torch.testing.assert_close(g.detach(), g_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(theta.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_mean_of_meta_train_gradients_is_the_global_gradient_to_second_order(run_ranks):
    """float64: d/dtheta outer(theta - lr * mean_r grad_r(theta)) equals one process, both orders."""
    run_ranks(_meta_gradient)


def _outer_grads(ctx, out):
    for bucket_cap_mb in (25.0, 1e-5):  # one bucket; one bucket per tensor
        _outer_grads_once(ctx, bucket_cap_mb)


def _outer_grads_once(ctx, bucket_cap_mb):
    r = ctx.rank
    params = [
        torch.nn.Parameter(torch.zeros(2, 3)),
        torch.nn.Parameter(torch.zeros(5, dtype=torch.float64)),
        torch.nn.Parameter(torch.zeros(4)),  # gradient on rank 0 only
        torch.nn.Parameter(torch.zeros(1)),  # no gradient anywhere
        torch.nn.Parameter(torch.zeros(7)),
    ]
    values = [
        torch.arange(6.0).view(2, 3),
        torch.arange(5, dtype=torch.float64),
        torch.ones(4),
        None,
        torch.full((7,), 3.0),
    ]
    for p, v in zip(params, values):
        if v is not None and not (p.shape == (4,) and r == 1):
            p.grad = v * (r + 1)
    all_reduce_grads_(params, bucket_cap_mb=bucket_cap_mb)
    assert torch.equal(params[0].grad, torch.arange(6.0).view(2, 3) * 1.5)
    assert torch.equal(params[1].grad, torch.arange(5, dtype=torch.float64) * 1.5)
    assert torch.equal(params[2].grad, torch.full((4,), 0.5))
    assert params[3].grad is None
    assert torch.equal(params[4].grad, torch.full((7,), 4.5))
    with pytest.raises(ValueError, match="same number, shapes and dtypes on every rank"):
        all_reduce_grads_(params[: 2 + r])


def test_outer_gradients_are_averaged_in_buckets(run_ranks):
    run_ranks(_outer_grads)
