"""Turn an uploaded picture of a digit into the model's input, the way MNIST itself was made.

    to_mnist(data) -> Preprocessed(image=uint8 [28, 28] white digit on black, ...)

Decoding is strict: only real raster images (PNG, JPEG, GIF, BMP, WebP, TIFF) recognised by their
signature, a pixel-count limit checked from the header before any pixel is decoded (and Pillow's own
decompression-bomb guard left on), EXIF orientation applied, the first frame of an animation, every Pillow
mode (palette, 16-bit, CMYK, alpha...) flattened to grey (transparency composited on white).

Then the MNIST recipe (docs/preprocessing.md): find the ink (dark on light is inverted), remove uneven
lighting on large pictures, threshold (Otsu) to find the digit and drop specks, crop to the digit's box,
scale it to fit 20x20 keeping its aspect ratio with anti-aliasing, and centre it by mass in 28x28. A
picture that already is an MNIST-style 28x28 goes through unchanged apart from a whole-pixel recentring.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway import imaging
from gateway.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

DEFAULT_MAX_PIXELS = 25_000_000  # a 24 MP phone photo passes; far below Pillow's own bomb limit (89 MP)
WORK_SIZE = 400  # larger pictures are reduced to this (long side) before the numpy steps
LARGE = 64  # pictures at least this big (short side) get the uneven-light treatment
MIN_CONTRAST = 24.0  # ink that stands out less than this (0..255) from the background: a blank picture

# Signatures of the formats we read (anything else, SVG and text included, is 415).
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("BMP", b"BM", 0),
    ("WEBP", b"WEBP", 8),  # RIFF....WEBP
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
)
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray  # uint8 [28, 28], white digit on black: what the model sees
    sha256: str  # of the uploaded bytes
    format: str  # PNG, JPEG, GIF, BMP, WEBP or TIFF
    width: int  # of the upload, after EXIF rotation
    height: int
    mode: str  # Pillow's mode of the upload (RGB, RGBA, P, L, I;16, CMYK, ...)
    frames: int  # > 1 for an animation: only the first frame is used
    inverted: bool  # dark ink on a light background was found (and turned into white on black)


def sniff_format(data: bytes) -> str | None:
    """The image format by its signature, or None when the bytes are not one we read."""
    for name, signature, offset in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if name == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return name
    return None


def to_mnist(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Preprocessed:
    """The MNIST-style 28x28 input for an uploaded picture; raises InvalidInput, UnsupportedMediaType or
    PayloadTooLarge with a message fit for the client."""
    if not data:
        raise InvalidInput("the upload is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType("not a supported image: send a PNG, JPEG, GIF, BMP, WebP or TIFF picture")
    image, frames, mode = _decode(data, fmt, max_pixels)
    width, height = image.size
    pixels = _pixels(image)
    if min(pixels.shape[:2]) >= LARGE:
        ink, inverted = imaging.lit_ink_map(pixels)
        digit = _extract_digit(ink, smooth_radius=1)
    else:
        ink, inverted = imaging.ink_map(pixels)
        digit = _already_mnist(ink) if (width, height) == (imaging.MNIST_SIZE,) * 2 else None
        if digit is None:
            digit = _extract_digit(ink, smooth_radius=0)
    return Preprocessed(
        image=imaging.to_uint8(digit),
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=width,
        height=height,
        mode=mode,
        frames=frames,
        inverted=inverted,
    )


def _decode(data: bytes, fmt: str, max_pixels: int) -> tuple[Image.Image, int, str]:
    """Open, check the size from the header, decode the first frame, apply EXIF orientation."""
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise PayloadTooLarge("the image has too many pixels") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        raise InvalidInput(f"the {fmt} image is corrupt or truncated") from None
    if image.width < 1 or image.height < 1:
        raise InvalidInput("the image has no pixels")
    if image.width * image.height > max_pixels:
        raise PayloadTooLarge(
            f"the image is {image.width}x{image.height} pixels; the limit is {max_pixels:,} pixels"
        )
    mode = image.mode
    frames = getattr(image, "n_frames", 1)
    try:
        if frames > 1:
            image.seek(0)
        if fmt == "JPEG" and max(image.size) > 2 * WORK_SIZE:
            # Let the JPEG decoder downscale by 1/2, 1/4 or 1/8: big photos decode several times faster.
            scale = WORK_SIZE / max(image.size)
            image.draft(None, (int(image.width * scale) + 1, int(image.height * scale) + 1))
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise PayloadTooLarge("the image has too many pixels") from None
    except _DECODE_ERRORS:
        raise InvalidInput(f"the {fmt} image is corrupt or truncated") from None
    return image, frames, mode


def _pixels(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> float32 grey [H, W] or RGB [H, W, 3] on 0..255, transparency flattened, reduced to
    WORK_SIZE on its long side."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I;16") or values.max() > 255:
            values = values / 257.0  # 16-bit range to 8-bit
        elif image.mode == "F" and values.max() <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    if max(image.size) > WORK_SIZE:
        scale = WORK_SIZE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "RGBA":
        values = imaging.composite(values[..., :3], values[..., 3])
    if (
        values.ndim == 3
        and np.array_equal(values[..., 0], values[..., 1])
        and np.array_equal(values[..., 1], values[..., 2])
    ):
        values = values[..., 0]  # grey stored as RGB
    return values


def _already_mnist(ink: np.ndarray) -> np.ndarray | None:
    """An MNIST-style 28x28 (black background, the digit within 20x20) moved by whole pixels so its centre
    of mass is MNIST's, else None. MNIST's own images are already there, so they come out unchanged."""
    if float(ink.max()) < 2 * MIN_CONTRAST:
        return None
    box = imaging.bounding_box(ink > 0)
    if box is None:
        return None
    top, bottom, left, right = box
    if bottom - top > imaging.MNIST_BOX or right - left > imaging.MNIST_BOX:
        return None
    total = float(ink.sum())
    rows, cols = np.arange(ink.shape[0]), np.arange(ink.shape[1])
    dy = round(imaging.MNIST_CENTRE - float(ink.sum(axis=1) @ rows) / total)
    dx = round(imaging.MNIST_CENTRE - float(ink.sum(axis=0) @ cols) / total)
    dy = min(max(dy, -top), ink.shape[0] - bottom)  # never push ink out of the field
    dx = min(max(dx, -left), ink.shape[1] - right)
    field = np.zeros_like(ink)
    field[top + dy : bottom + dy, left + dx : right + dx] = ink[top:bottom, left:right]
    return field


def _extract_digit(ink: np.ndarray, *, smooth_radius: int) -> np.ndarray:
    smoothed = imaging.smooth(ink, smooth_radius)
    if imaging.quantile(smoothed, 0.9995) < MIN_CONTRAST:
        raise InvalidInput("no digit found: the picture looks blank")
    mask = imaging.digit_mask(smoothed > imaging.otsu_threshold(smoothed))
    box = imaging.bounding_box(mask)
    if box is None:
        raise InvalidInput("no digit found: the picture looks blank")
    # Contrast as in MNIST: background noise to black, the ink's core to full white.
    background = ink[~mask]
    floor = 0.0
    if background.size:
        level = imaging.quantile(background, 0.5)
        floor = level + 3 * imaging.quantile(np.abs(background - level), 0.5)
    core = imaging.quantile(ink[mask], 0.9)
    if core <= floor + MIN_CONTRAST / 2:
        raise InvalidInput("no digit found: the picture looks blank")
    scaled = np.clip((ink - floor) * (255.0 / (core - floor)), 0, 255)
    return imaging.centre_by_mass(imaging.fit_box(scaled, box))
