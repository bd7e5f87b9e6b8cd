"""Rebuild a trained model from a training checkpoint: no source data, no downloads.

A checkpoint written by :class:`metareid.engine.Trainer` (``last.pt``) holds ``format``
(an int, currently 1), ``config`` (the :class:`~metareid.engine.TrainConfig` as a dict),
``epoch`` and ``model`` (the state dict), next to optimiser and memory state that inference
does not need. The architecture is rebuilt from the config fields ``arch``,
``last_stride``, ``method`` (MetaBN neck for ``"m3l"``, plain BatchNorm1d otherwise),
``sample_scale`` and ``share_lambda``; the sizes of the classifier heads of
``id_loss="fc_global"``/``"fc_domain"`` runs are read from the state dict shapes. ImageNet
weights are never requested: the weights come from the checkpoint. Config keys this version
does not know (written by a newer metareid) are ignored; the strict state dict load still
refuses an architecture that does not match.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metareid.config import config_value
from metareid.models import ReIDModel, model_from_config
from metareid.serialization import load_checkpoint

__all__ = [
    "SUPPORTED_FORMAT",
    "checkpoint_label",
    "classifier_sizes",
    "model_from_checkpoint",
    "read_checkpoint",
]

#: The newest checkpoint ``format`` this version of metareid reads.
SUPPORTED_FORMAT = 1

_HEAD_KEY = re.compile(r"^classifier\.(?:(\d+)\.)?weight$")


def read_checkpoint(checkpoint: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Load (if needed) and check a metareid training checkpoint.

    The file is read with ``torch.load(..., weights_only=True)`` on the CPU.

    Args:
        checkpoint: a path to a checkpoint written by training (``last.pt``), or the dict
            already loaded.

    Returns:
        The checkpoint dict, with at least ``format``, ``config`` and ``model``.

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: if the file is not a metareid checkpoint (unreadable with
            ``weights_only=True``, or without ``format``/``config``/``model``), or its
            ``format`` is newer than :data:`SUPPORTED_FORMAT`.
        TypeError: if ``checkpoint`` is neither a path nor a mapping.

    Example:
        >>> read_checkpoint({"format": 99, "config": {}, "model": {}})
        Traceback (most recent call last):
        ...
        ValueError: checkpoint <dict> has format 99, but this metareid reads formats up to 1: ...
    """
    if isinstance(checkpoint, Mapping):
        state: Any = checkpoint
        where = "<dict>"
    elif isinstance(checkpoint, (str, os.PathLike)):
        where = repr(os.fspath(checkpoint))
        try:
            state = load_checkpoint(Path(checkpoint))
        except FileNotFoundError:
            raise
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"checkpoint {where} is not a metareid checkpoint: torch.load(weights_only=True) "
                f"cannot read it ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            ) from err
    else:
        raise TypeError(
            f"checkpoint must be a path or a checkpoint dict, got {type(checkpoint).__name__}"
        )
    if not isinstance(state, Mapping) or "format" not in state:
        keys = sorted(map(str, state))[:8] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"checkpoint {where} is not a metareid checkpoint: it has no 'format' entry "
            f"(found {keys}); metareid checkpoints are the last.pt files that training writes"
        )
    fmt = state["format"]
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ValueError(f"checkpoint {where} has an invalid format {fmt!r}; expected an int >= 1")
    if fmt > SUPPORTED_FORMAT:
        raise ValueError(
            f"checkpoint {where} has format {fmt}, but this metareid reads formats up to "
            f"{SUPPORTED_FORMAT}: it was written by a newer metareid version; upgrade metareid"
        )
    config, model = state.get("config"), state.get("model")
    if not isinstance(config, Mapping) or not isinstance(model, Mapping):
        raise ValueError(
            f"checkpoint {where} is not a metareid checkpoint: 'config' and 'model' must be "
            f"dicts, got {type(config).__name__} and {type(model).__name__}"
        )
    return dict(state)


def classifier_sizes(state_dict: Mapping[str, Tensor]) -> int | list[int] | None:
    """The ``num_classes`` of :class:`ReIDModel` that produced ``state_dict``.

    Example:
        >>> classifier_sizes({"classifier.0.weight": torch.zeros(3, 8),
        ...                   "classifier.1.weight": torch.zeros(5, 8)})
        [3, 5]
        >>> classifier_sizes({"classifier.weight": torch.zeros(7, 8)}), classifier_sizes({})
        (7, None)
    """
    single: int | None = None
    heads: dict[int, int] = {}
    for key, value in state_dict.items():
        match = _HEAD_KEY.match(key)
        if match is None or not isinstance(value, Tensor) or value.dim() != 2:
            continue
        if match.group(1) is None:
            single = int(value.shape[0])
        else:
            heads[int(match.group(1))] = int(value.shape[0])
    if heads:
        if sorted(heads) != list(range(len(heads))):
            raise ValueError(f"classifier heads {sorted(heads)} are not numbered 0..n-1")
        return [heads[i] for i in range(len(heads))]
    return single


def model_from_checkpoint(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    device: str | torch.device = "cpu",
) -> ReIDModel:
    """The trained model of a checkpoint, in eval mode, without data and without downloads.

    Args:
        checkpoint: a checkpoint path (``last.pt``) or the loaded dict.
        device: where the model goes. Default the CPU.

    Returns:
        The :class:`~metareid.models.ReIDModel` with the checkpoint's weights, eval mode. In
        eval mode it maps images (B, 3, H, W) to L2-normalised features (B, D).

    Raises:
        ValueError: see :func:`read_checkpoint`; also if the weights do not fit the
            architecture the config describes (the message lists the keys).

    Example:
        >>> cfg = {"arch": "resnet10", "method": "m3l", "height": 32, "width": 16}
        >>> state = {"format": 1, "config": cfg,
        ...          "model": model_from_config(cfg).state_dict()}
        >>> model = model_from_checkpoint(state)
        >>> model.training, type(model.neck).__name__
        (False, 'MetaBN')
    """
    state = read_checkpoint(checkpoint)
    weights = state["model"]
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"checkpoint 'model' must map names to tensors; bad entries {bad[:5]}")
    model = model_from_config(state["config"], classifier_sizes(weights))
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(weights)
        if own[k].shape != weights[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            "the checkpoint weights do not fit the architecture of its config "
            f"(arch {config_value(state['config'], 'arch')!r}): missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}, shape mismatches {mismatched[:5]}; was it "
            "written by a newer metareid version?"
        )
    model.load_state_dict(weights)
    return model.to(device).eval()


def checkpoint_label(checkpoint: str | os.PathLike[str] | Mapping[str, Any]) -> str:
    """A short name of ``checkpoint`` for metadata: the file name, or ``"<dict>"``.

    Example:
        >>> checkpoint_label("runs/m3l/last.pt"), checkpoint_label({})
        ('last.pt', '<dict>')
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        return Path(checkpoint).name
    return "<dict>"
