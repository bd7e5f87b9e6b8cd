"""Memory and time of one M3L training step on torchvision and timm backbones.

Every row is one backbone as ``metareid train --arch`` builds it
(:func:`metareid.models.build_model`, random weights, last stride 1 where the architecture
has one), measured with the library's own step (the same measurement as
``benchmarks/chunked_step.py``, in a fresh subprocess per setting): three source domains
of P x K images, memory + triplet losses, the plain ``baseline`` step and the ``m3l`` meta
step (:class:`metareid.MetaLearner`, ``backend="func"``) at second order where the model
allows it (:func:`metareid.meta.missing_second_derivative`), otherwise at first order.
Peak memory is the growth of the process's peak resident set over the steps (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA); time is the median over the timed steps.

Run: ``python benchmarks/backbones.py`` (the default list, 128 x 64 images, 3 x 4 x 2
images per step; about 15 minutes on 2 idle CPU cores, timm needed for the ``timm:``
rows). ``--archs`` picks others; torchvision ViTs take square images and are measured at
``height x height``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from metareid.meta import missing_second_derivative
from metareid.models import build_model

DEFAULT_ARCHS = [
    "resnet50",
    "tv:resnet50",
    "timm:resnet50",
    "tv:efficientnet_b0",
    "timm:efficientnet_b0",
    "tv:mobilenet_v3_large",
    "tv:convnext_tiny",
    "timm:convnext_tiny",
    "tv:swin_t",
    "tv:vit_b_16",
    "timm:vit_small_patch16_224",
    "timm:deit_tiny_patch16_224",
]


def size_of(arch: str, height: int, width: int) -> tuple[int, int]:
    """torchvision's ViTs take square images."""
    return (height, height) if arch.startswith("tv:vit_") else (height, width)


def describe(arch: str, height: int, width: int) -> dict:
    """Parameters, feature width, last-stride note and second-order support of ``arch``."""
    torch.manual_seed(0)
    model = build_model(arch, pretrained=False, input_size=(height, width))
    notes = getattr(model.backbone, "notes", ())
    images = torch.randn(2, 3, height, width)
    missing = missing_second_derivative(model, images)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "feat_dim": model.feat_dim,
        "last_stride_1": "built in"
        if not notes
        else ("yes" if "last stride 1:" in notes[0] else "no"),
        "second_order": missing is None,
        "missing": missing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--p", type=int, default=4, help="identities per domain batch")
    parser.add_argument("--k", type=int, default=2, help="images per identity")
    parser.add_argument("--methods", nargs="+", default=["baseline", "m3l"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--describe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.describe:
        h, w = size_of(args.describe, args.height, args.width)
        print(json.dumps(describe(args.describe, h, w)))
        return

    print(
        f"{args.height}x{args.width} images (torchvision ViTs {args.height}x{args.height}), "
        f"3 domains x {args.p} x {args.k} images, device {args.device}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        "| arch | params (M) | D | last stride 1 | second order | baseline s/step | "
        "baseline MiB | M3L s/step | M3L MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    here = __file__.rsplit("/", 1)[0]
    rows = []
    for arch in args.archs:
        h, w = size_of(arch, args.height, args.width)
        common = ["--height", str(h), "--width", str(w), "--threads", str(args.threads)]
        res = subprocess.run(
            [sys.executable, __file__, *common, "--describe", arch],
            capture_output=True,
            text=True,
        )
        if res.returncode:
            print(f"| {arch} | failed: {res.stderr.strip().splitlines()[-1]} |", flush=True)
            continue
        row = {"arch": arch, "height": h, "width": w, **json.loads(res.stdout.splitlines()[-1])}
        for method in args.methods:
            order = "full" if row["second_order"] else "first_order"
            cmd = [
                sys.executable,
                f"{here}/chunked_step.py",
                "--arch", arch, *common,
                "--p", str(args.p), "--k", str(args.k), "--ids", "50",
                "--warmup", str(args.warmup), "--steps", str(args.steps),
                "--device", args.device,
                "--child", method, "1", "kept",
            ]  # fmt: skip
            if order == "first_order":
                cmd += ["--meta-test-grad", "first_order"]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                row[method] = {"error": out.stderr.strip().splitlines()[-1]}
            else:
                row[method] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)

        def cells(method: str, row: dict = row) -> str:
            m = row.get(method)
            if m is None:
                return "- | -"
            if "error" in m:
                return f"failed: {m['error'][:60]} | -"
            return f"{m['time_s']:.2f} | {m['peak_mib']:.0f}"

        second = "yes" if row["second_order"] else f"no ({row['missing']}): first order"
        print(
            f"| {arch} | {row['params_m']:.1f} | {row['feat_dim']} | {row['last_stride_1']} | "
            f"{second} | {cells('baseline')} | {cells('m3l')} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
