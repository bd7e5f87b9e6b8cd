"""``micro_batches``: 1 is the plain whole-batch trainer, N > 1 splits every batch by identity.

The 2-rank equivalence (N torchrun ranks = N micro-batches) is tested in
tests/distributed/test_trainer_ranks.py.
"""

from __future__ import annotations

import pytest
import torch

from metareid.data import (
    MultiDomainBatchIterator,
    MultiSourceDataset,
    build_test_loader,
    build_test_transform,
    build_train_loader,
    build_train_transform,
)
from metareid.engine import TrainConfig, Trainer, build_dataset_from_spec
from metareid.engine.build import build_components, build_model_from_config, seed_everything
from metareid.evaluation import extract_features


def plain_loop(cfg: TrainConfig, iterations: int):
    """Three iterations written out with the public components and M3LStep."""
    seed_everything(cfg.seed)
    sources = MultiSourceDataset(
        [build_dataset_from_spec(s, cfg.data_dir) for s in cfg.sources], names=list(cfg.sources)
    )
    build_dataset_from_spec(cfg.target, cfg.data_dir)
    size = (cfg.height, cfg.width)
    train_tf = build_train_transform(size, random_erasing_prob=cfg.random_erasing)
    test_tf = build_test_transform(size)
    model = build_model_from_config(cfg, sources)
    parts = build_components(
        cfg, model, sources, feat_dim=model.feat_dim, device=torch.device("cpu")
    )
    for d, memory in enumerate(parts.memories):
        loader = build_test_loader(
            sources.per_domain_train[d], test_tf, batch_size=16, num_workers=0
        )
        feats, pids, _ = extract_features(model, loader, "cpu", normalize=False)
        memory.init_from(feats, pids)
    loaders = [
        build_train_loader(
            records,
            train_tf,
            num_identities=cfg.num_identities,
            num_instances=cfg.num_instances,
            infinite=True,
            num_workers=0,
            seed=(cfg.seed, d, 0),
        )
        for d, records in enumerate(sources.per_domain_train)
    ]
    batches = MultiDomainBatchIterator(loaders)
    model.train()
    losses = [
        parts.step(model, next(batches), parts.optimizer, parts.learner) for _ in range(iterations)
    ]
    return model, parts, losses


@pytest.mark.parametrize("method", ["m3l", "baseline"])
def test_one_micro_batch_is_the_plain_trainer_bitwise(tiny_bench, tiny_config, tmp_path, method):
    cfg = tiny_config(
        tiny_bench, tmp_path, method=method, arch="resnet10", iters_per_epoch=3, micro_batches=1
    )
    trainer = Trainer(cfg, log=lambda _m: None)
    assert trainer.split.num_chunks == 1
    trainer.init_memories()
    losses = []
    original = trainer._iteration
    trainer._iteration = lambda b: losses.append(original(b)) or losses[-1]  # type: ignore[method-assign]
    trainer.train_epoch()
    model, parts, expected = plain_loop(cfg, 3)
    assert losses == expected
    for (name, a), b in zip(trainer.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(trainer.memories, parts.memories):
        assert torch.equal(a.features, b.features)
    for a, b in zip(trainer.optimizer.state.values(), parts.optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))


def test_two_micro_batches_split_every_batch(tiny_bench, tiny_config, tmp_path):
    kw = dict(method="m3l", arch="resnet10", num_identities=4, iters_per_epoch=2)
    one = Trainer(tiny_config(tiny_bench, tmp_path / "one", **kw), log=lambda _m: None)
    two = Trainer(
        tiny_config(tiny_bench, tmp_path / "two", micro_batches=2, **kw), log=lambda _m: None
    )
    assert two.split.num_chunks == 2
    for t in (one, two):
        t.init_memories()
    seen: list[int] = []
    forward = two.model.backbone.forward

    def spy(x):
        seen.append(x.shape[0])
        return forward(x)

    two.model.backbone.forward = spy  # type: ignore[method-assign]
    for t in (one, two):
        t.train_epoch()
    # Every training forward saw one chunk: 2 identities x 2 instances.
    assert seen and set(seen) == {4}
    # Each chunk's MetaBN recorded its own meta-train statistics (one meta-train domain).
    stats = two.model.neck.domain_stats
    assert len(stats) == 2 and not torch.equal(stats[0][0], stats[1][0])
    # Same data, other statistics: the results differ, but stay finite and sensible.
    assert two.iteration == 2 and all(torch.isfinite(p).all() for p in two.model.parameters())
    assert any(
        not torch.allclose(a, b) for a, b in zip(one.model.parameters(), two.model.parameters())
    )
    for m in two.memories:
        torch.testing.assert_close(m.features.norm(dim=1), torch.ones(m.num_classes))
    state = two.state_dict()
    assert state["num_chunks"] == 2
    state["config"]["output_dir"] = one.cfg.output_dir  # micro_batches alone differs
    before = [p.detach().clone() for p in one.model.parameters()]
    with pytest.raises(ValueError, match=r"N=2 chunks .* splits it into N=1"):
        one.load_state(state)
    assert all(torch.equal(a, b) for a, b in zip(before, one.model.parameters()))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "micro_batches must be an int >= 1, got 0"),
        (-2, "micro_batches must be an int >= 1, got -2"),
        (True, "micro_batches must be an int >= 1, got True"),
        (1.5, "micro_batches must be an int >= 1, got 1.5"),
        (3, "micro_batches=3 must divide num_identities=16"),
    ],
)
def test_bad_micro_batches_are_refused_by_the_config(value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(micro_batches=value)
    cfg = TrainConfig()
    cfg.micro_batches = value
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_micro_batches_flag():
    from metareid.cli import build_parser

    args = build_parser().parse_args(["train", "--micro-batches", "4"])
    assert TrainConfig.from_args(args).micro_batches == 4
    assert TrainConfig().micro_batches == 1
