"""Spectral downsampling layers: ``DiffStride2d`` (learnable strides) and ``SpectralPool2d``.

Semantics: ``docs/layers.md``. Both layers run the fast separable-matmul
path by default (``impl="matmul"``); ``impl="fft"`` runs the plain ``torch.fft``
reference (same numbers, used by tests and benchmarks). ``SpectralGain2d`` is the constant a
``SpectralPool2d`` head gives global average pooling (an ablation); ``FixedSeparable2d`` a
spectral layer frozen for export.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import spectral

__all__ = ["DiffStride2d", "SpectralPool2d", "SpectralGain2d", "FixedSeparable2d", "spectral_gain"]

_IMPLS = ("matmul", "fft")


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """One number or a pair -> a pair of floats, validated."""
    if isinstance(value, (int, float)):
        pair = (float(value), float(value))
    else:
        pair = tuple(float(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be one number or a pair (height, width), got {value!r}")
    return pair  # type: ignore[return-value]


def _check_input(x: Tensor, layer: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{layer} expects a 4-D input (batch, channels, height, width), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{layer} expects a floating-point input, got {x.dtype}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Spectral maths stays in float32 under autocast (bf16/fp16 inputs are upcast)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _separable_input(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype`` and the standard layout ``apply_separable`` views as ``(N, H, W)`` maps.

    One copy: a bf16 channels-last activation (autocast + channels-last training) would
    otherwise be copied twice, cast by ``to(dtype)`` keeping its layout, then made
    contiguous by the reshape in ``apply_separable``. Same values, so the same output and
    gradients; a float32 contiguous input is returned as it is.
    """
    return x.to(dtype, memory_format=torch.contiguous_format)


@spectral._cached(maxsize=128)
def _stride_floor(size: tuple[int, int], smoothness: float, shared: bool, device: torch.device,
                  dtype: torch.dtype) -> Tensor:
    """``H/(H-R)``, ``W/(W-R)`` (their max if shared) as a tensor on ``device``.

    Cached: made from Python numbers, it would cost a blocking host-to-device copy at
    every forward. ``dtype`` is the default dtype, what ``torch.tensor`` of the numbers gives.
    """
    r = smoothness
    floor = torch.tensor([size[0] / (size[0] - r), size[1] / (size[1] - r)], dtype=dtype, device=device)
    return floor.max().reshape(1) if shared else floor


