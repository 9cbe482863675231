"""Learnable-stride spectral downsampling for CNNs.

DiffStride (Riad et al., ICLR 2022), fixed Fourier/Hartley spectral pooling, and the CIFAR
ResNet-18 variants built from them, including the "hybrid" (DiffStride + spectral pooling
head). Exact semantics: ``docs/layers.md``.

The names below that need torch are imported on first use, so that the numpy-only
``hybrid_model.spectra`` can serve a process without torch (the dashboard's server).
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Public name -> the submodule that defines it.
_LAZY = {
    "AxisCrop": "spectral",
    "DiffStride2d": "layers",
    "FixedSeparable2d": "layers",
    "SpectralPool2d": "layers",
    "LayerInfo": "introspect",
    "describe_downsampling": "introspect",
    "describe_head": "introspect",
    "layer_transforms": "introspect",
    "forward_features": "introspect",
    "freeze": "introspect",
    "model_cost": "introspect",
    "PAPER_STRIDES": "resnet",
    "PAPER_VARIANTS": "resnet",
    "SpectralGain2d": "resnet",
    "VARIANTS": "resnet",
    "SpectralResNet": "resnet",
    "build_model": "resnet",
    "build_from_card": "resnet",
    "learned_strides": "resnet",
    "stride_parameters": "resnet",
}

__all__ = [
    "AxisCrop",
    "DiffStride2d",
    "FixedSeparable2d",
    "LayerInfo",
    "PAPER_STRIDES",
    "PAPER_VARIANTS",
    "SpectralGain2d",
    "SpectralPool2d",
    "SpectralResNet",
    "VARIANTS",
    "build_from_card",
    "build_model",
    "describe_downsampling",
    "describe_head",
    "forward_features",
    "freeze",
    "layer_transforms",
    "learned_strides",
    "model_cost",
    "stride_parameters",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .introspect import (
        LayerInfo, describe_downsampling, describe_head, forward_features, freeze, layer_transforms, model_cost,
    )
    from .layers import DiffStride2d, FixedSeparable2d, SpectralPool2d
    from .resnet import (
        PAPER_STRIDES, PAPER_VARIANTS, VARIANTS, SpectralGain2d, SpectralResNet, build_from_card, build_model, learned_strides,
        stride_parameters,
    )
    from .spectral import AxisCrop
