"""``build_model``: a backbone by name, wrapped in a :class:`ReIDModel`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from metareid.models._neck_args import check_neck_args
from metareid.models.external import build_external_backbone, input_config, is_external_arch
from metareid.models.neck import ReIDModel
from metareid.models.resnet import (
    ResNetBackbone,
    ibn_resnet50a,
    resnet10,
    resnet18,
    resnet34,
    resnet50,
)

__all__ = ["build_model", "list_models", "model_from_config"]

_BACKBONES: dict[str, Callable[..., ResNetBackbone]] = {
    "resnet10": resnet10,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "ibn_resnet50a": ibn_resnet50a,
}


def list_models() -> list[str]:
    """The built-in backbones of :func:`build_model`.

    :func:`build_model` also takes any torchvision classification model as
    ``"tv:<name>"`` and any timm model as ``"timm:<name>"``
    (:mod:`metareid.models.external`).

    Example:
        >>> from metareid.models import list_models
        >>> list_models()
        ['ibn_resnet50a', 'resnet10', 'resnet18', 'resnet34', 'resnet50']
    """
    return sorted(_BACKBONES)


def build_model(
    arch: str,
    pretrained: bool | str | os.PathLike[str] = False,
    last_stride: int = 1,
    *,
    stem_relu: bool = True,
    load_running_stats: bool = True,
    ibn_init: str = "ibn_net",
    num_classes: int | Sequence[int] | None = None,
    normalize_neck: bool = True,
    freeze_neck_bias: bool = True,
    sample_scale: str = "std",
    share_lambda: bool = True,
    checkpoint_activations: bool = False,
    input_size: Sequence[int] | None = None,
) -> ReIDModel:
    """Build ``backbone -> global average pooling -> MetaBN BNNeck`` by backbone name.

    The defaults are the standard ResNet with the ReID conventions (last stride 1, BNNeck
    with frozen bias, L2-normalised neck output). The published M3L code corresponds to
    ``build_model(arch, True, 1, stem_relu=False, load_running_stats=False,
    freeze_neck_bias=False, sample_scale="var")``, with ``ibn_init="torchvision"`` for
    ``"ibn_resnet50a"``.

    Args:
        arch: ``"resnet10"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or
            ``"ibn_resnet50a"`` (the built-in backbones), or any torchvision
            classification model as ``"tv:<name>"`` (``"tv:convnext_tiny"``) and any timm
            model as ``"timm:<name>"`` (``"timm:vit_small_patch16_224"``,
            ``"timm:resnet50.a1_in1k"``): its classifier head removed, its own global
            pooling kept, see :func:`~metareid.models.build_external_backbone`.
        pretrained: ``False`` (default), ``True`` (ImageNet weights: torchvision's
            ``IMAGENET1K_V1`` for the ResNets, the IBN-Net release for IBN-Net50-a, the
            library's ``DEFAULT`` weights for ``"tv:"``, timm's hub for ``"timm:"``), a URL
            or a local checkpoint path. See :func:`metareid.models.resnet18`.
        last_stride: 1 (default) or 2: the stride of ``layer4``; for ``"tv:"``/``"timm:"``
            models the last stride-2 stage where the architecture has one
            (:func:`~metareid.models.set_last_stride_one`, which says when it has none).
        stem_relu: ReLU after the stem BN. Default ``True``; the published code has none.
            Built-in ResNets only.
        load_running_stats: load BN running statistics from ``pretrained``. Default
            ``True``; the published code does not. Built-in ResNets only.
        ibn_init: for ``"ibn_resnet50a"`` only: ``"ibn_net"`` (default), ``"torchvision"`` or
            ``"torchvision_split"``, see :func:`metareid.models.ibn_resnet50a`.
        num_classes: FC classifiers, see :class:`ReIDModel`. Default ``None``.
        normalize_neck: L2-normalise the neck output. Default ``True``.
        freeze_neck_bias: freeze the BNNeck bias. Default ``True``.
        sample_scale: MetaBN ``sample_scale``, ``"std"`` (default) or ``"var"``.
        share_lambda: MetaBN ``share_lambda``. Default ``True``.
        checkpoint_activations: recompute the activations of the backbone's residual stages
            in the backward instead of keeping them (train mode only): less memory, the
            same gradients (second order included), about one more forward of the
            backbone per backward. See :class:`~metareid.models.ResNetBackbone`; timm
            models use their ``set_grad_checkpointing``, torchvision models have none.
            Default ``False``.
        input_size: (height, width) of the images, for ``"tv:"``/``"timm:"`` models: the
            vision transformers are built for it and the last stride is found at it.
            Default ``None``: the architecture's (:func:`~metareid.models.input_config`).
            The built-in ResNets take any size and ignore it.

    Returns:
        The model; ``feat_dim`` is 512 for ResNet-18/34, 2048 for the other built-in
        ResNets, the pooled feature width of a ``"tv:"``/``"timm:"`` model.

    Raises:
        TypeError: if ``arch`` is not a string.
        ValueError: for an unknown ``arch`` (the message lists the known ones), an
            ``ibn_init`` other than ``"ibn_net"`` with a non-IBN ``arch``, or a ResNet-only
            option (``stem_relu=False``, ``load_running_stats=False``) with a
            ``"tv:"``/``"timm:"`` model.
        ImportError: for ``"timm:..."`` without timm (``pip install "metareid[timm]"``).

    Example:
        >>> import torch
        >>> from metareid.models import build_model
        >>> model = build_model("resnet18", pretrained=False, last_stride=1)
        >>> out = model(torch.randn(2, 3, 64, 32))
        >>> out.pooled.shape, out.features.shape
        (torch.Size([2, 512]), torch.Size([2, 512]))
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string, one of {list_models()}, got {arch!r}")
    check_neck_args(num_classes, normalize_neck, freeze_neck_bias, sample_scale, share_lambda)
    backbone: nn.Module
    if is_external_arch(arch):
        resnet_only = {
            "stem_relu": (stem_relu, True),
            "load_running_stats": (load_running_stats, True),
            "ibn_init": (ibn_init, "ibn_net"),
        }
        for option, (value, default) in resnet_only.items():
            if value != default:
                raise ValueError(
                    f"{option}={value!r} applies to the built-in ResNets only, not to arch "
                    f"{arch!r}; leave it at {default!r}"
                )
        backbone = build_external_backbone(
            arch,
            pretrained,
            last_stride,
            input_size=input_size,
            checkpoint_activations=checkpoint_activations,
        )
    else:
        if arch not in _BACKBONES:
            raise ValueError(
                f"unknown arch {arch!r}; known architectures: {list_models()}, 'tv:<name>' (a "
                "torchvision classification model) or 'timm:<name>' (a timm model)"
            )
        kwargs: dict[str, object] = {
            "stem_relu": stem_relu,
            "load_running_stats": load_running_stats,
            "checkpoint_activations": checkpoint_activations,
        }
        if arch == "ibn_resnet50a":
            kwargs["ibn_init"] = ibn_init
        elif ibn_init != "ibn_net":
            raise ValueError(
                f"ibn_init={ibn_init!r} only applies to arch 'ibn_resnet50a', got arch={arch!r}"
            )
        backbone = _BACKBONES[arch](pretrained, last_stride, **kwargs)
    return ReIDModel(
        backbone,
        feat_dim=int(backbone.out_channels),
        num_classes=num_classes,
        normalize_neck=normalize_neck,
        freeze_neck_bias=freeze_neck_bias,
        sample_scale=sample_scale,
        share_lambda=share_lambda,
    )


