"""A failing rank ends a torchrun job with a non-zero exit, naming the rank, in bounded time."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

JOB = Path(__file__).with_name("_failing_job.py")


def torchrun(env: dict[str, str], mode: str, timeout: float) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(JOB),
            mode,
            str(timeout),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def test_a_rank_that_dies_fails_the_job_naming_it(torchrun_env):
    code, output, seconds = torchrun(torchrun_env, "die", timeout=30.0)
    assert code != 0, output
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*3\b", output), output
    assert seconds < 60


def test_a_rank_that_stops_answering_times_out_the_collective(torchrun_env):
    code, output, seconds = torchrun(torchrun_env, "hang", timeout=3.0)
    assert code != 0, output
    assert re.search(r"rank\s*:\s*0 \(local_rank: 0\)\s*\n\s*exitcode\s*:\s*1\b", output), output
    assert "Timed out" in output or "timed out" in output, output
    assert seconds < 60  # bounded by the 3 s collective timeout, not by rank 1's 120 s sleep
