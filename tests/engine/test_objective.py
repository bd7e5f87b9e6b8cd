"""M3LObjective and M3LStep: phase handling, memory updates (never a MetaBN mixture), bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metareid import MemoryBank, MetaBN, MetaLearner, Phase, metabn_phase
from metareid.engine import M3LObjective, M3LStep
from metareid.models import ReIDModel


def tiny_model(seed: int = 0) -> ReIDModel:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU())
    model = ReIDModel(trunk)
    model.neck.generator = torch.Generator().manual_seed(seed + 1)
    return model


def make_batches(num_domains: int, p: int = 3, k: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "img": torch.randn(p * k, 3, 10, 6, generator=g) + 0.3 * d,
            "pid": torch.arange(p).repeat_interleave(k),
        }
        for d in range(num_domains)
    ]


def make_banks(num_domains: int, dim: int = 6, ids: int = 3, **kw) -> list[MemoryBank]:
    banks = []
    for d in range(num_domains):
        bank = MemoryBank(ids, dim, **kw)
        g = torch.Generator().manual_seed(100 + d)
        bank.init_from(F.normalize(torch.randn(ids, dim, generator=g), dim=1), torch.arange(ids))
        banks.append(bank)
    return banks


class Spy:
    """Records MetaBN meta-test outputs and every memory update."""

    def __init__(self, monkeypatch, banks: list[MemoryBank]) -> None:
        self.mixtures: list[Tensor] = []
        self.updates: list[tuple[int, Tensor]] = []
        original = MetaBN.forward

        def forward(layer, x):  # class level: higher's patched copies run it too
            out = original(layer, x)
            if layer.training and layer.phase == "meta_test":
                self.mixtures.append(F.normalize(out.detach(), dim=1).clone())
            return out

        monkeypatch.setattr(MetaBN, "forward", forward)
        for d, bank in enumerate(banks):
            update = bank.update

            def spy(features, labels, d=d, update=update):
                self.updates.append((d, features.detach().clone()))
                update(features, labels)

            bank.update = spy  # type: ignore[method-assign]

    def assert_no_mixture_written(self) -> None:
        assert self.mixtures, "the spy saw no MetaBN meta-test output"
        for d, feats in self.updates:
            for mix in self.mixtures:
                for start in range(0, mix.shape[0], feats.shape[0]):
                    rows = mix[start : start + feats.shape[0]]
                    if rows.shape == feats.shape:
                        assert not torch.allclose(rows, feats, atol=1e-6), (
                            f"memory {d} received a MetaBN mixture"
                        )


@pytest.mark.parametrize("num_domains", [2, 3])
@pytest.mark.parametrize("backend", ["higher", "func"])
def test_no_memory_ever_receives_a_metabn_mixture(num_domains, backend, monkeypatch):
    model = tiny_model()
    banks = make_banks(num_domains)
    spy = Spy(monkeypatch, banks)
    step = M3LStep(M3LObjective(banks, num_domains))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    learner = MetaLearner(model, opt, backend=backend, generator=torch.Generator().manual_seed(0))
    model.train()
    for it in range(4):
        spy.updates.clear()
        out = step(model, make_batches(num_domains, seed=it), opt, learner)
        # only the meta-train domains were written, in their order
        t = int(out["meta_test_domain"])
        assert [d for d, _ in spy.updates] == [d for d in range(num_domains) if d != t]
        spy.assert_no_mixture_written()


def test_spy_catches_a_mixture_written_by_shape_heuristics(monkeypatch):
    # Positive control: the old rule "write when the row count equals the batch size"
    # writes the two-source mixture into the meta-test memory; the spy must see it.
    model = tiny_model()
    banks = make_banks(2)
    spy = Spy(monkeypatch, banks)
    obj = M3LObjective(banks, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    learner = MetaLearner(model, opt, generator=torch.Generator().manual_seed(0))

    def heuristic(m, batch, domain, phase):
        out, pids = m(batch["img"]), batch["pid"]
        reps = out.features.shape[0] // pids.shape[0]
        if reps == 1:  # the old shape test
            banks[domain].update(out.features, pids)
        return obj.memory_loss(out.features, pids.repeat(reps), banks[domain])

    model.train()
    learner.step(make_batches(2), heuristic)
    with pytest.raises(AssertionError, match="received a MetaBN mixture"):
        spy.assert_no_mixture_written()


@pytest.mark.parametrize("num_domains", [2, 3])
def test_meta_without_metabn_writes_the_meta_test_features_at_theta_prime(num_domains):
    model = tiny_model()
    model.neck = nn.BatchNorm1d(6)  # type: ignore[assignment]  # method "meta"
    banks = make_banks(num_domains)
    updates: list[int] = []
    for d, bank in enumerate(banks):
        original = bank.update
        bank.update = lambda f, y, d=d, o=original: (updates.append(d), o(f, y))  # type: ignore[method-assign]
    step = M3LStep(M3LObjective(banks, num_domains))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    learner = MetaLearner(model, opt, generator=torch.Generator().manual_seed(1))
    out = step(model.train(), make_batches(num_domains), opt, learner)
    t = int(out["meta_test_domain"])
    assert updates == [*(d for d in range(num_domains) if d != t), t]


def test_after_timing_writes_an_extra_train_mode_forward_of_every_domain():
    # Published code: after the outer step, a no-grad train-mode forward of every source
    # batch (BN running statistics move again), then the per-sample renormalised update.
    model = tiny_model().train()
    banks = make_banks(3, update_rule="sequential")
    step = M3LStep(M3LObjective(banks, 3), memory_update_timing="after")
    batches = make_batches(3)
    ref_model = copy.deepcopy(model)
    ref_memories = [b.features.clone() for b in banks]
    for d, b in enumerate(batches):  # independent reference: a per-sample Python loop
        with torch.no_grad():
            feats = ref_model(b["img"]).features
        for f, y in zip(feats, b["pid"].tolist()):
            row = 0.2 * ref_memories[d][y] + 0.8 * f
            ref_memories[d][y] = row / row.norm()
    step.update_memories(model, batches, written=[(0, None)])
    for bank, ref in zip(banks, ref_memories):
        torch.testing.assert_close(bank.features, ref, rtol=1e-6, atol=1e-6)
    bn, ref_bn = model.backbone[1], ref_model.backbone[1]
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 3


def test_loss_refuses_wrong_row_counts_and_eval_mode():
    model = tiny_model()
    step = M3LStep(M3LObjective(make_banks(3), 3))
    batch = make_batches(3)[0]

    class Liar(nn.Module):  # returns one row per sample whatever MetaBN says
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            with metabn_phase(self.inner, "normal"):
                return self.inner(x)

    liar = Liar(model).train()
    with metabn_phase(model, "meta_train"):
        model(batch["img"]), model(batch["img"])
    with (
        metabn_phase(model, "meta_test"),
        pytest.raises(RuntimeError, match="expected 2 x 6"),
    ):
        step.loss_fn(liar, batch, 0, Phase.META_TEST)
    with pytest.raises(RuntimeError, match="returned a tensor in train mode"):
        step.loss_fn(model.eval(), batch, 0, Phase.NORMAL)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(id_loss="nope"), ValueError, "id_loss"),
        (dict(num_domains=0), ValueError, "num_domains"),
        (dict(num_domains=2), ValueError, "one MemoryBank per domain"),
        (dict(memories=[object()] * 3), TypeError, r"memories\[0\]"),
        (dict(id_loss="fc_global"), ValueError, "pid_offsets"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = dict(memories=make_banks(3), num_domains=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        M3LObjective(args.pop("memories"), args.pop("num_domains"), **args)


def test_step_bad_arguments():
    obj = M3LObjective(make_banks(3), 3)
    with pytest.raises(ValueError, match="memory_update_timing"):
        M3LStep(obj, memory_update_timing="later")
    with pytest.raises(TypeError, match="objective must be an M3LObjective"):
        M3LStep(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="split must be a BatchSplit"):
        M3LStep(obj, split="whole")  # type: ignore[arg-type]


def test_step_refuses_a_wrong_number_of_batches_and_changes_nothing():
    model = tiny_model()
    banks = make_banks(3)
    before = [b.features.clone() for b in banks]
    params = [p.detach().clone() for p in model.parameters()]
    step = M3LStep(M3LObjective(banks, 3))
    with pytest.raises(ValueError, match="one batch per domain"):
        step(model.train(), make_batches(2), torch.optim.Adam(model.parameters()))
    assert all(torch.equal(a.features, b) for a, b in zip(banks, before))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


# ---------------------------------------------------------------------------- trainer, amp
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_trainer_bf16_on_cpu_trains_with_finite_gradients(
    tiny_bench, tiny_config, tmp_path, monkeypatch
):
    from metareid.engine import Trainer

    # 64 x 32 inputs: at 32 x 16 (feature maps of 4 x 2 and 2 x 1 in the last stages), CPU
    # bf16 convolutions of torch 2.14 intermittently returned NaN for finite inputs and
    # weights on the development machine (docs/training.md, Numerics).
    cfg = tiny_config(
        tiny_bench,
        tmp_path,
        amp="bf16",
        method="m3l",
        iters_per_epoch=3,
        arch="resnet10",
        height=64,
        width=32,
    )
    trainer = Trainer(cfg, log=lambda _m: None)
    assert trainer.grad_scaler is None and trainer.learner is not None
    seen: list[torch.dtype] = []
    original = trainer.model.backbone.forward

    def spy(x):
        out = original(x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(trainer.model.backbone, "forward", spy)
    grads_finite: list[bool] = []
    step = trainer.optimizer.step

    def check_step(*a, **k):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        grads_finite.append(bool(grads) and all(torch.isfinite(g).all() for g in grads))
        return step(*a, **k)

    monkeypatch.setattr(trainer.optimizer, "step", check_step)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert torch.bfloat16 in seen  # the forwards really ran in reduced precision
    assert grads_finite == [True, True, True]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert 0 <= result.final.mAP <= 100


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_trainer_fp16_uses_a_grad_scaler_in_the_meta_step(tiny_bench, tiny_config, tmp_path):
    from metareid.engine import Trainer

    cfg = tiny_config(
        tiny_bench,
        tmp_path,
        amp="fp16",
        method="m3l",
        iters_per_epoch=3,
        arch="resnet10",
        height=64,
        width=32,
    )
    trainer = Trainer(cfg, log=lambda _m: None)
    scaler = trainer.grad_scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert trainer.learner is not None and trainer.learner.grad_scaler is scaler
    before = [p.detach().clone() for p in trainer.model.parameters()]
    start = scaler.get_scale()
    trainer.fit()
    # Every step either went through with finite gradients or was skipped by the scaler,
    # which then lowered its scale; the weights are never corrupted. (On the CPU the fp16
    # gradients of this tiny run overflow and the scaler skips; fp16 is meant for CUDA.)
    moved = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert moved or scaler.get_scale() < start
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    state = trainer.state_dict()["grad_scaler"]
    assert state is not None and state["scale"] == scaler.get_scale()


def test_trainer_default_is_full_precision(tiny_bench, tiny_config, tmp_path):
    from metareid.engine import TrainConfig, Trainer

    assert TrainConfig().amp == "off"
    trainer = Trainer(tiny_config(tiny_bench, tmp_path), log=lambda _m: None)
    assert trainer.amp_dtype is None and trainer.grad_scaler is None
    with trainer._autocast():
        out = trainer.model.train()(torch.randn(4, 3, 32, 16))
    assert out.features.dtype == torch.float32


def test_two_source_trainer_never_writes_a_mixture(tiny_bench, tiny_config, tmp_path, monkeypatch):
    from metareid.engine import Trainer

    cfg = tiny_config(tiny_bench, tmp_path, method="m3l", iters_per_epoch=3, arch="resnet10")
    assert len(cfg.sources) == 2
    trainer = Trainer(cfg, log=lambda _m: None)
    spy = Spy(monkeypatch, list(trainer.memories))
    trainer.init_memories()
    trainer.train_epoch()
    assert len(spy.updates) == 3  # one meta-train domain per iteration
    spy.assert_no_mixture_written()
