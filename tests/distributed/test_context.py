"""init_distributed and its helpers: the torchrun environment, single-process identity."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from metareid.distributed import (
    DistributedContext,
    all_gather_concat,
    all_gather_concat_with_grad,
    all_reduce_grads_,
    all_reduce_mean,
    barrier,
    broadcast_object,
    check_config_consistency,
    check_same_across_ranks,
    destroy_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    on_main_process,
)

pytestmark = pytest.mark.distributed

FULL = {
    "RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "1",
}


def test_without_torchrun_variables_the_context_is_one_process():
    ctx = init_distributed(env={}, device_type="cpu")
    assert ctx == DistributedContext(0, 1, 0, torch.device("cpu"), None, True)
    assert not ctx.is_distributed and not torch.distributed.is_initialized()
    assert (get_rank(), get_world_size(), is_main_process(), is_distributed()) == (
        0,
        1,
        True,
        False,
    )
    barrier()
    destroy_distributed()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT missing"),
        ({**FULL, "WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer >= 1, got 'two'"),
        ({**FULL, "RANK": "-1"}, "RANK must be an integer >= 0, got '-1'"),
        ({**FULL, "RANK": "2"}, "RANK must be < WORLD_SIZE=2, got RANK=2"),
    ],
)
def test_incomplete_or_bad_environment_is_refused(env, message):
    with pytest.raises(ValueError, match=message):
        init_distributed(env=env, device_type="cpu")
    assert not torch.distributed.is_initialized()


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"timeout must be a datetime\.timedelta"):
        init_distributed(timeout="5", env={})
    with pytest.raises(ValueError, match="timeout must be a finite duration > 0"):
        init_distributed(timeout=timedelta(0), env={})
    with pytest.raises(ValueError, match="device_type must be one of"):
        init_distributed(device_type="tpu", env={})
    with pytest.raises(ValueError, match="backend='nccl' needs CUDA"):
        init_distributed(backend="nccl", device_type="cpu", env=FULL)
    with pytest.raises(TypeError, match="backend must be a string"):
        init_distributed(backend=3, env={})  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            init_distributed(device_type="cuda", env={})


def test_on_main_process_runs_on_rank_zero_only(monkeypatch):
    calls = []
    log = on_main_process(calls.append)
    assert log("a") is None and calls == ["a"]
    monkeypatch.setattr("metareid.distributed.context.get_rank", lambda: 1)
    log("b")
    assert calls == ["a"]
    with pytest.raises(TypeError, match="fn must be callable"):
        on_main_process(3)  # type: ignore[arg-type]


def test_every_collective_is_the_identity_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert torch.equal(all_gather_concat(x), x) and not all_gather_concat(x).requires_grad
    assert all_gather_concat_with_grad(x) is x
    assert all_reduce_mean([x, None])[0] is x
    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.tensor([1.0, 2.0])
    all_reduce_grads_([w], bucket_cap_mb=1e-6)
    assert w.grad.tolist() == [1.0, 2.0]
    assert broadcast_object([1, "x"]) == [1, "x"]
    check_config_consistency({"a": 1})
    check_same_across_ranks({"x": x})


def test_collective_argument_errors():
    with pytest.raises(TypeError, match=r"tensor must be a torch\.Tensor"):
        all_gather_concat([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first \\(batch\\) dimension"):
        all_gather_concat(torch.tensor(1.0))
    with pytest.raises(TypeError, match="use all_gather_concat for labels"):
        all_gather_concat_with_grad(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"tensors\[1\] must be a torch.Tensor or None"):
        all_reduce_mean([torch.ones(1), 2.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="bucket_cap_mb must be a number > 0"):
        all_reduce_grads_([], bucket_cap_mb=0)
    with pytest.raises(ValueError, match=r"src must be a rank in \[0, 1\), got 1"):
        broadcast_object(3, src=1)
    with pytest.raises(TypeError, match="config must be a mapping"):
        check_config_consistency([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tensors\['x'\] must be a torch.Tensor"):
        check_same_across_ranks({"x": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="atol must be a number >= 0"):
        check_same_across_ranks({}, atol=-1.0)
