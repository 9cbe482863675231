"""The torch-free serving side: ONNX sessions, the model registry, manifest, images, files.

Everything under ``exports.serving`` imports onnx/onnxruntime/numpy/PIL at most, never
torch, ``hybrid_model`` or ``training``: the dashboard and any server build on it alone.
"""
