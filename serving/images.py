"""Loading user images safely: a path, raw bytes, a PIL image or a numpy array -> ``PIL.Image``.

Everything that can go wrong with an upload is reported as :class:`ImageError` (a
``ValueError``) with a short message meant for the user: not an image, truncated or
corrupted data, empty file, too large, unsupported kind of input. The returned image is
fully decoded (no lazy file handle left open) and, for animated images, positioned on
its first frame. Mode conversion, EXIF orientation and resizing are
``serving.runtime.preprocess``'s job.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageError", "ImageSource", "MAX_PIXELS", "MAX_BYTES", "load_image"]

#: Largest accepted image (width x height). A 32x32 classifier gains nothing from more,
#: and decoding is what a hostile upload would abuse.
MAX_PIXELS = 40_000_000
#: Largest accepted encoded file.
MAX_BYTES = 64 * 1024 * 1024

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


class ImageError(ValueError):
    """The input cannot be used as an image; the message is safe to show to a user."""


def load_image(src: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``src`` as a decoded ``PIL.Image`` (first frame of an animation).

    Accepts a file path, encoded bytes, a ``PIL.Image`` or a numpy array (``(H, W)``,
    ``(H, W, C)`` or channels-first ``(C, H, W)`` with C in 1/3/4; uint8, uint16, bool or
    float in [0, 1]). Raises :class:`ImageError` otherwise.
    """
    if isinstance(src, Image.Image):
        return _checked_pil(src, max_pixels)
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode(bytes(src), "image data", max_pixels)
    if isinstance(src, (str, os.PathLike)):
        return _decode(_read_file(Path(src)), Path(src).name, max_pixels)
    raise ImageError(f"unsupported input type {type(src).__name__}: give a file path, bytes, a PIL image or a numpy array")


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise ImageError(f"{path.name}: file not found")
    if not path.is_file():
        raise ImageError(f"{path.name}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"{path.name}: the file is empty")
    if size > MAX_BYTES:
        raise ImageError(f"{path.name}: the file is too large ({size / 2**20:.0f} MB; limit {MAX_BYTES / 2**20:.0f} MB)")
    return path.read_bytes()


def _too_large(width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"image too large: {width}x{height} = {width * height / 1e6:.1f} megapixels (limit {max_pixels / 1e6:.0f})"
    )


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _sniff(data: bytes) -> str | None:
    """The format a file's magic bytes claim (to tell "corrupted PNG" from "not an image")."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


def _decode(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Identify, size-check, then decode ``data``; every Pillow failure becomes an ImageError."""
    if not data:
        raise ImageError(f"{label}: empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{label}: too large ({len(data) / 2**20:.0f} MB; limit {MAX_BYTES / 2**20:.0f} MB)")
    try:
        with warnings.catch_warnings():
            # Our own limit is below Pillow's warning threshold; do not leak its warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: image too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        known = _sniff(data)
        if known:  # right signature, unreadable header: say so rather than "not an image"
            raise ImageError(f"{label}: corrupted {known} data (header unreadable)") from None
        raise ImageError(f"{label}: not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{label}: corrupted image header ({error})") from None
    # Check the declared size *before* decoding, so a bomb never allocates its pixels.
    if image.width * image.height > max_pixels:
        raise _too_large(image.width, image.height, max_pixels)
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{label}: image has no pixels ({image.width}x{image.height})")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{label}: truncated or corrupted {image.format or 'image'} data ({error})") from None
    return image


def _checked_pil(image: Image.Image, max_pixels: int) -> Image.Image:
    if image.width * image.height > max_pixels:
        raise _too_large(image.width, image.height, max_pixels)
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image has no pixels ({image.width}x{image.height})")
    try:
        if getattr(image, "n_frames", 1) > 1 and image.tell() != 0:
            image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"truncated or corrupted image data ({error})") from None
    return image


def _channels_last(array: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` with C in 1/3/4 (and a larger last axis) -> ``(H, W, C)``."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    array = _channels_last(np.asarray(array))
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"unsupported array shape {array.shape}: expected (H, W), (H, W, 3|4) or (3|4, H, W)")
    height, width = array.shape[:2]
    if height * width > max_pixels:
        raise _too_large(width, height, max_pixels)
    if height == 0 or width == 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("image array contains NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise ImageError("float image arrays must hold values in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype == np.uint16:
        if array.ndim != 2:
            array = (array // 257).astype(np.uint8)  # Pillow has no 16-bit RGB mode
        else:
            return Image.fromarray(np.ascontiguousarray(array))  # mode 'I;16': preprocess scales it
    elif array.dtype != np.uint8:
        raise ImageError(f"unsupported array dtype {array.dtype}: use uint8, uint16, bool or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(array))
