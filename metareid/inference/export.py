"""Export the evaluation embedding as TorchScript or ONNX, for trackers and serving.

The exported model is :class:`~metareid.inference.EmbeddingNet`: it maps a float32 batch
(N, 3, H, W), RGB, resized to the run's ``(height, width)``, scaled to [0, 1] and normalised
with the ImageNet mean and standard deviation, to L2-normalised embeddings (N, D). The MetaBN
neck is exported as the plain BatchNorm it is in eval mode. The input description is stored
in the file (TorchScript: an extra file ``metareid.json``; ONNX: the model's metadata
properties, key ``metareid``) and in a JSON sidecar next to it (``<file>.json``).

* TorchScript: ``torch.jit.trace`` (deprecated upstream in favour of ``torch.export`` but
  working in torch 2.x, and what trackers such as BoxMOT load). Any batch size works.
* ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), opset
  17, with a dynamic batch axis. It needs no extra package at export time beyond ``onnx``
  (for the metadata), works offline, and is what this project tests. ``dynamo=True``
  selects the newer exporter, which also needs ``onnxscript``. Install the extra with
  ``pip install "metareid[onnx]"`` (``onnx`` and ``onnxruntime``).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from metareid._validation import check_choice
from metareid.inference.extractor import FeatureExtractor

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "export_model", "read_torchscript_metadata"]

EXPORT_FORMATS = ("torchscript", "onnx")
#: ONNX opset of :func:`export_model`.
ONNX_OPSET = 17
_INPUT, _OUTPUT = "images", "embeddings"
_EXTRA_FILE = "metareid.json"


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError(
            "ONNX export needs the optional packages onnx and onnxruntime: "
            'pip install "metareid[onnx]"'
        ) from err
    return onnx


def export_model(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any] | FeatureExtractor,
    path: str | os.PathLike[str],
    file_format: Literal["torchscript", "onnx"] = "torchscript",
    *,
    flip: bool | None = None,
    dynamo: bool = False,
) -> Path:
    """Write the embedding model of ``checkpoint`` to ``path``, plus ``<path>.json``.

    Args:
        checkpoint: a checkpoint path or dict, or a :class:`~metareid.FeatureExtractor`.
        path: the output file (e.g. ``model.torchscript`` / ``model.onnx``).
        file_format: ``"torchscript"`` (default) or ``"onnx"``.
        flip: bake flip averaging into the model; ``None`` (default): the extractor's
            setting (False for a checkpoint).
        dynamo: ONNX only: use the ``torch.export``-based exporter (needs ``onnxscript``)
            instead of the TorchScript-based one. Default False.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. The exported model runs on the CPU.

    Raises:
        ValueError: unknown ``file_format``; bad checkpoints as in
            :func:`~metareid.inference.read_checkpoint`.
        ImportError: ``file_format="onnx"`` without the ``onnx`` package (the message
            says what to install).
        RuntimeError: the exporter failed on the model (the message names the
            architecture and carries the exporter's error, which names what does not
            export); no file is left behind.

    Example:
        >>> import tempfile, os, torch
        >>> from metareid.models import model_from_config
        >>> cfg = {"arch": "resnet10", "height": 32, "width": 16}
        >>> ckpt = {"format": 1, "config": cfg, "model": model_from_config(cfg).state_dict()}
        >>> out = export_model(ckpt, os.path.join(tempfile.mkdtemp(), "m.torchscript"))
        >>> net = torch.jit.load(out)
        >>> net(torch.randn(3, 3, 32, 16)).shape
        torch.Size([3, 512])
        >>> read_torchscript_metadata(out)["input"]["mean"]
        [0.485, 0.456, 0.406]
    """
    fmt = check_choice("file_format", file_format, EXPORT_FORMATS)
    if flip is not None and not isinstance(flip, bool):
        raise TypeError(f"flip must be a bool or None, got {flip!r}")
    if not isinstance(dynamo, bool):
        raise TypeError(f"dynamo must be a bool, got {dynamo!r}")
    onnx = _require_onnx() if fmt == "onnx" else None
    if isinstance(checkpoint, FeatureExtractor):
        extractor = checkpoint
    else:
        extractor = FeatureExtractor(checkpoint, device="cpu", flip=bool(flip))
    net = copy.deepcopy(extractor.net).cpu().eval()
    if flip is not None:
        net.flip = flip
    meta = extractor.metadata()
    meta.update(
        {
            "flip": net.flip,
            "export": {
                "format": fmt,
                "input_name": _INPUT,
                "output_name": _OUTPUT,
                "dynamic_batch": True,
                "exporter": (
                    "torch.jit.trace"
                    if fmt == "torchscript"
                    else f"torch.onnx.export(dynamo={dynamo}), opset {ONNX_OPSET}"
                ),
                "torch_version": torch.__version__,
            },
        }
    )
    height, width = extractor.input_size
    example = torch.zeros(2, 3, height, width)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta, indent=2)
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks of the model code are constant for the fixed (3, H, W) input
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # nn.MultiheadAttention's eval fast path (torchvision's ViTs) is one fused op that
        # the ONNX exporter does not know; the unfused path computes the same.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            if fmt == "torchscript":
                traced = torch.jit.trace(net, example)
                torch.jit.save(traced, str(out), _extra_files={_EXTRA_FILE: text})
            else:
                torch.onnx.export(
                    net,
                    (example,),
                    str(out),
                    input_names=[_INPUT],
                    output_names=[_OUTPUT],
                    dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
                    opset_version=ONNX_OPSET,
                    dynamo=dynamo,
                )
                assert onnx is not None
                model = onnx.load(str(out))
                onnx.helper.set_model_props(model, {"metareid": text})
                onnx.save(model, str(out))
        except Exception as err:
            out.unlink(missing_ok=True)
            exporter = meta["export"]["exporter"]
            arch = extractor.config.get("arch", "resnet50")
            raise RuntimeError(
                f"{exporter} could not export the model of arch {arch!r} "
                f"({type(err).__name__}: {err}); the exporter's error names the operation or "
                "module that does not export. Nothing was written"
            ) from err
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    Path(f"{out}.json").write_text(text + "\n")
    return out


def read_torchscript_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata stored in a TorchScript file written by :func:`export_model`.

    Raises:
        ValueError: if the file holds no metareid metadata.

    Example:
        >>> read_torchscript_metadata("missing.torchscript")
        Traceback (most recent call last):
        ...
        FileNotFoundError: TorchScript file 'missing.torchscript' does not exist
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"TorchScript file {str(p)!r} does not exist")
    files = {_EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=FutureWarning)
        torch.jit.load(str(p), map_location="cpu", _extra_files=files)
    if not files[_EXTRA_FILE]:
        raise ValueError(f"{str(p)!r} holds no {_EXTRA_FILE}: not exported by metareid")
    data: dict[str, Any] = json.loads(files[_EXTRA_FILE])
    return data
