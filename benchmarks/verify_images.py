"""How fast ``check_images`` decodes: one thread, a thread pool, or a process pool.

Writes ``--images`` random JPEG crops of ``--size`` (default 2,000 of 64 x 128, Market-1501's
crop size) into a temporary folder and decodes them ``--rounds`` times in each mode, the
modes interleaved so that a change of the machine's load hits all of them; prints the
minimum and the median wall time per mode. The files are in the page cache after the
first round: the figures are decoding, not disk reads. ``torch`` is imported first, as in
the trainer and the ``metareid`` command, so the process pool forks a process of that
size.

Usage::

    python benchmarks/verify_images.py
    python benchmarks/verify_images.py --size 128x256 --workers 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (as in the real callers)
from PIL import Image

from metareid.data import check_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", default="64x128", help="width x height (64x128)")
    parser.add_argument("--workers", type=int, default=2, help="threads / processes (2)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            small = rng.integers(0, 255, size=(height // 8, width // 8, 3), dtype=np.uint8)
            path = Path(tmp) / f"{i:06d}.jpg"
            Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path, quality=90)
            paths.append(str(path))
        kb = sum(Path(p).stat().st_size for p in paths) / len(paths) / 1024

        def threads() -> None:  # check_images's per-file work, in a thread pool
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(lambda p: check_images([p], workers=0), paths))

        modes: dict[str, Callable[[], object]] = {
            "one thread": lambda: check_images(paths, workers=1),
            f"{args.workers} threads": threads,
            f"{args.workers} processes": lambda: check_images(paths, workers=args.workers),
        }
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, run in modes.items():
                start = time.perf_counter()
                run()
                times[mode].append(time.perf_counter() - start)
    print(f"{args.images:,} JPEGs of {width} x {height} ({kb:.1f} KB each), {args.rounds} rounds")
    print("| mode | min s | median s | ms per image (min) |\n|---|---|---|---|")
    for mode, values in times.items():
        best = min(values)
        print(
            f"| {mode} | {best:.3f} | {statistics.median(values):.3f} | "
            f"{1000 * best / args.images:.3f} |"
        )


if __name__ == "__main__":
    main()
