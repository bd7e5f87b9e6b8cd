"""``FeatureExtractor``: embeddings of any images from a training checkpoint."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import metareid
from metareid._validation import check_choice, check_positive_int
from metareid.config import config_value
from metareid.data.transforms import build_test_transform
from metareid.evaluation import embed
from metareid.inference._images import (
    IMAGE_EXTENSIONS,
    ImageItems,
    as_image_list,
    check_item,
    collate_kept,
    list_images,
    warn_skipped,
)
from metareid.inference.trained_model import (
    checkpoint_label,
    model_from_checkpoint,
    read_checkpoint,
)
from metareid.layers.metabn import MetaBN
from metareid.models import ReIDModel, input_config

__all__ = ["EmbeddingNet", "Extraction", "FeatureExtractor"]

ImageInput = Any  # a path, a PIL image, a tensor or an array, see FeatureExtractor


class EmbeddingNet(nn.Module):
    """The evaluation embedding as one module: images (N, 3, H, W) to features (N, D).

    ``forward(images)`` is :func:`metareid.evaluation.embed` ``(model.neck_features,
    images, flip, normalize=True)``, the step that
    :func:`metareid.evaluation.extract_features` runs on every batch of a
    :class:`~metareid.models.ReIDModel` in eval mode, so the two agree bit for bit:
    :meth:`~metareid.models.ReIDModel.neck_features` (backbone, global average pooling,
    BNNeck, L2 normalisation of the neck output when the model has ``normalize_neck``),
    with ``flip=True`` the mean with the features of the horizontally mirrored images, and
    a final L2 normalisation. The input is the output of the evaluation transform: RGB,
    resized, scaled to [0, 1] and normalised with the ImageNet mean and standard
    deviation. This is the module that :func:`~metareid.inference.export_model` exports
    (with ``torch.jit.trace`` or ``torch.onnx.export``).

    It holds its own :class:`~metareid.models.ReIDModel`, :attr:`model`, that shares the
    backbone with ``model`` and has no classifier; its neck is a plain ``BatchNorm1d``:
    :meth:`~metareid.MetaBN.to_batchnorm` of a MetaBN neck (a copy, which in eval mode
    computes what the MetaBN computes and needs no custom layer in an exporter), or
    ``model``'s own plain neck (shared). Use it in eval mode.

    Args:
        model: the trained model.
        flip: average with the mirrored images' features. Default False.

    Attributes:
        model: the ReIDModel that computes the per-image features.
        flip: see above; may be changed later.
        feat_dim: D.

    Example:
        >>> import torch
        >>> from metareid.models import build_model
        >>> net = EmbeddingNet(build_model("resnet10"), flip=True).eval()
        >>> feats = net(torch.randn(2, 3, 32, 16))
        >>> feats.shape, torch.allclose(feats.norm(dim=1), torch.ones(2))
        (torch.Size([2, 512]), True)
        >>> type(net.model.neck).__name__
        'BatchNorm1d'
    """

    model: ReIDModel
    flip: bool
    feat_dim: int

    def __init__(self, model: ReIDModel, flip: bool = False) -> None:
        if not isinstance(model, ReIDModel):
            raise TypeError(f"model must be a ReIDModel, got {type(model).__name__}")
        if not isinstance(flip, bool):
            raise TypeError(f"flip must be a bool, got {flip!r}")
        super().__init__()
        deployed = ReIDModel(model.backbone, model.feat_dim, normalize_neck=model.normalize_neck)
        neck = model.neck.to_batchnorm() if isinstance(model.neck, MetaBN) else model.neck
        deployed.neck = neck  # type: ignore[assignment]  # the BatchNorm1d that a MetaBN is
        self.model = deployed
        self.flip = flip
        self.feat_dim = model.feat_dim
        self.train(model.training)

    def forward(self, images: Tensor) -> Tensor:
        """Embeddings (N, D), float32 and L2-normalised, of normalised images (N, 3, H, W)."""
        return embed(self.model.neck_features, images, self.flip, normalize=True)


class Extraction(NamedTuple):
    """What :meth:`FeatureExtractor.extract` returns.

    Attributes:
        features: L2-normalised embeddings (M, D), float32, on the CPU.
        kept: index in the input of each row of ``features``, int64 (M,). Equal to
            ``arange(N)`` unless undecodable files were skipped.
    """

    features: Tensor
    kept: Tensor


class FeatureExtractor:
    """Embeddings of your own images from any checkpoint that training writes.

    The checkpoint is read with ``weights_only=True``; the network is rebuilt from its
    config (see :func:`~metareid.inference.model_from_checkpoint`) without any source data
    and without downloading weights, and put in eval mode. Images are preprocessed exactly
    as in evaluation (:func:`~metareid.data.build_test_transform` at the run's
    ``(height, width)``: bicubic resize whatever their size, [0, 1] scaling, ImageNet
    normalisation), batched, and mapped to the L2-normalised BNNeck features that
    evaluation ranks with (:class:`EmbeddingNet`).

    Accepted images, alone or in a list (mixed freely):

    * a path (``str`` or ``os.PathLike``) of an image file, decoded as RGB;
    * a PIL image (converted to RGB);
    * a ``uint8`` tensor (3, H, W) or batch (N, 3, H, W), RGB, 0-255;
    * a float tensor of the same shapes, RGB in [0, 1];
    * a numpy array (H, W, 3) or (N, H, W, 3), ``uint8`` or float in [0, 1], RGB (convert
      OpenCV's BGR first: ``image[..., ::-1]``).

    ``uint8`` inputs are turned into PIL images first, so a file, its PIL image and its
    array give identical embeddings. Float inputs are resized by the same transform on the
    tensor (torch's bicubic, not PIL's): close to, but not bit-identical with, the uint8 path.

    Args:
        checkpoint: a checkpoint path (``last.pt``) or the loaded dict.
        device: where the model runs; ``None`` (default): CUDA when available, else CPU.
        batch_size: images per forward pass, >= 1. Default 64.
        flip: average each embedding with that of the mirrored image (the ``flip_eval``
            evaluation option). Default False.
        num_workers: ``DataLoader`` processes that decode and transform images, >= 0.
            Default 0 (in this process).
        on_bad_image: an image file that cannot be decoded: ``"raise"`` (default) raises
            :class:`~metareid.data.BadImageError` naming it; ``"skip"`` warns, naming it,
            and leaves it out (see :attr:`Extraction.kept`). The datasets' option.
        progress: show a progress bar; ``None`` (default): when the input spans more than
            one batch and stderr is a terminal.
        amp: run the model under bfloat16 autocast on ``device``, as the trainer does with
            ``amp``. Default False (float32).

    Attributes:
        model: the restored :class:`~metareid.models.ReIDModel`, eval mode.
        net: the :class:`EmbeddingNet` that maps preprocessed batches to embeddings.
        config: the run's config dict.
        epoch: epochs the checkpoint had trained.
        input_size: ``(height, width)`` of the model input.
        mean: normalisation mean, RGB.
        std: normalisation standard deviation, RGB.
        feat_dim: D.
        transform: the evaluation transform (PIL image or tensor to (3, H, W)).

    Raises:
        TypeError, ValueError: for a bad argument (named), before anything is loaded;
            see :func:`~metareid.inference.read_checkpoint` for bad checkpoints.

    Example:
        >>> import numpy as np
        >>> from metareid.models import model_from_config
        >>> cfg = {"arch": "resnet10", "height": 32, "width": 16}
        >>> ckpt = {"format": 1, "config": cfg, "model": model_from_config(cfg).state_dict()}
        >>> extractor = FeatureExtractor(ckpt, device="cpu", batch_size=4)
        >>> images = np.zeros((5, 40, 20, 3), dtype=np.uint8)  # 5 RGB images, any size
        >>> feats = extractor(images)
        >>> feats.shape, extractor.input_size
        (torch.Size([5, 512]), (32, 16))
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | Mapping[str, Any],
        device: str | torch.device | None = None,
        batch_size: int = 64,
        flip: bool = False,
        *,
        num_workers: int = 0,
        on_bad_image: str = "raise",
        progress: bool | None = None,
        amp: bool = False,
    ) -> None:
        self.batch_size = check_positive_int("batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.num_workers = num_workers
        for name, flag in (("flip", flip), ("amp", amp)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool or None, got {progress!r}")
        self.on_bad_image = check_choice("on_bad_image", on_bad_image, ("raise", "skip"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must name a torch device, got {device!r}") from err
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available")
        self.flip = flip
        self.amp = amp
        self.progress = progress
        state = read_checkpoint(checkpoint)
        self.source = checkpoint_label(checkpoint)
        self.config: dict[str, Any] = dict(state["config"])
        self.epoch = int(state.get("epoch", 0))
        # What training used: the run's config, where it is silent the architecture's.
        declared = input_config(config_value(self.config, "arch"))
        height = config_value(self.config, "height") or declared.height
        width = config_value(self.config, "width") or declared.width
        self.input_size: tuple[int, int] = (int(height), int(width))
        mean, std = config_value(self.config, "mean"), config_value(self.config, "std")
        self.mean: tuple[float, ...] = tuple(float(v) for v in (mean or declared.mean))
        self.std: tuple[float, ...] = tuple(float(v) for v in (std or declared.std))
        self.transform = build_test_transform(self.input_size, mean=self.mean, std=self.std)
        self.model = model_from_checkpoint(state, self.device)
        self.net = EmbeddingNet(self.model, flip=flip).to(self.device).eval()
        self.feat_dim = int(self.model.feat_dim)

    # ------------------------------------------------------------------ public API
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """Embeddings (N, D) of ``images``; see :meth:`extract` (this is its ``features``)."""
        return self.extract(images).features

    def extract(self, images: ImageInput | Sequence[ImageInput]) -> Extraction:
        """Embeddings of one image or many, in input order.

        Args:
            images: see the class docstring.

        Returns:
            :class:`Extraction` ``(features (M, D), kept (M,))``; M = N unless files were
            skipped (``on_bad_image="skip"``).

        Raises:
            TypeError, ValueError: an in-memory image of the wrong type, dtype or shape
                (naming its index), or no image at all; nothing is computed then.
            BadImageError: an undecodable file with ``on_bad_image="raise"``.
            ValueError: every image was skipped.
        """
        items = as_image_list(images)
        for index, item in enumerate(items):
            check_item(index, item)
        dataset = ImageItems(items, self.transform, self.on_bad_image)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_kept,
            pin_memory=self.device.type == "cuda",
        )
        feats: list[Tensor] = []
        kept: list[Tensor] = []
        for batch, index, messages in self._progress(loader, len(items)):
            warn_skipped(messages)
            if index.numel():
                feats.append(self.embed(batch))
                kept.append(index)
        if not feats:
            raise ValueError(f"none of the {len(items)} images could be decoded; all skipped")
        return Extraction(torch.cat(feats), torch.cat(kept))

    def extract_folder(
        self,
        folder: str | os.PathLike[str],
        recursive: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> tuple[Tensor, list[Path]]:
        """Embeddings of every image file of ``folder`` (sorted by relative path).

        Args:
            folder: the folder.
            recursive: include subfolders. Default True.
            extensions: file extensions taken, case-insensitive. Default
                ``.jpg .jpeg .png .bmp .webp .tif .tiff``.

        Returns:
            ``(features (M, D), paths)``: the M files embedded (skipped ones left out).

        Raises:
            FileNotFoundError: ``folder`` is not a folder.
            ValueError: it holds no image file.
        """
        files = list_images(folder, recursive, extensions)
        feats, kept = self.extract(files)
        return feats, [files[i] for i in kept.tolist()]

    @torch.no_grad()
    def embed(self, batch: Tensor) -> Tensor:
        """Embeddings (N, D) of an already preprocessed batch (N, 3, H, W).

        This is what an exported model computes (see :func:`~metareid.inference.export_model`).

        Raises:
            ValueError: if ``batch`` is not a float tensor of shape (N, 3, height, width).
        """
        if (
            not isinstance(batch, Tensor)
            or not batch.is_floating_point()
            or batch.dim() != 4
            or tuple(batch.shape[1:]) != (3, *self.input_size)
        ):
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(
                f"batch must be a float tensor of shape (N, 3, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {shape}"
            )
        batch = batch.to(self.device, non_blocking=True)
        with self._autocast():
            out = self.net(batch)
        return out.float().cpu()

    def metadata(self) -> dict[str, Any]:
        """What a consumer of the embeddings needs to know, as JSON types.

        Example:
            >>> from metareid.models import model_from_config
            >>> cfg = {"arch": "resnet10", "height": 32, "width": 16}
            >>> ckpt = {"format": 1, "config": cfg,
            ...         "model": model_from_config(cfg).state_dict()}
            >>> FeatureExtractor(ckpt, device="cpu").metadata()["input"]["height"]
            32
        """
        return {
            "producer": "metareid",
            "metareid_version": metareid.__version__,
            "checkpoint": self.source,
            "epoch": self.epoch,
            "arch": config_value(self.config, "arch"),
            "method": config_value(self.config, "method"),
            "input": {
                "layout": "NCHW",
                "channels": "RGB",
                "dtype": "float32",
                "height": self.input_size[0],
                "width": self.input_size[1],
                "resize": "bicubic, antialiased, to (height, width), aspect ratio not kept",
                "scale": "pixel / 255",
                "mean": list(self.mean),
                "std": list(self.std),
                "formula": "(pixel / 255 - mean) / std, per channel",
            },
            "output": {"shape": ["N", self.feat_dim], "dim": self.feat_dim, "l2_normalized": True},
            "flip": self.flip,
            "distance": "squared euclidean (= 2 - 2 * cosine similarity)",
        }

    def __repr__(self) -> str:
        return (
            f"FeatureExtractor({self.source!r}, arch={config_value(self.config, 'arch')!r}, "
            f"input_size={self.input_size}, feat_dim={self.feat_dim}, device={str(self.device)!r}, "
            f"flip={self.flip})"
        )

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _progress(self, loader: DataLoader[Any], total: int) -> Any:
        show = self.progress
        if show is None:
            show = total > self.batch_size and sys.stderr.isatty()
        if not show:
            return loader
        from tqdm.auto import tqdm

        return tqdm(loader, desc="embedding", unit="batch", dynamic_ncols=True, leave=False)