def model_from_config(
    config: Any,
    num_classes: int | Sequence[int] | None = None,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
) -> ReIDModel:
    """The network a training config describes: the one definition for training and use.

    Reads ``arch``, ``last_stride``, ``stem_relu``, ``load_running_stats``,
    ``freeze_neck_bias``, ``ibn_init``, ``sample_scale``, ``share_lambda``,
    ``checkpoint_activations``, ``height``, ``width`` and ``method``
    from a :class:`~metareid.config.TrainConfig` or a stored config dict (a checkpoint's
    ``config``: missing keys take the defaults, earlier keys are renamed, unknown keys
    ignored; see :func:`metareid.config.config_value`). For ``method="m3l"`` the neck is a
    :class:`~metareid.MetaBN`, otherwise a plain ``BatchNorm1d``
    (:meth:`~metareid.MetaBN.to_batchnorm`, the Table 3 ablations). The ResNet-only
    switches (``stem_relu``, ``load_running_stats``, ``ibn_init``) are not read for a
    ``"tv:"``/``"timm:"`` architecture; ``height``/``width`` (``None``: the
    architecture's, :func:`~metareid.models.input_config`) size its vision transformers.

    Args:
        config: the run's config.
        num_classes: classifier heads, as in :func:`build_model`. Default ``None``.
        pretrained: weights to load, as in :func:`build_model`. Default ``False`` (fresh
            weights; a checkpoint's weights are loaded afterwards).

    Returns:
        The model in train mode, on the CPU.

    Raises:
        ValueError: for an unknown ``method`` or ``arch``.

    Example:
        >>> model = model_from_config({"arch": "resnet10", "method": "baseline",
        ...                            "stem_relu": False})
        >>> type(model.neck).__name__, model.backbone.stem_relu
        ('BatchNorm1d', False)
    """
    from metareid.config import METHODS, config_value

    def get(key: str) -> Any:
        return config_value(config, key)

    method, arch = get("method"), get("arch")
    if method not in METHODS:
        raise ValueError(f"config method must be one of {list(METHODS)}, got {method!r}")
    if is_external_arch(arch):
        declared = input_config(arch)
        height, width = get("height"), get("width")
        model = build_model(
            arch,
            pretrained=pretrained,
            last_stride=get("last_stride"),
            freeze_neck_bias=get("freeze_neck_bias"),
            num_classes=num_classes,
            sample_scale=get("sample_scale"),
            share_lambda=get("share_lambda"),
            checkpoint_activations=get("checkpoint_activations"),
            input_size=(height or declared.height, width or declared.width),
        )
    else:
        model = build_model(
            arch,
            pretrained=pretrained,
            last_stride=get("last_stride"),
            stem_relu=get("stem_relu"),
            load_running_stats=get("load_running_stats"),
            freeze_neck_bias=get("freeze_neck_bias"),
            ibn_init=get("ibn_init") if arch == "ibn_resnet50a" else "ibn_net",
            num_classes=num_classes,
            sample_scale=get("sample_scale"),
            share_lambda=get("share_lambda"),
            checkpoint_activations=get("checkpoint_activations"),
        )
    if method != "m3l":  # Table 3 ablations: no MetaBN
        model.neck = model.neck.to_batchnorm()  # type: ignore[assignment]
    return model
