"""Speed and memory of metareid.evaluation at Market-1501 and MSMT17 scale, on random inputs.

Each configuration runs in its own subprocess, so that its peak memory can be read from
``/proc/self/status``: ``VmHWM`` (peak resident set) is reset through
``/proc/self/clear_refs`` before every run and compared with ``VmRSS`` before the run, so the
figure is the growth beyond the inputs (features or distance matrix). Times are wall-clock
medians over ``--runs`` runs; the CPU column is the process CPU time of the median run
(all threads), which is less sensitive than wall time to other processes on the machine.

Configurations, per scale:

- ``rank``: :func:`evaluate_rank` on a random float32 (Q, G) distance matrix.
- ``argsort``: one ``numpy.argsort`` of that matrix (Market only), for comparison.
- ``products``: the query-gallery matrix products alone, ``torch.mm`` in chunks of 256
  queries into one buffer: the floor for any evaluation from features.
- ``features``: :func:`evaluate_features` (squared Euclidean, Market protocol).
  ``products`` and ``features`` run alternately in one process, on the same inputs, and
  the ratio line reports the median of the per-pair ratios, which cancels slow drifts of
  the machine's load.
- ``rerank``: :func:`evaluate_features` with ``rerank=True`` (k1=20, k2=6, lambda=0.3).
  Run once. At MSMT17 scale it needs the (Q+G)^2 distance products (about 36 TFLOP, so
  several minutes even on a quiet machine) and is only run with ``--rerank-msmt``.

Usage::

    python benchmarks/eval_speed.py                 # Market and MSMT17 scale (~10 min)
    python benchmarks/eval_speed.py --fraction 0.1  # everything 10x smaller, quick check
    python benchmarks/eval_speed.py --scale market --runs 5
    python benchmarks/eval_speed.py --rerank-msmt   # adds MSMT17-scale re-ranking
    python benchmarks/eval_speed.py --scale msmt --only rerank --rerank-msmt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SCALES = {
    # queries, gallery, identities, cameras, feature dimension
    "market": (3368, 15913, 751, 6, 2048),
    "msmt": (11659, 82161, 3060, 15, 2048),
}
CHUNK = 256


def _status(key: str) -> int:
    """A field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current VmRSS


def _inputs(
    scale: str, fraction: float, features: bool, seed: int = 0
) -> tuple[tuple[Any, ...], tuple[Any, Any, Any, Any]]:
    import numpy as np
    import torch

    num_q, num_g, num_ids, num_cams, dim = SCALES[scale]
    num_q, num_g = max(2, int(num_q * fraction)), max(2, int(num_g * fraction))
    num_ids = max(2, int(num_ids * fraction))
    rng = np.random.default_rng(seed)
    ids = (
        rng.integers(1, num_ids + 1, num_q),
        rng.integers(1, num_ids + 1, num_g),
        rng.integers(1, num_cams + 1, num_q),
        rng.integers(1, num_cams + 1, num_g),
    )
    gen = torch.Generator().manual_seed(seed)
    if features:
        qf = torch.nn.functional.normalize(torch.randn(num_q, dim, generator=gen), dim=1)
        gf = torch.nn.functional.normalize(torch.randn(num_g, dim, generator=gen), dim=1)
        return (qf, gf), ids
    return (torch.rand(num_q, num_g, generator=gen),), ids


def _timed(job: Callable[[], object]) -> tuple[float, float, int, object]:
    """Wall time, CPU time and peak memory growth of one call of ``job``."""
    before = _status("VmRSS")
    _reset_peak()
    wall, cpu = time.perf_counter(), time.process_time()
    result = job()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, _status("VmHWM") - before, result


