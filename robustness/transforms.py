"""Image transforms of the robustness lab: shifts and frequency filters (numpy only).

All take uint8 ``(N, H, W, 3)`` images (or one ``(H, W, 3)`` image) and return the same
shape and dtype, so a transformed image is an ordinary image: the model sees it through the
serving normalisation, and the dashboard can show it.

* :func:`shift` moves the content by ``(dy, dx)`` pixels, circularly (``np.roll``: what
  wraps out on one side comes in on the other, Chaman & Dokmanic 2021) or with zero padding
  (black enters; the training augmentation's padding also fills with zeros).
* :func:`low_pass` / :func:`high_pass` keep the frequencies inside / outside a radius of the
  centred 2-D spectrum, per channel (Yin et al. 2019, "A Fourier perspective on model
  robustness"). Deviation, stated: the high-pass keeps the zero frequency (the image's mean
  colour), so a high-passed image stays an image around its mean brightness instead of a
  zero-mean signal that uint8 cannot hold; outputs are rounded and clipped to [0, 255].
"""
from __future__ import annotations

import numpy as np

__all__ = ["MAX_SHIFT", "SHIFT_MODES", "FILTERS", "TransformError", "shift", "low_pass", "high_pass", "filtered"]

MAX_SHIFT = 8
SHIFT_MODES = ("circular", "zero")
FILTERS = ("low", "high")


class TransformError(ValueError):
    """Bad images or arguments for a transform (one sentence)."""


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise TransformError(f"expected uint8 images of shape (N, H, W, 3) or (H, W, 3), got {images.shape} {images.dtype}")
    return batch, single


def _shift_one(image: np.ndarray, dy: int, dx: int, mode: str) -> np.ndarray:
    if mode == "circular":
        return np.roll(image, (dy, dx), axis=(0, 1))
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    if abs(dy) < height and abs(dx) < width:
        out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            image[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def shift(images: np.ndarray, offsets: np.ndarray | tuple[int, int], mode: str = "circular") -> np.ndarray:
    """Move each image's content by its ``(dy, dx)`` (down and right are positive).

    ``offsets`` is one ``(dy, dx)`` for all images or an ``(N, 2)`` integer array, one per image.
    """
    if mode not in SHIFT_MODES:
        raise TransformError(f"unknown shift mode {mode!r}; expected one of {', '.join(SHIFT_MODES)}")
    batch, single = _as_batch(images)
    offsets = np.broadcast_to(np.asarray(offsets, dtype=np.int64), (len(batch), 2))
    out = np.stack([_shift_one(image, int(dy), int(dx), mode) for image, (dy, dx) in zip(batch, offsets)])
    return out[0] if single else out


def _radius_grid(height: int, width: int) -> np.ndarray:
    """Distance of each bin of the centred spectrum from the zero frequency."""
    fy = np.fft.fftshift(np.fft.fftfreq(height)) * height
    fx = np.fft.fftshift(np.fft.fftfreq(width)) * width
    return np.hypot(fy[:, None], fx[None, :])


def filtered(images: np.ndarray, radius: float, kind: str) -> np.ndarray:
    """Keep the frequencies with ``|f| <= radius`` (``kind="low"``) or ``|f| > radius`` plus
    the zero frequency (``kind="high"``); ``radius`` in frequency bins (0 .. H/2*sqrt(2))."""
    if kind not in FILTERS:
        raise TransformError(f"unknown filter {kind!r}; expected one of {', '.join(FILTERS)}")
    if not np.isfinite(radius) or radius < 0:
        raise TransformError(f"the filter radius must be a non-negative number of frequency bins, got {radius!r}")
    batch, single = _as_batch(images)
    height, width = batch.shape[1:3]
    distance = _radius_grid(height, width)
    keep = distance <= radius if kind == "low" else (distance > radius) | (distance == 0)
    spectrum = np.fft.fftshift(np.fft.fft2(batch.astype(np.float64), axes=(1, 2)), axes=(1, 2))
    spectrum *= keep[None, :, :, None]
    pixels = np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(1, 2)), axes=(1, 2)).real
    out = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return out[0] if single else out


def low_pass(images: np.ndarray, radius: float) -> np.ndarray:
    return filtered(images, radius, "low")


def high_pass(images: np.ndarray, radius: float) -> np.ndarray:
    return filtered(images, radius, "high")
