"""Int8 weight-only checkpoints: how trained models come back from a GPU window.

A device call returns at most 8 files of 16 MiB each, 64 MiB in all; a float32 ResNet-18
checkpoint is 45 MB and an fp16 one 22 MB, so five do not fit one call. Here every
convolution / linear weight is stored as int8 with one float32 scale per output channel
(symmetric, ``scale = max|w| / 127``), everything else (BatchNorm, biases, learned
strides) as float32: ~11.3 MB per ResNet-18, five in one call. The accuracy the
compression costs is measured on the GPU right after training (``compression`` in the card,
see ``gpu_window``), and ``exports.ingest`` checks the bundled ONNX file against
the uncompressed model's accuracy.

File: one ``.safetensors`` per model; int8 tensor ``K`` plus float32 ``K.__scale__``; the
metadata holds ``format`` and the training ``card`` (JSON), so one file is one model.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from serving.files import atomic_write_bytes

__all__ = ["FORMAT", "SCHEME", "dequantize_state_dict", "quantize_state_dict", "read_compact", "write_compact"]

FORMAT = "hybrid-int8-v1"
SCHEME = "int8 weight-only, symmetric, one scale per output channel (conv/linear weights); rest float32"
_SCALE = ".__scale__"
#: Tensors smaller than this stay float32 (the saving is nil, the error is not).
MIN_ELEMENTS = 1024


def _quantizable(value: torch.Tensor) -> bool:
    return value.is_floating_point() and value.dim() >= 2 and value.numel() >= MIN_ELEMENTS


def quantize_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """int8 + per-output-channel scales for conv/linear weights, float32 for the rest (CPU tensors)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if not _quantizable(value):
            out[key] = (value.float() if value.is_floating_point() else value).contiguous().clone()
            continue
        flat = value.float().reshape(value.shape[0], -1)
        scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        out[key] = torch.round(flat / scale[:, None]).clamp_(-127, 127).to(torch.int8).reshape(value.shape).contiguous()
        out[key + _SCALE] = scale.contiguous()
    return out


def dequantize_state_dict(packed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 ``state_dict`` back from :func:`quantize_state_dict`'s output."""
    state: dict[str, torch.Tensor] = {}
    for key, value in packed.items():
        if key.endswith(_SCALE):
            continue
        scale = packed.get(key + _SCALE)
        if scale is None:
            state[key] = value
        else:
            state[key] = (value.float().reshape(value.shape[0], -1) * scale[:, None].float()).reshape(value.shape)
    return state


def write_compact(path: str | os.PathLike, state: Mapping[str, torch.Tensor], card: Mapping[str, Any]) -> Path:
    """Quantize ``state`` and write it with ``card`` to ``path`` atomically."""
    metadata = {"format": FORMAT, "card": json.dumps(card, separators=(",", ":"))}
    return atomic_write_bytes(path, save(quantize_state_dict(state), metadata=metadata))


def read_compact(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(float32 state_dict, card)`` of a file from :func:`write_compact`; ``ValueError`` if it is not one."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            packed = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0] if str(error) else error})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not an int8 window checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    try:
        card = json.loads(metadata["card"])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{path}: its embedded card is missing or not JSON") from None
    return dequantize_state_dict(packed), card
