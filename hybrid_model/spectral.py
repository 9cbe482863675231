"""Functional core of the spectral layers.

Everything here follows ``docs/layers.md`` (the official code's conventions). Each layer exists twice:

* a *reference* written with ``torch.fft`` exactly as the design note (and the public
  TensorFlow DiffStride code) describes it, kept for tests and benchmarks, and
* a *fast* path that writes the same linear map as a sum of separable products
  ``y = sum_t L_t @ x @ R_t`` with small real matrices built from cached DFT/Hartley
  bases.  The DiffStride masks enter ``L``/``R`` differentiably, so the stride still
  receives its gradient.

Shapes: ``x`` is ``(..., H, W)``; operators are ``left: (T, h, H)`` and ``right: (T, W, w)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache, wraps

import torch
from torch import Tensor

__all__ = [
    "AxisCrop",
    "inclusive_clip",
    "diffstride_crop",
    "diffstride_fft",
    "diffstride_operators",
    "spectral_pool_size",
    "fourier_pool_fft",
    "fourier_pool_operators",
    "hartley_pool_size",
    "hartley_pool_fft",
    "hartley_pool_operators",
    "apply_separable",
]


# --------------------------------------------------------------------------------------
# Caching: what a step would otherwise rebuild (and copy to the device) every time
# --------------------------------------------------------------------------------------
def _cached(maxsize: int):
    """``lru_cache`` whose values are always built outside ``torch.inference_mode``.

    A basis first built under inference mode would be an inference tensor, and every later
    training forward that saves it for backward would fail.
    """

    def decorate(fn):
        @lru_cache(maxsize=maxsize)
        @wraps(fn)
        def build(*args):
            with torch.inference_mode(False):
                return fn(*args)

        return build

    return decorate


@_cached(maxsize=512)
def _index_tensor(indices: tuple[int, ...], device: torch.device) -> Tensor:
    """``indices`` as an int64 tensor on ``device``: what indexing with the Python list makes.

    Indexing a device tensor with a list builds the index on the host and copies it over
    (a blocking host-to-device copy) at every call; the crops repeat, so build each once.
    """
    return torch.tensor(indices, dtype=torch.long, device=device)


# --------------------------------------------------------------------------------------
# DiffStride: frequency positions, masks and crops
# --------------------------------------------------------------------------------------
@cache
def _height_positions(n: int) -> tuple[int, ...]:
    """Positions of the full-FFT height bins, as the reference computes them.

    ``fftshift(concat(reverse(r[n % 2:]), r))`` with ``r = 0..ceil(n/2)-1``; e.g. n=32 gives
    ``[0..15, 15, 14, ..., 1, 0]`` (the -1 frequency gets position 0; asymmetric on purpose).
    """
    r = list(range((n + 1) // 2))
    pos = list(reversed(r[n % 2:])) + r
    shift = n // 2  # fftshift == roll by n // 2
    return tuple(pos[(i - shift) % n] for i in range(n))


@_cached(maxsize=256)
def _position_tensor(n: int, axis: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    values = _height_positions(n) if axis == "h" else tuple(range(n // 2 + 1))
    return torch.tensor(values, dtype=dtype, device=device)


def _positions(n: int, axis: str, like: Tensor) -> Tensor:
    """Frequency positions of one axis: ``"h"`` full spectrum, ``"w"`` rfft half-spectrum.

    Cached per (n, axis, dtype, device): made from a Python tuple, the tensor would cost a
    blocking host-to-device copy at every forward.
    """
    return _position_tensor(n, axis, like.dtype, like.device)


def inclusive_clip(value: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    """``clip(value, low, high)`` whose gradient is 1 *at* the bounds too (0 only strictly outside).

    This is the gradient of TensorFlow's ``clip_by_value`` and of ``tf.maximum(x, c)`` at a
    tie (the first argument gets it), which the official DiffStride relies on: with integer
    strides on even maps the last pass-band bin sits exactly on 1. ``torch.clamp`` gives 0
    there and silently drops part of the stride gradient (design note, step 4).
    """
    if low is not None:
        value = torch.where(value < low, torch.full_like(value, low), value)
    if high is not None:
        value = torch.where(value > high, torch.full_like(value, high), value)
    return value


def _ramp_mask(positions: Tensor, threshold: Tensor, smoothness: float) -> Tensor:
    """``clip((R + t - p) / R, 0, 1)``; for ``R == 0`` a hard box ``p < t`` (no stride gradient)."""
    if smoothness > 0:
        # (1/R) * (...) rather than (...) / R: the official float32 arithmetic, bit for bit.
        return inclusive_clip((1.0 / smoothness) * (smoothness + threshold - positions), 0.0, 1.0)
    return (positions < threshold).to(positions.dtype)


@dataclass(frozen=True)
class AxisCrop:
    """What a spectral layer keeps along one axis (frequencies in bins of the input grid).

    ``pass_to``: bins with position ``<= pass_to`` pass unchanged (mask 1);
    ``cut_at``: bins with position ``>= cut_at`` are removed (mask 0); between the two lies
    the ramp (smoothness) band.  ``kept`` is the number of kept bins, ``out_size`` the
    output length of the axis.
    """

    size: int
    pass_to: float
    cut_at: float
    kept: int
    out_size: int


def _diffstride_masks(stride: Tensor, size: tuple[int, int], smoothness: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Masks ``m_h`` (H,), ``m_w`` (W//2+1,) and thresholds ``t_h``, ``t_w`` for a stride (2,)."""
    height, width = size
    # max(H/S, 2) as ``tf.maximum``: at a tie the gradient still reaches the stride.
    box_h = inclusive_clip(height / stride[0], low=2.0)
    box_w = inclusive_clip(width / stride[1], low=2.0)
    t_h, t_w = box_h / 2, box_w / 2 + 1
    m_h = _ramp_mask(_positions(height, "h", stride), t_h, smoothness)
    m_w = _ramp_mask(_positions(width, "w", stride), t_w, smoothness)
    return m_h, m_w, t_h, t_w


