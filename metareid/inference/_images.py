"""Private: turn user images (paths, PIL images, tensors, arrays) into model inputs.

Every input goes through the evaluation transform (:func:`~metareid.data.build_test_transform`)
exactly as a dataset image does: uint8 pixels are first made a PIL image, so that a file, its
decoded PIL image and its uint8 array give the same tensor. Float inputs (RGB in [0, 1]) are
resized by the same transform on the tensor.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from metareid._validation import describe
from metareid.data.datasets.base import BadImageError, load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageItems",
    "as_image_list",
    "collate_kept",
    "list_images",
]

#: File extensions that folders are scanned for (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_SINGLE = (str, os.PathLike, Image.Image)


def list_images(
    folder: str | os.PathLike[str],
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> list[Path]:
    """The image files of ``folder``, sorted by their path relative to it.

    Raises:
        FileNotFoundError: if ``folder`` is not a directory.
        ValueError: if it holds no file with one of ``extensions``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    exts = {e.lower() for e in extensions}
    pattern = "**/*" if recursive else "*"
    files = sorted(
        (p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in exts),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        where = "or its subfolders " if recursive else ""
        raise ValueError(
            f"image folder {str(root)!r} {where}holds no image file (looked for "
            f"{', '.join(sorted(exts))})"
        )
    return files


def as_image_list(images: object) -> list[Any]:
    """One list entry per image; 4-D tensors and arrays are split along the batch."""
    if isinstance(images, _SINGLE):
        return [images]
    if isinstance(images, Tensor):
        if images.dim() == 4:
            return list(images.unbind(0))
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, Sequence) and not isinstance(images, (bytes, bytearray)):
        out: list[Any] = []
        for index, item in enumerate(images):
            if isinstance(item, Tensor) and item.dim() == 4:
                out.extend(item.unbind(0))
            elif isinstance(item, np.ndarray) and item.ndim == 4:
                out.extend(list(item))
            elif isinstance(item, (*_SINGLE, Tensor, np.ndarray)):
                out.append(item)
            else:
                raise TypeError(f"images[{index}] {_EXPECTED}, got {describe(item)}")
        if not out:
            raise ValueError("images must hold at least one image, got an empty sequence")
        return out
    raise TypeError(f"images {_EXPECTED}, or a sequence of them, got {describe(images)}")


_EXPECTED = (
    "must be an image path, a PIL image, a tensor (3, H, W) / (N, 3, H, W) or an array "
    "(H, W, 3) / (N, H, W, 3)"
)


def check_item(index: int, item: Any) -> None:
    """Raise ``TypeError``/``ValueError`` for an in-memory image of the wrong layout."""
    if isinstance(item, Tensor):
        shape, channels, layout = tuple(item.shape), item.shape[0] if item.dim() else 0, "(3, H, W)"
        dtype_ok = item.dtype == torch.uint8 or item.is_floating_point()
    elif isinstance(item, np.ndarray):
        shape, channels, layout = item.shape, item.shape[-1] if item.ndim else 0, "(H, W, 3)"
        dtype_ok = item.dtype == np.uint8 or item.dtype.kind == "f"
    else:
        return
    if not dtype_ok:
        raise TypeError(
            f"images[{index}] must be uint8 (0-255) or floating point (RGB in [0, 1]), got "
            f"{describe(item)}"
        )
    if len(shape) != 3 or channels != 3 or min(shape) < 1:
        raise ValueError(
            f"images[{index}] must be one RGB image of shape {layout} (or a batch with a "
            f"leading N), got shape {shape}"
        )
    if not (item.dtype == torch.uint8 or item.dtype == np.uint8):
        finite = (
            bool(torch.isfinite(item).all())
            if isinstance(item, Tensor)
            else bool(np.isfinite(item).all())
        )
        if not finite:
            raise ValueError(f"images[{index}] holds NaN or infinite values")


def to_input(item: Any, transform: Callable[[Any], Tensor]) -> Tensor:
    """The evaluation-transformed tensor (3, H, W) of one checked image."""
    if isinstance(item, (str, os.PathLike)):
        return transform(load_image(Path(item)))
    if isinstance(item, Image.Image):
        return transform(item if item.mode == "RGB" else item.convert("RGB"))
    if isinstance(item, np.ndarray):
        if item.dtype == np.uint8:
            return transform(Image.fromarray(np.ascontiguousarray(item)))
        return transform(torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1).float())
    tensor = item.detach().cpu()
    if tensor.dtype == torch.uint8:
        array = tensor.permute(1, 2, 0).contiguous().numpy()
        return transform(Image.fromarray(array))
    return transform(tensor.float())


class ImageItems(Dataset[tuple[int, Tensor | None, str | None]]):
    """Images as a dataset: item ``i`` is ``(i, input tensor or None, error message or None)``.

    With ``on_bad_image="skip"`` an undecodable file gives ``(i, None, message)`` so that the
    main process can warn (warnings raised in ``DataLoader`` workers would be lost).
    """

    def __init__(
        self, items: Sequence[Any], transform: Callable[[Any], Tensor], on_bad_image: str
    ) -> None:
        self.items = items
        self.transform = transform
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, to_input(self.items[index], self.transform), None
        except BadImageError as err:
            if self.on_bad_image == "raise":
                raise
            return index, None, str(err)


def collate_kept(
    batch: list[tuple[int, Tensor | None, str | None]],
) -> tuple[Tensor, Tensor, list[str]]:
    """``(images (B, 3, H, W), kept indices (B,), skip messages)`` of one batch."""
    kept = [(i, x) for i, x, _ in batch if x is not None]
    messages = [m for _, x, m in batch if x is None and m is not None]
    if kept:
        images = torch.stack([x for _, x in kept])
    else:
        images = torch.empty(0)
    return images, torch.tensor([i for i, _ in kept], dtype=torch.int64), messages


def warn_skipped(messages: Sequence[str]) -> None:
    """One warning per skipped image, naming it."""
    for message in messages:
        warnings.warn(f"{message}; skipped", stacklevel=4)
