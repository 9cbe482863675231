"""The torch-free serving package, the ground floor: what a server needs to run exported models.

* ``runtime`` - :class:`OnnxModel` (onnxruntime sessions), :func:`preprocess`, ``STAGES``
* ``registry`` - :class:`ModelRegistry`: the models of a folder, validated, loaded lazily
* ``manifest`` - ``manifest.json`` of a models folder (read, update, drop rows)
* ``images`` - :func:`load_image`: uploads to RGB images, with clear errors
* ``spectra`` - :func:`log_spectrum` (numpy)
* ``cards`` - :class:`RunCard`: the one typed run card (trainer, sweep, exporter, registry, dashboard)
* ``cifar`` - CIFAR-10/100 class names and input mean/std
* ``variants`` - the variant catalogue: names, table order, labels
* ``files`` - atomic writes and ``file_sha256``

Nothing under ``serving`` imports torch, ``hybrid_model`` or ``training`` (numpy,
Pillow, onnx and onnxruntime only): the dashboard and any other server build on it alone.
"""
from .images import ImageError, load_image
from .registry import ModelEntry, ModelRegistry
from .runtime import STAGES, ModelError, OnnxModel, Prediction, preprocess, select_providers
from .spectra import log_spectrum

__all__ = [
    "ImageError",
    "ModelEntry",
    "ModelError",
    "ModelRegistry",
    "OnnxModel",
    "Prediction",
    "STAGES",
    "load_image",
    "log_spectrum",
    "preprocess",
    "select_providers",
]
