"""Pretrained weights: local files, the hub cache, offline failures, IBN from plain ResNet.

Nothing here touches the network: downloads are monkeypatched or served from 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from metareid.models import ResNetBackbone, _weights, build_model, ibn_resnet50a, resnet18, resnet50

R18_FILE = "resnet18-f37072fd.pth"
M = TypeVar("M", bound=nn.Module)


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub directory, so the user's cache is never read."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail at once, as on a machine without network."""
    calls: list[str] = []

    def offline(url: str, dst: str, timeout: float) -> None:
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(_weights, "_download", offline)
    return calls


def _randomised(net: M, seed: int) -> M:
    """Random parameters and running statistics, so a load is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=g) + (0.5 if "running_var" in name else 0)
                t.copy_(values)
            else:
                t.fill_(seed)
    return net


def _assert_same_state(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        if not key.endswith(skip):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------- local files
def _small(ibn: bool = False) -> ResNetBackbone:
    return ResNetBackbone(tv_resnet.BasicBlock, (1, 1, 1, 1), ibn_a=ibn)


def _load_file(net: nn.Module, path: Path, load_running_stats: bool = True) -> None:
    state, source = _weights.fetch_state_dict(str(path), "https://unused/x.pth", what="x")
    _weights.load_weights(net, state, source=source, load_running_stats=load_running_stats)


def test_local_file_round_trip(tmp_path: Path) -> None:
    source = _randomised(resnet18(), seed=1)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    _assert_same_state(resnet18(pretrained=str(path)), source)


def test_pathlike_and_torchvision_checkpoint_with_fc(tmp_path: Path) -> None:
    reference = _randomised(tv_resnet.ResNet(tv_resnet.BasicBlock, [1, 1, 1, 1]), seed=2)
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)  # has fc.weight and fc.bias
    state, source = _weights.fetch_state_dict(path, "https://unused/x.pth", what="x")
    assert source == str(path)
    net = ResNetBackbone(tv_resnet.BasicBlock, (1, 1, 1, 1), last_stride=2)
    _weights.load_weights(net, state, source=source)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        trunk = nn.Sequential(*list(reference.eval().children())[:-2])
        torch.testing.assert_close(net.eval()(x), trunk(x))


def test_wrapped_and_dataparallel_checkpoints_load(tmp_path: Path) -> None:
    state = _randomised(_small(), seed=1).state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    net = _small()
    _load_file(net, path)
    for key, value in state.items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    state = _small().state_dict()
    del state["layer2.0.conv1.weight"]
    state["head.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(3)  # ignored
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        _load_file(_small(), path)
    message = str(info.value)
    assert "missing keys ['layer2.0.conv1.weight']" in message
    assert "unexpected keys ['head.weight']" in message
    assert "fc.*" in message and str(path) in message


def test_shape_mismatch_is_listed_and_nothing_changes() -> None:
    net = _small()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = _randomised(_small(), seed=1).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match=r"conv1\.weight \(checkpoint \(64, 3, 3, 3\), model"):
        _weights.load_weights(net, state, source="test")
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_published_code_does_not_load_running_stats(tmp_path: Path) -> None:
    source = _randomised(_small(), seed=3)
    path = tmp_path / "small.pth"
    torch.save(source.state_dict(), path)
    net = _small()
    _load_file(net, path, load_running_stats=False)
    _assert_same_state(net, source, skip=("running_mean", "running_var", "batches_tracked"))
    assert torch.equal(net.bn1.running_mean, torch.zeros(64))
    assert torch.equal(net.layer1[0].bn2.running_var, torch.ones(64))


def test_home_directory_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pth")
    state, source = _weights.fetch_state_dict("~/w.pth", "unused", what="x")
    assert source == str(tmp_path / "w.pth") and torch.equal(state["w"], torch.ones(2))


def test_missing_file_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a URL nor an existing"):
        resnet18(pretrained=str(tmp_path / "nope.pth"))
    path = tmp_path / "not_tensors.pth"
    torch.save({"conv1.weight": 1}, path)
    with pytest.raises(ValueError, match="not tensors"):
        _load_file(_small(), path)
    path = tmp_path / "pickle.pth"
    torch.save(functools.partial(print), path)  # refused by weights_only=True
    with pytest.raises(ValueError, match="weights_only"):
        _load_file(_small(), path)


# ------------------------------------------------------------------------- URLs and cache
def test_default_urls_come_from_torchvision() -> None:
    assert _weights.imagenet_url("resnet18").endswith(R18_FILE)
    assert _weights.imagenet_url("resnet50").endswith("resnet50-0676ba61.pth")  # V1
    assert _weights.IBN_RESNET50A_URL.endswith("resnet50_ibn_a-d9d0bb7b.pth")


def test_pretrained_true_reads_the_hub_cache_first(hub_dir: Path, no_download: list) -> None:
    state = {"w": torch.arange(3.0)}
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_dir / "checkpoints" / R18_FILE)
    loaded, source = _weights.fetch_state_dict(True, _weights.imagenet_url("resnet18"), what="x")
    assert no_download == []
    assert source == str(hub_dir / "checkpoints" / R18_FILE)
    torch.testing.assert_close(loaded["w"], state["w"])


def test_offline_pretrained_true_fails_fast_with_instructions(
    hub_dir: Path, no_download: list
) -> None:
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        build_model("resnet18", pretrained=True)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    url = _weights.imagenet_url("resnet18")
    assert no_download == [url]
    assert f"download {url} elsewhere" in message
    assert f"pretrained='/path/to/{R18_FILE}'" in message
    assert str(hub_dir / "checkpoints" / R18_FILE) in message
    assert "$TORCH_HOME/hub/checkpoints" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_offline_timeout_and_url_string(hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(url: str, dst: str, timeout: float) -> None:
        raise TimeoutError("timed out")

    monkeypatch.setattr(_weights, "_download", hang)
    url = "https://example.org/weights/my_resnet18.pth"
    with pytest.raises(RuntimeError, match=r"TimeoutError.*pretrained='/path/to/my_resnet18\.pth'"):
        resnet18(pretrained=url)


def test_ibn_pretrained_true_uses_the_ibn_net_url(hub_dir: Path, no_download: list) -> None:
    with pytest.raises(RuntimeError, match=r"resnet50_ibn_a-d9d0bb7b\.pth"):
        ibn_resnet50a(pretrained=True)
    assert no_download == [_weights.IBN_RESNET50A_URL]


def test_real_download_fails_fast_on_a_closed_port(hub_dir: Path) -> None:
    with socket.socket() as s:  # find a free port, then close it: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="URLError"):
        _weights.fetch_state_dict(f"http://127.0.0.1:{port}/w.pth", "unused", what="x")
    assert time.perf_counter() - start < 10
    assert list((hub_dir / "checkpoints").iterdir()) == []  # no partial file left behind


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server over a directory; yields (directory, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_into_the_cache_with_hash_check(hub_dir: Path, http_dir: tuple[Path, str]) -> None:
    root, base = http_dir
    state = {"w": torch.arange(4.0)}
    torch.save(state, root / "tmp.pth")
    digest = hashlib.sha256((root / "tmp.pth").read_bytes()).hexdigest()
    good, bad = f"w-{digest[:8]}.pth", "w-00000000.pth"
    os.replace(root / "tmp.pth", root / good)
    (root / bad).write_bytes((root / good).read_bytes())

    loaded, source = _weights.fetch_state_dict(f"{base}/{good}", "unused", what="x")
    torch.testing.assert_close(loaded["w"], state["w"])
    assert source == str(hub_dir / "checkpoints" / good)
    assert (hub_dir / "checkpoints" / good).is_file()

    with pytest.raises(RuntimeError, match="corrupt"):
        _weights.fetch_state_dict(f"{base}/{bad}", "unused", what="x")
    assert sorted(p.name for p in (hub_dir / "checkpoints").iterdir()) == [good]


# ------------------------------------------------------------------------- IBN from ResNet
def test_ibn_init_from_plain_resnet_leaves_ibn_layers_untouched() -> None:
    plain = _randomised(_small(False), seed=6)
    net = _small(True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = _weights.resnet_to_ibn(plain.state_dict(), net, split=False)
    _weights.load_weights(net, state, source="test")
    ours, theirs = net.state_dict(), plain.state_dict()
    for key, value in ours.items():
        if ".bn1.IN." in key or ".bn1.BN." in key:
            assert key.startswith(("layer1", "layer2", "layer3"))
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
        else:
            torch.testing.assert_close(value, theirs[key], rtol=0, atol=0)


def test_ibn_init_from_plain_resnet_split() -> None:
    plain = _randomised(_small(False), seed=7)
    net = _small(True)
    state = _weights.resnet_to_ibn(plain.state_dict(), net, split=True)
    _weights.load_weights(net, state, source="test")
    bn, ibn = plain.layer2[0].bn1, net.layer2[0].bn1
    half = ibn.instance_channels
    assert half == 64
    torch.testing.assert_close(ibn.IN.weight, bn.weight[:half])
    torch.testing.assert_close(ibn.IN.bias, bn.bias[:half])
    torch.testing.assert_close(ibn.BN.weight, bn.weight[half:])
    torch.testing.assert_close(ibn.BN.running_mean, bn.running_mean[half:])
    torch.testing.assert_close(ibn.BN.running_var, bn.running_var[half:])
    torch.testing.assert_close(net.layer4[0].bn1.weight, plain.layer4[0].bn1.weight)


def test_ibn_init_from_resnet_rejects_ibn_checkpoints() -> None:
    net = _small(True)
    with pytest.raises(ValueError, match="ibn_init='ibn_net'"):
        _weights.resnet_to_ibn(_small(True).state_dict(), net, split=False)


def test_ibn_resnet50a_from_torchvision_resnet50(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _randomised(resnet50(), seed=8).state_dict()
    asked: list[str] = []

    def fake_fetch(pretrained: object, url: str, *, what: str) -> tuple[dict, str]:
        asked.append(url)
        return plain, "fake.pth"

    monkeypatch.setattr(_weights, "fetch_state_dict", fake_fetch)
    net = ibn_resnet50a(pretrained=True, ibn_init="torchvision_split")
    assert asked == [_weights.imagenet_url("resnet50")]
    torch.testing.assert_close(net.layer1[0].conv1.weight, plain["layer1.0.conv1.weight"])
    torch.testing.assert_close(net.layer4[0].bn1.weight, plain["layer4.0.bn1.weight"])
    torch.testing.assert_close(net.layer1[0].bn1.IN.weight, plain["layer1.0.bn1.weight"][:32])
