"""Networks for M3L: ResNet / IBN-Net-a backbones and the ReID model with a MetaBN BNNeck.

* :func:`build_model` builds ``backbone -> pooling -> MetaBN BNNeck`` by name
  (:func:`list_models`); :func:`model_from_config` the network a training config
  describes (training and inference alike).
* :class:`ReIDModel` wraps any backbone; in train mode it returns a :class:`ReIDOutput`
  ``(pooled, features, logits)``, in eval mode the normalised feature tensor.
* :func:`build_external_backbone`: any torchvision (``"tv:<name>"``) or timm
  (``"timm:<name>"``) classification model as a trunk (:class:`ExternalBackbone`), with
  :func:`input_config` (the input it declares) and :func:`set_last_stride_one`.
* :class:`ResNetBackbone`, :class:`IBN` and the builders :func:`resnet18`,
  :func:`resnet34`, :func:`resnet50`, :func:`ibn_resnet50a` (torchvision-based, last
  stride 1 by default, optional pretrained weights).
"""

from metareid.models.external import (
    REID_INPUT,
    ExternalBackbone,
    InputConfig,
    build_external_backbone,
    input_config,
    is_external_arch,
    set_last_stride_one,
)
from metareid.models.factory import build_model, list_models, model_from_config
from metareid.models.neck import ReIDModel, ReIDOutput
from metareid.models.resnet import (
    IBN,
    IBN_INITS,
    ResNetBackbone,
    ibn_resnet50a,
    resnet10,
    resnet18,
    resnet34,
    resnet50,
)

__all__ = [
    "IBN",
    "IBN_INITS",
    "REID_INPUT",
    "ExternalBackbone",
    "InputConfig",
    "ReIDModel",
    "ReIDOutput",
    "ResNetBackbone",
    "build_external_backbone",
    "build_model",
    "ibn_resnet50a",
    "input_config",
    "is_external_arch",
    "list_models",
    "model_from_config",
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "set_last_stride_one",
]
