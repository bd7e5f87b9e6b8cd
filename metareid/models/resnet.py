"""ResNet and IBN-Net-a trunks for person re-identification, on torchvision's ResNet.

:class:`ResNetBackbone` is a :class:`torchvision.models.ResNet` without its pooling and
classification layers: it maps images (B, 3, H, W) to the last feature map (B, C, h, w).
Its ``state_dict`` keys are torchvision's (``fc.*`` aside), so torchvision's ImageNet
checkpoints load as they are. The builders :func:`resnet18`, :func:`resnet34`,
:func:`resnet50` and :func:`ibn_resnet50a` set it up and load pretrained weights.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from metareid._validation import check_choice
from metareid.models import _weights

__all__ = [
    "IBN",
    "IBN_INITS",
    "ResNetBackbone",
    "ibn_resnet50a",
    "resnet18",
    "resnet34",
    "resnet50",
]

#: Accepted values of ``ibn_init`` in :func:`ibn_resnet50a`.
IBN_INITS = ("ibn_net", "torchvision", "torchvision_split")

Pretrained = bool | str | os.PathLike[str]


class IBN(nn.Module):
    """Instance-batch normalisation of IBN-Net-a: IN on the first half of the channels.

    The first ``num_features // 2`` channels go through an affine ``InstanceNorm2d``
    (:attr:`IN`), the remaining ones through a ``BatchNorm2d`` (:attr:`BN`); the results are
    concatenated back in channel order. The attribute names match the IBN-Net release, so
    its checkpoints load without renaming.

    Args:
        num_features: C, the number of channels, at least 2.

    Attributes:
        instance_channels: the number of instance-normalised channels, ``num_features // 2``.
        IN: ``InstanceNorm2d(instance_channels, affine=True)`` (no running statistics).
        BN: ``BatchNorm2d(num_features - instance_channels)``.

    Example:
        >>> import torch
        >>> from metareid.models import IBN
        >>> ibn = IBN(64)
        >>> ibn.IN.num_features, ibn.BN.num_features
        (32, 32)
        >>> ibn(torch.randn(2, 64, 8, 4)).shape
        torch.Size([2, 64, 8, 4])
    """

    def __init__(self, num_features: int) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int >= 2, got {num_features!r}")
        if num_features < 2:
            raise ValueError(f"num_features must be an int >= 2, got {num_features}")
        super().__init__()
        self.num_features = num_features
        self.instance_channels = num_features // 2
        self.IN = nn.InstanceNorm2d(self.instance_channels, affine=True)
        self.BN = nn.BatchNorm2d(num_features - self.instance_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape (B, C, H, W); returns the same shape."""
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"IBN expects input of shape (B, {self.num_features}, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        first, rest = torch.split(
            x, [self.instance_channels, self.num_features - self.instance_channels], dim=1
        )
        return torch.cat([self.IN(first.contiguous()), self.BN(rest.contiguous())], dim=1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, instance_norm_channels={self.instance_channels}"


class ResNetBackbone(tv_resnet.ResNet):
    """torchvision ResNet trunk that returns the last feature map, with ReID options.

    Built by :class:`torchvision.models.ResNet` (same submodules and ``state_dict`` keys;
    ``avgpool`` and ``fc`` are removed), then changed as follows:

    * ``last_stride``: stride of the first block of ``layer4`` (its strided 3x3 conv and its
      downsample conv). 1, the ReID convention and the published M3L code, keeps the
      resolution of ``layer3`` and doubles the height and width of the output map compared
      with 2, the ImageNet ResNet.
    * ``stem_relu``: with ``False``, no ReLU follows the stem BN (``conv1`` -> ``bn1`` ->
      ``maxpool``), as in the published M3L code; ``True`` (default) is the standard ResNet.
    * ``ibn_a``: IBN-Net-a layout: the first norm (``bn1``) of every block of ``layer1`` to
      ``layer3`` becomes an :class:`IBN` (instance norm on half of its channels);
      ``layer4`` and the stem stay plain BN.
    * ``checkpoint_activations``: in train mode with gradients enabled, each residual stage
      (``layer1`` to ``layer4``) runs under non-reentrant activation checkpointing
      (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``): its intermediate
      activations are not kept but recomputed when the backward needs them, with the
      forward's weights and random state. Gradients, double backward (second-order meta
      steps) included, are those without it. BatchNorm running statistics move once per
      forward: a recomputation runs on copies of the stage's buffers. Eval mode and
      ``torch.no_grad`` are unaffected; the ``state_dict`` is the same. It can also be set
      on a built backbone. See docs/models.md, "Activation checkpointing".

    Args:
        block: ``torchvision.models.resnet.BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in ``layer1`` to ``layer4``, e.g. ``(3, 4, 6, 3)``.
        last_stride: 1 (default) or 2.
        stem_relu: apply ReLU after the stem BN. Default ``True``.
        ibn_a: use the IBN-Net-a layout. Default ``False``.
        checkpoint_activations: recompute the stages' activations in the backward.
            Default ``False``.

    Attributes:
        out_channels: C of the output map, ``512 * block.expansion``.
        last_stride: see above.
        stem_relu: see above.
        ibn_a: see above.
        checkpoint_activations: see above.

    Example:
        >>> import torch
        >>> from torchvision.models.resnet import BasicBlock
        >>> from metareid.models import ResNetBackbone
        >>> net = ResNetBackbone(BasicBlock, (1, 1, 1, 1), last_stride=1)
        >>> net(torch.randn(2, 3, 64, 32)).shape  # stride 16 instead of 32
        torch.Size([2, 512, 4, 2])
    """

    out_channels: int
    last_stride: int
    stem_relu: bool
    ibn_a: bool
    checkpoint_activations: bool

    def __init__(
        self,
        block: type[tv_resnet.BasicBlock] | type[tv_resnet.Bottleneck],
        layers: Sequence[int],
        *,
        last_stride: int = 1,
        stem_relu: bool = True,
        ibn_a: bool = False,
        checkpoint_activations: bool = False,
    ) -> None:
        if not (
            isinstance(block, type)
            and issubclass(block, (tv_resnet.BasicBlock, tv_resnet.Bottleneck))
        ):
            raise TypeError(
                "block must be torchvision.models.resnet.BasicBlock or Bottleneck (or a "
                f"subclass), got {block!r}"
            )
        if (
            isinstance(layers, str)
            or not isinstance(layers, Sequence)
            or len(layers) != 4
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers)
        ):
            raise ValueError(f"layers must be a sequence of 4 ints >= 1, got {layers!r}")
        _check_last_stride(last_stride)
        _check_bool("stem_relu", stem_relu)
        _check_bool("ibn_a", ibn_a)
        _check_bool("checkpoint_activations", checkpoint_activations)
        super().__init__(block, list(layers), num_classes=1)
        del self.avgpool, self.fc
        self.out_channels = 512 * block.expansion
        self.last_stride = last_stride
        self.stem_relu = stem_relu
        self.ibn_a = ibn_a
        self.checkpoint_activations = checkpoint_activations
        if last_stride != 2:
            _set_last_stride(self.layer4[0], last_stride)
        if ibn_a:
            for stage in (self.layer1, self.layer2, self.layer3):
                for blk in stage:
                    blk.bn1 = IBN(blk.bn1.num_features)

    def forward(self, x: Tensor) -> Tensor:
        """Map images (B, 3, H, W) to the last feature map (B, C, h, w).

        ``h, w`` are about ``H / 16, W / 16`` with ``last_stride=1`` and ``H / 32, W / 32``
        with 2.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape (B, 3, H, W), got shape {tuple(x.shape)}")
        x = self.bn1(self.conv1(x))
        if self.stem_relu:
            x = self.relu(x)
        x = self.maxpool(x)
        checkpointed = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = _checkpointed_call(stage, x) if checkpointed else stage(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"out_channels={self.out_channels}, last_stride={self.last_stride}, "
            f"stem_relu={self.stem_relu}, ibn_a={self.ibn_a}"
            + (", checkpoint_activations=True" if self.checkpoint_activations else "")
        )


def resnet10(
    pretrained: Pretrained = False,
    last_stride: int = 1,
    *,
    stem_relu: bool = True,
    load_running_stats: bool = True,
    checkpoint_activations: bool = False,
) -> ResNetBackbone:
    """ResNet-10 trunk (one BasicBlock per stage, 512 output channels), for CPU demos.

    About half the compute of ResNet-18; what the synthetic-benchmark example trains on
    two CPU cores. torchvision has no ImageNet weights for it: ``pretrained`` may be
    ``False`` or a local/URL checkpoint (``True`` raises ``ValueError``). The other
    arguments are those of :func:`resnet18`.

    Returns:
        The trunk, mapping (B, 3, H, W) to (B, 512, h, w).

    Example:
        >>> from metareid.models import resnet10
        >>> net = resnet10()
        >>> [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
        [1, 1, 1, 1]
    """
    if pretrained is True:
        raise ValueError(
            "pretrained=True: there are no ImageNet weights for resnet10; pass False or the "
            "path of a checkpoint"
        )
    return _build(
        "resnet10",
        tv_resnet.BasicBlock,
        (1, 1, 1, 1),
        pretrained,
        last_stride,
        stem_relu=stem_relu,
        load_running_stats=load_running_stats,
        checkpoint_activations=checkpoint_activations,
    )


def resnet18(
    pretrained: Pretrained = False,
    last_stride: int = 1,
    *,
    stem_relu: bool = True,
    load_running_stats: bool = True,
    checkpoint_activations: bool = False,
) -> ResNetBackbone:
    """ResNet-18 trunk (512 output channels), for CPU-sized runs.

    Args:
        pretrained: ``False`` (default): random initialisation. ``True``: torchvision's
            ``ResNet18_Weights.IMAGENET1K_V1``, read from the torch hub cache or downloaded
            with a timeout. A URL string: downloaded the same way. Any other string or
            path (``~`` expanded): a local checkpoint, read with
            ``torch.load(..., weights_only=True)``. Keys must match exactly, ``fc.*``
            aside; see ``docs/models.md``.
        last_stride: stride of ``layer4``, 1 (default) or 2.
        stem_relu: ReLU after the stem BN. Default ``True``; the published M3L code has none.
        load_running_stats: also load the BN running statistics. Default ``True``; the
            published M3L code copies parameters only (running stats stay 0 and 1).
        checkpoint_activations: recompute the activations of ``layer1`` to ``layer4`` in
            the backward instead of keeping them (train mode), see :class:`ResNetBackbone`.
            Default ``False``.

    Returns:
        The trunk, mapping (B, 3, H, W) to (B, 512, h, w).

    Raises:
        RuntimeError: if ``pretrained=True`` or a URL and the file is neither cached nor
            downloadable; the message says where to put a manually downloaded file.

    Example:
        >>> from metareid.models import resnet18
        >>> resnet18(last_stride=1).out_channels
        512
    """
    return _build(
        "resnet18",
        tv_resnet.BasicBlock,
        (2, 2, 2, 2),
        pretrained,
        last_stride,
        stem_relu=stem_relu,
        load_running_stats=load_running_stats,
        checkpoint_activations=checkpoint_activations,
    )


def resnet34(
    pretrained: Pretrained = False,
    last_stride: int = 1,
    *,
    stem_relu: bool = True,
    load_running_stats: bool = True,
    checkpoint_activations: bool = False,
) -> ResNetBackbone:
    """ResNet-34 trunk (512 output channels).

    Arguments as :func:`resnet18`; ``pretrained=True`` loads
    ``ResNet34_Weights.IMAGENET1K_V1``.

    Returns:
        The trunk, mapping (B, 3, H, W) to (B, 512, h, w).

    Example:
        >>> from metareid.models import resnet34
        >>> net = resnet34()
        >>> [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]
        [3, 4, 6, 3]
    """
    return _build(
        "resnet34",
        tv_resnet.BasicBlock,
        (3, 4, 6, 3),
        pretrained,
        last_stride,
        stem_relu=stem_relu,
        load_running_stats=load_running_stats,
        checkpoint_activations=checkpoint_activations,
    )


def resnet50(
    pretrained: Pretrained = False,
    last_stride: int = 1,
    *,
    stem_relu: bool = True,
    load_running_stats: bool = True,
    checkpoint_activations: bool = False,
) -> ResNetBackbone:
    """ResNet-50 trunk (2048 output channels), the paper's first backbone.

    Arguments as :func:`resnet18`; ``pretrained=True`` loads
    ``ResNet50_Weights.IMAGENET1K_V1`` (the weights of the published code, not torchvision's
    newer ``IMAGENET1K_V2`` default; pass a file or URL for other weights). The published
    code corresponds to ``resnet50(True, 1, stem_relu=False, load_running_stats=False)``.

    Returns:
        The trunk, mapping (B, 3, H, W) to (B, 2048, h, w).

    Example:
        >>> from metareid.models import resnet50
        >>> resnet50().out_channels
        2048
    """
    return _build(
        "resnet50",
        tv_resnet.Bottleneck,
        (3, 4, 6, 3),
        pretrained,
        last_stride,
        stem_relu=stem_relu,
        load_running_stats=load_running_stats,
        checkpoint_activations=checkpoint_activations,
    )


def ibn_resnet50a(
    pretrained: Pretrained = False,
    last_stride: int = 1,
    *,
    stem_relu: bool = True,
    load_running_stats: bool = True,
    ibn_init: str = "ibn_net",
    checkpoint_activations: bool = False,
) -> ResNetBackbone:
    """IBN-Net50-a trunk (2048 output channels), the paper's second backbone.

    ResNet-50 whose blocks in ``layer1`` to ``layer3`` normalise half of the channels of
    their first norm with instance norm (:class:`IBN`).

    Args:
        pretrained: as in :func:`resnet18`; what ``True`` loads depends on ``ibn_init``.
        last_stride: stride of ``layer4``, 1 (default) or 2.
        stem_relu: ReLU after the stem BN. Default ``True``; the published M3L code has none.
        load_running_stats: also load BN running statistics. Default ``True``; the published
            code copies parameters only.
        checkpoint_activations: recompute the stages' activations in the backward, see
            :class:`ResNetBackbone`. Default ``False``.
        ibn_init: which checkpoint ``pretrained`` holds.

            * ``"ibn_net"`` (default): an IBN-Net50-a checkpoint (keys ``...bn1.IN.*`` and
              ``...bn1.BN.*``); ``True`` loads the ImageNet weights of the IBN-Net
              release (:data:`metareid.models._weights.IBN_RESNET50A_URL`).
            * ``"torchvision"``: a plain ResNet-50 checkpoint (``True``: torchvision's
              ``IMAGENET1K_V1``) loaded into everything but the IBN layers, which keep
              their initialisation (weight 1, bias 0, running stats 0 and 1). This is what
              the published M3L code does.
            * ``"torchvision_split"``: as ``"torchvision"``, but each plain ``bn1`` is split: its
              first half of weight and bias go to ``IN``, its second half of weight, bias and
              running statistics to ``BN``.

    Returns:
        The trunk, mapping (B, 3, H, W) to (B, 2048, h, w).

    Example:
        >>> from metareid.models import ibn_resnet50a
        >>> net = ibn_resnet50a()
        >>> type(net.layer1[0].bn1).__name__, type(net.layer4[0].bn1).__name__
        ('IBN', 'BatchNorm2d')
    """
    check_choice("ibn_init", ibn_init, IBN_INITS)
    return _build(
        "ibn_resnet50a",
        tv_resnet.Bottleneck,
        (3, 4, 6, 3),
        pretrained,
        last_stride,
        stem_relu=stem_relu,
        load_running_stats=load_running_stats,
        ibn_init=ibn_init,
        checkpoint_activations=checkpoint_activations,
    )


# ---------------------------------------------------------------------------- internals
def _build(
    arch: str,
    block: type[tv_resnet.BasicBlock] | type[tv_resnet.Bottleneck],
    layers: Sequence[int],
    pretrained: Pretrained,
    last_stride: int,
    *,
    stem_relu: bool,
    load_running_stats: bool,
    ibn_init: str | None = None,
    checkpoint_activations: bool = False,
) -> ResNetBackbone:
    _weights.check_pretrained(pretrained)
    _check_bool("load_running_stats", load_running_stats)
    net = ResNetBackbone(
        block,
        layers,
        last_stride=last_stride,
        stem_relu=stem_relu,
        ibn_a=ibn_init is not None,
        checkpoint_activations=checkpoint_activations,
    )
    if pretrained is False:
        return net
    if ibn_init == "ibn_net":
        url, plain = _weights.IBN_RESNET50A_URL, False
        what = f"the ImageNet weights of {arch} (IBN-Net release)"
    else:
        base = "resnet50" if ibn_init is not None else arch
        # Only pretrained=True downloads; a path or URL of the caller's needs no known weights.
        url = _weights.imagenet_url(base) if pretrained is True else ""
        plain = ibn_init is not None
        what = f"the ImageNet weights of {base} (torchvision)"
    state, source = _weights.fetch_state_dict(pretrained, url, what=what)
    if plain:
        state = _weights.resnet_to_ibn(state, net, split=ibn_init == "torchvision_split")
    _weights.load_weights(net, state, source=source, load_running_stats=load_running_stats)
    return net


def _checkpointed_call(stage: nn.Module, x: Tensor) -> Tensor:
    """``stage(x)`` under non-reentrant activation checkpointing, BN statistics moved once.

    The first call of ``run`` is the forward itself, on the stage as it is: BatchNorm
    running statistics move exactly as without checkpointing. Every later call is a
    recomputation (one per backward that needs the stage's saved tensors; a double backward
    recomputes again). It runs with the forward's parameters swapped in (under
    ``torch.func.functional_call`` the module holds other weights by then) and on fresh
    copies of the buffers as they were before the forward, so that running statistics do
    not move again and a BatchNorm in eval mode sees what the forward saw. ``checkpoint``
    replays the forward's random state (``preserve_rng_state=True``). A recomputed tensor is
    attached to the autograd node of the one it replaces, so a double backward
    differentiates the original graph.

    A ``higher``-patched stage reads its weights from its root's fast weights whatever is
    swapped in, and needs that root alive: the closure holds it. A recomputation after the
    fast weights changed (a newer ``fmodel(x, params=...)`` or ``diffopt.step``) raises
    ``RuntimeError`` instead of computing with other weights than the forward.
    """
    root = _higher_root(stage)
    fast = None if root is None else list(root.fast_params or ())
    params: dict[str, Tensor] = {}
    if root is None:
        params = dict(stage.named_parameters(remove_duplicate=False))
    buffers = {n: b.detach().clone() for n, b in stage.named_buffers(remove_duplicate=False)}
    calls = 0

    def run(inp: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            first: Tensor = stage(inp)
            return first
        if root is not None and fast is not None:
            now = list(root.fast_params or ())
            if len(now) != len(fast) or any(a is not b for a, b in zip(now, fast, strict=False)):
                raise RuntimeError(
                    "checkpoint_activations: the fast weights of the higher-patched model "
                    "changed between the forward and the backward that recomputes it, so the "
                    "recomputation would use other weights than the forward; call the "
                    "backward before updating the fast weights, or build the model with "
                    "checkpoint_activations=False"
                )
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}
        out: Tensor = torch.func.functional_call(stage, state, (inp,), strict=False)
        return out

    result: Tensor = torch.utils.checkpoint.checkpoint(
        run, x, use_reentrant=False, preserve_rng_state=True
    )
    return result


def _higher_root(module: nn.Module) -> Any:
    """The patched root whose fast weights a ``higher``-patched ``module`` reads, or ``None``."""
    patch = sys.modules.get("higher.patch")  # not imported: nothing can be patched
    if patch is None or not isinstance(module, patch._MonkeyPatchBase):
        return None
    return module.root


def _set_last_stride(block: tv_resnet.BasicBlock | tv_resnet.Bottleneck, stride: int) -> None:
    """Give the first block of ``layer4`` the stride ``stride`` (was 2)."""
    strided = block.conv2 if isinstance(block, tv_resnet.Bottleneck) else block.conv1
    strided.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)
    block.stride = stride


def _check_last_stride(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"last_stride must be the int 1 or 2, got {value!r}")
    if value not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {value}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
