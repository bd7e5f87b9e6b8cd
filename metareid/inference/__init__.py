"""Use a trained model: embeddings of your own images, retrieval, export, evaluation.

- :class:`FeatureExtractor`: a checkpoint to L2-normalised embeddings (N, D) of image
  paths, PIL images, tensors or arrays, preprocessed exactly as in evaluation.
- :func:`topk_search`: the k nearest gallery entries of every query, streamed in chunks
  (bounded memory), in the order of :func:`metareid.evaluation.evaluate_rank`.
- :func:`export_model`: TorchScript or ONNX model of the embedding, with its input size
  and normalisation as metadata.
- :func:`evaluate_checkpoint`: a checkpoint's accuracy on a target, reading nothing else.
- :func:`model_from_checkpoint`, :func:`read_checkpoint` (and
  :func:`metareid.models.model_from_config`): rebuild the network of a run without its
  data and without downloads.
- :func:`save_embeddings`, :func:`load_embeddings`, :func:`save_rankings`: the files of
  ``metareid extract`` and ``metareid search``.

See ``docs/inference.md``.
"""

from metareid.inference._images import IMAGE_EXTENSIONS, list_images
from metareid.inference.evaluate import evaluate_checkpoint
from metareid.inference.export import (
    EXPORT_FORMATS,
    ONNX_OPSET,
    export_model,
    read_torchscript_metadata,
)
from metareid.inference.extractor import EmbeddingNet, Extraction, FeatureExtractor
from metareid.inference.files import Embeddings, load_embeddings, save_embeddings, save_rankings
from metareid.inference.search import (
    CHUNK_ELEMENTS,
    SearchResult,
    names_to_ids,
    search_grid,
    topk_search,
)
from metareid.inference.trained_model import (
    SUPPORTED_FORMAT,
    classifier_sizes,
    model_from_checkpoint,
    read_checkpoint,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "EXPORT_FORMATS",
    "IMAGE_EXTENSIONS",
    "ONNX_OPSET",
    "SUPPORTED_FORMAT",
    "EmbeddingNet",
    "Embeddings",
    "Extraction",
    "FeatureExtractor",
    "SearchResult",
    "classifier_sizes",
    "evaluate_checkpoint",
    "export_model",
    "list_images",
    "load_embeddings",
    "model_from_checkpoint",
    "names_to_ids",
    "read_checkpoint",
    "read_torchscript_metadata",
    "save_embeddings",
    "save_rankings",
    "search_grid",
    "topk_search",
]
