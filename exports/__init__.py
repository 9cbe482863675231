"""Export tooling and the bundled models: ONNX export with model cards, parity checks,
int8/fp16 compression, and ingest of a GPU window's models into ``exports/models/``.

* ``python -m exports.export CHECKPOINT --out exports/models/NAME.onnx`` (see ``export.py``)
* ``python -m exports.parity MODEL.onnx CHECKPOINT`` (see ``parity.py``)
* ``python -m exports.ingest WINDOW_FOLDER...`` (see ``ingest.py``)

This package stands on ``training`` and ``hybrid_model`` (torch). Serving the exported
models needs none of it: that is the torch-free ``serving`` package.
"""
