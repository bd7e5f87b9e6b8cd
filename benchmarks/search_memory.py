"""Peak memory of metareid.inference.topk_search against the gallery size, random features.

Each gallery size runs in its own subprocess. The gallery and query features are made
first; then ``VmHWM`` (peak resident set) is reset through ``/proc/self/clear_refs`` and
``VmRSS`` read, the search runs, and the growth of the peak over that baseline is the
search's working memory (the features themselves excluded). For comparison the table gives
the size of the dense (Q, G) float32 distance matrix that a non-streaming search would
build, and the size of the gallery features.

Usage::

    python benchmarks/search_memory.py                       # G up to 300k, Q = 1000, D = 256
    python benchmarks/search_memory.py --sizes 10000 100000 --queries 200 --dim 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _child(gallery: int, queries: int, dim: int, topk: int, threads: int) -> None:
    import torch

    from metareid.inference import topk_search

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    qf = torch.nn.functional.normalize(torch.randn(queries, dim, generator=g), dim=1)
    gf = torch.nn.functional.normalize(torch.randn(gallery, dim, generator=g), dim=1)
    topk_search(qf[:2], gf[:1000], topk=topk)  # warm up the allocator and kernels
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    start = time.perf_counter()
    res = topk_search(qf, gf, topk=topk)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    print(json.dumps({"extra": peak - base, "seconds": seconds, "shape": list(res.indices.shape)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.queries, args.dim, args.topk, args.threads)
        return
    mib = 1024.0**2
    print(
        f"Q = {args.queries} queries, D = {args.dim}, top-{args.topk}, float32, "
        f"{args.threads} threads"
    )
    print("| gallery G | gallery features | dense Q x G matrix | search peak extra | time |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(size),
                "--queries",
                str(args.queries),
                "--dim",
                str(args.dim),
                "--topk",
                str(args.topk),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {size:,} | {size * args.dim * 4 / mib:.0f} MiB | "
            f"{args.queries * size * 4 / mib:.0f} MiB | {rec['extra'] / mib:.0f} MiB | "
            f"{rec['seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