def _true_indices(flags: list[bool]) -> tuple[int, ...]:
    return tuple(i for i, flag in enumerate(flags) if flag)


def _kept_pair(m_h: Tensor, m_w: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Indices with a non-zero mask on each axis (the crop, under stop-gradient), read at once.

    The crop depends on the stride's current value, so the host has to read something
    from the device once per call (a synchronisation on a GPU); that is the only one a
    forward makes. ``nonzero`` would add one per axis (its output size is data-dependent,
    so it synchronises by itself) on top of the read of each axis.
    """
    flags = torch.cat([m_h.detach() > 0, m_w.detach() > 0]).tolist()
    return _true_indices(flags[: m_h.shape[0]]), _true_indices(flags[m_h.shape[0] :])


def diffstride_crop(stride: Tensor, size: tuple[int, int], smoothness: float) -> tuple[AxisCrop, AxisCrop]:
    """The crop boxes a DiffStride layer with this (projected) stride applies to an HxW map."""
    m_h, m_w, t_h, t_w = _diffstride_masks(stride.detach(), size, smoothness)
    keep_h, keep_w = _kept_pair(m_h, m_w)
    kept_h, kept_w = len(keep_h), len(keep_w)
    t_h, t_w = torch.stack([t_h, t_w]).tolist()  # one read for both (``float()`` of each is two)
    return (
        AxisCrop(size[0], t_h, t_h + smoothness, kept_h, kept_h),
        AxisCrop(size[1], t_w, t_w + smoothness, kept_w, 2 * (kept_w - 1)),
    )


def diffstride_fft(x: Tensor, stride: Tensor, smoothness: float) -> Tensor:
    """Reference DiffStride with ``torch.fft`` (design note steps 2-6).

    x: (..., H, W) real; stride: (2,) already projected. Returns (..., h_out, w_out).
    """
    m_h, m_w, _, _ = _diffstride_masks(stride, x.shape[-2:], smoothness)
    keep_h, keep_w = _kept_pair(m_h, m_w)
    spectrum = torch.fft.rfft2(x) * m_w * m_h[:, None]  # the official order: width mask first
    spectrum = spectrum[..., _index_tensor(keep_h, x.device), :][..., _index_tensor(keep_w, x.device)]
    return torch.fft.irfft2(spectrum)


# --------------------------------------------------------------------------------------
# Cached bases of the fast path
# --------------------------------------------------------------------------------------
def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _unit_phasor(angle: Tensor) -> Tensor:
    """``exp(i * angle)`` for a float64 angle tensor."""
    return torch.polar(torch.ones_like(angle), angle)


@_cached(maxsize=512)
def _dft_rows(n: int, bins: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Forward DFT rows ``exp(-2 pi i k m / n)`` for the given bins: (len(bins), n) complex."""
    k = torch.tensor(bins, dtype=torch.float64)[:, None]
    m = torch.arange(n, dtype=torch.float64)[None, :]
    return _unit_phasor(-2 * math.pi * k * m / n).to(device, _complex_dtype(dtype))


@_cached(maxsize=512)
def _inverse_dft(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Inverse DFT ``exp(2 pi i j k / n) / n``: (n, n) complex, maps bin k to sample j."""
    j = torch.arange(n, dtype=torch.float64)
    return (_unit_phasor(2 * math.pi * j[:, None] * j[None, :] / n) / n).to(device, _complex_dtype(dtype))


@_cached(maxsize=512)
def _inverse_rdft(n_out: int, n_bins: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The c2r inverse (``irfft`` of length ``n_out`` from ``n_bins`` bins) as ``Re(E^T X)``.

    Returns E: (n_bins, n_out) complex with weight 1 for DC and (even n_out) Nyquist, 2 for
    the others, divided by n_out.  Taking the real part drops the imaginary parts of DC and
    Nyquist exactly as pocketfft/cuFFT c2r do.
    """
    k = torch.arange(n_bins, dtype=torch.float64)
    weight = torch.full((n_bins,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if n_out % 2 == 0 and n_bins == n_out // 2 + 1:
        weight[-1] = 1.0
    phase = 2 * math.pi * k[:, None] * torch.arange(n_out, dtype=torch.float64)[None, :] / n_out
    return (_unit_phasor(phase) * (weight[:, None] / n_out)).to(device, _complex_dtype(dtype))


def _height_operator(size: int, bins: Sequence[int], mask: Tensor, n_out: int) -> Tensor:
    """Complex (n_out, size): full FFT, keep ``bins`` (masked), inverse FFT of length n_out."""
    rows = _dft_rows(size, tuple(bins), mask.device, mask.dtype)
    return _inverse_dft(n_out, mask.device, mask.dtype) @ (mask[:, None] * rows)  # real mask * complex


def _width_operator(size: int, n_bins: int, mask: Tensor, n_out: int) -> Tensor:
    """Complex (size, n_out): rfft, keep the first ``n_bins`` bins (masked), irfft to n_out."""
    rows = _dft_rows(size, tuple(range(n_bins)), mask.device, mask.dtype)
    return rows.transpose(0, 1) @ (mask[:, None] * _inverse_rdft(n_out, n_bins, mask.device, mask.dtype))


def _real_part_terms(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """``Re(A x P) = A_r x P_r - A_i x P_i`` as two separable terms (T=2)."""
    return torch.stack([left.real, left.imag]), torch.stack([right.real, -right.imag])


def diffstride_operators(stride: Tensor, size: tuple[int, int], smoothness: float) -> tuple[Tensor, Tensor]:
    """Separable operators (``left`` (2, h, H), ``right`` (2, W, w)) of DiffStride.

    Differentiable in ``stride`` (its masks enter the matrices); dtype follows ``stride``.
    """
    m_h, m_w, _, _ = _diffstride_masks(stride, size, smoothness)
    keep_h, keep_w = _kept_pair(m_h, m_w)
    left = _height_operator(size[0], keep_h, m_h[_index_tensor(keep_h, m_h.device)], len(keep_h))
    right = _width_operator(size[1], len(keep_w), m_w[: len(keep_w)], 2 * (len(keep_w) - 1))
    return _real_part_terms(left, right)


# --------------------------------------------------------------------------------------
# Fixed Fourier spectral pooling (the DiffStride paper's spectral baseline)
# --------------------------------------------------------------------------------------
def spectral_pool_size(size: tuple[int, int], stride: tuple[float, float]) -> tuple[int, int]:
    """``h_out = floor(H/s_h)`` rounded down to even, ``w_out = floor(W/s_w)``, both >= 2."""
    h_out = max(int(size[0] // stride[0]) // 2 * 2, 2)
    w_out = max(int(size[1] // stride[1]), 2)
    return h_out, w_out


def _fourier_height_bins(height: int, h_out: int) -> list[int]:
    half = h_out // 2
    return list(range(half)) + list(range(height - half, height))


def fourier_pool_fft(x: Tensor, stride: tuple[float, float]) -> Tensor:
    """Reference fixed spectral pooling: crop ``rfft2(x)`` and ``irfft2`` to (h_out, w_out)."""
    height, width = x.shape[-2:]
    h_out, w_out = spectral_pool_size((height, width), stride)
    spectrum = torch.fft.rfft2(x)[..., _fourier_height_bins(height, h_out), :][..., : w_out // 2 + 1]
    return torch.fft.irfft2(spectrum, s=(h_out, w_out))


def fourier_pool_operators(
    size: tuple[int, int], stride: tuple[float, float], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Two separable terms (``left`` (2, h, H), ``right`` (2, W, w)) of fixed spectral pooling.

    Constant for a (size, stride, device, dtype): built once (cached) rather than every step.
    """
    return _fourier_pool_operators(tuple(size), tuple(stride), torch.device(device), dtype)


@_cached(maxsize=128)
def _fourier_pool_operators(
    size: tuple[int, int], stride: tuple[float, float], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    h_out, w_out = spectral_pool_size(size, stride)
    ones_h = torch.ones(h_out, dtype=dtype, device=device)
    ones_w = torch.ones(w_out // 2 + 1, dtype=dtype, device=device)
    left = _height_operator(size[0], _fourier_height_bins(size[0], h_out), ones_h, h_out)
    right = _width_operator(size[1], w_out // 2 + 1, ones_w, w_out)
    return _real_part_terms(left, right)


# --------------------------------------------------------------------------------------
# Hartley spectral pooling (Zhang & Ma 2020)
# --------------------------------------------------------------------------------------
def hartley_pool_size(size: tuple[int, int], stride: tuple[float, float]) -> tuple[int, int]:
    """``floor(size / stride)`` per axis, at least 2 (the DHT is real: no even rounding)."""
    return tuple(min(max(int(n // s), 2), n) for n, s in zip(size, stride))  # type: ignore[return-value]


def _centred_frequencies(n_out: int) -> list[int]:
    """Signed frequencies of a centred crop of length n_out: ``[-n_out//2, n_out - n_out//2)``."""
    return list(range(-(n_out // 2), n_out - n_out // 2))


def _dht(x: Tensor) -> Tensor:
    """Unnormalised 2-D DHT: ``Re(F(x)) - Im(F(x))``."""
    spectrum = torch.fft.fft2(x)
    return spectrum.real - spectrum.imag


def _hartley_scale(size: tuple[int, int], out_size: tuple[int, int]) -> float:
    """``1 / sqrt(H W h w)``: the orthonormal DHT in both directions, as the Hartley pooling
    authors' code applies it (the self-inverse transform of the hybrid paper's Algorithm 1)."""
    return 1.0 / math.sqrt(size[0] * size[1] * out_size[0] * out_size[1])


def hartley_pool_fft(x: Tensor, stride: tuple[float, float]) -> Tensor:
    """Reference Hartley pooling: orthonormal DHT, centred crop, orthonormal DHT on the small grid."""
    height, width = x.shape[-2:]
    h_out, w_out = hartley_pool_size((height, width), stride)
    top, left = height // 2 - h_out // 2, width // 2 - w_out // 2
    centred = torch.fft.fftshift(_dht(x), dim=(-2, -1))[..., top : top + h_out, left : left + w_out]
    return _dht(torch.fft.ifftshift(centred, dim=(-2, -1))) * _hartley_scale((height, width), (h_out, w_out))


@_cached(maxsize=256)
def _cas_pair(n_in: int, freqs: tuple[int, ...], n_grid: int, device: torch.device, dtype: torch.dtype):
    """cos / sin / cas(+) / cas(-) of ``2 pi f m / n_grid`` for m < n_in: each (len(freqs), n_in)."""
    f = torch.tensor(freqs, dtype=torch.float64)[:, None]
    angle = 2 * math.pi * f * torch.arange(n_in, dtype=torch.float64)[None, :] / n_grid
    cos, sin = torch.cos(angle), torch.sin(angle)
    return tuple(t.to(device, dtype) for t in (cos, sin, cos + sin, cos - sin))


@_cached(maxsize=128)
def hartley_pool_operators(
    size: tuple[int, int], stride: tuple[float, float], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Four separable terms (``left`` (4, h, H), ``right`` (4, W, w)) of Hartley pooling.

    Uses ``cas(a + b) = cos(a) cas(b) + sin(a) cas(-b)`` for both the forward DHT on the
    input grid and the inverse DHT on the small grid.
    """
    (height, width), (h_out, w_out) = size, hartley_pool_size(size, stride)
    f_h, f_w = tuple(_centred_frequencies(h_out)), tuple(_centred_frequencies(w_out))
    cos1, sin1, _, _ = _cas_pair(height, f_h, height, device, dtype)  # (h, H)
    _, _, casp1, casm1 = _cas_pair(width, f_w, width, device, dtype)  # (w, W)
    cos2, sin2, _, _ = (t.transpose(0, 1) for t in _cas_pair(h_out, f_h, h_out, device, dtype))  # (h, h)
    _, _, casp2, casm2 = (t.transpose(0, 1) for t in _cas_pair(w_out, f_w, w_out, device, dtype))  # (w, w)
    scale = _hartley_scale(size, (h_out, w_out))
    left = torch.stack([cos2 @ cos1, cos2 @ sin1, sin2 @ cos1, sin2 @ sin1]) * scale
    right = torch.stack([casp2 @ casp1, casp2 @ casm1, casm2 @ casp1, casm2 @ casm1]).transpose(1, 2)
    return left.contiguous(), right.contiguous()


# --------------------------------------------------------------------------------------
# Applying separable operators
# --------------------------------------------------------------------------------------
#: Maps of at most this many pixels use one dense (H*W -> h*w) operator instead of two
#: thin GEMMs: with K = 8 the separable GEMMs are memory-bound (measured 2x slower on CPU
#: for 512x8x8 maps, fwd+bwd); from 16x16 on the separable form wins.
DENSE_MAX_PIXELS = 100


def apply_separable(x: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """``sum_t left[t] @ x @ right[t]`` without any layout copy of ``x`` or its gradient.

    x: (..., H, W); left: (T, h, H); right: (T, W, w) -> (..., h, w), contiguous.

    With N = prod(...) maps the work is one batched product with the (tiny) operator of the
    first axis broadcast over the batch (``bmm`` on an ``expand``: no copy), then one plain
    GEMM for the second axis.  The operator rows are interleaved by term so that the
    intermediate already has the layout the second product reads: height first gives
    ``z`` (N, h, T, W) and ``z.view(N*h, T*W) @ right.view(T*W, w)``; width first gives
    ``u`` (N, H, T, w) and ``left'(h, H*T) @ u_n.view(H*T, w)``.  Both forms are free of
    transposes in the backward pass as well, which was a third of the time of a
    permute-based version (measured, ``benchmarks/RESULTS.md``).  Small maps use one dense
    Kronecker operator instead.
    """
    *batch, height, width = x.shape
    terms, h_out, _ = left.shape
    w_out = right.shape[-1]
    if height * width <= DENSE_MAX_PIXELS:
        dense = sum(torch.kron(left[t], right[t].transpose(0, 1).contiguous()) for t in range(terms))  # (h*w, H*W)
        return (x.reshape(-1, height * width) @ dense.transpose(0, 1)).view(*batch, h_out, w_out)
    maps = x.reshape(-1, height, width)
    n = maps.shape[0]
    # Multiply-adds per map of each order (first product + second product); pick the cheaper.
    height_first = terms * h_out * width * (height + w_out)
    width_first = terms * height * w_out * (width + h_out)
    if height_first <= width_first:
        left_rows = left.transpose(0, 1).reshape(h_out * terms, height)  # row i*T + t
        z = torch.bmm(left_rows.expand(n, -1, -1), maps)  # (N, h*T, W)
        y = z.view(n * h_out, terms * width) @ right.reshape(terms * width, w_out)  # (N*h, w)
    else:
        right_cols = right.permute(1, 0, 2).reshape(width, terms * w_out)  # column t*w + k
        u = maps.reshape(n * height, width) @ right_cols  # (N*H, T*w)
        left_cols = left.permute(1, 2, 0).reshape(h_out, height * terms)  # column j*T + t
        y = torch.bmm(left_cols.expand(n, -1, -1), u.view(n, height * terms, w_out))  # (N, h, w)
    return y.view(*batch, h_out, w_out)
