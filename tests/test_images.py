"""Image loading (serving.images) and preprocessing (serving.runtime.preprocess / to_rgb):
every input kind, every Pillow mode we promise to handle, EXIF rotation, and the errors."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving.images import ImageError, load_image
from serving.runtime import normalize_uint8, preprocess, to_rgb

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (no pixel data): what a bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def quadrants(size: int = 64) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white: shows rotations."""
    array = np.zeros((size, size, 3), np.uint8)
    h = size // 2
    array[:h, :h] = (255, 0, 0)
    array[:h, h:] = (0, 255, 0)
    array[h:, :h] = (0, 0, 255)
    array[h:, h:] = (255, 255, 255)
    return Image.fromarray(array)


# --------------------------------------------------------------------------------------
# load_image: inputs
# --------------------------------------------------------------------------------------
def test_path_bytes_pil_and_array_give_the_same_pixels(tmp_path):
    image = quadrants()
    (tmp_path / "q.png").write_bytes(encode(image))
    sources = [tmp_path / "q.png", str(tmp_path / "q.png"), encode(image), bytearray(encode(image)), image, np.asarray(image)]
    for source in sources:
        loaded = load_image(source)
        assert np.array_equal(np.asarray(loaded.convert("RGB")), np.asarray(image)), type(source)


def test_arrays_of_every_layout_and_dtype():
    rgb = np.asarray(quadrants(8))
    assert load_image(rgb.transpose(2, 0, 1)).size == (8, 8)  # channels first
    assert load_image(rgb[..., 0]).mode == "L"
    assert load_image(rgb[..., :1]).mode == "L"
    assert load_image(np.dstack([rgb, np.full((8, 8), 255, np.uint8)])).mode == "RGBA"
    assert np.array_equal(np.asarray(load_image(rgb / 255.0)), rgb)
    assert load_image(np.ones((4, 4), bool)).getpixel((0, 0)) == 255
    assert load_image(np.full((4, 4), 65535, np.uint16)).mode == "I;16"


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = load_image(data)
    assert image.n_frames == 3 and image.tell() == 0
    _, seen = preprocess(image, MEAN, STD)
    assert tuple(seen[16, 16]) == (255, 0, 0)
    image.seek(2)  # a PIL image left on a later frame is rewound too
    _, seen = preprocess(image, MEAN, STD)
    assert tuple(seen[16, 16]) == (255, 0, 0)


