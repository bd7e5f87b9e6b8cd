"""``verify_data`` under torchrun: rank 0 decodes, every rank raises the same error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed


def _verify_on_ranks(ctx, out: Path, root: str) -> None:
    from tiny_setup import tiny_train_config

    import metareid.data
    from metareid.data import BadImageError
    from metareid.engine import Trainer

    decoded = []
    check = metareid.data.check_images

    def counting(paths, **kwargs):
        decoded.append(1)
        return check(paths, **kwargs)

    metareid.data.check_images = counting  # the trainer imports it when it checks
    cfg = tiny_train_config(root, out / "run", verify_data=True)
    try:
        Trainer(cfg, log=lambda _line: None)
        message = None
    except BadImageError as err:
        message = str(err)
    record = {"decoded": len(decoded), "message": message}
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(record))


def test_rank_0_decodes_and_every_rank_raises(run_ranks, tmp_path) -> None:
    from tiny_setup import make_tiny_bench

    from metareid.data import build_dataset_from_spec

    root = shutil.copytree(make_tiny_bench(tmp_path / "bench"), tmp_path / "spoiled")
    bad = build_dataset_from_spec("synthetic:2", root).query[0].path
    Path(bad).write_bytes(b"")
    out = run_ranks(_verify_on_ranks, timeout=120, root=str(root))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["decoded"] for r in ranks] == [1, 0]
    assert ranks[0]["message"] == ranks[1]["message"]
    assert f"  {bad}: empty file (0 bytes)" in ranks[0]["message"]
    assert not (out / "run").exists()