class DiffStride2d(nn.Module):
    """Learnable-stride spectral downsampling (Riad et al., ICLR 2022).

    Args:
        stride: initial stride, one number or ``(s_h, s_w)``; learnable parameter ``stride``.
        smoothness: ``R``, the width of the mask's linear ramp in frequency bins (>= 0).
        shared_stride: learn a single stride used for both axes.
        lower_limit / upper_limit: clip range of the stride after the size projection.
        impl: ``"matmul"`` (fast path) or ``"fft"`` (reference).

    Shape: ``(B, C, H, W) -> (B, C, h, w)`` with ``h ~ H/s_h + 2R`` (see the design note);
    ``H`` and ``W`` must exceed ``R`` (a ``ValueError`` otherwise: the reference divides by
    zero there, we refuse instead of clamping).

    As in the official code, each forward first raises the parameter in place to the
    size floor, ``s <- max(s, H/(H-R))`` (its ``assign``: no gradient), then uses
    ``clip(s, lower, upper)`` with the clip's gradient inclusive at the bounds (its stride
    constraint called in the graph). The official Keras constraint also clips the variable
    after every optimiser step: call :meth:`constrain_` there (``training.train`` does).
    """

    def __init__(
        self,
        stride: float | Sequence[float] = (2.0, 2.0),
        smoothness: float = 4.0,
        shared_stride: bool = False,
        lower_limit: float = 1.0,
        upper_limit: float | None = None,
        impl: str = "matmul",
    ) -> None:
        super().__init__()
        stride_pair = _pair(stride, "stride")
        if min(stride_pair) < 1.0 or not all(torch.isfinite(torch.tensor(stride_pair))):
            raise ValueError(f"DiffStride2d stride must be finite and >= 1, got {stride!r}")
        if smoothness < 0:
            raise ValueError(f"smoothness must be >= 0, got {smoothness}")
        if lower_limit < 1.0 or (upper_limit is not None and upper_limit < lower_limit):
            raise ValueError(f"need 1 <= lower_limit <= upper_limit, got {lower_limit}, {upper_limit}")
        if shared_stride and stride_pair[0] != stride_pair[1]:
            raise ValueError(f"shared_stride needs equal initial strides, got {stride_pair}")
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        self.smoothness = float(smoothness)
        self.shared_stride = shared_stride
        self.lower_limit = float(lower_limit)
        self.upper_limit = None if upper_limit is None else float(upper_limit)
        self.impl = impl
        initial = stride_pair[:1] if shared_stride else stride_pair
        self.stride = nn.Parameter(torch.tensor(initial, dtype=torch.float32))

    def extra_repr(self) -> str:
        strides = ", ".join(f"{s:.3f}" for s in self.stride.detach().tolist())
        return f"stride=({strides}), smoothness={self.smoothness}, shared_stride={self.shared_stride}"

    def _check_size(self, size: tuple[int, int]) -> None:
        if min(size) <= self.smoothness or min(size) < 2:
            raise ValueError(
                f"DiffStride2d needs height and width > smoothness R={self.smoothness} (and >= 2), "
                f"got a {size[0]}x{size[1]} map"
            )

    @torch.compiler.disable
    @torch.no_grad()
    def project_(self, size: tuple[int, int]) -> None:
        """Raise the stride to the floor ``H/(H-R)`` of an ``H x W`` input (in place, no gradient).

        Writes through ``.data``: the value changes as the official ``assign`` does, without
        bumping the parameter's autograd version. A layer runs twice per block (main branch
        and shortcut), and under ``torch.compile`` the first call's graph saves the
        parameter itself for backward: a version bump by the second call's projection (even
        to the same value) would fail that backward. Kept out of compiled graphs: a
        parameter mutation there is replayed after the graph.
        """
        self._check_size(size)
        floor = _stride_floor(size, self.smoothness, self.shared_stride, self.stride.device, torch.get_default_dtype())
        self.stride.data.copy_(torch.maximum(self.stride.data, floor))

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clip the parameter to ``[lower_limit, upper_limit]`` in place (after an optimiser step)."""
        self.stride.clamp_(self.lower_limit, self.upper_limit)

    def stride_pair(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The stride as used, ``clip(s, lower, upper)`` as ``(s_h, s_w)`` (differentiable)."""
        stride = spectral.inclusive_clip(self.stride.to(dtype), self.lower_limit, self.upper_limit)
        return stride.expand(2) if self.shared_stride else stride

    def crop(self, size: tuple[int, int]) -> tuple[spectral.AxisCrop, spectral.AxisCrop]:
        """The crop boxes (height, width) this layer applies to an ``H x W`` map now."""
        self._check_size(size)
        return spectral.diffstride_crop(self.stride_pair(torch.float64), size, self.smoothness)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        crop_h, crop_w = self.crop(size)
        return crop_h.out_size, crop_w.out_size

    def operators(self, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """Separable operators ``(left (2,h,H), right (2,W,w))`` at the current stride."""
        return spectral.diffstride_operators(self.stride_pair(dtype), size, self.smoothness)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, "DiffStride2d")
        size = (x.shape[-2], x.shape[-1])
        self.project_(size)
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            if self.impl == "fft":
                return spectral.diffstride_fft(x.to(dtype), self.stride_pair(dtype), self.smoothness)
            return spectral.apply_separable(_separable_input(x, dtype), *self.operators(size, dtype))


class SpectralPool2d(nn.Module):
    """Fixed spectral pooling: crop the low frequencies, invert on the small grid.

    Args:
        stride: one number or ``(s_h, s_w)`` (>= 1, not learnable).
        transform: ``"fourier"`` (the DiffStride paper's baseline; ``h_out = floor(H/s_h)``
            rounded down to even, ``w_out = floor(W/s_w)``) or ``"hartley"`` (Zhang & Ma
            2020; centred crop of ``floor(size/s)`` per axis, inverse DHT).
        impl: ``"matmul"`` (fast path) or ``"fft"`` (reference).

    Shape: ``(B, C, H, W) -> (B, C, h_out, w_out)``, both at least 2.
    """

    def __init__(self, stride: float | Sequence[float] = (2, 2), transform: str = "fourier", impl: str = "matmul") -> None:
        super().__init__()
        self.stride = _pair(stride, "stride")
        if min(self.stride) < 1.0:
            raise ValueError(f"SpectralPool2d stride must be >= 1, got {stride!r}")
        if transform not in ("fourier", "hartley"):
            raise ValueError(f"transform must be 'fourier' or 'hartley', got {transform!r}")
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        self.transform = transform
        self.impl = impl

    def extra_repr(self) -> str:
        return f"stride={self.stride}, transform={self.transform!r}"

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.transform == "fourier":
            return spectral.spectral_pool_size(size, self.stride)
        return spectral.hartley_pool_size(size, self.stride)

    def operators(self, size: tuple[int, int], dtype: torch.dtype = torch.float32, device=None) -> tuple[Tensor, Tensor]:
        device = torch.device("cpu") if device is None else torch.device(device)
        build = spectral.fourier_pool_operators if self.transform == "fourier" else spectral.hartley_pool_operators
        return build(tuple(size), self.stride, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, "SpectralPool2d")
        if min(x.shape[-2:]) < 2:
            raise ValueError(f"SpectralPool2d needs maps of at least 2x2, got {tuple(x.shape[-2:])}")
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            if self.impl == "fft":
                pool = spectral.fourier_pool_fft if self.transform == "fourier" else spectral.hartley_pool_fft
                return pool(x.to(dtype), self.stride)
            operators = self.operators((x.shape[-2], x.shape[-1]), dtype, x.device)
            return spectral.apply_separable(_separable_input(x, dtype), *operators)


