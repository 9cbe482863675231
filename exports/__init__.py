"""Exported models: ONNX export with model cards, parity checks, and an onnxruntime runtime.

* ``python -m exports.export CHECKPOINT --out exports/models/NAME.onnx`` (see ``export.py``)
* ``python -m exports.parity MODEL.onnx CHECKPOINT`` (see ``parity.py``)
* serving: :class:`OnnxModel`, :class:`ModelRegistry`, :func:`load_image`, :func:`preprocess`

Importing ``exports`` does not import torch; ``exports.export``, ``exports.parity``'s CLI
and ``exports.checkpoint_io`` do.
"""
from .images import ImageError, load_image
from .registry import ModelEntry, ModelRegistry
from .runtime import ModelError, OnnxModel, Prediction, preprocess, select_providers

__all__ = [
    "ImageError",
    "ModelEntry",
    "ModelError",
    "ModelRegistry",
    "OnnxModel",
    "Prediction",
    "load_image",
    "preprocess",
    "select_providers",
]
