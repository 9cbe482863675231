"""Spectra for display, in numpy only.

Kept free of torch so that a process that only shows spectra (the dashboard's server, which
runs the models with ONNX Runtime) can import it without importing torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["log_spectrum"]


def log_spectrum(feature: Any) -> np.ndarray:
    """Channel-averaged, centred log-magnitude spectrum ``mean_c log1p(|fftshift(fft2(f_c))|)``.

    feature: a real ``(C, H, W)`` or ``(B, C, H, W)`` array or tensor -> ``(H, W)`` or
    ``(B, H, W)`` float32, the zero frequency at ``(H // 2, W // 2)``.

    A real map's spectrum is conjugate-symmetric (``|F[u, v]| = |F[-u, -v]|``), so only the
    ``rfft2`` half is computed and mirrored: about 5x faster than the full ``fft2``.
    """
    if hasattr(feature, "detach"):  # a torch tensor (torch itself is not imported here)
        feature = feature.detach().float().cpu().numpy()
    array = np.asarray(feature, dtype=np.float32)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a (C, H, W) or (B, C, H, W) feature map, got shape {array.shape}")
    height, width = array.shape[-2:]
    half = np.log1p(np.abs(np.fft.rfft2(array))).mean(axis=-3)  # (..., H, W // 2 + 1)
    full = np.empty((*half.shape[:-1], width), dtype=np.float32)
    full[..., : width // 2 + 1] = half
    if width // 2 + 1 < width:
        rows = (-np.arange(height)) % height
        cols = width - np.arange(width // 2 + 1, width)
        full[..., width // 2 + 1:] = half[..., rows, :][..., cols]
    return np.fft.fftshift(full, axes=(-2, -1))
