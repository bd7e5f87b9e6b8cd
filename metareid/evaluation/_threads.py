"""Worker threads that run torch operations single-threaded (private).

PyTorch's CPU operations parallelise with OpenMP: every large operation forks the intra-op
threads and joins them at a barrier. When other processes share the cores, a team member
is often descheduled and each barrier then costs a scheduler time slice (milliseconds), so
a sequence of many medium-sized operations can run ten times slower than on one thread.
The evaluation code therefore runs its many medium-sized operations in Python threads that
each limit themselves to one intra-op thread; torch releases the GIL inside operations,
so several such workers still use several cores. Large matrix products stay in the
calling thread, with the process's thread count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["run_workers", "single_threaded"]

T = TypeVar("T")


def run_workers(task: Callable[[int], object], count: int) -> None:
    """Run ``task(k)`` for ``k < count``, each in its own thread limited to one intra-op thread.

    Every worker calls ``torch.set_num_threads(1)``, a per-thread OpenMP setting: the
    workers never meet at each other's parallel-region barriers, which on a busy machine
    (a descheduled team member) costs a scheduler time slice per operation. The process
    default, which ``set_num_threads`` also changes for threads created later, is restored
    afterwards. A single task runs in a worker thread too, for the same reason. The
    workers run in the caller's grad and inference modes.
    """
    errors: list[BaseException] = []
    threads_before = torch.get_num_threads()
    # grad and inference modes are thread-local: give the workers the caller's
    inference = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    def worker(k: int) -> None:
        try:
            torch.set_num_threads(1)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                task(k)
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.set_num_threads(threads_before)
    if errors:
        raise errors[0]


def single_threaded(job: Callable[[], T]) -> T:
    """Return ``job()``, computed in one worker thread limited to one intra-op thread."""
    box: list[T] = []
    run_workers(lambda _: box.append(job()), 1)
    return box[0]
