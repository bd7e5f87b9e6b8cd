"""ReID model: any backbone, global average pooling and a MetaBN BNNeck.

:class:`ReIDModel` is the network ``F`` of M3L: ``backbone -> global average pooling ->
BNNeck`` where the BNNeck's BatchNorm1d is a :class:`~metareid.MetaBN` (the "last BN" that
Sec. 3.4 replaces), optionally followed by FC classifiers for the Table 5 ablation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metareid._validation import check_positive_int
from metareid.layers.metabn import MetaBN
from metareid.models._neck_args import check_neck_args

__all__ = ["ReIDModel", "ReIDOutput"]

#: Standard deviation of the normal initialisation of the FC classifiers.
CLASSIFIER_INIT_STD = 0.001


class ReIDOutput(NamedTuple):
    """What :class:`ReIDModel` returns in train mode.

    Attributes:
        pooled: the globally pooled backbone feature before the neck, (B, C). The published
            M3L code feeds it to the triplet loss.
        features: the neck (MetaBN) output, L2-normalised when the model has
            ``normalize_neck=True``; (B, C), or (k * B, C) when the neck is in MetaBN phase
            ``"meta_test"`` with k recorded meta-train domains (then use
            ``labels.repeat(k)``). The input of the memory loss.
        logits: ``None`` without classifier; with a global classifier a tensor
            (B', num_classes); with per-domain classifiers a list with one (B', n_d) tensor
            per domain ``d``. ``B'`` is the number of rows of ``features``.
    """

    pooled: Tensor
    features: Tensor
    logits: Tensor | list[Tensor] | None = None


class ReIDModel(nn.Module):
    """ReID network: backbone, global average pooling, MetaBN BNNeck, optional classifiers.

    Forward pass on images ``x``:

    1. ``backbone(x)``: a feature map (B, C, H, W), averaged over H and W, or already a
       vector (B, C). This is :attr:`ReIDOutput.pooled`.
    2. ``neck``: a :class:`~metareid.MetaBN` over C channels (weight 1, bias 0 at start).
       Its bias is frozen by default (``requires_grad=False``), BNNeck practice (the
       reference notes do not say what the published code does here; pass
       ``freeze_neck_bias=False`` to train it).
    3. With ``normalize_neck=True`` (default, as the published code) the neck output is
       L2-normalised along channels; otherwise it is returned as is.
    4. Classifiers, if any, are bias-free linear layers on the neck output *before* the
       L2 normalisation (BNNeck practice), initialised from N(0, 0.001^2).

    In train mode the model returns a :class:`ReIDOutput` ``(pooled, features, logits)``;
    in eval mode it returns the (normalised) neck feature tensor (B, C) alone,
    :meth:`neck_features`, so evaluation code that expects a tensor works unchanged. In
    eval mode MetaBN uses its running statistics and never mixes.

    Args:
        backbone: any module mapping the input to (B, C, H, W) or (B, C).
        feat_dim: C. ``None`` (default) infers it with one dry run of ``backbone`` in eval
            mode under ``torch.no_grad()`` on zeros of shape ``(2, *dry_run_shape)``, on the
            device and dtype of the backbone's first parameter; pass it to skip the dry run
            (needed when the backbone does not take images).
        num_classes: ``None`` (default): no classifier. An int: one global classifier over
            all identities, logits a tensor. A sequence of ints: one classifier per source
            domain, logits a list. The classifiers live in the model, so the meta step
            updates them with the rest.
        normalize_neck: L2-normalise the neck output. Default ``True``.
        freeze_neck_bias: set ``requires_grad=False`` on the neck bias. Default ``True``.
        sample_scale: ``sample_scale`` of the MetaBN neck. Default ``"std"`` (the paper);
            ``"var"`` is the published code.
        share_lambda: ``share_lambda`` of the MetaBN neck. Default ``True``.
        dry_run_shape: per-sample input shape of the ``feat_dim`` dry run. Default
            ``(3, 64, 32)``.

    Attributes:
        backbone: the backbone.
        neck: the :class:`~metareid.MetaBN` BNNeck.
        classifier: ``None``, an ``nn.Linear`` or an ``nn.ModuleList`` of them.
        feat_dim: C.
        normalize_neck: see above.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from metareid.models import ReIDModel
        >>> trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU())
        >>> model = ReIDModel(trunk, num_classes=[5, 7])  # feat_dim inferred: 8
        >>> out = model(torch.randn(4, 3, 32, 16))
        >>> out.pooled.shape, out.features.shape, [t.shape[1] for t in out.logits]
        (torch.Size([4, 8]), torch.Size([4, 8]), [5, 7])
        >>> feats = model.eval()(torch.randn(4, 3, 32, 16))  # eval mode: a tensor
        >>> feats.shape, torch.allclose(feats.norm(dim=1), torch.ones(4))
        (torch.Size([4, 8]), True)
    """

    backbone: nn.Module
    neck: MetaBN
    classifier: nn.Linear | nn.ModuleList | None
    feat_dim: int
    normalize_neck: bool

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int | None = None,
        *,
        num_classes: int | Sequence[int] | None = None,
        normalize_neck: bool = True,
        freeze_neck_bias: bool = True,
        sample_scale: str = "std",
        share_lambda: bool = True,
        dry_run_shape: Sequence[int] = (3, 64, 32),
    ) -> None:
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        classes = check_neck_args(
            num_classes, normalize_neck, freeze_neck_bias, sample_scale, share_lambda
        )
        if feat_dim is None:
            feat_dim = _infer_feat_dim(backbone, dry_run_shape)
        else:
            check_positive_int("feat_dim", feat_dim)
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.normalize_neck = normalize_neck
        self.neck = MetaBN(feat_dim, sample_scale=sample_scale, share_lambda=share_lambda)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(not freeze_neck_bias)
        if classes is None:
            self.classifier = None
        elif isinstance(classes, int):
            self.classifier = _linear(feat_dim, classes)
        else:
            self.classifier = nn.ModuleList(_linear(feat_dim, n) for n in classes)
        reference = next(self.backbone.parameters(), None)
        if reference is not None:  # follow the backbone's device and dtype
            self.neck.to(reference.device, reference.dtype)
            if self.classifier is not None:
                self.classifier.to(reference.device, reference.dtype)

    def forward(self, x: Tensor) -> ReIDOutput | Tensor:
        """Run the model on ``x`` (e.g. images (B, 3, H, W)).

        Returns:
            Train mode: :class:`ReIDOutput` with ``pooled`` (B, C), ``features`` (B, C) or
            (k * B, C) in MetaBN phase ``"meta_test"``, and ``logits``. Eval mode:
            :meth:`neck_features` of ``x``, (B, C).

        Raises:
            ValueError: if the backbone output is not (B, C, H, W) or (B, C) with
                C = ``feat_dim``.
        """
        if not self.training:
            return self.neck_features(x)
        pooled = self._pooled(x)
        neck = self.neck(pooled)
        logits: Tensor | list[Tensor] | None
        if self.classifier is None:
            logits = None
        elif isinstance(self.classifier, nn.ModuleList):
            logits = [head(neck) for head in self.classifier]
        else:
            logits = self.classifier(neck)
        return ReIDOutput(pooled, self._normalized(neck), logits)

    def neck_features(self, x: Tensor) -> Tensor:
        """The embedding ``f(x)`` of the BNNeck: backbone, pooling, neck, L2 if ``normalize_neck``.

        Steps 1-3 of the class docstring, without classifiers: the tensor that the eval-mode
        forward returns, and :attr:`ReIDOutput.features` in train mode. In eval mode the
        neck normalises with its running statistics (MetaBN is then a plain BatchNorm, so
        a model whose neck was replaced by :meth:`~metareid.MetaBN.to_batchnorm` gives the
        same values); this is the per-image embedding that evaluation ranks and that
        :func:`metareid.evaluation.embed` flip-averages and normalises. It is the ``f(x)``
        of the paper's memory update and loss (Eq. 2-3); the paper gives no separate
        test-time equation, and the published code evaluates the same L2-normalised BNNeck
        output.

        Args:
            x: the input, e.g. images (B, 3, H, W).

        Returns:
            (B, C), or (k * B, C) in train mode in MetaBN phase ``"meta_test"``.

        Raises:
            ValueError: if the backbone output is not (B, C, H, W) or (B, C) with
                C = ``feat_dim``.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from metareid.models import ReIDModel
            >>> model = ReIDModel(nn.Conv2d(3, 8, 3), normalize_neck=False).eval()
            >>> x = torch.randn(2, 3, 16, 8)
            >>> torch.equal(model.neck_features(x), model(x))
            True
        """
        return self._normalized(self.neck(self._pooled(x)))

    def _pooled(self, x: Tensor) -> Tensor:
        """Step 1: the backbone output, averaged over H and W when it is a map; (B, C)."""
        out = self.backbone(x)
        if not isinstance(out, Tensor) or out.dim() not in (2, 4):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the backbone must return a tensor of shape (B, C, H, W) or (B, C), got {shape}"
            )
        pooled = out.mean(dim=(2, 3)) if out.dim() == 4 else out
        if pooled.shape[1] != self.feat_dim:
            raise ValueError(
                f"the backbone returned {pooled.shape[1]} channels, but feat_dim is "
                f"{self.feat_dim} (shape {tuple(out.shape)})"
            )
        return pooled

    def _normalized(self, neck: Tensor) -> Tensor:
        """Step 3: the neck output L2-normalised along channels if ``normalize_neck``."""
        return F.normalize(neck, dim=1) if self.normalize_neck else neck

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, normalize_neck={self.normalize_neck}"


def _linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.normal_(layer.weight, std=CLASSIFIER_INIT_STD)
    return layer


def _infer_feat_dim(backbone: nn.Module, dry_run_shape: Sequence[int]) -> int:
    if (
        isinstance(dry_run_shape, str)
        or not isinstance(dry_run_shape, Sequence)
        or not dry_run_shape
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in dry_run_shape)
    ):
        raise ValueError(
            f"dry_run_shape must be a non-empty sequence of ints >= 1, got {dry_run_shape!r}"
        )
    reference = next(backbone.parameters(), None)
    device = None if reference is None else reference.device
    dtype = None if reference is None else reference.dtype
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros((2, *dry_run_shape), device=device, dtype=dtype))
    except Exception as err:
        raise ValueError(
            f"could not infer feat_dim: the backbone failed on an input of shape "
            f"{(2, *dry_run_shape)} ({type(err).__name__}: {err}); pass feat_dim or "
            "dry_run_shape"
        ) from err
    finally:
        backbone.train(was_training)
    if not isinstance(out, Tensor) or out.dim() not in (2, 4):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the backbone must return a tensor of shape (B, C, H, W) or (B, C), got {shape} "
            f"for an input of shape {(2, *dry_run_shape)}"
        )
    return int(out.shape[1])