def spectral_gain(size: tuple[int, int], stride: tuple[float, float], transform: str) -> float:
    """``GAP(SpectralPool2d(x)) / GAP(x)`` for an ``H x W`` input: the pooling's DC gain.

    Only the DC bin reaches the mean and it passes the crop unchanged, so the ratio is the
    normalisation alone: ``HW/(h*w)`` for Fourier (unscaled ``rfft2``, ``1/(h*w)``
    ``irfft2``) and ``sqrt(HW/(h*w))`` for Hartley (orthonormal DHT both ways), with
    ``(h, w)`` the pooled size. Plain Python (traceable); ``tests/test_head.py`` checks it
    against the layer.
    """
    h_out, w_out = SpectralPool2d(stride, transform=transform).output_size(size)
    ratio = size[0] * size[1] / (h_out * w_out)
    return ratio if transform == "fourier" else math.sqrt(ratio)


class SpectralGain2d(nn.Module):
    """Multiply by the gain a :class:`SpectralPool2d` head would give global average pooling.

    ``y = c(H, W) * x`` with ``c = GAP(SpectralPool2d(stride, transform)(x)) / GAP(x)``, a
    constant per input size (4.5 for Fourier and 2.0 for Hartley at 18x18, stride 2). Put
    before global average pooling, it gives the classifier exactly what a spectral pooling
    head would, without the pooling: the ``diffstride_scaled`` ablation. No parameters.
    Shape: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, stride: float | Sequence[float] = 2.0, transform: str = "hartley") -> None:
        super().__init__()
        pool = SpectralPool2d(stride, transform=transform)  # validates both arguments
        self.stride, self.transform = pool.stride, pool.transform

    def gain(self, size: tuple[int, int]) -> float:
        return spectral_gain((int(size[0]), int(size[1])), self.stride, self.transform)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, transform={self.transform!r}"

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain(tuple(x.shape[-2:]))


class FixedSeparable2d(nn.Module):
    """A spectral layer frozen for one input size: ``y = sum_t L_t x R_t`` with constant buffers.

    What ``hybrid_model.freeze`` puts in place of ``DiffStride2d``/``SpectralPool2d`` for
    export: only matrix products, so both ONNX exporters handle it and the graph has
    static shapes. ``source`` remembers the layer it replaced (for introspection).
    """

    def __init__(self, left: Tensor, right: Tensor, in_size: tuple[int, int], source: str) -> None:
        super().__init__()
        # Copies: the operators of a fixed pooling are the cached ones, which a later
        # ``load_state_dict`` into these buffers (an in-place copy) must not overwrite.
        self.register_buffer("left", left.detach().float().contiguous().clone())
        self.register_buffer("right", right.detach().float().contiguous().clone())
        self.in_size = tuple(in_size)
        self.source = source

    def extra_repr(self) -> str:
        return f"{self.source}: {self.in_size} -> {tuple(self.left.shape[1:2]) + tuple(self.right.shape[-1:])}"

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(f"frozen {self.source} expects {self.in_size} maps, got {tuple(x.shape[-2:])}")
        # Two plain products per term: exports cleanly with opset >= 17 (MatMul + Add).
        terms = [self.left[t] @ x.float() @ self.right[t] for t in range(self.left.shape[0])]
        return torch.stack(terms).sum(0)
