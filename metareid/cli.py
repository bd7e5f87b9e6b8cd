"""The ``metareid`` command: ``train``, ``evaluate``, ``synthetic``, ``datasets``, ``extract``,
``search`` and ``export``.

``metareid train [--config run.json] [--flag value ...]`` trains with the settings of
the config file (JSON, keys = :class:`~metareid.engine.TrainConfig` fields), overridden
by any flag given; ``--resume`` continues ``<output-dir>/last.pt``; ``--protocol
m3l|p1|p2|p3 [--target T]`` sets the sources and targets of a DG protocol and prints them.
``torchrun --nproc_per_node=N -m metareid train ...`` trains on N processes
(docs/distributed.md); ``--micro-batches N`` reproduces them in one process.
``metareid evaluate --checkpoint runs/m3l/last.pt`` evaluates a checkpoint on its
config's target (or ``--target``), reading only the checkpoint and the target dataset.
``metareid synthetic --data-dir DIR`` writes the built-in synthetic benchmark.
``metareid extract``, ``metareid search`` and ``metareid export`` use a trained model on
your own images (see ``docs/inference.md``).
``metareid datasets --data-dir DIR`` lists the datasets found under DIR with their
counts per split next to the releases' numbers; ``--verify`` also decodes every image.
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
    from metareid.config import TrainConfig

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
    _add_inference_parsers(sub)
    _add_datasets_parser(sub)
    return parser


def _add_datasets_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ds = sub.add_parser(
        "datasets",
        help="list the datasets under a data directory, their counts and the reference numbers",
    )
    ds.add_argument("--data-dir", required=True, help="the data directory to scan")
    ds.add_argument(
        "--verify",
        action="store_true",
        help="also decode every image (train, query, gallery) and list the unreadable or "
        "empty files; exit status 1 if there is any",
    )
    ds.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes for --verify (default: the number of CPUs)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metareid`` console script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "extract":
        return _extract(args)
    if args.command == "search":
        return _search(args)
    if args.command == "export":
        return _export(args)
    if args.command == "datasets":
        return _datasets(args)
    return _synthetic(args)


def _train(args: argparse.Namespace) -> int:
    # Under torchrun, ``record`` puts an exception's traceback into torchrun's failure
    # report (it re-raises the exception); outside torchrun it is not needed.
    import os

    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return _run_training(args)
    from torch.distributed.elastic.multiprocessing.errors import record

    status = record(_run_training)(args)
    return 0 if status is None else status


def _run_training(args: argparse.Namespace) -> int:
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
    """Evaluate from the checkpoint and the target alone: no sources, no downloads."""
    from metareid.inference import evaluate_checkpoint

    res, target = evaluate_checkpoint(
        args.checkpoint,
        target=args.target,
        data_dir=args.data_dir,
        device=args.device,
        flip=args.flip_eval,
        rerank=args.rerank,
        workers=args.workers,
    )
    print(
        f"| checkpoint | target | mAP | R1 | R5 | R10 | mINP |\n|---|---|---|---|---|---|---|\n"
        f"| {args.checkpoint} (epoch {res.epoch}) | {target} | {res.mAP:.1f} | "
        f"{res.rank1:.1f} | {res.rank5:.1f} | {res.rank10:.1f} | {res.mINP:.1f} |"
    )
    return 0


def _add_inference_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def extractor_options(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
        p.add_argument(
            "--checkpoint", required=checkpoint_required, help="a checkpoint written by training"
        )
        p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
        p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
        p.add_argument(
            "--flip",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="average with the mirrored images' embeddings (default: off)",
        )
        p.add_argument("--workers", type=int, default=0, help="image-loading processes (0)")
        p.add_argument(
            "--on-bad-image",
            choices=("raise", "skip"),
            default="raise",
            help="an undecodable image: stop (default) or warn and skip it",
        )
        p.add_argument(
            "--recursive",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="also read subfolders (default: yes)",
        )

    ex = sub.add_parser("extract", help="embeddings of a folder of images, to a .npz file")
    extractor_options(ex)
    ex.add_argument("--images", required=True, help="folder of images")
    ex.add_argument("--out", required=True, help="output .npz (features, names, root, metadata)")

    se = sub.add_parser("search", help="rank a gallery folder for every query image")
    extractor_options(se, checkpoint_required=False)
    se.add_argument("--query", required=True, help="folder of images, or a .npz from extract")
    se.add_argument("--gallery", required=True, help="folder of images, or a .npz from extract")
    se.add_argument("--topk", type=int, default=10, help="results per query (default 10)")
    se.add_argument("--out", required=True, help="ranked lists: .csv (default) or .json")
    se.add_argument("--grid", default=None, help="also write the retrieval-grid picture (PNG)")
    se.add_argument("--grid-queries", type=int, default=8, help="rows of the grid (default 8)")
    se.add_argument("--seed", type=int, default=0, help="seed of the grid's queries (0)")

    exp = sub.add_parser("export", help="export the embedding model (TorchScript or ONNX)")
    exp.add_argument("--checkpoint", required=True, help="a checkpoint written by training")
    exp.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    exp.add_argument("--out", default=None, help="default: model.torchscript / model.onnx")
    exp.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=False, help="bake in flip"
    )


def _extractor(args: argparse.Namespace) -> object:
    from metareid import FeatureExtractor

    return FeatureExtractor(
        args.checkpoint,
        device=args.device,
        batch_size=args.batch_size,
        flip=args.flip,
        num_workers=args.workers,
        on_bad_image=args.on_bad_image,
    )


def _extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from metareid import FeatureExtractor
    from metareid.inference import save_embeddings

    extractor = _extractor(args)
    assert isinstance(extractor, FeatureExtractor)
    root = Path(args.images)
    feats, paths = extractor.extract_folder(root, recursive=args.recursive)
    names = [p.relative_to(root).as_posix() for p in paths]
    out = save_embeddings(args.out, feats, names, root=root, metadata=extractor.metadata())
    print(f"wrote {feats.shape[0]} embeddings of dimension {feats.shape[1]} to {out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from metareid import FeatureExtractor
    from metareid.inference import load_embeddings, save_rankings, search_grid, topk_search

    extractor: FeatureExtractor | None = None

    def side(location: str, what: str) -> tuple[torch.Tensor, list[str], list[Path]]:
        nonlocal extractor
        source = Path(location)
        if source.is_file() and source.suffix.lower() == ".npz":
            emb = load_embeddings(source)
            return torch.from_numpy(emb.features), emb.names, emb.paths
        if not source.exists():
            raise FileNotFoundError(f"--{what} {location!r} is neither a folder nor a .npz file")
        if args.checkpoint is None:
            raise ValueError(f"--checkpoint is needed to embed the --{what} folder {location!r}")
        if extractor is None:
            made = _extractor(args)
            assert isinstance(made, FeatureExtractor)
            extractor = made
        feats, paths = extractor.extract_folder(source, recursive=args.recursive)
        return feats, [p.relative_to(source).as_posix() for p in paths], paths

    qf, q_names, q_paths = side(args.query, "query")
    gf, g_names, g_paths = side(args.gallery, "gallery")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"query embeddings have dimension {qf.shape[1]} but gallery ones {gf.shape[1]}: "
            "were they made by the same model?"
        )
    res = topk_search(qf, gf, topk=args.topk)
    out = save_rankings(args.out, q_names, g_names, res.indices, res.distances)
    print(f"wrote the top {res.indices.shape[1]} of {len(q_names)} queries to {out}")
    if args.grid:
        grid = search_grid(
            qf,
            gf,
            q_paths,
            g_paths,
            args.grid,
            num_queries=args.grid_queries,
            topk=args.topk,
            seed=args.seed,
        )
        print(f"wrote {grid}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from metareid.inference import export_model

    path = args.out or ("model.onnx" if args.format == "onnx" else "model.torchscript")
    out = export_model(args.checkpoint, path, args.format, flip=args.flip)
    print(f"wrote {out} and {out}.json")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    """Print the datasets under ``--data-dir`` next to the reference numbers; 1 if any is off.

    With ``--verify``, also decode every image of the datasets found; 1 if any fails.
    """
    from pathlib import Path

    from metareid.data import (
        ReIDDataset,
        build_dataset_from_spec,
        check_images,
        dataset_image_paths,
        format_bad_images,
        format_scan,
        scan_data_dir,
    )

    found: list[ReIDDataset] = []

    def build(spec: str, root: Path) -> ReIDDataset:
        dataset = build_dataset_from_spec(spec, root)
        found.append(dataset)
        return dataset

    result = scan_data_dir(args.data_dir, build=build)
    print(format_scan(result, args.data_dir))
    checks, errors, _ = result
    status = 1 if errors or any(not c.ok for c in checks) else 0
    if args.verify and found:
        paths = dataset_image_paths(found)
        sys.stdout.flush()  # the table before the progress on stderr
        bad = check_images(paths, workers=args.workers, progress=True)
        print(format_bad_images(bad, len(paths)))
        status = 1 if bad else status
    return status


def _synthetic(args: argparse.Namespace) -> int:
    from metareid.data import prepare_synthetic_benchmark

    bench = prepare_synthetic_benchmark(args.data_dir, seed=args.seed)
    state = "generated" if bench.generated else "already present"
    print(f"synthetic benchmark with {bench.num_domains} domains {state} in {bench.root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
