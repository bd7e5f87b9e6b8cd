"""A tiny torchrun job whose rank 1 fails on purpose (used by test_failure.py).

Usage: ``torchrun --nproc_per_node=2 --standalone _failing_job.py MODE TIMEOUT`` with MODE
``die`` (rank 1 calls ``os._exit(3)`` while rank 0 is in collectives) or ``hang`` (rank 1
stays alive but never joins the next collective, so rank 0's collective times out after
TIMEOUT seconds).
"""

from __future__ import annotations

import os
import sys
import time

from torch.distributed.elastic.multiprocessing.errors import record


@record  # an exception's traceback goes into torchrun's failure report
def main(mode: str, timeout: float) -> None:
    import torch
    import torch.distributed as dist

    from metareid.distributed import barrier, init_distributed

    ctx = init_distributed(device_type="cpu", timeout=timeout)
    barrier()
    print(f"rank {ctx.rank} joined", flush=True)
    if ctx.rank == 1:
        if mode == "die":
            os._exit(3)
        time.sleep(120)  # "hang": alive, silent
    value = torch.ones(1)
    for _ in range(10_000):
        dist.all_reduce(value)
        time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
