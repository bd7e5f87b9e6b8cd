"""The ``metareid`` command: ``metareid train``, ``evaluate``, ``synthetic`` and ``datasets``.

``metareid train [--config run.json] [--flag value ...]`` trains with the settings of
the config file (JSON, keys = :class:`~metareid.engine.TrainConfig` fields), overridden
by any flag given; ``--resume`` continues ``<output-dir>/last.pt``; ``--protocol
m3l|p1|p2|p3 [--target T]`` sets the sources and targets of a DG protocol and prints them.
``metareid evaluate --checkpoint runs/m3l/last.pt`` evaluates a checkpoint on its
config's target (or ``--target``). ``metareid synthetic --data-dir DIR`` writes the
built-in synthetic benchmark. ``metareid datasets --data-dir DIR`` lists the datasets
found under DIR with their counts per split next to the releases' numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metareid`` command.

    Example:
        >>> args = build_parser().parse_args(["train", "--epochs", "3", "--no-triplet"])
        >>> args.command, args.epochs, args.triplet
        ('train', 3, False)
    """
    from metareid.engine.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog="metareid", description="Multi-source domain-generalizable person ReID (M3L)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (Algorithm 1) and evaluate it")
    train.add_argument("--config", help="JSON config file; flags override its values")
    train.add_argument("--resume", action="store_true", help="continue <output-dir>/last.pt")
    train.add_argument("--dump-config", action="store_true", help="print the config and exit")
    TrainConfig.add_arguments(train)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on the target domain")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint written by training")
    ev.add_argument("--target", help="dataset spec to evaluate on (default: the run's)")
    ev.add_argument("--data-dir", help="data directory (default: the run's)")
    ev.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None)
    ev.add_argument("--flip-eval", action=argparse.BooleanOptionalAction, default=None)
    ev.add_argument("--device", default=None)
    ev.add_argument("--workers", type=int, default=None)

    syn = sub.add_parser("synthetic", help="write the built-in synthetic benchmark")
    syn.add_argument("--data-dir", required=True)
    syn.add_argument("--seed", type=int, default=0)

    _add_datasets_parser(sub)
    return parser


def _add_datasets_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ds = sub.add_parser(
        "datasets",
        help="list the datasets under a data directory, their counts and the reference numbers",
    )
    ds.add_argument("--data-dir", required=True, help="the data directory to scan")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metareid`` console script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "datasets":
        return _datasets(args)
    return _synthetic(args)


def _train(args: argparse.Namespace) -> int:
    from metareid.engine import TrainConfig, Trainer
    from metareid.engine.protocol import apply_protocol

    base = TrainConfig.from_file(args.config) if args.config else None
    protocol = args.protocol if args.protocol not in (None, "custom") else None
    if protocol is not None:  # the preset picks sources and targets; --target names the task
        if args.sources is not None:
            raise ValueError("--protocol sets the sources; do not also give --sources")
        cfg = TrainConfig.from_args(argparse.Namespace(**{**vars(args), "target": None}), base)
        cfg = apply_protocol(cfg, protocol, args.target)
    else:
        cfg = TrainConfig.from_args(args, base)
    if args.dump_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    Trainer(cfg).fit(resume=args.resume)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from metareid.engine import TrainConfig, Trainer, load_checkpoint

    state = load_checkpoint(args.checkpoint)
    data = dict(state["config"])
    for key in ("target", "data_dir", "rerank", "flip_eval", "device", "workers"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    cfg = TrainConfig.from_dict({**data, "plots": False, "progress": False})
    trainer = Trainer(cfg)
    trainer.model.load_state_dict(state["model"])
    trainer.epoch = int(state["epoch"])
    res = trainer.evaluate()
    print(
        f"| checkpoint | target | mAP | R1 | R5 | R10 | mINP |\n|---|---|---|---|---|---|---|\n"
        f"| {args.checkpoint} (epoch {res.epoch}) | {cfg.target} | {res.mAP:.1f} | "
        f"{res.rank1:.1f} | {res.rank5:.1f} | {res.rank10:.1f} | {res.mINP:.1f} |"
    )
    return 0


def _datasets(args: argparse.Namespace) -> int:
    """Print the datasets under ``--data-dir`` next to the reference numbers; 1 if any is off."""
    from metareid.data import format_scan, scan_data_dir

    result = scan_data_dir(args.data_dir)
    print(format_scan(result, args.data_dir))
    checks, errors, _ = result
    return 1 if errors or any(not c.ok for c in checks) else 0


def _synthetic(args: argparse.Namespace) -> int:
    from metareid.data import prepare_synthetic_benchmark

    bench = prepare_synthetic_benchmark(args.data_dir, seed=args.seed)
    state = "generated" if bench.generated else "already present"
    print(f"synthetic benchmark with {bench.num_domains} domains {state} in {bench.root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
