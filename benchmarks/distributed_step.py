"""Seconds per M3L training iteration on 1 and 2 CPU ranks, and on 1..N GPUs.

Every configuration is a ``torchrun --standalone --nproc_per_node=R`` job of this file
(the worker mode), training the same run with :class:`metareid.engine.Trainer`: the
built-in synthetic benchmark, a global batch of P x K images per source domain split by
identity across the R ranks (strong scaling: the global batch, and so the result, is
the same for every R). The worker times each iteration between two barriers after
``--warmup`` untimed ones; rank 0 reports the median. CPU jobs use gloo with
``--threads`` threads per rank; on CUDA every GPU count from 1 to the number of devices
is run with NCCL.

Run: ``python benchmarks/distributed_step.py [--iters 5] [--arch resnet10] [--size 64 32]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch

    from metareid.distributed import barrier
    from metareid.engine import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        data_dir=args.data_dir,
        sources=("synthetic:0", "synthetic:1", "synthetic:2"),
        target="synthetic:3",
        arch=args.arch,
        pretrained="none",
        height=args.size[0],
        width=args.size[1],
        num_identities=args.num_identities,
        num_instances=args.num_instances,
        method=args.method,
        epochs=1,
        iters_per_epoch=args.warmup + args.iters,
        warmup_epochs=0,
        milestones=(),
        workers=0,
        output_dir=args.out,
        progress=False,
        plots=False,
        device=args.device,
    )
    trainer = Trainer(cfg, log=lambda _m: None)
    trainer.init_memories()
    times: list[float] = []
    step = trainer._iteration

    def timed(batches):  # type: ignore[no-untyped-def]
        barrier()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = step(batches)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        barrier()
        times.append(time.perf_counter() - start)
        return out

    trainer._iteration = timed  # type: ignore[method-assign]
    trainer.train_epoch()
    if trainer.is_main:
        Path(args.result).write_text(json.dumps(times[args.warmup :]))


def launch(args: argparse.Namespace, ranks: int, device: str, data_dir: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "times.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            __file__,
            "--worker",
            "--data-dir",
            data_dir,
            "--out",
            str(Path(tmp) / "run"),
            "--result",
            str(result),
            "--device",
            device,
            *_forwarded(args),
        ]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{ranks} {device} rank(s) failed:\n{proc.stderr[-4000:]}")
        return list(json.loads(result.read_text()))


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--iters", str(args.iters), "--warmup", str(args.warmup), "--arch", args.arch,
        "--size", str(args.size[0]), str(args.size[1]), "--method", args.method,
        "--num-identities", str(args.num_identities), "--num-instances",
        str(args.num_instances), "--threads", str(args.threads),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (1)")
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 32), help="H W (64 32)")
    parser.add_argument("--method", default="m3l", choices=("baseline", "meta", "m3l"))
    parser.add_argument("--num-identities", type=int, default=4, help="P, global (4)")
    parser.add_argument("--num-instances", type=int, default=4, help="K (4)")
    parser.add_argument("--threads", type=int, default=1, help="threads per CPU rank (1)")
    parser.add_argument("--cpu-ranks", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    import torch

    from metareid.data import prepare_synthetic_benchmark

    with tempfile.TemporaryDirectory() as data_dir:
        prepare_synthetic_benchmark(
            data_dir, num_domains=4, train_ids_per_domain=8, test_ids_per_domain=4,
            image_size=tuple(args.size),
        )  # fmt: skip
        runs = [("cpu", r) for r in args.cpu_ranks]
        if torch.cuda.is_available():
            runs += [("cuda", g) for g in range(1, torch.cuda.device_count() + 1)]
        rows = []
        for device, ranks in runs:
            times = launch(args, ranks, device, data_dir)
            rows.append((device, ranks, statistics.median(times)))
    print(
        f"{args.method}, {args.arch}, {args.size[0]}x{args.size[1]}, 3 sources x "
        f"P={args.num_identities} x K={args.num_instances} (global), {args.iters} timed "
        f"iterations, {args.threads} thread(s) per CPU rank\n"
    )
    print("| device | ranks | identities per rank | median s/iter | iters/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for device, ranks, median in rows:
        base = next(
            m
            for d, r, m in rows
            if d == device and r == min(x for dd, x, _ in rows if dd == device)
        )
        print(
            f"| {device} | {ranks} | {args.num_identities // ranks} | {median:.3f} | "
            f"{1 / median:.2f} | {base / median:.2f}x |"
        )


if __name__ == "__main__":
    main()