# --------------------------------------------------------------------------------------
# load_image: errors (all ImageError, all readable)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, this is a text file\n" * 4, "not an image"),
        (b"GIF89a" + b"\x00" * 3, "corrupted"),
    ],
)
def test_bad_bytes(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    with pytest.raises(ImageError, match="truncated or corrupted"):
        load_image(data[: len(data) // 2])


def test_file_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    (tmp_path / "notes.jpg").write_text("not a jpeg")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.jpg")


def test_too_large_is_refused_before_decoding():
    with pytest.raises(ImageError, match="too large.*megapixels"):
        load_image(png_header_only(8000, 6000))  # 48 MP > 40 MP limit, checked from the header
    with pytest.raises(ImageError, match="too large"):
        load_image(png_header_only(20000, 20000))  # 400 MP: Pillow's own bomb guard fires first
    with pytest.raises(ImageError, match="too large"):
        load_image(quadrants(64), max_pixels=1000)
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=1000)


@pytest.mark.parametrize(
    "source, message",
    [
        (12345, "unsupported input type int"),
        (None, "unsupported input type NoneType"),
        (np.zeros((8, 8, 5), np.uint8), "unsupported array shape"),
        (np.zeros((8, 8), np.int64), "unsupported array dtype"),
        (np.full((8, 8), 2.0), r"\[0, 1\]"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.zeros((0, 8), np.uint8), "no pixels"),
    ],
)
def test_unsupported_inputs(source, message):
    with pytest.raises(ImageError, match=message):
        load_image(source)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


# --------------------------------------------------------------------------------------
# preprocess: modes
# --------------------------------------------------------------------------------------
def seen_colour(image: Image.Image) -> tuple[int, int, int]:
    """The centre pixel of what the model sees, after a PNG round trip where possible."""
    x, seen = preprocess(image, MEAN, STD)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert seen.shape == (32, 32, 3) and seen.dtype == np.uint8
    np.testing.assert_allclose(x, normalize_uint8(seen[None], MEAN, STD))
    return tuple(int(v) for v in seen[16, 16])


def test_rgba_and_la_are_composited_on_white():
    transparent = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    half = Image.new("RGBA", (40, 40), (0, 0, 0, 128))
    assert seen_colour(load_image(encode(transparent))) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in seen_colour(half))
    assert seen_colour(load_image(encode(Image.new("LA", (40, 40), (0, 0))))) == (255, 255, 255)
    assert seen_colour(Image.new("RGBa", (40, 40), (0, 0, 0, 0))) == (255, 255, 255)
    assert seen_colour(Image.new("La", (40, 40), (0, 0))) == (255, 255, 255)


def test_palette_images_with_and_without_transparency():
    p = Image.new("RGB", (40, 40), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert seen_colour(load_image(encode(p))) == (10, 200, 30)
    pt = p.copy()
    pt.info["transparency"] = p.getpixel((0, 0))  # the only colour becomes transparent
    loaded = load_image(encode(pt))
    assert loaded.mode == "P" and "transparency" in loaded.info
    assert seen_colour(loaded) == (255, 255, 255)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # red in CMYK
    colour = seen_colour(load_image(encode(cmyk, "JPEG", quality=95)))
    assert colour[0] > 240 and colour[1] < 15 and colour[2] < 15


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    array = np.full((40, 40), 32896, np.uint16)  # 128 * 257: mid grey in 16 bits
    loaded = load_image(encode(Image.fromarray(array)))
    assert loaded.mode in ("I;16", "I")
    assert seen_colour(loaded) == (128, 128, 128)
    assert seen_colour(Image.fromarray(np.full((40, 40), 65535, np.uint16))) == (255, 255, 255)
    assert seen_colour(Image.fromarray(np.full((40, 40), 65535 * 257, np.int32).clip(0, 65535).astype(np.int32))) == (255, 255, 255)
    assert seen_colour(Image.fromarray(np.full((40, 40), 100, np.int32))) == (100, 100, 100)  # 'I' with 8-bit values
    assert seen_colour(Image.fromarray(np.full((40, 40), 0.5, np.float32))) == (128, 128, 128)  # 'F' in [0, 1]


def test_greyscale_bilevel_and_other_modes():
    assert seen_colour(load_image(encode(Image.new("L", (40, 40), 100)))) == (100, 100, 100)
    assert seen_colour(Image.new("1", (40, 40), 1)) == (255, 255, 255)
    ycbcr = Image.new("RGB", (40, 40), (0, 0, 255)).convert("YCbCr")
    colour = seen_colour(ycbcr)
    assert colour[2] > 240 and colour[0] < 10
    hsv = Image.new("RGB", (40, 40), (0, 255, 0)).convert("HSV")
    assert seen_colour(hsv)[1] > 240


def test_exif_orientation_is_applied():
    upright = quadrants(64)
    # Store the image rotated 90 degrees clockwise, with Orientation=6 ("rotate 90 CW to view").
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    _, seen = preprocess(data, MEAN, STD)
    expected = np.asarray(upright.resize((32, 32), Image.Resampling.LANCZOS))
    corners = [(4, 4), (4, 27), (27, 4), (27, 27)]
    for y, x in corners:
        assert np.abs(seen[y, x].astype(int) - expected[y, x]).max() < 40, (y, x, seen[y, x], expected[y, x])


def test_centre_crop_and_resize_of_a_large_non_square_image():
    array = np.zeros((300, 900, 3), np.uint8)
    array[:, 300:600] = (0, 200, 0)  # the centre square is green, the sides black
    _, seen = preprocess(array, MEAN, STD)
    assert seen.shape == (32, 32, 3)
    assert np.abs(seen[2:-2, 2:-2].astype(int) - (0, 200, 0)).max() <= 2


def test_cifar_sized_images_pass_through_unchanged():
    array = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x, seen = preprocess(array, MEAN, STD)
    assert np.array_equal(seen, array)
    np.testing.assert_allclose(x, normalize_uint8(array[None], MEAN, STD))


def test_to_rgb_survives_malformed_exif():
    image = quadrants(16)
    image.info["exif"] = b"Exif\x00\x00garbage"
    assert to_rgb(image).mode == "RGB"
