"""Reproduce the M3L experiments (Table 3 of the paper).

With no arguments: writes the built-in synthetic multi-domain benchmark (four domains that
differ in style) to ``./data/synthetic`` (or reuses it after checking its content hashes),
then trains the baseline, meta-learning without MetaBN and full M3L leave-one-domain-out
(each domain once as the unseen target, the other three as sources) with a CPU-sized
ResNet-10 and the exact second-order meta step, and prints a results table like Table 3.
``--seeds N`` repeats every run with N training seeds and prints mean +- std per column
and the paired differences to the baseline; ``--preset published|paper`` sets every
paper-versus-code switch. ``--smoke`` does one target with a few iterations in about a
minute.

What it leaves in ``--output-dir`` (default ``runs/reproduce``), per run
``seed<S>/<target>/<method>/``: ``config.json``, ``log.jsonl`` and the pictures
``curves.png``, ``tsne.png`` and ``retrieval.png`` (``-- --no-plots`` skips them;
``--smoke`` draws none); ``--json`` adds the results file. On the synthetic benchmark checkpoints
are not kept: a ResNet-10 ``last.pt`` (weights and Adam state) is 56 MiB and the demo has
12 runs. ``--save-checkpoints`` keeps each run's ``last.pt`` (to evaluate, extract or
export the trained models later, see docs/inference.md); on real data (``--data-dir``,
``--protocol``) they are kept unless ``--no-save-checkpoints``.

On the real datasets (layouts in docs/data.md)::

    python examples/reproduce_m3l.py --data-dir /data --target market1501 --arch resnet50

trains on the other three datasets (MSMT17, DukeMTMC-reID, CUHK03) with the paper's
settings (60 epochs of 200 iterations, 16 x 4 images per domain, 256 x 128) and evaluates
on the target. ``--methods`` picks the rows of Table 3; any ``metareid train`` flag can be
added after ``--`` (for example ``-- --id-loss fc_domain`` for Table 5).

``--protocol m3l|p1|p2|p3`` runs the protocols later DG papers report (docs/protocols.md):
``--protocol p1`` trains once on Market-1501 + CUHK02 + CUHK03 (train + test) + CUHK-SYSU
and reports PRID, GRID, VIPeR and iLIDS as the mean ± std over their 10 splits and the
average over the four; ``--protocol p2 --target msmt17`` (or p3, or m3l) runs one
leave-one-out task, all of them without ``--target``.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from metareid.data import PROTOCOL_TARGETS, PROTOCOLS, prepare_synthetic_benchmark, protocol_plans
from metareid.distributed import barrier, init_distributed
from metareid.engine import (
    EvalResult,
    SplitResults,
    TrainConfig,
    Trainer,
    TrainResult,
    protocol_table,
)

METHODS = ("baseline", "meta", "m3l")
LABELS = {"baseline": "Baseline", "meta": "+ Meta", "m3l": "+ Meta + MetaBN (M3L)"}
REAL_TARGETS = ("market1501", "dukemtmc", "cuhk03", "msmt17")
ALL_TARGETS = (*dict.fromkeys(t for ts in PROTOCOL_TARGETS.values() for t in ts), "all")

# CPU-sized settings for the synthetic benchmark.
SYNTHETIC = dict(
    arch="resnet10",
    pretrained="none",
    height=32,
    width=16,
    num_identities=8,
    num_instances=4,
    epochs=6,
    iters_per_epoch=12,
    warmup_epochs=1,
    milestones=(4,),
    lr=1e-3,
    eval_every=0,
    workers=0,
    plots=True,  # curves, t-SNE, retrievals: about 7 s per run on 2 cores
)
SMOKE = dict(SYNTHETIC, epochs=2, iters_per_epoch=4, num_identities=4, plots=False)


def real_sources(target: str, cuhk_source: str, msmt_version: str) -> tuple[str, ...]:
    """The three sources of a leave-one-out protocol and the target's dataset spec."""
    specs = {
        "market1501": "market1501",
        "dukemtmc": "dukemtmc",
        "cuhk03": cuhk_source,
        "msmt17": f"msmt17:{msmt_version}",
    }
    order = ("msmt17", "dukemtmc", "cuhk03", "market1501")  # the paper's MS+D+C -> M etc.
    return tuple(specs[name] for name in order if name != target)


