"""How large the meta-test term of the meta-gradient is against the meta-train term.

Trains M3L on the built-in synthetic benchmark with the example's CPU settings
(``examples/reproduce_m3l.py``: ResNet-10, 32 x 16, 6 epochs of 12 iterations, one held-out
domain) once per ``--meta-test-grad`` value and seed, logs every iteration, and reads back
from ``log.jsonl`` the two norms that :class:`metareid.MetaLearner` reports:
``|grad L_mtr(Theta)|`` and ``|meta-test term|``, the latter being, for
``second_order_only`` (the published code), the second-order term alone. Prints, per run
and epoch, the median, minimum and maximum of their ratio, and draws the ratio over
iterations to a PNG (needs matplotlib, ``pip install "metareid[viz]"``)::

    python benchmarks/meta_gradient_ratio.py                       # published preset, 1 seed
    python benchmarks/meta_gradient_ratio.py --seeds 3 --modes second_order_only full

Every other switch follows ``--preset`` (default ``published``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

from metareid.data import prepare_synthetic_benchmark
from metareid.engine import TrainConfig, Trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reproduce_m3l.py"


def example_settings() -> dict[str, Any]:
    """The CPU settings of ``examples/reproduce_m3l.py`` (its ``SYNTHETIC``), every iteration
    logged, no evaluation."""
    spec = importlib.util.spec_from_file_location("reproduce_m3l", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return dict(example.SYNTHETIC, progress=False, log_every=1, eval_every=0)


def run(args: argparse.Namespace, mode: str, seed: int) -> list[dict[str, Any]]:
    out = Path(args.output_dir) / f"{args.preset}-{mode}-seed{seed}"
    domains = range(4)
    cfg = TrainConfig.from_dict(
        dict(
            example_settings(),
            preset=args.preset,
            meta_test_grad=mode,
            eval_every=0,  # no evaluations (the preset's eval_every): gradients only
            data_dir=args.synthetic_dir,
            sources=[f"synthetic:{d}" for d in domains if d != args.target],
            target=f"synthetic:{args.target}",
            output_dir=str(out),
            seed=seed,
        )
    )
    Trainer(cfg, log=lambda _m: None).fit()
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "iter"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="published", choices=("none", "paper", "published"))
    parser.add_argument("--modes", nargs="+", default=["second_order_only"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--target", type=int, default=3, help="held-out synthetic domain")
    parser.add_argument("--synthetic-dir", default="data/synthetic")
    parser.add_argument("--output-dir", default="runs/meta_gradient_ratio")
    parser.add_argument("--plot", default="meta_gradient_ratio.png", help="'' for none")
    args = parser.parse_args()
    prepare_synthetic_benchmark(args.synthetic_dir)
    curves: dict[str, list[list[float]]] = {}
    print("| preset | meta_test_grad | seed | epoch | median ratio | min | max | s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for seed in range(args.seeds):
            start = time.perf_counter()
            records = run(args, mode, seed)
            seconds = time.perf_counter() - start
            ratios = [r["meta_test_grad_norm"] / r["meta_train_grad_norm"] for r in records]
            curves.setdefault(mode, []).append(ratios)
            for epoch in sorted({r["epoch"] for r in records}):
                vals = [x for x, r in zip(ratios, records, strict=True) if r["epoch"] == epoch]
                print(
                    f"| {args.preset} | {mode} | {seed} | {epoch + 1} | "
                    f"{statistics.median(vals):.2e} | {min(vals):.2e} | {max(vals):.2e} | "
                    f"{seconds:.0f} |"
                )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        for mode, runs in curves.items():
            for seed, ratios in enumerate(runs):
                ax.plot(range(1, len(ratios) + 1), ratios, label=f"{mode}, seed {seed}", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("|meta-test term| / |meta-train gradient|")
        ax.set_title(f"meta-gradient terms, preset {args.preset}, synthetic D{args.target}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
