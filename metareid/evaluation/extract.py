"""Feature extraction for evaluation: the embedding of a batch, and of a whole loader.

:func:`embed` is the one definition of the evaluation embedding on top of a model's
output (flip averaging, then L2 normalisation); :func:`extract_features` runs it over a
loader, and :class:`metareid.inference.EmbeddingNet` (the exported model) is it as a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["embed", "extract_features"]


def _as_id_tensor(name: str, value: object, batch: int, index: int) -> Tensor:
    ids = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if ids.is_floating_point() or ids.is_complex() or ids.dim() != 1 or ids.shape[0] != batch:
        raise ValueError(
            f"batch {index}: {name} must be {batch} integer ids (one per image), got "
            f"{ids.dtype} values of shape {tuple(ids.shape)}"
        )
    return ids.detach().to(device="cpu", dtype=torch.int64)


def _unpack(batch: object, index: int) -> tuple[Tensor, object, object]:
    """Split a batch into (images, pids, camids); see :func:`extract_features`."""
    if isinstance(batch, Mapping):
        missing = [key for key in ("img", "pid", "camid") if key not in batch]
        if missing:
            raise ValueError(
                f"batch {index}: a dict batch needs the keys 'img', 'pid' and 'camid', "
                f"missing {missing} (got keys {sorted(map(str, batch))})"
            )
        images, pids, camids = batch["img"], batch["pid"], batch["camid"]
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        if len(batch) < 3:
            raise ValueError(
                f"batch {index}: a tuple batch must be (img, pid, camid, ...), "
                f"got {len(batch)} elements"
            )
        images, pids, camids = batch[0], batch[1], batch[2]
    else:
        raise TypeError(
            f"batch {index}: expected a dict with keys 'img', 'pid', 'camid' or a tuple "
            f"(img, pid, camid, ...), got {type(batch).__name__}"
        )
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(
            f"batch {index}: img must be a floating-point tensor of shape (B, C, H, W), got {shape}"
        )
    return images, pids, camids


def _check_flags(flip: object, normalize: object) -> None:
    for name, flag in (("flip", flip), ("normalize", normalize)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")


def _features(model: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """``model(images)`` checked to be features (B, D), as float32."""
    out = model(images)
    if not isinstance(out, Tensor):
        raise TypeError(
            "the model must return a tensor of features (B, D) (in eval mode for a module), "
            f"got {type(out).__name__}; wrap it to select the embedding"
        )
    if out.dim() != 2 or out.shape[0] != images.shape[0]:
        raise ValueError(
            f"the model must return features of shape (B, D) with B = {images.shape[0]}, "
            f"got shape {tuple(out.shape)}"
        )
    return out.float()


def embed(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    flip: bool = False,
    normalize: bool = True,
) -> Tensor:
    """The evaluation embedding of a batch: flip averaging, then L2 normalisation.

    With ``e(x) = model(x)`` cast to float32 it computes, row by row,

    * ``flip=False``: ``v = e(images)``;
    * ``flip=True``: ``v = (e(images) + e(mirror(images))) / 2``, where the mirror reverses
      the last dimension (width);
    * ``normalize=True``: ``v / max(||v||_2, 1e-12)`` (``F.normalize``), after the flip
      average. The published M3L evaluation ranks with the squared Euclidean distance on
      L2-normalised features; the paper has no equation for the test-time embedding, and
      flip averaging is an option of this library (off by default).

    For a :class:`~metareid.models.ReIDModel` in eval mode, ``e`` is
    :meth:`~metareid.models.ReIDModel.neck_features`. This is the step that
    :func:`extract_features` runs on every batch and that
    :class:`~metareid.inference.EmbeddingNet` (the exported model) runs in its forward, so
    both give the same values bit for bit. It sets no mode and no ``torch.no_grad()``:
    the caller does (``extract_features`` does both). Plain tensor code, so
    ``torch.jit.trace``, ``torch.onnx.export`` and ``torch.export`` record it.

    Args:
        model: maps images (B, C, H, W) to features (B, D): a module in eval mode, or any
            callable such as a bound method.
        images: float tensor (B, C, H, W).
        flip: average with the features of the horizontally mirrored images. Default False.
        normalize: L2-normalise each row (after the flip average). Default True.

    Returns:
        float32 features (B, D), on the device of the model output.

    Raises:
        TypeError: ``images`` is not a floating-point (B, C, H, W) tensor, the model does
            not return a tensor, or a flag is not a bool.
        ValueError: the model output is not (B, D).

    Example:
        >>> import torch
        >>> from metareid.evaluation import embed
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
        >>> feats = embed(model, torch.randn(2, 3, 2, 2), flip=True)
        >>> feats.shape, torch.allclose(feats.norm(dim=1), torch.ones(2))
        (torch.Size([2, 4]), True)
    """
    _check_flags(flip, normalize)
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(
            f"images must be a floating-point tensor of shape (B, C, H, W), got {shape}"
        )
    out = _features(model, images)
    if flip:
        out = (out + _features(model, images.flip(-1))) / 2.0
    if normalize:
        out = F.normalize(out, p=2.0, dim=1)
    return out


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device | str | None = None,
    flip: bool = False,
    normalize: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Features, ids and camera ids of every image of ``loader``.

    The model runs in eval mode under ``torch.no_grad()``; afterwards every submodule gets
    back its own previous ``training`` flag (a frozen BatchNorm inside a training model
    stays frozen). Each batch's features are :func:`embed` ``(model, images, flip,
    normalize)``: with ``flip=True`` the features of each image and of its horizontal
    mirror (last dimension reversed) are averaged; ``normalize`` is applied after that
    average, as in the published evaluation (squared Euclidean distance on L2-normalised
    features).

    Accepted batch formats (the loader may mix them):

    - a dict with keys ``"img"`` (float tensor (B, C, H, W)), ``"pid"`` and ``"camid"``
      (B integers each: tensors or lists); other keys are ignored;
    - a tuple or list ``(img, pid, camid, ...)``; further elements (paths...) are ignored.

    Args:
        model: maps images (B, C, H, W) to features (B, D), returning a tensor.
        loader: iterable of batches, e.g. a ``torch.utils.data.DataLoader``.
        device: where the images are sent; ``None`` (default) means the device of the
            model's first parameter or buffer (the CPU for a model without any).
        flip: average with the features of the horizontally flipped images. Default False.
        normalize: L2-normalise each feature (after the flip average). Default True.

    Returns:
        ``(features, pids, camids)``: float32 features (N, D), int64 ids (N,) and int64
        camera ids (N,), all on the CPU, in loader order.

    Raises:
        TypeError: a batch or the model output has the wrong type.
        ValueError: a batch is malformed, shapes disagree, or the loader is empty.

    Example:
        >>> import torch
        >>> from metareid.evaluation import extract_features
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
        >>> loader = [(torch.randn(2, 3, 2, 2), torch.tensor([1, 2]), torch.tensor([0, 1]))]
        >>> feats, pids, camids = extract_features(model, loader, flip=True)
        >>> feats.shape, pids.tolist(), model.training
        (torch.Size([2, 4]), [1, 2], True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_flags(flip, normalize)
    if device is None:
        tensors = [*model.parameters(), *model.buffers()]
        target = tensors[0].device if tensors else torch.device("cpu")
    else:
        target = torch.device(device)
    modes = {module: module.training for module in model.modules()}
    feats: list[Tensor] = []
    pid_list: list[Tensor] = []
    cam_list: list[Tensor] = []
    try:
        model.eval()
        with torch.no_grad():
            for index, batch in enumerate(loader):
                images, pids, camids = _unpack(batch, index)
                size = images.shape[0]
                pid_list.append(_as_id_tensor("pid", pids, size, index))
                cam_list.append(_as_id_tensor("camid", camids, size, index))
                feats.append(embed(model, images.to(target), flip, normalize).cpu())
    finally:
        for module, mode in modes.items():
            module.training = mode  # each module's own flag, not train()'s recursive one
    if not feats:
        raise ValueError("loader yielded no batch")
    dims = {f.shape[1] for f in feats}
    if len(dims) > 1:
        raise ValueError(f"the model returned features of different sizes {sorted(dims)}")
    return torch.cat(feats), torch.cat(pid_list), torch.cat(cam_list)
