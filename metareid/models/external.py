"""Backbones from torchvision and timm by name: ``"tv:<name>"`` and ``"timm:<name>"``.

:func:`build_external_backbone` turns a classification model of either library into a
ReID trunk (:class:`ExternalBackbone`): the classifier head is removed, so the trunk
returns the model's own globally pooled feature (B, C) (average pooling for the CNNs,
ConvNeXt's pooling and norm, the class token or the average of the tokens for the vision
transformers, as the model defines it); :class:`~metareid.models.ReIDModel` puts the
MetaBN BNNeck behind it. What the ReID conventions change, and where they cannot apply:

* **Last stride 1** (:func:`set_last_stride_one`): the stride-2 convolutions (and pooling)
  that make the last, smallest feature map are set to stride 1 when that keeps the
  operation the same apart from its stride (padded ``k x k`` or ``1 x 1`` kernels; a
  ``2 x 2`` average-pool shortcut becomes the identity, as timm builds it at stride 1).
  Architectures whose last downsampling is a patch merge (ConvNeXt's ``2 x 2`` stride-2
  convolution, Swin's patch merging) or that have no stage below the patch embedding
  (ViT) keep their strides, and :attr:`ExternalBackbone.notes` says why.
* **Input** (:func:`input_config`): timm models declare their input size, mean and standard
  deviation (``pretrained_cfg``); torchvision's weights declare mean and standard deviation
  and, for the ViTs, the square image size the model is built for. The built-in ResNets and
  the torchvision CNNs take the ReID convention, 256 x 128.
* **Weights**: ``pretrained=True`` takes each library's usual source (torchvision's
  download URL of the ``DEFAULT`` weights through the torch hub cache; the Hugging Face hub
  for timm); a path loads a state dict of the classification model (classifier keys are
  ignored, every other key must match; timm's own checkpoint filter adapts e.g. position
  embeddings to the input size).

timm is an optional dependency (``pip install "metareid[timm]"``).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from metareid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from metareid.models._weights import check_pretrained, fetch_state_dict, load_weights

__all__ = [
    "REID_INPUT",
    "ExternalBackbone",
    "InputConfig",
    "build_external_backbone",
    "input_config",
    "is_external_arch",
    "set_last_stride_one",
]

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"
_PREFIXES = (TV_PREFIX, TIMM_PREFIX)


class InputConfig(NamedTuple):
    """What a backbone expects of its input images.

    Attributes:
        height: image height in pixels.
        width: image width in pixels.
        mean: per-channel (RGB) mean of the normalisation, for images scaled to [0, 1].
        std: per-channel (RGB) standard deviation of the normalisation.
    """

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: The ReID convention (and the published M3L code): 256 x 128, ImageNet statistics.
REID_INPUT = InputConfig(
    256,
    128,
    (IMAGENET_MEAN[0], IMAGENET_MEAN[1], IMAGENET_MEAN[2]),
    (IMAGENET_STD[0], IMAGENET_STD[1], IMAGENET_STD[2]),
)


def is_external_arch(arch: object) -> bool:
    """Whether ``arch`` names a torchvision (``"tv:..."``) or timm (``"timm:..."``) model.

    Example:
        >>> is_external_arch("timm:convnext_atto"), is_external_arch("resnet50")
        (True, False)
    """
    return isinstance(arch, str) and arch.startswith(_PREFIXES)


def _split(arch: str) -> tuple[str, str]:
    """``("tv" | "timm", model name)`` of an external ``arch``; ValueError when malformed."""
    library, _, name = arch.partition(":")
    if library not in ("tv", "timm") or not name.strip() or name != name.strip():
        raise ValueError(
            f"arch {arch!r} is not a valid external architecture: expected 'tv:<name>' (a "
            "torchvision classification model) or 'timm:<name>' (a timm model)"
        )
    return library, name


def _require_timm(arch: str) -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        raise ImportError(
            f"arch {arch!r} needs the optional package timm, which is not installed: "
            'pip install "metareid[timm]"'
        ) from err


def _tv_names() -> list[str]:
    from torchvision import models as tv_models

    return list(tv_models.list_models(module=tv_models))


def _check_known(arch: str) -> tuple[str, str]:
    """Split ``arch`` and check that its library knows the model name."""
    library, name = _split(arch)
    if library == "tv":
        known = _tv_names()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5)
            hint = f"; close names: {close}" if close else ""
            raise ValueError(
                f"unknown torchvision classification model {name!r} in arch {arch!r}{hint} "
                "(torchvision.models.list_models(module=torchvision.models) lists them)"
            )
    else:
        timm = _require_timm(arch)
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5)
            hint = f"; close names: {close}" if close else ""
            raise ValueError(
                f"unknown timm model {name!r} in arch {arch!r}{hint} (timm.list_models() "
                "lists them; a pretrained tag such as 'resnet50.a1_in1k' is allowed)"
            )
    return library, name


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    v = [float(x) for x in values]
    if len(v) == 1:
        v = v * 3
    return (v[0], v[1], v[2])


def input_config(arch: str) -> InputConfig:
    """The input that ``arch`` declares: size, normalisation mean and standard deviation.

    * built-in ResNets (``"resnet50"``, ...): :data:`REID_INPUT` (256 x 128, ImageNet).
    * ``"timm:<name>"``: ``input_size``, ``mean`` and ``std`` of the model's
      ``pretrained_cfg`` (for ``"resnet50.a1_in1k"``, 224 x 224 and ImageNet's).
    * ``"tv:<name>"``: mean and std of the ``DEFAULT`` weights' transform; the size is the
      square ``image_size`` the model is built for where it has one (the ViTs, 224 x 224),
      otherwise 256 x 128.

    Args:
        arch: an architecture name as :func:`~metareid.models.build_model` takes it.

    Returns:
        The declared :class:`InputConfig`. Training overrides any part of it with the
        config's ``height``, ``width``, ``mean`` and ``std``.

    Raises:
        ValueError: for an unknown external model name.
        ImportError: for ``"timm:..."`` without timm installed.

    Example:
        >>> input_config("resnet50").height, input_config("resnet50").width
        (256, 128)
        >>> input_config("tv:vit_b_16")[:2]
        (224, 224)
    """
    if not is_external_arch(arch):
        return REID_INPUT
    library, name = _check_known(arch)
    if library == "timm":
        timm = _require_timm(arch)
        cfg = timm.get_pretrained_cfg(name)
        if cfg is None:  # a model without any pretrained weights declared
            return InputConfig(224, 224, REID_INPUT.mean, REID_INPUT.std)
        _, height, width = cfg.input_size
        return InputConfig(int(height), int(width), _triple(cfg.mean), _triple(cfg.std))
    from torchvision import models as tv_models

    mean, std = REID_INPUT.mean, REID_INPUT.std
    try:
        weights = tv_models.get_model_weights(name)
    except (ValueError, KeyError):  # pragma: no cover - every listed model has weights
        weights = None
    if weights is not None:
        transform = weights.DEFAULT.transforms()
        mean = _triple(getattr(transform, "mean", mean))
        std = _triple(getattr(transform, "std", std))
    if name.startswith("vit_"):
        side = 224  # torchvision's ViTs take square images of their image_size
        return InputConfig(side, side, mean, std)
    return InputConfig(REID_INPUT.height, REID_INPUT.width, mean, std)


class ExternalBackbone(nn.Module):
    """A torchvision or timm classification model without its classifier head.

    ``forward`` returns the model's pooled feature (B, C). Built by
    :func:`build_external_backbone`.

    Args:
        body: the headless model.
        arch: its name, ``"tv:<name>"`` or ``"timm:<name>"``.
        out_channels: C.
        notes: what the ReID conventions did to the model or why they could not apply.

    Example:
        >>> trunk = ExternalBackbone(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), "tv:x", 4)
        >>> trunk(torch.zeros(2, 3, 2, 2)).shape
        torch.Size([2, 4])
    """

    body: nn.Module
    arch: str
    out_channels: int
    notes: tuple[str, ...]

    def __init__(
        self, body: nn.Module, arch: str, out_channels: int, notes: Sequence[str] = ()
    ) -> None:
        super().__init__()
        self.body = body
        self.arch = arch
        self.out_channels = out_channels
        self.notes = tuple(notes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"{self.arch} returned {type(out).__name__} instead of a feature tensor; "
                "models with auxiliary outputs in train mode (e.g. tv:inception_v3, "
                "tv:googlenet) are not supported as ReID trunks"
            )
        return out

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, out_channels={self.out_channels}"


# ---------------------------------------------------------------------------- heads
_TV_HEADS = ("fc", "classifier", "head", "heads")


def _remove_tv_head(model: nn.Module, arch: str) -> str:
    """Replace the last classification ``nn.Linear`` by ``nn.Identity``; its key prefix."""
    for attr in _TV_HEADS:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return f"{attr}."
        if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
            last = list(head._modules)[-1]
            head._modules[last] = nn.Identity()
            return f"{attr}.{last}."
    raise ValueError(
        f"{arch}: cannot find the classifier head to remove (looked for a final nn.Linear in "
        f"{', '.join(_TV_HEADS)}); this model is not supported as a ReID trunk"
    )


# ---------------------------------------------------------------------------- last stride
class _Down(NamedTuple):
    name: str
    module: nn.Module
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


def _spatial_ops(body: nn.Module, example: Tensor) -> list[_Down]:
    """Every Conv2d / MaxPool2d / AvgPool2d call of one eval-mode forward, in call order."""
    calls: list[_Down] = []
    names = {m: n for n, m in body.named_modules()}

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        x = args[0] if args else None
        if isinstance(x, Tensor) and isinstance(out, Tensor) and x.dim() == out.dim() == 4:
            in_hw = (int(x.shape[-2]), int(x.shape[-1]))
            out_hw = (int(out.shape[-2]), int(out.shape[-1]))
            calls.append(_Down(names[module], module, in_hw, out_hw))

    handles = [
        m.register_forward_hook(hook)
        for m in body.modules()
        if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)
    ]
    was_training = body.training
    try:
        body.eval()
        with torch.no_grad():
            body(example)
    finally:
        body.train(was_training)
        for h in handles:
            h.remove()
    return calls


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _keeps_size_at_stride_one(module: nn.Module) -> bool:
    """Whether ``module`` at stride 1 maps an H x W input to H x W."""
    if isinstance(module, nn.Conv2d):
        if module.padding == "same":
            return True
        if isinstance(module.padding, str):
            return False
        k, p, d = _pair(module.kernel_size), _pair(module.padding), _pair(module.dilation)
    elif isinstance(module, nn.MaxPool2d):
        k, p, d = _pair(module.kernel_size), _pair(module.padding), _pair(module.dilation)
    elif isinstance(module, nn.AvgPool2d):
        k, p, d = _pair(module.kernel_size), _pair(module.padding), (1, 1)
    else:
        return False
    return all(2 * p[i] == d[i] * (k[i] - 1) for i in range(2))


def _is_avg_shortcut(module: nn.Module) -> bool:
    """A 2 x 2, stride-2 average pool (the ``avg_down`` shortcut of ResNet-D)."""
    return (
        isinstance(module, nn.AvgPool2d)
        and _pair(module.kernel_size) == (2, 2)
        and _stride(module) == (2, 2)
    )


def _stride(module: nn.Module) -> tuple[int, int]:
    """The stride of a conv or pooling module (a pool's default stride is its kernel)."""
    return _pair(getattr(module, "stride", None) or getattr(module, "kernel_size", 1))


def _describe(op: _Down) -> str:
    k, s = _pair(getattr(op.module, "kernel_size", 1)), _stride(op.module)
    return f"{op.name} ({type(op.module).__name__}, kernel {k[0]}x{k[1]}, stride {s[0]}x{s[1]})"


def set_last_stride_one(body: nn.Module, example: Tensor, arch: str) -> str:
    """Set the stride of the last stride-2 stage of ``body`` to 1, in place, where possible.

    One forward of ``example`` (eval mode, no gradients) records every ``Conv2d``,
    ``MaxPool2d`` and ``AvgPool2d`` call with its input and output size. The calls that make
    the final (smallest) feature map from a larger one are the last downsampling. If each is
    a stride-2 operation that, at stride 1, keeps its input size (padded ``k x k`` and
    ``1 x 1`` kernels; a ``2 x 2`` average-pool shortcut becomes ``nn.Identity``), all get
    stride 1 and a second forward checks that the final feature map is the one the last downsampling took in.
    Otherwise ``body`` is left unchanged.

    Args:
        body: the headless classification model.
        example: an input batch (1, 3, H, W) at the training size.
        arch: the model's name, for the message.

    Returns:
        One sentence saying what changed, or why nothing did.

    Example:
        >>> from torchvision.models import resnet18
        >>> net = resnet18()
        >>> set_last_stride_one(net, torch.zeros(1, 3, 64, 32), "tv:resnet18")
        'last stride 1: layer4.0.conv1, layer4.0.downsample.0 now have stride 1 (final feature map 4x2 instead of 2x1)'
    """
    calls = _spatial_ops(body, example)
    if not calls:
        return f"last_stride=1 does not apply to {arch}: it has no 2-D convolution or pooling"
    final = calls[-1].out_hw
    last = [c for c in calls if c.out_hw == final and c.in_hw != final]
    unique = list({id(c.module): c for c in last}.values())
    if not unique:  # pragma: no cover - the first call always shrinks or keeps the input
        return f"last_stride=1 does not apply to {arch}: no downsampling found"
    if any(_stride(c.module) != (2, 2) for c in unique):
        ops = ", ".join(_describe(c) for c in unique)
        return (
            f"last_stride=1 does not apply to {arch}: its last strided convolution or pooling, "
            f"{ops}, is not a stride-2 stage (a patch embedding; any later downsampling is by "
            "other operations, e.g. patch merging); the model keeps its strides"
        )
    blocked = [
        c for c in unique if not (_keeps_size_at_stride_one(c.module) or _is_avg_shortcut(c.module))
    ]
    if blocked:
        ops = ", ".join(_describe(c) for c in blocked)
        return (
            f"last_stride=1 does not apply to {arch}: its last downsampling, {ops}, is a patch "
            "merge that stride 1 would turn into overlapping windows of a different size; the "
            "model keeps its strides"
        )
    changed: list[tuple[str, nn.Module]] = []
    removed: list[str] = []
    for c in unique:
        if _is_avg_shortcut(c.module):
            parent_name, _, child = c.name.rpartition(".")
            parent = body.get_submodule(parent_name) if parent_name else body
            changed.append((c.name, c.module))
            parent._modules[child] = nn.Identity()
            removed.append(c.name)
        else:
            c.module.stride = (1, 1)  # type: ignore[assignment]
            changed.append((c.name, c.module))
    after = _spatial_ops(body, example)
    larger = unique[0].in_hw  # the map the last downsampling took as input
    if not after or after[-1].out_hw != larger:  # pragma: no cover - defensive: undo
        for name, module in changed:
            parent_name, _, child = name.rpartition(".")
            parent = body.get_submodule(parent_name) if parent_name else body
            parent._modules[child] = module
            if hasattr(module, "stride") and not isinstance(module, nn.AvgPool2d):
                module.stride = (2, 2)  # type: ignore[assignment]
        return (
            f"last_stride=1 does not apply to {arch}: with stride 1 the final feature map is "
            f"not the {larger[0]}x{larger[1]} map before the last downsampling; the model keeps "
            "its strides"
        )
    names = ", ".join(
        f"{name} (2x2 average pool, now the identity)" if name in removed else name
        for name, _ in changed
    )
    return (
        f"last stride 1: {names} now have stride 1 (final feature map "
        f"{larger[0]}x{larger[1]} instead of {final[0]}x{final[1]})"
    )


# ---------------------------------------------------------------------------- building
def _timm_classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") if isinstance(cfg, dict) else getattr(cfg, "classifier", None)
    if heads is None:
        return ("head.", "fc.", "classifier.")
    if isinstance(heads, str):
        heads = (heads,)
    return tuple(f"{h}." for h in heads)


def _build_timm(
    arch: str,
    name: str,
    pretrained: bool | str | os.PathLike[str],
    size: tuple[int, int],
) -> tuple[nn.Module, list[str]]:
    timm = _require_timm(arch)
    notes: list[str] = []
    from_hub = pretrained is True
    kwargs: dict[str, Any] = {"pretrained": from_hub, "num_classes": 0}
    try:
        try:
            model = timm.create_model(name, img_size=size, **kwargs)
        except TypeError as err:  # the model has no img_size argument (the CNNs)
            if "img_size" not in str(err):
                raise
            model = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not from_hub:
            raise
        cfg = timm.get_pretrained_cfg(name)
        hub = getattr(cfg, "hf_hub_id", None) or "its source"
        raise RuntimeError(
            f"could not get the pretrained weights of {arch} from {hub} through timm "
            f"({type(err).__name__}: {err}). Without network access, download them "
            "elsewhere and pass --pretrained /path/to/the/file (a state dict of the "
            "classification model), or put them in the Hugging Face cache and set "
            "HF_HUB_OFFLINE=1"
        ) from err
    if from_hub:
        notes.append(f"ImageNet weights of {arch} from timm's source (the Hugging Face hub)")
    elif pretrained is not False:
        state, source = fetch_state_dict(pretrained, "", what=f"the weights of {arch}")
        module = sys.modules.get(type(model).__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:  # timm's adaptation (e.g. position embeddings to img_size)
            state = filter_fn(state, model)
        load_weights(model, state, source=source, ignore_prefixes=_timm_classifier_prefixes(model))
        notes.append(f"weights of {arch} from {source}")
    return model, notes


def _build_tv(
    arch: str,
    name: str,
    pretrained: bool | str | os.PathLike[str],
    size: tuple[int, int],
) -> tuple[nn.Module, list[str]]:
    from torchvision import models as tv_models

    kwargs: dict[str, Any] = {"weights": None}
    if name.startswith("vit_"):
        if size[0] != size[1]:
            raise ValueError(
                f"{arch} takes square images (torchvision's VisionTransformer has one "
                f"image_size), got height={size[0]}, width={size[1]}; give equal --height and "
                "--width, or use a timm ViT, which takes any size"
            )
        kwargs["image_size"] = size[0]
    model = tv_models.get_model(name, **kwargs)
    head = _remove_tv_head(model, arch)
    notes: list[str] = []
    if pretrained is not False:
        url = tv_models.get_model_weights(name).DEFAULT.url
        state, source = fetch_state_dict(pretrained, url, what=f"torchvision's weights of {arch}")
        if name.startswith("vit_") and "encoder.pos_embedding" in state:
            from torchvision.models.vision_transformer import interpolate_embeddings

            patch = int(getattr(model, "patch_size", 16))
            state = interpolate_embeddings(size[0], patch, state)
        load_weights(model, state, source=source, ignore_prefixes=(head,))
        notes.append(f"weights of {arch} from {source}")
    return model, notes


def build_external_backbone(
    arch: str,
    pretrained: bool | str | os.PathLike[str] = False,
    last_stride: int = 1,
    *,
    input_size: Sequence[int] | None = None,
    checkpoint_activations: bool = False,
) -> ExternalBackbone:
    """A torchvision (``"tv:<name>"``) or timm (``"timm:<name>"``) model as a ReID trunk.

    Args:
        arch: ``"tv:<name>"`` (any of ``torchvision.models.list_models(module=torchvision.
            models)``) or ``"timm:<name>"`` (any ``timm.list_models()`` name, with an
            optional pretrained tag: ``"timm:resnet50.a1_in1k"``).
        pretrained: ``False`` (default, random weights), ``True`` (the library's usual
            ImageNet weights) or a path to a state dict of the classification model.
        last_stride: 1 (default: the last stride-2 stage at stride 1 where the
            architecture allows it, see :func:`set_last_stride_one`) or 2 (as built).
        input_size: (height, width) of the training images; default the architecture's
            (:func:`input_config`). The vision transformers are built for it, and the last
            stride is found with one forward at it.
        checkpoint_activations: recompute activations in the backward (timm models only,
            through their ``set_grad_checkpointing``). Default ``False``.

    Returns:
        The trunk; :attr:`ExternalBackbone.notes` lists what was applied.

    Raises:
        ValueError: a malformed or unknown name, ``last_stride`` other than 1 or 2, a
            non-square size for a torchvision ViT, ``checkpoint_activations`` on a
            torchvision model, weights that do not fit (keys listed).
        ImportError: ``"timm:..."`` without timm (the message names the extra).

    Example:
        >>> trunk = build_external_backbone("tv:resnet18", input_size=(64, 32))
        >>> trunk.out_channels, trunk(torch.zeros(2, 3, 64, 32)).shape
        (512, torch.Size([2, 512]))
        >>> trunk.notes[0]
        'last stride 1: layer4.0.conv1, layer4.0.downsample.0 now have stride 1 (final feature map 4x2 instead of 2x1)'
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string, got {arch!r}")
    library, name = _check_known(arch)
    check_pretrained(pretrained)
    if isinstance(last_stride, bool) or last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if not isinstance(checkpoint_activations, bool):
        raise TypeError(f"checkpoint_activations must be a bool, got {checkpoint_activations!r}")
    declared = input_config(arch)
    if input_size is None:
        size = (declared.height, declared.width)
    else:
        if len(input_size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_size
        ):
            raise ValueError(
                f"input_size must be (height, width), two ints >= 1, got {input_size!r}"
            )
        size = (int(input_size[0]), int(input_size[1]))
    if library == "timm":
        body, notes = _build_timm(arch, name, pretrained, size)
    else:
        body, notes = _build_tv(arch, name, pretrained, size)
    example = torch.zeros(1, 3, *size)
    if last_stride == 1:
        notes.insert(0, set_last_stride_one(body, example, arch))
    if checkpoint_activations:
        switch = getattr(body, "set_grad_checkpointing", None)
        if not callable(switch):
            raise ValueError(
                f"checkpoint_activations=True is not available for {arch}: torchvision models "
                "have no activation-checkpointing switch; use a timm model or a built-in ResNet"
            )
        switch(True)
    was_training = body.training
    body.eval()
    with torch.no_grad():
        out = body(example)
    body.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{arch} without its classifier returns {shape}, not a pooled feature (B, C); it "
            "is not supported as a ReID trunk"
        )
    return ExternalBackbone(body, arch, int(out.shape[1]), notes)