def _summary(samples: list[tuple[float, float, int, object]], ids: tuple[Any, ...]) -> dict:
    walls = [w for w, _, _, _ in samples]
    median_index = walls.index(sorted(walls)[(len(walls) - 1) // 2])
    out: dict[str, Any] = {
        "wall": statistics.median(walls),
        "min": min(walls),
        "cpu": samples[median_index][1],
        "peak": max(p for _, _, p, _ in samples),
        "runs": len(samples),
        "shape": [int(ids[0].shape[0]), int(ids[1].shape[0])],
    }
    result = samples[-1][3]
    if hasattr(result, "mAP"):
        out["mAP"] = float(result.mAP)
    return out


def _worker(config: str, scale: str, fraction: float, runs: int) -> dict:
    import numpy as np
    import torch

    from metareid.evaluation import evaluate_features, evaluate_rank

    tensors, ids = _inputs(scale, fraction, features=config in ("pair", "rerank"))
    if config == "rank":
        (dist,) = tensors
        return {
            "rank": _summary([_timed(lambda: evaluate_rank(dist, *ids)) for _ in range(runs)], ids)
        }
    if config == "argsort":
        array = tensors[0].numpy()
        return {"argsort": _summary([_timed(lambda: np.argsort(array, axis=1))], ids)}
    qf, gf = tensors
    q_pids, g_pids, q_camids, g_camids = ids
    if config == "rerank":

        def job() -> object:
            return evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, rerank=True)

        return {"rerank": _summary([_timed(job) for _ in range(runs)], ids)}
    if config != "pair":
        raise ValueError(config)
    buffer = torch.empty(CHUNK, gf.shape[0])

    def products() -> None:
        for start in range(0, qf.shape[0], CHUNK):
            stop = min(start + CHUNK, qf.shape[0])
            torch.mm(qf[start:stop], gf.T, out=buffer[: stop - start])

    samples: dict[str, list] = {"products": [], "features": []}
    for _ in range(runs):  # alternate, so that both see the same machine load
        samples["products"].append(_timed(products))
        samples["features"].append(_timed(lambda: evaluate_features(qf, gf, *ids)))
    out = {name: _summary(values, ids) for name, values in samples.items()}
    pairs = list(zip(samples["products"], samples["features"], strict=True))
    out["ratio"] = {
        "wall": statistics.median(f[0] / p[0] for p, f in pairs),
        "cpu": statistics.median(f[1] / p[1] for p, f in pairs),
    }
    return out


def _run(config: str, scale: str, args: argparse.Namespace, runs: int) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        config,
        "--scale",
        scale,
        "--fraction",
        str(args.fraction),
        "--runs",
        str(runs),
    ]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env.setdefault("PYTHONHASHSEED", "0")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config} at {scale} scale failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", nargs="+", choices=sorted(SCALES), default=["market", "msmt"])
    parser.add_argument("--fraction", type=float, default=1.0, help="shrink Q, G and ids")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: default)")
    parser.add_argument("--no-rerank", action="store_true", help="skip re-ranking")
    parser.add_argument(
        "--rerank-msmt", action="store_true", help="also re-rank at MSMT17 scale (minutes)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["rank", "argsort", "pair", "rerank"],
        help="run only these configurations (pair = products and features)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.scale[0], args.fraction, args.runs)))
        return
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    rows: list[tuple[str, str, dict[str, Any]]] = []
    ratios: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()
    for scale in args.scale:
        configs = ["rank", "argsort", "pair"] if scale == "market" else ["rank", "pair"]
        if not args.no_rerank and (scale == "market" or args.rerank_msmt):
            configs.append("rerank")
        if args.only:
            configs = [config for config in configs if config in args.only]
        for config in configs:
            runs = 1 if config in ("rerank", "argsort") else args.runs
            print(f"running {config} at {scale} scale ...", file=sys.stderr, flush=True)
            out = _run(config, scale, args, runs)
            if "ratio" in out:
                ratios[scale] = out.pop("ratio")
            rows.extend((scale, name, r) for name, r in out.items())
    load_after = os.getloadavg()

    header = (
        f"{'scale':8} {'config':9} {'Q x G':>15} {'median s':>9} {'min s':>8} {'CPU s':>8} "
        f"{'runs':>4} {'peak MB':>8} {'mAP':>8}"
    )
    print(header)
    print("-" * len(header))
    for scale, config, r in rows:
        shape = f"{r['shape'][0]} x {r['shape'][1]}"
        m_ap = f"{r['mAP']:.5f}" if "mAP" in r else ""
        print(
            f"{scale:8} {config:9} {shape:>15} {r['wall']:9.3f} {r['min']:8.3f} {r['cpu']:8.2f} "
            f"{r['runs']:4d} {r['peak'] / 2**20:8.0f} {m_ap:>8}"
        )
    for scale, ratio in ratios.items():
        print(
            f"{scale}: features / products = {ratio['wall']:.3f} (median of per-pair wall "
            f"ratios), {ratio['cpu']:.3f} (CPU time)"
        )
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    print(
        f"torch threads: {threads}; cores: {os.cpu_count()}; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} (above 0 = other processes running)"
    )


if __name__ == "__main__":
    main()
