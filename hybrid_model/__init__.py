"""Learnable-stride spectral downsampling for CNNs.

DiffStride (Riad et al., ICLR 2022), fixed Fourier/Hartley spectral pooling, and the CIFAR
ResNet-18 variants built from them, including the "hybrid" (DiffStride + spectral pooling
head). Exact semantics: ``docs/layers.md``.

Modules: ``spectral`` (the functional core: masks, crops, operators, ``torch.fft``
references), ``layers`` (the ``nn.Module`` layers), ``resnet`` (the model from injected
layers, the variants, the stride validator), ``introspect`` (listing, cost, freezing).
"""
from __future__ import annotations

from .introspect import (
    LayerInfo,
    describe_downsampling,
    describe_head,
    forward_features,
    freeze,
    layer_transforms,
    model_cost,
)
from .layers import DiffStride2d, FixedSeparable2d, SpectralGain2d, SpectralPool2d, spectral_gain
from .resnet import (
    PAPER_STRIDES,
    PAPER_VARIANTS,
    VARIANTS,
    SpectralResNet,
    Variant,
    build_from_card,
    build_model,
    learned_strides,
    parse_strides,
    stride_parameters,
    validate_strides,
)
from .spectral import AxisCrop

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
    "Variant",
    "build_from_card",
    "build_model",
    "describe_downsampling",
    "describe_head",
    "forward_features",
    "freeze",
    "layer_transforms",
    "learned_strides",
    "model_cost",
    "parse_strides",
    "spectral_gain",
    "stride_parameters",
    "validate_strides",
]
