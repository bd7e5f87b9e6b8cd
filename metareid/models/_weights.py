"""Pretrained weights for the backbones: where they come from and how they are loaded.

* ImageNet ResNets: the URLs of torchvision's weight enums (``ResNet50_Weights.IMAGENET1K_V1``
  and the like).
* IBN-Net50-a: the ImageNet checkpoint of the IBN-Net release (:data:`IBN_RESNET50A_URL`).
* Any local file, read with ``torch.load(..., weights_only=True)``.

A URL is first looked up in the torch hub cache (``$TORCH_HOME/hub/checkpoints``, see
:func:`torch.hub.get_dir`) under its file name, then downloaded there with a socket timeout
(:data:`DOWNLOAD_TIMEOUT_S`), so that a machine without network fails in seconds with a
message saying how to supply the file by hand. Loading is strict: missing, unexpected and
mis-shaped keys are listed in a ``ValueError``; ``fc.*`` keys (ImageNet classifiers) are
ignored.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torchvision import models as tv_models

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "IBN_RESNET50A_URL",
    "cached_path",
    "check_pretrained",
    "fetch_state_dict",
    "imagenet_url",
    "load_weights",
    "read_state_dict",
    "resnet_to_ibn",
]

#: ImageNet weights of IBN-Net50-a from the IBN-Net release (v1.0).
IBN_RESNET50A_URL = (
    "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
)

#: Seconds a download may wait on one socket operation (connect or read) before failing.
DOWNLOAD_TIMEOUT_S = 20.0

_IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
}
_RUNNING_STATS = (".running_mean", ".running_var", ".num_batches_tracked")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
_SHOWN_KEYS = 10


def check_pretrained(value: object) -> None:
    """Raise unless ``value`` is a bool, a non-empty string or an ``os.PathLike``."""
    if isinstance(value, bool):
        return
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            "pretrained must be a bool, a URL string or a path to a local checkpoint, "
            f"got {type(value).__name__}"
        )
    if isinstance(value, str) and not value.strip():
        raise ValueError("pretrained must be a bool, a URL or a file path, got an empty string")


def imagenet_url(arch: str) -> str:
    """URL of torchvision's ``IMAGENET1K_V1`` weights of ``arch`` (resnet18/34/50)."""
    if arch not in _IMAGENET_WEIGHTS:
        raise ValueError(
            f"no ImageNet weights known for {arch!r}; known: {list(_IMAGENET_WEIGHTS)}"
        )
    url: str = getattr(tv_models, _IMAGENET_WEIGHTS[arch]).IMAGENET1K_V1.url
    return url


