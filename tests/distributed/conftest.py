"""Run a function of a test file on N local ranks (gloo), as torchrun would start them.

``run_ranks(fn, world_size=2, **kwargs)`` starts one ``python`` process per rank with the
torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT`` on a free localhost port). Each process imports ``fn``'s file by path,
joins the process group with :func:`metareid.distributed.init_distributed` on the CPU and
calls ``fn(ctx, out, **kwargs)``; ``out`` is a folder shared by the ranks and returned to
the test. A rank that fails fails the test with its stderr.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import metareid

LAUNCH = Path(__file__).with_name("_launch.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TESTS = str(Path(__file__).resolve().parents[1])  # tests/: shared helpers (tiny_setup.py)


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(metareid.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, TESTS, *filter(None, [env.get("PYTHONPATH")])])
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    return env


@pytest.fixture
def torchrun_env() -> dict[str, str]:
    """The environment for a torchrun subprocess: this checkout's metareid, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    root = str(Path(metareid.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, TESTS, *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def _run(
    fn: Callable[..., object], out: Path, world_size: int, timeout: float, kwargs: dict
) -> Path:
    path = Path(sys.modules[fn.__module__].__file__ or "")
    port = free_port()
    args = [sys.executable, str(LAUNCH), str(path), fn.__name__, str(out), json.dumps(kwargs)]
    logs = [out / f"rank{rank}.log" for rank in range(world_size)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as handle:
            procs.append(
                subprocess.Popen(
                    args,
                    env=rank_env(rank, world_size, port),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + timeout
    failed_at: float | None = None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if failed_at is None and any(p.returncode for p in procs):
            failed_at = now  # give the others a moment to report their side, then stop them
        if now > deadline or (failed_at is not None and now > failed_at + 5.0):
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            break
        time.sleep(0.05)
    failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode]
    if failed:
        report = "\n".join(
            f"--- rank {r} exited with {code}:\n{logs[r].read_text()[-4000:]}" for r, code in failed
        )
        late = " (timed out)" if time.monotonic() > deadline else ""
        pytest.fail(f"{fn.__name__} failed on ranks {[r for r, _ in failed]}{late}\n{report}")
    return out


@pytest.fixture
def run_ranks(tmp_path: Path) -> Callable[..., Path]:
    """``run_ranks(fn, world_size=2, timeout=60, **kwargs)`` -> the ranks' shared folder."""
    counter = iter(range(1000))

    def run(
        fn: Callable[..., object], world_size: int = 2, timeout: float = 60.0, **kwargs: object
    ) -> Path:
        out = tmp_path / f"run{next(counter)}"
        out.mkdir()
        return _run(fn, out, world_size, timeout, kwargs)

    return run
