"""Time and peak memory of one M3L meta step against a plain training step.

A CPU-sized ResNet-18 with a BNNeck MetaBN, memory + triplet losses as in M3L, three
source domains with P x K = 4 x 4 images each. Measured per step (forward, backward and
optimizer step, memory update included):

* ``baseline``: all three batches, same losses, no meta-learning;
* ``m3l-higher`` / ``m3l-func``: :class:`metareid.MetaLearner`, second order;
* ``first-order-higher`` / ``first-order-func``: the same with ``meta_test_grad="first_order"``;
* ``m3l-reference``: the meta step written the way the published code does it (deep copy
  of the model, updated tensors set on the copy, ``(L_mtr + L_mte).backward()``, and an
  extra no-grad forward of all batches for the memory update).

Times are medians over steps after warm-up, measured interleaved (one step of each method
in turn) because this machine drifts. Peak memory is the growth of the process's peak
resident set during the steps (CPU, one subprocess per method) or
``torch.cuda.max_memory_allocated`` (CUDA).

Run: ``python benchmarks/meta_step.py [--steps 7] [--height 128 --width 64] [--device cuda]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from metareid import HardTripletLoss, MemoryBank, MemoryIDLoss, MetaBN, MetaLearner

METHODS = [
    "baseline",
    "m3l-higher",
    "m3l-func",
    "first-order-higher",
    "first-order-func",
    "m3l-reference",
]


class ReIDNet(nn.Module):
    """ResNet-18 trunk, global average pooling and a BNNeck whose BatchNorm1d is a MetaBN."""

    def __init__(self, arch: str = "resnet18") -> None:
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        block = net.layer4[0]  # last stride 1, as in ReID practice
        block.conv1.stride = block.conv2.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
        self.trunk = nn.Sequential(*list(net.children())[:-2])
        dim = net.fc.in_features
        self.neck = MetaBN(dim)
        self.neck.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.trunk(x).mean(dim=(2, 3))
        return pooled, F.normalize(self.neck(pooled), dim=1)


class Setup:
    def __init__(self, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        self.device = torch.device(args.device)
        self.model = ReIDNet(args.arch).to(self.device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        dim = self.model.neck.num_features
        self.memories = [MemoryBank(args.ids, dim).to(self.device) for _ in range(args.domains)]
        for m in self.memories:
            m.init_from(
                F.normalize(torch.randn(args.ids, dim, device=self.device), dim=1),
                torch.arange(args.ids, device=self.device),
            )
        g = torch.Generator().manual_seed(1)
        self.batches = []
        for _ in range(args.domains):
            labels = torch.randint(0, args.ids, (args.p,), generator=g).repeat_interleave(args.k)
            images = torch.randn(args.p * args.k, 3, args.height, args.width, generator=g)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            self.batches.append((images.to(self.device), labels.to(self.device)))
        self.memory_loss = MemoryIDLoss(temperature=0.05)
        self.triplet = HardTripletLoss(margin=0.3)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=3.5e-4, weight_decay=5e-4
        )
        self.stash: list[tuple[int, Tensor, Tensor]] = []

    def loss_fn(self, model: nn.Module, batch: Any, domain: int, phase: str) -> Tensor:
        images, labels = batch
        pooled, feats = model(images)
        mixed = phase == "meta_test"  # MetaBN: one mixture per meta-train domain
        reps = len(self.batches) - 1 if mixed else 1
        loss = self.memory_loss(feats, labels.repeat(reps), self.memories[domain])
        loss = loss + self.triplet(pooled, labels)
        if not mixed:
            self.stash.append((domain, feats.detach(), labels))
        return loss

    def update_memories(self) -> None:
        for domain, feats, labels in self.stash:
            self.memories[domain].update(feats, labels)
        self.stash.clear()

    # --------------------------------------------------------------- the steps
    def baseline_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.stack(
            [self.loss_fn(self.model, b, d, "plain") for d, b in enumerate(self.batches)]
        ).mean()
        loss.backward()
        self.optimizer.step()
        self.update_memories()

    def learner_step(self, learner: MetaLearner) -> None:
        learner.step(self.batches, self.loss_fn, meta_test=0)
        self.update_memories()

    def reference_step(self) -> None:
        """The published code's way: deep copy, set tensors, (L_mtr + L_mte).backward()."""
        model, opt, t = self.model, self.optimizer, 0
        opt.zero_grad(set_to_none=True)
        self.model.neck.clear_stats()
        self.model.neck.phase = "meta_train"
        train = [d for d in range(len(self.batches)) if d != t]
        l_mtr = torch.stack(
            [self.loss_fn(model, self.batches[d], d, "meta_train") for d in train]
        ).mean()
        self.model.neck.phase = "normal"
        self.stash.clear()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(l_mtr, params, create_graph=True)
        group = opt.param_groups[0]
        b1, b2 = group["betas"]
        new = {}
        for n, p, g in zip(names, params, grads, strict=True):  # update_params(solver='adam')
            g = g + group["weight_decay"] * p
            m, v = (1 - b1) * g, (1 - b2) * g * g + 1e-8  # 1e-8 on the raw second moment
            new[n] = p - group["lr"] / (1 - b1) * m / (v.sqrt() / (1 - b2) ** 0.5 + 1e-8)
        clone = copy.deepcopy(model)
        for n, t_new in new.items():
            owner = clone
            *path, leaf = n.split(".")
            for part in path:
                owner = getattr(owner, part)
            delattr(owner, leaf)
            setattr(owner, leaf, t_new)
        clone.neck.phase = "meta_test"
        l_mte = self.loss_fn(clone, self.batches[t], t, "meta_test")
        self.stash.clear()
        (l_mtr + l_mte).backward()
        opt.step()
        with torch.no_grad():  # the published code's extra forward for the memory update
            for d, (images, labels) in enumerate(self.batches):
                _, feats = model(images)
                self.memories[d].update(feats, labels)