def cached_path(url: str) -> str:
    """Where the torch hub cache keeps the file of ``url``: ``<hub dir>/checkpoints/<name>``."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def fetch_state_dict(
    pretrained: bool | str | os.PathLike[str],
    url: str,
    *,
    what: str,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> tuple[dict[str, Tensor], str]:
    """Read the state dict that ``pretrained`` designates.

    Args:
        pretrained: ``True`` for ``url``, another URL string (``http://``, ``https://``), or a
            local path (``~`` expanded).
        url: the default URL of the weights.
        what: description of the default weights for error messages.
        timeout: socket timeout of a download, in seconds.

    Returns:
        The state dict (CPU tensors) and the file it was read from.

    Raises:
        RuntimeError: if a URL is neither cached nor downloadable.
        FileNotFoundError: if a local path does not exist.
    """
    if pretrained is True or (isinstance(pretrained, str) and _is_url(pretrained)):
        source_url = url if pretrained is True else str(pretrained)
        path = cached_path(source_url)
        if not os.path.isfile(path):
            try:
                _download(source_url, path, timeout)
            except (OSError, http.client.HTTPException) as err:
                name = os.path.basename(path)
                desc = what if pretrained is True else "the weights"
                raise RuntimeError(
                    f"could not download {desc} from {source_url} "
                    f"({type(err).__name__}: {err}). Without network access, download "
                    f"{source_url} elsewhere and pass pretrained='/path/to/{name}', or put the "
                    f"file at {path} (the torch hub cache, $TORCH_HOME/hub/checkpoints)"
                ) from err
        return read_state_dict(path), path
    if isinstance(pretrained, bool):
        raise ValueError("pretrained=False designates no weights")
    path = os.path.expanduser(os.fspath(pretrained))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained={path!r} is neither a URL nor an existing checkpoint file"
        )
    return read_state_dict(path), path


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a checkpoint with ``torch.load(path, map_location="cpu", weights_only=True)``.

    A state dict nested under ``"state_dict"`` or ``"model"`` is unwrapped, and a
    ``"module."`` prefix shared by all keys (``DataParallel``) is removed.

    Raises:
        ValueError: if the file cannot be read with ``weights_only=True`` or holds no
            mapping of names to tensors.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"could not read {os.fspath(path)!r} with torch.load(weights_only=True): {err}"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{os.fspath(path)!r} must hold a non-empty state dict (a mapping of names to "
            f"tensors), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"{os.fspath(path)!r} is not a state dict: entries {_show(map(str, bad))} are not "
            "tensors"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def resnet_to_ibn(state: Mapping[str, Tensor], net: nn.Module, *, split: bool) -> dict[str, Tensor]:
    """Map a plain ResNet state dict onto the keys of an IBN-a network ``net``.

    Every ``<block>.bn1.*`` entry whose counterpart in ``net`` is an IBN layer
    (``<block>.bn1.IN.*`` and ``<block>.bn1.BN.*``) is replaced:

    * ``split=False`` (the published M3L code): by ``net``'s current IN and BN tensors, so
      loading leaves the IBN layers as they are.
    * ``split=True``: by the plain BN's tensors split along the channels: the first ``half``
      of weight and bias go to IN, the rest of weight, bias and running statistics to BN.

    Raises:
        ValueError: if ``state`` has no plain ``bn1`` where ``net`` has an IBN layer.
    """
    out = dict(state)
    own = net.state_dict()
    for key in own:
        if not key.endswith(".IN.weight"):
            continue
        prefix = key[: -len(".IN.weight")]
        if f"{prefix}.weight" not in out:
            raise ValueError(
                f"a plain ResNet checkpoint has '{prefix}.weight' where the IBN network has "
                f"'{prefix}.IN.weight'; this one has not. For an IBN-Net checkpoint use "
                "ibn_init='ibn_net'"
            )
        plain = {
            field: out.pop(f"{prefix}.{field}")
            for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            if f"{prefix}.{field}" in out
        }
        if not split:
            for name, value in own.items():
                if name.startswith((f"{prefix}.IN.", f"{prefix}.BN.")):
                    out[name] = value.clone()
            continue
        half = own[key].shape[0]
        for field, value in plain.items():
            if field == "num_batches_tracked":
                out[f"{prefix}.BN.{field}"] = value
                continue
            if field in ("weight", "bias"):
                out[f"{prefix}.IN.{field}"] = value[:half]
            out[f"{prefix}.BN.{field}"] = value[half:]
    return out


def load_weights(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    load_running_stats: bool = True,
    ignore_prefixes: tuple[str, ...] = ("fc.",),
) -> None:
    """Load ``state`` into ``module`` with strict key and shape checks.

    Args:
        module: the network to load into.
        state: the state dict.
        source: where ``state`` came from, for error messages.
        load_running_stats: also load ``running_mean``, ``running_var`` and
            ``num_batches_tracked``; ``False`` leaves ``module``'s own.
        ignore_prefixes: keys of ``state`` starting with one of these are dropped.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches; ``module``
            is then unchanged.
    """
    own = module.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    if not load_running_stats:
        given = {k: v for k, v in given.items() if not k.endswith(_RUNNING_STATS)}
        own = {k: v for k, v in own.items() if not k.endswith(_RUNNING_STATS)}
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(given[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in given and given[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_show(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches {_show(mismatched)}")
        ignored = ", ".join(f"{p}*" for p in ignore_prefixes)
        raise ValueError(
            f"weights in {source} do not fit {type(module).__name__}: "
            f"{'; '.join(problems)} (keys {ignored} are ignored)"
        )
    module.load_state_dict(given, strict=False)


# ---------------------------------------------------------------------------- internals
def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _show(items: Iterable[str]) -> str:
    listed = list(items)
    if len(listed) <= _SHOWN_KEYS:
        return str(listed)
    return f"{listed[:_SHOWN_KEYS]} and {len(listed) - _SHOWN_KEYS} more"


def _download(url: str, dst: str, timeout: float) -> None:
    """Download ``url`` to ``dst`` atomically, each socket operation limited to ``timeout``.

    If the file name carries a hash (``name-<hex>.pth``, torch hub's convention) the
    SHA-256 of the download must start with it.
    """
    folder = os.path.dirname(dst) or "."
    os.makedirs(folder, exist_ok=True)
    sys.stderr.write(f"Downloading {url} to {dst}\n")
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=folder)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        match = _HASH_IN_NAME.search(os.path.basename(dst))
        if match and not digest.hexdigest().startswith(match.group(1)):
            raise RuntimeError(
                f"the file downloaded from {url} is corrupt: its SHA-256 "
                f"{digest.hexdigest()[:16]}... does not start with {match.group(1)}"
            )
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
