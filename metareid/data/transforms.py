"""Train and test image transforms (torchvision transforms v2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from metareid._validation import check_unit_interval

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_test_transform", "build_train_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for images scaled to [0, 1]."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, for images scaled to [0, 1]."""


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"size must be (height, width) with two ints >= 1, got {size!r}")
    return int(size[0]), int(size[1])


def build_train_transform(
    size: Sequence[int] = (256, 128),
    *,
    flip_prob: float = 0.5,
    padding: int = 10,
    random_erasing_prob: float = 0.0,
    color_jitter: tuple[float, float, float, float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The training augmentation of the published M3L code, with optional extras.

    Steps: bicubic resize to ``size``, horizontal flip with ``flip_prob``, zero padding of
    ``padding`` pixels then a random crop back to ``size``, optional colour jitter, conversion
    to a float tensor in [0, 1], normalisation with ``mean``/``std``, optional random erasing
    (after normalisation, erased pixels set to 0, i.e. the mean colour). The defaults
    reproduce the published code (no colour jitter, no random erasing).

    Args:
        size: output (height, width). Default (256, 128).
        flip_prob: probability of a horizontal flip. Default 0.5.
        padding: pixels of zero padding on each side before the random crop; 0 disables
            both. Default 10.
        random_erasing_prob: probability of random erasing. Default 0.0 (off).
        color_jitter: (brightness, contrast, saturation, hue) of ``ColorJitter``, or None
            (default) for none.
        mean: normalisation mean, RGB. Default ImageNet's.
        std: normalisation standard deviation, RGB. Default ImageNet's.

    Returns:
        A transform from a PIL image (or uint8 tensor of shape (3, H, W)) to a float32
        tensor of shape (3, height, width).

    Example:
        >>> from PIL import Image
        >>> t = build_train_transform((32, 16), random_erasing_prob=0.5)
        >>> img = t(Image.new("RGB", (20, 50)))
        >>> img.shape, img.dtype
        (torch.Size([3, 32, 16]), torch.float32)
    """
    height, width = _check_size(size)
    check_unit_interval("flip_prob", flip_prob)
    check_unit_interval("random_erasing_prob", random_erasing_prob)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    steps: list[v2.Transform] = [_resize(height, width), v2.RandomHorizontalFlip(p=flip_prob)]
    if padding > 0:
        steps += [v2.Pad(padding, fill=0), v2.RandomCrop((height, width))]
    if color_jitter is not None:
        brightness, contrast, saturation, hue = color_jitter
        steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))
    steps += _to_normalized_tensor(mean, std)
    if random_erasing_prob > 0:
        steps.append(v2.RandomErasing(p=random_erasing_prob, value=0))
    return v2.Compose(steps)


def build_test_transform(
    size: Sequence[int] = (256, 128),
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The test transform: bicubic resize, float tensor in [0, 1], normalisation.

    Args:
        size: output (height, width). Default (256, 128).
        mean: normalisation mean, RGB. Default ImageNet's.
        std: normalisation standard deviation, RGB. Default ImageNet's.

    Returns:
        A transform from a PIL image (or uint8 tensor of shape (3, H, W)) to a float32
        tensor of shape (3, height, width).

    Example:
        >>> from PIL import Image
        >>> img = build_test_transform((32, 16))(Image.new("RGB", (20, 50), (255, 255, 255)))
        >>> img.shape, round(float(img[0, 0, 0]), 4)
        (torch.Size([3, 32, 16]), 2.2489)
    """
    height, width = _check_size(size)
    return v2.Compose([_resize(height, width), *_to_normalized_tensor(mean, std)])


# Shared by the train and test pipelines, so that both resize and normalise identically.
def _resize(height: int, width: int) -> v2.Transform:
    return v2.Resize((height, width), interpolation=InterpolationMode.BICUBIC, antialias=True)


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