def target_spec(target: str) -> str:
    # CUHK03 is evaluated on CUHK03-NP detected (Sec. 4.1).
    return "cuhk03np:detected" if target == "cuhk03" else target


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (about a minute)")
    parser.add_argument("--data-dir", help="real datasets root; default: synthetic benchmark")
    parser.add_argument("--target", choices=ALL_TARGETS, help="real target dataset")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="DG protocol preset (real data; see docs/protocols.md)",
    )
    parser.add_argument(
        "--arch",
        default=None,
        help="resnet50 | ibn_resnet50a | resnet18 | tv:<torchvision model> | timm:<timm model>",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cuhk-source", default="cuhk03", choices=("cuhk03", "cuhk03np"))
    parser.add_argument("--msmt-version", default="V2", choices=("V1", "V2"))
    parser.add_argument("--cuhk03-subset", default="detected", choices=("detected", "labeled"))
    parser.add_argument("--with-duke", action="store_true", help="--protocol p1: add DukeMTMC")
    parser.add_argument("--synthetic-dir", default="data/synthetic")
    parser.add_argument(
        "--targets",
        nargs="+",
        type=int,
        default=None,
        help="synthetic target domains (default: all; --smoke: the last)",
    )
    parser.add_argument("--output-dir", default="runs/reproduce")
    parser.add_argument("--seed", type=int, default=0, help="first training seed (default 0)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="training seeds per run: seed, seed+1, ... (1)"
    )
    parser.add_argument(
        "--preset",
        choices=("none", "paper", "published"),
        default=None,
        help="set every paper-vs-code switch (docs/training.md, Presets); flags after -- win",
    )
    parser.add_argument(
        "--data-seed", type=int, default=0, help="seed of the synthetic benchmark (0)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--save-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep every run's last.pt in --output-dir (default: on real data yes, on the "
        "synthetic benchmark no: logs, results and pictures only)",
    )
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.protocol is not None:
        if args.data_dir is None:
            parser.error("--protocol needs --data-dir (real datasets)")
    elif (args.data_dir is None) != (args.target is None):
        parser.error("--data-dir and --target go together (real datasets)")
    elif args.target not in (None, *REAL_TARGETS):
        parser.error(f"without --protocol, --target must be one of {list(REAL_TARGETS)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.preset is not None:  # applied before the flags after --, which override it
        extra = ["--preset", args.preset, *extra]
    return args, extra


def config_for(
    args: argparse.Namespace,
    extra: list[str],
    method: str,
    sources: tuple[str, ...],
    target: str,
    data_dir: str,
    base: dict[str, Any],
    out: Path,
    seed: int,
) -> TrainConfig:
    data = TrainConfig().to_dict()
    data.update(base)
    data.update(
        method=method,
        sources=list(sources),
        target=target,
        data_dir=data_dir,
        output_dir=str(out),
        seed=seed,
        save_checkpoints=(
            args.save_checkpoints
            if args.save_checkpoints is not None
            else bool(args.data_dir or args.protocol)  # real data: keep the trained models
        ),
    )
    if args.arch:
        data["arch"] = args.arch
    cfg = TrainConfig.from_dict(data)
    if extra:  # any `metareid train` flag
        parser = argparse.ArgumentParser(prog="extra flags")
        TrainConfig.add_arguments(parser)
        cfg = TrainConfig.from_args(parser.parse_args(extra), cfg)
    return cfg


def run(cfg: TrainConfig, log: Any = builtins.print) -> tuple[EvalResult, TrainResult]:
    trainer = Trainer(cfg, log=log)
    untrained = trainer.evaluate()  # the same network before any training, for reference
    return untrained, trainer.fit()


COLUMNS = ("mAP", "rank1", "rank5", "rank10")


def _mean_std(values: list[float]) -> str:
    """``mean`` for one value, ``mean ± std`` (sample std over seeds) for several."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return f"{mean:.1f}"
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    return f"{mean:.1f} ± {std:.1f}"


def _cells(per_seed: list[list[EvalResult]]) -> list[list[float]]:
    """Per seed: each target's mAP and R1, then the mean over targets of every column."""
    rows = []
    for results in per_seed:
        values: list[float] = []
        for r in results:
            values += [r.mAP, r.rank1]
        n = len(results)
        values += [sum(getattr(r, k) for r in results) / n for k in COLUMNS]
        rows.append(values)
    return rows


def table(
    rows: dict[str, list[list[EvalResult]]],
    targets: list[str],
    differences: dict[str, tuple[str, str]] | None = None,
) -> str:
    """Results table: one row per method, ``mean ± std`` over seeds in every cell.

    ``rows[name][seed][target]`` holds the results. ``differences`` maps a row name to
    ``(method, reference)``: that row gives the paired difference ``method - reference``
    per seed (same seed, same data), as mean ± std over seeds.
    """
    head = "| method | " + " | ".join(f"{t} mAP | {t} R1" for t in targets)
    head += " | mean mAP | mean R1 | mean R5 | mean R10 |"
    width = 2 * len(targets) + 4
    lines = [head, "|" + "---|" * (width + 1)]
    cells = {name: _cells(per_seed) for name, per_seed in rows.items()}
    for name, per_seed in cells.items():
        cols = [[seed[c] for seed in per_seed] for c in range(width)]
        lines.append(f"| {name} | " + " | ".join(_mean_std(c) for c in cols) + " |")
    for name, (method, ref) in (differences or {}).items():
        if method not in cells or ref not in cells:
            continue
        a, b = cells[method], cells[ref]
        cols = [[x[c] - y[c] for x, y in zip(a, b, strict=True)] for c in range(width)]
        lines.append(f"| {name} | " + " | ".join(_mean_std(c) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiments and print the table; under ``torchrun`` every rank trains
    (the trainer splits each batch across them) and rank 0 alone writes the data, prints
    and saves the results."""
    args, extra = parse_args(argv)
    start = time.perf_counter()
    context = init_distributed() if "WORLD_SIZE" in os.environ else None
    is_main = context is None or context.is_main
    print = builtins.print if is_main else _quiet  # rank 0 speaks
    out_root = Path(args.output_dir)
    more: dict[str, dict[str, Any]] = {}  # per experiment label: protocol, final_targets
    if args.protocol:
        base: dict[str, Any] = {"arch": args.arch or "resnet50"}
        plans = protocol_plans(
            args.protocol,
            None if args.target == "all" else args.target,
            msmt_version=args.msmt_version,
            cuhk_source=args.cuhk_source,
            cuhk03_subset=args.cuhk03_subset,
            with_duke=args.with_duke,
        )
        experiments = []
        for plan in plans:
            print(f"protocol {plan.describe()}")
            experiments.append((plan.sources, plan.target, args.data_dir, plan.label))
            more[plan.label] = {"protocol": plan.protocol, "final_targets": plan.final_targets}
    elif args.data_dir:
        base = {"arch": args.arch or "resnet50"}
        experiments = [
            (
                real_sources(args.target, args.cuhk_source, args.msmt_version),
                target_spec(args.target),
                args.data_dir,
                args.target,
            )
        ]
    else:
        if is_main:  # one writer; the others then check the manifest and reuse the files
            prepare_synthetic_benchmark(args.synthetic_dir, seed=args.data_seed)
        barrier()
        bench = prepare_synthetic_benchmark(args.synthetic_dir, seed=args.data_seed)
        print(
            f"synthetic benchmark: {bench.num_domains} domains in {bench.root}"
            f" ({'generated' if bench.generated else 'already present'})"
        )
        base = dict(SMOKE if args.smoke else SYNTHETIC, progress=not args.smoke)
        domains = list(range(bench.num_domains))
        targets = args.targets or (domains[-1:] if args.smoke else domains)
        experiments = [
            (
                tuple(f"synthetic:{d}" for d in domains if d != t),
                f"synthetic:{t}",
                args.synthetic_dir,
                f"D{t}",
            )
            for t in targets
        ]

    seeds = [args.seed + i for i in range(args.seeds)]
    names = ["Untrained (same init)", *(LABELS[m] for m in args.methods)]
    rows: dict[str, list[list[EvalResult]]] = {n: [[] for _ in seeds] for n in names}
    best: dict[str, list[list[EvalResult]]] = {LABELS[m]: [[] for _ in seeds] for m in args.methods}
    presets: set[str] = set()
    # Protocol 1: per seed, per method, per small target, the results over its splits.
    splits: list[dict[str, dict[str, SplitResults]]] = [{} for _ in seeds]
    for s, seed in enumerate(seeds):
        for sources, target, data_dir, label in experiments:
            for i, method in enumerate(args.methods):
                out = out_root / f"seed{seed}" / label / method
                fields = {**base, **more.get(label, {})}
                cfg = config_for(args, extra, method, sources, target, data_dir, fields, out, seed)
                presets.add(cfg.preset)
                print(f"\n=== seed {seed}: {LABELS[method]}: {' + '.join(sources)} -> {target} ===")
                untrained, result = run(cfg)
                if i == 0:
                    rows["Untrained (same init)"][s].append(untrained)
                rows[LABELS[method]][s].append(result.final)
                best[LABELS[method]][s].append(result.best)
                if result.splits:
                    splits[s].setdefault(LABELS[method], {}).update(result.splits)

    labels = [e[3] for e in experiments]
    elapsed = time.perf_counter() - start
    differences = {
        "M3L − Baseline (paired)": (LABELS["m3l"], LABELS["baseline"]),
        "Meta − Baseline (paired)": (LABELS["meta"], LABELS["baseline"]),
    }
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    print(
        f"\nResults on the unseen target domain (last epoch; {spread}; preset "
        f"{', '.join(sorted(presets))}), {elapsed / 60:.1f} min:"
    )
    if any(splits):  # Protocol 1: each small target over its splits, then the average
        for seed, per_seed in zip(seeds, splits, strict=True):
            if len(seeds) > 1:
                print(f"seed {seed}:")
            print(protocol_table(per_seed))
    else:
        print(table(rows, labels, differences))
    summary = {
        "targets": labels,
        "seeds": seeds,
        "preset": sorted(presets),
        "final": {k: [[r.as_dict() for r in v] for v in per] for k, per in rows.items()},
        "best_selected_on_target": {
            k: [[r.as_dict() for r in v] for v in per] for k, per in best.items()
        },
        "seconds": elapsed,
    }
    if any(splits):
        summary["splits"] = [
            {m: {t: r.as_dict() for t, r in v.items()} for m, v in per_seed.items()}
            for per_seed in splits
        ]
    if args.json and is_main:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``print`` on the ranks other than 0."""


if __name__ == "__main__":
    main(sys.argv[1:])
