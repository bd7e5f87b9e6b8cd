"""Entry point of one rank started by ``run_ranks`` (see conftest.py).

Usage: ``python _launch.py FILE FUNCTION OUT KWARGS_JSON`` with the torchrun environment
set. Imports FILE by path, joins the gloo process group and calls
``FUNCTION(ctx, Path(OUT), **kwargs)``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from metareid.distributed import destroy_distributed, init_distributed

    torch.set_num_threads(1)
    file, name, out, kwargs = argv
    spec = importlib.util.spec_from_file_location("_rank_test_module", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ctx = init_distributed(device_type="cpu", timeout=30.0)
    try:
        getattr(module, name)(ctx, Path(out), **json.loads(kwargs))
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
