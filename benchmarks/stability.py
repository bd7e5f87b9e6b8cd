"""Stability of the second-order meta step on the synthetic benchmark: a table.

Trains a from-scratch ResNet-10 on D0-D2 of the built-in synthetic benchmark (the
settings of ``examples/reproduce_m3l.py``: 32 x 16 images, 6 epochs of 12 iterations,
lr 1e-3) with several inner steps and prints, per row, the epoch means of the meta-train
loss (averaged over seeds) and the target (D3) mAP / R1 after the last epoch as
mean ± std over seeds::

    python benchmarks/stability.py                  # 5 rows x 2 seeds
    python benchmarks/stability.py --seeds 3 --rows published exact-adam

Rows: ``published`` (the default: fresh Adam with ``inner_eps_root=1e-5``, the published
code's step, exact second order), ``exact-adam`` (``inner_eps_root=0``,
``torch.optim.Adam``'s step, exact second order), the same two with ``method="meta"``
(no MetaBN), and ``first-order`` (published step, first order).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from metareid.data import prepare_synthetic_benchmark
from metareid.engine import TrainConfig, Trainer


def _example_settings() -> dict[str, Any]:
    """The synthetic settings of ``examples/reproduce_m3l.py`` (read from it, not repeated)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "reproduce_m3l.py"
    spec = importlib.util.spec_from_file_location("reproduce_m3l", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SYNTHETIC)


BASE: dict[str, Any] = dict(
    _example_settings(),
    sources=("synthetic:0", "synthetic:1", "synthetic:2"),
    target="synthetic:3",
    progress=False,
)

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "published": ("fresh Adam, eps_root 1e-5 (published step, default), 2nd order", {}),
    "exact-adam": (
        "fresh Adam, eps_root 0 (torch.optim.Adam step), 2nd order",
        {"inner_eps_root": 0.0},
    ),
    "meta-published": ("same as published, method=meta (no MetaBN)", {"method": "meta"}),
    "meta-exact-adam": (
        "same as exact-adam, method=meta (no MetaBN)",
        {"method": "meta", "inner_eps_root": 0.0},
    ),
    "first-order": ("fresh Adam, eps_root 1e-5, first order", {"meta_test_grad": "first_order"}),
}


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--synthetic-dir", default="data/synthetic")
    parser.add_argument("--output-dir", default="runs/stability")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prepare_synthetic_benchmark(args.synthetic_dir, seed=0)
    lines = [
        "| inner step | meta-train loss per epoch (mean over seeds) | D3 mAP | D3 R1 | s / run |",
        "|---|---|---|---|---|",
    ]
    for row in args.rows:
        label, overrides = ROWS[row]
        curves, maps, r1s, secs = [], [], [], []
        for seed in range(args.seeds):
            cfg = TrainConfig(
                **{
                    **BASE,
                    "data_dir": args.synthetic_dir,
                    "output_dir": f"{args.output_dir}/{row}/seed{seed}",
                    "seed": seed,
                    **overrides,
                }
            )
            start = time.perf_counter()
            trainer = Trainer(cfg, log=lambda _msg: None)
            result = trainer.fit()
            secs.append(time.perf_counter() - start)
            curves.append(list(trainer.loss_history))
            maps.append(result.final.mAP)
            r1s.append(result.final.rank1)
            print(f"{row} seed {seed}: {curves[-1]} mAP {maps[-1]:.1f}", flush=True)
        mean_curve = [statistics.mean(c[e] for c in curves) for e in range(len(curves[0]))]
        lines.append(
            f"| {label} | {' '.join(f'{v:.1f}' for v in mean_curve)} | {_fmt(maps)} | "
            f"{_fmt(r1s)} | {statistics.mean(secs):.0f} |"
        )
    print(f"\n{args.seeds} seed(s) per row; ResNet-10 from scratch, D0-D2 -> D3, 72 iterations")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
