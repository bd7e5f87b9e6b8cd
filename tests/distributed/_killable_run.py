"""One rank of a torchrun training job that can be killed mid-epoch on purpose.

Usage (under torchrun): ``python _killable_run.py CONFIG_JSON [--resume] [--kill-rank R
--kill-epoch E --kill-iteration I]``. Trains with the public :class:`Trainer`; with
``--kill-rank``, rank R ends its process abruptly (``os._exit(3)``, no clean-up) after
iteration I of epoch E, as a crashed or pre-empted worker would.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str]) -> None:
    from metareid.engine import Callback, TrainConfig, Trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-rank", type=int, default=None)
    parser.add_argument("--kill-epoch", type=int, default=1)
    parser.add_argument("--kill-iteration", type=int, default=0)
    args = parser.parse_args(argv)

    class Crash(Callback):
        def on_iteration_end(self, trainer, index, losses):  # type: ignore[no-untyped-def]
            rank = int(os.environ.get("RANK", "0"))
            if (rank, trainer.epoch, index) == (
                args.kill_rank,
                args.kill_epoch,
                args.kill_iteration,
            ):
                sys.stdout.flush()
                os._exit(3)

    trainer = Trainer(TrainConfig.from_file(args.config), log=print)
    if args.kill_rank is not None:
        trainer.callbacks.append(Crash())
    trainer.fit(resume=args.resume)


if __name__ == "__main__":
    main(sys.argv[1:])
