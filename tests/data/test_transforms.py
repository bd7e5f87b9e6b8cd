"""Train and test transforms: shapes, dtypes, defaults."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from metareid.data import IMAGENET_MEAN, build_test_transform, build_train_transform


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (50, 110), (255, 128, 0))


def test_train_transform_shape_dtype_and_default_steps(image: Image.Image) -> None:
    transform = build_train_transform((64, 32))
    out = transform(image)
    assert out.shape == (3, 64, 32) and out.dtype == torch.float32
    kinds = [type(t) for t in transform.transforms]
    assert kinds == [
        v2.Resize,
        v2.RandomHorizontalFlip,
        v2.Pad,
        v2.RandomCrop,
        v2.ToImage,
        v2.ToDtype,
        v2.Normalize,
    ]
    resize = transform.transforms[0]
    assert resize.interpolation == v2.InterpolationMode.BICUBIC
    assert transform.transforms[1].p == 0.5 and transform.transforms[2].padding == 10


def test_train_transform_options(image: Image.Image) -> None:
    transform = build_train_transform(
        (32, 16), padding=0, random_erasing_prob=1.0, color_jitter=(0.2, 0.2, 0.2, 0.0)
    )
    kinds = [type(t) for t in transform.transforms]
    assert v2.Pad not in kinds and v2.RandomCrop not in kinds
    assert kinds[-1] is v2.RandomErasing and v2.ColorJitter in kinds
    torch.manual_seed(0)
    out = transform(image)
    assert out.shape == (3, 32, 16)
    assert (out == 0).any()  # something was erased


def test_test_transform_is_deterministic_and_normalised(image: Image.Image) -> None:
    transform = build_test_transform((64, 32))
    a, b = transform(image), transform(image)
    assert torch.equal(a, b) and a.shape == (3, 64, 32)
    expected_red = (1.0 - IMAGENET_MEAN[0]) / 0.229
    assert a[0].mean().item() == pytest.approx(expected_red, abs=1e-3)


def test_transform_accepts_uint8_tensor() -> None:
    img = torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8)
    assert build_train_transform((16, 8), padding=2)(img).shape == (3, 16, 8)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        build_train_transform((64,))
    with pytest.raises(ValueError, match="size"):
        build_test_transform((0, 32))
    with pytest.raises(ValueError, match="flip_prob"):
        build_train_transform(flip_prob=1.5)
    with pytest.raises(ValueError, match="padding"):
        build_train_transform(padding=-1)
