"""Peak memory and time of one training step, whole batch vs. chunks, kept vs. recomputed.

The library's own step (:class:`metareid.engine.M3LStep` with
:class:`metareid.engine.IdentitySplit`): ``--arch`` from :func:`metareid.models.build_model`
(random weights), three source domains of P x K images, memory + triplet losses, and

* ``baseline``: the plain step on the mean loss over domains;
* ``m3l``: :class:`metareid.MetaLearner`, exact second order (``meta_test_grad="full"``,
  ``backend="func"``; ``--meta-test-grad`` for another).

Every row is one setting, measured in a fresh subprocess: ``N`` identity chunks
(``--micro-batches N``), their graphs all ``kept`` until the backward or ``recomputed``
one at a time (``--recompute``), optionally with ``--checkpoint-activations``. Peak memory
is the growth of the process's peak resident set over the steps (CPU) or
``torch.cuda.max_memory_allocated`` above what was allocated before them (CUDA); the
time is the median over the timed steps after the warm-up ones.

Run: ``python benchmarks/chunked_step.py`` (ResNet-50, 256 x 128, 3 x 8 x 2 images,
N = 1, 2, 4, 8; about 10 minutes on 2 idle CPU cores). On a GPU, the paper's batch:
``python benchmarks/chunked_step.py --device cuda --p 16 --k 4``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from metareid import MemoryBank, MetaLearner
from metareid.distributed import MicroBatchRanks
from metareid.engine import IdentitySplit, M3LObjective, M3LStep
from metareid.models import build_model


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(args: argparse.Namespace, method: str, chunks: int, mode: str) -> dict:
    """Measure one setting in this process."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(
        args.arch,
        pretrained=False,
        checkpoint_activations=mode.endswith("+ckpt"),
        input_size=(args.height, args.width),
    ).to(device)
    model.train()
    memories = []
    for _ in range(args.domains):
        bank = MemoryBank(args.ids, model.feat_dim, device=device)
        bank.init_from(
            F.normalize(torch.randn(args.ids, model.feat_dim, device=device), dim=1),
            torch.arange(args.ids, device=device),
        )
        memories.append(bank)
    ranks = MicroBatchRanks(chunks) if chunks > 1 else None
    split = IdentitySplit(ranks, recompute=mode.startswith("recomputed"))
    step = M3LStep(M3LObjective(memories, num_domains=args.domains), split)
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    learner = (
        MetaLearner(model, opt, backend="func", meta_test_grad=args.meta_test_grad)
        if method == "m3l"
        else None
    )
    gen = torch.Generator().manual_seed(1)
    batches = [
        {
            "img": torch.randn(args.p * args.k, 3, args.height, args.width, generator=gen).to(
                device
            ),
            "pid": torch.randperm(args.ids, generator=gen)[: args.p]
            .repeat_interleave(args.k)
            .to(device),
        }
        for _ in range(args.domains)
    ]

    def one(i: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, batches, opt, learner, meta_test=i % args.domains if learner else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mib("VmRSS")
    times = [one(i) for i in range(args.warmup + args.steps)][args.warmup :]
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = rss_mib("VmHWM") - base
    return {"peak_mib": peak, "time_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--p", type=int, default=8, help="identities per domain batch")
    parser.add_argument("--k", type=int, default=2, help="images per identity")
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument(
        "--meta-test-grad", default="full", choices=["full", "first_order", "second_order_only"]
    )
    parser.add_argument("--ids", type=int, default=100, help="identities per domain memory")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--methods", nargs="+", default=["baseline", "m3l"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["kept", "recomputed"],
        choices=["kept", "recomputed", "kept+ckpt", "recomputed+ckpt"],
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        method, chunks, mode = args.child
        print(json.dumps(run_child(args, method, int(chunks), mode)))
        return

    print(
        f"{args.arch} {args.height}x{args.width}, {args.domains} domains x {args.p} x {args.k} "
        f"images, device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    rows = []
    header = "| step | N | graphs | peak MiB | vs N=1 kept | s/step | vs N=1 kept |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for method in args.methods:
        ref: dict | None = None
        for mode, n in itertools.product(args.modes, args.chunks):
            if args.p % n:
                continue
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", method, str(n), mode]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(
                    f"| {method} | {n} | {mode} | failed: {res.stderr.strip().splitlines()[-1]} |"
                )
                continue
            out = json.loads(res.stdout.strip().splitlines()[-1])
            if ref is None and n == 1 and mode == "kept":
                ref = out
            rows.append({"method": method, "chunks": n, "mode": mode, **out})
            mem_ratio = f"{out['peak_mib'] / ref['peak_mib']:.2f}x" if ref else "-"
            time_ratio = f"{out['time_s'] / ref['time_s']:.2f}x" if ref else "-"
            print(
                f"| {method} | {n} | {mode} | {out['peak_mib']:.0f} | {mem_ratio} | "
                f"{out['time_s']:.2f} | {time_ratio} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
