"""Learnable-stride spectral downsampling for CNNs.

DiffStride (Riad et al., ICLR 2022), fixed Fourier/Hartley spectral pooling, and the CIFAR
ResNet-18 variants built from them, including the "hybrid" (DiffStride + spectral pooling
head). Exact semantics: ``shared/design/spectral-layers.md``.
"""
from .introspect import LayerInfo, describe_downsampling, forward_features, freeze, log_spectrum, model_cost
from .layers import DiffStride2d, FixedSeparable2d, SpectralPool2d
from .resnet import PAPER_STRIDES, VARIANTS, SpectralResNet, build_model, learned_strides, stride_parameters
from .spectral import AxisCrop

__all__ = [
    "AxisCrop",
    "DiffStride2d",
    "FixedSeparable2d",
    "LayerInfo",
    "PAPER_STRIDES",
    "SpectralPool2d",
    "SpectralResNet",
    "VARIANTS",
    "build_model",
    "describe_downsampling",
    "forward_features",
    "freeze",
    "learned_strides",
    "log_spectrum",
    "model_cost",
    "stride_parameters",
]
