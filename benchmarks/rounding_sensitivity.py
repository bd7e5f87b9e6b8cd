"""How far a rounding-sized change of the initial weights moves the outer gradients: a table.

Trains a few float64 iterations of the trainer twice from the same start, the second time
with every initial weight multiplied by ``1 + eps * N(0, 1)`` (``eps = 1e-13`` by
default, a few hundred float64 ulps), and prints, per row and iteration, the largest
relative change of an outer gradient tensor (``max |g - g'| / max |g|`` over the
parameter tensors). Rows differ in method, learning rate and size. A value that grows
by orders of magnitude per iteration means that two computations which merely round
differently (thread counts, N ranks vs N micro-batches, other hardware) drift apart; it
is why ``tests/distributed/test_trainer_ranks.py`` compares ranks at a tenth of the
default lr::

    python benchmarks/rounding_sensitivity.py                 # the tiny test network
    python benchmarks/rounding_sensitivity.py --arch resnet18 --size 128 64 --num-instances 4

Data: a small built-in synthetic benchmark (2 sources, 4 identities x K per batch, the
batch split into 2 micro-batches as in the 2-rank test). One thread, deterministic.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from metareid import MemoryBank
from metareid.data import prepare_synthetic_benchmark
from metareid.engine import TrainConfig, Trainer

ROWS: dict[str, dict[str, Any]] = {
    "m3l, 2nd order": dict(method="m3l"),
    "meta, 2nd order": dict(method="meta"),
    "m3l, 1st order": dict(method="m3l", meta_test_grad="first_order"),
    "baseline": dict(method="baseline"),
}


def gradients(cfg: TrainConfig, eps: float) -> list[list[torch.Tensor]]:
    """Outer gradients of each iteration of one float64 epoch, weights perturbed by eps."""
    trainer = Trainer(cfg, log=lambda _m: None)
    trainer.model.double()
    trainer.memories.double()
    to_device = trainer._to_device

    def float64_batch(batch: dict[str, Any]) -> dict[str, Any]:
        batch = to_device(batch)
        return {**batch, "img": batch["img"].double()}

    trainer._to_device = float64_batch  # type: ignore[method-assign]
    grads: list[list[torch.Tensor]] = []

    def record(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads.append([p.grad.clone() for p in params if p.grad is not None])

    trainer.optimizer.register_step_pre_hook(record)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.mul_(1 + eps * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    for d, module in enumerate(trainer.memories):  # the same float64 centroids in both runs
        bank = cast(MemoryBank, module)
        g = torch.Generator().manual_seed(1000 + d)
        feats = torch.randn(bank.num_classes, bank.dim, generator=g, dtype=torch.float64)
        bank.init_from(F.normalize(feats, dim=1), torch.arange(bank.num_classes))
    trainer.train_epoch()
    return grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--lrs", nargs="+", type=float, default=[3.5e-4, 3.5e-5])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--eps", type=float, default=1e-13, help="relative weight change")
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--size", nargs=2, type=int, default=[32, 16], metavar=("H", "W"))
    parser.add_argument("--num-instances", type=int, default=2, help="K")
    parser.add_argument("--micro-batches", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="metareid_sensitivity_"))
    prepare_synthetic_benchmark(
        root, seed=0, num_domains=3, train_ids_per_domain=6, test_ids_per_domain=4,
        train_images_per_id=max(4, args.num_instances), test_images_per_camera=2,
        num_cameras=2, num_distractors=2, num_junk=1, image_size=tuple(args.size),
    )  # fmt: skip
    print(
        f"# {args.arch}, {args.size[0]}x{args.size[1]}, 2 sources x 4 identities x "
        f"K={args.num_instances}, {args.micro_batches} micro-batches, float64, weights x "
        f"(1 + {args.eps:g} N(0,1)); max relative change of an outer gradient per iteration"
    )
    header = " | ".join(f"iter {i + 1}" for i in range(args.iters))
    print(f"| row | lr | {header} | s |")
    print("|---|---|" + "---|" * args.iters + "---|")
    for name in args.rows:
        for lr in args.lrs:
            start = time.perf_counter()
            cfg = TrainConfig(
                data_dir=str(root), sources=("synthetic:0", "synthetic:1"), target="synthetic:2",
                arch=args.arch, pretrained="none", height=args.size[0], width=args.size[1],
                num_identities=4, num_instances=args.num_instances, epochs=1,
                iters_per_epoch=args.iters, warmup_epochs=0, milestones=(), eval_every=0,
                workers=0, output_dir=str(root / "run"), progress=False, plots=False,
                device="cpu", lr=lr, micro_batches=args.micro_batches, **ROWS[name],
            )  # fmt: skip
            a, b = gradients(cfg, 0.0), gradients(cfg, args.eps)
            changes = [
                max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(ga, gb, strict=True))
                for ga, gb in zip(a, b, strict=True)
            ]
            cells = " | ".join(f"{c:.1e}" for c in changes)
            print(f"| {name} | {lr:g} | {cells} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