def make_runners(s: Setup) -> dict[str, Callable[[], None]]:
    def learner(**kw: Any) -> MetaLearner:
        return MetaLearner(s.model, s.optimizer, **kw)

    lrn = {
        "m3l-higher": learner(backend="higher"),
        "m3l-func": learner(backend="func"),
        "first-order-higher": learner(backend="higher", meta_test_grad="first_order"),
        "first-order-func": learner(backend="func", meta_test_grad="first_order"),
    }
    runners: dict[str, Callable[[], None]] = {
        "baseline": s.baseline_step,
        "m3l-reference": s.reference_step,
    }
    for name, lr in lrn.items():
        runners[name] = lambda lr=lr: s.learner_step(lr)
    return runners


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(args: argparse.Namespace) -> dict[str, list[float]]:
    s = Setup(args)
    runners = make_runners(s)
    methods = [m for m in METHODS if m in args.methods]
    for _ in range(args.warmup):
        for m in methods:
            runners[m]()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.steps):
        for m in methods:
            sync(s.device)
            t0 = time.perf_counter()
            runners[m]()
            sync(s.device)
            times[m].append(time.perf_counter() - t0)
    return times


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory_one(args: argparse.Namespace, method: str) -> float:
    """Peak memory growth (MiB) of ``method``'s steps in this process."""
    s = Setup(args)
    runner = make_runners(s)[method]
    if s.device.type == "cuda":
        runner()  # warm-up allocations (cuDNN workspaces)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            runner()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = current_rss_mib()
    for _ in range(2):
        runner()
    return peak_rss_mib() - base


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    for method in [m for m in METHODS if m in args.methods]:
        cmd = [sys.executable, __file__, "--memory-child", method, *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[method] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--p", type=int, default=4, help="identities per domain batch")
    parser.add_argument("--k", type=int, default=4, help="images per identity")
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--ids", type=int, default=100, help="identities per domain memory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_child:
        print(json.dumps({"peak_mib": measure_memory_one(args, args.memory_child)}))
        return

    times = time_interleaved(args)
    memory = {} if args.no_memory else measure_memory(args)
    base = statistics.median(times["baseline"]) if "baseline" in times else float("nan")
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"# meta step: {args.arch}, {args.domains} domains x {args.p}x{args.k} images "
        f"{args.height}x{args.width}, {args.device} ({dev}), {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.steps} steps after {args.warmup} warm-up, "
        f"medians, interleaved"
    )
    print(
        f"| {'method':<20} | {'median s':>9} | {'min s':>7} | {'x baseline':>10} | {'peak MiB':>9} |"
    )
    print(f"|{'-' * 22}|{'-' * 11}|{'-' * 9}|{'-' * 12}|{'-' * 11}|")
    for m, ts in times.items():
        med = statistics.median(ts)
        mem = memory.get(m, float("nan"))
        print(f"| {m:<20} | {med:>9.3f} | {min(ts):>7.3f} | {med / base:>10.2f} | {mem:>9.0f} |")
    if os.environ.get("METAREID_BENCH_JSON"):
        print(json.dumps({m: statistics.median(t) for m, t in times.items()}))


if __name__ == "__main__":
    main()
