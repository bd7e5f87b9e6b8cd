"""A few trainer iterations on tiny synthetic data for every switch; resume; checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from metareid import MemoryBank, MetaBN
from metareid.engine import Trainer, load_checkpoint

SWITCHES = [
    dict(method="baseline"),
    dict(method="meta"),
    dict(method="m3l"),
    dict(method="m3l", id_loss="memory", triplet=False),  # Table 4
    dict(method="m3l", id_loss="none", triplet=True),
    dict(method="m3l", id_loss="fc_global"),  # Table 5
    dict(method="m3l", id_loss="fc_domain"),
    dict(method="baseline", id_loss="fc_domain"),
    dict(
        method="m3l",
        memory_update_rule="sequential",
        sample_scale="var",
        memory_update_timing="after",
    ),
    dict(method="m3l", meta_test_grad="first_order", backend="func", inner_state="continue"),
    dict(method="meta", inner_eps=1e-6),
    dict(  # every switch of the published preset at once, its three GPUs included
        method="m3l",
        meta_test_grad="second_order_only",
        meta_test_bn_stats="update",
        stem_relu=False,
        load_running_stats=False,
        freeze_neck_bias=False,
        sampler="published",
        dataparallel=3,
        memory_update_rule="sequential",
        memory_update_timing="after",
        eval_every=1,
    ),
    dict(method="baseline", dataparallel=2, weight_decay_scope="no_norm_bias"),
]


@pytest.mark.parametrize(
    "switches", SWITCHES, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items())
)
def test_every_switch_trains_and_evaluates(tiny_bench, tiny_config, tmp_path, switches):
    cfg = tiny_config(tiny_bench, tmp_path / "run", **switches)
    trainer = Trainer(cfg, log=lambda s: None)
    neck_is_metabn = isinstance(trainer.model.neck, MetaBN)
    assert neck_is_metabn == (cfg.method == "m3l")
    if cfg.method != "baseline":
        assert trainer.learner is not None
        assert (trainer.learner.inner_eps, trainer.learner.inner_state) == (
            cfg.inner_eps,
            cfg.inner_state,
        )
    before = [m.features.clone() for m in trainer.memories]
    result = trainer.fit()
    assert 0.0 <= result.final.mAP <= 100.0 and result.final.epoch == 1
    assert (tmp_path / "run" / "last.pt").is_file()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    iters = [r for r in records if r["kind"] == "iter"]
    assert [r["iter"] for r in iters] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in iters)
    if cfg.method != "baseline":
        assert {"meta_train_loss", "meta_test_loss"} <= set(iters[0])
    assert len(trainer.memories) == (2 if cfg.id_loss == "memory" else 0)
    for m, b in zip(trainer.memories, before):
        assert not torch.equal(m.features, b)  # the memories were updated
        torch.testing.assert_close(m.features.norm(dim=1), torch.ones(m.num_classes))


def test_memories_start_from_eval_mode_class_means(tiny_bench, tiny_config, tmp_path):
    cfg = tiny_config(tiny_bench, tmp_path / "run")
    trainer = Trainer(cfg, log=lambda s: None)
    trainer.init_memories()
    # Independent reference: eval-mode features of every training image, averaged per id.
    model = trainer.model.eval()
    for domain, memory in enumerate(trainer.memories):
        records = trainer.sources.per_domain_train[domain]
        loader = trainer._test_loader(records)
        feats, pids = [], []
        with torch.no_grad():
            for batch in loader:
                feats.append(model(batch["img"]))
                pids.append(batch["pid"])
        feats, pids = torch.cat(feats), torch.cat(pids)
        for k in range(memory.num_classes):
            centroid = torch.nn.functional.normalize(feats[pids == k].mean(0), dim=0)
            torch.testing.assert_close(memory.features[k], centroid, rtol=1e-5, atol=1e-6)
    assert isinstance(trainer.memories[0], MemoryBank)


def _iter_losses(path):
    return [
        (r["iter"], r["loss"])
        for r in map(json.loads, (path / "log.jsonl").read_text().splitlines())
        if r["kind"] == "iter"
    ]


def test_resume_after_a_kill_gives_the_same_losses(tiny_bench, tiny_config, tmp_path, monkeypatch):
    kw = dict(epochs=3, iters_per_epoch=2, eval_every=1, warmup_epochs=1, milestones=(2,))
    full = Trainer(tiny_config(tiny_bench, tmp_path / "full", **kw), log=lambda s: None)
    full_result = full.fit()

    cfg = tiny_config(tiny_bench, tmp_path / "killed", **kw)
    killed = Trainer(cfg, log=lambda s: None)
    calls = {"n": 0}
    original = Trainer._iteration

    def dies_in_epoch_two(self, batches):
        calls["n"] += 1
        if calls["n"] == 4:  # second iteration of the second epoch
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(Trainer, "_iteration", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(Trainer, "_iteration", original)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1

    resumed = Trainer(cfg, log=lambda s: None).fit(resume=True)
    assert _iter_losses(tmp_path / "killed") == _iter_losses(tmp_path / "full")
    assert resumed.final == full_result.final
    assert [e.epoch for e in resumed.evaluations] == [1, 2, 3]


def test_resume_refuses_a_different_config(tiny_bench, tiny_config, tmp_path):
    Trainer(tiny_config(tiny_bench, tmp_path / "run"), log=lambda s: None).fit()
    other = Trainer(tiny_config(tiny_bench, tmp_path / "run", lr=1e-2), log=lambda s: None)
    with pytest.raises(ValueError, match=r"differing keys: lr \(checkpoint 0.00035, now 0.01\)"):
        other.fit(resume=True)


def test_resume_reads_a_checkpoint_of_an_earlier_version(tiny_bench, tiny_config, tmp_path):
    from metareid.serialization import save_checkpoint

    cfg = tiny_config(tiny_bench, tmp_path / "run", epochs=2)
    trainer = Trainer(cfg, log=lambda s: None)
    trainer.fit()
    path = tmp_path / "run" / "last.pt"
    state = load_checkpoint(path)
    old = dict(state["config"])
    for key in ("mean", "std", "tensorboard", "checkpoint_activations"):  # keys it predates
        old.pop(key)
    old["metabn_scale"] = old.pop("sample_scale")  # a key under its earlier name
    state["config"] = old
    save_checkpoint({**state, "epoch": 1}, path)
    lines: list[str] = []
    Trainer(cfg, log=lines.append).fit(resume=True)
    assert any(line.startswith("resumed from") for line in lines)

    state["config"] = {**old, "mean": [0.5, 0.5, 0.5]}  # a real difference is still refused
    save_checkpoint({**state, "epoch": 1}, path)
    with pytest.raises(ValueError, match=r"differing keys: mean \(checkpoint \[0.5, 0.5, 0.5\]"):
        Trainer(cfg, log=lambda s: None).fit(resume=True)


def test_trainer_rejects_non_config():
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        Trainer({"method": "m3l"})  # type: ignore[arg-type]


def test_end_of_run_pictures(tiny_bench, tiny_config, tmp_path):
    pytest.importorskip("matplotlib")
    lines = []
    Trainer(tiny_config(tiny_bench, tmp_path / "run", plots=True), log=lines.append).fit()
    for name in ("curves.png", "tsne.png", "retrieval.png"):
        path = tmp_path / "run" / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert any(name in line for line in lines)


@pytest.mark.parametrize(
    ("history", "growing"),
    [
        ([12.2, 11.2, 16.3, 18.1], True),  # the diverging second-order run (docs)
        ([6.9, 8.1, 8.6, 9.5, 10.1], True),  # from trained weights (docs)
        ([6.9, 8.1, 8.6, 9.5], False),  # 8.6 < 1.25 * 6.9
        ([6.9, 8.1, 8.6], False),  # 8.1 <= 1.25 * 6.9: only one epoch above
        ([12.1, 8.8, 7.8, 7.4, 9.0], False),  # one bad epoch is not a trend
        ([12.1, 8.8, 7.8, 7.4, 9.3, 9.4], True),
        ([5.0, 5.0], False),  # too short to judge
        ([5.0, float("nan"), float("nan")], False),
    ],
)
def test_loss_growth_rule(history, growing):
    from metareid.engine.callbacks import loss_is_growing as _loss_is_growing

    assert _loss_is_growing(history) is growing


@pytest.mark.parametrize(
    ("switches", "hint"),
    [
        (
            dict(method="m3l"),
            "--inner-eps-root 1e-5, --inner-state continue or --meta-test-grad first_order",
        ),
        (dict(method="m3l", meta_test_grad="first_order"), "lower --lr"),
        (dict(method="baseline"), "lower --lr"),
    ],
)
def test_growing_loss_is_warned_once_logged_and_resumed(
    tiny_bench, tiny_config, tmp_path, switches, hint
):
    import io

    lines: list[str] = []
    cfg = tiny_config(tiny_bench, tmp_path / "run", **switches)
    trainer = Trainer(cfg, log=lines.append)
    key = "loss" if cfg.method == "baseline" else "meta_train_loss"
    logf = io.StringIO()
    for epoch, value in enumerate([12.2, 11.2, 16.3, 18.1, 19.0, 20.0]):
        trainer.epoch = epoch
        # For meta-learning the meta-train loss is watched, not the total.
        trainer._watch_loss({"kind": "epoch", "loss": value + 1, key: value}, logf)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1
    assert f"{key} grew from 11.200 to 18.100" in warnings[0] and hint in warnings[0]
    records = [json.loads(line) for line in logf.getvalue().splitlines()]
    assert [(r["kind"], r["epoch"]) for r in records] == [("warning", 3)]
    # The history travels with checkpoints: a resumed run neither forgets nor re-warns.
    state = trainer.state_dict()
    resumed = Trainer(cfg, log=lines.append)
    resumed.load_state(state)
    assert resumed.loss_history == [12.2, 11.2, 16.3, 18.1, 19.0, 20.0]
    resumed._watch_loss({"kind": "epoch", key: 30.0}, logf)
    assert len([line for line in lines if line.startswith("warning:")]) == 1


def test_user_callbacks_are_called_after_the_built_in_ones(tiny_bench, tiny_config, tmp_path):
    from metareid.engine import Callback, RunView

    class LossFile(Callback):  # the docs' example: losses to a file of the user's choice
        def __init__(self, path):
            self.path = path
            self.evaluations = 0

        def on_iteration_end(self, trainer: RunView, index, losses):
            with open(self.path, "a") as f:
                f.write(f"{trainer.iteration} {losses['loss']:.6f}\n")

        def on_evaluation(self, trainer: RunView, result):
            self.evaluations += 1

    cb = LossFile(tmp_path / "losses.txt")
    cfg = tiny_config(tiny_bench, tmp_path / "run", method="baseline")
    trainer = Trainer(cfg, log=lambda s: None, callbacks=[cb])
    assert trainer.callbacks[-1] is cb
    trainer.fit()
    lines = (tmp_path / "losses.txt").read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == [1, 2] and cb.evaluations == 1
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be a Callback, got builtin_function"):
        Trainer(cfg, log=lambda s: None, callbacks=[print])  # type: ignore[list-item]
