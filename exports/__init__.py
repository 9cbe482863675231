"""Exported models: ONNX export with model cards, parity checks, and the serving runtime.

* ``python -m exports.export CHECKPOINT --out exports/models/NAME.onnx`` (see ``export.py``)
* ``python -m exports.parity MODEL.onnx CHECKPOINT`` (see ``parity.py``)
* serving (``exports.serving``, torch-free): :class:`OnnxModel`, :class:`ModelRegistry`,
  :func:`load_image`, :func:`preprocess`, re-exported here

Importing ``exports`` or ``exports.serving`` does not import torch; ``exports.export``,
``exports.parity``'s CLI and ``training.checkpoint`` do.
"""
from .serving import *  # noqa: F403 (the torch-free serving API, re-exported as is)
from .serving import __all__  # noqa: F401
